"""Learned Lambda (lfopt.regularizers.LearnedL2) against the best grid-searched lambda, per optimizer.

Protocol: ML-100K, ML-1M, Yelp, Amazon: random 90/10 split (seed 42) of all ratings
into train+valid / test, and a validation part (10 %) carved from the first by
``lfopt.random_split`` (seed 42); Douban: its fixed split, validation carved the
same way.  For each optimizer (sgd, adam, adago, als, slf, sslf) at rank 10:

* grid: the count-weighted L2 (``L2(lam)``, lam_b = lam) for every lam of the grid,
  early stopping on validation RMSE; the lam with the best validation RMSE is
  reported with its test RMSE and its seconds (and the whole grid's seconds);
* learned: ``LearnedL2()`` with its defaults, the same optimizer, init and early
  stopping; its test RMSE and seconds.

Test RMSE: predictions clipped to the training rating range, unseen users / items
predicted from the mean and the known bias (the estimators' policy).

Usage: python benchmarks/bench_lambda_rating.py [--datasets ml-100k,ml-1m,...]
           [--optimizers sgd,adam,...] [--rank 10] [--ml1m-rank32 sgd,adago,als]
           [--out benchmarks/results/lambda_rating.txt]

(about 15 minutes on 2 cores with --ml1m-rank32 sgd,adago,als; numba kernels are
compiled by a warm-up on synthetic data before anything is timed)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

import lfopt
from lfopt.models.lf import LFObjective
from lfopt.optim.base import make_optimizer
from lfopt.regularizers import L2, LearnedL2
from lfopt.train.trainer import Trainer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {
    "ml-100k": DATA / "ml-100k" / "u.data",
    "ml-1m": DATA / "ml-1m" / "ratings.dat",
    "douban": DATA / "douban-monti" / "training_test_dataset.mat",
    "yelp": DATA / "yelp" / "user_business.dat",
    "amazon": DATA / "amazon" / "user_item.dat",
}
#: METHODS.md section 7: the tuned bias-only baseline (test RMSE, same splits)
BIAS_ONLY = {"ml-100k": 0.9312, "ml-1m": 0.9040, "yelp": 1.0073, "amazon": 0.9471, "douban": 0.7335}
OPTIMIZERS = ("sgd", "adam", "adago", "als", "slf", "sslf")
GRID = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64)
EPOCHS = {"sgd": 60, "adam": 60, "adago": 60, "als": 40, "slf": 60, "sslf": 60}


def splits(name: str, seed: int = 42, scale: float = 1.0):
    """(train, valid, test) of a dataset by the protocol above (ratings times ``scale``)."""
    data = lfopt.load_data(DATASETS[name])
    if scale != 1.0:
        data = data.with_values(data.values * np.float32(scale))
    if "test_mask" in data.meta:
        rest, test = lfopt.fixed_split(data)
    else:
        rest, test = lfopt.random_split(data, 0.1, seed)
    train, valid = lfopt.random_split(rest, 0.1, seed)
    return train, valid, test


def predict(obj: LFObjective, y, data) -> tuple[np.ndarray, np.ndarray]:
    """Clipped predictions of ``data``'s entries (the estimators' unseen policy) and the unseen mask."""
    bu, bi, P, Q = (np.asarray(b, dtype=np.float64) for b in obj.layout.unpack(obj.backend.to_numpy(y)))
    cu, ci = obj.train.user_counts(), obj.train.item_counts()
    u, i = data.users, data.items
    su, si = cu[u] > 0, ci[i] > 0
    both = su & si
    pred = np.full(len(u), obj.mu, dtype=np.float64)
    if obj.use_bias:
        pred += np.where(su, bu[u], 0.0) + np.where(si, bi[i], 0.0)
    pred[both] += np.einsum("kd,kd->k", P[u[both]], Q[i[both]])
    lo, hi = float(obj.train.values.min()), float(obj.train.values.max())
    return np.clip(pred, lo, hi), ~both


def rmse(obj, y, data) -> float:
    pred, _ = predict(obj, y, data)
    d = pred - data.values
    return float(np.sqrt(np.mean(d * d)))


def fit(train, valid, test, rank: int, optimizer: str, regularizer, epochs: int | None = None, patience: int = 5,
        seed: int = 0, init_scale: float = 0.1, verbose: bool = False, opt_options: dict | None = None,
        bind: bool = True) -> dict:
    """Train one model with early stopping on validation RMSE; test RMSE at the best epoch."""
    obj = LFObjective(train, rank, regularizer=regularizer)
    if bind and hasattr(regularizer, "bind"):
        regularizer.bind(obj, valid)
    opt = make_optimizer(optimizer, seed=seed, **(opt_options or {}))
    y = obj.init_params(init_scale, seed)

    def evaluate(params):
        return {"rmse": rmse(obj, params, valid)}

    trainer = Trainer(epochs or EPOCHS[optimizer], patience, verbose=verbose, metric="rmse")
    t0 = time.perf_counter()
    res = trainer.run(obj, opt, y, evaluate)
    seconds = time.perf_counter() - t0
    out = {"valid_rmse": res.best_value, "test_rmse": rmse(obj, y, test), "seconds": seconds,
           "train_seconds": res.history[-1]["seconds"] if res.history else 0.0, "epochs": len(res.history),
           "best_epoch": res.best_epoch, "stopped": res.stopped}
    if isinstance(regularizer, LearnedL2):
        s = regularizer.summary()
        out["lambda"] = {"user_mean": s["user"]["mean"], "user_p5": s["user"]["p5"], "user_p95": s["user"]["p95"],
                         "item_mean": s["item"]["mean"], "item_p5": s["item"]["p5"],
                         "item_p95": s["item"]["p95"]}
        if "bias_user" in s:
            out["lambda"].update(bu=s["bias_user"]["mean"], bi=s["bias_item"]["mean"])
        out["history"] = res.history
        out["regularizer"] = regularizer
    return out


def grid(train, valid, test, rank, optimizer, lams=GRID, make=L2, **kw) -> dict:
    """The best count-weighted lambda of the grid by validation RMSE (``make(lam)``: the regularizer)."""
    rows = []
    for lam in lams:
        r = fit(train, valid, test, rank, optimizer, make(lam), **kw)
        r["lam"] = lam
        rows.append(r)
    best = min(rows, key=lambda r: r["valid_rmse"] if math.isfinite(r["valid_rmse"]) else math.inf)
    return {"best": best, "rows": rows, "seconds": sum(r["seconds"] for r in rows)}


def ablation(datasets, optimizers, rank, lams) -> list:
    """Where the gain comes from: (a) LearnedL2(learn=False), the default initial Lambda held
    fixed; (b) the grid with the learned regularizer's bias form (uniform bias damping 5,
    the default initial bias Lambda: ``L2(lam, lam_b=0, lam0_b=5)``), best by validation."""
    lines = ["## ablation: test RMSE of (a) the initial Lambda held fixed, (b) the grid with uniform bias "
             "damping 5", "| dataset | optimizer | fixed init | grid, uniform biases (lam) |", "|---|---|---|---|"]
    for name in datasets:
        train, valid, test = splits(name)
        for opt in optimizers:
            fixed = fit(train, valid, test, rank, opt, LearnedL2(learn=False))
            g = grid(train, valid, test, rank, opt, lams, make=lambda lam: L2(lam, lam_b=0.0, lam0_b=5.0))
            lines.append(f"| {name} | {opt} | {fixed['test_rmse']:.4f} | {g['best']['test_rmse']:.4f} "
                         f"({g['best']['lam']:g}) |")
            print(lines[-1], flush=True)
    return lines


def warm_up():
    """Compile every numba kernel once (timings exclude compilation)."""
    d = lfopt.synthetic(n_users=60, n_items=50, nnz=1500, seed=0)
    tr, te = lfopt.random_split(d, 0.2, 0)
    tr, va = lfopt.random_split(tr, 0.2, 0)
    for opt in OPTIMIZERS:
        fit(tr, va, te, 3, opt, L2(0.05), epochs=2)
        fit(tr, va, te, 3, opt, LearnedL2(), epochs=2)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="ml-100k,ml-1m,douban,yelp,amazon")
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    ap.add_argument("--rank", type=int, default=10)
    ap.add_argument("--grid", default=",".join(str(x) for x in GRID))
    ap.add_argument("--out", default=None, help="also write the table (and a JSON of the rows) here")
    ap.add_argument("--ml1m-rank32", default="", help="also run ML-1M at rank 32 with these optimizers")
    ap.add_argument("--ablation", default="", help="only the ablation (see ablation()) with these optimizers")
    args = ap.parse_args(argv)
    lams = tuple(float(x) for x in args.grid.split(","))
    warm_up()
    if args.ablation:
        t0 = time.perf_counter()
        lines = ablation(args.datasets.split(","), args.ablation.split(","), args.rank, lams)
        lines.append(f"total {time.perf_counter() - t0:.0f} s")
        print("\n".join(lines))
        if args.out:
            Path(args.out).write_text("\n".join(lines) + "\n")
        return
    lines = [f"# learned Lambda (LearnedL2() defaults) vs the best of the count-weighted grid lambda {list(lams)} "
             f"(lam_b = lam), by validation RMSE; test RMSE at the best validation epoch; seconds: one training run "
             f"(hyper-steps included), grid s: all grid runs; diff = learned - grid", ""]
    records = []
    t_all = time.perf_counter()
    runs = [(name, args.rank, args.optimizers) for name in args.datasets.split(",")]
    if args.ml1m_rank32:
        runs.append(("ml-1m", 32, args.ml1m_rank32))
    for name, rank, optimizers in runs:
        train, valid, test = splits(name)
        lines.append(f"## {name}, rank {rank}: {train.nnz} train / {valid.nnz} valid / {test.nnz} test; bias-only "
                     f"baseline {BIAS_ONLY.get(name, float('nan')):.4f}")
        lines.append("| optimizer | grid lam | grid test RMSE | grid s (one / all) | learned test RMSE | learned s | "
                     "diff | Lambda user mean [p5, p95] | item mean [p5, p95] | bias u / i |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for opt in optimizers.split(","):
            g = grid(train, valid, test, rank, opt, lams)
            b = g["best"]
            lr = fit(train, valid, test, rank, opt, LearnedL2())
            lam = lr["lambda"]
            diff = lr["test_rmse"] - b["test_rmse"]
            lines.append(f"| {opt} | {b['lam']:g} | {b['test_rmse']:.4f} | {b['seconds']:.1f} / {g['seconds']:.1f} | "
                         f"{lr['test_rmse']:.4f} | {lr['seconds']:.1f} | {diff:+.4f} | "
                         f"{lam['user_mean']:.3g} [{lam['user_p5']:.3g}, {lam['user_p95']:.3g}] | "
                         f"{lam['item_mean']:.3g} [{lam['item_p5']:.3g}, {lam['item_p95']:.3g}] | "
                         f"{lam.get('bu', float('nan')):.3g} / {lam.get('bi', float('nan')):.3g} |")
            print(lines[-1], flush=True)
            records.append({"dataset": name, "rank": rank, "optimizer": opt, "grid": [{k: r[k] for k in (
                "lam", "valid_rmse", "test_rmse", "seconds", "epochs")} for r in g["rows"]],
                "learned": {k: lr[k] for k in ("valid_rmse", "test_rmse", "seconds", "epochs", "lambda")}})
        lines.append("")
    lines.append(f"total {time.perf_counter() - t_all:.0f} s")
    text = "\n".join(lines)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        out.with_suffix(".json").write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    sys.exit(main())
