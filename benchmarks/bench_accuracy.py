"""Accuracy on every shared rating dataset: the table for the README, in one run.

Rows (each dataset under its protocol, METHODS.md section 6: random 90/10 split with
seed 42, Douban's fixed Monti split; test RMSE/MAE of predictions clipped to the
rating scale; seconds = the fit call only, numba's compilation excluded by a warm-up
fit of every lfopt configuration on a tiny dataset first):

* bias baseline: ``lfopt.BiasBaseline()`` (mu + b_u + b_i, damping chosen on
  validation): the floor every model must clear;
* cornac MF tuned: k, lambda and lr chosen on a 10 % validation carve of the training
  part (seed 0) by a grid (40 epochs), then refit on the whole training part; cornac
  trains on one thread when seeded (its rule);
* myFM (Bayesian FM by Gibbs sampling, METHODS.md section 5c): rank 10 on every
  dataset, and rank 32 on ML-1M, 200 sweeps (the mean over the last 195 samples);
* lfopt with no option: ``LatentFactorModel().fit(train)`` (``optimizer="auto"``: the sampler on all five);
* lfopt with learned Lambda, per optimizer: ``LatentFactorModel(optimizer=o, lam="learn")``;
* lfopt's best pipeline: ``LatentFactorModel(preset="accurate", time_budget=20)``.

A row whose call fails (e.g. a parameter value lfopt does not take yet, or a peer that
is not installed) is reported as n/a with the error message; the run goes on.

Usage: python benchmarks/bench_accuracy.py [--datasets ml-100k,ml-1m,douban,yelp,amazon]
       [--quick] [--out benchmarks/results/accuracy.md] [--force]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import lfopt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import PeerUnavailable, run_cornac_mf, run_myfm  # noqa: E402
from rating_datasets import DATASETS, carve, claim_output, dataset_names, load_split, publish  # noqa: E402

SEED = 42
LEARN_OPTIMIZERS = ("sgd", "adam", "adago", "als", "slf", "sslf")
CORNAC_GRID = {"k": (10, 50, 100), "lam": (0.01, 0.02, 0.05, 0.1), "lr": (0.005, 0.01, 0.02)}
CORNAC_QUICK = {"k": (10, 50), "lam": (0.02, 0.05), "lr": (0.01,)}
CORNAC_EPOCHS = 40
MYFM_SAMPLES, MYFM_QUICK_SAMPLES = 200, 40


# ----------------------------------------------------------------- the rows
def _lfopt_row(make):
    """Fit ``make()`` on train, score test; the fit call alone is timed."""

    def run(train, test, quick):
        model = make()
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(train)
        seconds = time.perf_counter() - t0
        score = model.evaluate(test)
        note = ""
        hist = getattr(model, "history_", None)
        if isinstance(model, lfopt.LatentFactorModel) and hist:
            valid = "valid_rmse" in hist[-1]
            note = (f"{len(hist)} epochs, stopped: {model.stopped_}, "
                    f"validation: {'carved by fit' if valid else 'none'}")
        elif isinstance(model, lfopt.BiasBaseline):
            note = f"lam_u {model.lam_u_:g}, lam_i {model.lam_i_:g}"
        return {"rmse": score["rmse"], "mae": score["mae"], "seconds": seconds, "note": note}

    return run


def bias_baseline(train, test, quick):
    return _lfopt_row(lambda: lfopt.BiasBaseline())(train, test, quick)


def lfopt_default(train, test, quick):
    return _lfopt_row(lambda: lfopt.LatentFactorModel())(train, test, quick)


def lfopt_learned(optimizer):
    def run(train, test, quick):
        return _lfopt_row(lambda: lfopt.LatentFactorModel(optimizer=optimizer, lam="learn"))(train, test, quick)

    return run


def lfopt_accurate(train, test, quick):
    return _lfopt_row(lambda: lfopt.LatentFactorModel(preset="accurate", time_budget=20))(train, test, quick)


def _arrays(a, b):
    return a.users, a.items, a.values, b.users, b.items, b.values


def cornac_tuned(train, test, quick):
    grid = CORNAC_QUICK if quick else CORNAC_GRID
    inner, valid = carve(train)
    lo, hi = float(train.values.min()), float(train.values.max())
    trials = []
    for k, lam, lr in itertools.product(grid["k"], grid["lam"], grid["lr"]):
        r = run_cornac_mf(*_arrays(inner, valid), rank=k, epochs=CORNAC_EPOCHS, lr=lr, lam=lam, seed=SEED,
                          rating_range=(lo, hi))
        trials.append((r["rmse"], k, lam, lr))
    v, k, lam, lr = min(trials)
    r = run_cornac_mf(*_arrays(train, test), rank=k, epochs=CORNAC_EPOCHS, lr=lr, lam=lam, seed=SEED,
                      rating_range=(lo, hi))
    return {"rmse": r["rmse"], "mae": r["mae"], "seconds": r["seconds"],
            "note": f"k={k}, lambda={lam}, lr={lr} (valid RMSE {v:.4f}; {len(trials)} configs; "
                    f"{r['threads']} thread)"}


def myfm(rank):
    def run(train, test, quick):
        n_iter = MYFM_QUICK_SAMPLES if quick else MYFM_SAMPLES
        r = run_myfm(train, test, rank=rank, n_iter=n_iter, seed=SEED,
                     rating_range=(float(train.values.min()), float(train.values.max())))
        return {"rmse": r["rmse"], "mae": r["mae"], "seconds": r["seconds"],
                "note": f"{n_iter} sweeps, mean of {r['n_kept']} samples; prediction {r['predict_seconds']:.1f} s"}

    return run


def rows_for(name):
    rows = [("bias baseline (floor)", bias_baseline), ("cornac MF tuned", cornac_tuned),
            ("myFM rank 10", myfm(10))]
    if name == "ml-1m":
        rows.append(("myFM rank 32", myfm(32)))
    rows.append(("lfopt, no option", lfopt_default))
    rows += [(f"lfopt learned Λ ({o})", lfopt_learned(o)) for o in LEARN_OPTIMIZERS]
    rows.append(("lfopt preset accurate (20 s)", lfopt_accurate))
    return rows


# ------------------------------------------------------------------ warm-up
def warm_up(log):
    """Compile the numba kernels of every lfopt configuration on a tiny dataset (untimed)."""
    tiny = lfopt.synthetic(n_users=80, n_items=60, nnz=1500, seed=0)
    makers = [lambda: lfopt.LatentFactorModel(epochs=2)]
    makers += [lambda o=o: lfopt.LatentFactorModel(optimizer=o, lam="learn", epochs=2) for o in LEARN_OPTIMIZERS]
    makers.append(lambda: lfopt.LatentFactorModel(preset="accurate", time_budget=2))
    t0 = time.perf_counter()
    for make in makers:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                make().fit(tiny)
        except Exception:  # the row will report the error itself
            pass
    log(f"warm-up (numba compilation) {time.perf_counter() - t0:.1f} s")


# ------------------------------------------------------------------- report
def _short(msg, n=160):
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= n else msg[: n - 3] + "..."


def report(results, infos, seconds, command, quick):
    names = list(results)
    methods = [label for label, _ in rows_for("ml-1m")]  # the longest list, in row order
    methods = [m for m in methods if any(m in results[name] for name in names)]
    lines = ["# Rating accuracy on the shared datasets", "",
             f"Command: `{command}`  ",
             f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.machine()}, {os.cpu_count()} cores; "
             f"lfopt {lfopt.__version__}; total {seconds / 60:.1f} min{' (--quick)' if quick else ''}.", "",
             "Test RMSE; random 90/10 split seed 42 (Douban: Monti's fixed split); predictions clipped to the "
             "rating scale.  Anything tuned was tuned on a 10 % validation carve of the training part (seed 0), "
             "never on the test part.  n/a: the call failed (message below).", "",
             "| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for m in methods:
        cells = []
        for name in names:
            r = results[name].get(m)
            cells.append("" if r is None else ("n/a" if "error" in r else f"{r['rmse']:.4f}"))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines.append("")
    for name in names:
        info = infos[name]
        lines += [f"## {name}", "",
                  f"{info['n_users']} users x {info['n_items']} items; {info['n_train']} train / {info['n_test']} "
                  f"test entries ({info['split']}).", "",
                  "| method | RMSE | MAE | seconds | notes |", "|---|---|---|---|---|"]
        for m, r in results[name].items():
            if "error" in r:
                lines.append(f"| {m} | n/a | n/a | | {_short(r['error'])} |")
            else:
                lines.append(f"| {m} | {r['rmse']:.4f} | {r['mae']:.4f} | {r['seconds']:.2f} | {r['note']} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated, from " + ", ".join(DATASETS))
    ap.add_argument("--quick", action="store_true",
                    help=f"a smoke run: cornac grid of {np.prod([len(v) for v in CORNAC_QUICK.values()])} configs, "
                         f"myFM {MYFM_QUICK_SAMPLES} sweeps")
    ap.add_argument("--out", default="benchmarks/results/accuracy.md", help="Markdown table ('' to write none)")
    ap.add_argument("--force", action="store_true", help="replace an existing --out file")
    args = ap.parse_args(argv)
    names = dataset_names(ap, args.datasets)
    claim_output(ap, args.out, args.force)

    def log(text):
        print(text, flush=True)

    t_start = time.perf_counter()
    warm_up(log)
    results, infos = {}, {}
    for name in names:
        try:
            train, test, info = load_split(name)
        except FileNotFoundError as exc:
            log(f"[{name}] skipped: {exc}")
            continue
        infos[name], results[name] = info, {}
        log(f"[{name}] {info['n_train']} train / {info['n_test']} test ({info['split']})")
        for label, fn in rows_for(name):
            try:
                r = fn(train, test, args.quick)
                log(f"  {label:30s} RMSE {r['rmse']:.4f}  MAE {r['mae']:.4f}  {r['seconds']:8.2f} s  {r['note']}")
            except PeerUnavailable as exc:
                r = {"error": f"skipped: {exc}"}
                log(f"  {label:30s} n/a: {r['error']}")
            except Exception as exc:  # never crash the whole run
                r = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"  {label:30s} n/a: {_short(r['error'], 300)}")
                if os.environ.get("LFOPT_BENCH_TRACEBACK"):
                    traceback.print_exc()
            results[name][label] = r
    seconds = time.perf_counter() - t_start
    command = "python benchmarks/bench_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:])
    publish(report(results, infos, seconds, command.strip(), args.quick), args.out, args.force)


if __name__ == "__main__":
    main()
