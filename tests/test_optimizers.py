"""Optimizers on small real and synthetic problems with known answers."""

from pathlib import Path

import numpy as np
import pytest

import lfopt
from lfopt.data.synthetic import synthetic
from lfopt.models.lf import LFObjective
from lfopt.optim.base import make_optimizer
from lfopt.optim.first_order import SGD, AdaGO, Adam
from lfopt.optim.second_order import conjugate_gradient

ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k" / "u.data"
ALL = ["sgd", "adam", "als", "adago", "slf", "sslf"]


def test_conjugate_gradient_solves_spd_system():
    rng = np.random.default_rng(0)
    B = rng.standard_normal((50, 50))
    A = (B @ B.T + 5 * np.eye(50)).astype(np.float32)
    b = rng.standard_normal(50).astype(np.float32)
    res = conjugate_gradient(lambda v, out: np.matmul(A, v, out=out), b, max_iter=200, tol=1e-5)
    x = np.linalg.solve(A.astype(np.float64), b)
    assert res.relative_residual <= 1e-5
    assert np.abs(res.x - x).max() < 1e-3 * np.abs(x).max()
    assert res.curvature == pytest.approx(float(res.x @ A @ res.x), rel=1e-3)


def test_jacobi_preconditioning_needs_fewer_iterations_on_badly_scaled_system():
    rng = np.random.default_rng(1)
    scales = np.logspace(0, 4, 200)
    B = rng.standard_normal((200, 200)) * 0.1
    A = (np.diag(scales) + B @ B.T).astype(np.float32)
    b = rng.standard_normal(200).astype(np.float32)
    mv = lambda v, out: np.matmul(A, v, out=out)  # noqa: E731
    plain = conjugate_gradient(mv, b, max_iter=500, tol=1e-4)
    pre = conjugate_gradient(mv, b, max_iter=500, tol=1e-4, precond=np.diag(A).copy())
    assert pre.relative_residual <= 1e-4
    assert pre.iterations < plain.iterations


@pytest.fixture(scope="module")
def ml100k_objective():
    if not ML100K.exists():
        pytest.skip("ML-100K not available")
    data = lfopt.load_data(ML100K)
    return LFObjective(data, rank=8, lam=0.05)


@pytest.mark.parametrize("name", ALL)
def test_each_optimizer_decreases_the_objective_on_real_data(name, ml100k_objective):
    obj = ml100k_objective
    y = obj.init_params(1.0 if name in ("als", "slf", "sslf", "adago") else 0.1, seed=0)
    opt = make_optimizer(name, seed=0)
    losses = [obj.loss(y)]
    for epoch in range(1, 4):
        opt.epoch(obj, y, epoch)
        losses.append(obj.loss(y))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], losses
    if name in ("als", "slf"):  # monotone by construction (exact minimization / rejected steps)
        assert all(b <= a * (1 + 1e-6) for a, b in zip(losses, losses[1:])), losses


def test_slf_fits_a_noiseless_low_rank_matrix():
    data, info = synthetic(n_users=150, n_items=100, nnz=6000, rank=3, noise_std=0.0, bias_std=0.0,
                           seed=0, return_info=True)
    model = lfopt.LatentFactorModel(rank=3, optimizer="slf", epochs=60, lam=1e-6, lam0=0.0, lam0_b=0.0,
                                    patience=None, validation=None, cg_iters=50, cg_tol=1e-6).fit(data)
    train_rmse = model.history_[-1]["train_rmse"]
    assert train_rmse < 1e-2 * np.std(data.values), train_rmse


def test_sslf_with_rho_zero_reproduces_slf_exactly():
    data = synthetic(n_users=120, n_items=90, nnz=3000, seed=2)
    runs = []
    for name, extra in (("slf", {}), ("sslf", {"rho": 0.0})):
        obj = LFObjective(data, rank=4, lam=0.05)
        y = obj.init_params(1.0, seed=0)
        opt = make_optimizer(name, **extra)
        for epoch in range(1, 6):
            opt.epoch(obj, y, epoch)
        runs.append(y)
    np.testing.assert_array_equal(runs[0], runs[1])


def test_sslf_with_positive_rho_differs_from_slf():
    data = synthetic(n_users=120, n_items=90, nnz=3000, seed=2)
    runs = []
    for rho in (0.0, 0.5):
        obj = LFObjective(data, rank=4, lam=0.05)
        y = obj.init_params(1.0, seed=0)
        opt = make_optimizer("sslf", rho=rho)
        for epoch in range(1, 4):
            opt.epoch(obj, y, epoch)
        runs.append(y)
    assert np.abs(runs[0] - runs[1]).max() > 1e-4


class _AdaGOWithSource(AdaGO):
    def __init__(self, source, **kw):
        super().__init__(**kw)
        self._src = source

    def second_moment(self, g, d):
        return self._src(g), 0.0


@pytest.mark.parametrize("batch_size", [None, 500])
def test_adago_with_gradient_as_its_diagonal_is_adam(batch_size):
    """AdaGO is Adam with another preconditioner: feeding it the gradient gives Adam's iterates."""
    data = synthetic(n_users=100, n_items=80, nnz=2500, seed=4)
    ys = []
    for opt in (Adam(lr=0.01, batch_size=batch_size, seed=1),
                _AdaGOWithSource(lambda g: g, lr=0.01, batch_size=batch_size, seed=1)):
        obj = LFObjective(data, rank=4, lam=0.05)
        y = obj.init_params(0.1, seed=0)
        for epoch in range(1, 4):
            opt.epoch(obj, y, epoch)
        ys.append(y)
    np.testing.assert_allclose(ys[0], ys[1], rtol=1e-6, atol=1e-7)


def test_adago_with_unit_diagonal_is_momentum_sgd():
    """With d = 1 the second moment is 1 after bias correction: steps are lr * m_hat / (1 + eps)."""
    data = synthetic(n_users=100, n_items=80, nnz=2500, seed=4)
    obj = LFObjective(data, rank=4, lam=0.05)
    y = obj.init_params(0.1, seed=0)
    ref = y.astype(np.float64).copy()
    opt = _AdaGOWithSource(lambda g: np.ones_like(g), lr=0.001, batch_size=None, eps=1e-8)
    m = np.zeros_like(ref)
    g = np.zeros_like(y)
    for t in range(1, 4):
        obj.loss_grad(ref.astype(np.float32), g)
        m = 0.9 * m + 0.1 * g
        ref -= 0.001 * (m / (1 - 0.9 ** t)) / (1.0 + 1e-8)
        opt.epoch(obj, y, t)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-6)


def test_unknown_optimizer_and_bad_options_are_clear_errors():
    with pytest.raises(lfopt.ConfigError, match="unknown optimizer 'newton'"):
        make_optimizer("newton")
    with pytest.raises(lfopt.ConfigError, match="does not take option"):
        make_optimizer("sgd", momentum=0.1)
    with pytest.raises(lfopt.ConfigError, match="'als' has no gradient step"):
        make_optimizer("als", rho=0.1)
    with pytest.raises(lfopt.ConfigError, match="lr must be"):
        make_optimizer("adam", lr=-1.0)
    with pytest.raises(lfopt.ConfigError, match="cg_iters"):
        make_optimizer("slf", cg_iters=0)


def test_divergence_is_detected_and_last_good_parameters_kept():
    data = synthetic(n_users=100, n_items=80, nnz=2500, seed=4)
    model = lfopt.LatentFactorModel(rank=4, optimizer="sgd", epochs=30, lr=5.0, lam=0.0)
    with pytest.warns(RuntimeWarning, match="diverged"):
        model.fit(data)
    assert model.train_result_.stopped == "diverged"
    assert np.all(np.isfinite(model.params_))
    assert len(model.history_) < 30


def test_early_stopping_restores_the_best_epoch():
    data = synthetic(n_users=200, n_items=150, nnz=6000, noise_std=0.8, seed=5)
    train, valid = lfopt.random_split(data, 0.2, seed=0)
    model = lfopt.LatentFactorModel(rank=40, optimizer="sgd", lr=0.05, epochs=200, lam=0.0, patience=3).fit(train, valid)
    res = model.train_result_
    assert res.stopped == "early_stop"
    assert res.best_epoch < len(model.history_)
    best = min(r["valid_rmse"] for r in model.history_)
    assert res.best_valid_rmse == pytest.approx(best)
    assert model.evaluate(valid)["rmse"] == pytest.approx(best, rel=1e-6)


class _SGDInFusedOrder(SGD):
    """Mini-batch SGD fed the order in which the fused epoch (no reshuffle) visits the entries."""

    def visit_order(self, obj, epoch):
        return obj.kernels.sgd_order()


@pytest.mark.parametrize("use_bias", [True, False])
def test_minibatch_sgd_of_batch_one_in_the_fused_order_is_the_fused_epoch(use_bias):
    """The fused DSGD epoch is a registered fast path: the composed path (batch gradient of one
    entry, then y -= lr g) visiting the same entries in the same order gives the same iterates."""
    data = synthetic(n_users=40, n_items=30, nnz=400, seed=6)
    ys = []
    for opt in (make_optimizer("sgd", lr=0.02), _SGDInFusedOrder(lr=0.02, batch_size=1, fused=False)):
        obj = LFObjective(data, rank=3, lam=0.05, lam_b=0.02, use_bias=use_bias)
        y = obj.init_params(0.5, seed=0)
        for epoch in range(1, 4):
            info = opt.epoch(obj, y, epoch)
        ys.append(y)
    assert info["sgd_mse"] > 0
    np.testing.assert_allclose(ys[1], ys[0], rtol=1e-5, atol=1e-6)
    assert np.abs(ys[0] - LFObjective(data, rank=3, lam=0.05, use_bias=use_bias).init_params(0.5, 0)).max() > 1e-2


def test_minibatch_sgd_without_the_fused_kernel_tracks_the_fused_epoch():
    """Batches of 16 in a random order make the same progress per epoch as per-entry DSGD."""
    data = synthetic(n_users=100, n_items=80, nnz=2500, seed=4)
    runs = []
    for extra in ({}, {"batch_size": 16, "fused": False}):
        obj = LFObjective(data, rank=4, lam=0.05)
        y = obj.init_params(0.1, seed=0)
        opt = make_optimizer("sgd", lr=0.02, **extra)
        losses = [obj.loss(y)]
        for epoch in range(1, 4):
            opt.epoch(obj, y, epoch)
            losses.append(obj.loss(y))
        assert all(b < a for a, b in zip(losses, losses[1:])), losses
        runs.append(losses)
    assert runs[1][-1] < 0.9 * runs[1][0]
    assert runs[1][-1] == pytest.approx(runs[0][-1], rel=0.02)


def test_time_budget_stops_before_an_epoch_would_overrun():
    import time

    from lfopt.train.trainer import Trainer

    class Slow(SGD):
        def epoch(self, obj, y, epoch):
            time.sleep(0.1)
            return super().epoch(obj, y, epoch)

    obj = LFObjective(synthetic(n_users=50, n_items=40, nnz=600, seed=1), rank=2, lam=0.05)
    y = obj.init_params(0.1, seed=0)
    res = Trainer(epochs=50, patience=None, verbose=False, time_budget=0.35).run(obj, Slow(lr=0.01), y)
    assert res.stopped == "time_budget"
    assert 1 <= len(res.history) <= 4
    with pytest.raises(lfopt.ConfigError, match="time_budget"):
        Trainer(time_budget=0)


def test_slf_damping_stays_bounded_when_every_step_is_rejected(monkeypatch):
    """At a minimum (in float32) every step is rejected and the damping grows; it must stay finite."""
    import lfopt
    import lfopt.optim.second_order as so

    monkeypatch.setattr(so, "_quartic_minimizer", lambda coef, t_max: (1.0, float("inf")))
    data = lfopt.synthetic(n_users=60, n_items=40, nnz=900, seed=0)
    model = lfopt.LatentFactorModel(rank=3, optimizer="slf", epochs=12, validation=0, boost=10.0,
                                    max_retries=8).fit(data)
    damping = [row["damping"] for row in model.history_]
    assert all(np.isfinite(damping)) and max(damping) <= so.MAX_DAMPING
    assert np.isfinite(model.params_).all()
