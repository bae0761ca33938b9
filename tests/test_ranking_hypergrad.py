"""The BPR training step and lambdaOpt's Lambda hyper-gradient against torch autodiff.

One kernel step is compared with an independent torch formulation of the same
bilevel step: the penalty's gradient comes from autodiff (create_graph), the
optimizer update (SGD, or lazy Adam with its moments) is written in torch, and
d l_valid / d Lambda is obtained by backpropagation, for every granularity.
"""

import numpy as np
import pytest

from lfopt.kernels.bpr import bpr_train
from lfopt.regularizers.lambda_opt import GRANULARITIES, LambdaLayout

torch = pytest.importorskip("torch")

M, N, F = 6, 8, 3
LR, B1, B2, EPS = 0.05, 0.9, 0.999, 1e-8


def _problem(seed, use_bias):
    rng = np.random.default_rng(seed)
    P = rng.normal(0, 0.7, (M, F)).astype(np.float32)
    Q = rng.normal(0, 0.7, (N, F)).astype(np.float32)
    b = rng.normal(0, 0.3, N if use_bias else 0).astype(np.float32)
    # training batch with repeated users/items, an item both positive and negative,
    # and user 5 / item 7 absent (their rows must not move)
    tu = np.array([0, 1, 1, 2, 3, 0, 4, 2, 3, 1], dtype=np.int32)
    ti = np.array([1, 2, 3, 0, 4, 2, 5, 6, 1, 0], dtype=np.int32)
    tj = np.array([2, 4, 0, 3, 6, 5, 1, 4, 3, 6], dtype=np.int64)
    # validation batch sharing some rows with the training batch (and some not)
    vu = np.array([0, 1, 5, 3, 2, 4, 5], dtype=np.int32)
    vi = np.array([3, 7, 2, 0, 5, 6, 1], dtype=np.int32)
    vj = np.array([4, 1, 7, 2, 3, 0, 6], dtype=np.int64)
    return rng, P, Q, b, (tu, ti, tj), (vu, vi, vj)


def _torch_reference(P, Q, b, lam, layout, train, valid, opt, state, lam_b):
    dt = torch.float64
    tu, ti, tj = (torch.as_tensor(np.asarray(a, dtype=np.int64)) for a in train)
    vu, vi, vj = (torch.as_tensor(np.asarray(a, dtype=np.int64)) for a in valid)
    lam_t = torch.tensor(lam, dtype=dt, requires_grad=True)
    base_u, su_row, su_col, base_i, si_row, si_col = layout.lam_map().tolist()
    d = torch.arange(F)
    LU = lam_t[base_u + torch.arange(M)[:, None] * su_row + d[None, :] * su_col]
    LI = lam_t[base_i + torch.arange(N)[:, None] * si_row + d[None, :] * si_col]
    P0 = torch.tensor(P, dtype=dt)
    Q0 = torch.tensor(Q, dtype=dt)
    use_bias = len(b) > 0
    b0 = torch.tensor(b if use_bias else np.zeros(N), dtype=dt)

    Pv, Qv, bv = (x.clone().requires_grad_(True) for x in (P0, Q0, b0))
    x = (Pv[tu] * (Qv[ti] - Qv[tj])).sum(1) + ((bv[ti] - bv[tj]) if use_bias else 0.0)
    loss = torch.nn.functional.softplus(-x).sum()
    loss = loss + (LU[tu] * Pv[tu] ** 2).sum() + (LI[ti] * Qv[ti] ** 2).sum() + (LI[tj] * Qv[tj] ** 2).sum()
    if use_bias:
        loss = loss + lam_b * (bv[ti] ** 2 + bv[tj] ** 2).sum()
    gP, gQ, gb = torch.autograd.grad(loss, [Pv, Qv, bv], create_graph=True, allow_unused=True)
    if gb is None:
        gb = torch.zeros_like(b0)

    touched_u = torch.zeros(M, dtype=torch.bool)
    touched_u[tu] = True
    touched_i = torch.zeros(N, dtype=torch.bool)
    touched_i[ti] = True
    touched_i[tj] = True

    def step(theta, G, m, v, cnt, touched):
        if opt == "sgd":
            return theta - LR * G
        k = torch.as_tensor(cnt + 1, dtype=dt).reshape((-1,) + (1,) * (theta.dim() - 1))
        mn = B1 * torch.tensor(m, dtype=dt) + (1 - B1) * G
        vn = B2 * torch.tensor(v, dtype=dt) + (1 - B2) * G * G
        new = theta - LR * (mn / (1 - B1 ** k)) / (torch.sqrt(vn / (1 - B2 ** k)) + EPS)
        mask = touched.reshape((-1,) + (1,) * (theta.dim() - 1))
        return torch.where(mask, new, theta)

    Pn = step(P0, gP, state["mP"], state["vP"], state["cu"], touched_u)
    Qn = step(Q0, gQ, state["mQ"], state["vQ"], state["ci"], touched_i)
    bn = step(b0, gb, state["mb"], state["vb"], state["ci"], touched_i) if use_bias else b0
    xv = (Pn[vu] * (Qn[vi] - Qn[vj])).sum(1) + ((bn[vi] - bn[vj]) if use_bias else 0.0)
    lval = torch.nn.functional.softplus(-xv).mean()
    (glam,) = torch.autograd.grad(lval, lam_t)
    return glam.numpy(), Pn.detach().numpy(), Qn.detach().numpy(), bn.detach().numpy()


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_lambda_hypergradient_matches_autodiff(opt, granularity):
    use_bias = granularity in ("D", "DUI")  # exercise the bias path on some cases
    rng, P, Q, b, train, valid = _problem(7, use_bias)
    layout = LambdaLayout(granularity, M, N, F)
    lam = rng.uniform(0.05, 0.5, layout.size).astype(np.float32)
    lam_b = np.float32(0.1)
    adam = opt == "adam"
    state = {
        "mP": rng.normal(0, 0.1, (M, F)).astype(np.float32),
        "vP": rng.uniform(0.01, 0.2, (M, F)).astype(np.float32),
        "mQ": rng.normal(0, 0.1, (N, F)).astype(np.float32),
        "vQ": rng.uniform(0.01, 0.2, (N, F)).astype(np.float32),
        "mb": rng.normal(0, 0.1, N).astype(np.float32),
        "vb": rng.uniform(0.01, 0.2, N).astype(np.float32),
        "cu": rng.integers(0, 5, M).astype(np.int64),
        "ci": rng.integers(0, 5, N).astype(np.int64),
    }
    # fresh rows (no Adam step yet, zero moments): there d theta_bar / d G ~ 0 because the
    # first Adam step is ~ lr sign(G), which the v-term of the derivative must cancel exactly
    for key, rows in (("u", [0, 2]), ("i", [1, 4])):
        state["c" + key][rows] = 0
        for mom in (("mP", "vP") if key == "u" else ("mQ", "vQ", "mb", "vb")):
            state[mom][rows] = 0
    g_ref, P_ref, Q_ref, b_ref = _torch_reference(P, Q, b, lam, layout, train, valid, opt, state, float(lam_b))

    k = {key: v.copy() for key, v in state.items()}
    e2 = np.zeros((0, 0), np.float32)
    e1 = np.zeros(0, np.float32)
    Pk, Qk, bk, lamk = P.copy(), Q.copy(), b.copy(), lam.copy()
    grad = np.zeros(layout.size, dtype=np.float32)
    stats = np.zeros(4)
    f32 = np.float32
    tu, ti, tj = train
    vu, vi, vj = valid
    bpr_train(tu, ti, tj, len(tu), vu, vi, vj, len(vu), Pk, Qk, bk, use_bias, lam_b,
              1 if adam else 0, f32(LR), f32(B1), f32(B2), f32(EPS),
              k["mP"] if adam else e2, k["vP"] if adam else e2, k["mQ"] if adam else e2, k["vQ"] if adam else e2,
              k["mb"] if adam and use_bias else e1, k["vb"] if adam and use_bias else e1, k["cu"], k["ci"],
              lamk, layout.lam_map(), True, f32(0.0), np.zeros_like(lam), np.zeros_like(lam),
              np.zeros(layout.size, np.int64), grad, stats)

    # the Theta step equals the simulated update at the current Lambda
    np.testing.assert_allclose(Pk, P_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(Qk, Q_ref, rtol=1e-4, atol=1e-5)
    if use_bias:
        np.testing.assert_allclose(bk, b_ref, rtol=1e-4, atol=1e-5)
    assert np.array_equal(Pk[5], P[5]) and np.array_equal(Qk[7], Q[7])  # absent rows untouched
    # the hyper-gradient
    scale = np.abs(g_ref).max()
    assert scale > 0
    np.testing.assert_allclose(grad, g_ref, rtol=2e-3, atol=2e-4 * scale)
    # Lambda entries of rows absent from either batch get exactly zero
    if granularity == "DUI":
        assert np.all(layout.user_view(grad)[5] == 0)  # user 5 only in the validation batch
        assert np.all(layout.item_view(grad)[7] == 0)  # item 7 only in the validation batch
    # with lam_lr = 0 Lambda is unchanged; losses were recorded
    np.testing.assert_array_equal(lamk, lam)
    assert stats[1] == len(tu) and stats[3] == len(vu)


def test_lambda_step_descends_and_projects():
    """A Lambda step moves against the hyper-gradient and never below zero."""
    rng, P, Q, b, train, valid = _problem(3, False)
    layout = LambdaLayout("DUI", M, N, F)
    lam = np.full(layout.size, 1e-4, np.float32)
    grad = np.zeros(layout.size, np.float32)
    e2 = np.zeros((0, 0), np.float32)
    e1 = np.zeros(0, np.float32)
    f32 = np.float32
    tu, ti, tj = train
    vu, vi, vj = valid
    lam0 = lam.copy()
    bpr_train(tu, ti, tj, len(tu), vu, vi, vj, len(vu), P.copy(), Q.copy(), np.zeros(0, np.float32), False,
              f32(0), 0, f32(LR), f32(B1), f32(B2), f32(EPS), e2, e2, e2, e2, e1, e1,
              np.zeros(M, np.int64), np.zeros(N, np.int64), lam, layout.lam_map(), True, f32(0.01),
              np.zeros_like(lam), np.zeros_like(lam), np.zeros(layout.size, np.int64), grad, np.zeros(4))
    moved = grad != 0
    assert moved.any()
    assert np.all(lam >= 0)
    # first Adam step: magnitude lam_lr in the direction -sign(grad), clipped at 0
    expect = np.maximum(lam0 - 0.01 * np.sign(grad), 0)
    np.testing.assert_allclose(lam[moved], expect[moved], rtol=1e-3, atol=1e-6)
    np.testing.assert_array_equal(lam[~moved], lam0[~moved])
