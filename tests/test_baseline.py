"""BiasBaseline: the damped bias-only model (the accuracy floor of METHODS.md section 7)."""

from __future__ import annotations

import doctest
import warnings

import numpy as np
import pytest

import lfopt
from lfopt.errors import ConfigError
from lfopt.estimators import baseline as baseline_module
from lfopt.estimators.baseline import DEFAULT_GRID, BiasBaseline, fit_biases

from conftest import ML100K, dataset_path

# a tiny hand-made matrix: 3 users x 3 items, 6 ratings (item 2 only rated by user 2)
U = np.array([0, 0, 1, 1, 2, 2])
I = np.array([0, 1, 0, 1, 1, 2])
R = np.array([5.0, 3.0, 4.0, 2.0, 1.0, 4.0])


def tiny():
    return lfopt.Interactions(U, I, R, n_users=3, n_items=3)


def ridge_solution(lam_u, lam_i):
    """min sum (r - mu - b_u - b_i)^2 + lam_u |b_u|^2 + lam_i |b_i|^2, solved as one linear system."""
    X = np.zeros((len(R), 6))
    X[np.arange(len(R)), U] = 1.0
    X[np.arange(len(R)), 3 + I] = 1.0
    D = np.diag([lam_u] * 3 + [lam_i] * 3)
    b = np.linalg.solve(X.T @ X + D, X.T @ (R - R.mean()))
    return b[:3], b[3:]


@pytest.fixture(scope="module")
def ml100k():
    data = lfopt.load_data(dataset_path(ML100K))  # skips when the shared data is absent
    return lfopt.random_split(data, 0.1, seed=42)


# ------------------------------------------------------------- closed form
def test_one_alternation_is_the_classic_damped_formula():
    lam_u, lam_i = 2.0, 1.0
    mu = R.mean()  # 19/6
    # item biases first, from b_u = 0: sum (r - mu) / (n_i + lam_i)
    bi = np.array([(5 - mu + 4 - mu) / (2 + lam_i), (3 - mu + 2 - mu + 1 - mu) / (3 + lam_i), (4 - mu) / (1 + lam_i)])
    # then the user biases on the residuals of mu + b_i
    bu = np.array([(5 - mu - bi[0] + 3 - mu - bi[1]) / (2 + lam_u), (4 - mu - bi[0] + 2 - mu - bi[1]) / (2 + lam_u),
                   (1 - mu - bi[1] + 4 - mu - bi[2]) / (2 + lam_u)])
    model = BiasBaseline(lam_u=lam_u, lam_i=lam_i, n_iter=1).fit(tiny())
    mu_, bu_, bi_ = model.biases()
    assert mu_ == pytest.approx(mu)
    np.testing.assert_allclose(bi_, bi, atol=1e-12)
    np.testing.assert_allclose(bu_, bu, atol=1e-12)
    assert model.selection_ == [] and model.valid_rmse_ is None  # both given: no selection
    # predictions are mu + b_u + b_i, clipped to the training range [1, 5]
    np.testing.assert_allclose(model.predict([0, 2], [1, 2]), np.clip([mu + bu[0] + bi[1], mu + bu[2] + bi[2]], 1, 5))


def test_alternations_converge_to_the_joint_ridge_solution():
    bu_star, bi_star = ridge_solution(2.0, 1.0)
    one = BiasBaseline(lam_u=2.0, lam_i=1.0, n_iter=1).fit(tiny())
    many = BiasBaseline(lam_u=2.0, lam_i=1.0, n_iter=200).fit(tiny())
    np.testing.assert_allclose(many.user_bias_, bu_star, atol=1e-9)
    np.testing.assert_allclose(many.item_bias_, bi_star, atol=1e-9)
    assert np.abs(one.user_bias_ - bu_star).max() > 1e-3  # one pass is not the joint solution here
    # the recorded objective never rises (block coordinate descent)
    losses = [row["train_loss"] for row in many.history_]
    assert len(losses) == 200 and all(b <= a + 1e-12 for a, b in zip(losses, losses[1:]))


def test_zero_damping_and_empty_rows():
    data = lfopt.Interactions(U, I, R, n_users=4, n_items=4)  # user 3 and item 3 have no rating
    model = BiasBaseline(lam_u=0, lam_i=0, n_iter=5).fit(data)
    assert np.isfinite(model.user_bias_).all() and np.isfinite(model.item_bias_).all()
    assert model.user_bias_[3] == 0 and model.item_bias_[3] == 0
    mu, bu, bi = fit_biases(U, I, R, 4, 4, 0, 0, 5)
    np.testing.assert_allclose(model.user_bias_, bu)


# ------------------------------------------------------- damping selection
def test_damping_is_chosen_on_the_carved_validation_part(ml100k):
    train, test = ml100k
    model = BiasBaseline(seed=7).fit(train)
    assert model.valid_source_ == "carved"
    assert len(model.selection_) == len(DEFAULT_GRID) ** 2
    best = min(model.selection_, key=lambda s: s["valid_rmse"])
    assert (model.lam_u_, model.lam_i_) == (best["lam_u"], best["lam_i"])
    # recompute the validation RMSE of every pair on the carve, independently of the class
    perm = np.random.default_rng(7).permutation(train.nnz)
    n_valid = int(round(0.1 * train.nnz))
    hold, keep = perm[:n_valid], perm[n_valid:]
    u, i, r = train.users, train.items, train.values.astype(np.float64)
    for s in model.selection_[::7]:
        mu, bu, bi = fit_biases(u[keep], i[keep], r[keep], *train.shape, s["lam_u"], s["lam_i"], 10)
        pred = np.clip(mu + bu[u[hold]] + bi[i[hold]], 1, 5)
        assert s["valid_rmse"] == pytest.approx(np.sqrt(np.mean((pred - r[hold]) ** 2)), rel=1e-12)
    # the final model is refit on ALL training data with the chosen pair
    mu, bu, bi = fit_biases(u, i, r, *train.shape, model.lam_u_, model.lam_i_, 10)
    np.testing.assert_allclose(model.user_bias_, bu)
    # another seed carves another validation part
    other = BiasBaseline(seed=8).fit(train)
    assert other.selection_[0]["valid_rmse"] != model.selection_[0]["valid_rmse"]


def test_damping_is_chosen_on_given_valid_never_on_test(ml100k):
    train, test = ml100k
    inner, valid = lfopt.random_split(train, 0.2, seed=3)
    model = BiasBaseline(grid=(0.1, 5, 1000)).fit(inner, valid=valid)
    assert model.valid_source_ == "given"

    def rmse_on(data, lu, li):
        mu, bu, bi = fit_biases(inner.users, inner.items, inner.values, *inner.shape, lu, li, 10)
        return np.sqrt(np.mean((np.clip(mu + bu[data.users] + bi[data.items], 1, 5) - data.values) ** 2))

    pairs = [(a, b) for a in (0.1, 5, 1000) for b in (0.1, 5, 1000)]
    on_valid = min(pairs, key=lambda p: rmse_on(valid, *p))
    assert (model.lam_u_, model.lam_i_) == on_valid
    # fitting never sees the test set: the choice is the same whatever the test data holds
    assert [s["valid_rmse"] for s in model.selection_] == pytest.approx([rmse_on(valid, *p) for p in pairs])


def test_one_damping_given_selects_only_the_other(ml100k):
    train, _ = ml100k
    model = BiasBaseline(lam_u=25).fit(train)
    assert model.lam_u_ == 25 and {s["lam_u"] for s in model.selection_} == {25.0}
    assert len(model.selection_) == len(DEFAULT_GRID)


# ------------------------------------------------------------------ accuracy
def test_beats_the_global_mean_and_matches_the_reference_on_ml100k(ml100k):
    train, test = ml100k
    model = BiasBaseline().fit(train)
    scores = model.evaluate(test)
    mean_rmse = float(np.sqrt(np.mean((train.values.mean() - test.values) ** 2)))
    assert scores["rmse"] < mean_rmse - 0.15  # global mean: 1.12
    assert scores["rmse"] == pytest.approx(0.9312, abs=5e-4)  # METHODS.md section 7


# ------------------------------------------------- predict, recommend, files
def test_recommend_ranks_by_item_bias_and_excludes_seen(ml100k):
    train, _ = ml100k
    model = BiasBaseline(lam_u=5, lam_i=3).fit(train)
    user = train.user_ids[0]
    items, scores = model.recommend(user, k=20)
    seen = set(train.item_ids[train.items[train.users == 0]].tolist())
    assert not seen & set(items.tolist())
    cols = model._item_cols(items)
    np.testing.assert_allclose(scores, (model.mu_ + model.user_bias_[0] + model.item_bias_[cols]).astype(np.float32),
                               rtol=1e-6)
    candidates = np.setdiff1d(np.flatnonzero(model.item_counts_ > 0), list(model._item_cols(list(seen))))
    top = candidates[np.argsort(-model.item_bias_[candidates], kind="stable")[:20]]
    np.testing.assert_allclose(np.sort(model.item_bias_[cols]), np.sort(model.item_bias_[top]))
    # all users at once, in blocks
    ids, sc = model.recommend(k=5)
    assert ids.shape == (train.n_users, 5) and np.all(np.diff(sc, axis=1) <= 0)
    with pytest.raises(ConfigError, match="no latent factors"):
        model.similar_items(items[0])


def test_unknown_ids_fall_back_to_mean_plus_known_bias():
    model = BiasBaseline(lam_u=1, lam_i=1).fit(tiny())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = model.predict([99, 0], [1, 99])
    assert model.n_unknown_ == 2
    np.testing.assert_allclose(pred, [model.mu_ + model.item_bias_[1], model.mu_ + model.user_bias_[0]])


def test_save_load_round_trip(tmp_path, ml100k):
    train, test = ml100k
    model = BiasBaseline(grid=(3, 10)).fit(train)
    path = model.save(tmp_path / "floor")
    back = lfopt.load(path)
    assert isinstance(back, BiasBaseline) and back.get_params()["grid"] == [3, 10]
    assert (back.lam_u_, back.lam_i_, back.valid_rmse_) == (model.lam_u_, model.lam_i_, model.valid_rmse_)
    assert back.selection_ == model.selection_
    assert back.evaluate(test) == model.evaluate(test)
    users, items = train.user_ids[train.users[:50]], train.item_ids[train.items[:50]]
    np.testing.assert_array_equal(back.predict(users, items), model.predict(users, items))
    np.testing.assert_array_equal(back.recommend(train.user_ids[:3], k=7)[0], model.recommend(train.user_ids[:3], k=7)[0])
    assert BiasBaseline.load(path).lam_u_ == model.lam_u_
    with pytest.raises(FileExistsError):
        model.save(path)


def test_parameters_are_checked_and_cloneable():
    for bad in (dict(lam_u=-1), dict(lam_i=float("nan")), dict(n_iter=0), dict(n_iter=2.5), dict(grid=[]),
                dict(grid=[1, -3]), dict(valid_fraction=1.0), dict(seed="x")):
        with pytest.raises(ConfigError, match=next(iter(bad)) if "grid" not in bad else "grid"):
            BiasBaseline(**bad)
    sklearn = pytest.importorskip("sklearn.base")
    model = BiasBaseline(lam_u=3, n_iter=4)
    assert sklearn.clone(model).get_params() == model.get_params()
    assert repr(model) == "BiasBaseline(lam_u=3, n_iter=4)"
    with pytest.raises(ConfigError, match="not fitted"):
        model.predict([0], [0])


def test_docstring_examples():
    result = doctest.testmod(baseline_module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
