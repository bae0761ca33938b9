"""Ranking benchmark: MF-lambdaFix (grid-searched lambda) against lambdaOpt's granularities, and timings.

Measured in one run, on ML-1M and Amazon (from ``../shared/data``):

* MF-lambdaFix: BPR-MF with a fixed lambda for every value of ``--grid``; the lambda
  with the best validation NDCG@50 is selected (never the test set);
* lambdaOpt-D / DU / DI / DUI with no lambda tuning at all (Lambda starts at 0 and is
  learned on the validation positives);
* for every model: test NDCG@50, HR@50, AUC (full ranking against every item the user
  has not interacted with), epochs (best / run) and training seconds;
* timing lines: full-ranking evaluation of all ML-1M users over all items, and one
  BPR epoch over ML-1M at rank 64 (fixed lambda and lambdaOpt-DUI).

Protocol (METHODS.md section 6): ML-1M has no timestamps, so its per-user 60/20/20
split is random; its positives are ratings >= 4 with the 20-core (the headline
variant, chosen before any result; ``ml1m-all`` repeats it with every rating as a
positive).  Amazon: every rating is a positive, 5-core, split by time.  Same rank, optimizer, learning rate,
batch size, epochs budget and early stopping (patience on validation NDCG@50) for
every model.

Usage::

    python benchmarks/bench_ranking.py                      # every dataset, the full protocol
    python benchmarks/bench_ranking.py --datasets amazon --outdir results/ranking
    python benchmarks/bench_ranking.py --quick              # a smoke run (few epochs)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lfopt  # noqa: E402
from lfopt.eval.ranking import per_user_metrics  # noqa: E402
from lfopt.ranking import BPRMF, grid_search, implicit_split  # noqa: E402
from lfopt.results import to_jsonable  # noqa: E402

DATASETS = {
    "ml1m": dict(path="ml-1m/ratings.dat", format=None, threshold=4.0, k_core=20,
                 label="ML-1M (ratings >= 4, 20-core, random 60/20/20 per user)"),
    "amazon": dict(path="amazon/user_item.dat", format="tsv", threshold=None, k_core=5,
                   label="Amazon (all ratings, 5-core, 60/20/20 per user by time)"),
    "ml1m-all": dict(path="ml-1m/ratings.dat", format=None, threshold=None, k_core=20,
                     label="ML-1M (all ratings, 20-core, random 60/20/20 per user)"),
}


def _load(name, data_dir):
    spec = DATASETS[name]
    data = lfopt.load_data(Path(data_dir) / spec["path"], spec["format"])
    return implicit_split(data, threshold=spec["threshold"], k_core=spec["k_core"], seed=42)


def _row(name, model, split, seconds, lam=None):
    test = model.evaluate(split.test, ks=(50,))
    h = model.history_
    return {"model": name, "lambda": lam, "valid_ndcg@50": model.best_valid_, "test_ndcg@50": test["ndcg@50"],
            "test_hr@50": test["hr@50"], "test_recall@50": test["recall@50"], "test_auc": test["auc"],
            "best_epoch": model.best_epoch_, "epochs": len(h), "seconds": seconds,
            "by_activity": test.get("by_activity")}


def _fmt(r):
    lam = "learned" if r["lambda"] is None else f"{r['lambda']:g}"
    return (f"  {r['model']:<16s} {lam:>8s}  {r['valid_ndcg@50']:.4f}  {r['test_ndcg@50']:.4f}  {r['test_hr@50']:.4f}"
            f"  {r['test_auc']:.4f}  {r['best_epoch']:>4d}/{r['epochs']:<4d} {r['seconds']:7.1f}")


HEADER = ("  model              lambda  val-NDCG* NDCG@50  HR@50    AUC    epochs   seconds\n"
          "  (* lambdaOpt fits Lambda on the validation set, so its validation NDCG is optimistic; the seconds of\n"
          "   MF-lambdaFix are the whole grid search, those of lambdaOpt one run)")


def bench_dataset(name, args, common, out):
    split = _load(name, args.data_dir)
    print(f"\n== {DATASETS[name]['label']}: {split!r}", flush=True)
    res = {"split": split.info, "grid": [], "rows": []}
    t0 = time.perf_counter()
    best, table = grid_search(split, args.grid, metric="ndcg@50", **common)
    grid_seconds = time.perf_counter() - t0
    res["grid"] = table
    print("MF-lambdaFix grid (validation NDCG@50 at each run's best epoch):", flush=True)
    for row in table:
        print(f"  lambda {row['lambda']:<8g} valid {row['valid_ndcg@50']:.4f}  best epoch {row['best_epoch']}/"
              f"{row['epochs']}  {row['seconds']:.1f} s", flush=True)
    fix = _row("MF-lambdaFix", best, split, grid_seconds, best.lam)
    res["rows"].append(fix)
    print(f"selected lambda {best.lam:g} (whole grid: {grid_seconds:.1f} s)", flush=True)
    for g in args.granularities:
        t0 = time.perf_counter()
        model = BPRMF(regularizer="lambdaopt", granularity=g, lam=args.lambda_init, lam_lr=args.lambda_lr,
                      **common).fit(split)
        row = _row(f"lambdaOpt-{g}", model, split, time.perf_counter() - t0)
        traj = model.lambda_trajectory_[model.best_epoch_ - 1]
        row["lambda_final"] = {"user": traj["user"], "item": traj["item"]}
        row["lambda_trajectory"] = model.lambda_trajectory_
        res["rows"].append(row)
        print(f"  lambdaOpt-{g}: test NDCG@50 {row['test_ndcg@50']:.4f}, learned Lambda users mean "
              f"{traj['user']['mean']:.4g}, items mean {traj['item']['mean']:.4g}", flush=True)
        if args.outdir:
            from lfopt.ranking.plots import plot_lambda

            plot_lambda(model.lambda_trajectory_, Path(args.outdir) / f"{name}_lambda_{g}.png",
                        title=f"{name}: lambdaOpt-{g}", overwrite=True)
    print(f"\nResults on {DATASETS[name]['label']} (test set, full ranking):")
    print(HEADER)
    for r in res["rows"]:
        print(_fmt(r))
    print("  test NDCG@50 by user activity (training positives per user, quartiles):")
    buckets = res["rows"][0]["by_activity"] or []
    print("  " + " " * 16 + "".join(f"{'%d-%d' % tuple(b['count_range']):>12s}" for b in buckets))
    for r in res["rows"]:
        print(f"  {r['model']:<16s}" + "".join(f"{b['ndcg@50']:12.4f}" for b in r["by_activity"] or []))
    dui = next((r for r in res["rows"] if r["model"] == "lambdaOpt-DUI"), None)
    if dui is not None:
        for key in ("test_ndcg@50", "test_hr@50", "test_auc"):
            verdict = ">=" if dui[key] >= fix[key] else "<"
            print(f"  lambdaOpt-DUI {key} {dui[key]:.4f} {verdict} MF-lambdaFix {fix[key]:.4f} "
                  f"({100 * (dui[key] / fix[key] - 1):+.1f} %)")
    out[name] = res


def bench_timings(args, out):
    """Full-ranking evaluation of all ML-1M users and one BPR epoch at rank 64."""
    path = Path(args.data_dir) / DATASETS["ml1m"]["path"]
    data = lfopt.load_data(path)
    split = implicit_split(data, threshold=None, k_core=1, seed=42)  # every user and item of ML-1M
    print(f"\n== timings on all of ML-1M: {split!r}; {os.cpu_count()} cores, numba threads "
          f"{__import__('numba').get_num_threads()}, load average {os.getloadavg()[0]:.2f}", flush=True)
    rng = np.random.default_rng(0)
    P = rng.normal(0, 0.1, (split.n_users, 64)).astype(np.float32)
    Q = rng.normal(0, 0.1, (split.n_items, 64)).astype(np.float32)
    per_user_metrics(P, Q, split.test.subset(split.test.users < 50), (split.train, split.valid))  # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        pu = per_user_metrics(P, Q, split.test, (split.train, split.valid), ks=(10, 20, 50))
        times.append(time.perf_counter() - t0)
    n_users = len(pu["users"])
    print(f"full-ranking evaluation of {n_users} users x {split.n_items} items (AUC, HR/NDCG/Recall/Precision "
          f"@10,20,50): {min(times):.2f} s (best of 3; runs {', '.join(f'{t:.2f}' for t in times)})", flush=True)
    res = {"eval_seconds": times, "eval_users": n_users, "n_items": split.n_items}
    for label, kw in (("fixed lambda", {}), ("lambdaOpt-DUI", {"regularizer": "lambdaopt", "granularity": "DUI"})):
        epochs = []

        def cb(model, row, epochs=epochs):
            epochs.append(row["epoch_seconds"])

        BPRMF(rank=64, epochs=4, patience=None, **kw).fit(split, callback=cb)
        ep = epochs[1:]  # the first epoch may include numba's compilation or cache loading
        print(f"BPR epoch at rank 64, {label}, {split.train.nnz} training triples (batch 1024, Adam): "
              f"{min(ep):.2f} s (best of {len(ep)}; {', '.join(f'{t:.2f}' for t in ep)})", flush=True)
        res[f"epoch_seconds_{label}"] = ep
    out["timings"] = res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--datasets", default="ml1m,amazon,ml1m-all",
                   help="comma-separated, from: " + ", ".join(DATASETS) + " (default: all three)")
    p.add_argument("--grid", default="0.001,0.003,0.01,0.02,0.03,0.05,0.1",
                   help="MF-lambdaFix lambdas (default: 7 values)")
    p.add_argument("--granularities", default="D,DU,DI,DUI")
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lambda-init", type=float, default=0.0, help="lambdaOpt's initial Lambda (default: 0)")
    p.add_argument("--lambda-lr", type=float, default=1e-3, help="lambdaOpt's Lambda learning rate (default: 1e-3)")
    p.add_argument("--no-timings", action="store_true")
    p.add_argument("--outdir", help="write results.json and Lambda plots here")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 epochs, 2 grid values")
    args = p.parse_args(argv)
    args.grid = [float(x) for x in args.grid.split(",")]
    args.granularities = [g.strip() for g in args.granularities.split(",") if g.strip()]
    if args.quick:
        args.epochs, args.grid = 3, args.grid[:2]
    if args.outdir:
        Path(args.outdir).mkdir(parents=True, exist_ok=True)
    common = dict(rank=args.rank, epochs=args.epochs, patience=args.patience, lr=args.lr,
                  batch_size=args.batch_size, seed=42)
    print(f"options: {common}, lambdaOpt Lambda init {args.lambda_init}, Lambda lr {args.lambda_lr}, "
          f"grid {args.grid}", flush=True)
    out = {"options": vars(args)}
    t0 = time.perf_counter()
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        if name not in DATASETS:
            p.error(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
        bench_dataset(name, args, common, out)
        _write(args, out)
    if not args.no_timings:
        bench_timings(args, out)
        _write(args, out)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


def _write(args, out):
    if args.outdir:
        (Path(args.outdir) / "results.json").write_text(json.dumps(to_jsonable(out), indent=1) + "\n")


if __name__ == "__main__":
    main()
