"""The LF objective as an Objective of the protocol: layout, capabilities, regularizer objects."""

import doctest

import numpy as np
import pytest

import lfopt
from lfopt.data.synthetic import synthetic
from lfopt.models.base import Objective, ParamLayout
from lfopt.models.lf import LFObjective
from lfopt.optim.base import make_optimizer
from lfopt.regularizers import L2


@pytest.fixture(scope="module")
def data():
    return synthetic(n_users=50, n_items=30, nnz=600, seed=3)


@pytest.mark.parametrize("use_bias", [True, False])
def test_layout_round_trip(data, use_bias):
    obj = LFObjective(data, rank=3, lam=0.05, use_bias=use_bias)
    m, n, f = obj.m, obj.n, obj.f
    nb = m + n if use_bias else 0
    assert obj.layout.names == ("b_u", "b_i", "P", "Q")
    assert obj.layout.shape("b_u") == ((m,) if use_bias else (0,))
    assert obj.layout.shape("P") == (m, f) and obj.layout.shape("Q") == (n, f)
    assert obj.size == obj.layout.size == nb + (m + n) * f
    assert obj.layout.offset("P") == nb and obj.layout.offset("Q") == nb + m * f
    rng = np.random.default_rng(0)
    blocks = {name: rng.standard_normal(obj.layout.shape(name)).astype(np.float32) for name in obj.layout.names}
    y = np.zeros(obj.size, dtype=np.float32)
    for name, view in zip(obj.layout.names, obj.unpack(y)):
        view[...] = blocks[name]  # views write through to y
    np.testing.assert_array_equal(y, np.concatenate([blocks[k].ravel() for k in obj.layout.names]))
    for name, view in zip(obj.layout.names, obj.unpack(y)):
        np.testing.assert_array_equal(view, blocks[name])
    assert ParamLayout.from_meta(obj.layout.to_meta()) == obj.layout
    with pytest.raises(ValueError, match="expected"):
        obj.unpack(y[1:])


def test_capabilities_and_public_attributes(data):
    obj = LFObjective(data, rank=3, lam=0.05)
    assert obj.backend.name == "numba"
    for cap in ("loss", "gradient", "gn_product", "gn_diagonal", "minibatch", "line_polynomial", "row_blocks",
                "sgd_epoch", "als_sweep"):
        assert obj.has(cap)
    assert not obj.has("bpr_epoch")
    assert isinstance(obj.mu, float) and obj.mu == pytest.approx(float(data.values.mean()), rel=1e-6)
    assert (obj.m, obj.n, obj.nnz, obj.f, obj.use_bias) == (50, 30, data.nnz, 3, True)
    y = obj.init_params(0.3, seed=1)
    np.testing.assert_array_equal(y, obj.init_params(0.3, seed=1))
    loss = obj.loss(y)
    pred = obj.predict(y, data.users, data.items)
    sse = float(((data.values.astype(np.float64) - pred) ** 2).sum())
    assert obj.last_sse == pytest.approx(sse, rel=1e-5)
    assert obj.train_metrics(y, loss)["train_rmse"] == pytest.approx(np.sqrt(sse / data.nnz), rel=1e-5)


class _LossOnly(Objective):
    """A model that offers a loss and a gradient, nothing else."""

    name = "loss-only"
    capabilities = frozenset({"loss", "gradient"})
    layout = ParamLayout((("w", (4,)),))


@pytest.mark.parametrize("name, options, missing", [
    ("slf", {}, "gn_product"),
    ("als", {}, "als_sweep"),
    ("sgd", {}, "minibatch"),
    ("adago", {"batch_size": 0}, "gn_diagonal"),
    ("sslf", {}, "gn_product"),
    ("adam", {"rho": 0.05}, "minibatch"),
])
def test_an_optimizer_needing_a_missing_capability_fails_at_check_naming_both(name, options, missing):
    opt = make_optimizer(name, **options)
    with pytest.raises(lfopt.ConfigError, match=rf"optimizer '{name}' needs .*{missing}.*loss-only"):
        opt.check(_LossOnly())
    # old callers that never call check() get the same error from the first epoch
    with pytest.raises(lfopt.ConfigError, match=rf"optimizer '{name}'.*loss-only"):
        make_optimizer(name, **options).epoch(_LossOnly(), np.zeros(4, dtype=np.float32), 1)


def test_full_batch_adam_needs_only_the_gradient():
    make_optimizer("adam", batch_size=0).check(_LossOnly())


# ------------------------------------------------------------------ regularizers
def test_l2_row_weights_and_params():
    reg = L2(0.1, lam_b=0.02, lam0=0.5)
    wu, wi, wbu, wbi = reg.row_weights(np.array([0, 2, 5]), np.array([3, 1]))
    assert all(w.dtype == np.float32 for w in (wu, wi, wbu, wbi))
    np.testing.assert_allclose(wu, [0.5, 0.7, 1.0], rtol=1e-6)
    np.testing.assert_allclose(wi, [0.8, 0.6], rtol=1e-6)
    np.testing.assert_allclose(wbu, [0.5, 0.54, 0.6], rtol=1e-6)
    np.testing.assert_allclose(wbi, [0.56, 0.52], rtol=1e-6)
    vu, vi, vbu, vbi = reg.visit_weights(np.array([0, 2, 5]), np.array([3, 1]))
    np.testing.assert_allclose(vu, [0.0, 0.1 + 0.5 / 2, 0.1 + 0.5 / 5], rtol=1e-6)  # w / n, 0 where never visited
    np.testing.assert_allclose(vbi, [0.02 + 0.5 / 3, 0.52], rtol=1e-6)
    assert np.all(L2(0.1).visit_weights(np.array([1, 7]), np.array([3]))[0] == np.float32(0.1))
    assert reg.get_params() == {"lam": 0.1, "lam_b": 0.02, "lam0": 0.5, "lam0_b": 0.5}
    assert reg.name == "l2"
    assert L2(0.3).lam_b == 0.3 and L2(0.3).lam0 == 0.0
    for bad in (dict(lam=-1.0), dict(lam=float("nan")), dict(lam=0.1, lam_b=-0.1), dict(lam=0.1, lam0="x")):
        with pytest.raises(lfopt.ConfigError):
            L2(**bad)


@pytest.mark.parametrize("name", ["lfopt.regularizers.l2", "lfopt.models.lf", "lfopt.optim.sharpness"])
def test_docstring_examples(name):
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_lam_shortcut_is_the_count_weighted_l2_and_arguments_are_checked(data):
    a = LFObjective(data, rank=3, lam=0.05, lam_b=0.01)
    b = LFObjective(data, rank=3, regularizer=L2(0.05, 0.01))
    c = LFObjective(data, 3, 0.05, 0.01, True)  # the old positional form keeps working
    y = a.init_params(0.5, seed=0)
    assert a.loss(y) == b.loss(y) == c.loss(y)
    cu = data.user_counts()
    np.testing.assert_array_equal(a.row_weights[0], np.float32(0.05) * cu.astype(np.float32))
    with pytest.raises(lfopt.ConfigError, match="not both"):
        LFObjective(data, rank=3, regularizer=L2(0.05), lam=0.1)
    with pytest.raises(lfopt.ConfigError, match="regularizer"):
        LFObjective(data, rank=3)
    with pytest.raises(lfopt.ConfigError, match="rank"):
        LFObjective(data, rank=0, lam=0.1)


def test_a_constant_part_of_the_weights_reaches_loss_gradient_and_curvature(data):
    lam, lam0 = 0.05, 0.7
    obj = LFObjective(data, rank=3, regularizer=L2(lam, lam0=lam0), use_bias=False)
    y = obj.init_params(0.5, seed=0)
    _, _, P, Q = obj.unpack(y)
    cu, ci = data.user_counts(), data.item_counts()
    pen = 0.5 * (((lam * cu + lam0)[:, None] * P.astype(np.float64) ** 2).sum()
                 + ((lam * ci + lam0)[:, None] * Q.astype(np.float64) ** 2).sum())
    plain = LFObjective(data, rank=3, lam=0.0, use_bias=False)
    assert obj.loss(y) == pytest.approx(plain.loss(y) + pen, rel=1e-6)
    g, g0 = np.zeros_like(y), np.zeros_like(y)
    obj.loss_grad(y, g)
    plain.loss_grad(y, g0)
    w = np.concatenate([np.repeat(lam * cu + lam0, 3), np.repeat(lam * ci + lam0, 3)])
    np.testing.assert_allclose(g, g0 + w * y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(obj.reg_diagonal(), w, rtol=1e-6)
    d, d0 = obj.gn_diag(y, np.zeros_like(y)), plain.gn_diag(y, np.zeros_like(y))
    np.testing.assert_allclose(d, d0 + w, rtol=1e-5)


def test_als_guards_a_zero_lambda(data):
    """Rows with fewer entries than factors have singular normal equations at lambda = 0:
    ALS solves them with weight 1e-6 n_u instead."""
    obj = LFObjective(data, rank=5, lam=0.0)
    assert (data.user_counts() < 5).any()
    y = obj.init_params(1.0, seed=0)
    obj.als_sweep(y)
    assert np.all(np.isfinite(y))
    assert obj.loss(y) < 0.5 * obj.loss(obj.init_params(1.0, seed=0))
