"""BPR-MF training, lambdaOpt, grid search, recommendation and model files."""

import numpy as np
import pytest

from lfopt.data.interactions import Interactions
from lfopt.errors import ConfigError, DataError, ModelFileError
from lfopt.eval.ranking import full_ranking_metrics
from lfopt.ranking import BPRMF, GRANULARITIES, ImplicitSplit, grid_search, implicit_split


def _low_rank_implicit(seed=0, m=240, n=160, rank=4, per_user=24):
    """Each user's positives are drawn from a softmax of a rank-4 affinity: learnable signal."""
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(m, rank))
    V = rng.normal(size=(n, rank))
    pop = rng.normal(0, 0.5, n)
    logits = 1.5 * U @ V.T + pop
    users, items = [], []
    for u in range(m):
        p = np.exp(logits[u] - logits[u].max())
        p /= p.sum()
        chosen = rng.choice(n, size=per_user, replace=False, p=p)
        users += [u] * per_user
        items += chosen.tolist()
    data = Interactions(np.array(users), np.array(items), np.ones(len(users)), n_users=m, n_items=n)
    return implicit_split(data, k_core=3, seed=seed)


@pytest.fixture(scope="module")
def split():
    return _low_rank_implicit()


def test_bpr_learns_beyond_random(split):
    model = BPRMF(rank=8, epochs=15, lr=0.01, batch_size=256, lam=0.001, patience=None, seed=1).fit(split)
    res = model.evaluate(split.test)
    # random scores give AUC ~ 0.5; the data has a strong rank-4 signal
    rng = np.random.default_rng(0)
    rand = full_ranking_metrics(rng.normal(size=(split.n_users, 8)), rng.normal(size=(split.n_items, 8)),
                                split.test, (split.train, split.valid))
    assert rand["auc"] < 0.6
    assert res["auc"] > 0.75
    assert res["ndcg@10"] > 2 * rand["ndcg@10"]
    losses = [h["train_loss"] for h in model.history_]
    assert losses[-1] < losses[0] < np.log(2) + 0.01
    assert len(model.history_) == 15 and model.stopped_ == "max_epochs"
    assert "by_activity" in res


@pytest.mark.parametrize("kw", [dict(optimizer="sgd", lr=0.05),
                                dict(regularizer="lambdaopt", granularity="DUI", lam_lr=0.003),
                                dict(regularizer="lambdaopt", granularity="DU", optimizer="sgd", lr=0.05)])
def test_training_does_not_depend_on_thread_count(split, kw):
    import numba

    def run():
        return BPRMF(rank=6, epochs=3, batch_size=128, seed=3, patience=None, **kw).fit(split)

    a = run()
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        b = run()
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(a.P_, b.P_)
    np.testing.assert_array_equal(a.Q_, b.Q_)
    np.testing.assert_array_equal(a.lambda_, b.lambda_)
    assert a.history_[-1]["train_loss"] < a.history_[0]["train_loss"]


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_lambdaopt_granularities(split, granularity):
    model = BPRMF(rank=6, epochs=3, lr=0.01, batch_size=128, regularizer="lambdaopt", granularity=granularity,
                  lam=0.01, lam_lr=0.003, item_bias=True, patience=None, seed=2).fit(split)
    lu, li = model.lambda_arrays()
    shapes = {"global": ((1, 1), (1, 1)), "D": ((1, 6), (1, 6)), "DU": ((split.n_users, 6), (1, 6)),
              "DI": ((1, 6), (split.n_items, 6)), "DUI": ((split.n_users, 6), (split.n_items, 6))}
    assert (lu.shape, li.shape) == shapes[granularity]
    assert np.all(model.lambda_ >= 0)
    assert not np.allclose(model.lambda_, 0.01)  # Lambda was learned
    traj = model.lambda_trajectory_
    assert len(traj) == 3 and {"user", "item"} <= set(traj[0])
    assert traj[0]["user"]["p5"] <= traj[0]["user"]["p50"] <= traj[0]["user"]["p95"]
    if granularity in ("DU", "DUI"):
        assert "user_by_activity" in traj[-1]
    if granularity in ("DI", "DUI"):
        assert "item_by_activity" in traj[-1]
    assert all(np.isfinite(h["valid_loss"]) for h in model.history_)
    assert np.isfinite(model.evaluate(split.test)["auc"])


def test_early_stopping_restores_best(split):
    model = BPRMF(rank=8, epochs=40, lr=0.05, batch_size=64, lam=0.0, patience=2, seed=0).fit(split)
    values = [h["valid_ndcg@50"] for h in model.history_]
    assert model.best_epoch_ == int(np.argmax(values)) + 1
    assert model.best_valid_ == pytest.approx(max(values))
    if model.stopped_ == "early_stop":
        assert len(values) == model.best_epoch_ + 2


def test_grid_search_selects_on_validation(split):
    best, table = grid_search(split, [0.0, 0.5], rank=6, epochs=3, lr=0.01, batch_size=128, patience=None)
    assert [row["lambda"] for row in table] == [0.0, 0.5]
    vals = [row["valid_ndcg@50"] for row in table]
    assert best.lam == table[int(np.argmax(vals))]["lambda"]
    with pytest.raises(ConfigError):
        grid_search(split, [])


def test_recommend_excludes_seen_and_save_load(split, tmp_path):
    model = BPRMF(rank=4, epochs=2, batch_size=128, item_bias=True, patience=None).fit(split)
    items, scores = model.recommend(3, k=5)
    assert items.shape == (5,) and np.all(np.diff(scores) <= 0)
    seen = set(split.train.items[split.train.users == 3]) | set(split.valid.items[split.valid.users == 3])
    assert not seen & set(items.tolist())
    all_items, _ = model.recommend(None, k=5, chunk_size=50)
    assert all_items.shape == (split.n_users, 5)
    np.testing.assert_array_equal(all_items[3], items)
    few, _ = model.recommend(split.train.user_ids[[3, 7]], k=5, chunk_size=1)
    np.testing.assert_array_equal(few, all_items[[3, 7]])
    path = model.save(tmp_path / "bpr.npz")
    with pytest.raises(FileExistsError):
        model.save(path)
    loaded = BPRMF.load(path)
    np.testing.assert_array_equal(loaded.P_, model.P_)
    pairs = (np.repeat(split.train.user_ids[3], 4), split.train.item_ids[:4])
    np.testing.assert_allclose(loaded.predict(*pairs), model.predict(*pairs))
    # the reloaded model still excludes what the user had in fit
    np.testing.assert_array_equal(loaded.recommend(3, k=5)[0], items)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFileError):
        BPRMF.load(bad)


def test_bad_configuration(split):
    with pytest.raises(ConfigError, match="granularity"):
        BPRMF(regularizer="lambdaopt", granularity="DX")
    with pytest.raises(ConfigError):
        BPRMF(optimizer="rmsprop")
    with pytest.raises(ConfigError):
        BPRMF(lam=-1)
    with pytest.raises(ConfigError):
        BPRMF(metric="mrr")
    with pytest.raises(DataError, match="validation"):
        BPRMF(regularizer="lambdaopt", epochs=1).fit(split.train)
    with pytest.raises(ConfigError, match="not fitted"):
        BPRMF().recommend(0)
    other = ImplicitSplit(split.train, split.valid.subset(np.arange(0)), split.test)
    with pytest.raises(DataError):
        BPRMF(regularizer="lambdaopt", epochs=1).fit(other)


def test_lambdaopt_with_sgd_holdout_and_callback(split):
    rows = []

    def cb(model, row):
        row["test_auc"] = model.evaluate(split.test, ks=(5,), activity=None)["auc"]
        rows.append(row["epoch"])

    model = BPRMF(rank=6, optimizer="sgd", lr=0.05, epochs=3, batch_size=128, regularizer="lambdaopt",
                  granularity="DI", lam=0.0, lam_lr=0.003, lambda_holdout=0.5, patience=None, seed=4)
    model.fit(split, callback=cb)
    assert rows == [1, 2, 3] and all("test_auc" in h for h in model.history_)
    _, li = model.lambda_arrays()
    assert li.shape == (split.n_items, 6) and li.max() > 0 and li.min() >= 0
    # early stopping ranks the held-out half only, so its metric differs from a full-validation run
    assert model.history_[-1]["valid_ndcg@50"] > 0
    with pytest.raises(ConfigError):
        BPRMF(lambda_holdout=1.0)
