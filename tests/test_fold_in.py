"""Fold-in of new users, partial_fit, the shrunk-popularity fallback, min_support (issue 9)."""

from pathlib import Path
import warnings

import numpy as np
import pandas as pd
import pytest

import lfopt
from lfopt.errors import DataError

ML100K = Path("/work/shared/data/ml-100k/u.data")


def _rmse(a, b):
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


@pytest.fixture(scope="module")
def ml100k_split():
    if not ML100K.exists():
        pytest.skip("ML-100K not available")
    df = pd.read_csv(ML100K, sep="\t", names=["user", "item", "rating", "time"])[["user", "item", "rating"]]
    rng = np.random.default_rng(0)
    held = rng.choice(df.user.unique(), 50, replace=False)
    rest = df[~df.user.isin(held)]
    heldout = df[df.user.isin(held)].sample(frac=1.0, random_state=0)
    # half of each held-out user's ratings to fold in, the other half to score
    heldout = heldout.assign(k=heldout.groupby("user").cumcount(), n=heldout.groupby("user").user.transform("size"))
    fold = heldout[heldout.k < heldout.n // 2][["user", "item", "rating"]]
    score = heldout[heldout.k >= heldout.n // 2][["user", "item", "rating"]]
    model = lfopt.LatentFactorModel().fit(rest)
    return rest, fold, score, model


def test_fold_in_ml100k(ml100k_split, tmp_path):
    rest, fold, score, model = ml100k_split
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fallback = _rmse(model.predict(score.user.values, score.item.values), score.rating)
    folded = lfopt.estimators.load(model.save(tmp_path / "base.npz"))  # a copy; the fixture stays unfolded
    folded.fold_in(fold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # items unseen in training keep their fallback
        rmse_fold = _rmse(folded.predict(score.user.values, score.item.values), score.rating)
        retrained = lfopt.LatentFactorModel().fit(pd.concat([rest, fold]))
        rmse_retrain = _rmse(retrained.predict(score.user.values, score.item.values), score.rating)
    print(f"\nML-100K, 50 held-out users: fallback RMSE {fallback:.4f}  fold-in RMSE {rmse_fold:.4f}  "
          f"retrained RMSE {rmse_retrain:.4f}  (fold-in / retrain = {rmse_fold / rmse_retrain:.4f})")
    assert rmse_fold < fallback - 0.02
    assert rmse_fold <= 1.01 * rmse_retrain  # the sampled default's population prior: 1.0022
    # the folded-in users survive save/load, with their seen items
    path = folded.save(tmp_path / "folded.npz")
    back = lfopt.estimators.load(path)
    u = fold.user.values[0]
    assert u in set(back.user_ids_.tolist())
    some = score.item.values[:5]
    np.testing.assert_allclose(back.predict([u] * 5, some), folded.predict([u] * 5, some), rtol=1e-6)
    items, _ = back.recommend(u, k=50)
    assert not set(items.tolist()) & set(fold[fold.user == u].item.tolist())


def test_fold_in_single_user_matches_als_solve():
    data = lfopt.synthetic(n_users=300, n_items=120, nnz=12000, seed=1)
    model = lfopt.LatentFactorModel(rank=6, optimizer="als", epochs=15, validation=None, patience=None).fit(data)
    # re-solving a trained user from all its ratings with the items fixed is one more ALS half-step:
    # the converged row barely moves
    u = 7
    sel = data.users == u
    bu, bi, P, Q = (a.copy() for a in model.factors())
    model.fold_in(int(data.user_ids[u]), data.item_ids[data.items[sel]], data.values[sel])
    bu2, _, P2, _ = model.factors()
    assert abs(bu2[u] - bu[u]) < 0.05 * (abs(bu[u]) + 0.1)
    assert np.linalg.norm(P2[u] - P[u]) < 0.05 * np.linalg.norm(P[u])


def test_fold_in_errors_and_unknown_items():
    data = lfopt.synthetic(n_users=100, n_items=60, nnz=3000, seed=0)
    model = lfopt.LatentFactorModel(rank=4, epochs=3).fit(data)
    with pytest.raises(DataError, match="values"):
        model.fold_in(5000, [1, 2])
    with pytest.raises(DataError, match="none of the"):
        model.fold_in(5000, [99999], [4.0])
    with pytest.raises(DataError, match="integers"):
        model.fold_in("abc", [1], [4.0])
    with pytest.warns(UserWarning, match="unknown to the model"):
        model.fold_in(5000, [1, 99999], [4.0, 3.0])
    assert model.n_users_ == 101 and model.user_counts_[-1] == 1
    # many users at once: one warning; a user left with no known item is skipped, the others folded in
    batch = pd.DataFrame({"user": [6000, 6000, 6001], "item": [1, 2, 99999], "rating": [5.0, 4.0, 3.0]})
    with pytest.warns(UserWarning, match="1 user.* left with no item .*6001"):
        model.fold_in(batch)
    assert model.n_users_ == 102 and model.user_ids_[-1] == 6000 and model.user_counts_[-1] == 2
    with pytest.raises(DataError, match="none of the"):
        model.fold_in(batch.iloc[2:])
    assert model.n_users_ == 102


def test_partial_fit_grows_and_learns(ml100k_split):
    rest, fold, score, model0 = ml100k_split
    model = lfopt.LatentFactorModel(rank=8, epochs=10, validation=None, patience=None).fit(rest)
    m, n = model.n_users_, model.n_items_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fallback = _rmse(model.predict(score.user.values, score.item.values), score.rating)
    model.partial_fit(pd.concat([rest, fold]), epochs=3)
    assert model.n_users_ == m + 50 and model.n_items_ >= n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        after = _rmse(model.predict(score.user.values, score.item.values), score.rating)
    print(f"\nML-100K LF partial_fit(3 epochs), 50 new users: RMSE before (fallback) {fallback:.4f}, after {after:.4f}")
    assert after < fallback - 0.02


def test_shrunk_popularity_and_min_support(ml100k_split):
    rest, _, _, model = ml100k_split
    with pytest.warns(UserWarning, match="popularity"):
        items, _ = model.recommend(-12345, k=10)
    counts = model.item_counts_[model._item_cols(items)]
    assert counts.min() >= 50  # no item with a handful of ratings in the unknown user's top 10
    raw = model._fallback_scores()
    top_raw = np.argsort(-raw)[:10]
    assert model.item_counts_[top_raw].min() < counts.min()  # the raw bias would favour rare items
    items, _ = model.recommend(int(model.user_ids_[0]), k=20, min_support=100)
    assert (model.item_counts_[model._item_cols(items)] >= 100).all()


def test_bpr_and_baseline_fold_in(tmp_path):
    data = lfopt.synthetic(n_users=300, n_items=150, nnz=15000, seed=3)
    base = lfopt.BiasBaseline().fit(data)
    sel = data.users == 4
    items, vals = data.item_ids[data.items[sel]], data.values[sel]
    base.fold_in(777777, items, vals)
    assert abs(base.user_bias_[-1] - base.user_bias_[4]) < 1e-3
    from lfopt.ranking import BPRMF

    bpr = BPRMF(rank=8, epochs=10, patience=None).fit(data)
    bpr.fold_in(777777, items)
    P, Q = bpr.P_, bpr.Q_
    scores = Q @ P[-1]
    # the folded-in row ranks the user's own items above the rest
    own = np.zeros(len(scores), bool)
    own[data.items[sel]] = True
    assert scores[own].mean() > scores[~own].mean()
    back = lfopt.estimators.load(bpr.save(tmp_path / "bpr.npz"))
    assert back.n_users_ == bpr.n_users_


def test_evaluate_drop_counts():
    data = lfopt.synthetic(n_users=100, n_items=60, nnz=3000, seed=0)
    model = lfopt.BiasBaseline().fit(data)
    test = pd.DataFrame({"user": [0, 1, 10_000, 10_001], "item": [0, 1, 0, 1], "rating": [4.0, 3.0, 5.0, 1.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.evaluate(test, unseen="drop")
    assert out["n"] == 2 and out["n_dropped"] == 2 and out["n_unseen"] == 2
    with pytest.raises(DataError, match="nothing is left"):
        model.evaluate(test.iloc[2:], unseen="drop")


def test_cli_recommend_unknown_user_and_min_support(tmp_path, capsys):
    from lfopt.cli import main

    data = lfopt.synthetic(n_users=100, n_items=60, nnz=3000, seed=0)
    path = lfopt.BiasBaseline().fit(data).save(tmp_path / "m.npz")
    assert main(["recommend", "--model", str(path), "--user", "999999", "-k", "3"]) == 1
    assert "unknown to the model" in capsys.readouterr().err
    assert main(["recommend", "--model", str(path), "--user", "999999", "-k", "3", "--fallback", "--json"]) == 0
    captured = capsys.readouterr()
    assert len(__import__("json").loads(captured.out)["999999"]) == 3 and "popularity" in captured.err
    assert main(["recommend", "--model", str(path), "--user", "0", "-k", "60", "--min-support", "55", "--json"]) == 0
    recs = __import__("json").loads(capsys.readouterr().out)["0"]
    model = lfopt.estimators.load(path)
    assert all(model.item_counts_[model._item_cols([r["item"]])[0]] >= 55 for r in recs)


def _recall_at(model, fold, score, scores_of, k=20):
    """Mean recall@k of the held-out items over the held-out users, ranking every trained item the
    user did not fold in by ``scores_of(user)`` (model item order)."""
    out = []
    for u, g in score.groupby("user"):
        s = np.asarray(scores_of(u), dtype=np.float64).copy()
        s[model._item_cols(fold[fold.user == u].item.values)] = -np.inf
        s[model.item_counts_ == 0] = -np.inf
        top = set(np.argsort(-s, kind="stable")[:k].tolist())
        target = set(model._item_cols(g.item.values).tolist()) - {-1}
        if target:
            out.append(len(target & top) / min(k, len(target)))
    return float(np.mean(out))


def test_bpr_fold_in_and_partial_fit_beat_popularity_ml100k(ml100k_split, tmp_path):
    from lfopt.ranking import BPRMF

    rest, fold, score, _ = ml100k_split
    rest, fold, score = rest[["user", "item"]], fold[["user", "item"]], score[["user", "item"]]
    model = BPRMF(rank=32, epochs=20, patience=None, seed=0).fit(rest)
    m0 = model.n_users_
    pop = model.item_counts_.astype(np.float64).copy()
    recall_pop = _recall_at(model, fold, score, lambda u: pop)
    # fold-in: every held-out user's row from half of its items, the item side fixed
    folded = lfopt.estimators.load(model.save(tmp_path / "bpr.npz"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # items unseen in training
        folded.fold_in(fold)
    assert folded.n_users_ == m0 + 50
    recall_fold = _recall_at(folded, fold, score, lambda u: folded.Q_ @ folded.P_[folded._user_rows([u])[0]])
    # partial_fit: a few more epochs on all the data, new users starting as fit starts them
    grown = lfopt.estimators.load(model.save(tmp_path / "bpr2.npz"))
    grown.partial_fit(pd.concat([rest, fold]), epochs=5)
    assert grown.n_users_ == m0 + 50 and grown.history_[-1]["phase"] == "partial_fit"
    recall_pf = _recall_at(grown, fold, score, lambda u: grown.Q_ @ grown.P_[grown._user_rows([u])[0]])
    print(f"\nML-100K BPR, 50 held-out users, recall@20: popularity {recall_pop:.4f}  fold-in {recall_fold:.4f}  "
          f"partial_fit(5 epochs) {recall_pf:.4f}")
    assert recall_fold > recall_pop + 0.05
    assert recall_pf > recall_pop + 0.05
    assert not np.allclose(grown.P_[:m0], model.P_)  # every trained user took part, so they moved


def test_ranking_evaluate_with_nothing_known_is_an_error():
    data = lfopt.synthetic(n_users=100, n_items=60, nnz=3000, seed=0)
    model = lfopt.BiasBaseline().fit(data)
    test = pd.DataFrame({"user": [10_000, 10_001], "item": [0, 1], "rating": [4.0, 3.0]})
    with pytest.raises(DataError, match="nothing to rank"):
        model.evaluate(test, kind="ranking")


@pytest.mark.parametrize("kind", ["lf", "bpr"])
def test_partial_fit_keeps_absent_rows_and_string_ids(kind, tmp_path):
    from lfopt.ranking import BPRMF

    rng = np.random.default_rng(5)
    df = pd.DataFrame({"user": [f"u{x}" for x in rng.integers(0, 80, 3000)],
                       "item": [f"i{x}" for x in rng.integers(0, 50, 3000)],
                       "rating": rng.integers(1, 6, 3000).astype(float)}).drop_duplicates(["user", "item"])
    if kind == "lf":
        model = lfopt.LatentFactorModel(rank=4, epochs=5, validation=None, patience=None).fit(df)
        users_of = lambda m: m.factors()[2]  # noqa: E731
    else:
        df = df[["user", "item"]]
        model = BPRMF(rank=4, epochs=3, patience=None).fit(df)
        users_of = lambda m: m.P_  # noqa: E731
    before = users_of(model).copy()
    new = pd.DataFrame({"user": ["u1", "u1", "newbie", "newbie"], "item": ["i1", "i2", "i3", "brand-new"],
                        "rating": [5.0, 4.0, 3.0, 4.0]})
    if kind == "bpr":
        new = new[["user", "item"]]
    model.partial_fit(new, epochs=2)
    assert model.user_ids_[-1] == "newbie" and model.item_ids_[-1] == "brand-new"
    assert model.n_users_ == len(before) + 1 and model.item_counts_[-1] == 1
    after = users_of(model)
    untouched = np.ones(len(before), bool)
    untouched[model._user_rows(["u1"])] = False
    np.testing.assert_array_equal(after[:len(before)][untouched], before[untouched])
    assert not np.array_equal(after[model._user_rows(["u1"])[0]], before[model._user_rows(["u1"])[0]])
    back = lfopt.estimators.load(model.save(tmp_path / "m.npz"))
    assert back.user_ids_[-1] == "newbie"
    items, _ = back.recommend("newbie", k=5)
    assert not {"i3", "brand-new"} & set(items.tolist())
    # a string-ID model refuses an integer ID for a new user, clearly
    with pytest.raises(DataError, match="strings"):
        back.fold_in(12345, ["i1"], [4.0] if kind == "lf" else None)


@pytest.mark.parametrize("n_touched", [1, 40, 1500])
def test_add_seen_matches_a_rebuilt_csr(n_touched):
    import copy

    from lfopt.eval.ranking import merged_csr

    data = lfopt.synthetic(n_users=2000, n_items=300, nnz=40000, seed=0)
    model = lfopt.BiasBaseline().fit(data)
    rng = np.random.default_rng(n_touched)
    rows = rng.choice(model.n_users_, n_touched, replace=False)[rng.integers(0, n_touched, 4000)]
    cols = rng.integers(0, model.n_items_, len(rows))
    m = copy.deepcopy(model)
    n_new = m._add_seen(rows, cols)  # few rows: merged row by row; many: one global sort
    order = np.lexsort((cols, rows))
    ptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=model.n_users_))]
    ref_ptr, ref_idx = merged_csr([(model.seen_indptr_, model.seen_indices_), (ptr, cols[order].astype(np.int32))],
                                  model.n_users_, model.n_items_)
    np.testing.assert_array_equal(m.seen_indptr_, ref_ptr)
    np.testing.assert_array_equal(m.seen_indices_, ref_idx)
    assert n_new == len(ref_idx) - len(model.seen_indices_) == m._new_pairs_per_row.sum() == m._new_pairs_per_col.sum()
    np.testing.assert_array_equal(m._new_pairs_per_row, np.diff(ref_ptr) - np.diff(model.seen_indptr_))
