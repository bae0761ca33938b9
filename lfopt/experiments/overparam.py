"""The over-parameterization study (METHODS.md section 5; issue 10 item 3).

Two parts, one command (``lfopt experiment overparam --outdir D [--quick]``):

1. **Matrix sensing** (:mod:`lfopt.experiments.sensing`): Gaussian measurements of a rank-r PSD
   target, model rank k in {r, 2r, 4r}, init scale alpha in {1e-1, 1e-2, 1e-3}, symmetric X X^T and
   asymmetric F G^T; GD, the one-step modification (asymmetric), ScaledGD(lambda), PrecGD and SLF.
   Measured: iterations to relative error 1e-6 (or the error after the budget), the fitted rate of
   the final phase (log10 decrease per iteration, and the power of a t^p fit), and two claims of
   Xiong, Ding, Du: symmetric over-parameterized GD is sublinear (error ~ 1/T, i.e. loss ~ 1/T^2);
   asymmetric GD is linear at a rate ~ alpha^2 (fitted on extra, larger alphas whose final phase
   fits in the budget).
2. **Matrix completion of real data**: the LF model (biases + P Q^T, count-weighted L2) on ML-1M,
   random 90/10 split (seed 42), rank 10 vs 100, GD (full-batch steepest descent with the exact
   quartic line search) vs lfopt's SLF; training RMSE against iterations and seconds, and the speed-up
   of SLF over GD at each rank (time to reach GD's final objective).

Outputs in ``--outdir``: ``results.json``, ``table.md``, ``sensing_asymmetric.png``,
``sensing_symmetric.png``, ``rates.png``, ``completion.png``; all written atomically.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..results import check_outputs, write_atomic
from . import sensing as S
from . import run_cli, study_parser, write_study

#: ML-1M's ratings file, found beside the repository (``<repo>/../shared/data``) unless
#: ``$LFOPT_ML1M`` names it; the completion part is skipped (and says so) when it is absent
DEFAULT_ML1M = Path(os.environ.get("LFOPT_ML1M", Path(__file__).resolve().parents[3] / "shared" / "data" /
                                   "ml-1m" / "ratings.dat"))


@dataclass
class StudyConfig:
    """Sizes and budgets of the study (the defaults run in about 3 minutes on 2 cores)."""

    n: int = 40
    r: int = 2
    m: int | None = None  # default 10 n r
    cond: float = 2.0
    seed: int = 0
    alphas: tuple = (1e-1, 1e-2, 1e-3)
    k_factors: tuple = (1, 2, 4)
    #: extra init scales of asymmetric GD at k = 4r, large enough that its linear final phase is
    #: reached within the budget: the rate-vs-alpha fit uses them with alpha = 0.1
    rate_alphas: tuple = (0.4, 0.2)
    tol: float = 1e-6
    gd_budget: int = 6000  # asymmetric GD and the one-step modification
    sym_gd_budget: int = 3000  # symmetric GD (sublinear when over-parameterized: never reaches 1e-6)
    pre_budget: int = 2500  # ScaledGD(lambda), PrecGD (asymmetric)
    sym_pre_budget: int = 1000  # the same, symmetric (ScaledGD(lambda) is sublinear there)
    slf_budget: int = 100
    lam_rel: float = 0.01  # ScaledGD(lambda): lambda = lam_rel * s1
    precgd_c: float = 1.0  # PrecGD: lambda_t = c ||residual||
    # completion
    completion: bool = True
    data: str | None = None  # ratings file; None: DEFAULT_ML1M, or synthetic in quick mode
    ranks: tuple = (10, 100)
    completion_seconds: float = 15.0  # training time budget of each (method, rank) run
    completion_max_iter: int = 2000
    lam: float = 0.05
    init_scale: float = 0.1
    quick: bool = False

    def __post_init__(self):
        if self.m is None:
            self.m = 10 * self.n * self.r


QUICK = dict(n=16, r=2, gd_budget=400, sym_gd_budget=300, pre_budget=300, sym_pre_budget=300, slf_budget=40,
             rate_alphas=(0.4,),
             ranks=(3, 12), completion_seconds=1.0, completion_max_iter=60, quick=True)


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ sensing part
def _budget(cfg: StudyConfig, method: str, symmetric: bool) -> int:
    if method in ("gd", "onestep"):
        return cfg.sym_gd_budget if symmetric else cfg.gd_budget
    if method in ("scaledgd", "precgd"):
        return cfg.sym_pre_budget if symmetric else cfg.pre_budget
    return cfg.slf_budget


def _summarize(res: dict, tol: float) -> dict:
    """The numbers of a run that go to results.json (the curve subsampled)."""
    e = res["errors"]
    rates = S.fit_rates(e, window=0.25)
    powr = S.fit_rates(e, window=0.5)
    n = len(e)
    idx = np.unique(np.concatenate([[0, n - 1], np.round(np.geomspace(1, max(n - 1, 1), 200)).astype(int)]))
    idx = idx[idx < n]
    ext, how = S.extrapolate(e, tol)
    out = {k: v for k, v in res.items() if k not in ("errors", "products", "damping", "cg_iters")}
    out.update({
        "products_total": int(res["products"][-1]),
        "rate_log10_per_iter": rates["linear"], "rate_r2": rates["r2_linear"],
        "final_phase": powr["phase"], "linear_phase": powr["phase"] == "linear",
        "power": powr["power"], "power_r2": powr["r2_power"], "power_window": powr["window"],
        "inv_error_slope": powr["inv_slope"], "inv_error_r2": powr["r2_inv"],
        "rate_window": rates["window"],
        "extrapolated_iters": ext if res["iters_to_tol"] is None else None,
        "extrapolation_model": how if res["iters_to_tol"] is None else None,
        "curve_iter": idx.tolist(), "curve_error": e[idx].tolist(),
    })
    if "cg_iters" in res:
        out["cg_iters_total"] = int(sum(c or 0 for c in res["cg_iters"]))
    return out


def run_sensing(cfg: StudyConfig, quiet: bool = True) -> dict:
    """All sensing runs; returns {"problem", "runs" (summaries), "curves" (full, for plots), "rate_study"}."""
    prob = S.SensingProblem(cfg.n, cfg.r, cfg.m, cfg.cond, cfg.seed)
    runs, curves = [], {}
    t0 = time.perf_counter()
    for symmetric in (True, False):
        methods = S.SYMMETRIC_METHODS if symmetric else S.METHODS
        for kf in cfg.k_factors:
            k = kf * cfg.r
            for method in methods:
                alphas = list(cfg.alphas)
                if method == "gd" and not symmetric and kf == max(cfg.k_factors):
                    alphas = list(cfg.rate_alphas) + alphas
                out = S.run_methods(prob, method, k, alphas, symmetric, seed=cfg.seed,
                                    max_iter=_budget(cfg, method, symmetric), tol=cfg.tol, lam_rel=cfg.lam_rel,
                                    precgd_c=cfg.precgd_c)
                for res in out:
                    summ = _summarize(res, cfg.tol)
                    summ["in_grid"] = res["alpha"] in cfg.alphas
                    runs.append(summ)
                    curves[(symmetric, k, method, res["alpha"])] = res["errors"]
                _say(quiet, f"  sensing {'sym ' if symmetric else 'asym'} k={k:<3d} {method:9s} " + "  ".join(
                    f"a={r['alpha']:g}:" + (str(r['iters_to_tol']) if r['iters_to_tol'] is not None
                                             else '>' + str(r['iterations']))
                    for r in out) + f"   [{time.perf_counter() - t0:.0f} s]")
    return {"problem": prob.info(), "runs": runs, "curves": curves, "rate_study": rate_study(runs, cfg),
            "seconds": time.perf_counter() - t0}


def _find(runs, symmetric, k, method, alpha):
    for r in runs:
        if r["symmetric"] == symmetric and r["k"] == k and r["method"] == method and r["alpha"] == alpha:
            return r
    return None


def rate_study(runs: list, cfg: StudyConfig) -> dict:
    """Fit rate ~ alpha^p for asymmetric GD at k = 4r over the alphas whose final phase is linear."""
    k = max(cfg.k_factors) * cfg.r
    pts = []
    for a in sorted(set(cfg.rate_alphas) | {max(cfg.alphas)}):
        r = _find(runs, False, k, "gd", a)
        if r is None or r["rate_log10_per_iter"] is None:
            continue
        linear = r["iters_to_tol"] is not None or bool(r["linear_phase"])
        pts.append({"alpha": a, "rate": r["rate_log10_per_iter"], "linear_phase": bool(linear)})
    use = [p for p in pts if p["linear_phase"] and p["rate"] > 0]
    slope = None
    if len(use) >= 2:
        x = np.log10([p["alpha"] for p in use])
        y = np.log10([p["rate"] for p in use])
        slope = float(np.polyfit(x, y, 1)[0])
    return {"k": k, "points": pts, "fitted_exponent": slope}


def _cell_iters(r) -> str:
    if r is None:
        return "-"
    if r["diverged"]:
        return "diverged"
    if r["iters_to_tol"] is not None:
        return str(r["iters_to_tol"])
    s = f"> {r['iterations']} ({r['final_error']:.1e})"
    if r.get("extrapolated_iters"):
        s += f" ≈{r['extrapolated_iters']:,} ({r['extrapolation_model']})"
    return s


def _fmt(x, spec=".3g") -> str:
    return "-" if x is None else format(x, spec)


def claims(sens: dict, cfg: StudyConfig) -> dict:
    """The targets of issue 10 and the paper's claims, checked against the measurements."""
    runs = sens["runs"]
    r, a_hi, a_lo = cfg.r, max(cfg.alphas), min(cfg.alphas)
    k4 = max(cfg.k_factors) * r
    out = {}
    # symmetric over-parameterized GD: power of the final phase (error ~ t^p; loss ~ t^(2p))
    sym = []
    for kf in cfg.k_factors:
        for a in cfg.alphas:
            x = _find(runs, True, kf * r, "gd", a)
            if x is not None:
                sym.append({"k": kf * r, "alpha": a, "iters_to_tol": x["iters_to_tol"], "power": x["power"],
                            "loss_power": None if x["power"] is None else 2 * x["power"],
                            "inv_error_slope": x["inv_error_slope"], "inv_error_r2": x["inv_error_r2"],
                            "linear_phase": x["linear_phase"], "log_linear_r2": x["rate_r2"],
                            "final_error": x["final_error"], "rate": x["rate_log10_per_iter"]})
    out["symmetric_gd"] = sym

    def growth(method):
        rh, rl = _find(runs, False, k4, method, a_hi), _find(runs, False, k4, method, a_lo)
        if rh is None or rl is None:
            return None
        it_h, it_l = rh["iters_to_tol"], rl["iters_to_tol"]
        est_h = it_h if it_h is not None else rh.get("extrapolated_iters")
        est_l = it_l if it_l is not None else rl.get("extrapolated_iters")
        d = {"method": method, "iters_alpha_hi": it_h, "iters_alpha_lo": it_l,
             "budget_alpha_hi": rh["iterations"], "budget_alpha_lo": rl["iterations"],
             "error_alpha_hi": rh["final_error"], "error_alpha_lo": rl["final_error"],
             "extrap_alpha_hi": rh.get("extrapolated_iters"), "extrap_model_hi": rh.get("extrapolation_model"),
             "extrap_alpha_lo": rl.get("extrapolated_iters"), "extrap_model_lo": rl.get("extrapolation_model"),
             "diverged": bool(rh["diverged"] or rl["diverged"]),
             "ratio_measured": None, "ratio_lower_bound": None, "ratio_upper_bound": None,
             "ratio_extrapolated": None}
        if it_h is not None and it_l is not None:
            d["ratio_measured"] = it_l / it_h
        elif it_h is not None:  # alpha_lo ran out of budget: at least budget / it_h
            d["ratio_lower_bound"] = rl["iterations"] / it_h
        elif it_l is not None:
            d["ratio_upper_bound"] = it_l / rh["iterations"]
        if d["ratio_measured"] is None and est_h and est_l:
            d["ratio_extrapolated"] = est_l / est_h
        return d

    def verdict(d, want_at_least=None, want_below=None):
        """True / False from measured numbers or bounds; 'extrapolated: ...' when only extrapolation decides."""
        if d is None:
            return None
        m, lb, ub, ex = d["ratio_measured"], d["ratio_lower_bound"], d["ratio_upper_bound"], d["ratio_extrapolated"]
        if want_at_least is not None:
            if m is not None:
                return bool(m >= want_at_least)
            if lb is not None and lb >= want_at_least:
                return True
            if ub is not None and ub < want_at_least:
                return False
            return None if ex is None else f"extrapolated only: {ex >= want_at_least}"
        if m is not None:
            return bool(m < want_below)
        if lb is not None and lb >= want_below:
            return False
        if ub is not None and ub < want_below:
            return True
        return None if ex is None else f"extrapolated only: {ex < want_below}"

    g = {m: growth(m) for m in S.METHODS}
    out["asymmetric_k4r_growth"] = g
    out["asymmetric_gd_rate_exponent"] = sens["rate_study"]["fitted_exponent"]
    out["target_gd_grows_10x"] = verdict(g.get("gd"), want_at_least=10)
    for m in ("slf", "scaledgd", "precgd", "onestep"):
        out[f"target_{m}_grows_lt_2x"] = verdict(g.get(m), want_below=2)
    return out


def sensing_tables(sens: dict, cfg: StudyConfig, cl: dict) -> str:
    p = sens["problem"]
    runs = sens["runs"]
    lines = [f"## Matrix sensing: n={p['n']}, r={p['r']}, m={p['m']} Gaussian measurements, "
             f"singular values {', '.join(f'{s:.2f}' for s in p['sigmas'])}, seed {p['seed']}",
             "",
             f"Iterations to relative error ||M - M*||_F / ||M*||_F <= {cfg.tol:g}; '> B (e)' = not reached in the "
             f"budget B, e = error then, '≈N (model)' = extrapolated from the last half of the run with the "
             f"model (exp: log-linear; 1/T: 1/error linear in T) that predicts its last point best from its first "
             f"half -- indicative only.  GD step 1/L, L = 2 s1 (asym) / 4 s1 (sym), "
             f"s1 = ||A^T y||_2 = {p['s1_estimate']:.3f}; "
             f"ScaledGD(lambda) lambda = {cfg.lam_rel:g} s1, PrecGD lambda_t = {cfg.precgd_c:g} ||residual||, "
             f"step 0.5; onestep rebalances once when the residual is 1e-2 of ||y||; SLF = lfopt's HessianFree "
             f"(exact row-block preconditioner, exact line search).",
             "",
             "| param | k | method | " + " | ".join(f"α={a:g}" for a in cfg.alphas) +
             " | rate (log10/iter) per α | operator products per α |",
             "|---|---|---|" + "---|" * len(cfg.alphas) + "---|---|"]
    for symmetric in (True, False):
        methods = S.SYMMETRIC_METHODS if symmetric else S.METHODS
        for kf in cfg.k_factors:
            k = kf * cfg.r
            for m in methods:
                rr = [_find(runs, symmetric, k, m, a) for a in cfg.alphas]
                rates = " / ".join(_fmt(x["rate_log10_per_iter"] if x else None, ".2g") for x in rr)
                prods = " / ".join(str(x["products_total"]) if x else "-" for x in rr)
                lines.append(f"| {'sym' if symmetric else 'asym'} | {k} ({kf}r) | {m} | " +
                             " | ".join(_cell_iters(x) for x in rr) + f" | {rates} | {prods} |")
    lines += ["", "### Symmetric GD: the final phase (last half of the run)", "",
              "Over-parameterized symmetric GD should follow error ~ 1/T (loss ~ 1/T²): 1/error grows linearly in "
              "T (r² of that line near 1), the local log-log slope p tends to -1 (from above while the transient "
              "lasts).  'linear phase': the log-linear model, fitted on the first half of this window, predicts its "
              "last error better than the 1/T model does.", "",
              "| k | α | iterations to tol | error at budget | d(1/error)/dT | r² of 1/error vs T | p: error ~ T^p | "
              "loss ~ T^2p | linear phase |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s in cl["symmetric_gd"]:
        lines.append(f"| {s['k']} | {s['alpha']:g} | {s['iters_to_tol'] if s['iters_to_tol'] is not None else '-'} | "
                     f"{s['final_error']:.2e} | {_fmt(s['inv_error_slope'], '.3g')} | "
                     f"{_fmt(s['inv_error_r2'], '.4f')} | "
                     f"{_fmt(s['power'], '.2f')} | {_fmt(s['loss_power'], '.2f')} | "
                     f"{'yes' if s['linear_phase'] else 'no'} |")
    rs = sens["rate_study"]
    lines += ["", f"### Asymmetric GD at k = {rs['k']}: final-phase rate vs α", "",
              "| α | rate (log10/iter) | linear final phase reached |", "|---|---|---|"]
    for pnt in rs["points"]:
        lines.append(f"| {pnt['alpha']:g} | {pnt['rate']:.3g} | {'yes' if pnt['linear_phase'] else 'no'} |")
    lines.append(f"\nFitted rate ~ α^p over the linear ones: p = {_fmt(rs['fitted_exponent'], '.2f')} "
                 f"(the paper: exp(-Ω(α² T)), p = 2).")
    lines += ["", f"### Targets (asymmetric, k = 4r = {max(cfg.k_factors) * cfg.r}): growth of the iterations to "
              f"{cfg.tol:g} from α={max(cfg.alphas):g} to α={min(cfg.alphas):g}", "",
              "| method | iterations α=hi | iterations α=lo | ratio measured | ratio bound | ratio extrapolated |",
              "|---|---|---|---|---|---|"]

    def it_cell(it, budget, err, ex, model):
        if it is not None:
            return str(it)
        s = f"> {budget} ({err:.1e})"
        return s + (f", ≈{ex:,} ({model})" if ex else "")

    for m, d in cl["asymmetric_k4r_growth"].items():
        if d is None:
            continue
        bound = ("≥ " + _fmt(d["ratio_lower_bound"], ".2f")) if d["ratio_lower_bound"] is not None else (
            ("< " + _fmt(d["ratio_upper_bound"], ".2f")) if d["ratio_upper_bound"] is not None else "-")
        hi = it_cell(d["iters_alpha_hi"], d["budget_alpha_hi"], d["error_alpha_hi"], d["extrap_alpha_hi"],
                     d["extrap_model_hi"])
        lo = it_cell(d["iters_alpha_lo"], d["budget_alpha_lo"], d["error_alpha_lo"], d["extrap_alpha_lo"],
                     d["extrap_model_lo"])
        lines.append(f"| {m} | {hi} | {lo} | "
                     f"{_fmt(d['ratio_measured'], '.2f')} | {bound} | {_fmt(d['ratio_extrapolated'], '.3g')} |")
    lines.append("")
    lines.append(f"GD grows >= 10x: {cl['target_gd_grows_10x']}; SLF grows < 2x: {cl['target_slf_grows_lt_2x']}; "
                 f"ScaledGD(λ) < 2x: {cl['target_scaledgd_grows_lt_2x']}; PrecGD < 2x: "
                 f"{cl['target_precgd_grows_lt_2x']}; one-step < 2x: {cl['target_onestep_grows_lt_2x']} "
                 f"(None: the runs decide nothing, not even by a bound).")
    return "\n".join(lines)


# ------------------------------------------------------------------ completion part
def _load_completion_data(cfg: StudyConfig):
    import lfopt

    path = cfg.data or (None if cfg.quick else DEFAULT_ML1M)
    if path is None:
        data = lfopt.synthetic(n_users=300, n_items=200, nnz=12_000, rank=3, seed=cfg.seed)
        label = "synthetic 300x200 (rank 3)"
    else:
        path = Path(path)
        if not path.is_file():
            return None, None, f"{path} not found"
        data = lfopt.load_data(str(path))
        label = path.parent.name or path.name
    train, test = lfopt.random_split(data, 0.1, seed=42)
    return (train, test), label, None


def run_completion_one(train, test, rank: int, method: str, cfg: StudyConfig) -> dict:
    """GD (steepest descent, exact quartic line search) or SLF on the LF objective, within a time budget.

    Seconds count the optimizer's work only (the training and test RMSE recorded after each
    iteration are computed outside the clock).
    """
    from ..models.lf import LFObjective
    from ..optim.second_order import HessianFree, _quartic_minimizer

    obj = LFObjective(train, rank, lam=cfg.lam)
    y = obj.init_params(cfg.init_scale, seed=cfg.seed)
    rows, cols = test.users, test.items
    truth = test.values.astype(np.float64)

    def record(it, secs):
        loss = obj.loss(y)
        rmse_tr = math.sqrt(obj.last_sse / obj.nnz)
        pred = np.clip(np.asarray(obj.predict(y, rows, cols), dtype=np.float64), 1.0, 5.0)
        hist.append({"iter": it, "seconds": secs, "loss": loss, "train_rmse": rmse_tr,
                     "test_rmse": float(np.sqrt(np.mean((pred - truth) ** 2)))})

    hist: list = []
    record(0, 0.0)
    g = np.empty_like(y)
    opt = HessianFree() if method == "slf" else None
    secs = 0.0
    stalled = False
    for it in range(1, cfg.completion_max_iter + 1):
        t0 = time.perf_counter()
        if method == "slf":
            info = opt.epoch(obj, y, it)
        else:
            obj.loss_grad(y, g)
            coef = obj.step_polynomial(y, -g)
            t, _ = _quartic_minimizer(coef, t_max=1e6)
            y -= np.float32(t) * g
        secs += time.perf_counter() - t0
        record(it, secs)
        if not math.isfinite(hist[-1]["loss"]) or secs >= cfg.completion_seconds:
            break
        if method == "slf" and info.get("rejected", 0) > opt.max_retries:
            stalled = True  # every retry rejected: no decrease left at float32 precision
            break
    return {"method": method, "rank": rank, "history": hist, "stalled": stalled}


def time_to(hist, level: float):
    """(iterations, seconds) of the first record with loss <= level, or (None, None)."""
    for h in hist:
        if h["loss"] <= level:
            return h["iter"], h["seconds"]
    return None, None


def run_completion(cfg: StudyConfig, quiet: bool = True) -> dict:
    loaded, label, why = _load_completion_data(cfg)
    if loaded is None:
        _say(quiet, f"  completion skipped: {why}")
        return {"skipped": why}
    train, test = loaded
    out = {"data": label, "train_nnz": train.nnz, "test_nnz": test.nnz, "lam": cfg.lam,
           "init_scale": cfg.init_scale, "seconds_budget": cfg.completion_seconds, "runs": [], "speedup": []}
    # warm numba's kernels (first compilation is not part of any timing)
    for method in ("gd", "slf"):
        warm = replace(cfg, completion_max_iter=1, completion_seconds=0.0)
        run_completion_one(train, test, min(cfg.ranks), method, warm)
    for rank in cfg.ranks:
        res = {m: run_completion_one(train, test, rank, m, cfg) for m in ("gd", "slf")}
        out["runs"] += list(res.values())
        gd_h, slf_h = res["gd"]["history"], res["slf"]["history"]
        level = gd_h[-1]["loss"]
        it_s, sec_s = time_to(slf_h, level)
        sp = {"rank": rank, "gd_iters": gd_h[-1]["iter"], "gd_seconds": gd_h[-1]["seconds"], "gd_final_loss": level,
              "gd_final_train_rmse": gd_h[-1]["train_rmse"], "gd_final_test_rmse": gd_h[-1]["test_rmse"],
              "slf_iters": slf_h[-1]["iter"], "slf_seconds": slf_h[-1]["seconds"],
              "slf_final_loss": slf_h[-1]["loss"], "slf_final_train_rmse": slf_h[-1]["train_rmse"],
              "slf_final_test_rmse": slf_h[-1]["test_rmse"], "slf_iters_to_gd_final": it_s,
              "slf_seconds_to_gd_final": sec_s,
              "speedup_seconds": None if not sec_s else gd_h[-1]["seconds"] / sec_s,
              "speedup_iters": None if not it_s else gd_h[-1]["iter"] / it_s}
        out["speedup"].append(sp)
        _say(quiet, f"  completion rank {rank}: GD {sp['gd_iters']} it -> train RMSE {sp['gd_final_train_rmse']:.4f}; "
                    f"SLF reaches that loss in {it_s} it / {_fmt(sec_s, '.1f')} s (speed-up "
                    f"{_fmt(sp['speedup_seconds'], '.1f')}x in time)")
    sps = [s["speedup_seconds"] for s in out["speedup"]]
    gaps = [s["gd_final_train_rmse"] - s["slf_final_train_rmse"] for s in out["speedup"]]
    for s, gap in zip(out["speedup"], gaps):
        s["train_rmse_gap_equal_time"] = gap
    # two readings of "does SLF's advantage grow": the time ratio to reach GD's final loss, and the
    # training-RMSE lead SLF holds after the same optimizer time
    out["advantage_grows"] = (None if len(sps) < 2 or any(s is None for s in sps) else bool(sps[-1] > sps[0]))
    out["lead_at_equal_time_grows"] = None if len(gaps) < 2 else bool(gaps[-1] > gaps[0])
    return out


def completion_table(comp: dict, cfg: StudyConfig) -> str:
    if comp.get("skipped"):
        return f"## Matrix completion\n\nSkipped: {comp['skipped']}."
    lines = [f"## Matrix completion: {comp['data']} (random 90/10, seed 42; {comp['train_nnz']:,} training ratings), "
             f"LF model with biases, λ = {comp['lam']:g} (count-weighted), init scale {comp['init_scale']:g}",
             "",
             f"GD = full-batch steepest descent with the exact quartic line search; SLF = lfopt's HessianFree "
             f"(defaults). Each run: {comp['seconds_budget']:g} s of optimizer time (or "
             f"{cfg.completion_max_iter} iterations). Speed-up = GD's time / SLF's time to reach GD's final "
             f"objective.", "",
             "| rank | GD iters | GD s | GD train RMSE | GD test RMSE | SLF iters | SLF s | SLF train RMSE | "
             "SLF test RMSE | SLF iters / s to GD's final loss | speed-up (time) | speed-up (iters) | "
             "SLF's train RMSE lead at the end |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in comp["speedup"]:
        lines.append(f"| {s['rank']} | {s['gd_iters']} | {s['gd_seconds']:.1f} | {s['gd_final_train_rmse']:.4f} | "
                     f"{s['gd_final_test_rmse']:.4f} | {s['slf_iters']} | {s['slf_seconds']:.1f} | "
                     f"{s['slf_final_train_rmse']:.4f} | {s['slf_final_test_rmse']:.4f} | "
                     f"{_fmt(s['slf_iters_to_gd_final'], 'd')} / {_fmt(s['slf_seconds_to_gd_final'], '.2f')} | "
                     f"{_fmt(s['speedup_seconds'], '.1f')}x | {_fmt(s['speedup_iters'], '.1f')}x | "
                     f"{s['train_rmse_gap_equal_time']:.4f} |")
    lines.append(f"\nDoes SLF's advantage over GD grow from rank {cfg.ranks[0]} to {cfg.ranks[-1]}? Measured as the "
                 f"speed-up (time) to GD's final loss: {comp['advantage_grows']}; measured as SLF's training-RMSE "
                 f"lead at the end of equal time budgets: {comp['lead_at_equal_time_grows']}.  (Timings depend on the "
                 f"machine's load; SLF's block preconditioner costs O(rank^3) per row, GD O(rank) per entry.)")
    return "\n".join(lines)


# ------------------------------------------------------------------ plots
def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_sensing(sens: dict, cfg: StudyConfig, symmetric: bool, path: Path) -> Path:
    from ..plots import _pyplot

    plt = _pyplot()
    methods = S.SYMMETRIC_METHODS if symmetric else S.METHODS
    ks = [kf * cfg.r for kf in cfg.k_factors]
    fig, axes = plt.subplots(len(ks), len(cfg.alphas), figsize=(4.2 * len(cfg.alphas), 3.2 * len(ks)), dpi=90,
                             squeeze=False, sharey=True)
    for i, k in enumerate(ks):
        for j, a in enumerate(cfg.alphas):
            ax = axes[i][j]
            for m in methods:
                e = sens["curves"].get((symmetric, k, m, a))
                if e is not None:
                    ax.plot(np.arange(1, len(e) + 1), np.maximum(e, 1e-16), label=m, linewidth=1.2)
            ax.axhline(cfg.tol, color="gray", linestyle=":", linewidth=0.8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"k={k}, α={a:g}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == len(ks) - 1:
                ax.set_xlabel("iteration + 1")
            if j == 0:
                ax.set_ylabel("||M - M*||_F / ||M*||_F")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{'symmetric X Xᵀ' if symmetric else 'asymmetric F Gᵀ'} matrix sensing, n={cfg.n}, r={cfg.r}, "
                 f"m={cfg.m}")
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return write_atomic(path, data, overwrite=True)


def plot_rates(sens: dict, cfg: StudyConfig, path: Path) -> Path:
    from ..plots import _pyplot

    plt = _pyplot()
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4.2), dpi=90)
    # (1) symmetric GD, log-log error: power law
    for kf in cfg.k_factors:
        for a in cfg.alphas:
            e = sens["curves"].get((True, kf * cfg.r, "gd", a))
            if e is not None:
                a1.plot(np.arange(1, len(e) + 1), e, label=f"k={kf * cfg.r}, α={a:g}", linewidth=1)
    T = np.array([30.0, cfg.sym_gd_budget])
    a1.plot(T, 0.5 * T[0] / T * 1e-1, "k--", linewidth=1, label="∝ 1/T (loss ∝ 1/T²)")
    a1.set_xscale("log")
    a1.set_yscale("log")
    a1.set_title("symmetric GD: error vs iteration")
    a1.set_xlabel("iteration + 1")
    a1.legend(fontsize=7)
    a1.grid(alpha=0.3)
    # (2) asymmetric GD at k = 4r: error vs iteration for all alphas (linear x)
    k4 = max(cfg.k_factors) * cfg.r
    for a in sorted(set(cfg.rate_alphas) | set(cfg.alphas), reverse=True):
        e = sens["curves"].get((False, k4, "gd", a))
        if e is not None:
            a2.plot(np.arange(len(e)), e, label=f"α={a:g}", linewidth=1)
    a2.set_yscale("log")
    a2.set_title(f"asymmetric GD, k={k4}: error vs iteration")
    a2.set_xlabel("iteration")
    a2.legend(fontsize=7)
    a2.grid(alpha=0.3)
    # (3) fitted rate vs alpha
    rs = sens["rate_study"]
    pts = rs["points"]
    if pts:
        xa = np.array([p["alpha"] for p in pts])
        ya = np.array([p["rate"] for p in pts])
        lin = np.array([p["linear_phase"] for p in pts])
        a3.loglog(xa[lin], ya[lin], "o", label="GD (linear final phase)")
        if (~lin).any():
            a3.loglog(xa[~lin], ya[~lin], "x", label="GD (not yet linear)")
        ref = max(xa)
        a3.loglog(xa, ya[np.argmax(xa)] * (xa / ref) ** 2, "k--", linewidth=1, label="∝ α²")
    for m, mk in (("onestep", "s"), ("precgd", "^"), ("slf", "D")):
        xs, ys = [], []
        for a in cfg.alphas:
            r = _find(sens["runs"], False, k4, m, a)
            if r is not None and r["rate_log10_per_iter"]:
                xs.append(a)
                ys.append(r["rate_log10_per_iter"])
        if xs:
            a3.loglog(xs, ys, mk + "-", label=m, linewidth=0.8)
    a3.set_title(f"asymmetric, k={k4}: final-phase rate vs α (p = {_fmt(rs['fitted_exponent'], '.2f')})")
    a3.set_xlabel("α")
    a3.set_ylabel("log10 decrease per iteration")
    a3.legend(fontsize=7)
    a3.grid(alpha=0.3)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return write_atomic(path, data, overwrite=True)


def plot_completion(comp: dict, path: Path) -> Path:
    from ..plots import _pyplot

    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2), dpi=90)
    for run in comp["runs"]:
        h = run["history"]
        lab = f"{run['method']} rank {run['rank']}"
        style = "-" if run["method"] == "slf" else "--"
        a1.plot([x["iter"] for x in h], [x["train_rmse"] for x in h], style, label=lab, linewidth=1.2)
        a2.plot([x["seconds"] for x in h], [x["train_rmse"] for x in h], style, label=lab, linewidth=1.2)
    for ax, xl in ((a1, "iteration"), (a2, "optimizer seconds")):
        ax.set_xlabel(xl)
        ax.set_ylabel("training RMSE")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"matrix completion, {comp['data']}: GD vs SLF")
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return write_atomic(path, data, overwrite=True)


# ------------------------------------------------------------------ the study
OUTPUTS = ("results.json", "table.md", "sensing_symmetric.png", "sensing_asymmetric.png", "rates.png",
           "completion.png")


def run_study(cfg: StudyConfig, outdir, quiet: bool = True, overwrite: bool = False) -> dict:
    """Run both parts and write the outputs into ``outdir``; returns the results dict."""
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise ConfigError(f"--outdir {outdir}: is a file, not a folder")
    # every output writable (and none there unless overwrite) before minutes of work
    check_outputs([("--outdir", outdir / name) for name in OUTPUTS], overwrite=overwrite)
    t0 = time.perf_counter()
    _say(quiet, f"over-parameterization study ({'quick' if cfg.quick else 'default'} size) -> {outdir}")
    sens = run_sensing(cfg, quiet)
    cl = claims(sens, cfg)
    comp = run_completion(cfg, quiet) if cfg.completion else {"skipped": "disabled (--no-completion)"}
    total = time.perf_counter() - t0
    md = ["# Over-parameterization: GD vs its remedies (METHODS.md §5)", "",
          f"Wall time {total:.0f} s (sensing {sens['seconds']:.0f} s).", "",
          sensing_tables(sens, cfg, cl), "", completion_table(comp, cfg), ""]
    table = "\n".join(md)
    results = {"config": asdict(cfg), "problem": sens["problem"], "sensing_runs": sens["runs"],
               "rate_study": sens["rate_study"], "claims": cl, "completion": comp, "seconds": total}
    outdir.mkdir(parents=True, exist_ok=True)
    plot_sensing(sens, cfg, True, outdir / "sensing_symmetric.png")
    plot_sensing(sens, cfg, False, outdir / "sensing_asymmetric.png")
    plot_rates(sens, cfg, outdir / "rates.png")
    if not comp.get("skipped"):
        plot_completion(comp, outdir / "completion.png")
    return write_study(outdir, table, results)


# ------------------------------------------------------------------ CLI
def add_parser(sub):
    p = study_parser(
        sub,
        "overparam",
        help="over-parameterization study: GD vs one-step GD, ScaledGD/PrecGD and SLF (matrix sensing, ML-1M)",
        description="Matrix sensing with Gaussian measurements (rank r target, model rank r/2r/4r, init scales "
        "1e-1/1e-2/1e-3, symmetric and asymmetric factorizations): iterations to relative error 1e-6 and fitted "
        "rates of GD, the one-step modification, ScaledGD(lambda), PrecGD and SLF; then GD vs SLF on ML-1M at "
        "rank 10 and 100. Writes results.json, table.md and PNG plots into --outdir.",
        seed_help="seed of the sensing instance and inits (default: 0)",
    )
    p.add_argument("--n", type=int, default=None, help="sensing: matrix size (default: 40; quick 16)")
    p.add_argument("--r", type=int, default=None, help="sensing: true rank (default: 2)")
    p.add_argument("--m", type=int, default=None, help="sensing: measurements (default: 10 n r)")
    p.add_argument("--gd-budget", type=int, default=None,
                   help="iterations of asymmetric GD and one-step GD (default: 6000; quick 400)")
    p.add_argument("--data", default=None,
                   help=f"ratings file of the completion part (default: {DEFAULT_ML1M}; quick: synthetic)")
    p.add_argument("--seconds", type=float, default=None,
                   help="completion: optimizer seconds per (method, rank) run (default: 15; quick 1)")
    p.add_argument("--no-completion", action="store_true", help="run the sensing part only")
    return p


def config_from_args(args) -> StudyConfig:
    kw = dict(QUICK) if args.quick else {}
    for name, key in (("seed", "seed"), ("n", "n"), ("r", "r"), ("m", "m"), ("gd_budget", "gd_budget"),
                      ("data", "data"), ("seconds", "completion_seconds")):
        val = getattr(args, name, None)
        if val is not None:
            kw[key] = val
    if getattr(args, "no_completion", False):
        kw["completion"] = False
    for key in ("n", "r", "gd_budget"):
        v = kw.get(key)
        if v is not None and (isinstance(v, bool) or int(v) != v or v < 1):
            raise ConfigError(f"--{key.replace('_', '-')} must be a positive integer, got {v!r}")
    if kw.get("m") is not None and kw["m"] < 1:
        raise ConfigError(f"--m must be a positive integer, got {kw['m']!r}")
    if kw.get("completion_seconds") is not None and not (kw["completion_seconds"] > 0):
        raise ConfigError(f"--seconds must be > 0, got {kw['completion_seconds']!r}")
    return StudyConfig(**kw)


def run(args) -> int:
    return run_cli(args, config_from_args, run_study)
