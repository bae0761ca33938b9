"""The torch backend against independent references.

* LF oracles: torch autodiff in float64 of the loss (gradient), ``torch.func.jvp`` /
  ``vjp`` of the residuals (Gauss-Newton products, line sums), float64 numpy for
  per-row blocks and ALS solves, and the numba backend's kernel set when it has one.
* BPR training, negative sampling, BPR loss and full ranking: the numba kernels of
  :mod:`lfopt.kernels.bpr` (same arguments), ties included.

Data: small synthetic sets and MovieLens 100K (skipped when absent).  CUDA tests
run only where torch sees a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lfopt  # noqa: E402
from lfopt.backend import get_backend  # noqa: E402
from lfopt.backend.numba import NumbaBackend  # noqa: E402
from lfopt.backend.torch import TorchBackend  # noqa: E402
from lfopt.kernels import bpr as KB  # noqa: E402
from lfopt.kernels import vector as V  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
F64 = torch.float64


def _close(a, b, rtol=2e-4, atol=None):
    """a ~ b relative to b's scale (float32 kernels vs float64 references)."""
    a = a.detach().cpu().double().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, dtype=np.float64)
    b = b.detach().cpu().double().numpy() if isinstance(b, torch.Tensor) else np.asarray(b, dtype=np.float64)
    scale = max(1.0, float(np.abs(b).max())) if b.size else 1.0
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale if atol is None else atol)


# ------------------------------------------------------------------ problems
class Problem:
    """A training set, parameters, row weights and a direction (numpy float32)."""

    def __init__(self, data, f, use_bias, seed):
        rng = np.random.default_rng(seed)
        self.data, self.f, self.use_bias = data, f, use_bias
        m, n = data.shape
        nb = lambda k: k if use_bias else 0  # noqa: E731
        self.mu = np.float32(data.values.mean() if use_bias else 0.5)
        self.params = tuple(rng.normal(0, s, shape).astype(np.float32) for s, shape in
                            ((0.3, nb(m)), (0.3, nb(n)), (0.4, (m, f)), (0.4, (n, f))))
        cu, ci = data.user_counts().astype(np.float32), data.item_counts().astype(np.float32)
        self.w = (0.05 * cu * rng.uniform(0.5, 1.5, m).astype(np.float32),
                  0.05 * ci * rng.uniform(0.5, 1.5, n).astype(np.float32),
                  (0.02 * cu)[: nb(m)], (0.02 * ci)[: nb(n)])
        self.v = tuple(rng.normal(0, 1, p.shape).astype(np.float32) for p in self.params)

    def t(self, be, tup):
        return tuple(be.asarray(x) for x in tup)


def _synthetic(seed=1):
    return lfopt.synthetic(n_users=50, n_items=35, nnz=500, seed=seed)


@pytest.fixture(scope="module")
def be():
    return TorchBackend("cpu")


# float64 references --------------------------------------------------------
def _ref_tensors(pb):
    d = pb.data
    u = torch.as_tensor(d.users.astype(np.int64))
    i = torch.as_tensor(d.items.astype(np.int64))
    r = torch.as_tensor(d.values, dtype=F64)
    return u, i, r


def _ref_residual(pb):
    u, i, r = _ref_tensors(pb)
    mu = float(pb.mu)

    def resid(bu, bi, P, Q):
        pred = (P[u] * Q[i]).sum(1) + mu
        if pb.use_bias:
            pred = pred + bu[u] + bi[i]
        return r - pred

    return resid


def _t64(tup):
    return tuple(torch.as_tensor(np.asarray(x), dtype=F64) for x in tup)


def _in_param_order(w):
    """Row weights (wu, wi, wbu, wbi) in the order of the parameters (bu, bi, P, Q)."""
    return (w[2], w[3], w[0], w[1])


def _ref_loss_grad(pb):
    resid = _ref_residual(pb)
    params = tuple(x.clone().requires_grad_(True) for x in _t64(pb.params))
    w = _in_param_order(_t64(pb.w))
    e = resid(*params)
    loss = 0.5 * (e * e).sum()
    for wx, x in zip(w, params):
        if x.numel():
            loss = loss + 0.5 * (wx.reshape((-1,) + (1,) * (x.dim() - 1)) * x * x).sum()
    grads = torch.autograd.grad(loss, [p for p in params if p.numel()])
    if not pb.use_bias:
        grads = (torch.zeros(0, dtype=F64), torch.zeros(0, dtype=F64)) + tuple(grads)
    return float((e * e).sum().detach()), grads


def _ref_gvp(pb):
    resid = _ref_residual(pb)
    params, v, w = _t64(pb.params), _t64(pb.v), _in_param_order(_t64(pb.w))
    _, jv = torch.func.jvp(resid, params, v)  # J_e v = -J v
    _, vjp = torch.func.vjp(resid, *params)
    jtjv = vjp(jv)
    return tuple(a + wx.reshape((-1,) + (1,) * (vx.dim() - 1)) * vx if vx.numel() else a
                 for a, wx, vx in zip(jtjv, w, v)), -jv


def _ref_gn_diag(pb):
    u, i, _ = _ref_tensors(pb)
    _, _, P, Q = _t64(pb.params)
    wu, wi, wbu, wbi = _t64(pb.w)
    m, n = pb.data.shape
    dP = torch.zeros(m, pb.f, dtype=F64).index_add_(0, u, Q[i] ** 2) + wu[:, None]
    dQ = torch.zeros(n, pb.f, dtype=F64).index_add_(0, i, P[u] ** 2) + wi[:, None]
    if pb.use_bias:
        return (torch.bincount(u, minlength=m).double() + wbu, torch.bincount(i, minlength=n).double() + wbi, dP, dQ)
    return (torch.zeros(0), torch.zeros(0), dP, dQ)


def _ref_blocks(pb, shift, diag_scale):
    """Dense per-row blocks (float64 numpy) of both sides."""
    d = pb.data
    _, _, P, Q = (np.asarray(x, dtype=np.float64) for x in pb.params)
    wu, wi, wbu, wbi = (np.asarray(x, dtype=np.float64) for x in pb.w)
    out = []
    for rows, cols, Y, wX, wb, nr in ((d.users, d.items, Q, wu, wbu, d.n_users),
                                      (d.items, d.users, P, wi, wbi, d.n_items)):
        Z = np.hstack([Y, np.ones((len(Y), 1))]) if pb.use_bias else Y
        g = Z.shape[1]
        A = np.zeros((nr, g, g))
        np.add.at(A, rows, Z[cols][:, :, None] * Z[cols][:, None, :])
        diag = np.concatenate([np.repeat(wX[:, None], pb.f, 1), wb[:, None]], 1) if pb.use_bias else \
            np.repeat(wX[:, None], pb.f, 1)
        idx = np.arange(g)
        A[:, idx, idx] = (A[:, idx, idx] + diag) * diag_scale + shift
        out.append(A)
    return out


def _ref_als(pb):
    """One ALS sweep in float64 numpy (users, then items)."""
    d = pb.data
    bu, bi, P, Q = (np.asarray(x, dtype=np.float64).copy() for x in pb.params)
    wu, wi, wbu, wbi = (np.asarray(x, dtype=np.float64) for x in pb.w)
    mu = float(pb.mu)
    for side in ("u", "i"):
        if side == "u":
            rows, cols, X, Y, bs, bo, wX, wb, nr = d.users, d.items, P, Q, bu, bi, wu, wbu, d.n_users
        else:
            rows, cols, X, Y, bs, bo, wX, wb, nr = d.items, d.users, Q, P, bi, bu, wi, wbi, d.n_items
        for r in range(nr):
            sel = rows == r
            if not sel.any():
                X[r] = 0
                if pb.use_bias:
                    bs[r] = 0
                continue
            c = cols[sel]
            t = d.values[sel].astype(np.float64) - mu - (bo[c] if pb.use_bias else 0)
            Z = np.hstack([Y[c], np.ones((len(c), 1))]) if pb.use_bias else Y[c]
            A = Z.T @ Z + np.diag(np.r_[np.full(pb.f, wX[r]), [wb[r]]] if pb.use_bias else np.full(pb.f, wX[r]))
            x = np.linalg.solve(A, Z.T @ t)
            X[r] = x[: pb.f]
            if pb.use_bias:
                bs[r] = x[pb.f]
    return bu, bi, P, Q


# ------------------------------------------------------------------- vectors
def test_get_backend_and_vector_ops(be):
    assert get_backend("torch").name == "torch"
    rng = np.random.default_rng(0)
    a = rng.normal(size=1001).astype(np.float32)
    b = rng.normal(size=1001).astype(np.float32)
    ta, tb = be.asarray(a), be.asarray(b)
    assert ta.dtype == torch.float32 and be.asarray(np.arange(3), np.int64).dtype == torch.int64
    assert be.asarray(ta, np.int32).dtype == torch.int32 and be.zeros(4, np.int64).dtype == torch.int64
    assert be.dot(ta, tb) == pytest.approx(float(V.dot(a, b)), rel=1e-12)
    assert be.weighted_dot(tb, ta, ta) == pytest.approx(float(np.sum(b.astype(np.float64) * a.astype(np.float64) ** 2)),
                                                       rel=1e-12)
    assert be.norm(ta) == pytest.approx(float(np.linalg.norm(a.astype(np.float64))), rel=1e-12)
    assert be.all_finite(ta) and not be.all_finite(be.asarray(np.array([1.0, np.inf])))
    x = be.copy(ta)
    be.clamp_min_(x, 0.25)
    assert float(x.min()) == pytest.approx(0.25) and float(ta.min()) < 0.25
    np.testing.assert_array_equal(be.to_numpy(be.zeros_like(ta)), np.zeros_like(a))
    assert be.empty_like(ta).shape == ta.shape
    # Adam-style moment update == the numba kernel
    y, g, m_ = (rng.normal(size=257).astype(np.float32) for _ in range(3))
    s = np.abs(rng.normal(size=257)).astype(np.float32)
    d = np.abs(g) + 0.1
    ny, nm, ns = y.copy(), m_.copy(), s.copy()
    f32 = np.float32
    V.adaptive_moment_update(ny, g, d, nm, ns, f32(0.01), f32(0.9), f32(0.999), f32(1e-8), f32(0.19), f32(0.002),
                             f32(0.0))
    ty, tm, ts = be.asarray(y), be.asarray(m_), be.asarray(s)
    be.moment_update(ty, be.asarray(g), be.asarray(d), tm, ts, 0.01, 0.9, 0.999, 1e-8, 0.19, 0.002)
    for t, ref in ((ty, ny), (tm, nm), (ts, ns)):
        np.testing.assert_allclose(be.to_numpy(t), ref, rtol=1e-5, atol=1e-7)
    # same permutation as numpy (so iterates match the numba backend's)
    np.testing.assert_array_equal(be.to_numpy(be.permutation(np.random.default_rng(5), 50)),
                                  np.random.default_rng(5).permutation(50))
    assert be.index([3, 1]).dtype == torch.int64


# ---------------------------------------------------------------- LF oracles
CASES = [pytest.param(True, id="bias"), pytest.param(False, id="nobias")]


def _check_lf(be, pb):
    K = be.lf_kernels(pb.data, pb.use_bias)
    assert (K.m, K.n, K.nnz, K.use_bias) == (*pb.data.shape, pb.data.nnz, pb.use_bias) and not K.has_sgd_epoch
    params, w, v = pb.t(be, pb.params), pb.t(be, pb.w), pb.t(be, pb.v)
    zeros = lambda: tuple(torch.zeros_like(x) for x in params)  # noqa: E731
    # gradient and sse
    sse_ref, g_ref = _ref_loss_grad(pb)
    g = zeros()
    sse = K.residual_grad(pb.mu, params, w, g)
    assert sse == pytest.approx(sse_ref, rel=1e-5)
    assert K.sse(pb.mu, params) == pytest.approx(sse_ref, rel=1e-5)
    for a, b in zip(g, g_ref):
        _close(a, b)
    # Gauss-Newton product and the line sums
    gv_ref, jv_ref = _ref_gvp(pb)
    out = zeros()
    K.gvp(params, v, w, out)
    for a, b in zip(out, gv_ref):
        _close(a, b)
    e_ref = _ref_residual(pb)(*_t64(pb.params))
    u, i, _ = _ref_tensors(pb)
    c_ref = (_t64(pb.v)[2][u] * _t64(pb.v)[3][i]).sum(1)
    X = torch.stack([e_ref, jv_ref, c_ref])
    M = (X @ X.T).numpy()
    ref = (M[0, 0], M[0, 1], M[0, 2], M[1, 1], M[1, 2], M[2, 2])
    got = K.line_sums(pb.mu, params, v)
    np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-4 * max(abs(x) for x in ref))
    # GN diagonal
    out = zeros()
    K.gn_diag(params, w, out)
    for a, b in zip(out, _ref_gn_diag(pb)):
        _close(a, b)
    # per-row blocks and their solve
    shift, scale = 0.3, 1.25
    blocks = _ref_blocks(pb, shift, scale)
    h = K.gn_blocks(params, w, shift, scale)
    out = zeros()
    K.block_solve(h, v, out)
    vb = [np.asarray(x, dtype=np.float64) for x in pb.v]
    for side, (A, RX, rb, OX, ob) in enumerate(((blocks[0], vb[2], vb[0], out[2], out[0]),
                                                 (blocks[1], vb[3], vb[1], out[3], out[1]))):
        rhs = np.hstack([RX, rb[:, None]]) if pb.use_bias else RX
        sol = np.linalg.solve(A, rhs[:, :, None])[:, :, 0]
        _close(OX, sol[:, :pb.f], rtol=1e-4)
        if pb.use_bias:
            _close(ob, sol[:, pb.f], rtol=1e-4)
    # predictions
    rows, cols = pb.data.users[:17], pb.data.items[:17]
    pred = K.predict(pb.mu, params, rows, cols)
    _close(pred, torch.as_tensor(pb.data.values[:17], dtype=F64) - _ref_residual(pb)(*_t64(pb.params))[:17])
    # ALS sweep
    p2 = tuple(be.copy(x) for x in params)  # asarray shares the numpy memory on the CPU
    K.als_sweep(pb.mu, p2, w)
    for a, b in zip(p2, _ref_als(pb)):
        _close(a, b, rtol=2e-3)
    return K


@pytest.mark.parametrize("use_bias", CASES)
def test_lf_oracles_synthetic(be, use_bias):
    pb = Problem(_synthetic(), 3, use_bias, seed=2)
    _check_lf(be, pb)
    # the same with tiny chunks: the column-sliced Gram and the row-chunked ALS
    _check_lf(TorchBackend("cpu", chunk_floats=64), pb)


@pytest.mark.parametrize("use_bias", CASES)
def test_lf_oracles_ml100k(be, ml100k, use_bias):
    _check_lf(be, Problem(ml100k, 4, use_bias, seed=3))


@pytest.mark.parametrize("use_bias", CASES)
def test_batch_grad_against_autodiff(be, use_bias):
    pb = Problem(_synthetic(4), 3, use_bias, seed=5)
    K = be.lf_kernels(pb.data, use_bias)
    rng = np.random.default_rng(1)
    batch = rng.choice(pb.data.nnz, 64, replace=False)
    batch[:5] = batch[0]  # repeated entries accumulate
    scale = pb.data.nnz / len(batch)
    # per-visit coefficients: any non-negative per-row numbers
    vis = (np.abs(pb.v[2][:, 0]), np.abs(pb.v[3][:, 0]), np.abs(pb.v[0]), np.abs(pb.v[1]))
    params = pb.t(be, pb.params)
    g = tuple(torch.full_like(x, 7.0) for x in params)  # zeroed by the oracle
    dg = tuple(torch.full_like(x, 7.0) for x in params)
    sse = K.batch_grad(pb.mu, params, pb.t(be, vis), be.index(batch), scale, g, dg)
    # reference: autodiff of scale * sum_batch [e^2/2 + visit penalties]
    d = pb.data
    u = torch.as_tensor(d.users[batch].astype(np.int64))
    i = torch.as_tensor(d.items[batch].astype(np.int64))
    r = torch.as_tensor(d.values[batch], dtype=F64)
    p64 = tuple(x.clone().requires_grad_(True) for x in _t64(pb.params))
    vu, vi, vbu, vbi = _t64(vis)
    bu, bi, P, Q = p64
    pred = (P[u] * Q[i]).sum(1) + float(pb.mu) + ((bu[u] + bi[i]) if use_bias else 0)
    e = r - pred
    L = 0.5 * (e * e).sum() + 0.5 * (vu[u][:, None] * P[u] ** 2).sum() + 0.5 * (vi[i][:, None] * Q[i] ** 2).sum()
    if use_bias:
        L = L + 0.5 * (vbu[u] * bu[u] ** 2).sum() + 0.5 * (vbi[i] * bi[i] ** 2).sum()
    grads = torch.autograd.grad(scale * L, [x for x in p64 if x.numel()])
    if not use_bias:
        grads = (None, None) + tuple(grads)
    assert sse == pytest.approx(float((e * e).sum()), rel=1e-5)
    for a, b in zip(g, grads):
        if b is not None:
            _close(a, b)
    m, n = d.shape
    ref_dP = scale * torch.zeros(m, pb.f, dtype=F64).index_add_(0, u, Q[i].detach() ** 2 + vu[u][:, None])
    ref_dQ = scale * torch.zeros(n, pb.f, dtype=F64).index_add_(0, i, P[u].detach() ** 2 + vi[i][:, None])
    _close(dg[2], ref_dP)
    _close(dg[3], ref_dQ)
    if use_bias:
        _close(dg[0], scale * torch.zeros(m, dtype=F64).index_add_(0, u, 1 + vbu[u]))
        _close(dg[1], scale * torch.zeros(n, dtype=F64).index_add_(0, i, 1 + vbi[i]))


def test_als_guards_empty_and_singular_rows(be):
    # user 3 has no entry, item 0 a single one and no penalty: solved, finite
    d = lfopt.Interactions(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 1]), np.array([4., 3, 5, 1, 2]),
                           n_users=4, n_items=3)
    K = be.lf_kernels(d, True)
    params = tuple(be.asarray(x) for x in (np.ones(4), np.ones(3), np.ones((4, 3)), np.ones((3, 3))))
    K.als_sweep(3.0, params, (0.0, 0.0, 0.0, 0.0))
    assert all(be.all_finite(x) for x in params)
    assert float(params[2][3].abs().sum()) == 0.0 and float(params[0][3]) == 0.0


def test_numba_backend_agrees(be):
    """When the numba backend has its LF kernel set, every oracle equals it."""
    nb = NumbaBackend()
    if not hasattr(nb, "lf_kernels"):
        pytest.skip("NumbaBackend.lf_kernels is not there yet")
    for use_bias in (True, False):
        pb = Problem(_synthetic(7), 4, use_bias, seed=8)
        KT, KN = be.lf_kernels(pb.data, use_bias), nb.lf_kernels(pb.data, use_bias)
        pn = tuple(x.copy() for x in pb.params)
        pt = tuple(be.copy(x) for x in pb.t(be, pb.params))
        wn, wt = pb.w, pb.t(be, pb.w)
        zn = lambda: tuple(np.zeros_like(x) for x in pn)  # noqa: E731
        zt = lambda: tuple(torch.zeros_like(x) for x in pt)  # noqa: E731
        gn, gt = zn(), zt()
        assert KT.residual_grad(pb.mu, pt, wt, gt) == pytest.approx(KN.residual_grad(pb.mu, pn, wn, gn), rel=1e-5)
        for a, b in zip(gt, gn):
            _close(a, b)
        gn, gt = zn(), zt()
        KN.gvp(pn, pb.v, wn, gn)
        KT.gvp(pt, pb.t(be, pb.v), wt, gt)
        for a, b in zip(gt, gn):
            _close(a, b)
        gn, gt = zn(), zt()
        KN.gn_diag(pn, wn, gn)
        KT.gn_diag(pt, wt, gt)
        for a, b in zip(gt, gn):
            _close(a, b)
        np.testing.assert_allclose(KT.line_sums(pb.mu, pt, pb.t(be, pb.v)), KN.line_sums(pb.mu, pn, pb.v), rtol=1e-4,
                                   atol=1e-3)
        gn, gt = zn(), zt()
        KN.block_solve(KN.gn_blocks(pn, wn, 0.1, 1.5), pb.v, gn)
        KT.block_solve(KT.gn_blocks(pt, wt, 0.1, 1.5), pb.t(be, pb.v), gt)
        for a, b in zip(gt, gn):
            _close(a, b, rtol=1e-4)
        batch = np.arange(0, pb.data.nnz, 3)
        vis = (np.full(pb.data.n_users, 0.05, np.float32), np.full(pb.data.n_items, 0.05, np.float32),
               np.full(pb.data.n_users if use_bias else 0, 0.02, np.float32),
               np.full(pb.data.n_items if use_bias else 0, 0.02, np.float32))
        gn, gt, dn, dt = zn(), zt(), zn(), zt()
        s1 = KN.batch_grad(pb.mu, pn, vis, batch, 3.0, gn, dn)
        s2 = KT.batch_grad(pb.mu, pt, pb.t(be, vis), be.index(batch), 3.0, gt, dt)
        assert s2 == pytest.approx(s1, rel=1e-5)
        for a, b in zip(gt + dt, gn + dn):
            _close(a, b)
        KN.als_sweep(pb.mu, pn, wn)
        KT.als_sweep(pb.mu, pt, wt)
        for a, b in zip(pt, pn):
            _close(a, b, rtol=1e-3)


# ---------------------------------------------------------------------- BPR
M, N, FB = 30, 25, 4


def _lam_layout(gran):
    """(size, lam_map) of a lambdaOpt granularity (the layout of METHODS.md section 4)."""
    f = FB
    return {"global": (1, [0, 0, 0, 0, 0, 0]), "D": (f, [0, 0, 1, 0, 0, 1]),
            "DU": (M * f + f, [0, f, 1, M * f, 0, 1]), "DUI": ((M + N) * f, [0, f, 1, M * f, f, 1])}[gran]


def _bpr_problem(seed, use_bias, gran, opt, n_triples=300, B=32, Bv=16):
    rng = np.random.default_rng(seed)
    P = rng.normal(0, 0.5, (M, FB)).astype(np.float32)
    Q = rng.normal(0, 0.5, (N, FB)).astype(np.float32)
    b = rng.normal(0, 0.2, N if use_bias else 0).astype(np.float32)
    tu = rng.integers(0, M, n_triples).astype(np.int32)
    ti = rng.integers(0, N, n_triples).astype(np.int32)
    tj = rng.integers(0, N, n_triples).astype(np.int64)
    tj[rng.random(n_triples) < 0.05] = -1
    n_steps = (n_triples + B - 1) // B
    vu = rng.integers(0, M, n_steps * Bv).astype(np.int32)
    vi = rng.integers(0, N, n_steps * Bv).astype(np.int32)
    vj = rng.integers(0, N, n_steps * Bv).astype(np.int64)
    vj[rng.random(len(vj)) < 0.05] = -1
    learn = gran is not None
    size, lam_map = _lam_layout(gran or "global")
    lam = np.full(size, 0.05, np.float32)
    lam += rng.uniform(0, 0.02, lam.shape).astype(np.float32)
    adam = opt == "adam"
    z = (lambda *s: np.zeros(s, np.float32)) if adam else (lambda *s: np.zeros((0,) * len(s), np.float32))
    state = dict(mP=z(M, FB), vP=z(M, FB), mQ=z(N, FB), vQ=z(N, FB),
                 mb=z(N) if use_bias else z(0), vb=z(N) if use_bias else z(0),
                 cnt_u=np.zeros(M, np.int64), cnt_i=np.zeros(N, np.int64),
                 lam=lam, mL=np.zeros_like(lam), vL=np.zeros_like(lam), cL=np.zeros(len(lam), np.int64),
                 grad_out=np.zeros(len(lam), np.float32), stats=np.zeros(4))
    if adam:
        # a warm state: Adam's first step of a row is lr * sign(G), so d theta / d G cancels
        # to zero analytically and both kernels would only compare rounding noise
        for key, rows in (("P", M), ("Q", N), ("b", N if use_bias else 0)):
            state["m" + key] = rng.normal(0, 0.05, state["m" + key].shape).astype(np.float32)
            state["v" + key] = rng.uniform(1e-3, 1e-2, state["v" + key].shape).astype(np.float32)
        state["cnt_u"] = rng.integers(1, 5, M)
        state["cnt_i"] = rng.integers(1, 5, N)
    if learn:
        state["mL"] = rng.normal(0, 3e-3, lam.shape).astype(np.float32)
        state["vL"] = rng.uniform(1e-5, 1e-4, lam.shape).astype(np.float32)
        state["cL"] = rng.integers(1, 5, lam.shape)
    return dict(tri=(tu, ti, tj), val=(vu, vi, vj), B=B, Bv=Bv, P=P, Q=Q, b=b, use_bias=use_bias, adam=adam,
                learn=learn, lam_map=np.array(lam_map, np.int64), state=state)


def _run_bpr(fn, pr, to=lambda x: x):
    s = {k: to(v.copy()) for k, v in pr["state"].items()}
    P, Q, b = to(pr["P"].copy()), to(pr["Q"].copy()), to(pr["b"].copy())
    f32 = np.float32
    for epoch in range(2):  # state carried over (step counts, moments)
        fn(*pr["tri"], pr["B"], *pr["val"], pr["Bv"], P, Q, b, pr["use_bias"], f32(0.01),
           1 if pr["adam"] else 0, f32(0.05), f32(0.9), f32(0.999), f32(1e-8),
           s["mP"], s["vP"], s["mQ"], s["vQ"], s["mb"], s["vb"], s["cnt_u"], s["cnt_i"],
           s["lam"], pr["lam_map"], pr["learn"], f32(0.01), s["mL"], s["vL"], s["cL"], s["grad_out"], s["stats"])
    return dict(P=P, Q=Q, b=b, **s)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("gran", [None, "global", "D", "DU", "DUI"])
def test_bpr_train_equals_numba(be, opt, gran):
    for use_bias in (True, False):
        pr = _bpr_problem(11, use_bias, gran, opt)
        ref = _run_bpr(KB.bpr_train, pr)
        got = _run_bpr(be.bpr_train, pr)  # numpy arrays, updated in place
        got_t = _run_bpr(be.bpr_train, pr, to=torch.as_tensor)  # tensors, updated in place
        for res in (got, got_t):
            for key, val in ref.items():
                a = np.asarray(res[key])
                if val.dtype == np.int64:
                    np.testing.assert_array_equal(a, val, err_msg=key)
                else:
                    np.testing.assert_allclose(a, val, rtol=1e-4, atol=1e-5, err_msg=key)
        assert not np.array_equal(ref["P"], pr["P"])
        if gran is not None:
            assert ref["cL"].sum() > 0 and np.abs(ref["grad_out"]).sum() > 0


def test_bpr_loss_and_negatives(be):
    rng = np.random.default_rng(3)
    pr = _bpr_problem(4, True, None, "sgd")
    tu, ti, tj = pr["tri"]
    for use_bias in (True, False):
        assert be.bpr_loss(pr["P"], pr["Q"], pr["b"], use_bias, tu, ti, tj) == pytest.approx(
            float(KB.bpr_loss(pr["P"], pr["Q"], pr["b"], use_bias, tu, ti, tj)), rel=1e-6)
    # negatives: never an interacted item (views a and b), -1 for a full user, uniform otherwise
    m, n = 6, 12
    a = lfopt.Interactions(np.array([0, 0, 1, 2, 2, 2] + [5] * n), np.array([1, 4, 0, 3, 7, 9] + list(range(n))),
                           np.ones(6 + n), n_users=m, n_items=n)
    bview = lfopt.Interactions(np.array([0, 3]), np.array([2, 5]), np.ones(2), n_users=m, n_items=n)
    users = np.repeat(np.arange(m), 4000)
    out = np.empty(len(users), np.int64)
    be.sample_negatives(users, a.csr.indptr, a.csr.indices, bview.csr.indptr, bview.csr.indices, n, 9, out)
    taken = {(int(u), int(i)) for u, i in zip(np.r_[a.users, bview.users], np.r_[a.items, bview.items])}
    assert all((int(u), int(j)) not in taken for u, j in zip(users, out) if j >= 0)
    assert (out[users == 5] == -1).all() and (out[users != 5] >= 0).all()
    counts = np.bincount(out[users == 2], minlength=n)
    free = np.setdiff1d(np.arange(n), [3, 7, 9])
    assert counts[[3, 7, 9]].sum() == 0 and counts[free].min() > 4000 / len(free) * 0.8
    # a dense user (one free item) goes through the fallback
    dense = lfopt.Interactions(np.zeros(n - 1, int), np.r_[0:5, 6:n], np.ones(n - 1), n_users=1, n_items=n)
    out2 = torch.empty(50, dtype=torch.int64)
    empty = np.zeros(2, np.int64)
    be.sample_negatives(np.zeros(50, np.int64), dense.csr.indptr, dense.csr.indices, empty, np.zeros(0, np.int32), n,
                        1, out2)
    assert (out2 == 5).all()
    # reproducible for a seed
    out3 = np.empty(len(users), np.int64)
    be.sample_negatives(users, a.csr.indptr, a.csr.indices, bview.csr.indptr, bview.csr.indices, n, 9, out3)
    np.testing.assert_array_equal(out, out3)


# --------------------------------------------------------------- full ranking
def _ranking_problem(seed=0, R=40, n=30, nan=True):
    rng = np.random.default_rng(seed)
    S = np.round(rng.normal(0, 1, (R, n)) * 2) / 2  # many ties
    S = S.astype(np.float32)
    S[0, :5] = -np.inf
    if nan:  # (the numba rank kernel is compiled with fastmath: NaN targets are undefined there)
        S[1, 3] = np.nan
    S[2, :] = 0.0  # all tied
    m = R + 5
    users = rng.permutation(m)[:R].astype(np.int64)
    ex_key = np.unique(rng.integers(0, m, 300) * n + rng.integers(0, n, 300))
    ex_key = np.union1d(ex_key, users[3] * n + np.arange(n))  # row 3: every item excluded
    ex = lfopt.Interactions(ex_key // n, ex_key % n, np.ones(len(ex_key)), n_users=m, n_items=n)
    tk = np.unique(rng.integers(0, m, 200).astype(np.int64) * n + rng.integers(0, n, 200))
    tg = lfopt.Interactions(tk // n, tk % n, np.ones(len(tk)), n_users=m, n_items=n)
    return S, users, ex.csr, tg.csr


def test_topk_rows_equals_numba(be):
    S, users, ex, _ = _ranking_problem()
    for k in (1, 5, 40):
        outs = []
        for fn, conv in ((KB.topk_rows, np.asarray), (be.topk_rows, np.asarray), (be.topk_rows, torch.as_tensor)):
            s = conv(S.copy())
            items = conv(np.zeros((len(users), k), np.int64))
            sc = conv(np.zeros((len(users), k), np.float32))
            fn(s, users, ex.indptr, ex.indices, k, items, sc)
            outs.append((np.asarray(s), np.asarray(items), np.asarray(sc)))
        for got in outs[1:]:
            for a, b in zip(got, outs[0]):
                np.testing.assert_array_equal(a, b)


def test_rank_targets_equals_numba(be):
    S, users, ex, tg = _ranking_problem(1, nan=False)
    outs = []
    for fn, conv in ((KB.rank_targets, np.asarray), (be.rank_targets, np.asarray), (be.rank_targets, torch.as_tensor)):
        s = conv(S.copy())
        rank = conv(np.full(len(tg.indices), -7, np.int64))
        auc = conv(np.full(len(tg.indices), -7.0))
        nneg = conv(np.zeros(len(users), np.int64))
        fn(s, users, ex.indptr, ex.indices, tg.indptr, tg.indices, rank, auc, nneg)
        outs.append([np.asarray(x) for x in (s, rank, auc, nneg)])
    for got in outs[1:]:
        for a, b in zip(got, outs[0]):
            np.testing.assert_allclose(a, b, rtol=1e-12, equal_nan=True)
    assert (outs[0][1] >= 0).sum() > 20


def test_scores(be):
    rng = np.random.default_rng(2)
    P, Q, bias = rng.normal(size=(5, 3)), rng.normal(size=(7, 3)), rng.normal(size=7)
    S = be.scores(P, Q, bias, np.array([4, 0]))
    np.testing.assert_allclose(be.to_numpy(S), (P[[4, 0]] @ Q.T + bias).astype(np.float32), rtol=1e-5)


# ----------------------------------------------------------------------- CUDA
@cuda
@pytest.mark.parametrize("use_bias", CASES)
def test_lf_oracles_cuda(use_bias):
    _check_lf(TorchBackend("cuda"), Problem(_synthetic(), 3, use_bias, seed=2))


@cuda
def test_bpr_and_ranking_cuda():
    be = TorchBackend("cuda")
    pr = _bpr_problem(11, True, "DUI", "adam")
    ref = _run_bpr(KB.bpr_train, pr)
    got = _run_bpr(be.bpr_train, pr)
    for key, val in ref.items():
        np.testing.assert_allclose(np.asarray(got[key]), val, rtol=1e-4, atol=1e-5, err_msg=key)
    S, users, ex, tg = _ranking_problem(1, nan=False)
    outs = []
    for fn in (KB.rank_targets, be.rank_targets):
        s = S.copy()
        rank, auc, nneg = np.zeros(len(tg.indices), np.int64), np.zeros(len(tg.indices)), np.zeros(len(users), np.int64)
        fn(s, users, ex.indptr, ex.indices, tg.indptr, tg.indices, rank, auc, nneg)
        outs.append((s, rank, auc, nneg))
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, rtol=1e-12, equal_nan=True)
