"""Data-parallel scaling on this machine: 1 process vs 2 processes (one thread each).

For each optimizer, ``torchrun --nproc-per-node P`` runs this script's worker on
a synthetic rating set (default 20M ratings, 200K users x 20K items, long-tailed),
split 90/10 (seed 42), trained with ``LatentFactorModel(distributed=True)`` for
``--epochs`` epochs with no early stopping (P = 1: the plain one-process model,
``distributed=False``).  ``NUMBA_NUM_THREADS=1``, ``OMP_NUM_THREADS=1`` in every
process.  Reported: median seconds per epoch (the trainer's epoch time: oracles,
collectives and the optimizer's vector work; numba compilation excluded by a
warm-up on a tiny set), the speed-up, test RMSE of both and their difference,
peak RSS per process.  Every process generates the data itself (not timed).

Usage::

    python benchmarks/bench_distributed.py --nnz 20000000 --optimizers als slf sgd adam \
        --out benchmarks/results/distributed.md
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: per optimizer: options (adam takes full-batch steps: the data-parallel form that scales)
OPTIONS = {"als": {}, "slf": {}, "sslf": {}, "sgd": {"lr": 0.01}, "adam": {"batch_size": 0, "lr": 0.01},
           "adago": {"batch_size": 0}}


def worker(args) -> None:
    import resource

    import numpy as np

    import lfopt

    distributed = args.procs > 1
    if distributed:
        comm = lfopt.dist.init("gloo")
        rank = comm.rank
    else:
        rank = 0
    # compile (or load from numba's cache) on a tiny problem first
    tiny = lfopt.synthetic(n_users=60, n_items=50, nnz=1500, seed=0)
    lfopt.LatentFactorModel(rank=4, optimizer=args.optimizer, epochs=2, validation=None, patience=None,
                            distributed=distributed, **OPTIONS[args.optimizer]).fit(tiny)
    t0 = time.perf_counter()
    data = lfopt.synthetic(n_users=args.users, n_items=args.items, nnz=args.nnz, seed=7)
    train, test = lfopt.random_split(data, 0.1, seed=42)
    del data
    gen = time.perf_counter() - t0
    model = lfopt.LatentFactorModel(rank=args.rank, optimizer=args.optimizer, epochs=args.epochs, validation=None,
                                    patience=None, distributed=distributed, **OPTIONS[args.optimizer])
    t1 = time.perf_counter()
    model.fit(train)
    fit = time.perf_counter() - t1
    epochs = [r["epoch_seconds"] for r in model.history_]
    rmse = model.evaluate(test)["rmse"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    allreduce_ms = None
    if distributed:  # one all-reduce of the parameter vector, the unit of the communication model
        buf = np.ones(model.layout_.size, dtype=np.float32)
        times = []
        for _ in range(5):
            comm.barrier()
            t2 = time.perf_counter()
            comm.allreduce_(buf)
            times.append(time.perf_counter() - t2)
        allreduce_ms = 1e3 * statistics.median(times)
    if rank == 0:
        out = {"optimizer": args.optimizer, "processes": args.procs, "epoch_seconds": epochs,
               "median_epoch_s": statistics.median(epochs[1:] if len(epochs) > 2 else epochs), "fit_s": fit,
               "data_s": gen, "test_rmse": rmse, "peak_rss_gib": peak, "nnz": args.nnz, "rank": args.rank,
               "users": args.users, "items": args.items,
               "allreduce_ms": allreduce_ms, "y_floats": model.layout_.size}
        Path(args.result).write_text(json.dumps(out))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(opt: str, nproc: int, args, tmp: Path) -> dict:
    result = tmp / f"{opt}_{nproc}.json"
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
           "127.0.0.1", "--master-port", str(_port()), __file__, "--worker", "--optimizer", opt,
           "--procs", str(nproc), "--result", str(result), "--nnz", str(args.nnz), "--users", str(args.users),
           "--items", str(args.items), "--rank", str(args.rank), "--epochs", str(args.epochs)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT))
    if run.returncode != 0:
        raise SystemExit(f"{opt} with {nproc} processes failed:\n{run.stderr[-4000:]}")
    return json.loads(result.read_text())


def _pooled(runs: list) -> dict:
    """The first run's record with the median over the runs of their median epoch seconds."""
    out = dict(runs[0])
    out["median_epoch_s"] = statistics.median(r["median_epoch_s"] for r in runs)
    out["runs_epoch_s"] = [r["median_epoch_s"] for r in runs]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nnz", type=int, default=20_000_000)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=1,
                    help="run 1 process, then 2, this many times, alternating (the host's speed drifts between runs: "
                    "the table gives the medians over the runs and the speed-up of each pair)")
    ap.add_argument("--optimizers", nargs="+", default=["als", "slf", "sgd", "adam"], choices=sorted(OPTIONS))
    ap.add_argument("--out", default=None, help="append the table (markdown) to this file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--optimizer", help=argparse.SUPPRESS)
    ap.add_argument("--procs", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        for opt in args.optimizers:
            runs = [(launch(opt, 1, args, Path(d)), launch(opt, 2, args, Path(d))) for _ in range(args.repeat)]
            one, two = (_pooled([run[k] for run in runs]) for k in (0, 1))
            two["pairs"] = [a["median_epoch_s"] / b["median_epoch_s"] for a, b in runs]
            rows.append((opt, one, two))
            print(f"{opt}: 1 process {one['median_epoch_s']:.2f} s/epoch, 2 processes {two['median_epoch_s']:.2f} "
                  f"s/epoch, speed-up {one['median_epoch_s'] / two['median_epoch_s']:.2f}; test RMSE "
                  f"{one['test_rmse']:.4f} / {two['test_rmse']:.4f}", flush=True)
    lines = [f"# Data-parallel scaling: {args.nnz:,} synthetic ratings ({args.users:,} users x {args.items:,} items), "
             f"rank {args.rank}, {args.epochs} epochs",
             "",
             "`python benchmarks/bench_distributed.py " + " ".join(sys.argv[1:]) + "`; one thread per process "
             f"(NUMBA_NUM_THREADS=1), gloo on loopback; load average {load:.2f} at the start.",
             "Median seconds per epoch over epochs 2..E (compilation excluded; with --repeat, the median over the "
             "runs of that, and the speed-up of each 1-process / 2-process pair run back to back); test RMSE on the "
             "10 % held out.",
             "",
             "| optimizer | 1 process s/epoch | 2 processes s/epoch | speed-up | each pair | test RMSE 1 | "
             "test RMSE 2 | diff | peak RSS / process GiB (1, 2) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for opt, one, two in rows:
        lines.append(f"| {opt} | {one['median_epoch_s']:.2f} | {two['median_epoch_s']:.2f} | "
                     f"{one['median_epoch_s'] / two['median_epoch_s']:.2f} | "
                     f"{', '.join(f'{x:.2f}' for x in two['pairs'])} | {one['test_rmse']:.4f} | "
                     f"{two['test_rmse']:.4f} | {two['test_rmse'] - one['test_rmse']:+.4f} | "
                     f"{one['peak_rss_gib']:.2f}, {two['peak_rss_gib']:.2f} |")
    if rows:
        two = rows[0][2]
        mb = 4 * two["y_floats"] / 2**20
        lines += ["", f"One all-reduce of the parameter vector ({two['y_floats']:,} floats, {mb:.0f} MiB) between the two "
                  f"processes: {two['allreduce_ms']:.1f} ms (median of 5)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        sys.path.insert(0, str(ROOT))
        with open(args.out, "a") as f:  # each run adds its table
            f.write(text + "\n")


if __name__ == "__main__":
    main()
