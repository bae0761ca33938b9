"""Saving and loading models: exact round trip, no silent overwrite, atomic writes, bad files."""

from __future__ import annotations

import io
import json
import os
import stat
import warnings
import zipfile

import numpy as np
import pytest

import lfopt
from lfopt import LatentFactorModel, ModelFileError

META_KEY = "__lfopt_meta__"


def npz_members(path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return dict(z)


def rewrite_npz(src, dst, edit) -> None:
    """Copy the model file ``src`` to ``dst`` after ``edit(arrays, meta)``."""
    arrays = npz_members(src)
    meta = json.loads(arrays[META_KEY].tobytes().decode())
    edit(arrays, meta)
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(dst, **arrays)


def model_error(path) -> str:
    with pytest.raises(ModelFileError) as info:
        lfopt.load(path)
    return str(info.value)


@pytest.fixture
def saved(tmp_path, fitted_model):
    return fitted_model.save(tmp_path / "model.npz")


# ============================================================== round trip
class TestRoundTrip:
    def test_params_bitwise_equal(self, saved, fitted_model):
        loaded = lfopt.load(saved)
        assert loaded.params_.dtype == fitted_model.params_.dtype
        assert loaded.params_.tobytes() == fitted_model.params_.tobytes()
        for a, b in zip(loaded.factors(), fitted_model.factors()):
            np.testing.assert_array_equal(a, b)

    def test_state_and_hyper_parameters(self, saved, fitted_model):
        loaded = lfopt.load(saved)
        assert loaded.get_params() == fitted_model.get_params()
        assert (loaded.mu_, loaded.global_mean_) == (fitted_model.mu_, fitted_model.global_mean_)
        assert tuple(loaded.rating_range_) == tuple(fitted_model.rating_range_)
        assert (loaded.n_users_, loaded.n_items_) == (fitted_model.n_users_, fitted_model.n_items_)
        np.testing.assert_array_equal(loaded.user_counts_, fitted_model.user_counts_)
        np.testing.assert_array_equal(loaded.seen_indices_, fitted_model.seen_indices_)
        assert len(loaded.history) == len(fitted_model.history) == 3
        assert loaded.history[-1]["train_loss"] == pytest.approx(fitted_model.history[-1]["train_loss"])

    def test_predictions_equal(self, saved, fitted_model, small_split):
        loaded = lfopt.load(saved)
        _, test = small_split
        users, items = test.user_ids[test.users], test.item_ids[test.items]
        np.testing.assert_array_equal(_predict(loaded, users, items), _predict(fitted_model, users, items))
        assert loaded.evaluate(test) == fitted_model.evaluate(test)
        u = fitted_model.user_ids_[0]
        for a, b in zip(loaded.recommend(u, k=5), fitted_model.recommend(u, k=5)):
            np.testing.assert_array_equal(a, b)

    def test_string_ids_preserved(self, tmp_path, string_id_model):
        path = string_id_model.save(tmp_path / "strings.npz")
        loaded = lfopt.load(path)
        assert loaded.user_ids_.dtype.kind == "U" and loaded.item_ids_.dtype.kind == "U"
        np.testing.assert_array_equal(loaded.user_ids_, string_id_model.user_ids_)
        np.testing.assert_array_equal(loaded.item_ids_, string_id_model.item_ids_)
        users, items = ["user-3", "user-7", "user-0"], ["item-1", "item-2", "item-5"]
        np.testing.assert_array_equal(_predict(loaded, users, items), _predict(string_id_model, users, items))
        items_a, _ = loaded.recommend("user-3", k=3)
        items_b, _ = string_id_model.recommend("user-3", k=3)
        assert items_a.tolist() == items_b.tolist() and all(i.startswith("item-") for i in items_a.tolist())

    def test_optimizer_options_survive(self, tmp_path, small_split):
        model = LatentFactorModel(rank=2, optimizer="sgd", epochs=1, lr=0.005, lam=0.03, use_bias=False,
                                  seed=4).fit(small_split[0])
        loaded = lfopt.load(model.save(tmp_path / "sgd.npz"))
        assert loaded.get_params() == model.get_params()
        assert loaded.optimizer_options == {"lr": 0.005} and loaded.use_bias is False
        np.testing.assert_array_equal(_predict(loaded, [0, 1], [0, 1]), _predict(model, [0, 1], [0, 1]))

    def test_suffix_added(self, tmp_path, fitted_model):
        path = fitted_model.save(tmp_path / "noext")
        assert path == tmp_path / "noext.npz" and path.is_file()
        assert lfopt.load(path).rank == fitted_model.rank

    def test_no_pickle_inside(self, saved):
        with np.load(saved, allow_pickle=False) as z:  # would raise if any member needed pickle
            assert META_KEY in z.files and "params" in z.files
        meta = json.loads(npz_members(saved)[META_KEY].tobytes().decode())
        assert meta["format"] == "lfopt-model" and meta["model"] == "latent_factor"
        assert meta["lfopt_version"] == lfopt.__version__

    def test_unfitted_model_cannot_be_saved(self, tmp_path):
        with pytest.raises(lfopt.ConfigError, match="not fitted"):
            LatentFactorModel().save(tmp_path / "x.npz")
        assert not any(tmp_path.iterdir())


def _predict(model, users, items):
    """``model.predict`` with the unseen-ID warning silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.predict(users, items)


# =============================================================== overwrite
class TestOverwrite:
    def test_refuses_to_overwrite(self, tmp_path, fitted_model, small_split):
        path = tmp_path / "model.npz"
        other = LatentFactorModel(rank=2, optimizer="als", epochs=1, seed=9).fit(small_split[0])
        other.save(path)
        before = path.read_bytes()
        with pytest.raises(FileExistsError, match="model.npz"):
            fitted_model.save(path)
        with pytest.raises(FileExistsError):
            fitted_model.save(tmp_path / "model")  # the same file once the suffix is added
        assert path.read_bytes() == before

    def test_overwrite_true_replaces(self, tmp_path, fitted_model, small_split):
        path = tmp_path / "model.npz"
        LatentFactorModel(rank=2, optimizer="als", epochs=1, seed=9).fit(small_split[0]).save(path)
        fitted_model.save(path, overwrite=True)
        assert lfopt.load(path).rank == fitted_model.rank
        assert lfopt.load(path).params_.tobytes() == fitted_model.params_.tobytes()

    def test_refuses_directory(self, tmp_path, fitted_model):
        (tmp_path / "dir.npz").mkdir()
        with pytest.raises(FileExistsError):
            fitted_model.save(tmp_path / "dir.npz", overwrite=True)


# ================================================================== atomic
class TestAtomic:
    def test_no_temp_files_left(self, tmp_path, fitted_model):
        fitted_model.save(tmp_path / "a.npz")
        fitted_model.save(tmp_path / "a.npz", overwrite=True)
        fitted_model.save(tmp_path / "sub" / "b.npz")  # parent folders are created
        names = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
        assert names == ["a.npz", "sub/b.npz"]

    def test_failed_write_leaves_old_file_and_no_temp(self, tmp_path, fitted_model, small_split, monkeypatch):
        path = tmp_path / "model.npz"
        LatentFactorModel(rank=2, optimizer="als", epochs=1, seed=9).fit(small_split[0]).save(path)
        before = path.read_bytes()

        def broken_replace(src, dst):
            raise OSError("disk full")

        monkeypatch.setattr(os, "replace", broken_replace)
        with pytest.raises(OSError, match="disk full"):
            fitted_model.save(path, overwrite=True)
        monkeypatch.undo()
        assert path.read_bytes() == before
        assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]

    def test_saved_file_is_complete_zip(self, saved):
        with zipfile.ZipFile(saved) as zf:
            assert zf.testzip() is None

    def test_file_mode_follows_umask(self, saved):
        umask = os.umask(0)
        os.umask(umask)
        assert stat.S_IMODE(saved.stat().st_mode) == 0o666 & ~umask


# ======================================================== not an lfopt model
class TestBadModelFiles:
    def test_missing(self, tmp_path):
        msg = model_error(tmp_path / "absent.npz")
        assert "absent.npz" in msg and "no such file" in msg

    def test_random_npz(self, tmp_path):
        path = tmp_path / "random.npz"
        np.savez(path, weights=np.random.default_rng(0).normal(size=10))
        msg = model_error(path)
        assert "random.npz" in msg and "not an lfopt model" in msg

    def test_text_file(self, tmp_path):
        path = tmp_path / "notes.npz"
        path.write_text("these are not the weights you are looking for\n")
        msg = model_error(path)
        assert "notes.npz" in msg and "not an lfopt model" in msg
        assert "not a zip/npz archive" in msg and "text file" in msg  # says what it is, not a zip error

    def test_ratings_file_renamed_npz(self, tmp_path):
        path = tmp_path / "model.npz"
        path.write_text("1\t2\t5\t881250949\n")
        assert "not a zip/npz archive: it looks like a text file" in model_error(path)

    def test_binary_junk(self, tmp_path):
        path = tmp_path / "junk.npz"
        path.write_bytes(bytes(range(256)))
        msg = model_error(path)
        assert "not a zip/npz archive" in msg and "starts with bytes" in msg

    def test_empty_file(self, tmp_path):
        path = tmp_path / "empty.npz"
        path.write_bytes(b"")
        assert "empty.npz" in model_error(path)

    @pytest.mark.parametrize("fraction", [0.5, 0.9, 0.01])
    def test_truncated(self, tmp_path, saved, fraction):
        data = saved.read_bytes()
        path = tmp_path / "truncated.npz"
        path.write_bytes(data[: int(len(data) * fraction)])
        assert "truncated.npz" in model_error(path)

    def test_plain_npy(self, tmp_path):
        path = tmp_path / "array.npy"
        np.save(path, np.arange(5))
        msg = model_error(path)
        assert "array.npy" in msg and ".npy array, not a zip/npz archive" in msg

    def test_directory(self, tmp_path):
        assert str(tmp_path) in model_error(tmp_path)

    def test_other_format_tag(self, tmp_path, saved):
        rewrite_npz(saved, tmp_path / "other.npz", lambda a, m: m.update(format="someone-elses-model"))
        msg = model_error(tmp_path / "other.npz")
        assert "someone-elses-model" in msg

    def test_newer_format_version(self, tmp_path, saved):
        rewrite_npz(saved, tmp_path / "future.npz", lambda a, m: m.update(format_version=99))
        msg = model_error(tmp_path / "future.npz")
        assert "newer" in msg and "99" in msg

    def test_metadata_not_json(self, tmp_path, saved):
        arrays = npz_members(saved)
        arrays[META_KEY] = np.frombuffer(b"{not json", dtype=np.uint8)
        np.savez(tmp_path / "badmeta.npz", **arrays)
        assert "metadata" in model_error(tmp_path / "badmeta.npz")

    def test_missing_member(self, tmp_path, saved):
        rewrite_npz(saved, tmp_path / "partial.npz", lambda a, m: a.pop("seen_indices"))
        assert "seen_indices" in model_error(tmp_path / "partial.npz")

    def test_wrong_parameter_size(self, tmp_path, saved):
        rewrite_npz(saved, tmp_path / "short.npz", lambda a, m: a.update(params=a["params"][:-1]))
        msg = model_error(tmp_path / "short.npz")
        assert "'params' has shape (799,)" in msg and "(800,)" in msg  # against the file's manifest

    def test_wrong_parameter_size_with_matching_manifest(self, tmp_path, saved):
        def edit(a, m):
            a.update(params=a["params"][:-1])
            m["arrays"]["params"][0] = [len(a["params"])]

        rewrite_npz(saved, tmp_path / "short.npz", edit)
        assert "wrong size" in model_error(tmp_path / "short.npz")  # the model's own check

    def test_pickled_npz_is_refused(self, tmp_path):
        buf = io.BytesIO()
        np.savez(buf, obj=np.array([{"a": 1}], dtype=object))
        path = tmp_path / "pickled.npz"
        path.write_bytes(buf.getvalue())
        msg = model_error(path)
        assert "pickled.npz" in msg and "'obj'" in msg and "pickled" in msg


# ========================================================= tampered models
def _own(arrays: dict) -> list:
    common = {META_KEY, "user_ids", "item_ids", "user_counts", "item_counts", "seen_indptr", "seen_indices"}
    return [k for k in arrays if k not in common]


def _drop_everywhere(name):
    def edit(a, m):
        a.pop(name)
        m["arrays"].pop(name)

    return edit


def _set_nan(a, m):
    own = _own(a)[0]
    a[own] = a[own].copy()
    a[own].reshape(-1)[0] = np.nan


@pytest.fixture(scope="module")
def every_kind(tmp_path_factory, small_synthetic):
    """One saved file per model kind: rating LF, Gibbs LF (posterior samples), BPR, bias baseline, iALS, popularity."""
    root = tmp_path_factory.mktemp("kinds")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = {
            "lf": LatentFactorModel(rank=3, optimizer="als", epochs=2, seed=1),
            "gibbs": LatentFactorModel(rank=2, optimizer="gibbs", epochs=25, validation=None, seed=1,
                                       keep_samples=True),
            "auto": LatentFactorModel(rank=2, epochs=25, seed=1),  # the default: sampled, rank-2 summary
            "bpr": lfopt.BPRMF(rank=3, epochs=2, seed=1),
            "bias": lfopt.BiasBaseline(),
            "ials": lfopt.ImplicitALS(rank=3, epochs=2),
            "pop": lfopt.PopularityRanker(),
        }
        paths = {}
        for name, model in models.items():
            model.fit(small_synthetic.with_values(1.0) if name in ("ials", "pop") else small_synthetic)
            paths[name] = model.save(root / f"{name}.npz")
    assert models["gibbs"].n_samples_ > 0 and models["auto"].n_samples_ > 0 and models["auto"].posterior_ is None
    return paths


TAMPERS = {
    # name: (edit(arrays, meta), words the message must hold)
    "missing array": (lambda a, m: a.pop(_own(a)[0]), ["missing array"]),
    "missing array and its manifest entry": (lambda a, m: _drop_everywhere(_own(a)[0])(a, m), ["missing"]),
    "missing common array": (lambda a, m: a.pop("item_counts"), ["missing", "item_counts"]),
    "n_users is a string": (lambda a, m: m.update(n_users=str(m["n_users"])), ["'n_users'", "integer"]),
    "n_items is a float": (lambda a, m: m.update(n_items=m["n_items"] + 0.5), ["'n_items'", "integer"]),
    "params not an object": (lambda a, m: m.update(params=[1, 2]), ["'params'", "object"]),
    "state not an object": (lambda a, m: m.update(state="oops"), ["'state'", "object"]),
    "history not a list": (lambda a, m: m.update(history=7), ["'history'", "list"]),
    "hyper-parameter of the wrong type": (lambda a, m: m["params"].update({next(iter(m["params"]), "x"): "ten"}),
                                          ["'ten'"]),
    "state number is text": (lambda a, m: m["state"].update(mu="abc")
                             if "mu" in m["state"] else m["state"].update(best_epoch="abc"), ["'abc'"]),
    "ID maps swapped": (lambda a, m: a.update(user_ids=a["item_ids"], item_ids=a["user_ids"]), ["user_ids"]),
    "sizes swapped": (lambda a, m: m.update(n_users=m["n_items"], n_items=m["n_users"]), ["do not match"]),
    "NaN parameter": (_set_nan, ["non-finite", "nan"]),
    "array of text": (lambda a, m: a.update({_own(a)[0]: np.array(["x"] * a[_own(a)[0]].size)}), ["dtype"]),
    "repeated user ID": (lambda a, m: a["user_ids"].__setitem__(1, a["user_ids"][0]), ["repeats an ID"]),
    "seen items out of range": (lambda a, m: a["seen_indices"].__setitem__(0, m["n_items"] + 5), ["seen"]),
}


@pytest.mark.parametrize("kind", ["lf", "gibbs", "auto", "bpr", "bias", "ials", "pop"])
@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_tampered_model_file_is_refused_clearly(tmp_path, every_kind, kind, tamper):
    edit, words = TAMPERS[tamper]
    path = tmp_path / "tampered.npz"
    rewrite_npz(every_kind[kind], path, edit)
    msg = model_error(path)  # a ModelFileError, never another exception
    assert str(path) in msg
    for word in words:
        assert word in msg, (tamper, msg)


def _swap_posterior(a, m):
    a["posterior_P"], a["posterior_Q"] = a["posterior_Q"], a["posterior_P"]
    m["arrays"]["posterior_P"], m["arrays"]["posterior_Q"] = m["arrays"]["posterior_Q"], m["arrays"]["posterior_P"]


def _reshape_params(a, m):
    a["params"] = a["params"].reshape(1, -1)
    m["arrays"]["params"][0] = list(a["params"].shape)


@pytest.mark.parametrize("kind, edit, words", [
    ("gibbs", _swap_posterior, ["posterior"]),
    ("lf", _reshape_params, ["wrong size"]),
    ("bpr", _reshape_params, ["wrong size"]),
    ("lf", lambda a, m: m["state"].update(rating_range=[5, 1]), ["rating_range"]),
    ("bias", lambda a, m: m["state"].update(rating_range="1-5"), ["rating_range"]),
    ("gibbs", lambda a, m: m["state"].update(n_samples=-2), ["n_samples"]),
    ("auto", lambda a, m: m["state"].update(n_averaged="many"), ["n_averaged"]),
    ("auto", lambda a, m: m["state"].update(method="magic"), ["method"]),
    ("auto", lambda a, m: m["state"]["fold_in_prior"].update(noise=-1.0), ["fold_in_prior"]),
    ("auto", lambda a, m: m["state"]["fold_in_prior"].update(mean=[0.0]), ["fold_in_prior"]),
])
def test_swapped_shapes_and_bad_state_are_refused(tmp_path, every_kind, kind, edit, words):
    path = tmp_path / "tampered.npz"
    rewrite_npz(every_kind[kind], path, edit)
    msg = model_error(path)
    for word in words:
        assert word in msg, msg


@pytest.mark.parametrize("kind", ["lf", "gibbs", "auto", "bpr", "bias", "ials", "pop"])
def test_untampered_files_of_every_kind_load(every_kind, kind):
    model = lfopt.load(every_kind[kind])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        items, scores = model.recommend(model.user_ids_[0], k=3)
    assert len(items) == 3 and np.isfinite(scores).all()


def test_manifest_lists_every_array(saved):
    arrays = npz_members(saved)
    meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
    assert set(meta["arrays"]) == set(arrays)
    for name, (shape, dtype) in meta["arrays"].items():
        assert tuple(shape) == arrays[name].shape and np.dtype(dtype) == arrays[name].dtype


def test_files_without_manifest_still_load(tmp_path, saved, fitted_model):
    rewrite_npz(saved, tmp_path / "old.npz", lambda a, m: m.pop("arrays"))
    np.testing.assert_array_equal(lfopt.load(tmp_path / "old.npz").params_, fitted_model.params_)


def test_bpr_lambda_of_the_wrong_size_is_refused():
    import lfopt
    from lfopt.errors import ModelFileError

    data = lfopt.synthetic(n_users=40, n_items=30, nnz=600, seed=0)
    model = lfopt.BPRMF(rank=3, epochs=1, patience=None).fit(data, data)
    arrays = model._state_arrays()
    arrays["lam"] = np.concatenate([np.ravel(arrays["lam"]), [0.1]])
    with pytest.raises(ModelFileError, match="Lambda has the wrong size"):
        model._set_state(arrays, model._state_meta())
