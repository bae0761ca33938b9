"""Which regularization form wins: count-weighted, uniform or mixed L2, on every shared rating dataset.

Row u's factors get the penalty (lam0 + lam1 n_u) / 2 ||p_u||^2 (items alike), its bias
(lam0_b + lam1_b n_u) / 2 b_u^2 (METHODS.md section 2 and lfopt.regularizers.L2).  Three forms:

* count-weighted: lam0 = 0 (lfopt's default; what per-entry SGD with penalty lam minimizes),
* uniform:        lam1 = 0 (every row the same penalty, whatever its count),
* mixed:          both > 0.

The bias coefficients are tied to the factor ones (lam1_b = lam1, lam0_b = lam0).
Grids are log-spaced (factor 2; mixed: about 3); lam0 is per row, so its grid is the lam1 grid times the
dataset's mean row count c = 2|K| / (m + n) (then lam0 = c lam1 puts the same total weight
on the factors as lam1 n_u).  Every configuration is fit on the training part minus a
10 % validation carve (seed 0), early-stopped on the validation RMSE (patience 3); the
form's best configuration (validation RMSE, never the test set) is refit on the whole
training part for the number of epochs validation chose, and scored on the test part.
Rank 10; ALS (at most 25 sweeps) and SGD (lr 0.01, at most 40 epochs); ratings in their own
units (``standardize=False`` where the estimator has that switch) and no validation carved
inside ``fit`` (``validation=None``): the study carves its own.  The tuned
bias-only baseline (lfopt.BiasBaseline) is printed beside each dataset: the floor.

Usage: python benchmarks/bench_reg_form.py [--datasets ml-100k,ml-1m,douban,yelp,amazon]
       [--optimizers als,sgd] [--quick] [--out benchmarks/results/reg_form.md] [--force]
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import lfopt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rating_datasets import DATASETS, carve, claim_output, dataset_names, load_split, mean_row_count, publish  # noqa: E402

RANK = 10
SETTINGS = {  # optimizer: (max epochs, options)
    "als": (25, {}),
    "sgd": (40, {"lr": 0.01}),
}
PATIENCE = 3
SEED = 0
LAM1_GRID = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)  # count-weighted; uniform: x c
MIXED_GRID = (0.005, 0.015, 0.05, 0.15, 0.5, 1.5)  # per coefficient (lam0: x c), 6 x 6 pairs
QUICK_GRID = (0.02, 0.08, 0.32)
QUICK_MIXED = (0.02, 0.15)
FORMS = ("count-weighted", "uniform", "mixed")


def configs(form: str, c: float, quick: bool):
    """(lam1, lam0) pairs of a form's grid."""
    one = QUICK_GRID if quick else LAM1_GRID
    mixed = QUICK_MIXED if quick else MIXED_GRID
    if form == "count-weighted":
        return [(g, 0.0) for g in one]
    if form == "uniform":
        return [(0.0, g * c) for g in one]
    return [(g1, g0 * c) for g1 in mixed for g0 in mixed]


def _pinned():
    """Estimator switches pinned so that every fit means what the docstring says, whatever the
    defaults: ratings in their own units (lam as in METHODS.md section 2) and no validation
    carved inside fit (the study passes its own; the refit uses all training data)."""
    names = inspect.signature(lfopt.LatentFactorModel.__init__).parameters
    return {k: v for k, v in (("standardize", False), ("validation", None)) if k in names}


def fit(optimizer, lam1, lam0, train, valid=None, epochs=None):
    max_epochs, options = SETTINGS[optimizer]
    model = lfopt.LatentFactorModel(rank=RANK, optimizer=optimizer, epochs=epochs or max_epochs, lam=lam1,
                                    lam0=lam0, lam_b=lam1, lam0_b=lam0, init_scale=0.1, use_bias=True, seed=SEED,
                                    patience=PATIENCE if valid is not None else None, **_pinned(), **options)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(train, valid=valid)
    return model, time.perf_counter() - t0


def warm_up():
    """Compile the numba kernels outside every timed fit."""
    tiny = lfopt.synthetic(n_users=60, n_items=40, nnz=800, seed=0)
    for opt in SETTINGS:
        for lam0 in (0.0, 1.0):
            fit(opt, 0.02, lam0, tiny, epochs=2)


def study(name, optimizers, quick, log):
    train, test, info = load_split(name)
    inner, valid = carve(train)
    c = mean_row_count(inner)
    t0 = time.perf_counter()
    floor = lfopt.BiasBaseline().fit(train)
    base = floor.evaluate(test)
    log(f"[{name}] {info['n_train']} train / {info['n_test']} test, mean row count c = {c:.1f}; bias baseline "
        f"RMSE {base['rmse']:.4f} (lam_u {floor.lam_u_:g}, lam_i {floor.lam_i_:g}, "
        f"{time.perf_counter() - t0:.1f} s)")
    out = {"info": info, "c": c, "baseline": {"rmse": base["rmse"], "mae": base["mae"], "lam_u": floor.lam_u_,
                                              "lam_i": floor.lam_i_}, "results": {}}
    for opt in optimizers:
        for form in FORMS:
            trials = []
            for lam1, lam0 in configs(form, c, quick):
                try:
                    model, sec = fit(opt, lam1, lam0, inner, valid)
                    v = model.train_result_.best_value
                    trials.append({"lam1": lam1, "lam0": lam0, "valid_rmse": v, "epoch": model.best_epoch_,
                                   "seconds": sec, "stopped": model.stopped_})
                    log(f"  {name} {opt} {form:14s} lam1 {lam1:<6g} lam0 {lam0:<8.4g} valid {v:.4f} "
                        f"(epoch {model.best_epoch_}, {model.stopped_}, {sec:.1f} s)")
                except Exception as exc:  # one failing configuration must not end the study
                    trials.append({"lam1": lam1, "lam0": lam0, "valid_rmse": float("nan"),
                                   "error": f"{type(exc).__name__}: {exc}"})
                    log(f"  {name} {opt} {form} lam1 {lam1:g} lam0 {lam0:g} FAILED: {type(exc).__name__}: {exc}")
            ok = [t for t in trials if np.isfinite(t["valid_rmse"])]
            res = {"trials": trials}
            if ok:
                best = min(ok, key=lambda t: t["valid_rmse"])
                model, sec = fit(opt, best["lam1"], best["lam0"], train, epochs=best["epoch"])
                score = model.evaluate(test)
                at_edge = _at_edge(best, form, c, quick)
                res.update(best=best, test_rmse=score["rmse"], test_mae=score["mae"], refit_seconds=sec,
                           at_edge=at_edge)
                log(f"  => {name} {opt} {form}: lam1 {best['lam1']:g} lam0 {best['lam0']:.4g} valid "
                    f"{best['valid_rmse']:.4f} test RMSE {score['rmse']:.4f} MAE {score['mae']:.4f}"
                    f"{' (chosen at the grid edge)' if at_edge else ''}")
            out["results"][(opt, form)] = res
    return out


def _at_edge(best, form, c, quick):
    one = QUICK_GRID if quick else LAM1_GRID
    mixed = QUICK_MIXED if quick else MIXED_GRID
    if form == "count-weighted":
        return best["lam1"] in (one[0], one[-1])
    if form == "uniform":
        return np.isclose(best["lam0"], one[0] * c) or np.isclose(best["lam0"], one[-1] * c)
    return best["lam1"] in (mixed[0], mixed[-1]) or any(np.isclose(best["lam0"], g * c) for g in (mixed[0], mixed[-1]))


def report(studies, optimizers, quick, seconds, command):
    lines = ["# Which regularization form wins (rank 10)", "",
             f"Command: `{command}`  ",
             f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.machine()}, "
             f"{os.cpu_count()} cores; lfopt {lfopt.__version__}; total {seconds / 60:.1f} min"
             f"{' (--quick grids)' if quick else ''}.", "",
             "Per-row penalty (lam0 + lam1 n_u) on the factors and (lam0_b + lam1_b n_u) on the biases, bias "
             "coefficients tied to the factor ones.  Count-weighted: lam0 = 0; uniform: lam1 = 0; mixed: both.  "
             f"Grids: lam1 in {list(QUICK_GRID if quick else LAM1_GRID)}, lam0 in c x the same values "
             f"(c = 2|K|/(m+n), the mean row count of the fitting part), mixed: "
             f"{list(QUICK_MIXED if quick else MIXED_GRID)} for each (x c for lam0).  Chosen on a 10 % validation "
             "carve of the training part (seed 0) with early stopping (patience 3), then refit on the whole "
             "training part for the chosen number of epochs; test = random 90/10 seed 42 (Douban: Monti's fixed "
             "split).  ALS at most 25 sweeps; SGD lr 0.01, at most 40 epochs.  Estimator switches: "
             f"{_pinned() or 'none'} (raw rating units; the refit trains on all of the training part).  "
             "`*`: chosen at the edge of its grid.",
             ""]
    for opt in optimizers:
        lines += [f"## {opt.upper()}", "",
                  "| dataset | bias baseline | count-weighted | uniform | mixed | best form (test) |",
                  "|---|---|---|---|---|---|"]
        for name, st in studies.items():
            cells, best = [], None
            for form in FORMS:
                r = st["results"].get((opt, form), {})
                if "test_rmse" not in r:
                    cells.append("failed")
                    continue
                b = r["best"]
                coef = {"count-weighted": f"lam1={b['lam1']:g}", "uniform": f"lam0={b['lam0']:.3g}",
                        "mixed": f"lam1={b['lam1']:g}, lam0={b['lam0']:.3g}"}[form]
                cells.append(f"{r['test_rmse']:.4f} ({coef}{', *' if r['at_edge'] else ''})")
                if best is None or r["test_rmse"] < best[1]:
                    best = (form, r["test_rmse"])
            lines.append(f"| {name} | {st['baseline']['rmse']:.4f} | " + " | ".join(cells)
                         + f" | {best[0] if best else '-'} |")
        lines.append("")
        lines += ["Validation RMSE of each form's chosen configuration (what the choice saw):", "",
                  "| dataset | c | count-weighted | uniform | mixed | best form (validation) |", "|---|---|---|---|---|---|"]
        for name, st in studies.items():
            vals = {f: st["results"].get((opt, f), {}).get("best", {}).get("valid_rmse", float("nan")) for f in FORMS}
            finite = {f: v for f, v in vals.items() if np.isfinite(v)}
            win = min(finite, key=finite.get) if finite else "-"
            lines.append(f"| {name} | {st['c']:.1f} | " + " | ".join(f"{vals[f]:.4f}" for f in FORMS) + f" | {win} |")
        lines.append("")
    lines += ["Bias baseline: lfopt.BiasBaseline() (damping of b_u and b_i chosen from {1, 3, 5, 10, 15, 25, 50} on "
              "the same validation carve, refit on the training part).", ""]
    for name, st in studies.items():
        b = st["baseline"]
        lines.append(f"- {name}: RMSE {b['rmse']:.4f}, MAE {b['mae']:.4f} (lam_u {b['lam_u']:g}, lam_i {b['lam_i']:g})")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated, from " + ", ".join(DATASETS))
    ap.add_argument("--optimizers", default="als,sgd")
    ap.add_argument("--quick", action="store_true", help="smaller grids (a smoke run)")
    ap.add_argument("--out", default="benchmarks/results/reg_form.md")
    ap.add_argument("--force", action="store_true", help="replace an existing --out file")
    args = ap.parse_args(argv)
    names = dataset_names(ap, args.datasets)
    optimizers = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    bad = [o for o in optimizers if o not in SETTINGS]
    if bad:
        ap.error(f"unknown optimizer(s) {bad}; choose from {', '.join(SETTINGS)}")
    claim_output(ap, args.out, args.force)

    def log(text):
        print(text, flush=True)

    t_start = time.perf_counter()
    warm_up()
    studies = {}
    for name in names:
        try:
            studies[name] = study(name, optimizers, args.quick, log)
        except FileNotFoundError as exc:
            log(f"[{name}] skipped: {exc}")
    seconds = time.perf_counter() - t_start
    command = "python benchmarks/bench_reg_form.py " + " ".join(argv if argv is not None else sys.argv[1:])
    publish(report(studies, optimizers, args.quick, seconds, command.strip()), args.out, args.force)


if __name__ == "__main__":
    main()
