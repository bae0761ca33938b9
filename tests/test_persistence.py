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
        assert "array.npy" in model_error(path)

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
        assert "wrong size" in model_error(tmp_path / "short.npz")

    def test_pickled_npz_is_refused(self, tmp_path):
        buf = io.BytesIO()
        np.savez(buf, obj=np.array([{"a": 1}], dtype=object))
        path = tmp_path / "pickled.npz"
        path.write_bytes(buf.getvalue())
        assert "pickled.npz" in model_error(path)
