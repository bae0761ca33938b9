"""Memory and time of building a large synthetic dataset and its CSR / CSC views.

For each ``--nnz`` a fresh Python process (so that peak RSS is that size's own)
runs ``lfopt.synthetic(n_users, n_items, nnz)``, then builds ``data.csr`` and
``data.csc``, and reports:

* ``gen s``: seconds of ``lfopt.synthetic`` (numba warmed up on a tiny set first),
* ``views s``: seconds to build both views,
* ``B/rating``: bytes per rating of the arrays kept (users, items, values and
  both views' indptr, indices, data and order), ``nbytes`` summed,
* ``peak RSS``: the process's peak resident memory (``ru_maxrss``), and the
  part of it above the process's RSS before generation (``above base``).

With ``--train OPT ...`` it instead trains each optimizer (a fresh process each) on
the largest ``--nnz`` at ``--rank`` for ``--epochs`` epochs and reports seconds per
epoch, the training RMSE and the process's peak RSS.

Usage::

    python benchmarks/bench_scale.py --nnz 5000000 20000000 --users 500000 --items 50000 \
        --out benchmarks/results/scale.md
    python benchmarks/bench_scale.py --nnz 100000000 --train sgd als adam slf --rank 64 --epochs 3 \
        --out benchmarks/results/scale.md --label "training 100M ratings at rank 64"
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def view_bytes(data) -> dict:
    """nbytes of the per-entry arrays of an Interactions and of its built views."""
    arrays = {"users": data.users, "items": data.items, "values": data.values}
    for label in ("csr", "csc"):
        view = getattr(data, label)
        for part in ("indptr", "indices", "data", "order"):
            arrays[f"{label}.{part}"] = getattr(view, part)
    return {k: int(v.nbytes) for k, v in arrays.items()}


def measure_one(nnz: int, users: int, items: int, seed: int) -> dict:
    import lfopt

    lfopt.synthetic(n_users=50, n_items=40, nnz=500, seed=seed).csr  # warm numba (compile or cache load)
    base = _rss_bytes()
    t0 = time.perf_counter()
    data = lfopt.synthetic(n_users=users, n_items=items, nnz=nnz, seed=seed)
    t1 = time.perf_counter()
    data.csr, data.csc
    t2 = time.perf_counter()
    parts = view_bytes(data)
    total = sum(parts.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "nnz": nnz, "users": users, "items": items, "gen_s": t1 - t0, "views_s": t2 - t1,
        "bytes_per_rating": total / nnz, "array_bytes": total, "parts": parts,
        "peak_rss": peak, "base_rss": base, "peak_above_base": peak - base,
        "min_user_deg": int(data.user_counts().min()), "min_item_deg": int(data.item_counts().min()),
        "max_user_deg": int(data.user_counts().max()), "max_item_deg": int(data.item_counts().max()),
    }


def train_one(nnz: int, users: int, items: int, seed: int, optimizer: str, rank: int, epochs: int) -> dict:
    """Train ``optimizer`` on the synthetic set for ``epochs`` epochs (no validation, no refit);
    seconds per epoch (numba warmed up on a tiny set first) and the process's peak RSS."""
    import lfopt

    # "adam" is full batch here; "adam-auto" its default mini-batches (batch_size="auto": 8192 at 100M
    # ratings, ~12K steps; lazy="auto" makes them row-sparse at this size), "adam-dense" the same
    # batches with a dense moment update of all (m + n)(f + 1) parameters each step
    opts = {"adam": {"batch_size": 0, "lr": 0.01}, "adam-auto": {"batch_size": "auto"},
            "adam-dense": {"batch_size": "auto", "lazy": False}}.get(optimizer, {})
    optimizer = optimizer.split("-")[0]
    tiny = lfopt.synthetic(n_users=60, n_items=50, nnz=1500, seed=0)
    lfopt.LatentFactorModel(rank=4, optimizer=optimizer, epochs=2, validation=None, refit=False, **opts).fit(tiny)
    t0 = time.perf_counter()
    data = lfopt.synthetic(n_users=users, n_items=items, nnz=nnz, seed=seed)
    gen = time.perf_counter() - t0
    model = lfopt.LatentFactorModel(rank=rank, optimizer=optimizer, epochs=epochs, validation=None, refit=False,
                                    patience=None, **opts)
    t1 = time.perf_counter()
    model.fit(data)
    fit = time.perf_counter() - t1
    hist = model.history_
    return {"nnz": nnz, "users": users, "items": items, "optimizer": optimizer, "options": opts, "rank": rank, "gen_s": gen,
            "fit_s": fit, "epoch_seconds": [r["epoch_seconds"] for r in hist],
            "train_rmse": [r.get("train_rmse") for r in hist], "stopped": model.train_result_.stopped,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "load": os.getloadavg()[0]}


def train_table(rows: list[dict]) -> str:
    lines = ["| optimizer | nnz | rank | s/epoch (each epoch) | train RMSE after | peak RSS | load at end |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        secs = ", ".join(f"{x:.1f}" for x in r["epoch_seconds"])
        name = r["optimizer"] + "".join(f" {k}={v}" for k, v in r.get("options", {}).items())
        lines.append(f"| {name} | {r['nnz']:,} | {r['rank']} | {secs} | {r['train_rmse'][-1]:.4f} | "
                     f"{_gib(r['peak_rss'])} | {r['load']:.1f} |")
    return "\n".join(lines)


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def table(rows: list[dict]) -> str:
    lines = [
        "| nnz | users x items | gen s | views s | B/rating | arrays | peak RSS | above base | user deg min/max | item deg min/max |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['nnz']:,} | {r['users']:,} x {r['items']:,} | {r['gen_s']:.1f} | {r['views_s']:.1f} | "
            f"{r['bytes_per_rating']:.1f} | {_gib(r['array_bytes'])} | {_gib(r['peak_rss'])} | "
            f"{_gib(r['peak_above_base'])} | {r['min_user_deg']}/{r['max_user_deg']} | "
            f"{r['min_item_deg']}/{r['max_item_deg']} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nnz", type=int, nargs="+", default=[5_000_000, 20_000_000])
    p.add_argument("--users", type=int, default=500_000)
    p.add_argument("--items", type=int, default=50_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the table (markdown) to this file")
    p.add_argument("--label", default="", help="a heading for the table in --out")
    p.add_argument("--train", nargs="+", metavar="OPTIMIZER", default=None,
                   help="instead: train these optimizers on the largest --nnz (one fresh process each) and report "
                   "seconds per epoch and peak RSS")
    p.add_argument("--rank", type=int, default=64, help="with --train: the model rank (default 64)")
    p.add_argument("--epochs", type=int, default=3, help="with --train: epochs (default 3)")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child: one size, JSON out
    p.add_argument("--optimizer", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        if args.optimizer:
            print(json.dumps(train_one(args.nnz[0], args.users, args.items, args.seed, args.optimizer, args.rank,
                                       args.epochs)))
        else:
            print(json.dumps(measure_one(args.nnz[0], args.users, args.items, args.seed)))
        return 0
    rows = []
    jobs = [(max(args.nnz), opt) for opt in args.train] if args.train else [(nnz, None) for nnz in args.nnz]
    for nnz, opt in jobs:
        cmd = [sys.executable, __file__, "--one", "--nnz", str(nnz), "--users", str(args.users),
               "--items", str(args.items), "--seed", str(args.seed), "--rank", str(args.rank),
               "--epochs", str(args.epochs)] + (["--optimizer", opt] if opt else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"nnz={nnz}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "parts"}), flush=True)
    text = train_table(rows) if args.train else table(rows)
    if rows and not args.train:
        text += "\n\nbytes per rating by array (last size): " + ", ".join(
            f"{k} {v / rows[-1]['nnz']:.2f}" for k, v in rows[-1]["parts"].items())
    print(text)
    if args.out:
        heading = f"## {args.label}\n\n" if args.label else ""
        with open(args.out, "a") as f:
            f.write(f"{heading}`python benchmarks/bench_scale.py {' '.join(argv or sys.argv[1:])}`\n\n{text}\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
