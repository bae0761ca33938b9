"""Time the LF kernels and one epoch of each optimizer on ML-1M (90/10 split, seed 42).

Usage: python benchmarks/bench_kernels.py [--data PATH] [--rank 20] [--repeat 5]

Prints the median wall time of: loading the file, the gradient, a Gauss-Newton
vector product, the exact GN diagonal, an SGD epoch (rank 100 too), one SLF /
SSLF iteration with 10 CG steps, and an ALS / Adam / AdaGO epoch.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import lfopt
from lfopt.models.lf import LFObjective
from lfopt.optim.base import make_optimizer

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m" / "ratings.dat"


def median_time(fn, repeat):
    fn()  # warm-up (compilation)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT))
    ap.add_argument("--rank", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from numba import get_num_threads

    print(f"threads: {get_num_threads()} (cores: {os.cpu_count()})")
    t_load = median_time(lambda: lfopt.load_data(args.data), args.repeat)
    print(f"load {args.data}: {t_load * 1e3:.0f} ms")
    data = lfopt.load_data(args.data)
    train, _ = lfopt.random_split(data, 0.1, seed=42)
    for rank in sorted({args.rank, 100}):
        obj = LFObjective(train, rank, lam=0.02)
        y = obj.init_params(0.5, 0)
        g = np.empty_like(y)
        v = np.random.default_rng(0).standard_normal(y.size).astype(np.float32)
        out = np.empty_like(y)
        print(f"--- rank {rank}: {train.nnz} training entries, {obj.size} parameters")
        print(f"gradient            {median_time(lambda: obj.loss_grad(y, g), args.repeat) * 1e3:8.1f} ms")
        print(f"GN product          {median_time(lambda: obj.gvp(y, v, out), args.repeat) * 1e3:8.1f} ms")
        print(f"GN diagonal         {median_time(lambda: obj.gn_diag(y, out), args.repeat) * 1e3:8.1f} ms")
        print(f"loss                {median_time(lambda: obj.loss(y), args.repeat) * 1e3:8.1f} ms")
        yy = y.copy()
        print(f"SGD epoch           {median_time(lambda: obj.sgd_epoch(yy, 0.005, 1), args.repeat) * 1e3:8.1f} ms")
        for name, kw in [("slf", dict(cg_iters=10, cg_tol=1e-8)), ("sslf", dict(cg_iters=10, cg_tol=1e-8)),
                         ("als", {}), ("adam", {}), ("adago", {})]:
            if rank == 100 and name in ("slf", "sslf", "adago"):
                continue
            opt = make_optimizer(name, **kw)
            yy = y.copy()
            state = {"epoch": 0}

            def step():
                state["epoch"] += 1
                opt.epoch(obj, yy, state["epoch"])

            print(f"{name:5s} epoch          {median_time(step, max(1, args.repeat // 2)) * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
