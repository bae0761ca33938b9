"""The flatness-regularization study (lfopt.experiments.flatness): the exact trace of the Gauss-Newton
matrix against autodiff and the explicit Hessian trace, the Hutchinson estimate, the nuclear-norm
solver's optimality conditions, and the quick study end to end through its CLI entry points."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from lfopt.errors import ConfigError  # noqa: E402
from lfopt.experiments import flatness as F  # noqa: E402


def _tiny_task(kind: str, seed: int = 0, n1: int = 4, n2: int = 5, Mstar=None) -> F.Task:
    rng = np.random.default_rng(seed)
    if Mstar is None:
        Mstar = F.make_target(n1, n2, 1, rng)
    if kind == "sensing":
        return F.Task("sensing", Mstar, A=rng.standard_normal((13, n1 * n2)) / math.sqrt(n1 * n2))
    rows, cols = F.sample_cells(n1, n2, 0.6, rng)
    return F.Task("completion", Mstar, rows=rows, cols=cols)


def _factors(depth: int, seed: int = 1, n1: int = 4, n2: int = 5, f: int = 3):
    return F.init_factors(n1, n2, f, depth, 1.0, np.random.default_rng(seed))


@pytest.mark.parametrize("kind", F.TASKS)
@pytest.mark.parametrize("depth", [0, 1, 2])
def test_trace_G_equals_autodiff_and_hessian_trace_at_zero_residual(kind, depth):
    fs = _factors(depth)
    # the observations of the current end-to-end matrix: a zero-residual point
    task = _tiny_task(kind, Mstar=F.end_to_end(fs))
    ft = [torch.tensor(x) for x in fs]
    assert float(F.data_loss(task, ft)) < 1e-28
    exact = float(F.trace_G(task, ft))
    assert exact == pytest.approx(F.trace_G_autodiff(task, fs), rel=1e-12)
    # tr(Hessian of L = 1/(2N) sum res^2) = tr(G) / N at zero residual
    assert F.hessian_trace_exact(task, fs) * task.N == pytest.approx(exact, rel=1e-10)


@pytest.mark.parametrize("kind", F.TASKS)
@pytest.mark.parametrize("depth", [0, 2])
def test_trace_G_equals_hessian_trace_away_from_zero_residual(kind, depth):
    """rhat is affine in each factor, so diag(Hessian of rhat) = 0 and tr(Hessian L) = tr(G)/N everywhere."""
    fs = _factors(depth, seed=5)
    task = _tiny_task(kind, seed=2)
    assert float(F.data_loss(task, [torch.tensor(x) for x in fs])) > 1e-2  # far from interpolation
    exact = float(F.trace_G(task, [torch.tensor(x) for x in fs]))
    assert F.hessian_trace_exact(task, fs) * task.N == pytest.approx(exact, rel=1e-10)


def test_trace_G_depth0_completion_is_sum_of_row_norms():
    fs = _factors(0, seed=3)
    task = _tiny_task("completion", seed=4)
    P, Q = fs[0], fs[1].T
    expected = sum(P[u] @ P[u] + Q[i] @ Q[i] for u, i in zip(task.rows, task.cols))
    assert float(F.trace_G(task, [torch.tensor(x) for x in fs])) == pytest.approx(expected, rel=1e-13)


@pytest.mark.parametrize("kind", F.TASKS)
def test_hutchinson_estimates_the_hessian_trace(kind):
    fs = _factors(1, seed=6)
    task = _tiny_task(kind, seed=7)
    exact = float(F.trace_G(task, [torch.tensor(x) for x in fs])) / task.N
    est, se = F.hutchinson(task, fs, 300, np.random.default_rng(0))
    assert 0 < se < 0.2 * exact
    assert abs(est - exact) < 4 * se


@pytest.mark.parametrize("kind", F.TASKS)
def test_nuclear_prox_gradient_reaches_kkt(kind):
    task = _tiny_task(kind, seed=8, n1=6, n2=7)
    lam = 0.05 * float(np.linalg.norm(task.adjoint_np(task.y), 2))
    M, it = F.prox_grad_nuclear(task, lam, iters=20000, tol=1e-14)
    k = F.kkt_residual(task, M, lam)
    assert k["rank"] >= 1
    assert k["UGV_minus_I"] < 1e-6 and k["UtW"] < 1e-6 and k["WV"] < 1e-6
    assert k["W_spectral"] <= 1 + 1e-6
    # and a non-optimal point violates the same conditions
    bad = F.kkt_residual(task, 1.1 * M, lam)
    assert bad["UGV_minus_I"] > 1e-3


def test_nuclear_solution_recovers_low_rank_sensing():
    """With many Gaussian measurements min ||M||_* s.t. A(M) = y is M* itself."""
    cfg = F.StudyConfig(n1=8, n2=9, r=1, m=60, nuc_path=9, nuc_iters=2000)
    task = F.make_task("sensing", cfg)
    nuc = F.nuclear_solution(task, cfg)
    assert nuc["rel_residual"] < 1e-5
    assert nuc["test_err"] < 1e-4
    assert nuc["nuclear_norm"] <= task.info()["nuclear_norm_Mstar"] * (1 + 1e-5)


def test_config_errors_name_the_parameter():
    with pytest.raises(ConfigError, match="frac"):
        F.StudyConfig(frac=0.0)
    with pytest.raises(ConfigError, match="tasks"):
        F.StudyConfig(tasks=("ranking",))
    with pytest.raises(ConfigError, match="method"):
        F.train(_tiny_task("sensing"), 0, "adamw", F.StudyConfig(**F.QUICK))


def _finite(obj) -> bool:
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_finite(v) for v in obj)
    return True


def test_quick_study_end_to_end(tmp_path):
    ap = argparse.ArgumentParser()
    F.add_parser(ap.add_subparsers(dest="cmd"))
    out = tmp_path / "flat"
    args = ap.parse_args(["flatness", "--outdir", str(out), "--quick", "--quiet", "--seed", "1"])
    assert F.run(args) == 0
    res = json.loads((out / "results.json").read_text())
    table = (out / "table.md").read_text()
    for kind in F.TASKS:
        assert (out / f"{kind}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"## {kind}" in table
    assert "Verdict" in table and "Issue target" in table
    assert _finite(res["verdicts"]) and res["seconds"] > 0
    for kind, part in res["tasks"].items():
        assert _finite(part["nuclear"]) and part["nuclear"]["nuclear_norm"] > 0
        runs = {(r["depth"], r["run"]): r for r in part["runs"]}
        assert {n for _, n in runs} == set(F.RUNS)
        for r in runs.values():
            assert _finite(r)
            # the Hutchinson estimate agrees with the exact trace
            assert abs(r["hutch"] - r["trace"]) < 5 * r["hutch_se"] + 1e-9
        for depth in F.QUICK["depths"]:
            # the penalty lowers the trace (and the nuclear norm) against plain training
            assert runs[(depth, "flat")]["trace"] < 0.7 * runs[(depth, "plain")]["trace"]
            assert runs[(depth, "flat")]["nuclear_norm"] < runs[(depth, "plain")]["nuclear_norm"]
        hist = part["curves"][0]["history"]
        assert hist[0]["iter"] == 0 and hist[-1]["iter"] == F.QUICK["iters"]
    # existing outputs are not replaced unasked (checked before any work)
    with pytest.raises(ConfigError, match="exists"):
        F.run(ap.parse_args(["flatness", "--outdir", str(out), "--quick", "--quiet"]))
