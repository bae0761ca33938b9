"""ALS epochs and block-preconditioner builds: the former scalar kernels against the current ones.

Usage: python benchmarks/bench_solves.py [--data PATH] [--ranks 20 50 100] [--repeat 5] [--threads N]
       python benchmarks/bench_solves.py --slf-memory   (3 SLF epochs, rank 100, on a 200K x 80K
                                                        synthetic set with 770K entries: peak RSS)

On ML-1M (90/10 split, seed 42), for every rank: the seconds of one ALS epoch (both sides) and of
one build of SLF's block preconditioner (``gn_blocks``, both sides) with the former kernels (a
private copy below: scalar outer-product Gram, hand-written float64 Cholesky, dense float64
blocks) and with ``lfopt.kernels.lf`` (BLAS-3 / register-blocked Gram, blocked Cholesky, the
Woodbury dual for rows with fewer entries than g), run interleaved, after a warm-up (compilation
excluded).  The arithmetic rate is given for the nominal dense work of an epoch:

    Gram:      |K| g (g + 1) flops per side (g (g + 1) / 2 multiply-adds per entry: symmetry used)
    Cholesky:  (m + n) g^3 / 3 flops

(g = rank + 1), the same count for both kernels (the dual form does less work on short rows),
against the peak printed at the top: cores x 2 FMA units x SIMD float32 lanes x 2 flops x GHz
(lanes from /proc/cpuinfo's flags: 16 with avx512f, 8 with avx2; GHz the nominal clock
(BogoMIPS / 2) unless --ghz is given).  The machine's load average is printed as well: on a
shared machine other processes take cores, and the timings with them.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from numba import get_num_threads, njit, prange, set_num_threads

import lfopt
from lfopt.kernels import lf as K
from lfopt.models.lf import LFObjective

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m" / "ratings.dat"
_JIT = dict(cache=True, fastmath=True, nogil=True)


# ------------------------------------------- the former kernels (reference copy)
# the former per-row Gram and Cholesky are kept in lfopt.kernels.lf (the tests' reference)
_old_cholesky_solve = K.cholesky_solve
_old_row_gram = K._row_gram


@njit(parallel=True, **_JIT)
def _old_als_side(indptr, indices, data, mu, b_other, Y, wx, wb, use_bias, X, b_self):
    f = Y.shape[1]
    g = f + 1 if use_bias else f
    for u in prange(indptr.shape[0] - 1):
        start = indptr[u]
        end = indptr[u + 1]
        n = end - start
        if n == 0:
            for d in range(f):
                X[u, d] = 0.0
            if use_bias:
                b_self[u] = 0.0
            continue
        G = np.empty((g, g), dtype=np.float32)
        z = np.empty(g, dtype=np.float32)
        _old_row_gram(start, end, indices, Y, use_bias, G, z)
        A = G.astype(np.float64)
        rhs = np.zeros(g, dtype=np.float64)
        for k in range(start, end):
            i = indices[k]
            target = np.float64(data[k] - mu)
            if use_bias:
                target -= b_other[i]
                rhs[f] += target
            for d in range(f):
                rhs[d] += Y[i, d] * target
        reg = np.float64(wx[u])
        if reg == 0.0:
            reg = 1e-6 * n
        for d in range(f):
            A[d, d] += reg
        if use_bias:
            A[f, f] += wb[u]
        _old_cholesky_solve(A, rhs)
        for d in range(f):
            X[u, d] = rhs[d]
        if use_bias:
            b_self[u] = rhs[f]


@njit(parallel=True, **_JIT)
def _old_side_gn_blocks(indptr, indices, Y, wx, wb, use_bias, shift, diag_scale, blocks):
    f = Y.shape[1]
    g = f + 1 if use_bias else f
    for u in prange(indptr.shape[0] - 1):
        A = blocks[u]
        G = np.empty((g, g), dtype=np.float32)
        z = np.empty(g, dtype=np.float32)
        _old_row_gram(indptr[u], indptr[u + 1], indices, Y, use_bias, G, z)
        for d in range(g):
            for e in range(g):
                A[d, e] = G[d, e]
        reg = np.float64(wx[u])
        for d in range(f):
            A[d, d] = (A[d, d] + reg) * diag_scale + shift
        if use_bias:
            A[f, f] = (A[f, f] + wb[u]) * diag_scale + shift
        rhs = np.zeros(g, dtype=np.float64)
        _old_cholesky_solve(A, rhs)


# ----------------------------------------------------------------------- bench
def peak_gflops(ghz: float | None):
    """(peak GFLOP/s float32 of the cores numba uses, description)."""
    flags, bogomips = set(), None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                elif line.startswith("bogomips") and bogomips is None:
                    bogomips = float(line.split(":", 1)[1])
    except OSError:
        pass
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    if ghz is None:
        ghz = bogomips / 2000 if bogomips else 2.0
    cores = get_num_threads()
    return cores * 2 * lanes * 2 * ghz, (f"{cores} cores x 2 FMA units x {lanes} float32 lanes x 2 flops x "
                                         f"{ghz:.2f} GHz")


def timed(fns, reset, repeat):
    """Interleaved timings (seconds) of the callables in ``fns`` after one warm-up each."""
    for fn in fns.values():
        reset()
        fn()
    out = {k: [] for k in fns}
    for k in fns:
        out["cpu " + k] = []
    for _ in range(repeat):
        for k, fn in fns.items():
            reset()
            c = time.process_time()
            t = time.perf_counter()
            fn()
            out[k].append(time.perf_counter() - t)
            out["cpu " + k].append(time.process_time() - c)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT))
    ap.add_argument("--ranks", type=int, nargs="+", default=[20, 50, 100])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--ghz", type=float, default=None, help="clock for the peak (default: BogoMIPS / 2)")
    ap.add_argument("--lam", type=float, default=0.02)
    ap.add_argument("--slf-memory", action="store_true", help="only the SLF memory run (see the usage)")
    args = ap.parse_args()
    if args.threads:
        set_num_threads(args.threads)
    if args.slf_memory:
        return slf_memory()
    peak, how = peak_gflops(args.ghz)
    with K.single_threaded_blas() as blas:
        gram = f"BLAS ssyrk at {blas:#x} for g >= {K.BLAS_MIN_G}" if blas else "numba kernel (no threadpoolctl / BLAS)"
    print(f"threads: {get_num_threads()} (cores: {os.cpu_count()}), load average {os.getloadavg()[0]:.2f}; "
          f"Gram: {gram}")
    print(f"peak: {peak:.0f} GFLOP/s float32 = {how}")
    data = lfopt.load_data(args.data)
    train, _ = lfopt.random_split(data, 0.1, seed=42)
    m, n, nnz = train.n_users, train.n_items, train.nnz
    print(f"ML-1M train: {m} users, {n} items, {nnz} entries; {args.repeat} runs each")
    print("wall seconds median (min); cpu: core-seconds of all threads, median (what the kernels took of the "
          "cores, whatever else ran)")
    print(f"{'rank':>4} {'what':12} {'former':>16} {'current':>16} {'speed-up':>8} {'GFLOP/s former':>15} "
          f"{'current':>8} {'% peak':>7} {'cpu former':>10} {'current':>8}")
    for rank in args.ranks:
        obj = LFObjective(train, rank, lam=args.lam)
        y0 = obj.init_params(0.5, 0)
        y = y0.copy()
        bu, bi, P, Q = obj.unpack(y)
        wu, wi, wbu, wbi = obj.row_weights
        csr, csc = train.csr, train.csc
        mu = np.float32(obj.mu)
        g = rank + 1
        flops = 2 * nnz * g * (g + 1) + (m + n) * g ** 3 / 3

        def old_als():
            _old_als_side(csr.indptr, csr.indices, csr.data, mu, bi, Q, wu, wbu, True, P, bu)
            _old_als_side(csc.indptr, csc.indices, csc.data, mu, bu, P, wi, wbi, True, Q, bi)

        def reset():
            y[:] = y0

        t = timed({"former": old_als, "current": lambda: obj.als_sweep(y)}, reset, args.repeat)
        # the two agree (float32 rounding of the Gram in both)
        reset()
        old_als()
        ref = y.copy()
        reset()
        obj.als_sweep(y)
        diff = float(np.abs(y - ref).max() / np.abs(ref).max())
        _row(rank, "ALS epoch", t, flops, peak, f"max rel. diff {diff:.1e}")

        sh, sc = np.float64(0.1), np.float64(1.0)

        def old_blocks():
            ub = np.empty((m, g, g), dtype=np.float64)
            ib = np.empty((n, g, g), dtype=np.float64)
            _old_side_gn_blocks(csr.indptr, csr.indices, Q, wu, wbu, True, sh, sc, ub)
            _old_side_gn_blocks(csc.indptr, csc.indices, P, wi, wbi, True, sh, sc, ib)
            return ub, ib

        def new_blocks():
            return obj.kernels.gn_blocks(obj.unpack(y), obj._w, 0.1, 1.0)

        t = timed({"former": old_blocks, "current": new_blocks}, reset, args.repeat)
        h = new_blocks()
        mib_new = sum(s[4].nbytes for s in h[1]) / 2**20
        _row(rank, "gn_blocks", t, flops, peak, f"blocks: former {(m + n) * g * g * 8 / 2**20:.0f} MiB, "
             f"current {mib_new:.0f} MiB")


def slf_memory(epochs: int = 3, rank: int = 100):
    """Peak RSS of SLF (block preconditioner) on a long-tailed 200K x 80K set with 770K entries."""
    import resource
    import warnings

    from lfopt.optim.base import make_optimizer

    data = lfopt.synthetic(n_users=200_000, n_items=80_000, nnz=770_000, seed=0)
    g = rank + 1
    print(f"synthetic {data.shape[0]} x {data.shape[1]}, {data.nnz} entries, rank {rank}; the former dense float64 "
          f"blocks: {(sum(data.shape)) * g * g * 8 / 2**30:.1f} GiB")
    obj = LFObjective(data, rank=rank, lam=0.05)
    y = obj.init_params(0.1, 0)
    opt = make_optimizer("slf")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a Jacobi fallback would not measure the blocks
        for ep in range(1, epochs + 1):
            t = time.perf_counter()
            info = opt.epoch(obj, y, ep)
            print(f"epoch {ep}: {time.perf_counter() - t:.1f} s (compilation included in the first), loss "
                  f"{obj.loss(y):.4e}, cg_iters {info.get('cg_iters')}", flush=True)
    h = obj.kernels.gn_blocks(obj.unpack(y), obj._w, 0.1, 1.0)
    blocks = sum(side[4].nbytes + (side[1].nbytes if side[1].shape[0] else 0) for side in h[1])
    print(f"blocks now: {blocks / 2**20:.0f} MiB; peak RSS (ru_maxrss): "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def _row(rank, what, t, flops, peak, note):
    a, b = np.median(t["former"]), np.median(t["current"])
    ra, rb = flops / a / 1e9, flops / b / 1e9
    ca, cb = np.median(t["cpu former"]), np.median(t["cpu current"])
    print(f"{rank:4d} {what:12} {a:7.3f} ({min(t['former']):6.3f}) {b:7.3f} ({min(t['current']):6.3f}) "
          f"{a / b:7.1f}x {ra:15.1f} {rb:8.1f} {100 * rb / peak:6.1f}% {ca:10.3f} {cb:8.3f}   {note}", flush=True)


if __name__ == "__main__":
    main()
