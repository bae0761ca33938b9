"""Deep matrix factorization (lfopt.models.deep, lfopt.estimators.deep).

Every oracle of ``DeepLFObjective`` (loss, gradient, Gauss-Newton product and diagonal,
mini-batch gradient and diagonal, line polynomial, block preconditioner) and the flatness
penalty tr(J^T J) with its gradient and Hessian diagonal are checked against torch autodiff
in float64 at depth 1 and 2 on a tiny synthetic set; depth 0 against ``LFObjective``; every
optimizer against the training loss; the estimator against the bias baseline on ML-100K.
"""

import numpy as np
import pytest

import lfopt
from lfopt.data.synthetic import synthetic
from lfopt.errors import ConfigError
from lfopt.models.deep import DeepLFObjective, flatness_terms
from lfopt.models.lf import LFObjective

LAM, LAM_B, LAM_W = 0.05, 0.02, 0.03


def _setup(depth, use_bias=True, flatness=0.0, rank=3, seed=1):
    data = synthetic(n_users=40, n_items=30, nnz=300, seed=seed)
    obj = DeepLFObjective(data, rank=rank, depth=depth, lam=LAM, lam_b=LAM_B, lam_w=LAM_W, use_bias=use_bias,
                          flatness=flatness)
    y = obj.init_params(0.8, seed=3)
    rng = np.random.default_rng(7)
    bu, bi, P, Q, W = obj.layout.unpack(y)
    W += rng.normal(0, 0.4, W.shape).astype(np.float32)  # layers away from I: every term matters
    if use_bias:
        bu[:] = rng.normal(0, 0.3, bu.shape)
        bi[:] = rng.normal(0, 0.3, bi.shape)
    return data, obj, y


class _Ref:
    """The deep objective in torch float64, written from its definition (the autodiff reference)."""

    def __init__(self, data, obj):
        import torch

        self.t = torch
        self.obj = obj
        self.u = torch.tensor(data.users.astype(np.int64))
        self.i = torch.tensor(data.items.astype(np.int64))
        self.r = torch.tensor(data.values.astype(np.float64))
        cu = data.user_counts().astype(np.float64)
        ci = data.item_counts().astype(np.float64)
        self.w = [torch.tensor(x) for x in (LAM * cu, LAM * ci, LAM_B * cu, LAM_B * ci)]

    def blocks(self, yt):
        lay = self.obj.layout
        out = {}
        for name, shape in lay.blocks:
            a = lay.offset(name)
            k = int(np.prod(shape))
            out[name] = yt[a:a + k].reshape(shape)
        return out

    def predict(self, yt, rows=None, cols=None):
        b = self.blocks(yt)
        u = self.u if rows is None else rows
        i = self.i if cols is None else cols
        X = b["P"][u]
        for l in range(self.obj.depth):
            X = X @ b["W"][l]
        pred = float(self.obj.mu) + (X * b["Q"][i]).sum(1)
        if self.obj.use_bias:
            pred = pred + b["b_u"][u] + b["b_i"][i]
        return pred

    def penalty(self, yt):
        b = self.blocks(yt)
        t = self.t
        pen = 0.5 * ((self.w[0][:, None] * b["P"] ** 2).sum() + (self.w[1][:, None] * b["Q"] ** 2).sum())
        if self.obj.use_bias:
            pen = pen + 0.5 * ((self.w[2] * b["b_u"] ** 2).sum() + (self.w[3] * b["b_i"] ** 2).sum())
        if self.obj.depth:
            eye = t.eye(self.obj.f, dtype=t.float64)
            pen = pen + 0.5 * LAM_W * len(self.r) * ((b["W"] - eye) ** 2).sum()
        return pen

    def trace_formula(self, yt):
        """tr(J^T J) by the factor-chain formula (checked against the Jacobian below)."""
        b = self.blocks(yt)
        L = self.obj.depth
        total = 2.0 * len(self.r) if self.obj.use_bias else 0.0
        for j in range(L + 2):
            a = 1.0
            if j >= 1:
                X = b["P"][self.u]
                for l in range(j - 1):
                    X = X @ b["W"][l]
                a = (X ** 2).sum(1)
            c = 1.0
            if j <= L:
                Z = b["Q"][self.i]
                for l in range(L - 1, j - 1, -1):
                    Z = Z @ b["W"][l].T
                c = (Z ** 2).sum(1)
            total = total + (a * c).sum()
        return total

    def loss(self, yt, beta):
        e = self.r - self.predict(yt)
        out = 0.5 * (e ** 2).sum() + self.penalty(yt)
        if beta:
            out = out + beta * self.trace_formula(yt)
        return out

    def jacobian(self, yt):
        from torch.autograd.functional import jacobian

        return jacobian(self.predict, yt)


def _t(y):
    import torch

    return torch.tensor(np.asarray(y, dtype=np.float64), requires_grad=True)


def _close(a, b, rtol=2e-4, atol=None):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = max(np.abs(b).max(), 1e-12)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol if atol is not None else rtol * scale)


DEPTHS = [1, 2]


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_loss_gradient_gvp_diag_against_autodiff(depth, use_bias):
    torch = pytest.importorskip("torch")
    data, obj, y = _setup(depth, use_bias)
    ref = _Ref(data, obj)
    yt = _t(y)
    loss_t = ref.loss(yt, 0.0)
    (grad_t,) = torch.autograd.grad(loss_t, yt)
    g = np.zeros_like(y)
    assert obj.loss(y) == pytest.approx(loss_t.item(), rel=1e-5)
    assert obj.loss_grad(y, g) == pytest.approx(loss_t.item(), rel=1e-5)
    _close(g, grad_t.numpy())
    # Gauss-Newton: J^T J v + the L2 diagonal, J the Jacobian of the predictions
    J = ref.jacobian(yt.detach()).numpy()
    yd = yt.detach().clone().requires_grad_(True)
    H_pen = torch.autograd.functional.hessian(ref.penalty, yd).numpy()
    assert np.allclose(H_pen, np.diag(np.diag(H_pen)))  # the L2 penalties are diagonal
    G = J.T @ J + H_pen
    v = np.random.default_rng(0).normal(size=y.shape).astype(np.float32)
    out = np.zeros_like(y)
    obj.gvp(y, v, out)
    _close(out, G @ v.astype(np.float64))
    obj.gn_diag(y, out)
    _close(out, np.diag(G))


@pytest.mark.parametrize("depth", DEPTHS)
def test_flatness_penalty_trace_gradient_and_hessian_diagonal(depth):
    torch = pytest.importorskip("torch")
    beta = 0.07
    data, obj, y = _setup(depth, flatness=beta)
    ref = _Ref(data, obj)
    yt = _t(y)
    # the formula is tr(J^T J) of the actual Jacobian
    J = ref.jacobian(yt.detach()).numpy()
    assert ref.trace_formula(yt).item() == pytest.approx(float((J ** 2).sum()), rel=1e-10)
    assert obj.flatness_trace(y) == pytest.approx(float((J ** 2).sum()), rel=1e-5)
    loss_t = ref.loss(yt, beta)
    (grad_t,) = torch.autograd.grad(loss_t, yt)
    g = np.zeros_like(y)
    assert obj.loss_grad(y, g) == pytest.approx(loss_t.item(), rel=1e-5)
    assert obj.loss(y) == pytest.approx(loss_t.item(), rel=1e-5)
    _close(g, grad_t.numpy())
    # the penalty's Hessian diagonal (what gvp and gn_diag add, times beta)
    H_F = torch.autograd.functional.hessian(ref.trace_formula, yt.detach().clone()).numpy()
    H_pen = torch.autograd.functional.hessian(ref.penalty, yt.detach().clone()).numpy()
    dF = np.diag(H_F)
    assert (dF >= -1e-9).all()
    out = np.zeros_like(y)
    obj.gn_diag(y, out)
    _close(out, np.diag(J.T @ J + H_pen) + beta * dF)
    v = np.random.default_rng(1).normal(size=y.shape).astype(np.float32)
    obj.gvp(y, v, out)
    _close(out, (J.T @ J + H_pen + beta * np.diag(dF)) @ v.astype(np.float64))
    # and the function itself: the gradient of flatness_terms against autodiff of the formula
    _, _, P, Q, W = obj.layout.unpack(y)
    F, (gP, gQ, gW), _ = flatness_terms(P, Q, W, data.users, data.items)
    (gF,) = torch.autograd.grad(ref.trace_formula(yt), yt)
    b = ref.blocks(gF)
    _close(gP, b["P"].numpy())
    _close(gQ, b["Q"].numpy())
    _close(gW, b["W"].numpy())


def test_flatness_at_depth_0_is_count_weighted_l2():
    """tr(J^T J) of the LF model = sum n_u |p_u|^2 + sum n_i |q_i|^2 + 2|K|: beta tr(G) is the
    count-weighted L2 with lam = 2 beta (biases unpenalized) plus a constant."""
    beta = 0.04
    data = synthetic(n_users=50, n_items=40, nnz=500, seed=2)
    deep = DeepLFObjective(data, rank=4, depth=0, lam=0.0, flatness=beta)
    lf = LFObjective(data, rank=4, lam=2 * beta, lam_b=0.0)
    y = deep.init_params(0.9, seed=1)
    _, _, P, Q, _ = deep.layout.unpack(y)
    cu, ci = data.user_counts(), data.item_counts()
    expect = float((cu * (P.astype(np.float64) ** 2).sum(1)).sum() + (ci * (Q.astype(np.float64) ** 2).sum(1)).sum())
    assert deep.flatness_trace(y) == pytest.approx(expect + 2 * data.nnz, rel=1e-6)
    const = beta * 2 * data.nnz
    assert deep.loss(y) == pytest.approx(lf.loss(y) + const, rel=1e-6)
    g1, g2 = np.zeros_like(y), np.zeros_like(y)
    assert deep.loss_grad(y, g1) == pytest.approx(lf.loss_grad(y, g2) + const, rel=1e-6)
    _close(g1, g2, rtol=1e-5)
    v = np.random.default_rng(3).normal(size=y.shape).astype(np.float32)
    deep.gvp(y, v, g1)
    lf.gvp(y, v, g2)
    _close(g1, g2, rtol=1e-5)
    deep.gn_diag(y, g1)
    lf.gn_diag(y, g2)
    _close(g1, g2, rtol=1e-5)


@pytest.mark.parametrize("use_bias", [True, False])
def test_depth_0_reproduces_lf_objective_exactly(use_bias):
    data = synthetic(n_users=50, n_items=40, nnz=500, seed=2)
    deep = DeepLFObjective(data, rank=4, depth=0, lam=LAM, lam_b=LAM_B, use_bias=use_bias)
    lf = LFObjective(data, rank=4, lam=LAM, lam_b=LAM_B, use_bias=use_bias)
    assert deep.size == lf.size
    y = deep.init_params(0.5, seed=4)
    np.testing.assert_array_equal(y, lf.init_params(0.5, seed=4))
    assert deep.loss(y) == lf.loss(y)
    a, b = np.zeros_like(y), np.zeros_like(y)
    assert deep.loss_grad(y, a) == lf.loss_grad(y, b)
    np.testing.assert_array_equal(a, b)
    v = np.random.default_rng(0).normal(size=y.shape).astype(np.float32)
    np.testing.assert_array_equal(deep.gvp(y, v, a), lf.gvp(y, v, b))
    np.testing.assert_array_equal(deep.gn_diag(y, a), lf.gn_diag(y, b))
    batch = np.arange(0, 500, 3)
    da, db = np.zeros_like(y), np.zeros_like(y)
    assert deep.batch_grad(y, batch, a, da) == lf.batch_grad(y, batch, b, db)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(da, db)
    np.testing.assert_array_equal(deep.step_polynomial(y, v), lf.step_polynomial(y, v))
    np.testing.assert_array_equal(deep.predict(y, data.users, data.items), lf.predict(y, data.users, data.items))


@pytest.mark.parametrize("depth", [0, 1, 2])
@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_batch_grad_against_autodiff(depth, beta):
    """Mini-batch sums: the data term over the batch, one per-visit penalty per entry (the layers'
    lam_w (W - I) included), the flatness penalty's entries in the batch; the diagonal likewise."""
    torch = pytest.importorskip("torch")
    data, obj, y = _setup(depth, flatness=beta)
    ref = _Ref(data, obj)
    rng = np.random.default_rng(5)
    batch = rng.choice(data.nnz, 60, replace=False)
    rows = torch.tensor(data.users[batch].astype(np.int64))
    cols = torch.tensor(data.items[batch].astype(np.int64))
    r = torch.tensor(data.values[batch].astype(np.float64))
    cu = torch.tensor(np.bincount(data.users[batch], minlength=obj.m).astype(np.float64))
    ci = torch.tensor(np.bincount(data.items[batch], minlength=obj.n).astype(np.float64))
    L = obj.depth

    def batch_loss(yt):
        b = ref.blocks(yt)
        e = r - ref.predict(yt, rows, cols)
        out = 0.5 * (e ** 2).sum()
        out = out + 0.5 * LAM * ((cu[:, None] * b["P"] ** 2).sum() + (ci[:, None] * b["Q"] ** 2).sum())
        out = out + 0.5 * LAM_B * ((cu * b["b_u"] ** 2).sum() + (ci * b["b_i"] ** 2).sum())
        if L:
            out = out + 0.5 * LAM_W * len(batch) * ((b["W"] - torch.eye(obj.f, dtype=torch.float64)) ** 2).sum()
        if beta:
            sub = _Ref.__new__(_Ref)
            sub.__dict__.update(ref.__dict__)
            sub.u, sub.i, sub.r = rows, cols, r
            out = out + beta * (sub.trace_formula(yt) - 2.0 * len(batch))
        return out

    yt = _t(y)
    (gt,) = torch.autograd.grad(batch_loss(yt), yt)
    J = torch.autograd.functional.jacobian(lambda z: ref.predict(z, rows, cols), yt.detach()).numpy()
    Hd = np.diag(torch.autograd.functional.hessian(batch_loss, yt.detach().clone()).numpy())
    # GN diagonal of the batch: J's column norms + the (diagonal) penalty's second derivatives
    Hd_data = np.diag(torch.autograd.functional.hessian(
        lambda z: 0.5 * ((r - ref.predict(z, rows, cols)) ** 2).sum(), yt.detach().clone()).numpy())
    want_diag = (J ** 2).sum(0) + (Hd - Hd_data)
    scale = 3.0
    g, d = np.zeros_like(y), np.zeros_like(y)
    g[:] = 9.0  # overwritten entirely
    sse = obj.batch_grad(y, batch, g, d, scale=scale)
    e = (r - ref.predict(yt, rows, cols)).detach().numpy()
    assert sse == pytest.approx(float((e ** 2).sum()), rel=1e-4)
    _close(g, scale * gt.numpy())
    _close(d, scale * want_diag)
    # the default scale |K| / |B| and no diagonal
    g2 = np.zeros_like(y)
    obj.batch_grad(y, batch, g2)
    _close(g2, data.nnz / len(batch) * gt.numpy())


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_step_polynomial_is_the_loss_along_the_line(depth, beta):
    data, obj, y = _setup(depth, flatness=beta)
    d = np.random.default_rng(2).normal(0, 0.3, y.shape).astype(np.float32)
    coef = obj.step_polynomial(y, d)
    assert len(coef) == 2 * depth + 5
    for t in (0.0, 0.3, -0.7, 1.0):
        z = (y.astype(np.float64) + t * d).astype(np.float32)
        assert np.polynomial.polynomial.polyval(t, coef) == pytest.approx(obj.loss(z), rel=2e-4)


@pytest.mark.parametrize("depth,beta", [(1, 0.0), (2, 0.05)])
def test_block_preconditioner_inverts_the_row_blocks(depth, beta):
    """M^-1 applied to M x gives x back, M the per-row blocks of G (+ shift) for b, P, Q and the
    diagonal for the layers, built from the dense G."""
    data, obj, y = _setup(depth, flatness=beta)
    m, n, f = obj.m, obj.n, obj.f
    size = obj.size
    # dense G from gvp columns
    G = np.zeros((size, size))
    e = np.zeros(size, np.float32)
    col = np.zeros(size, np.float32)
    for k in range(size):
        e[:] = 0
        e[k] = 1
        obj.gvp(y, e, col)
        G[:, k] = col
    groups = []
    offP, offQ, offW = obj.layout.offset("P"), obj.layout.offset("Q"), obj.layout.offset("W")
    for u in range(m):
        groups.append([u] + list(range(offP + u * f, offP + (u + 1) * f)))
    for i in range(n):
        groups.append([m + i] + list(range(offQ + i * f, offQ + (i + 1) * f)))
    groups += [[k] for k in range(offW, size)]
    M = np.zeros_like(G)
    shift = 0.5
    for gidx in groups:
        M[np.ix_(gidx, gidx)] = G[np.ix_(gidx, gidx)]
    M += shift * np.eye(size)
    x = np.random.default_rng(4).normal(size=size)
    apply = obj.block_preconditioner(y, shift=shift)
    out = np.zeros(size, np.float32)
    apply((M @ x).astype(np.float32), out)
    _close(out, x, rtol=2e-3)


def test_gn_product_cache_follows_the_parameters():
    """Derived quantities are cached per point: changing y in place must change the product."""
    data, obj, y = _setup(2)
    v = np.ones_like(y)
    a = obj.gvp(y, v, np.zeros_like(y)).copy()
    _, _, _, _, W = obj.layout.unpack(y)
    W *= 1.1
    b = obj.gvp(y, v, np.zeros_like(y))
    assert not np.allclose(a, b)
    fresh = DeepLFObjective(data, rank=3, depth=2, lam=LAM, lam_b=LAM_B, lam_w=LAM_W)
    np.testing.assert_allclose(b, fresh.gvp(y, v, np.zeros_like(y)), rtol=1e-6)


def test_identity_init_starts_as_the_lf_model():
    data = synthetic(n_users=50, n_items=40, nnz=500, seed=2)
    lf = LFObjective(data, rank=4, lam=LAM)
    y0 = lf.init_params(0.3, seed=0)
    for depth in (1, 2):
        deep = DeepLFObjective(data, rank=4, depth=depth, lam=LAM)
        y = deep.init_params(0.3, seed=0)
        assert deep.loss(y) == pytest.approx(lf.loss(y0), rel=1e-6)
        np.testing.assert_allclose(deep.predict(y, data.users, data.items), lf.predict(y0, data.users, data.items),
                                   rtol=1e-6)
    rnd = DeepLFObjective(data, rank=4, depth=2, lam=LAM, init="random")
    W = rnd.layout.unpack(rnd.init_params(0.3, seed=0), "W")[0]
    assert not np.allclose(W[0], np.eye(4))


def test_config_errors():
    data = synthetic(n_users=20, n_items=10, nnz=100, seed=0)
    for kw, word in (({"depth": -1}, "depth"), ({"depth": 1.5}, "depth"), ({"init": "zeros"}, "init"),
                     ({"flatness": -1.0}, "flatness"), ({"lam_w": float("nan")}, "lam_w")):
        with pytest.raises(ConfigError, match=word):
            DeepLFObjective(data, rank=2, lam=0.1, **kw)
    obj = DeepLFObjective(data, rank=2, depth=1, lam=0.1)
    from lfopt.optim.base import make_optimizer

    opt = make_optimizer("als")
    with pytest.raises(ConfigError, match="als_sweep"):
        opt.check(obj)


# ------------------------------------------------------------------ optimizers
@pytest.fixture(scope="module")
def ml100k_sized():
    return synthetic(n_users=943, n_items=1682, nnz=100_000, rank=5, seed=0)


@pytest.mark.parametrize("name,opts", [
    ("sgd", {"lr": 0.005, "fused": True}),
    ("adam", {"lr": 0.005}),
    ("adago", {}),
    ("slf", {}),
    ("sslf", {"rho": 0.05}),
])
def test_every_optimizer_lowers_the_training_loss(ml100k_sized, name, opts):
    from lfopt.optim.base import make_optimizer
    from lfopt.train.trainer import Trainer

    obj = DeepLFObjective(ml100k_sized, rank=8, depth=2, lam=0.05, flatness=0.001)
    y = obj.init_params(0.1, seed=0)
    loss0 = obj.loss(y)
    opt = make_optimizer(name, seed=0, **opts)
    res = Trainer(5, None).run(obj, opt, y, None)
    assert res.stopped != "diverged"
    losses = [row["train_loss"] for row in res.history]
    assert losses[-1] < 0.9 * loss0, (name, loss0, losses)
    if name in ("slf", "sslf"):  # steps that raise the loss are rejected
        assert all(b <= a * (1 + 1e-6) for a, b in zip([loss0] + losses, losses)), losses


# ------------------------------------------------------------------ estimator
@pytest.fixture(scope="module")
def ml100k(request):
    from conftest import dataset_path

    path = dataset_path("ml-100k/u.data")
    data = lfopt.load_data(path)
    return lfopt.random_split(data, 0.1, seed=42)


def test_deepmf_beats_the_bias_baseline_on_ml100k(ml100k, tmp_path):
    from lfopt.estimators.deep import DeepMF

    train, test = ml100k
    base = lfopt.BiasBaseline().fit(train).evaluate(test)["rmse"]
    model = DeepMF(rank=16, depth=2, epochs=15, seed=0).fit(train)
    rmse = model.evaluate(test)["rmse"]
    assert rmse < base - 0.01, (rmse, base)
    # save / load round trip: the same predictions and parameters
    path = model.save(tmp_path / "deep.npz")
    back = lfopt.load(path)
    assert isinstance(back, DeepMF) and back.depth == 2
    users, items = test.user_ids[test.users[:50]], test.item_ids[test.items[:50]]
    np.testing.assert_array_equal(back.predict(users, items), model.predict(users, items))
    np.testing.assert_array_equal(back.params_, model.params_)
    assert back.evaluate(test)["rmse"] == pytest.approx(rmse)
    recs, _ = back.recommend(users[0], k=5)
    assert len(recs) == 5


def test_deepmf_params_and_depth_0_equals_latent_factor_model(ml100k):
    from lfopt.estimators.deep import DeepMF

    train, test = ml100k
    small = lfopt.random_split(train, 0.7, seed=0)[1]  # 30 % of the training part: fast
    a = DeepMF(rank=8, depth=0, optimizer="adam", epochs=3, seed=0, lr=0.01).fit(small)
    b = lfopt.LatentFactorModel(rank=8, optimizer="adam", epochs=3, seed=0, lr=0.01).fit(small)
    np.testing.assert_allclose(a.predict(test.user_ids[test.users[:100]], test.item_ids[test.items[:100]]),
                               b.predict(test.user_ids[test.users[:100]], test.item_ids[test.items[:100]]),
                               rtol=1e-6)
    m = DeepMF(depth=2, flatness=0.01, lr=0.003)
    assert m.get_params()["lr"] == 0.003 and m.get_params()["depth"] == 2
    m.set_params(depth=3, lr=0.02)
    assert m.depth == 3 and m.optimizer_options["lr"] == 0.02
    assert "depth=3" in repr(m) and "lr=0.02" in repr(m)
    from sklearn.base import clone

    assert clone(m).get_params() == m.get_params()
    with pytest.raises(ConfigError, match="depth"):
        DeepMF(depth=-1)
    with pytest.raises(ConfigError, match="flatness"):
        DeepMF(flatness=-0.1)


def test_deepmf_fold_in_and_partial_fit():
    """fold_in solves p_u against Q A^T: a new user with an existing user's ratings gets about
    that user's predictions; partial_fit trains on from the fitted parameters."""
    from lfopt.estimators.deep import DeepMF

    data = synthetic(n_users=300, n_items=200, nnz=20000, seed=0)
    train, test = lfopt.random_split(data, 0.1, seed=0)
    model = DeepMF(rank=5, depth=2, epochs=10, lam=0.02, lam0=0.0, seed=0).fit(train)
    A = model.end_to_end()
    assert np.abs(A - np.eye(5)).max() > 0.05  # the layers moved: Q alone would not do
    u = 0
    mask = train.users == u
    ids, vals = train.item_ids[train.items[mask]], train.values[mask]
    model.fold_in(10 ** 6, ids, vals)
    new = model.predict([10 ** 6] * len(ids), ids)
    old = model.predict([train.user_ids[u]] * len(ids), ids)
    assert np.abs(new - old).max() < 0.15
    before = model.evaluate(test)["rmse"]
    model.partial_fit(test, epochs=2)
    assert model.evaluate(test)["rmse"] < before


def test_cli_depth_trains_deepmf_and_saves_it(tmp_path, capsys):
    import json

    from lfopt.cli import main

    out, model = tmp_path / "r.json", tmp_path / "deep.npz"
    code = main(["train", "--n-users", "300", "--n-items", "200", "--nnz", "15000", "--depth", "2", "--flatness",
                 "0.001", "--epochs", "6", "--quiet", "--output", str(out), "--save", str(model)])
    assert code == 0
    assert "DeepMF depth 2" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["options"]["depth"] == 2 and res["options"]["flatness"] == 0.001
    assert res["test_rmse"] < 0.9  # the ratings' spread is about 1.2 (the mean alone scores that)
    back = lfopt.load(model)  # lfopt.load knows DeepMF without importing its module first
    assert type(back).__name__ == "DeepMF" and back.layers().shape == (2, 5, 5)
    assert main(["train", "--flatness", "0.1", "--quiet"]) != 0  # the penalty needs --depth
    assert "--depth" in capsys.readouterr().err
