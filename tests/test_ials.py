"""Implicit-feedback ALS (kernels and estimator) and the popularity baseline.

Kernels are checked against a dense numpy / torch model of the full m x n objective
on tiny problems: the row solves (Cholesky exact, CG converging to it), the loss, its
monotone decrease under exact ALS and its zero gradient at the ALS solution.
"""

import numpy as np
import pytest
import scipy.sparse as sp

import lfopt
from lfopt.errors import ConfigError, DataError, ModelFileError
from lfopt.estimators.ials import ImplicitALS, PopularityRanker
from lfopt.kernels import ials as K
from lfopt.kernels.lf import single_threaded_blas


def _problem(m=30, n=25, f=8, density=0.2, alpha=2.0, seed=0):
    rng = np.random.default_rng(seed)
    R = sp.random(m, n, density=density, random_state=seed + 1, format="csr", dtype=np.float32)
    R.data = rng.integers(1, 5, R.nnz).astype(np.float32)
    R.sort_indices()
    conf = (1 + alpha * R.data).astype(np.float32)
    X = rng.normal(0, 0.3, (m, f)).astype(np.float32)
    Y = rng.normal(0, 0.3, (n, f)).astype(np.float32)
    C = np.ones((m, n))
    P = np.zeros((m, n))
    Rd = R.toarray()
    C[Rd > 0] = 1 + alpha * Rd[Rd > 0]
    P[Rd > 0] = 1.0
    Rt = R.tocsc()
    Rt.sort_indices()
    csr = (R.indptr.astype(np.int64), R.indices.astype(np.int32), conf)
    csc = (Rt.indptr.astype(np.int64), Rt.indices.astype(np.int32), (1 + alpha * Rt.data).astype(np.float32))
    return csr, csc, X, Y, C, P


def _dense_rows(Y, C, P, lam):
    """argmin_X sum_ui c_ui (p_ui - x_u.y_i)^2 + sum_u lam_u |x_u|^2, row by row (float64)."""
    Yd = Y.astype(np.float64)
    lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), (C.shape[0],))
    f = Y.shape[1]
    return np.stack([np.linalg.solve(Yd.T @ (C[u][:, None] * Yd) + lam[u] * np.eye(f), Yd.T @ (C[u] * P[u]))
                     for u in range(C.shape[0])])


def _dense_loss(X, Y, C, P, lam_x, lam_y):
    X, Y = X.astype(np.float64), Y.astype(np.float64)
    pen_x = (np.broadcast_to(lam_x, (X.shape[0],)) * (X ** 2).sum(1)).sum()
    pen_y = (np.broadcast_to(lam_y, (Y.shape[0],)) * (Y ** 2).sum(1)).sum()
    return float((C * (P - X @ Y.T) ** 2).sum() + pen_x + pen_y)


@pytest.mark.parametrize("f", [8, 64])
@pytest.mark.parametrize("per_row", [False, True])
def test_cholesky_rows_match_dense_solve(f, per_row):
    csr, _, X, Y, C, P = _problem(f=f, n=90 if f == 64 else 25)
    m = C.shape[0]
    lam = np.linspace(0.2, 3.0, m) if per_row else 0.7
    ref = _dense_rows(Y, C, P, lam)
    for use_blas in (False, True):  # f = 64: BLAS ssyrk path and the numba Gram kernel
        out = np.zeros((m, f), np.float32)
        with single_threaded_blas() as blas:
            K.ials_user_rows(Y, K.gramian(Y), *csr, K.as_row_weights(lam, m), 0, out, blas if use_blas else 0)
        assert np.abs(out - ref).max() < 2e-4 * max(1.0, np.abs(ref).max())


def test_cg_rows_converge_to_the_exact_solve_warm_started():
    csr, _, X, Y, C, P = _problem()
    m, f = X.shape
    ref = _dense_rows(Y, C, P, 0.5)
    lam = K.as_row_weights(0.5, m)
    errs = []
    for steps in (1, 3, 8, f + 4):
        out = np.zeros((m, f), np.float32)
        K.ials_user_rows(Y, K.gramian(Y), *csr, lam, steps, out)
        errs.append(np.abs(out - ref).max())
    assert errs[0] > errs[1] > errs[2] and errs[-1] < 1e-4  # f steps: exact (up to rounding)
    # warm start: 3 steps from a point near the solution land nearer than 3 steps from zero
    start = (ref + 0.01 * np.random.default_rng(1).normal(size=ref.shape)).astype(np.float32)
    K.ials_user_rows(Y, K.gramian(Y), *csr, lam, 3, start)
    assert np.abs(start - ref).max() < errs[1]


def test_one_new_user_row():
    """The kernel solves a single user's row from its own CSR (what fold-in does)."""
    csr, _, X, Y, C, P = _problem()
    u = 4
    items = csr[1][csr[0][u]:csr[0][u + 1]]
    conf = csr[2][csr[0][u]:csr[0][u + 1]]
    out = np.zeros((1, Y.shape[1]), np.float32)
    K.ials_user_rows(Y, K.gramian(Y), np.array([0, len(items)], np.int64), items, conf, K.as_row_weights(0.5, 1), 0,
                     out)
    np.testing.assert_allclose(out[0], _dense_rows(Y, C[u:u + 1], P[u:u + 1], 0.5)[0], atol=2e-5)


def test_loss_matches_dense_objective():
    csr, _, X, Y, C, P = _problem()
    lx, ly = np.linspace(0.1, 1, X.shape[0]), np.array([0.3])
    got = K.ials_loss(*csr, X, Y, lx, ly)
    assert got == pytest.approx(_dense_loss(X, Y, C, P, lx, ly), rel=1e-5)


def test_cholesky_als_decreases_loss_monotonically_and_cg_goes_down():
    csr, csc, X, Y, C, P = _problem(seed=3)
    m, n = C.shape
    lx, ly = K.as_row_weights(0.3, m), K.as_row_weights(0.3, n)
    for steps in (0, 3):
        Xs, Ys = X.copy(), Y.copy()
        losses = [K.ials_loss(*csr, Xs, Ys, lx, ly)]
        for _ in range(12):
            K.ials_sweep(csr, csc, Xs, Ys, lx, ly, steps)
            losses.append(K.ials_loss(*csr, Xs, Ys, lx, ly))
        d = np.diff(losses)
        if steps == 0:
            assert (d <= 1e-6 * losses[0]).all()  # exact ALS: monotone
        assert losses[-1] < 0.5 * losses[0]


def test_gradient_is_zero_at_the_als_solution():
    torch = pytest.importorskip("torch")
    csr, csc, X, Y, C, P = _problem(m=15, n=12, f=4, seed=5)
    m, n = C.shape
    lx, ly = K.as_row_weights(0.4, m), K.as_row_weights(0.4, n)
    for _ in range(300):
        K.ials_sweep(csr, csc, X, Y, lx, ly, 0)
    Xt = torch.tensor(X, dtype=torch.float64, requires_grad=True)
    Yt = torch.tensor(Y, dtype=torch.float64, requires_grad=True)
    Ct, Pt = torch.tensor(C), torch.tensor(P)
    loss = (Ct * (Pt - Xt @ Yt.T) ** 2).sum() + 0.4 * ((Xt ** 2).sum() + (Yt ** 2).sum())
    loss.backward()
    # the scale of the gradient's terms: 2 sum c |y| ~ tens; at the solution it is float32 noise
    assert Yt.grad.abs().max().item() < 1e-4  # Y was solved last: its gradient is exactly 0 up to rounding
    assert Xt.grad.abs().max().item() < 1e-3  # X: converged
    # and a random point is far from stationary
    Z = torch.tensor(np.random.default_rng(0).normal(0, 0.3, X.shape), requires_grad=True)
    loss2 = (Ct * (Pt - Z @ Yt.detach().T) ** 2).sum() + 0.4 * (Z ** 2).sum()
    loss2.backward()
    assert Z.grad.abs().max().item() > 0.1


# ------------------------------------------------------------------ estimator
@pytest.fixture(scope="module")
def split():
    data = lfopt.synthetic(n_users=300, n_items=200, nnz=15000, seed=0)
    return lfopt.implicit_split(data, threshold=4, k_core=3)


@pytest.fixture(scope="module")
def clustered():
    """Users in 6 taste groups, each mostly interacting with its own group's items."""
    rng = np.random.default_rng(0)
    m, n, groups = 300, 180, 6
    ug, ig = rng.integers(0, groups, m), np.arange(n) % groups
    users, items = [], []
    for u in range(m):
        own = np.flatnonzero(ig == ug[u])
        chosen = np.unique(np.r_[rng.choice(own, 14, replace=False), rng.choice(n, 4, replace=False)])
        users += [u] * len(chosen)
        items += list(chosen)
    data = lfopt.Interactions(users, items, np.ones(len(users)))
    return lfopt.implicit_split(data, k_core=3)


def test_ials_beats_popularity_and_both_round_trip(clustered, tmp_path):
    split = clustered
    pop = PopularityRanker().fit(split)
    models = {s: ImplicitALS(rank=16, epochs=8, solver=s, seed=1).fit(split) for s in ("cg", "cholesky")}
    p = pop.evaluate(split.test)
    for model in models.values():
        r = model.evaluate(split.test)
        assert r["ndcg@10"] > p["ndcg@10"] + 0.1 and r["auc"] > p["auc"] + 0.1
        assert len(model.history_) == 8 and all(h["epoch_seconds"] >= 0 for h in model.history_)
    # the exact solver's loss never goes up
    losses = [h["train_loss"] for h in models["cholesky"].history_]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(losses, losses[1:]))
    for model in (models["cg"], pop):
        path = model.save(tmp_path / f"{type(model).__name__}.npz")
        back = lfopt.load(path)
        assert type(back) is type(model)
        norm = lambda params: {k: (list(v) if k == "ks" else v) for k, v in params.items()}  # noqa: E731
        assert norm(back.get_params()) == norm(model.get_params())
        users = split.train.user_ids[:5]
        i1, s1 = model.recommend(users, k=7)
        i2, s2 = back.recommend(users, k=7)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_allclose(s1, s2)
        assert back.evaluate(split.test)["ndcg@10"] == pytest.approx(model.evaluate(split.test)["ndcg@10"])
    items, scores = models["cg"].similar_items(split.train.item_ids[0], k=4)
    assert len(items) == 4 and np.all(np.diff(scores) <= 0) and split.train.item_ids[0] not in items
    with pytest.raises(ConfigError, match="similar_items"):
        pop.similar_items(split.train.item_ids[0])


def test_recommend_excludes_seen_and_pop_ranks_by_count(split):
    pop = PopularityRanker().fit(split)
    counts = split.train.item_counts()
    user = split.train.user_ids[0]
    row = split.train.user_index([user])[0]
    seen = set(split.train.csr.indices[split.train.csr.indptr[row]:split.train.csr.indptr[row + 1]]) | set(
        split.valid.csr.indices[split.valid.csr.indptr[row]:split.valid.csr.indptr[row + 1]])
    items, scores = pop.recommend(user, k=10)
    cols = split.train.item_index(items)
    assert not (set(cols) & seen)
    assert list(scores) == sorted(scores, reverse=True) and scores[0] == counts[cols[0]]
    unseen = np.setdiff1d(np.arange(split.n_items), list(seen))
    assert scores[0] == counts[unseen].max()


def test_popularity_mean_is_shrunk():
    # item 0: two 5s; item 1: forty 4.5s; item 2: forty 2s (global mean 3.3)
    u = np.r_[0, 1, np.arange(40), np.arange(40)]
    i = np.r_[0, 0, np.ones(40, int), np.full(40, 2)]
    v = np.r_[5.0, 5.0, np.full(40, 4.5), np.full(40, 2.0)]
    data = lfopt.Interactions(u, i, v)
    raw = PopularityRanker(by="mean", shrink=0).fit(data).scores_
    shrunk = PopularityRanker(by="mean", shrink=10).fit(data).scores_
    assert raw[0] > raw[1] and shrunk[1] > shrunk[0]
    assert list(PopularityRanker(by="sum").fit(data).scores_) == [10.0, 180.0, 80.0]
    assert list(PopularityRanker().fit(data).scores_) == [2, 40, 40]


def test_early_stopping_on_validation_keeps_the_best_epoch(split):
    model = ImplicitALS(rank=16, epochs=30, patience=2, lam=0.0005, metric="ndcg@20", seed=2).fit(split)
    hist = model.history_
    vals = [h["valid_ndcg@20"] for h in hist]
    assert model.best_epoch_ == int(np.argmax(vals)) + 1
    if model.stopped_ == "early_stop":
        assert len(hist) == model.best_epoch_ + 2
    # the kept factors are the best epoch's: re-scoring validation gives its value
    from lfopt.eval.ranking import per_user_metrics, summarize

    again = summarize(per_user_metrics(model.P_, model.Q_, split.valid, [split.train], None, (20,)))["ndcg@20"]
    assert again == pytest.approx(max(vals), rel=1e-6)


def test_callback_sees_every_epoch(split):
    rows = []
    ImplicitALS(rank=4, epochs=3).fit(split.train, callback=lambda model, row: rows.append(row["epoch"]))
    assert rows == [1, 2, 3]


def test_value_normalization_and_lambda_scaling():
    rng = np.random.default_rng(0)
    u = rng.integers(0, 40, 600)
    i = rng.integers(0, 30, 600)
    key = np.unique(u * 30 + i)
    u, i = key // 30, key % 30
    v = rng.integers(1, 20, len(u)).astype(float)
    a = ImplicitALS(rank=4, epochs=3, solver="cholesky").fit(lfopt.Interactions(u, i, v))
    b = ImplicitALS(rank=4, epochs=3, solver="cholesky").fit(lfopt.Interactions(u, i, 100 * v))
    np.testing.assert_allclose(a.Q_, b.Q_, rtol=1e-3, atol=1e-5)  # alpha is relative to the value scale
    c = ImplicitALS(rank=4, epochs=3, solver="cholesky", normalize_values=False).fit(lfopt.Interactions(u, i, v))
    assert not np.allclose(a.Q_, c.Q_)
    # "none": one lambda for every row, as in implicit; "frequency": lam times the row's confidence
    obj = a.objective_
    c_rows = np.bincount(np.repeat(np.arange(40), np.diff(obj.csr[0])), weights=obj.csr[2] - 1.0, minlength=40)
    np.testing.assert_allclose(obj.lam_x, 0.02 * (30 + c_rows))
    n = ImplicitALS(rank=4, epochs=1, lam_scaling="none", lam=0.5).fit(lfopt.Interactions(u, i, v))
    assert n.objective_.lam_x.tolist() == [0.5]


def test_user_factors_for_matches_the_row_solve(split):
    model = ImplicitALS(rank=8, epochs=3, solver="cholesky").fit(split)
    row = 3
    ptr = split.train.csr.indptr
    cols = split.train.csr.indices[ptr[row]:ptr[row + 1]]
    x = model.user_factors_for(cols)
    Q = model.Q_.astype(np.float64)
    c = np.ones(model.n_items_)
    c[cols] = 1 + model.alpha
    p = np.zeros(model.n_items_)
    p[cols] = 1
    lam = model.lam * (model.n_items_ + model.alpha * len(cols))
    ref = np.linalg.solve(Q.T @ (c[:, None] * Q) + lam * np.eye(8), Q.T @ (c * p))
    np.testing.assert_allclose(x, ref, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(solver="lu"), "solver"), (dict(cg_steps=0), "cg_steps"), (dict(alpha=-1), "alpha"),
    (dict(lam=float("nan")), "lam"), (dict(lam_scaling="log"), "lam_scaling"), (dict(rank=0), "rank"),
    (dict(metric="mrr"), "metric"), (dict(normalize_values="yes"), "normalize_values"),
])
def test_bad_parameters(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ImplicitALS(**kwargs)


def test_bad_values_and_damaged_files(tmp_path, split):
    with pytest.raises(DataError, match="non-negative"):
        ImplicitALS(rank=2, epochs=1).fit(lfopt.Interactions([0, 1], [0, 1], [1.0, -2.0]))
    with pytest.raises(ConfigError, match="by must be"):
        PopularityRanker(by="median")
    model = ImplicitALS(rank=4, epochs=1).fit(split)
    path = model.save(tmp_path / "m.npz")
    with np.load(path) as z:
        arrays = dict(z)
    arrays["params"] = arrays["params"][:-3]
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ModelFileError, match="damaged"):
        lfopt.load(bad)


def test_fold_in_of_a_held_out_user_matches_the_training_solve():
    """Folding a user in with the items fixed is the exact row solve of training: a user
    trained with the others and then re-solved from the same items gets the same row."""
    import lfopt

    data = lfopt.to_implicit(lfopt.synthetic(n_users=120, n_items=80, nnz=3000, seed=5))
    model = lfopt.ImplicitALS(rank=6, epochs=4, solver="cholesky", seed=1).fit(data)
    u = 7
    items = data.item_ids[data.csr.indices[data.csr.indptr[u]:data.csr.indptr[u + 1]]]
    vals = data.csr.data[data.csr.indptr[u]:data.csr.indptr[u + 1]]
    before = model.P_.copy()
    model.fold_in(10**6, items=items, values=vals)
    assert model.n_users_ == before.shape[0] + 1
    # the last sweep solved the items after the users: re-solve user u now against the final Q
    model.fold_in(data.user_ids[u], items=items, values=vals)
    np.testing.assert_allclose(model.P_[-1], model.P_[u], rtol=1e-4, atol=1e-5)
    assert np.array_equal(model.P_[:u], before[:u])
    recs, _ = model.recommend(10**6, k=5)
    assert not set(recs.tolist()) & set(items.tolist())


def test_popularity_fold_in_excludes_the_users_items(tmp_path):
    import lfopt

    data = lfopt.synthetic(n_users=60, n_items=40, nnz=900, seed=2)
    model = lfopt.PopularityRanker().fit(data)
    top, _ = model.recommend(data.user_ids[0], k=3, exclude_seen=False)
    model.fold_in(10**6, items=top[:2])
    recs, _ = model.recommend(10**6, k=3)
    assert not set(recs.tolist()) & set(top[:2].tolist())
    again = lfopt.load(model.save(tmp_path / "pop.npz"))
    assert np.array_equal(again.recommend(10**6, k=3)[0], recs)


def test_keep_values_split_and_log_confidence():
    """implicit_split(keep_values=True) makes the same split with the values kept; the log value
    transform gives c = 1 + alpha log(1 + r) / mean(log(1 + r)), and on 0/1 data the same model."""
    import lfopt
    from lfopt.estimators.ials import ImplicitALS

    rng = np.random.default_rng(0)
    base = lfopt.synthetic(n_users=120, n_items=80, nnz=3000, seed=1)
    counts = np.floor(np.exp(rng.normal(3, 1.5, base.nnz))).astype(np.float32) + 1
    data = base.with_values(counts)
    a = lfopt.implicit_split(data, k_core=3, seed=5)
    b = lfopt.implicit_split(data, k_core=3, seed=5, keep_values=True)
    for pa, pb in ((a.train, b.train), (a.valid, b.valid), (a.test, b.test)):
        np.testing.assert_array_equal(pa.users, pb.users)
        np.testing.assert_array_equal(pa.items, pb.items)
        assert np.all(pa.values == 1.0)
    lookup = {(u, i): v for u, i, v in zip(data.user_ids[data.users].tolist(), data.item_ids[data.items].tolist(),
                                           data.values.tolist())}
    kept = [lookup[(u, i)] for u, i in zip(b.train.user_ids[b.train.users].tolist(),
                                          b.train.item_ids[b.train.items].tolist())]
    np.testing.assert_array_equal(b.train.values, np.asarray(kept, dtype=np.float32))
    assert b.info["keep_values"] is True and a.info["keep_values"] is False
    with pytest.raises(ConfigError, match="keep_values"):
        lfopt.implicit_split(data, keep_values="yes")

    m = ImplicitALS(rank=4, epochs=2, value_transform="log", seed=0).fit(b)
    r = b.train.values.astype(np.float64)
    expect = 1.0 + 10.0 * np.log1p(r) / np.log1p(r).mean()
    np.testing.assert_allclose(m.confidences(r), expect, rtol=1e-6)
    lin = ImplicitALS(rank=4, epochs=2, seed=0).fit(b)
    np.testing.assert_allclose(lin.confidences(r), 1.0 + 10.0 * r / r.mean(), rtol=1e-6)
    # 0/1 data: the normalization makes both transforms the same model
    m1 = ImplicitALS(rank=4, epochs=2, value_transform="log", seed=0).fit(a)
    m2 = ImplicitALS(rank=4, epochs=2, seed=0).fit(a)
    np.testing.assert_allclose(m1._factors()[0], m2._factors()[0], rtol=1e-5, atol=1e-6)
    assert ImplicitALS(value_transform="log").get_params()["value_transform"] == "log"
    with pytest.raises(ConfigError, match="value_transform"):
        ImplicitALS(value_transform="sqrt")
