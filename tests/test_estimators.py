"""The one estimator base: IDs everywhere, input kinds, recommend/similar, evaluate, sklearn, one model file.

Each 'broke for a new user' case of the core issue has a test here.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import lfopt
from lfopt import BPRMF, ConfigError, DataError, LatentFactorModel, ModelFileError
from lfopt.cli import main
from lfopt.ranking import implicit_split

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ML100K = DATA / "ml-100k" / "u.data"
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ml100k():
    if not ML100K.exists():
        pytest.skip("ML-100K not available")
    return lfopt.load_data(ML100K)


@pytest.fixture(scope="module")
def ml_split(ml100k):
    return implicit_split(ml100k, threshold=4, k_core=5, seed=0)


@pytest.fixture(scope="module")
def bpr(ml_split):
    return BPRMF(rank=16, epochs=3, patience=None, seed=1).fit(ml_split)


@pytest.fixture(scope="module")
def lf(ml100k):
    train, test = lfopt.random_split(ml100k, 0.1, seed=42)
    return LatentFactorModel(rank=8, optimizer="als", epochs=4, lam=0.05).fit(train), train, test


def seen_items(split, user_id):
    u = split.train.user_index([user_id])[0]
    return set(split.train.item_ids[split.train.items[split.train.users == u]]) | set(
        split.valid.item_ids[split.valid.items[split.valid.users == u]])


# ------------------------------------------------------------------ IDs
def test_bpr_recommend_takes_user_ids_not_indices(bpr, ml_split):
    uid = 196
    assert ml_split.train.user_index([uid])[0] != 196  # ID and index differ after the k-core
    items, scores = bpr.recommend(uid, k=10)
    assert items.shape == (10,) and np.all(np.diff(scores) <= 0)
    # the scores are those of user ID 196 for those item IDs
    np.testing.assert_allclose(scores, bpr.predict(np.full(10, uid), items), rtol=1e-5)
    assert not seen_items(ml_split, uid) & set(items.tolist())
    # and no other candidate scores higher than the 10th
    cand = np.setdiff1d(ml_split.train.item_ids, list(seen_items(ml_split, uid)))
    all_scores = bpr.predict(np.full(len(cand), uid), cand)
    assert np.sort(all_scores)[-10] == pytest.approx(scores[-1], rel=1e-5)


def test_recommend_one_many_and_all_users(lf):
    model, train, _ = lf
    one, s1 = model.recommend(196, k=5)
    many, sm = model.recommend([196, 186], k=5)
    assert many.shape == (2, 5) and sm.shape == (2, 5)
    np.testing.assert_array_equal(many[0], one)
    everyone, se = model.recommend(None, k=5, chunk_size=37)
    assert everyone.shape == (train.n_users, 5)
    np.testing.assert_array_equal(everyone[train.user_index([186])[0]], many[1])
    # seen items are excluded unless asked
    u = train.user_index([196])[0]
    rated = set(train.item_ids[train.items[train.users == u]])
    assert not rated & set(one.tolist())
    incl, _ = model.recommend(196, k=5, exclude_seen=False)
    top_all = model.predict(np.full(train.n_items, 196), train.item_ids, clip=False)
    np.testing.assert_array_equal(np.sort(incl), np.sort(train.item_ids[np.argsort(-top_all)[:5]]))


def test_recommend_restricted_items_and_unknown_users(lf):
    model, train, _ = lf
    subset = train.item_ids[:50]
    items, _ = model.recommend(196, k=5, items=subset)
    assert set(items.tolist()) <= set(subset.tolist())
    with pytest.warns(UserWarning, match="unknown"):
        recs, _ = model.recommend([196, "nobody"], k=3)
    pop, _ = model.recommend(None, k=3)  # noqa: F841
    bu, bi, P, Q = model.factors()
    # unknown users: the shrunk popularity (damped mean rating), not the raw item bias
    shrunk = model.mu_ + bi * model.item_counts_ / (model.item_counts_ + model.popularity_damping)
    top_pop = train.item_ids[np.argsort(-shrunk, kind="stable")[:3]]
    np.testing.assert_array_equal(recs[1], top_pop)
    assert model.item_counts_[model._item_cols(recs[1])].min() >= 50
    with pytest.raises(DataError, match="unknown"):
        model.recommend(196, items=["no-such-item"])
    with pytest.raises(ConfigError, match="k must"):
        model.recommend(196, k=0)


def test_recommend_all_with_untrained_items_and_a_last_user_without_entries():
    # item 3 and user 3 have no training entry: the candidate set is a subset and the
    # seen-items CSR ends with an empty row
    data = lfopt.Interactions([0, 0, 1, 2], [0, 1, 1, 2], [5.0, 4.0, 3.0, 1.0], n_users=4, n_items=4)
    model = LatentFactorModel(rank=2, optimizer="als", epochs=2).fit(data)
    items, scores = model.recommend(None, k=2)
    assert items.shape == (4, 2)
    assert items[0].tolist() == [2, -1]  # user 0 saw items 0 and 1; item 3 is never recommended
    assert set(items[1].tolist()) == {0, 2} and set(items[2].tolist()) == {0, 1}
    assert 3 not in items


def test_similar_items_and_users_by_cosine(lf):
    model, train, _ = lf
    bu, bi, P, Q = model.factors()
    ids, sc = model.similar_items(50, k=4)
    i = train.item_index([50])[0]
    Qn = Q / np.maximum(np.linalg.norm(Q, axis=1, keepdims=True), 1e-12)
    cos = Qn @ Qn[i]
    cos[i] = -np.inf
    cos[train.item_counts() == 0] = -np.inf
    np.testing.assert_array_equal(ids, train.item_ids[np.argsort(-cos, kind="stable")[:4]])
    np.testing.assert_allclose(sc, np.sort(cos)[::-1][:4], rtol=1e-5)
    uids, _ = model.similar_users([196, 186], k=3)
    assert uids.shape == (2, 3) and 196 not in uids[0] and 186 not in uids[1]


# ---------------------------------------------------------------- inputs
def test_fit_accepts_dataframe_and_scipy(ml100k):
    train, _ = lfopt.random_split(ml100k, 0.1, seed=0)
    df = pd.DataFrame({"uid": train.user_ids[train.users], "iid": train.item_ids[train.items],
                       "stars": train.values})
    a = LatentFactorModel(rank=4, optimizer="als", epochs=2).fit(df, columns={"user": "uid", "item": "iid",
                                                                              "rating": "stars"})
    b = LatentFactorModel(rank=4, optimizer="als", epochs=2).fit(lfopt.Interactions.from_dataframe(
        df, "uid", "iid", "stars"))
    np.testing.assert_array_equal(a.params_, b.params_)
    mat = sp.csr_matrix((train.values, (train.users, train.items)), shape=train.shape)
    c = LatentFactorModel(rank=4, optimizer="als", epochs=2).fit(mat)
    assert c.n_users_ == train.n_users and np.isfinite(c.predict([0], [0])).all()
    # BPR on an implicit DataFrame (no rating column: all ones)
    d = BPRMF(rank=4, epochs=1, patience=None).fit(df.rename(columns={"uid": "user", "iid": "item"})[["user", "item"]])
    assert d.n_items_ == df["iid"].nunique()
    with pytest.raises(DataError, match="DataFrame"):
        LatentFactorModel().fit([1, 2, 3])


def test_valid_by_original_ids(ml100k):
    train, valid = lfopt.random_split(ml100k, 0.1, seed=3)
    vdf = pd.DataFrame({"user": valid.user_ids[valid.users], "item": valid.item_ids[valid.items],
                        "rating": valid.values})
    a = LatentFactorModel(rank=4, optimizer="als", epochs=3).fit(train, valid)
    b = LatentFactorModel(rank=4, optimizer="als", epochs=3).fit(train, vdf)
    assert [r["valid_rmse"] for r in a.history_] == pytest.approx([r["valid_rmse"] for r in b.history_])


# -------------------------------------------------------------- evaluate
def test_evaluate_ranking_for_any_model(lf, bpr, ml_split):
    model, train, test = lf
    r = model.evaluate(test, kind="ranking", threshold=4)
    assert 0.5 < r["auc"] < 1 and 0 <= r["ndcg@10"] <= 1
    assert set(model.evaluate(test)) >= {"rmse", "mae"}
    b = bpr.evaluate(ml_split.test)
    assert 0.5 < b["auc"] < 1
    with pytest.raises(ConfigError, match="ranking model"):
        bpr.evaluate(ml_split.test, kind="rating")


# ------------------------------------------------------------- sklearn
@pytest.mark.parametrize("make", [
    lambda: LatentFactorModel(rank=7, optimizer="adam", lam=0.03, lr=0.02, batch_size=512),
    lambda: BPRMF(rank=9, regularizer="lambdaopt", granularity="du", ks=(5, 10)),
])
def test_sklearn_clone_get_set_params(make):
    from sklearn.base import clone

    model = make()
    params = model.get_params(deep=True)
    twin = clone(model)
    assert type(twin) is type(model) and twin.get_params() == params
    assert twin is not model
    if isinstance(model, BPRMF):
        assert model.granularity == "du" and model.ks == (5, 10)  # stored as given
    twin.set_params(rank=3)
    assert twin.rank == 3 and model.rank == params["rank"]
    with pytest.raises(ConfigError, match="no parameter"):
        BPRMF().set_params(nonsense=1)
    text = repr(model)
    assert text.startswith(type(model).__name__ + "(") and f"rank={params['rank']}" in text


def test_lf_set_params_routes_optimizer_options():
    model = LatentFactorModel(rank=3, lr=0.01)
    model.set_params(lr=0.05, epochs=2)
    assert model.get_params()["lr"] == 0.05 and model.epochs == 2


# -------------------------------------------------------------- model file
def test_one_model_file_for_every_model(tmp_path, bpr, lf, ml_split):
    path = bpr.save(tmp_path / "bpr.npz")
    loaded = lfopt.load(path)
    assert isinstance(loaded, BPRMF)
    np.testing.assert_array_equal(loaded.recommend(196, k=10)[0], bpr.recommend(196, k=10)[0])
    assert loaded.evaluate(ml_split.test)["ndcg@10"] == pytest.approx(bpr.evaluate(ml_split.test)["ndcg@10"])
    lpath = lf[0].save(tmp_path / "lf.npz")
    assert isinstance(lfopt.load(lpath), LatentFactorModel)
    with pytest.raises(ModelFileError, match="not a BPRMF"):
        BPRMF.load(lpath)


def test_legacy_files_still_load(tmp_path):
    data = lfopt.synthetic(n_users=60, n_items=40, nnz=900, seed=11)
    train, test = lfopt.random_split(data, 0.1, seed=0)
    old = lfopt.load(HERE / "data" / "legacy_v1_lf.npz")  # written by lfopt 0.1.0's LatentFactorModel.save
    ref = LatentFactorModel(rank=3, optimizer="als", epochs=3, lam=0.05, lam_b=None, lam0=0.0, lam0_b=None,
                            validation=None, standardize=False).fit(train)
    pairs = (test.user_ids[test.users], test.item_ids[test.items])
    np.testing.assert_allclose(old.predict(*pairs), ref.predict(*pairs), rtol=1e-5)
    with pytest.warns(UserWarning, match="no seen items"):
        old_bpr = lfopt.load(HERE / "data" / "legacy_bpr.npz")
    assert isinstance(old_bpr, BPRMF) and old_bpr.recommend(0, k=3)[0].shape == (3,)


# ------------------------------------------------------------------ CLI
def test_cli_rank_save_then_recommend_and_evaluate(tmp_path, capsys, ml_split):
    model = tmp_path / "bpr.npz"
    assert main(["rank", "--data", str(ML100K), "--threshold", "4", "--k-core", "5", "--rank", "8", "--epochs",
                 "2", "--regularizer", "fixed", "--save", str(model), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["recommend", "--model", str(model), "--user", "196", "-k", "5", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)["196"]
    assert len(recs) == 5
    loaded = lfopt.load(model)
    split = implicit_split(lfopt.load_data(ML100K), threshold=4, k_core=5, seed=42)
    assert not seen_items(split, 196) & {r["item"] for r in recs}
    assert loaded.seen_indptr_[-1] == split.train.nnz + split.valid.nnz
    assert main(["evaluate", "--model", str(model), "--data", str(ML100K), "--threshold", "4"]) == 0
    out = capsys.readouterr().out
    assert "AUC" in out and "ndcg@10" in out
    assert main(["evaluate", "--model", str(model), "--data", str(ML100K), "--kind", "rating"]) == 1


def test_cli_diverged_training_exits_nonzero(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["train", "--optimizer", "sgd", "--lr", "50", "--lambda", "0", "--epochs", "5", "--quiet",
                     "--output", str(tmp_path / "r.json")])
    assert code == 1
    err = capsys.readouterr().err
    assert "diverged" in err and not (tmp_path / "r.json").exists()


# --------------------------------------------------------------- trainer
def test_trainer_higher_is_better_restores_best_and_extra_state(ml_split):
    model = BPRMF(rank=8, epochs=12, lr=0.05, batch_size=64, regularizer="lambdaopt", granularity="D",
                  lam_lr=0.05, patience=2, seed=0).fit(ml_split)
    vals = [h["valid_ndcg@50"] for h in model.history_]
    assert model.best_epoch_ == int(np.argmax(vals)) + 1
    # Lambda restored with the best parameters: the trajectory's entry of the best epoch
    best_row = model.lambda_trajectory_[model.best_epoch_ - 1]
    assert float(np.mean(model.lambda_arrays()[0])) == pytest.approx(best_row["user"]["mean"], rel=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "als", "adam"])
def test_defaults_follow_the_rating_scale(optimizer):
    """Standardized fitting: a x20 copy of the ratings gives the same model in x20 units."""
    data = lfopt.synthetic(n_users=150, n_items=120, nnz=5000, seed=3)
    train, test = lfopt.random_split(data, 0.1, seed=0)
    big_train, big_test = (d.with_values(d.values * 20.0) for d in (train, test))
    kw = dict(rank=4, optimizer=optimizer, epochs=8, lam=0.05)
    small = LatentFactorModel(**kw).fit(train)
    big = LatentFactorModel(**kw).fit(big_train)
    assert small.scale_ == pytest.approx(big.scale_ / 20, rel=1e-5)
    assert big.evaluate(big_test)["rmse"] / 20 == pytest.approx(small.evaluate(test)["rmse"], rel=0.01)
    assert small.n_valid_ == 450 and len(small.history_[0]) and "valid_rmse" in small.history_[0]


def test_validation_none_trains_on_everything():
    data = lfopt.synthetic(n_users=60, n_items=50, nnz=1500, seed=3)
    model = LatentFactorModel(rank=3, epochs=3, validation=None).fit(data)
    assert model.n_train_ == 1500 and model.n_valid_ == 0 and "valid_rmse" not in model.history_[-1]
    with pytest.raises(lfopt.ConfigError, match="validation"):
        LatentFactorModel(validation=1.5)


def test_refit_trains_on_all_the_data_for_the_chosen_epochs():
    data = lfopt.synthetic(n_users=150, n_items=120, nnz=5000, seed=3)
    train, test = lfopt.random_split(data, 0.1, seed=0)
    kw = dict(rank=4, optimizer="als", epochs=30, lam=0.05, lam0=2.0)
    once = LatentFactorModel(refit=False, **kw).fit(train)
    twice = LatentFactorModel(**kw).fit(train)
    assert (once.n_train_, once.n_valid_) == (4050, 450)
    assert (twice.n_train_, twice.n_valid_) == (4500, 450)
    assert twice.best_epoch_ == once.best_epoch_
    assert [r["valid_rmse"] for r in twice.history_] == [r["valid_rmse"] for r in once.history_]
    # the refit uses 11 % more data, so it predicts better than the model that never saw the held-out part
    assert twice.evaluate(test)["rmse"] < once.evaluate(test)["rmse"]
