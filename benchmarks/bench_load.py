"""Time and memory of loading a large MovieLens-25M-like ``ratings.csv`` (issue 11, item 1).

Writes ``--lines`` ratings (default 100M; about 2.7 GB of text) in the layout of
ML-25M's ``ratings.csv`` (header ``userId,movieId,rating,timestamp``, lines
sorted by user then movie, half-star ratings, epoch-second times; the entries
are those of ``lfopt.synthetic``: long-tailed users and items), then loads it
with ``lfopt.load_data`` in a fresh process per reader and reports

* ``load s``: seconds of ``lfopt.load_data(path)`` (numba warmed up first on a
  small file read the same way),
* ``views s``: seconds to build ``data.csr`` and ``data.csc``,
* ``B/rating``: bytes per rating of the arrays kept, ``nbytes`` summed: users,
  items, values, timestamps and both views' indptr, indices, data and order
  (also without the timestamps, which ML files carry: 8 bytes per rating),
* ``peak RSS``: the process's peak resident memory (``VmHWM``) after loading
  and after building the views, and the RSS before loading (``base``).

Readers: ``chunked`` (the default: the file in pieces of ``--chunk-bytes``) and
``whole`` (``chunk_bytes=0``: the file read whole, then parsed by pandas at
once; the reader before issue 11), measured with ``--whole``.

Usage::

    python benchmarks/bench_load.py --lines 20000000 --whole --out benchmarks/results/load.md
    python benchmarks/bench_load.py --lines 100000000 --out benchmarks/results/load.md

The file goes to ``--dir`` (default /work/scratch, else the temp folder) and is
deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from numba import njit

HEADER = b"userId,movieId,rating,timestamp\n"
#: ML-25M: 162,541 users, 59,047 movies with IDs up to 209,171, times 1995-01-09 .. 2019-11-21
ML25M_USERS, ML25M_ITEMS, ML25M_MAX_MOVIE_ID = 162_541, 59_047, 209_171
T_FIRST, T_LAST = 789_652_009, 1_574_327_703


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


# ------------------------------------------------------------------ the file
@njit(cache=True, nogil=True)
def _put_int(out, p, x):
    """The decimal digits of ``x >= 0`` into ``out`` at ``p``; returns the position after them."""
    start = p
    while True:
        out[p] = 48 + x % 10
        p += 1
        x //= 10
        if x == 0:
            break
    i, j = start, p - 1
    while i < j:
        out[i], out[j] = out[j], out[i]
        i += 1
        j -= 1
    return p


@njit(cache=True, nogil=True)
def _format_lines(users, movies, halves, times, out):
    """ML-25M lines ``user,movie,r.r,time\\n`` (rating = halves / 2) into ``out``; returns the bytes written."""
    p = 0
    for k in range(users.shape[0]):
        p = _put_int(out, p, users[k])
        out[p] = 44
        p = _put_int(out, p + 1, movies[k])
        r = halves[k]
        out[p] = 44
        out[p + 1] = 48 + r // 2
        out[p + 2] = 46
        out[p + 3] = 48 + 5 * (r % 2)
        out[p + 4] = 44
        p = _put_int(out, p + 5, times[k])
        out[p] = 10
        p += 1
    return p


def write_file(path: Path, lines: int, users: int, items: int, seed: int) -> dict:
    """Write the ML-25M-like file; returns its size and the time taken."""
    import lfopt

    t0 = time.perf_counter()
    data = lfopt.synthetic(n_users=users, n_items=items, nnz=lines, seed=seed, mean=3.5, noise_std=0.9)
    csr = data.csr  # entries by user, movies sorted within a user: the order of ML-25M's file
    rng = np.random.default_rng(seed + 1)
    max_id = max(ML25M_MAX_MOVIE_ID * items // ML25M_ITEMS, items)
    movie_ids = np.sort(rng.choice(np.arange(1, max_id + 1), size=items, replace=False)).astype(np.int64)
    block_users = max(1, users * 2_000_000 // max(lines, 1))
    with open(path, "wb") as f:
        f.write(HEADER)
        for u0 in range(0, users, block_users):
            u1 = min(users, u0 + block_users)
            a, b = int(csr.indptr[u0]), int(csr.indptr[u1])
            n = b - a
            if n == 0:
                continue
            uid = np.repeat(np.arange(u0 + 1, u1 + 1, dtype=np.int64), np.diff(csr.indptr[u0:u1 + 1]))
            halves = np.clip(np.rint(csr.data[a:b].astype(np.float64) * 2), 1, 10).astype(np.int64)
            times = rng.integers(T_FIRST, T_LAST + 1, n, dtype=np.int64)
            buf = np.empty(n * 40, dtype=np.uint8)
            end = _format_lines(uid, movie_ids[csr.indices[a:b]], halves, times, buf)
            f.write(buf[:end].tobytes())
    return {"bytes": path.stat().st_size, "write_s": time.perf_counter() - t0}


# ------------------------------------------------------------- one reader
def measure(path: Path, reader: str, chunk_bytes: int | None) -> dict:
    """Load ``path`` in this (fresh) process with one reader; time, memory and bytes per rating."""
    import lfopt

    cb = 0 if reader == "whole" else chunk_bytes
    warm = Path(tempfile.mkdtemp()) / "ratings.csv"  # numba's kernels compiled or loaded from cache first
    warm.write_bytes(HEADER + b"".join(b"%d,%d,4.5,%d\n" % (u, i, T_FIRST + u) for u in range(1, 60)
                                       for i in (u % 7 + 1, u % 7 + 9)))
    lfopt.load_data(warm, chunk_bytes=0 if cb == 0 else 64).csr
    lfopt.load_data(warm, chunk_bytes=0 if cb == 0 else 64).csc
    warm.unlink()
    warm.parent.rmdir()
    base = _status_kib("VmRSS") * 1024
    t0 = time.perf_counter()
    data = lfopt.load_data(path, chunk_bytes=cb)
    t1 = time.perf_counter()
    peak_load = _status_kib("VmHWM") * 1024
    csr, csc = data.csr, data.csc
    t2 = time.perf_counter()
    peak_views = _status_kib("VmHWM") * 1024
    parts = {"users": data.users, "items": data.items, "values": data.values}
    if data.timestamps is not None:
        parts["timestamps"] = data.timestamps
    for label, view in (("csr", csr), ("csc", csc)):
        for part in ("indptr", "indices", "data", "order"):
            parts[f"{label}.{part}"] = getattr(view, part)
    parts = {k: int(v.nbytes) for k, v in parts.items()}
    total = sum(parts.values())
    return {
        "reader": reader, "chunk_bytes": cb, "nnz": data.nnz, "users": data.n_users, "items": data.n_items,
        "load_s": t1 - t0, "views_s": t2 - t1, "base_rss": base, "peak_after_load": peak_load,
        "peak_after_views": peak_views, "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "array_bytes": total, "bytes_per_rating": total / data.nnz,
        "bytes_per_rating_no_time": (total - parts.get("timestamps", 0)) / data.nnz, "parts": parts,
    }


def table(rows: list[dict], file_bytes: int) -> str:
    lines = [
        f"file: {file_bytes / 2**30:.2f} GiB of text",
        "",
        "| reader | ratings | users x items | load s | views s | B/rating | B/rating w/o times | arrays | "
        "base RSS | peak RSS after load | peak RSS after views |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        label = r["reader"] + (f" ({r['chunk_bytes'] >> 20} MiB pieces)" if r["chunk_bytes"] else "")
        lines.append(
            f"| {label} | {r['nnz']:,} | {r['users']:,} x {r['items']:,} | {r['load_s']:.1f} | {r['views_s']:.1f} | "
            f"{r['bytes_per_rating']:.1f} | {r['bytes_per_rating_no_time']:.1f} | {_gib(r['array_bytes'])} | "
            f"{_gib(r['base_rss'])} | {_gib(r['peak_after_load'])} | {_gib(r['peak_after_views'])} |")
    return "\n".join(lines)


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=100_000_000, help="ratings in the file (default 100M)")
    p.add_argument("--users", type=int, default=None,
                   help="users (default: ML-25M's 162,541 scaled with --lines / 25M, at least 1000)")
    p.add_argument("--items", type=int, default=ML25M_ITEMS, help="movies (default ML-25M's 59,047)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default=None, help="folder for the file (default /work/scratch, else the temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the file (else deleted at the end)")
    p.add_argument("--file", default=None, help="load this existing ratings.csv instead of writing one")
    p.add_argument("--whole", action="store_true", help="also measure the whole-file reader (chunk_bytes=0)")
    p.add_argument("--no-chunked", action="store_true", help="skip the chunked reader")
    p.add_argument("--chunk-bytes", type=int, default=None, help="piece size of the chunked reader "
                   "(default lfopt.data.io.CHUNK_BYTES)")
    p.add_argument("--out", help="append the table (markdown) to this file")
    p.add_argument("--label", default="", help="a heading for the table in --out")
    p.add_argument("--write", help=argparse.SUPPRESS)  # child: write the file, JSON out
    p.add_argument("--measure", help=argparse.SUPPRESS)  # child: load the file with --reader, JSON out
    p.add_argument("--reader", default="chunked", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    users = args.users or max(1000, int(ML25M_USERS * args.lines / 25_000_095))
    if args.write:
        print(json.dumps(write_file(Path(args.write), args.lines, users, args.items, args.seed)))
        return 0
    if args.measure:
        from lfopt.data.io import CHUNK_BYTES

        cb = CHUNK_BYTES if args.chunk_bytes is None else args.chunk_bytes
        print(json.dumps(measure(Path(args.measure), args.reader, cb)))
        return 0

    if args.file:
        path, made = Path(args.file), None
    else:
        folder = Path(args.dir) if args.dir else (Path("/work/scratch") if Path("/work/scratch").is_dir()
                                                  else Path(tempfile.gettempdir()))
        made = Path(tempfile.mkdtemp(prefix="bench_load_", dir=folder))
        path = made / "ratings.csv"
    try:
        if made is not None:
            info = _child(["--write", str(path), "--lines", str(args.lines), "--users", str(users),
                           "--items", str(args.items), "--seed", str(args.seed)])
            print(f"wrote {path}: {info['bytes'] / 2**30:.2f} GiB in {info['write_s']:.0f} s", flush=True)
        readers = ([] if args.no_chunked else ["chunked"]) + (["whole"] if args.whole else [])
        rows = []
        for reader in readers:
            extra = [] if args.chunk_bytes is None else ["--chunk-bytes", str(args.chunk_bytes)]
            row = _child(["--measure", str(path), "--reader", reader, *extra])
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "parts"}), flush=True)
        text = table(rows, path.stat().st_size)
        if rows:
            text += "\n\nbytes per rating by array: " + ", ".join(
                f"{k} {v / rows[0]['nnz']:.2f}" for k, v in rows[0]["parts"].items())
        print(text)
        if args.out:
            load = os.getloadavg()
            heading = f"## {args.label}\n\n" if args.label else ""
            with open(args.out, "a") as f:
                f.write(f"{heading}`python benchmarks/bench_load.py {shlex.join(argv or sys.argv[1:])}` "
                        f"(load average {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} when it ended)\n\n{text}\n\n")
    finally:
        if made is not None and not args.keep:
            path.unlink(missing_ok=True)
            made.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
