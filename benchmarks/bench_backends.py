"""Time every LF oracle of the numba and torch backends on ML-1M, side by side.

    python benchmarks/bench_backends.py                       # rank 20, torch on the CPU
    python benchmarks/bench_backends.py --device cuda --rank 256 --peak-gbps 3350

Both kernel sets get the same data, parameters, row weights (count-weighted L2,
lam = 0.05) and directions.  Every oracle is warmed up first (numba compiles,
torch/cuDNN/cuSPARSE initialise), then timed ``--repeats`` times; the table shows
the median in milliseconds and the ratio torch / numba (below 1: torch is faster).
The backends take turns call by call, so that a busy machine slows both alike.
On a CUDA device torch's times are taken between ``torch.cuda.synchronize()`` calls,
and the table adds the effective bandwidth of the two full-batch sweeps (gradient
and Gauss-Newton product): per training entry they must move at least the gathered
and scattered factor rows (2 f floats read, 2 f floats written) plus the entry's
two indices and value, divided by the time, as a fraction of ``--peak-gbps``
(3350 GB/s: H100 SXM HBM3).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lfopt  # noqa: E402
from lfopt.backend import get_backend  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-1m" / "ratings.dat"


def problem(train, f, use_bias, seed=0):
    rng = np.random.default_rng(seed)
    m, n = train.shape
    nb = (lambda k: k) if use_bias else (lambda k: 0)
    mu = np.float32(train.values.mean() if use_bias else 0.0)
    params = (rng.normal(0, 0.1, nb(m)).astype(np.float32), rng.normal(0, 0.1, nb(n)).astype(np.float32),
              rng.normal(0, 0.1 / np.sqrt(f), (m, f)).astype(np.float32) + (0 if use_bias else 0.4),
              rng.normal(0, 0.1 / np.sqrt(f), (n, f)).astype(np.float32) + (0 if use_bias else 0.4))
    cu = train.user_counts().astype(np.float32)
    ci = train.item_counts().astype(np.float32)
    lam = np.float32(0.05)
    w = (lam * cu, lam * ci, lam * cu, lam * ci)
    visits = (np.full(m, lam, np.float32), np.full(n, lam, np.float32), np.full(m, lam, np.float32),
              np.full(n, lam, np.float32))
    direction = tuple(rng.normal(0, 0.01, p.shape).astype(np.float32) for p in params)
    batch = rng.choice(train.nnz, 8192, replace=False)
    return mu, params, w, visits, direction, batch


def oracles(be, train, f, use_bias, data):
    """name -> zero-argument callable running one oracle call on backend ``be``."""
    mu, params, w, visits, direction, batch = data
    K = be.lf_kernels(train, use_bias)
    A = lambda tup: tuple(be.asarray(np.array(x, copy=True)) for x in tup)  # noqa: E731
    P, W, V, D = A(params), A(w), A(visits), A(direction)
    out = tuple(be.zeros_like(x) for x in P)
    out2 = tuple(be.zeros_like(x) for x in P)
    bidx = be.index(batch)
    scale = train.nnz / len(batch)
    als_params = tuple(be.copy(x) for x in P)
    handle = K.gn_blocks(P, W, 0.1, 1.0)
    return K, {
        "residual_grad": lambda: K.residual_grad(mu, P, W, out),
        "sse": lambda: K.sse(mu, P),
        "gvp": lambda: K.gvp(P, D, W, out),
        "gn_diag": lambda: K.gn_diag(P, W, out),
        "line_sums": lambda: K.line_sums(mu, P, D),
        "batch_grad(8192)": lambda: K.batch_grad(mu, P, V, bidx, scale, out, out2),
        "gn_blocks": lambda: K.gn_blocks(P, W, 0.1, 1.0),
        "block_solve": lambda: K.block_solve(handle, D, out),
        "als_sweep": lambda: K.als_sweep(mu, als_params, W),
    }


def syncer(be):
    """torch.cuda.synchronize for a CUDA torch backend, else None."""
    if getattr(be, "name", "") == "torch" and str(be.device).startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return None


def time_interleaved(calls, repeats, warmup):
    """Median seconds of each (fn, sync) in ``calls``, the backends taking turns call by call
    (so that a busy machine slows them alike)."""
    for fn, sync in calls:
        for _ in range(warmup):
            fn()
        if sync:
            sync()
    times = [[] for _ in calls]
    for _ in range(repeats):
        for k, (fn, sync) in enumerate(calls):
            t0 = time.perf_counter()
            fn()
            if sync:
                sync()
            times[k].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="ratings file (default: ML-1M)")
    ap.add_argument("--rank", type=int, default=20)
    ap.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    ap.add_argument("--no-bias", action="store_true", help="the plain model p.q (default: with biases)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--peak-gbps", type=float, default=3350.0, help="peak memory bandwidth of the GPU, GB/s")
    ap.add_argument("--skip-numba", action="store_true", help="time torch only")
    args = ap.parse_args(argv)

    train = lfopt.load_data(args.data)
    f, use_bias = args.rank, not args.no_bias
    data = problem(train, f, use_bias)
    import torch

    print(f"{Path(args.data).name}: {train.n_users} users x {train.n_items} items, {train.nnz} entries; rank {f}, "
          f"bias {use_bias}; torch {torch.__version__} on {args.device} ({torch.get_num_threads()} CPU threads); "
          f"median of {args.repeats} after {args.warmup} warm-up calls")
    backends = [("torch", get_backend("torch", args.device))]
    if not args.skip_numba:
        nb = get_backend("numba")
        if hasattr(nb, "lf_kernels"):
            backends.insert(0, ("numba", nb))
        else:
            print("(the numba backend has no lf_kernels yet: timing torch alone)")
    tables = {}
    for label, be in backends:
        t0 = time.perf_counter()
        _, tables[label] = oracles(be, train, f, use_bias, data)
        print(f"  {label}: kernel set built in {(time.perf_counter() - t0) * 1e3:.0f} ms")
    results = {label: {} for label, _ in backends}
    for name in tables[backends[0][0]]:
        calls = [(tables[label][name], syncer(be)) for label, be in backends]
        for (label, _), t in zip(backends, time_interleaved(calls, args.repeats, args.warmup)):
            results[label][name] = t
    names = list(next(iter(results.values())))
    cols = [lab for lab, _ in backends]
    head = f"{'oracle':<18}" + "".join(f"{c + ' ms':>12}" for c in cols)
    if len(cols) == 2:
        head += f"{'torch/numba':>13}"
    cuda = str(args.device).startswith("cuda")
    if cuda:
        head += f"{'GB/s':>9}{'% peak':>8}"
    print(head)
    print("-" * len(head))
    # bytes the two full-batch sweeps must move per entry: 2 f floats gathered, 2 f floats
    # scattered, the value (4 B) and the two indices (8 B each, int64)
    per_entry = 4 * 4 * f + 4 + 2 * 8
    for name in names:
        row = f"{name:<18}" + "".join(f"{results[c][name] * 1e3:>12.2f}" for c in cols)
        if len(cols) == 2:
            row += f"{results['torch'][name] / results['numba'][name]:>13.2f}"
        if cuda and name in ("residual_grad", "gvp"):
            gbps = train.nnz * per_entry / results["torch"][name] / 1e9
            row += f"{gbps:>9.0f}{100 * gbps / args.peak_gbps:>7.1f}%"
        print(row)


if __name__ == "__main__":
    main()
