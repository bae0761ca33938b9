"""Deep matrix factorization: oracle cost by depth, and test RMSE at depth 0, 1, 2 with one budget.

Usage: python benchmarks/bench_deep.py [--out benchmarks/results/deep] [--force] [--quick]

(a) On ML-1M (random 90/10, seed 42) at rank ``--time-rank`` (64): the median wall time
    (after a warm-up) of one gradient, one Gauss-Newton product, the GN diagonal and one
    mini-batch gradient (8192 entries, with the diagonal) of ``DeepLFObjective`` at depth
    0, 1, 2 (the target of issue 10: the GN product at depth 2 within 3x depth 0).
(b) On ML-1M and Douban (Monti's fixed split): ``DeepMF`` at depth 0, 1, 2 with the same
    budget: the same optimizer and hyper-parameters, at most ``--epochs`` epochs, early
    stopping (patience 5) on the validation part carved from the training data
    (``rating_datasets.carve``: 10 %, seed 0), test RMSE of the best epoch; the bias
    baseline beside them.

Writes ``table.md`` and ``results.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_kernels import median_time  # noqa: E402
from rating_datasets import carve, load_split  # noqa: E402

import lfopt  # noqa: E402
from lfopt.estimators.deep import DeepMF  # noqa: E402
from lfopt.models.deep import DeepLFObjective  # noqa: E402


def time_oracles(train, rank: int, depths, repeat: int) -> list:
    rows = []
    rng = np.random.default_rng(0)
    batch = rng.choice(train.nnz, 8192, replace=False)
    for L in depths:
        obj = DeepLFObjective(train, rank, depth=L, lam=0.05)
        y = obj.init_params(0.5, seed=0)
        W = obj.layout.unpack(y, "W")[0]
        W += rng.normal(0, 0.1, W.shape).astype(np.float32)
        g = np.empty_like(y)
        d = np.empty_like(y)
        out = np.empty_like(y)
        v = rng.standard_normal(y.size).astype(np.float32)
        row = {"depth": L, "rank": rank, "n_params": obj.size}

        def grad_new_point():  # every gradient is taken at a new point: P A recomputed
            obj._cache_y = None
            obj.loss_grad(y, g)

        row["gradient_ms"] = 1e3 * median_time(grad_new_point, repeat)
        # gvp at a fixed point (what CG does): the first call computes P A, later ones reuse it;
        # "gvp_new_point" also recomputes P A (a fresh y every call)
        row["gvp_ms"] = 1e3 * median_time(lambda: obj.gvp(y, v, out), repeat)

        def gvp_new_point():
            obj._cache_y = None
            obj.gvp(y, v, out)

        row["gvp_new_point_ms"] = 1e3 * median_time(gvp_new_point, repeat)
        row["gn_diag_ms"] = 1e3 * median_time(lambda: obj.gn_diag(y, out), repeat)
        row["batch_grad_ms"] = 1e3 * median_time(lambda: obj.batch_grad(y, batch, g), repeat)
        row["batch_grad_diag_ms"] = 1e3 * median_time(lambda: obj.batch_grad(y, batch, g, d), repeat)
        rows.append(row)
        print(f"depth {L}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items() if k.endswith("_ms")), flush=True)
    return rows


def accuracy(name: str, depths, args) -> list:
    train, test, info = load_split(name)
    inner, valid = carve(train)
    out = []
    t0 = time.perf_counter()
    base = lfopt.BiasBaseline().fit(inner, valid=valid)
    out.append({"dataset": name, "model": "bias baseline", "depth": None,
                "test_rmse": base.evaluate(test)["rmse"], "seconds": time.perf_counter() - t0})
    print(f"{name}: bias baseline test RMSE {out[-1]['test_rmse']:.4f}", flush=True)
    for optimizer, L in [(o, L) for o in args.optimizers for L in depths]:
        opts = dict(args.optimizer_options)
        model = DeepMF(rank=args.rank, depth=L, optimizer=optimizer, epochs=args.epochs, patience=5,
                       seed=0, flatness=args.flatness, **opts)
        t0 = time.perf_counter()
        model.fit(inner, valid=valid)
        secs = time.perf_counter() - t0
        rmse = model.evaluate(test)["rmse"]
        best = model.best_epoch_
        vrmse = min(r["valid_rmse"] for r in model.history_ if "valid_rmse" in r)
        A = model.end_to_end()
        sv = np.linalg.svd(A, compute_uv=False)
        out.append({"dataset": name, "model": "DeepMF", "depth": L, "rank": args.rank, "optimizer": optimizer,
                    "epochs_run": len(model.history_), "best_epoch": best, "valid_rmse": vrmse,
                    "test_rmse": rmse, "seconds": secs, "A_singular_max": float(sv.max()),
                    "A_singular_min": float(sv.min()), "stopped": model.stopped_})
        print(f"{name}: {optimizer} depth {L}: test RMSE {rmse:.4f} (valid {vrmse:.4f}, best epoch {best}/"
              f"{len(model.history_)}, {secs:.1f} s)", flush=True)
    return out


def table(timing, acc, args, load) -> str:
    lines = ["# Deep matrix factorization: depth 0, 1, 2", ""]
    lines.append(f"Machine load (uptime) at start: {load}.  Command: `python benchmarks/bench_deep.py "
                 f"{' '.join(sys.argv[1:])}`.")
    lines.append("")
    if timing:
        d0 = {r["depth"]: r for r in timing}
        lines += [f"## (a) Oracle time on ML-1M train (90/10 seed 42), rank {timing[0]['rank']}, median of "
                  f"{args.repeat} after a warm-up", "",
                  "| depth | parameters | gradient ms | GN product ms (x depth 0) | GN product, new point ms "
                  "| GN diagonal ms | mini-batch grad (8192) ms | mini-batch grad + diag ms |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in timing:
            ratio = r["gvp_ms"] / d0[timing[0]["depth"]]["gvp_ms"]
            lines.append(f"| {r['depth']} | {r['n_params']} | {r['gradient_ms']:.1f} | {r['gvp_ms']:.1f} "
                         f"({ratio:.2f}x) | {r['gvp_new_point_ms']:.1f} | {r['gn_diag_ms']:.1f} | "
                         f"{r['batch_grad_ms']:.1f} | {r['batch_grad_diag_ms']:.1f} |")
        lines.append("")
        lines.append("Gradient: at a new point every call (P A recomputed).  GN product: at a fixed point "
                     "(CG's case: P A is cached per point); \"new point\" recomputes P A as well.")
        lines.append("")
    if acc:
        opts = ", ".join(f"{k}={v}" for k, v in args.optimizer_options.items())
        lines += [f"## (b) Test RMSE, same budget: DeepMF rank {args.rank}, optimizers "
                  f"{', '.join(args.optimizers)} with their defaults{' (' + opts + ')' if opts else ''}, "
                  f"at most {args.epochs} epochs, early stopping "
                  f"(patience 5) on 10 % of the training data (seed 0), flatness {args.flatness}; "
                  f"standardized ratings, lam=0.05, lam0=6, lam0_b=3, lam_w=0.05, identity-initialized layers", "",
                  "| dataset | model | test RMSE | valid RMSE | best epoch / run | seconds | singular values of A |",
                  "|---|---|---|---|---|---|---|"]
        for r in acc:
            if r["depth"] is None:
                lines.append(f"| {r['dataset']} | {r['model']} | {r['test_rmse']:.4f} | | | {r['seconds']:.1f} | |")
            else:
                lines.append(f"| {r['dataset']} | DeepMF {r['optimizer']}, depth {r['depth']} | {r['test_rmse']:.4f} | "
                             f"{r['valid_rmse']:.4f} | {r['best_epoch']} / {r['epochs_run']} | {r['seconds']:.1f} | "
                             f"{r['A_singular_min']:.2f}..{r['A_singular_max']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def parse_options(items) -> dict:
    out = {}
    for it in items or []:
        k, _, v = it.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "deep"))
    ap.add_argument("--force", action="store_true", help="replace existing outputs")
    ap.add_argument("--time-rank", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--optimizers", default="adam,slf", help="comma-separated; each runs every depth")
    ap.add_argument("--flatness", type=float, default=0.0)
    ap.add_argument("--opt", action="append", metavar="KEY=VALUE", help="an optimizer option (repeatable)")
    ap.add_argument("--datasets", default="ml-1m,douban")
    ap.add_argument("--depths", default="0,1,2")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny run (ML-100K, 3 epochs) to check the script")
    args = ap.parse_args()
    args.optimizer_options = parse_options(args.opt)
    args.optimizers = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    depths = [int(x) for x in args.depths.split(",")]
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if args.quick:
        datasets, args.epochs, args.repeat, args.time_rank = ["ml-100k"], 3, 2, 16
    out = Path(args.out)
    for name in ("table.md", "results.json"):
        if (out / name).exists() and not args.force:
            ap.error(f"{out / name} exists; pass --force to replace it")
    load = os.getloadavg()
    load_text = f"load average {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} on {os.cpu_count()} cores"
    print(load_text, flush=True)
    timing = []
    if not args.skip_timing:
        train, _, _ = load_split("ml-100k" if args.quick else "ml-1m")
        timing = time_oracles(train, args.time_rank, depths, args.repeat)
    acc = []
    for name in datasets:
        acc += accuracy(name, depths, args)
    text = table(timing, acc, args, load_text)
    from lfopt.results import write_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "table.md", text.encode(), overwrite=True)
    payload = {"timing": timing, "accuracy": acc, "args": {k: v for k, v in vars(args).items()},
               "load_at_start": load_text}
    write_atomic(out / "results.json", json.dumps(payload, indent=2, default=str).encode(), overwrite=True)
    print()
    print(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
