"""The over-parameterization study (lfopt.experiments): sensing oracles against torch autodiff and
finite differences, the methods' basic convergence, and the quick study writing its files."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from lfopt.errors import ConfigError
from lfopt.experiments import overparam
from lfopt.experiments import sensing as S


@pytest.fixture(scope="module")
def tiny():
    return S.SensingProblem(n=8, r=2, m=160, seed=3)


def _point(problem, k, symmetric, seed=1, scale=0.5):
    rng = np.random.default_rng(seed)
    size = (1 if symmetric else 2) * problem.n * k
    return scale * rng.standard_normal(size)


def _torch_loss(problem, k, symmetric):
    torch = pytest.importorskip("torch")
    A = torch.tensor(problem.A)
    yobs = torch.tensor(problem.y)
    n = problem.n

    def f(v):
        if symmetric:
            X = v.reshape(n, k)
            M = X @ X.T
        else:
            F, G = v[: n * k].reshape(n, k), v[n * k:].reshape(n, k)
            M = F @ G.T
        r = A @ M.reshape(-1) - yobs
        return 0.5 * (r @ r), r

    return torch, f


@pytest.mark.parametrize("symmetric", [True, False])
def test_gradient_matches_autodiff_and_finite_differences(tiny, symmetric):
    k = 3
    obj = S.SensingObjective(tiny, k, symmetric)
    y = _point(tiny, k, symmetric)
    g = np.empty_like(y)
    loss = obj.loss_grad(y, g)
    assert loss == pytest.approx(obj.loss(y), rel=1e-12)
    torch, f = _torch_loss(tiny, k, symmetric)
    v = torch.tensor(y, requires_grad=True)
    ltorch, _ = f(v)
    ltorch.backward()
    assert loss == pytest.approx(ltorch.detach().item(), rel=1e-10)
    np.testing.assert_allclose(g, v.grad.numpy(), rtol=1e-9, atol=1e-11)
    # central finite differences along random directions
    rng = np.random.default_rng(7)
    for _ in range(3):
        d = rng.standard_normal(y.size)
        h = 1e-6
        fd = (obj.loss(y + h * d) - obj.loss(y - h * d)) / (2 * h)
        assert fd == pytest.approx(float(g @ d), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("symmetric", [True, False])
def test_gauss_newton_product_matches_autodiff(tiny, symmetric):
    """J^T J v against torch's Jacobian of the residuals."""
    k = 3
    obj = S.SensingObjective(tiny, k, symmetric)
    y = _point(tiny, k, symmetric, seed=2)
    v = np.random.default_rng(5).standard_normal(y.size)
    out = np.empty_like(y)
    obj.gvp(y, v, out)
    torch, f = _torch_loss(tiny, k, symmetric)
    J = torch.autograd.functional.jacobian(lambda p: f(p)[1], torch.tensor(y)).numpy()
    np.testing.assert_allclose(obj.jvp(y, v), J @ v, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out, J.T @ (J @ v), rtol=1e-9, atol=1e-11)
    # the exact row blocks are the diagonal blocks of J^T J
    G = J.T @ J
    blocks = obj.row_blocks(y)
    n = tiny.n
    for b, B in enumerate(blocks):
        for i in (0, n - 1):
            lo = b * n * k + i * k
            np.testing.assert_allclose(B[i], G[lo:lo + k, lo:lo + k], rtol=1e-9, atol=1e-11)
    # the line polynomial is f(y + t d) exactly
    coef = obj.step_polynomial(y, v)
    for t in (-0.7, 0.3, 1.9):
        assert np.polyval(coef[::-1], t) == pytest.approx(obj.loss(y + t * v), rel=1e-10)


def test_block_preconditioner_inverts_the_blocks(tiny):
    obj = S.SensingObjective(tiny, 2, False)
    y = _point(tiny, 2, False, seed=4)
    apply = obj.block_preconditioner(y, shift=0.3)
    r = np.random.default_rng(0).standard_normal(y.size)
    out = np.empty_like(y)
    apply(r, out)
    for B, rv, ov in zip(obj.row_blocks(y), obj.unpack(r), obj.unpack(out)):
        B = B + 0.3 * np.eye(2)
        np.testing.assert_allclose(np.einsum("nij,nj->ni", B, ov), rv, rtol=1e-6, atol=1e-9)


def test_rebalance_keeps_the_product_and_equalizes_F(tiny):
    obj = S.SensingObjective(tiny, 4, False)
    y = _point(tiny, 4, False, seed=6)
    M = obj.matrix(y).copy()
    S.rebalance(obj, y, 2.0)
    F, _ = obj.unpack(y)
    np.testing.assert_allclose(obj.matrix(y), M, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.linalg.svd(F, compute_uv=False), math.sqrt(2.0), rtol=1e-9)


def test_exact_rank_gd_converges_linearly_and_preconditioned_methods_reach_tol():
    prob = S.SensingProblem(n=12, r=2, m=240, seed=1)
    for symmetric in (True, False):
        gd = S.run_method(prob, "gd", 2, 1e-2, symmetric, max_iter=2000)
        assert gd["iters_to_tol"] is not None and not gd["diverged"]
        rates = S.fit_rates(gd["errors"], window=0.5)
        assert rates["phase"] == "linear" and rates["r2_linear"] > 0.98 and rates["linear"] > 0.01
        for method in ("scaledgd", "precgd", "slf"):
            res = S.run_method(prob, method, 2, 1e-2, symmetric, max_iter=600)
            assert res["iters_to_tol"] is not None, (method, symmetric, res["final_error"])
            assert res["final_error"] <= 1e-6
    # over-parameterized: SLF and the one-step modification still reach 1e-6, GD does not in the same budget
    slf = S.run_method(prob, "slf", 8, 1e-2, False, max_iter=100)
    one = S.run_method(prob, "onestep", 8, 1e-2, False, max_iter=3000)
    gd = S.run_method(prob, "gd", 8, 1e-2, False, max_iter=one["iters_to_tol"] or 3000)
    assert slf["iters_to_tol"] is not None and slf["iters_to_tol"] < 40
    assert one["iters_to_tol"] is not None and one["switch_iter"] is not None
    assert gd["iters_to_tol"] is None and gd["final_error"] > 1e-5


def test_lockstep_runs_equal_single_runs():
    prob = S.SensingProblem(n=10, r=1, m=100, seed=2)
    both = S.run_methods(prob, "precgd", 4, [1e-1, 1e-3], False, max_iter=50)
    one = S.run_method(prob, "precgd", 4, 1e-3, False, max_iter=50)
    np.testing.assert_allclose(both[1]["errors"], one["errors"], rtol=1e-12)


def test_fit_rates_tells_linear_from_sublinear():
    t = np.arange(2000)
    lin = S.fit_rates(10.0 ** (-0.01 * t))
    assert lin["phase"] == "linear" and lin["linear"] == pytest.approx(0.01, rel=1e-6)
    sub = S.fit_rates(1.0 / (5.0 + 0.3 * t))
    assert sub["phase"] == "sublinear" and sub["inv_slope"] == pytest.approx(0.3, rel=1e-6)
    want = int(math.ceil(1999 + (1e4 - (5.0 + 0.3 * 1999)) / 0.3))  # 1/error = 5 + 0.3 t reaches 1e4
    assert S.extrapolate(1.0 / (5.0 + 0.3 * t), 1e-4) == (want, "1/T")


def test_bad_arguments_are_config_errors(tiny):
    with pytest.raises(ConfigError, match="method"):
        S.run_method(tiny, "newton", 2, 0.1, False)
    with pytest.raises(ConfigError, match="onestep"):
        S.run_method(tiny, "onestep", 2, 0.1, True)
    with pytest.raises(ConfigError, match="alpha"):
        S.run_method(tiny, "gd", 2, -1.0, False)
    with pytest.raises(ConfigError, match="k"):
        S.SensingObjective(tiny, 0, False)
    with pytest.raises(ConfigError, match="r must be <= n"):
        S.SensingProblem(n=3, r=4)


def _args(**kw):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    overparam.add_parser(sub)
    argv = ["overparam", "--outdir", str(kw.pop("outdir")), "--quiet"]
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        argv += [flag] if v is True else [flag, str(v)]
    return p.parse_args(argv)


def test_quick_study_writes_its_files(tmp_path):
    out = tmp_path / "op"
    assert overparam.run(_args(outdir=out, quick=True)) == 0
    for name in overparam.OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "rates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["quick"] is True
    runs = res["sensing_runs"]
    # every (parameterization, k, method, alpha) of the grid is there
    assert len([r for r in runs if r["in_grid"]]) == 3 * 3 * (4 + 5)
    slf = [r for r in runs if r["method"] == "slf"]
    assert all(r["iters_to_tol"] is not None for r in slf)
    assert res["claims"]["target_slf_grows_lt_2x"] is True
    comp = res["completion"]
    assert [s["rank"] for s in comp["speedup"]] == [3, 12]
    assert all(len(r["history"]) >= 2 for r in comp["runs"])
    table = (out / "table.md").read_text()
    assert "Matrix sensing" in table and "Matrix completion" in table
    # no silent replacement of a finished study
    with pytest.raises(ConfigError, match="--overwrite"):
        overparam.run(_args(outdir=out, quick=True))
    with pytest.raises(ConfigError, match="is a file"):
        overparam.run(_args(outdir=out / "table.md", quick=True))


def test_config_errors_name_the_flag(tmp_path):
    with pytest.raises(ConfigError, match="--gd-budget"):
        overparam.run(_args(outdir=tmp_path, quick=True, gd_budget=0))
    with pytest.raises(ConfigError, match="--seconds"):
        overparam.run(_args(outdir=tmp_path, quick=True, seconds=-1))


def test_cli_runs_the_quick_study(tmp_path):
    from lfopt.cli import main

    out = tmp_path / "op"
    assert main(["experiment", "overparam", "--quick", "--outdir", str(out), "-q"]) == 0
    assert (out / "results.json").stat().st_size > 0 and (out / "table.md").read_text().startswith("#")
    # nothing the user owns is replaced without --overwrite
    assert main(["experiment", "overparam", "--quick", "--outdir", str(out), "-q"]) != 0
