"""Learned Lambda for the LF rating model (lfopt.regularizers.LearnedL2, METHODS.md 4 and 5b).

* the look-ahead hyper-gradient of sgd, adam and adago equals torch autograd through the
  simulated step (float64), and the simulated step is the optimizer's real next step;
* the implicit hyper-gradient equals the finite-difference derivative of
  l_valid(y*(Lambda)) with y* solved to high precision;
* the trainer's hook learns Lambda, records it, and early stopping restores it;
* the defaults follow the rating scale (ML-100K with ratings x 20).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import lfopt
from lfopt.errors import ConfigError
from lfopt.models.lf import LFObjective
from lfopt.optim.base import make_optimizer
from lfopt.regularizers import LearnedL2
from lfopt.regularizers.lambda_rating import lookahead_hypergrad
from lfopt.train.trainer import Trainer

torch = pytest.importorskip("torch")


def tiny(seed=0, m=9, n=7, nnz=40, noise=0.3):
    rng = np.random.default_rng(seed)
    cells = rng.choice(m * n, size=nnz, replace=False)
    u, i = cells // n, cells % n
    U, V = rng.normal(size=(m, 2)), rng.normal(size=(n, 2))
    r = 3.0 + (U[u] * V[i]).sum(1) + noise * rng.normal(size=nnz)
    return lfopt.Interactions(u, i, r.astype(np.float32), n_users=m, n_items=n)


def split3(data, seed=0):
    rest, test = lfopt.random_split(data, 0.2, seed)
    train, valid = lfopt.random_split(rest, 0.2, seed)
    return train, valid, test


def bound(granularity, bias, data=None, rank=3, seed=0, use_bias=True, **kw):
    data = data if data is not None else tiny(seed)
    train, valid, _ = split3(data, seed)
    reg = LearnedL2(granularity, bias=bias, **kw)
    obj = LFObjective(train, rank, regularizer=reg, use_bias=use_bias)
    reg.bind(obj, valid)
    rng = np.random.default_rng(seed + 1)
    reg.theta[:] = np.log(rng.uniform(0.02, 0.5, reg.theta.shape))
    reg.install()
    y = obj.init_params(0.5, seed)
    y[: obj.n_bias] = rng.normal(0, 0.3, obj.n_bias).astype(np.float32)
    return reg, obj, y, train, valid


# ---------------------------------------------------------------------------- torch references
def torch_lookahead(kind, reg, params, tb, vb, alpha, hp):
    """l_valid(ybar(Lambda)) in torch float64 and its gradient with respect to Lambda (flat)."""
    T = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
    lam = torch.tensor(np.exp(reg.theta), dtype=torch.float64, requires_grad=True)
    lay = reg.layout
    m, n, f = lay.n_users, lay.n_items, lay.rank
    nu = int(np.prod(lay.user_shape))
    lam_u = lam[:nu].reshape(lay.user_shape).expand(m, f)
    lam_i = lam[(0 if lay.shared else nu):lay.size].reshape(lay.item_shape).expand(n, f)
    lb = lam[lay.size:]
    if reg.bias == "global":
        lbu, lbi = lb[:1].expand(m), lb[:1].expand(n)
    elif reg.bias == "side":
        lbu, lbi = lb[:1].expand(m), lb[1:2].expand(n)
    else:
        lbu, lbi = lb[:m], lb[m:]
    W = [lbu * T(reg.sb[0]), lbi * T(reg.sb[1]), lam_u * T(reg.s[0])[:, None], lam_i * T(reg.s[1])[:, None]]
    y = [T(p) for p in params]
    bu, bi, P, Q = y
    mu = reg.objective.mu
    u, i, r = (torch.as_tensor(np.asarray(x)) for x in tb)
    e = T(r) - mu - (P[u] * Q[i]).sum(1) - bu[u] - bi[i]
    gd = [torch.zeros(m, dtype=torch.float64).index_add(0, u, -e),
          torch.zeros(n, dtype=torch.float64).index_add(0, i, -e),
          torch.zeros(m, f, dtype=torch.float64).index_add(0, u, -e[:, None] * Q[i]),
          torch.zeros(n, f, dtype=torch.float64).index_add(0, i, -e[:, None] * P[u])]
    au, ai = T(alpha[0]), T(alpha[1])
    al = [au, ai, au[:, None], ai[:, None]]
    c = hp["scale"]
    g = [c * (gk + a * w * yk) for gk, a, w, yk in zip(gd, al, W, y)]
    if kind == "sgd":
        ybar = [yk - hp["lr"] * gk for yk, gk in zip(y, g)]
    else:
        b1, b2, eps, t, lr = hp["beta1"], hp["beta2"], hp["eps"], hp["t"], hp["lr"]
        m0, s0 = [[T(x) for x in mm] for mm in hp["moments"]]
        if kind == "adago":
            one = torch.ones(len(u), dtype=torch.float64)
            dd = [torch.zeros(m, dtype=torch.float64).index_add(0, u, one),
                  torch.zeros(n, dtype=torch.float64).index_add(0, i, one),
                  torch.zeros(m, f, dtype=torch.float64).index_add(0, u, Q[i] ** 2),
                  torch.zeros(n, f, dtype=torch.float64).index_add(0, i, P[u] ** 2)]
            src = [c * (dk + a * w) + hp["damping"] for dk, a, w in zip(dd, al, W)]
        else:
            src = g
        bc1, bc2 = 1 - b1 ** (t + 1), 1 - b2 ** (t + 1)
        ybar = []
        for yk, gk, sk, mk, vk in zip(y, g, src, m0, s0):
            m1 = b1 * mk + (1 - b1) * gk
            s1 = b2 * vk + (1 - b2) * sk * sk
            ybar.append(yk - lr * (m1 / bc1) / (torch.sqrt(s1 / bc2) + eps))
    bu, bi, P, Q = ybar
    vu, vi, vr = (torch.as_tensor(np.asarray(x)) for x in vb)
    ev = T(vr) - mu - (P[vu] * Q[vi]).sum(1) - bu[vu] - bi[vi]
    loss = 0.5 * (ev * ev).mean() / reg.sigma ** 2
    loss.backward()
    return float(loss.detach()), lam.grad.numpy()


@pytest.mark.parametrize("kind", ["sgd", "adam", "adago"])
@pytest.mark.parametrize("granularity,bias", [("DUI", "row"), ("D", "side"), ("global", "global"), ("DU", "side"),
                                              ("DI", "row")])
def test_lookahead_matches_autograd(kind, granularity, bias):
    reg, obj, y, train, valid = bound(granularity, bias, seed=3)
    rng = np.random.default_rng(5)
    params = reg._params64(y)
    # a batch with repeated rows and a repeated entry; alpha = occurrences / counts
    sel = rng.choice(train.nnz, size=12, replace=True)
    tb = (train.users[sel].astype(np.int64), train.items[sel].astype(np.int64), train.values[sel].astype(np.float64))
    m, n = train.shape
    alpha = (np.bincount(tb[0], minlength=m) / np.maximum(reg.counts[0], 1),
             np.bincount(tb[1], minlength=n) / np.maximum(reg.counts[1], 1))
    vb = (valid.users.astype(np.int64), valid.items.astype(np.int64), valid.values.astype(np.float64))
    hp = {"lr": 0.05, "scale": train.nnz / 12.0 if kind != "sgd" else 1.0}
    if kind != "sgd":
        mom = tuple(rng.normal(0, 0.3, b.shape) for b in params)
        sec = tuple(rng.uniform(0.01, 2.0, b.shape) for b in params)
        hp.update(beta1=0.9, beta2=0.999, eps=1e-8, t=4, moments=(mom, sec), damping=3.0 if kind == "adago" else 0.0)
    l_val, hW, _ = lookahead_hypergrad(kind, obj.mu, params, reg.weights64(), alpha, tb, vb,
                                       norm=reg.sigma ** 2, **hp)
    ours = reg.reduce(hW)
    l_ref, ref = torch_lookahead(kind, reg, params, tb, vb, alpha, hp)
    assert l_val == pytest.approx(l_ref, rel=1e-12)
    assert np.abs(ref).max() > 0
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())


def test_sgd_epoch_horizon_is_one_full_batch_step():
    """sgd_horizon="epoch": the whole training set, alpha = 1, ybar = y - eta grad L(y)."""
    reg, obj, y, train, valid = bound("D", "side", seed=4)
    opt = make_optimizer("sgd", lr=0.01, decay=0.9)
    opt.check(obj)
    opt.epoch(obj, y, 1)
    kind, kw, bs = reg.lookahead_step_inputs(opt, 1, y)
    assert kind == "sgd" and bs == train.nnz and kw["lr"] == pytest.approx(0.01 * 0.9)
    tb = (train.users.astype(np.int64), train.items.astype(np.int64), train.values.astype(np.float64))
    _, _, ybar = lookahead_hypergrad(kind, obj.mu, reg._params64(y), reg.weights64(), reg._alpha_full(), tb, tb,
                                     **kw)
    g = np.zeros_like(y)
    obj.loss_grad(y, g)
    ref = y.astype(np.float64) - kw["lr"] * g
    for a, b in zip(ybar, obj.layout.unpack(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert reg.plan(opt) == ("lookahead", 1, reg.lr_epoch, reg.beta1_epoch)


@pytest.mark.parametrize("name", ["sgd", "adam", "adago"])
def test_simulated_step_is_the_optimizers_next_step(name):
    """With the batch the optimizer will take, ybar is its real next iterate (float32 tolerance)."""
    reg, obj, y, train, valid = bound("DUI", "row", seed=4, hyper_steps=1, sgd_horizon="batch")
    opts = {"sgd": dict(lr=0.02, batch_size=8, fused=False), "adam": dict(lr=0.01, batch_size=8),
            "adago": dict(lr=0.02, batch_size=8, damping=3.0)}[name]
    opt = make_optimizer(name, **opts)
    opt.check(obj)
    opt.epoch(obj, y, 1)  # moments and step count of a real epoch
    kind, kw, bs = reg.lookahead_step_inputs(opt, 1, y)
    assert kind == name and bs == 8
    batch = np.arange(8)
    tb = (train.users[batch].astype(np.int64), train.items[batch].astype(np.int64),
          train.values[batch].astype(np.float64))
    m, n = train.shape
    alpha = (np.bincount(tb[0], minlength=m) / np.maximum(reg.counts[0], 1),
             np.bincount(tb[1], minlength=n) / np.maximum(reg.counts[1], 1))
    _, _, ybar = lookahead_hypergrad(kind, obj.mu, reg._params64(y), reg.weights64(), alpha, tb, tb,
                                     norm=1.0, **kw)
    # the real step on the same batch
    y2 = y.copy()
    g = np.zeros_like(y2)
    if name == "sgd":
        obj.batch_grad(y2, batch, g, scale=1.0)
        y2 -= np.float32(kw["lr"]) * g
    else:
        st = opt._state
        d = st["d"]
        obj.batch_grad(y2, batch, g, d)
        opt._apply(obj, y2, g, *opt.second_moment(g, d))
    real = obj.layout.unpack(y2)
    for a, b in zip(ybar, real):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


# ---------------------------------------------------------------------------- implicit
def _als64(train, W, mu, f, y0, sweeps=3000, tol=1e-13):
    """y*(W) of the row-weighted objective by float64 ALS (tiny problems), from y0."""
    m, n = train.shape
    u, i, r = train.users, train.items, train.values.astype(np.float64)
    M = np.zeros((m, n))
    R = np.zeros((m, n))
    M[u, i] = 1.0
    R[u, i] = r - mu
    Wbu, Wbi, WP, WQ = W
    bu, bi, P, Q = (b.copy() for b in y0)
    for _ in range(sweeps):
        old = np.concatenate([bu, bi, P.ravel(), Q.ravel()])
        for side in (0, 1):
            Ms, Rs = (M, R) if side == 0 else (M.T, R.T)
            Y, bo = (Q, bi) if side == 0 else (P, bu)
            Wx, Wb = (WP, Wbu) if side == 0 else (WQ, Wbi)
            Z = np.hstack([Y, np.ones((Y.shape[0], 1))])
            A = np.einsum("ui,ia,ib->uab", Ms, Z, Z)
            A += np.einsum("ua,ab->uab", np.hstack([Wx, Wb[:, None]]), np.eye(f + 1))
            rhs = np.einsum("ui,ia->ua", Ms * (Rs - bo[None, :]), Z)
            sol = np.linalg.solve(A, rhs[..., None])[..., 0]
            if side == 0:
                P, bu = sol[:, :f], sol[:, f]
            else:
                Q, bi = sol[:, :f], sol[:, f]
        new = np.concatenate([bu, bi, P.ravel(), Q.ravel()])
        if np.abs(new - old).max() < tol:
            break
    return bu, bi, P, Q


def _lvalid(reg, params, valid):
    e = valid.values - reg.objective.mu - (params[2][valid.users] * params[3][valid.items]).sum(1) \
        - params[0][valid.users] - params[1][valid.items]
    return 0.5 * float(np.mean(e * e)) / reg.sigma ** 2


@pytest.mark.parametrize("granularity,bias", [("DUI", "side"), ("D", "row"), ("global", "global")])
def test_implicit_matches_finite_differences(granularity, bias):
    """hessian="exact": d l_valid(y*(Lambda)) / d log Lambda against central
    differences of l_valid(y*) with y* solved by float64 ALS, along a random direction and
    for the three largest entries."""
    data = tiny(seed=7, m=20, n=15, nnz=220, noise=0.01)
    reg, obj, y, train, valid = bound(granularity, bias, data=data, rank=2, seed=7, hessian="exact", cg_iters=300,
                                      cg_tol=1e-8)
    reg.theta[:] = np.log(0.03 * np.random.default_rng(8).uniform(0.5, 2.0, reg.theta.shape))
    reg.install()
    ystar = _als64(train, reg.weights64(), obj.mu, 2, reg._params64(y))
    y[:] = np.concatenate([b.ravel() for b in ystar]).astype(np.float32)
    _, grad, _, rel = reg.implicit_grad(y)  # d l / d theta
    # (global Lambda: the objective is invariant under rotations of the factors, the exact
    # Hessian singular along them, and float32 CG stalls a little earlier)
    assert rel < 1e-3
    theta0 = reg.theta.copy()
    h = 1e-4

    def fd(direction):
        vals = []
        for sgn in (1, -1):
            reg.theta[:] = theta0 + sgn * h * direction
            vals.append(_lvalid(reg, _als64(train, reg.weights64(), obj.mu, 2, ystar), valid))
        reg.theta[:] = theta0
        return (vals[0] - vals[1]) / (2 * h)

    direction = np.random.default_rng(9).normal(size=theta0.shape)
    ref = fd(direction)
    assert abs(ref) > 1e-4
    assert grad @ direction == pytest.approx(ref, rel=0.01)
    for k in np.argsort(-np.abs(grad))[:3]:
        e = np.zeros_like(theta0)
        e[k] = 1.0
        assert grad[k] == pytest.approx(fd(e), rel=0.01)


def test_gauss_newton_implicit_matches_a_dense_solve():
    """hessian="gn" (the default, METHODS.md 5b: H = J^T J + diag(W)) against the same formula with J from
    torch autograd and a dense solve.  (Gauss-Newton drops the residual term of the bilinear
    model's Hessian, so it is *not* the derivative of l_valid(y*): on the problem of the test
    above it is off by a factor ~8; hence the exact default.)"""
    data = tiny(seed=5, m=12, n=10, nnz=80, noise=0.2)
    reg, obj, y, train, valid = bound("DU", "row", data=data, rank=3, seed=5, hessian="gn", cg_iters=500,
                                      cg_tol=1e-7)
    _, grad, _, rel = reg.implicit_grad(y)
    assert rel < 1e-5
    lay = obj.layout
    yt = torch.tensor(reg._params64(y)[0].tolist() + reg._params64(y)[1].tolist(), dtype=torch.float64)
    y64 = torch.as_tensor(y.astype(np.float64))
    mu = obj.mu

    def preds(v, data):
        bu, bi, P, Q = (t.reshape(s) for t, s in zip(torch.split(v, [b.size for b in lay.unpack(y)]),
                                                    [b.shape for b in lay.unpack(y)]))
        u, i = torch.as_tensor(data.users.astype(np.int64)), torch.as_tensor(data.items.astype(np.int64))
        return mu + bu[u] + bi[i] + (P[u] * Q[i]).sum(1)

    J = torch.autograd.functional.jacobian(lambda v: preds(v, train), y64)
    Wflat = torch.as_tensor(np.concatenate([w.ravel() for w in reg.weights64()]))
    G = J.T @ J + torch.diag(Wflat)
    v = y64.clone().requires_grad_(True)
    ev = torch.as_tensor(valid.values.astype(np.float64)) - preds(v, valid)
    (0.5 * (ev * ev).mean() / reg.sigma ** 2).backward()
    x = torch.linalg.solve(G, v.grad)
    hW = [b for b in lay.unpack((-x * y64).numpy())]
    ref = reg.reduce(hW) * np.exp(reg.theta)
    del yt
    np.testing.assert_allclose(grad, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())


def test_implicit_warm_start_reuses_the_previous_solve():
    data = tiny(seed=2, m=30, n=20, nnz=300, noise=0.1)
    for hessian in ("gn", "exact"):
        reg, obj, y, train, valid = bound("D", "side", data=data, seed=2, cg_iters=2, cg_tol=1e-12, hessian=hessian)
        for _ in range(50):
            obj.als_sweep(y)
        rels = [reg.implicit_grad(y)[3] for _ in range(5)]
        # each call continues the last one's CG solve (same y): the residual keeps falling
        assert all(b < a for a, b in zip(rels, rels[1:])), rels
        assert rels[-1] < 0.2 * rels[0], rels


# ---------------------------------------------------------------------------- training
@pytest.mark.parametrize("name", ["sgd", "adam", "adago", "als", "slf", "sslf"])
def test_trainer_hook_learns_and_records_lambda(name):
    data = lfopt.synthetic(n_users=120, n_items=90, nnz=3000, seed=1)
    train, valid, test = split3(data, 1)
    reg = LearnedL2("DUI", hyper_steps=2, warmup=0)
    obj = LFObjective(train, 4, regularizer=reg)
    reg.bind(obj, valid)
    theta0 = reg.theta.copy()
    opt = make_optimizer(name, **({"batch_size": 256} if name in ("adam", "adago") else {}))
    y = obj.init_params(0.1, 0)
    res = Trainer(4, None, verbose=False).run(obj, opt, y, None)
    row = res.history[-1]
    for key in ("lam_user_mean", "lam_user_p5", "lam_user_p95", "lam_item_p50", "lam_bu_mean", "hyper_seconds",
                "hyper_valid_mse"):
        assert key in row and math.isfinite(row[key])
    assert not np.allclose(reg.theta, theta0)
    assert len(reg.trajectory) == 4 and reg.trajectory[-1]["epoch"] == 4
    # the objective's weights are the learned ones
    wu, wi, wbu, wbi = reg.weights()
    np.testing.assert_array_equal(obj.row_weights[0], wu)
    np.testing.assert_array_equal(obj.row_weights[3], wbi)


@pytest.mark.parametrize("name", ["adago", "als"])
def test_plain_model_without_biases(name):
    data = lfopt.synthetic(n_users=100, n_items=80, nnz=3000, seed=0)
    train, valid, _ = split3(data, 0)
    reg = LearnedL2("D", warmup=0)
    obj = LFObjective(train, 4, regularizer=reg, use_bias=False)
    reg.bind(obj, valid)
    assert reg.theta.shape == (4,)  # no bias Lambda
    theta0 = reg.theta.copy()
    Trainer(3, None, verbose=False).run(obj, make_optimizer(name), obj.init_params(0.1, 0), None)
    assert np.all(np.isfinite(reg.theta)) and not np.allclose(reg.theta, theta0)


def test_auto_warmup_starts_when_validation_stalls():
    data = lfopt.synthetic(n_users=120, n_items=90, nnz=3000, seed=4)
    train, valid, test = split3(data, 4)
    reg = LearnedL2("D", warmup="auto", warmup_tol=0.01)
    obj = LFObjective(train, 4, regularizer=reg)
    reg.bind(obj, valid)
    y = obj.init_params(0.1, 0)
    losses = []
    opt = make_optimizer("adam", batch_size=256)
    opt.check(obj)
    started = None
    for epoch in range(1, 30):
        opt.epoch(obj, y, epoch)
        losses.append(reg.valid_loss(y))
        info = reg.after_epoch(y, opt, epoch)
        if "hyper_valid_mse" in info and started is None:
            started = epoch
    assert started is not None and started > 2
    # it starts at the first epoch that improved the validation loss by less than 1 %
    gains = [1 - b / a for a, b in zip(losses, losses[1:])]
    assert gains[started - 2] < 0.01 and all(g >= 0.01 for g in gains[: started - 2])


def test_early_stopping_restores_lambda():
    data = lfopt.synthetic(n_users=120, n_items=90, nnz=3000, seed=2)
    train, valid, test = split3(data, 2)
    reg = LearnedL2("D", lr_epoch=0.3, warmup=0)
    obj = LFObjective(train, 4, regularizer=reg)
    reg.bind(obj, valid)
    y = obj.init_params(0.1, 0)
    snaps = {}

    def cb(params, row):
        snaps[row["epoch"]] = reg.theta.copy()

    def evaluate(params):
        # a validation score that is best at epoch 2, so the trainer restores epoch 2
        return {"rmse": {2: 0.5}.get(len(snaps) + 1, 1.0)}

    res = Trainer(6, 2, verbose=False, callback=cb).run(obj, make_optimizer("als"), y, evaluate)
    assert res.best_epoch == 2 and res.stopped == "early_stop"
    assert not np.allclose(snaps[2], snaps[4])
    np.testing.assert_array_equal(reg.theta, snaps[2])
    np.testing.assert_array_equal(obj.row_weights[0], reg.weights()[0])
    assert set(obj.extra_state()) == {"lambda_log", "lambda_m", "lambda_v", "lambda_count"}


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    data = lfopt.synthetic(n_users=60, n_items=40, nnz=1200, seed=3)
    train, valid, _ = split3(data, 3)
    reg = LearnedL2("DUI")
    obj = LFObjective(train, 3, regularizer=reg)
    reg.bind(obj, valid)
    Trainer(3, None, verbose=False).run(obj, make_optimizer("als"), obj.init_params(0.1, 0), None)
    path = reg.plot(tmp_path / "lam.png")
    assert path.stat().st_size > 1000


def test_config_errors():
    with pytest.raises(ConfigError, match="granularity"):
        LearnedL2("DX")
    with pytest.raises(ConfigError, match="bias"):
        LearnedL2(bias="dim")
    with pytest.raises(ConfigError, match="init"):
        LearnedL2(init=-1.0)
    with pytest.raises(ConfigError, match="scale"):
        LearnedL2(scale=(0.0, 0.0))
    with pytest.raises(ConfigError, match="method"):
        LearnedL2(method="greedy")
    with pytest.raises(ConfigError, match="hessian"):
        LearnedL2(hessian="full")
    data = lfopt.synthetic(n_users=30, n_items=20, nnz=300, seed=0)
    reg = LearnedL2()
    obj = LFObjective(data, 2, regularizer=reg)
    with pytest.raises(ConfigError, match="valid"):
        reg.bind(obj, None)
    with pytest.raises(ConfigError, match="bind"):
        LearnedL2().weights()


def test_row_weights_before_bind_are_the_initial_form():
    reg = LearnedL2(init=0.1, init_bias=0.2, scale=(2.0, 1.0), bias_scale=(0.0, 1.0))
    wu, wi, wbu, wbi = reg.row_weights(np.array([3, 0]), np.array([1]))
    np.testing.assert_allclose(wu, [0.5, 0.2], rtol=1e-6)
    np.testing.assert_allclose(wbu, [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(wi, [0.3], rtol=1e-6)


def _test_rmse(obj, y, data):
    bu, bi, P, Q = (np.asarray(b, np.float64) for b in obj.layout.unpack(y))
    cu, ci = obj.train.user_counts(), obj.train.item_counts()
    u, i = data.users, data.items
    su, si = cu[u] > 0, ci[i] > 0
    pred = obj.mu + np.where(su, bu[u], 0.0) + np.where(si, bi[i], 0.0)
    both = su & si
    pred[both] += np.einsum("kd,kd->k", P[u[both]], Q[i[both]])
    pred = np.clip(pred, obj.train.values.min(), obj.train.values.max())
    return float(np.sqrt(np.mean((pred - data.values) ** 2)))


def test_defaults_follow_the_rating_scale(shared_dataset):
    """ML-100K with every rating x 20: the same test RMSE / 20 within 1 % (the factors' initial
    Lambda grows with sigma, the biases' is scale-free, the hyper-steps see l_valid / sigma^2)."""
    data = lfopt.load_data(shared_dataset("ml-100k/u.data"))
    rest, test = lfopt.random_split(data, 0.1, 42)
    train, valid = lfopt.random_split(rest, 0.1, 42)
    out = []
    for c in (1.0, 20.0):
        tr, va, te = (d.with_values(d.values * np.float32(c)) for d in (train, valid, test))
        reg = LearnedL2()
        obj = LFObjective(tr, 10, regularizer=reg)
        reg.bind(obj, va)
        y = obj.init_params(0.1, 0)

        def evaluate(params, obj=obj, va=va):
            return {"rmse": _test_rmse(obj, params, va)}

        Trainer(40, 5, verbose=False).run(obj, make_optimizer("als"), y, evaluate)
        out.append(_test_rmse(obj, y, te) / c)
        if c == 20.0:
            assert reg.init_values[0] == pytest.approx(20 * lam0, rel=1e-5)  # factors: x sigma
            assert reg.init_values[1] == pytest.approx(lamb0)  # biases: scale-free
        lam0, lamb0 = reg.init_values
    assert out[0] < 0.93  # a real fit (the bias-only baseline is 0.9312)
    assert out[1] == pytest.approx(out[0], rel=0.01)
