"""The LF kernels against automatic differentiation (torch, float64) on small random problems.

Every oracle is checked with the count-weighted L2 of METHODS.md section 2 ("count") and with
non-uniform per-row weights ("rows": the shape a learned Lambda gives), set on the objective.
"""

import numpy as np
import pytest

from lfopt.data.synthetic import synthetic
from lfopt.models.lf import LFObjective

torch = pytest.importorskip("torch")

LAM, LAM_B = 0.05, 0.02
WEIGHTINGS = ["count", "rows"]


def _setup(use_bias, weighting="count", rank=4, seed=1):
    data = synthetic(n_users=60, n_items=40, nnz=800, seed=seed)
    obj = LFObjective(data, rank=rank, lam=LAM, lam_b=LAM_B, use_bias=use_bias)
    cu, ci = data.user_counts().astype(np.float64), data.item_counts().astype(np.float64)
    if weighting == "rows":
        # independent random coefficients per row (zero on rows without entries, which SGD never visits)
        rng = np.random.default_rng(11)
        weights = [rng.uniform(0.0, 0.3, len(c)) * c for c in (cu, ci, cu, ci)]
        obj.set_row_weights(*[w.astype(np.float32) for w in weights])
        weights = [w.astype(np.float32).astype(np.float64) for w in weights]
    else:
        weights = [LAM * cu, LAM * ci, LAM_B * cu, LAM_B * ci]
    obj.ref_weights = weights  # what the autodiff reference penalizes
    y = obj.init_params(0.7, seed=3)
    if use_bias:
        bu, bi, _, _ = obj.unpack(y)
        rng = np.random.default_rng(5)
        bu[:] = rng.normal(0, 0.3, bu.shape)
        bi[:] = rng.normal(0, 0.3, bi.shape)
    return data, obj, y


def _torch_model(data, obj, weights=None):
    """(predict, loss, reg_diag) of the LF objective in torch float64: the autodiff reference.

    ``weights`` (wu, wi, wbu, wbi) default to ``obj.ref_weights``; the factor weights may be
    per row ((m,), (n,)) or per (row, dimension) ((m, f), (n, f))."""
    m, n, f, nb = obj.m, obj.n, obj.f, obj.n_bias
    weights = obj.ref_weights if weights is None else weights
    u = torch.tensor(data.users.astype(np.int64))
    i = torch.tensor(data.items.astype(np.int64))
    r = torch.tensor(data.values.astype(np.float64))
    wu, wi = (torch.tensor(np.asarray(w, dtype=np.float64).reshape(k, -1)) for w, k in zip(weights[:2], (m, n)))
    wbu, wbi = (torch.tensor(np.asarray(w, dtype=np.float64)) for w in weights[2:])

    def predict(yt):
        P = yt[nb:nb + m * f].reshape(m, f)
        Q = yt[nb + m * f:].reshape(n, f)
        pred = float(obj.mu) + (P[u] * Q[i]).sum(1)
        if nb:
            pred = pred + yt[:m][u] + yt[m:nb][i]
        return pred

    def loss(yt):
        P = yt[nb:nb + m * f].reshape(m, f)
        Q = yt[nb + m * f:].reshape(n, f)
        e = r - predict(yt)
        reg = 0.5 * ((wu * P ** 2).sum() + (wi * Q ** 2).sum())
        if nb:
            reg = reg + 0.5 * ((wbu * yt[:m] ** 2).sum() + (wbi * yt[m:nb] ** 2).sum())
        return 0.5 * (e ** 2).sum() + reg

    reg_diag = [np.broadcast_to(w.numpy(), (k, f)).ravel() for w, k in ((wu, m), (wi, n))]
    if nb:
        reg_diag = [wbu.numpy(), wbi.numpy()] + reg_diag
    return predict, loss, np.concatenate(reg_diag)


def _per_row_blocks(obj, G):
    """G with everything outside the per-row blocks zeroed: each user's and each item's block
    holds its factors, then its bias (what the block preconditioner inverts)."""
    m, n, f, nb = obj.m, obj.n, obj.f, obj.n_bias
    blocks = [list(range(nb + u * f, nb + (u + 1) * f)) + ([u] if nb else []) for u in range(m)]
    blocks += [list(range(nb + m * f + i * f, nb + m * f + (i + 1) * f)) + ([m + i] if nb else []) for i in range(n)]
    M = np.zeros_like(G)
    for idx in blocks:
        M[np.ix_(idx, idx)] = G[np.ix_(idx, idx)]
    return M


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_loss_and_gradient_match_autodiff(use_bias, weighting):
    data, obj, y = _setup(use_bias, weighting)
    predict, loss, _ = _torch_model(data, obj)
    g = np.zeros_like(y)
    value = obj.loss_grad(y, g)
    yt = torch.tensor(y.astype(np.float64), requires_grad=True)
    lt = loss(yt)
    lt.backward()
    assert value == pytest.approx(lt.item(), rel=1e-5)
    assert obj.loss(y) == pytest.approx(lt.item(), rel=1e-5)
    assert _rel(g, yt.grad.numpy()) < 1e-5


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_gauss_newton_product_matches_autodiff(use_bias, weighting):
    data, obj, y = _setup(use_bias, weighting)
    predict, _, reg_diag = _torch_model(data, obj)
    v = np.random.default_rng(0).standard_normal(y.size).astype(np.float32)
    out = np.zeros_like(y)
    obj.gvp(y, v, out)
    y64 = torch.tensor(y.astype(np.float64))
    _, jv = torch.func.jvp(predict, (y64,), (torch.tensor(v.astype(np.float64)),))
    _, vjp = torch.func.vjp(predict, y64)
    ref = vjp(jv)[0].numpy() + reg_diag * v
    assert _rel(out, ref) < 1e-5


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_gauss_newton_diagonal_is_exact(use_bias, weighting):
    data, obj, y = _setup(use_bias, weighting)
    predict, _, reg_diag = _torch_model(data, obj)
    J = torch.autograd.functional.jacobian(predict, torch.tensor(y.astype(np.float64))).numpy()
    out = np.zeros_like(y)
    obj.gn_diag(y, out)
    assert _rel(out, (J ** 2).sum(0) + reg_diag) < 1e-5


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_minibatch_estimates_are_unbiased_and_exact_on_full_batch(use_bias, weighting):
    data, obj, y = _setup(use_bias, weighting)
    g = np.zeros_like(y)
    obj.loss_grad(y, g)
    d = obj.gn_diag(y, np.zeros_like(y))
    gb, db = np.zeros_like(y), np.zeros_like(y)
    obj.batch_grad(y, np.arange(data.nnz), gb, db)
    assert _rel(gb, g) < 1e-5
    assert _rel(db, d) < 1e-5
    # two halves, each scaled by |K|/|B|, average to the full gradient
    half = data.nnz // 2
    perm = np.random.default_rng(0).permutation(data.nnz)
    g1, g2 = np.zeros_like(y), np.zeros_like(y)
    obj.batch_grad(y, perm[:half], g1)
    obj.batch_grad(y, perm[half:], g2)
    avg = (half * g1 + (data.nnz - half) * g2) / data.nnz
    assert _rel(avg, g) < 1e-4


@pytest.mark.parametrize("reshuffle", [False, True])
@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_sgd_epoch_visits_every_entry_once_per_epoch(use_bias, reshuffle, weighting):
    """With lr -> 0 an SGD epoch's update is -lr times the full gradient (every entry once)."""
    data, obj, y = _setup(use_bias, weighting)
    g = np.zeros_like(y)
    obj.loss_grad(y, g)
    lr = 1e-4
    y2 = y.astype(np.float32).copy()
    obj.sgd_epoch(y2, lr, seed=7, reshuffle=reshuffle)
    step = (y2.astype(np.float64) - y) / -lr
    assert _rel(step, g) < 5e-2  # first-order agreement (O(lr) drift within the epoch)


@pytest.mark.parametrize("reshuffle", [False, True])
def test_sgd_epoch_is_deterministic_given_seed(reshuffle):
    data, obj, y = _setup(True)
    a, b = y.copy(), y.copy()
    obj.sgd_epoch(a, 0.01, seed=3, reshuffle=reshuffle)
    _, obj, _ = _setup(True)  # a fresh objective rebuilds the layout: same result
    obj.sgd_epoch(b, 0.01, seed=3, reshuffle=reshuffle)
    np.testing.assert_array_equal(a, b)
    if reshuffle:  # another seed visits the entries in another order
        c = y.copy()
        obj.sgd_epoch(c, 0.01, seed=4, reshuffle=True)
        assert np.abs(c - a).max() > 0


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_als_half_step_is_the_exact_minimizer(use_bias, weighting):
    """After an ALS sweep the gradient with respect to the item side (updated last) vanishes."""
    data, obj, y = _setup(use_bias, weighting)
    obj.als_sweep(y)
    g = np.zeros_like(y)
    obj.loss_grad(y, g)
    gbu, gbi, gP, gQ = obj.unpack(g)
    scale = np.abs(g).max()
    assert np.abs(gQ).max() < 1e-3 * scale
    if use_bias:
        assert np.abs(gbi).max() < 1e-3 * scale
    # and the user side is not (it was solved against the old items): the check can fail
    assert np.abs(gP).max() > 1e-3 * scale


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_step_polynomial_is_the_exact_loss_along_a_line(use_bias, weighting):
    data, obj, y = _setup(use_bias, weighting)
    direction = (0.3 * np.random.default_rng(1).standard_normal(y.size)).astype(np.float32)
    coef = obj.step_polynomial(y, direction)
    for t in (0.0, 0.3, 1.0, 2.5):
        assert np.polynomial.Polynomial(coef)(t) == pytest.approx(obj.loss((y + t * direction).astype(np.float32)),
                                                                 rel=1e-5)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_block_preconditioner_inverts_the_per_row_blocks_of_g(use_bias, weighting):
    data, obj, y = _setup(use_bias, weighting)
    predict, _, reg_diag = _torch_model(data, obj)
    J = torch.autograd.functional.jacobian(predict, torch.tensor(y.astype(np.float64))).numpy()
    shift = 0.7
    M = _per_row_blocks(obj, J.T @ J + np.diag(reg_diag) + shift * np.eye(y.size))
    r = np.random.default_rng(2).standard_normal(y.size).astype(np.float32)
    out = np.zeros_like(r)
    obj.block_preconditioner(y, shift=shift)(r, out)
    assert _rel(out, np.linalg.solve(M, r.astype(np.float64))) < 1e-4


def test_uniform_per_visit_fast_path_equals_the_per_row_path():
    """Count-weighted L2 gives every visited row the same per-visit coefficients: the numba kernel
    set then passes them once (uniform=True) instead of per row; both paths give the same numbers."""
    from lfopt.kernels import lf as K

    data, obj, y = _setup(True)
    ks = obj.kernels
    fast = ks._per_visit(obj._v)
    assert fast[-1] is True and all(len(a) == 1 for a in fast[:4])
    np.testing.assert_array_equal(fast[0], np.float32(LAM))
    slow = (*obj._v, False)
    t = data
    batch = np.arange(0, data.nnz, 3)
    outs = []
    for v in (fast, slow):
        g = [np.zeros_like(a) for a in obj.unpack(y)]
        d = [np.zeros_like(a) for a in obj.unpack(y)]
        sse = K.batch_grad_diag(t.users, t.items, t.values, batch, np.float32(obj.mu), *obj.unpack(y), *v, True,
                                np.float32(2.0), True, *g, *d)
        lay = ks._sgd_layout()
        y2 = y.copy()
        K.sgd_epoch(lay["rows"], lay["cols"], lay["vals"], lay["ptr"], lay["nb"], lay["perm"].copy(), False,
                    np.uint64(1), np.float32(obj.mu), *obj.unpack(y2), np.float32(0.01), *v, True)
        outs.append((sse, np.concatenate([a.ravel() for a in g + d]), y2))
    assert outs[0][0] == outs[1][0]
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    np.testing.assert_array_equal(outs[0][2], outs[1][2])
    # weights that differ between rows take the per-row path
    _, obj2, _ = _setup(True, "rows")
    assert obj2.kernels._per_visit(obj2._v)[-1] is False
