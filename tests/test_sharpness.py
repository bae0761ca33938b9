"""Sharpness-aware minimization as one wrapper around any optimizer with a gradient step."""

import numpy as np
import pytest

import lfopt
from lfopt.data.synthetic import synthetic
from lfopt.models.lf import LFObjective
from lfopt.optim.base import make_optimizer
from lfopt.optim.second_order import HessianFree
from lfopt.optim.sharpness import SharpnessAware, SharpnessAwareView

# each optimizer with options that make a few epochs on small data move far enough to compare
BASES = {
    "sgd": {"lr": 0.02},
    "sgd-minibatch": {"lr": 0.02, "batch_size": 64, "fused": False},
    "adam": {"lr": 0.03, "batch_size": 500},
    "adam-full": {"lr": 0.1, "batch_size": 0},
    "adago": {"lr": 0.05, "batch_size": 500, "damping": 5.0},
    "slf": {},
}


@pytest.fixture(scope="module")
def data():
    return synthetic(n_users=120, n_items=90, nnz=3000, seed=2)


def _run(data, name, epochs=3, **options):
    obj = LFObjective(data, rank=4, lam=0.05)
    y = obj.init_params(1.0 if "slf" in name else 0.1, seed=0)
    opt = make_optimizer(name.split("-")[0], seed=1, **options)
    opt.check(obj)
    losses = [obj.loss(y)]
    for epoch in range(1, epochs + 1):
        opt.epoch(obj, y, epoch)
        losses.append(obj.loss(y))
    return y, losses


@pytest.mark.parametrize("name", list(BASES))
def test_rho_zero_is_the_base_optimizer_bit_for_bit(data, name):
    y0, _ = _run(data, name, **BASES[name])
    y1, _ = _run(data, name, rho=0.0, **BASES[name])
    np.testing.assert_array_equal(y0, y1)


@pytest.mark.parametrize("name", list(BASES))
def test_positive_rho_changes_the_iterates_and_still_decreases_the_loss(data, name):
    y0, _ = _run(data, name, **BASES[name])
    y1, losses = _run(data, name, rho=0.05, **BASES[name])
    assert np.abs(y1 - y0).max() > 1e-4
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], losses


def test_sslf_is_slf_with_rho(data):
    y0, _ = _run(data, "sslf", rho=0.3)
    y1, _ = _run(data, "slf", rho=0.3)
    np.testing.assert_array_equal(y0, y1)
    opt = make_optimizer("sslf")
    assert opt.name == "sslf" and opt.rho == 0.05
    assert set(opt.options()) == set(HessianFree().options()) | {"rho"}


def test_the_view_takes_every_oracle_at_the_perturbed_point(data):
    """loss_grad at y returns L and its gradient at z = y + rho g/|g|; later oracles use the same z."""
    obj = LFObjective(data, rank=4, lam=0.05)
    y = obj.init_params(1.0, seed=0)
    rho = 0.2
    g0 = np.zeros_like(y)
    obj.loss_grad(y, g0)
    z = y + np.float32(rho / np.sqrt(np.dot(g0.astype(np.float64), g0))) * g0
    gz = np.zeros_like(y)
    lz = obj.loss_grad(z, gz)
    view = SharpnessAwareView(obj, rho)
    g = np.zeros_like(y)
    assert view.loss_grad(y, g) == pytest.approx(lz, rel=1e-6)
    np.testing.assert_allclose(g, gz, rtol=1e-5, atol=1e-6)
    v = np.random.default_rng(0).standard_normal(y.size).astype(np.float32)
    np.testing.assert_allclose(view.gvp(y, v, np.empty_like(y)), obj.gvp(z, v, np.empty_like(y)), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(view.step_polynomial(y, v), obj.step_polynomial(z, v), rtol=1e-5)
    assert view.loss(y) == pytest.approx(obj.loss(z), rel=1e-6)
    # the fused kernels cannot be perturbed: hidden
    assert not view.has("sgd_epoch") and not view.has("als_sweep") and view.has("minibatch")
    assert SharpnessAwareView(obj, 0.0).has("sgd_epoch")


def test_minibatch_view_perturbs_along_the_batch_gradient(data):
    obj = LFObjective(data, rank=4, lam=0.05)
    y = obj.init_params(0.5, seed=0)
    batch = np.arange(0, data.nnz, 7)
    g0 = np.zeros_like(y)
    obj.batch_grad(y, batch, g0, scale=1.0)
    z = y + np.float32(0.1 / np.linalg.norm(g0.astype(np.float64))) * g0
    ref_g, ref_d = np.zeros_like(y), np.zeros_like(y)
    obj.batch_grad(z, batch, ref_g, ref_d, scale=1.0)
    g, d = np.zeros_like(y), np.zeros_like(y)
    SharpnessAwareView(obj, 0.1).batch_grad(y, batch, g, d, scale=1.0)
    np.testing.assert_allclose(g, ref_g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d, ref_d, rtol=1e-5, atol=1e-6)


def test_als_cannot_be_sharpness_aware_and_rho_is_checked():
    with pytest.raises(lfopt.ConfigError, match="'als' has no gradient step"):
        make_optimizer("als", rho=0.05)
    with pytest.raises(lfopt.ConfigError, match="rho must be"):
        make_optimizer("adam", rho=-1.0)
    with pytest.raises(lfopt.ConfigError, match="no gradient step"):
        SharpnessAware(make_optimizer("als"), 0.1)


def test_sharpness_aware_sgd_runs_minibatches_not_the_fused_epoch(data, monkeypatch):
    obj = LFObjective(data, rank=4, lam=0.05)
    y = obj.init_params(0.1, seed=0)
    monkeypatch.setattr(obj, "sgd_epoch", lambda *a, **k: pytest.fail("fused epoch used"))
    opt = make_optimizer("sgd", rho=0.05, lr=0.01)
    assert opt.options()["rho"] == 0.05 and opt.name == "sgd"
    info = opt.epoch(obj, y, 1)
    assert info["sgd_mse"] > 0
