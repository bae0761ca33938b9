"""Per-(row, dimension) L2 weights on every LF oracle (both backends), and the fast exact solves
(ALS, block preconditioner) of lfopt.kernels.lf.

Weights of shape (m, f) / (n, f) give every (row, dimension) its own coefficient: the oracles are
checked against torch autodiff (float64), the ALS sweep against the exact per-row minimizer, the
per-entry kernels against a plain Python replay, and 1-D weights broadcast to 2-D against the 1-D path.
"""

import numpy as np
import pytest

from lfopt.data.synthetic import synthetic
from lfopt.errors import ConfigError
from lfopt.kernels import lf as K
from lfopt.models.lf import LFObjective

torch = pytest.importorskip("torch")

from test_kernels import _per_row_blocks, _rel, _torch_model  # noqa: E402  (the torch autodiff reference of the LF objective)

F = 4
BACKENDS = ["numba", "torch"]


def _weights(data, f=F, seed=11):
    """Random per-(row, dim) factor weights and per-row bias weights (zero on empty rows)."""
    rng = np.random.default_rng(seed)
    cu, ci = data.user_counts().astype(np.float64), data.item_counts().astype(np.float64)
    wu = rng.uniform(0.0, 0.3, (len(cu), f)) * cu[:, None]
    wi = rng.uniform(0.0, 0.3, (len(ci), f)) * ci[:, None]
    wbu = rng.uniform(0.0, 0.3, len(cu)) * cu
    wbi = rng.uniform(0.0, 0.3, len(ci)) * ci
    return [w.astype(np.float32) for w in (wu, wi, wbu, wbi)]


def _setup(use_bias, backend="numba", seed=1, weights="2d"):
    data = synthetic(n_users=60, n_items=40, nnz=800, seed=seed)
    obj = LFObjective(data, rank=F, lam=0.05, use_bias=use_bias, backend=backend)
    w = _weights(data)
    if weights == "2d":
        obj.set_row_weights(*w)
    y = obj.init_params(0.7, seed=3)
    y = np.asarray(obj.backend.to_numpy(y)).copy()
    if use_bias:
        bu, bi, _, _ = obj.layout.unpack(y)
        rng = np.random.default_rng(5)
        bu[:] = rng.normal(0, 0.3, bu.shape)
        bi[:] = rng.normal(0, 0.3, bi.shape)
    return data, obj, y, [x.astype(np.float64) for x in w]


def _dev(obj, y):
    return obj.backend.asarray(y)


def _np(obj, x):
    return np.asarray(obj.backend.to_numpy(x), dtype=np.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_2d_weights_loss_grad_gvp_diag_match_autodiff(backend, use_bias):
    data, obj, y, w = _setup(use_bias, backend)
    predict, loss, reg_diag = _torch_model(data, obj, w)
    y64 = torch.tensor(y.astype(np.float64), requires_grad=True)
    lt = loss(y64)
    lt.backward()
    g = obj.backend.zeros(y.size)
    assert obj.loss_grad(_dev(obj, y), g) == pytest.approx(lt.item(), rel=1e-5)
    assert obj.loss(_dev(obj, y)) == pytest.approx(lt.item(), rel=1e-5)
    assert _rel(_np(obj, g), y64.grad.numpy()) < 1e-5
    np.testing.assert_allclose(_np(obj, obj.reg_diagonal()), reg_diag, rtol=1e-6)
    # Gauss-Newton product J^T J v + W v
    v = np.random.default_rng(0).standard_normal(y.size).astype(np.float32)
    out = obj.backend.zeros(y.size)
    obj.gvp(_dev(obj, y), _dev(obj, v), out)
    yd = torch.tensor(y.astype(np.float64))
    _, jv = torch.func.jvp(predict, (yd,), (torch.tensor(v.astype(np.float64)),))
    _, vjp = torch.func.vjp(predict, yd)
    assert _rel(_np(obj, out), vjp(jv)[0].numpy() + reg_diag * v) < 1e-5
    # exact GN diagonal
    J = torch.autograd.functional.jacobian(predict, yd).numpy()
    d = obj.backend.zeros(y.size)
    obj.gn_diag(_dev(obj, y), d)
    assert _rel(_np(obj, d), (J ** 2).sum(0) + reg_diag) < 1e-5
    # the step polynomial is the exact loss along a line (penalty with the 2-D weights)
    direction = (0.3 * np.random.default_rng(1).standard_normal(y.size)).astype(np.float32)
    coef = obj.step_polynomial(_dev(obj, y), _dev(obj, direction))
    for t in (0.3, 1.0, 2.5):
        yt = torch.tensor((y + t * direction).astype(np.float32).astype(np.float64))
        assert np.polynomial.Polynomial(coef)(t) == pytest.approx(loss(yt).item(), rel=1e-5)
    # the block preconditioner inverts the per-row blocks of G + shift I
    shift = 0.7
    M = _per_row_blocks(obj, J.T @ J + np.diag(reg_diag) + shift * np.eye(y.size))
    r = np.random.default_rng(2).standard_normal(y.size).astype(np.float32)
    out = obj.backend.zeros(y.size)
    obj.block_preconditioner(_dev(obj, y), shift=shift)(_dev(obj, r), out)
    assert _rel(_np(obj, out), np.linalg.solve(M, r.astype(np.float64))) < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_2d_weights_als_sweep_is_the_exact_row_minimizer(backend, use_bias):
    """Users are solved first against the old items, then items against the new users: after the
    sweep the item-side gradient vanishes, and each user row equals its own ridge solution."""
    data, obj, y, w = _setup(use_bias, backend)
    y0 = y.copy()
    yd = _dev(obj, y)
    obj.als_sweep(yd)
    y1 = _np(obj, yd)
    g = obj.backend.zeros(y.size)
    obj.loss_grad(yd, g)
    gbu, gbi, gP, gQ = obj.layout.unpack(_np(obj, g))
    scale = np.abs(_np(obj, g)).max()
    assert np.abs(gQ).max() < 1e-3 * scale
    if use_bias:
        assert np.abs(gbi).max() < 1e-3 * scale
    # the user rows: exact ridge solves against the items of y0 (float64 reference)
    _, bi0, _, Q0 = obj.layout.unpack(y0.astype(np.float64))
    bu1, _, P1, _ = obj.layout.unpack(y1)
    csr = data.csr
    for u in range(obj.m):
        idx = csr.indices[csr.indptr[u]:csr.indptr[u + 1]]
        t = csr.data[csr.indptr[u]:csr.indptr[u + 1]] - obj.mu
        Z = Q0[idx]
        if use_bias:
            t = t - bi0[idx]
            Z = np.hstack([Z, np.ones((len(idx), 1))])
        reg = np.where(w[0][u] == 0, 1e-6 * len(idx), w[0][u])
        diag = np.concatenate([reg, [w[2][u]]]) if use_bias else reg
        x = np.linalg.solve(Z.T @ Z + np.diag(diag), Z.T @ t)
        got = np.concatenate([P1[u], [bu1[u]]]) if use_bias else P1[u]
        assert np.abs(got - x).max() < 1e-4 * max(1.0, np.abs(x).max())


def _replay_sgd(obj, y, order, lr, v):
    """Plain per-entry SGD over the positions ``order`` (float32 arithmetic as the kernel)."""
    vu, vi, vbu, vbi = v
    bu, bi, P, Q = obj.layout.unpack(y)
    t = obj.train
    f32 = np.float32
    sse = 0.0
    for k in order:
        u, i = t.users[k], t.items[k]
        e = f32(t.values[k]) - f32(obj.mu) - f32(P[u] @ Q[i])
        if obj.use_bias:
            e -= bu[u] + bi[i]
        sse += float(e) ** 2
        if obj.use_bias:
            bu[u] += f32(lr) * (e - vbu[u] * bu[u])
            bi[i] += f32(lr) * (e - vbi[i] * bi[i])
        pu, qi = P[u].copy(), Q[i].copy()
        P[u] = pu + f32(lr) * (e * qi - vu[u] * pu)
        Q[i] = qi + f32(lr) * (e * pu - vi[i] * qi)
    return sse


@pytest.mark.parametrize("use_bias", [True, False])
def test_2d_visits_sgd_epoch_and_batch_grad_match_a_reference(use_bias):
    data, obj, y, w = _setup(use_bias)
    rng = np.random.default_rng(4)
    visits = [rng.uniform(0.0, 0.5, (obj.m, F)), rng.uniform(0.0, 0.5, (obj.n, F)),
              rng.uniform(0.0, 0.5, obj.m), rng.uniform(0.0, 0.5, obj.n)]
    visits = [a.astype(np.float32) for a in visits]
    obj.set_row_weights(*[x.astype(np.float32) for x in w], visits=visits)
    lr = 0.02
    a = y.copy()
    sse = obj.sgd_epoch(a, lr, seed=1) * obj.nnz
    b = y.copy()
    ref = _replay_sgd(obj, b, obj.kernels.sgd_order(), lr, visits)
    assert sse == pytest.approx(ref, rel=1e-4)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # mini-batch gradient and diagonal: scale x sums over the batch of -e dr/dy + v y, (dr/dy)^2 + v
    batch = np.arange(0, data.nnz, 3)
    g, d = np.zeros_like(y), np.zeros_like(y)
    obj.batch_grad(y, batch, g, d, scale=2.0)
    bu, bi, P, Q = (x.astype(np.float64) for x in obj.layout.unpack(y))
    rg = [np.zeros_like(x) for x in (bu, bi, P, Q)]
    rd = [np.zeros_like(x) for x in (bu, bi, P, Q)]
    vu, vi, vbu, vbi = (x.astype(np.float64) for x in visits)
    for k in batch:
        u, i = data.users[k], data.items[k]
        e = data.values[k] - obj.mu - P[u] @ Q[i] - ((bu[u] + bi[i]) if use_bias else 0.0)
        rg[2][u] += 2.0 * (-e * Q[i] + vu[u] * P[u])
        rg[3][i] += 2.0 * (-e * P[u] + vi[i] * Q[i])
        rd[2][u] += 2.0 * (Q[i] ** 2 + vu[u])
        rd[3][i] += 2.0 * (P[u] ** 2 + vi[i])
        if use_bias:
            rg[0][u] += 2.0 * (-e + vbu[u] * bu[u])
            rg[1][i] += 2.0 * (-e + vbi[i] * bi[i])
            rd[0][u] += 2.0 * (1.0 + vbu[u])
            rd[1][i] += 2.0 * (1.0 + vbi[i])
    ref_g = np.concatenate([x.ravel() for x in rg])
    ref_d = np.concatenate([x.ravel() for x in rd])
    assert _rel(g, ref_g) < 1e-5 and _rel(d, ref_d) < 1e-5
    if torch is not None:  # the torch backend's mini-batch oracle with the same 2-D visits
        objt = LFObjective(data, rank=F, lam=0.05, use_bias=use_bias, backend="torch")
        objt.set_row_weights(*[x.astype(np.float32) for x in w], visits=visits)
        gt, dt = objt.backend.zeros(y.size), objt.backend.zeros(y.size)
        objt.batch_grad(objt.backend.asarray(y), objt.backend.index(batch), gt, dt, scale=2.0)
        assert _rel(_np(objt, gt), ref_g) < 1e-5 and _rel(_np(objt, dt), ref_d) < 1e-5


def test_2d_visits_uniform_per_dimension_fast_path():
    """Per-dimension coefficients equal on every row (granularity D) are passed once as a (1, f)
    row with uniform=True; the numbers equal the per-row path's."""
    data, obj, y, w = _setup(True)
    lam_d = np.array([0.01, 0.05, 0.1, 0.2], dtype=np.float32)
    cu, ci = data.user_counts(), data.item_counts()
    vu = np.where(cu[:, None] > 0, lam_d, 0).astype(np.float32)
    vi = np.where(ci[:, None] > 0, lam_d, 0).astype(np.float32)
    vb = [np.where(c > 0, 0.02, 0).astype(np.float32) for c in (cu, ci)]
    obj.set_row_weights(vu * cu[:, None], vi * ci[:, None], vb[0] * cu, vb[1] * ci, visits=(vu, vi, *vb))
    fast = obj.kernels._per_visit(obj._v)
    assert fast[-1] is True and fast[0].shape == (1, F)
    slow = (*obj._v, False)
    lay = obj.kernels._sgd_layout()
    res = []
    for v in (fast, slow):
        y2 = y.copy()
        sse = K.sgd_epoch(lay["rows"], lay["cols"], lay["vals"], lay["ptr"], lay["nb"], lay["perm"].copy(), False,
                          np.uint64(1), np.float32(obj.mu), *obj.layout.unpack(y2), np.float32(0.01), *v, True)
        g = [np.zeros_like(a) for a in obj.layout.unpack(y)]
        K.batch_grad_diag(data.users, data.items, data.values, np.arange(data.nnz), np.float32(obj.mu),
                          *obj.layout.unpack(y), *v, True, np.float32(1.0), False, *g, *g)
        res.append((sse, y2, np.concatenate([a.ravel() for a in g])))
    assert res[0][0] == res[1][0]
    np.testing.assert_array_equal(res[0][1], res[1][1])
    np.testing.assert_array_equal(res[0][2], res[1][2])


@pytest.mark.parametrize("backend", BACKENDS)
def test_1d_weights_broadcast_to_2d_give_the_1d_results(backend):
    data, obj1, y, _ = _setup(True, backend, weights="1d")
    obj2 = LFObjective(data, rank=F, lam=0.05, use_bias=True, backend=backend)
    wu, wi, wbu, wbi = obj1.row_weights
    vu, vi, vbu, vbi = (np.asarray(obj1.backend.to_numpy(a)) for a in obj1._v)
    obj2.set_row_weights(np.repeat(wu[:, None], F, 1), np.repeat(wi[:, None], F, 1), wbu, wbi,
                         visits=(np.repeat(vu[:, None], F, 1), np.repeat(vi[:, None], F, 1), vbu, vbi))
    yd = _dev(obj1, y)
    v = _dev(obj1, np.random.default_rng(0).standard_normal(y.size).astype(np.float32))
    for fn in (lambda o, out: o.loss_grad(yd, out), lambda o, out: o.gvp(yd, v, out),
               lambda o, out: o.gn_diag(yd, out),
               lambda o, out: o.batch_grad(yd, o.backend.index(np.arange(0, data.nnz, 2)), out),
               lambda o, out: o.block_preconditioner(yd, 0.3, 1.2)(v, out)):
        a, b = obj1.backend.zeros(y.size), obj1.backend.zeros(y.size)
        fn(obj1, a)
        fn(obj2, b)
        np.testing.assert_allclose(_np(obj1, a), _np(obj2, b), rtol=1e-6, atol=1e-6)
    a, b = _dev(obj1, y.copy()), _dev(obj1, y.copy())
    obj1.als_sweep(a)
    obj2.als_sweep(b)
    np.testing.assert_allclose(_np(obj1, a), _np(obj2, b), rtol=1e-5, atol=1e-6)
    if backend == "numba":
        a, b = y.copy(), y.copy()
        assert obj1.sgd_epoch(a, 0.01, 3) == obj2.sgd_epoch(b, 0.01, 3)
        np.testing.assert_array_equal(a, b)


def test_set_row_weights_rejects_wrong_shapes():
    data, obj, y, w = _setup(True)
    with pytest.raises(ConfigError, match=r"wu has shape \(60, 3\), expected \(60,\) or \(60, 4\)"):
        obj.set_row_weights(np.ones((60, 3)), w[1], w[2], w[3])
    with pytest.raises(ConfigError, match=r"wbu has shape \(60, 4\)"):
        obj.set_row_weights(w[0], w[1], np.ones((60, 4)), w[3])


# ------------------------------------------------------------------ fast exact solves
G_RANK = 63  # g = 64 >= K.BLAS_MIN_G: the BLAS path runs where it is available


def _solve_setup(lam_b=0.02, seed=2):
    assert G_RANK + 1 >= K.BLAS_MIN_G
    data = synthetic(n_users=150, n_items=90, nnz=6000, seed=seed)
    obj = LFObjective(data, rank=G_RANK, lam=0.05, lam_b=lam_b)
    rng = np.random.default_rng(7)
    cu, ci = data.user_counts().astype(np.float32), data.item_counts().astype(np.float32)
    wu = (rng.uniform(0.01, 0.2, (obj.m, G_RANK)) * cu[:, None]).astype(np.float32)
    wu[0, :3] = 0.0  # zero weights take the 1e-6 n_u rule
    wi = (rng.uniform(0.01, 0.2, obj.n) * ci).astype(np.float32)
    obj.set_row_weights(wu, wi, *obj.row_weights[2:])
    y = obj.init_params(0.7, seed=3)
    bu, bi, _, _ = obj.layout.unpack(y)
    bu[:] = rng.normal(0, 0.3, bu.shape)
    bi[:] = rng.normal(0, 0.3, bi.shape)
    return data, obj, y


def _ref_row_solutions(obj, view, Y, b_other, W, Wb, mu):
    """Exact (float64) ridge solution of every row of a view."""
    f = Y.shape[1]
    W = W.reshape(len(view.indptr) - 1, -1)
    out = []
    for u in range(len(view.indptr) - 1):
        s, e = view.indptr[u], view.indptr[u + 1]
        idx = view.indices[s:e]
        Z = np.hstack([Y[idx].astype(np.float64), np.ones((e - s, 1))])
        t = view.data[s:e] - mu - b_other[idx]
        reg = np.broadcast_to(W[u], (f,)).astype(np.float64)
        reg = np.where(reg == 0, 1e-6 * (e - s), reg)
        A = Z.T @ Z + np.diag(np.concatenate([reg, [Wb[u]]]))
        out.append(np.linalg.solve(A, Z.T @ t))
    return np.array(out)


@pytest.mark.parametrize("path", ["blas", "numba"])
@pytest.mark.parametrize("lam_b", [0.02, 0.0])
def test_als_side_solves_every_row_exactly(path, lam_b, monkeypatch):
    """Rows with n_u >= g (normal equations) and n_u < g (the Woodbury dual; with a zero bias
    weight the normal equations again) against float64 numpy solves; both Gram paths."""
    if path == "numba":
        monkeypatch.setattr(K, "SSYRK", 0)
    elif not K.SSYRK:
        pytest.skip("scipy's cython BLAS is not available")
    data, obj, y = _solve_setup(lam_b)
    bu, bi, P, Q = obj.layout.unpack(y)
    wu, wi, wbu, wbi = obj.row_weights
    counts = np.diff(data.csr.indptr)
    assert (counts >= G_RANK + 1).any() and (counts < G_RANK + 1).any()
    ref = _ref_row_solutions(obj, data.csr, Q, bi, wu, wbu, obj.mu)
    P2, bu2 = P.copy(), bu.copy()
    with K.single_threaded_blas() as blas:
        assert (blas != 0) == (path == "blas")
        K.als_side(data.csr.indptr, data.csr.indices, data.csr.data, np.float32(obj.mu), bi, Q, wu, wbu, True, P2,
                   bu2, blas)
    got = np.hstack([P2, bu2[:, None]])
    err = np.abs(got - ref).max(axis=1) / np.maximum(1.0, np.abs(ref).max(axis=1))
    assert err.max() < 2e-4


@pytest.mark.parametrize("path", ["blas", "numba"])
def test_gn_blocks_invert_every_block(path, monkeypatch):
    """Dense (packed float32 Cholesky) and dual (Woodbury) rows of the block preconditioner
    against numpy inverses of the blocks, with Marquardt scaling and a shift."""
    if path == "numba":
        monkeypatch.setattr(K, "SSYRK", 0)
    elif not K.SSYRK:
        pytest.skip("scipy's cython BLAS is not available")
    data, obj, y = _solve_setup()
    shift, scale = 0.3, 1.4
    r = np.random.default_rng(3).standard_normal(y.size).astype(np.float32)
    out = np.zeros_like(r)
    obj.block_preconditioner(y, shift, scale)(r, out)
    bu, bi, P, Q = obj.layout.unpack(y)
    rbu, rbi, RP, RQ = obj.layout.unpack(r)
    obu, obi, OP, OQ = obj.layout.unpack(out)
    wu, wi, wbu, wbi = obj.row_weights
    f = G_RANK
    for view, Y, W, Wb, RX, rb, OX, ob in ((data.csr, Q, wu, wbu, RP, rbu, OP, obu),
                                           (data.csc, P, wi, wbi, RQ, rbi, OQ, obi)):
        W = W.reshape(len(view.indptr) - 1, -1)
        for u in range(len(view.indptr) - 1):
            idx = view.indices[view.indptr[u]:view.indptr[u + 1]]
            Z = np.hstack([Y[idx].astype(np.float64), np.ones((len(idx), 1))])
            A = Z.T @ Z
            A[np.diag_indices(f + 1)] = (A.diagonal() + np.concatenate([np.broadcast_to(W[u], (f,)), [Wb[u]]])) \
                * scale + shift
            x = np.linalg.solve(A, np.concatenate([RX[u], [rb[u]]]))
            got = np.concatenate([OX[u], [ob[u]]])
            assert np.abs(got - x).max() < 1e-4 * max(1e-3, np.abs(x).max()), (u, len(idx))
    # memory: packed factors, n_u (n_u + 1) / 2 + g floats for the rows with n_u < g
    _, (user_side, item_side) = obj.kernels.gn_blocks(obj.unpack(y), obj._w, shift, scale)
    g = f + 1
    for (_, _, offsets, dual, store), cnt in ((user_side, data.user_counts()), (item_side, data.item_counts())):
        assert np.array_equal(dual, cnt < g)
        expect = np.where(cnt < g, g + cnt * (cnt + 1) // 2, g * (g + 1) // 2).sum()
        assert store.size == expect < len(cnt) * g * g


def test_row_normal_matrix_and_cholesky_helpers():
    """The documented fast helpers for other solvers (e.g. a Gibbs sampler): the Gram equals the
    old _row_gram, the factor/solves equal numpy's, lower_t_solve applies L^-T."""
    data, obj, y = _solve_setup()
    _, _, _, Q = obj.layout.unpack(y)
    indptr, indices = data.csr.indptr, data.csr.indices
    g = G_RANK + 1
    gp = (g + 3) // 4 * 4
    u = int(np.argmax(np.diff(indptr)))
    ref = np.empty((g, g), np.float32)
    K._row_gram(indptr[u], indptr[u + 1], indices, Q, True, ref, np.empty(g, np.float32))
    for blas_ok in (False, True):
        G = np.empty((gp, gp), np.float32)
        buf = np.empty((indptr[u + 1] - indptr[u]) * gp, np.float32)
        with K.single_threaded_blas() as blas:
            K.row_normal_matrix(indptr[u], indptr[u + 1], indices, Q, True, G, buf, blas if blas_ok else 0)
        np.testing.assert_allclose(G[:g, :g], ref, rtol=1e-5, atol=1e-4)
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        B = rng.standard_normal((g, g))
        A = B @ B.T + g * np.eye(g)
        L = A.astype(dt)
        L[np.triu_indices(g, 1)] = np.nan  # the upper triangle is never read
        assert K.cholesky_factor(L, g) == 0
        np.testing.assert_allclose(np.tril(np.nan_to_num(L)), np.linalg.cholesky(A), rtol=1e-4, atol=1e-5)
        b = rng.standard_normal(g)
        x = b.astype(dt)
        K.chol_solve_factored(L, g, x)
        np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-3, atol=1e-5)
        z = b.astype(dt)
        K.lower_t_solve(L, g, z)
        np.testing.assert_allclose(z, np.linalg.solve(np.linalg.cholesky(A).T, b), rtol=1e-3, atol=1e-5)
    # a matrix that is not positive definite: floored pivots are counted, no exception
    N = -np.eye(5)
    assert K.cholesky_factor(N, 5) == 5
    # the original interface still works
    A = (B @ B.T + g * np.eye(g))
    b = rng.standard_normal(g)
    x = b.copy()
    K.cholesky_solve(A.copy(), x)
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-8)


def test_block_preconditioner_over_budget_falls_back_to_jacobi(monkeypatch):
    from lfopt.backend import numba as NB

    data, obj, y = _solve_setup()
    monkeypatch.setattr(NB, "MAX_BLOCK_BYTES", 1000)
    with pytest.warns(RuntimeWarning, match=r"GiB, more than the budget .*Jacobi"):
        apply = obj.block_preconditioner(y, 0.3, 1.4)
    r = np.random.default_rng(3).standard_normal(y.size).astype(np.float32)
    out = np.zeros_like(r)
    apply(r, out)
    d = obj.gn_diag(y, np.zeros_like(y)) * np.float32(1.4) + np.float32(0.3)
    np.testing.assert_allclose(out, r / d, rtol=1e-6)
    monkeypatch.setattr(NB, "MAX_BLOCK_BYTES", None)
    assert NB.block_budget_bytes() > 0


def test_torch_block_preconditioner_over_budget_falls_back_to_jacobi(monkeypatch):
    from lfopt.backend import numba as NB

    data = synthetic(n_users=60, n_items=40, nnz=800, seed=1)
    obj = LFObjective(data, rank=F, lam=0.05, backend="torch")
    y = obj.init_params(0.5, seed=0)
    monkeypatch.setattr(NB, "MAX_BLOCK_BYTES", 1000)
    with pytest.warns(RuntimeWarning, match="Jacobi"):
        apply = obj.block_preconditioner(y, 0.3, 1.4)
    r = obj.backend.asarray(np.random.default_rng(3).standard_normal(y.numel()).astype(np.float32))
    out = obj.backend.zeros(y.numel())
    apply(r, out)
    d = obj.gn_diag(y, obj.backend.zeros(y.numel())) * 1.4 + 0.3
    np.testing.assert_allclose(_np(obj, out), _np(obj, r / d), rtol=1e-6)
