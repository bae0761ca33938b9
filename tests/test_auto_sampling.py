"""The default pipeline (optimizer="auto"): Bayesian averaging where it is affordable, kept as the
rank-``rank_`` summary of the posterior mean (lfopt.optim.gibbs.low_rank_mean)."""

import json
import warnings

import numpy as np
import pytest

import lfopt
from lfopt.cli import main
from lfopt.estimators import lf as lf_module
from lfopt.optim import gibbs
from lfopt.optim.gibbs import low_rank_mean


@pytest.fixture(scope="module")
def split():
    data = lfopt.synthetic(n_users=300, n_items=200, nnz=12000, seed=3)
    return lfopt.random_split(data, 0.1, seed=0)


def test_low_rank_mean_is_the_best_rank_k_approximation():
    rng = np.random.default_rng(0)
    U = (rng.standard_normal((120, 90)) * np.geomspace(50, 0.01, 90)).astype(np.float32)
    V = rng.standard_normal((80, 90)).astype(np.float32)
    M = U.astype(np.float64) @ V.T.astype(np.float64)
    P, Q = low_rank_mean(U, V, 8)
    assert P.shape == (120, 8) and Q.shape == (80, 8) and P.dtype == np.float32
    u, s, vt = np.linalg.svd(M)
    best = np.linalg.norm(M - (u[:, :8] * s[:8]) @ vt[:8])
    assert np.linalg.norm(M - P.astype(np.float64) @ Q.T) <= 1.01 * best
    # fewer columns than k: exact, padded with zeros
    P2, Q2 = low_rank_mean(U[:, :3], V[:, :3], 5)
    np.testing.assert_allclose(P2 @ Q2.T, U[:, :3] @ V[:, :3].T, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="k must be"):
        low_rank_mean(U, V, 0)


def test_sample_store_is_bounded_unless_asked(split, monkeypatch):
    assert gibbs.default_max_samples(6040, 3706, 32) == 200  # ML-1M: 260 MB
    assert gibbs.default_max_samples(6_800_000, 0, 7) == 8  # at least 8 whatever the size
    train, _ = split
    per_sample = 4 * (train.n_users + train.n_items) * 5
    monkeypatch.setattr(gibbs, "STORE_BYTES", 10 * per_sample)
    model = lfopt.LatentFactorModel(rank=4, epochs=60, seed=1, keep_samples=True).fit(train)
    assert model.n_samples_ <= 10  # 40 offered, thinned evenly to fit the store
    asked = lfopt.LatentFactorModel(rank=4, epochs=60, seed=1, keep_samples=True, max_samples=64).fit(train)
    assert asked.n_samples_ == 40


def test_default_samples_and_keeps_a_summary_that_predicts_as_the_samples_do(split, tmp_path):
    train, test = split
    auto = lfopt.LatentFactorModel(rank=4, epochs=60, seed=1).fit(train)
    exact = lfopt.LatentFactorModel(rank=4, epochs=60, seed=1, keep_samples=True).fit(train)
    assert auto.optimizer_.name == "gibbs" and auto.method_ == "gibbs"
    assert auto.n_samples_ == exact.n_samples_ == 40  # 60 sweeps, burn-in min(20, 60 // 2)
    assert auto.posterior_ is None and auto.optimizer_.samples is None  # the store is let go
    assert auto.factors()[2].shape == (train.n_users, 4)
    rows, cols = test.user_ids[test.users], test.item_ids[test.items]
    pa, pe = auto.predict(rows, cols), exact.predict(rows, cols)
    assert np.sqrt(np.mean((pa - pe) ** 2)) < 0.02 * np.std(pe)  # rank 4 of a rank-4 model's average
    ra, re = auto.evaluate(test)["rmse"], exact.evaluate(test)["rmse"]
    assert abs(ra - re) < 0.002
    # better than the point estimate ALS gives with the same rank here
    als = lfopt.LatentFactorModel(rank=4, optimizer="als", seed=1).fit(train)
    assert ra < als.evaluate(test)["rmse"]
    # one model file of a point estimate's size; it loads and predicts the same
    path = auto.save(tmp_path / "auto.npz")
    with np.load(path) as z:
        assert not any(k.startswith("posterior") for k in z.files)
    back = lfopt.load(path)
    assert back.n_samples_ == 40 and back.method_ == "gibbs" and back.rank_ == 4
    np.testing.assert_allclose(back.predict(rows, cols), pa, rtol=1e-6)
    # a new user's row is its posterior mean under the trained users' population, the same after load
    for m in (auto, back):
        m.fold_in(10**6, train.item_ids[:5], [5.0, 4.0, 5.0, 1.0, 2.0])
    np.testing.assert_allclose(back.predict([10**6] * 4, train.item_ids[5:9]),
                               auto.predict([10**6] * 4, train.item_ids[5:9]), rtol=1e-6)
    prior = auto.fold_in_prior_
    bu, bi, P, Q = (np.asarray(a, np.float64) for a in auto.factors())
    Z = np.hstack([Q[:5], np.ones((5, 1))])
    t = np.array([5.0, 4.0, 5.0, 1.0, 2.0]) - auto.mu_ - bi[:5]
    A = prior["precision"] + Z.T @ Z / prior["noise"]
    z = np.linalg.solve(A, prior["precision"] @ prior["mean"] + Z.T @ t / prior["noise"])
    row = auto.n_users_ - 1
    np.testing.assert_allclose(np.append(P[row], bu[row]), z, rtol=1e-4, atol=1e-5)


def test_summary_model_updates_rows_by_their_posterior_and_folds_in(split):
    train, test = split
    old, new = lfopt.random_split(train, 0.2, seed=5)
    model = lfopt.LatentFactorModel(rank=4, epochs=40, seed=2).fit(old)
    before = model.evaluate(test)["rmse"]
    untouched = np.setdiff1d(np.arange(old.n_users), np.unique(new.users))
    p_before = model.factors()[2][untouched].copy()
    model.partial_fit(new)  # one exact Bayesian pass over the rows the new ratings touch
    assert [r.get("phase") for r in model.history_].count("partial_fit") == 1
    after = model.evaluate(test)["rmse"]
    assert model.n_samples_ > 0 and after < before - 0.005, (before, after)  # 20 % more ratings help
    assert len(untouched) > 0
    np.testing.assert_array_equal(model.factors()[2][untouched], p_before)  # rows without new ratings stay
    # pairs fitted before are not counted again: the same data twice, or old and new together
    after_once = [a.copy() for a in model.factors()]
    model.partial_fit(new)
    assert model.history_[-1]["users_updated"] == 0 and model.history_[-1]["items_updated"] == 0
    for a, b in zip(model.factors(), after_once):
        np.testing.assert_array_equal(a, b)
    both = lfopt.LatentFactorModel(rank=4, epochs=40, seed=2).fit(old).partial_fit(train)
    for a, b in zip(both.factors(), after_once):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    model.fold_in(10**6, train.item_ids[:3], [4.0, 3.0, 5.0])
    assert np.all(np.isfinite(model.predict([10**6] * 2, train.item_ids[3:5])))


def test_auto_falls_back_to_als_where_the_sampler_cannot_or_should_not_run(split, monkeypatch):
    train, _ = split

    def method(**kw):
        return lfopt.LatentFactorModel(rank=4, epochs=2, **kw)._resolve_optimizer(train)

    assert method() == "gibbs"
    assert method(lam="learn") == "als"
    assert method(lam=0.1) == "als" and method(lam0=2.0) == "als"  # a penalty by hand: the optimizer using it
    assert method(lam=0.05, lam0=6.0) == "gibbs"  # the defaults, given explicitly
    with pytest.raises(lfopt.errors.ConfigError, match="sgd, adam, adago"):
        method(lr=0.01)  # an option only gradient optimizers take: say which
    assert method(burn_in=5) == "gibbs"  # a sampler option keeps the sampler
    assert method(optimizer="sgd") == "sgd" and method(preset="accurate") == "gibbs"
    work = lf_module.sampling_work(train.n_users, train.n_items, train.nnz, 4)
    assert work == 200 * (train.nnz * 25 + (train.n_users + train.n_items) * 125)
    monkeypatch.setattr(lf_module, "AUTO_SAMPLING_WORK", work - 1)  # just too much work
    assert method() == "als"
    model = lfopt.LatentFactorModel(rank=4, epochs=3).fit(train)
    assert model.optimizer_.name == "als" and model.n_samples_ == 0 and model.n_valid_ > 0


def test_degenerate_data_samples_without_a_false_divergence():
    import pandas as pd

    constant = pd.DataFrame({"user": [1, 1, 2, 2, 3], "item": [1, 2, 1, 3, 2], "rating": [4.0] * 5})
    tiny = pd.DataFrame({"user": [1, 2, 3], "item": [1, 1, 2], "rating": [1.0, 5.0, 3.0]})
    for df in (constant, tiny):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "diverged" (nor any other) warning
            model = lfopt.LatentFactorModel().fit(df)
        assert model.stopped_ == "max_epochs" and model.n_samples_ == 180
        pred = model.predict(df.user.values, df.item.values)
        assert np.all(np.isfinite(pred)) and np.all((pred >= 1.0) & (pred <= 5.0))
    assert np.allclose(lfopt.LatentFactorModel().fit(constant).predict([1, 2], [1, 3]), 4.0)


def test_cli_default_says_what_ran(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["train", "--n-users", "200", "--n-items", "150", "--nnz", "6000", "--rank", "3", "--epochs", "30",
                 "--output", str(out)]) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "optimizer gibbs (auto, 15 samples averaged, their rank-3 summary)" in text
    header = [line.split() for line in captured.err.splitlines() if line.split()[:1] == ["epoch"]]
    assert header and "samples" in header[0]  # the progress lines count the samples averaged
    res = json.loads(out.read_text())
    assert res["options"]["optimizer"] == "gibbs" and res["n_valid"] == 0


def _load_predict_save(path, out):
    model = lfopt.load(path)
    model.predict(model.user_ids_[:3], model.item_ids_[:3])
    model.save(out)


def test_a_forked_process_can_use_a_model_loaded_and_used_before_the_fork(split, tmp_path):
    """Loading a model and predicting a few pairs starts no thread pool: numba's OpenMP threads in a
    parent kill a forked child that runs a parallel kernel ('fork() called from a process already
    using GNU OpenMP'), which is what servers that preload a model and fork workers do."""
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("needs fork")
    train, _ = split
    path = lfopt.LatentFactorModel(rank=3, epochs=25, seed=0).fit(train).save(tmp_path / "m.npz")
    import subprocess
    import sys

    code = (
        "import multiprocessing as mp, sys\n"
        "import lfopt\n"
        "from tests.test_auto_sampling import _load_predict_save\n"
        f"m = lfopt.load({str(path)!r}); m.predict(m.user_ids_[:3], m.item_ids_[:3])\n"
        "p = mp.get_context('fork').Process(target=_load_predict_save, "
        f"args=({str(path)!r}, {str(tmp_path / 'child.npz')!r}))\n"
        "p.start(); p.join(60); sys.exit(p.exitcode)\n"
    )
    from pathlib import Path

    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    assert (tmp_path / "child.npz").exists()
