"""The reliability catalogue of issue 9: bad input, faults and races, each case run for real.

Every case runs the command line in a fresh process (``python -m lfopt ...``) or the
Python API, and passes when lfopt does the right thing: a clear one-line error
naming the problem (file, line, value or the CLI flag) and a non-zero exit, never a
Python traceback, never a silent junk number, and nothing the user owns lost.

Usage: python benchmarks/reliability.py [--only SUBSTRING] [--data-dir ../shared/data]
Prints one line per case (PASS / FAIL and what was seen) and the totals; the exit
status is the number of failures (capped at 100).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CASES = []


def case(name):
    def deco(fn):
        CASES.append((name, fn))
        return fn

    return deco


def cli(*args, env=None, timeout=300):
    """Run ``python -m lfopt ARGS``; returns (exit code, stdout, stderr)."""
    e = dict(os.environ, **(env or {}))
    p = subprocess.run([sys.executable, "-m", "lfopt", *map(str, args)], capture_output=True, text=True,
                       cwd=ROOT, env=e, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def clean_error(rc, err, *words):
    """Non-zero exit, no traceback, and every word (case-insensitive) in the message."""
    if rc == 0:
        return False, "exit 0"
    if "Traceback" in err:
        return False, "traceback: " + err.strip().splitlines()[-1][:150]
    missing = [w for w in words if w.lower() not in err.lower()]
    if missing:
        return False, f"message lacks {missing}: {err.strip()[-200:]}"
    return True, err.strip().splitlines()[-1][:150] if err.strip() else f"exit {rc}"


def write(tmp: Path, name: str, text: str | bytes) -> Path:
    p = tmp / name
    (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
    return p


def small_ratings(tmp: Path, name="r.tsv", n_users=60, n_items=40, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(n_users):
        for i in rng.choice(n_items, 12, replace=False):
            lines.append(f"{u + 1}\t{i + 1}\t{rng.integers(1, 6)}\t{880000000 + u * 100 + i}")
    return write(tmp, name, "\n".join(lines) + "\n")


QUICK = ("--rank", "3", "--epochs", "3", "--quiet")


# ------------------------------------------------------------------ files written
@case("non-writable output folder detected before training")
def _(tmp):
    rc, _, err = cli("train", "--output", "/proc/lfopt-no/r.json", *QUICK)
    return clean_error(rc, err, "--output")


@case("output parent path is a file")
def _(tmp):
    f = write(tmp, "afile", "x")
    rc, _, err = cli("train", "--output", f / "r.json", *QUICK)
    return clean_error(rc, err, "--output")


@case("--output equal to --save refused before training")
def _(tmp):
    rc, _, err = cli("train", "--output", tmp / "same.npz", "--save", tmp / "same.npz", *QUICK)
    ok, why = clean_error(rc, err, "--output", "--save")
    if ok and (tmp / "same.npz").exists():
        return False, "refused, but a file was written"
    return ok, why


@case("existing model is never overwritten without --overwrite")
def _(tmp):
    target = write(tmp, "m.npz", b"precious")
    rc, _, err = cli("train", "--save", target, *QUICK)
    ok, why = clean_error(rc, err, "m.npz")
    if target.read_bytes() != b"precious":
        return False, "the existing file was replaced"
    return ok, why


def _save_worker(path, go, out):
    from lfopt.results import write_atomic

    go.wait()
    try:
        write_atomic(path, os.urandom(2_000_000))
        out.put("ok")
    except FileExistsError:
        out.put("refused")


@case("two processes saving to one path: exactly one succeeds (20 rounds)")
def _(tmp):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    bad = []
    for r in range(20):
        path = tmp / f"race{r}.bin"
        go, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_save_worker, args=(path, go, out)) for _ in range(2)]
        for p in procs:
            p.start()
        go.set()
        for p in procs:
            p.join(60)
        got = sorted(out.get(timeout=5) for _ in procs)
        if got != ["ok", "refused"]:
            bad.append((r, got))
    return not bad, f"bad rounds {bad}" if bad else "20 of 20 rounds: one ok, one refused"


@case("kill -9 during a save leaves no stray temp file after the next save")
def _(tmp):
    code = ("import os, sys; from lfopt.results import write_atomic\n"
            "def slow(fh):\n"
            "    fh.write(b'x' * 1000); fh.flush(); print('writing', flush=True); import time; time.sleep(60)\n"
            f"write_atomic({str(tmp / 'killed.bin')!r}, slow)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    p.stdout.readline()
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    from lfopt.results import write_atomic

    write_atomic(tmp / "next.bin", b"y")
    left = [n for n in os.listdir(tmp) if n not in ("next.bin",)]
    if (tmp / "killed.bin").exists():
        return False, "a partial killed.bin exists"
    return not left, f"left behind: {left}" if left else "no leftovers"


# ------------------------------------------------------------------ evaluation
def _trained_model(tmp, data):
    model = tmp / "m.npz"
    if not model.exists():
        rc, _, err = cli("train", "--data", data, "--save", model, *QUICK)
        if rc:
            raise RuntimeError(f"training failed: {err[-300:]}")
    return model


@case("evaluate --unseen drop counts the dropped pairs once")
def _(tmp):
    data = small_ratings(tmp)
    model = _trained_model(tmp, data)
    test = write(tmp, "t.tsv", "1\t1\t3\n999\t1\t4\n998\t2\t2\n")
    rc, out, err = cli("evaluate", "--model", model, "--data", test, "--unseen", "drop", "--all")
    if rc == 2 and "--all" in err:  # no --all option yet
        rc, out, err = cli("evaluate", "--model", model, "--data", test, "--unseen", "drop")
    text = out + err
    import re

    if rc != 0 or re.search(r"on -\d", text) or "nan" in text.lower():
        return False, f"exit {rc}: {text.strip()[-200:]}"
    return ("2" in text and "1 rating" in text), text.strip().replace("\n", " | ")[-200:]


@case("evaluate: all pairs unseen is a clear error")
def _(tmp):
    data = small_ratings(tmp)
    model = _trained_model(tmp, data)
    test = write(tmp, "t2.tsv", "999\t1\t4\n998\t2\t2\n")
    rc, out, err = cli("evaluate", "--model", model, "--data", test, "--unseen", "drop", "--all")
    if rc == 2 and "--all" in err:
        rc, out, err = cli("evaluate", "--model", model, "--data", test, "--unseen", "drop")
    return clean_error(rc, err, "unseen")


@case("evaluate of a saved model scores its held-out part by default")
def _(tmp):
    data = small_ratings(tmp, "held.tsv", n_users=120)
    model = tmp / "held.npz"
    rc, _, err = cli("train", "--data", data, "--save", model, "--output", tmp / "held.json", *QUICK)
    if rc:
        return False, f"train failed: {err[-200:]}"
    n_test = json.loads((tmp / "held.json").read_text()).get("n_test")
    rc, out, err = cli("evaluate", "--model", model, "--data", data)
    text = out + err
    total = 120 * 12
    if rc:
        return False, f"exit {rc}: {err[-200:]}"
    if n_test and f"{n_test} rating" in text:
        return True, f"scored the {n_test} held-out ratings"
    return False, f"expected {n_test} of {total} ratings: {text.strip()[-200:]}"


@case("recommend for an unknown user exits non-zero")
def _(tmp):
    data = small_ratings(tmp)
    model = _trained_model(tmp, data)
    rc, out, err = cli("recommend", "--model", model, "--user", "123456", "-k", "3")
    return clean_error(rc, err, "123456")


# ------------------------------------------------------------------ IDs and values
@case("IDs from 2**63 to 2**64 keep their value")
def _(tmp):
    import lfopt

    big = 2 ** 64 - 5
    p = write(tmp, "big.tsv", f"{big}\t1\t4\n{2 ** 63}\t2\t3\n7\t1\t5\n")
    d = lfopt.load_data(p)
    ids = [int(x) for x in d.user_ids]
    return big in ids and 2 ** 63 in ids, f"user IDs {ids}"


@case("string IDs stay as they are")
def _(tmp):
    import lfopt

    p = write(tmp, "s.csv", "user,item,rating\nalice,x01,4\nbob,007,3\n")
    d = lfopt.load_data(p)
    return set(map(str, d.user_ids)) == {"alice", "bob"} and "007" in set(map(str, d.item_ids)), \
        f"{list(d.user_ids)} {list(d.item_ids)}"


@case("rating beyond float32 (1e39) refused at load naming line and value")
def _(tmp):
    p = write(tmp, "huge.tsv", "1\t1\t4\n2\t2\t1e39\n")
    rc, _, err = cli("train", "--data", p, *QUICK)
    return clean_error(rc, err, "line 2", "1e+39" if "1e+39" in err else "1e39")


@case("rating too large to train (1e30) refused at load naming line")
def _(tmp):
    p = write(tmp, "big.tsv", "1\t1\t4\n2\t2\t1e30\n3\t1\t2\n")
    rc, _, err = cli("train", "--data", p, *QUICK)
    return clean_error(rc, err, "line 2")


@case("NaN rating refused naming the line")
def _(tmp):
    p = write(tmp, "nan.tsv", "1\t1\t4\n2\t2\tnan\n")
    rc, _, err = cli("train", "--data", p, *QUICK)
    return clean_error(rc, err, "line 2")


@case("non-UTF-8 bytes: the error names the line")
def _(tmp):
    p = write(tmp, "bin.csv", b"user,item,rating\nalice,x,4\nb\xff\xfeb,y,3\n")
    rc, _, err = cli("train", "--data", p, *QUICK)
    return clean_error(rc, err, "line 3")


@case("empty file is a clear error")
def _(tmp):
    p = write(tmp, "empty.tsv", "")
    rc, _, err = cli("train", "--data", p, *QUICK)
    return clean_error(rc, err, "empty.tsv")


@case("missing data file is a clear error")
def _(tmp):
    rc, _, err = cli("train", "--data", tmp / "nope.tsv", *QUICK)
    return clean_error(rc, err, "nope.tsv")


@case("duplicate (user, item) pairs are named")
def _(tmp):
    p = write(tmp, "dup.tsv", "1\t1\t4\n1\t1\t5\n2\t2\t3\n")
    rc, _, err = cli("train", "--data", p, *QUICK)
    return clean_error(rc, err, "duplicate")


@case("4-column file whose 4th column is no timestamp is refused")
def _(tmp):
    lines = [f"{u}\t{i}\t{(u + i) % 7}\t{1 + (u * i) % 5}" for u in range(1, 30) for i in range(1, 9)]
    p = write(tmp, "cat.tsv", "\n".join(lines) + "\n")
    rc, _, err = cli("train", "--data", p, *QUICK)
    return clean_error(rc, err, "timestamp", "--columns")


@case("zero ratings on a 1..5 scale are reported")
def _(tmp):
    import warnings

    import lfopt

    rows = [f"{u}\t{i}\t{0 if (u + i) % 9 == 0 else 1 + (u + i) % 5}" for u in range(1, 20) for i in range(1, 9)]
    p = write(tmp, "zeros.tsv", "\n".join(rows) + "\n")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        lfopt.load_data(p)
    msgs = [str(x.message) for x in w if "zero" in str(x.message).lower()]
    return bool(msgs), msgs[0][:150] if msgs else "no warning about zero ratings"


# ------------------------------------------------------------------ .mat files
@case("MATLAB v5 .mat table loads")
def _(tmp):
    import scipy.io

    import lfopt

    table = np.array([[1, 1, 4], [1, 2, 3], [2, 1, 5], [3, 3, 2]], dtype=float)
    p = tmp / "ciao.mat"
    scipy.io.savemat(p, {"rating": table})
    d = lfopt.load_data(p, columns={"user": 0, "item": 1, "rating": 2})
    return d.nnz == 4 and float(d.values.sum()) == 14.0, repr(d)


@case("corrupted .mat raises lfopt's DataError")
def _(tmp):
    src = DATA / "douban-monti" / "training_test_dataset.mat"
    if not src.exists():
        return None, "douban file not found"
    raw = bytearray(src.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 4096] = os.urandom(4096)
    p = write(tmp, "bad.mat", bytes(raw))
    rc, _, err = cli("train", "--data", p, *QUICK)
    return clean_error(rc, err, "bad.mat")


@case("--test-fraction with a fixed-split (Monti) file is refused or warned about")
def _(tmp):
    src = DATA / "douban-monti" / "training_test_dataset.mat"
    if not src.exists():
        return None, "douban file not found"
    rc, out, err = cli("train", "--data", src, "--test-fraction", "0.3", "--rank", "2", "--epochs", "1")
    if rc != 0:
        return clean_error(rc, err, "--test-fraction")
    return "--test-fraction" in err, "ran silently" if "--test-fraction" not in err else "warned"


# ------------------------------------------------------------------ model files
def _tampered(tmp, edit):
    import lfopt

    data = lfopt.synthetic(n_users=40, n_items=30, nnz=600, seed=0)
    path = lfopt.LatentFactorModel(rank=3, epochs=2).fit(data).save(tmp / "good.npz")
    with np.load(path) as z:
        files = dict(z)
    edit(files)
    bad = tmp / "tampered.npz"
    np.savez(bad, **files)
    rc, _, err = cli("recommend", "--model", bad, "--user", str(data.user_ids[0]), "-k", "2")
    return clean_error(rc, err, "tampered.npz")


def _meta_edit(fn):
    def edit(files):
        key = "__lfopt_meta__"
        meta = json.loads(files[key].tobytes().decode())
        fn(meta)
        files[key] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)

    return edit


@case("tampered model: missing array")
def _(tmp):
    return _tampered(tmp, lambda f: f.pop("params"))


@case("tampered model: wrong type in the metadata")
def _(tmp):
    return _tampered(tmp, _meta_edit(lambda m: m.update(n_users="many")))


@case("tampered model: swapped shapes")
def _(tmp):
    def edit(files):
        files["user_ids"], files["item_ids"] = files["item_ids"], files["user_ids"]

    return _tampered(tmp, edit)


@case("tampered model: NaN parameters")
def _(tmp):
    def edit(files):
        files["params"] = files["params"].copy()
        files["params"][3] = np.nan

    return _tampered(tmp, edit)


@case("text file renamed .npz gets an accurate message")
def _(tmp):
    p = write(tmp, "notes.npz", "just some text\n")
    rc, _, err = cli("recommend", "--model", p, "--user", "1")
    return clean_error(rc, err, "notes.npz", "not")


# ------------------------------------------------------------------ options
@case("--valid-fraction 1.5, nan, -0.1 refused naming the flag")
def _(tmp):
    seen = []
    for v in ("1.5", "nan", "-0.1"):
        rc, _, err = cli("train", "--valid-fraction", v, *QUICK)
        ok, why = clean_error(rc, err, "--valid-fraction")
        if not ok:
            return False, f"{v}: {why}"
        seen.append(v)
    return True, f"refused {seen}"


@case("a bad lambda names the CLI flag, not the Python name")
def _(tmp):
    rc, _, err = cli("train", "--lambda", "-1", *QUICK)
    ok, why = clean_error(rc, err, "--lambda")
    if ok and "lam " in err.replace("--lambda", ""):
        return False, f"names the Python parameter: {err.strip()[-150:]}"
    return ok, why


@case("negative rank refused naming --rank")
def _(tmp):
    rc, _, err = cli("train", "--rank", "-2", "--epochs", "1", "--quiet")
    return clean_error(rc, err, "--rank")


@case("rank: a user who owns every item gets a clear message")
def _(tmp):
    rows = [f"1\t{i}\t1" for i in range(1, 11)]
    rows += [f"{u}\t{i}\t1" for u in range(2, 40) for i in range(1, 11) if (u * 7 + i) % 3]
    p = write(tmp, "every.tsv", "\n".join(rows) + "\n")
    rc, out, err = cli("rank", "--data", p, "--k-core", "1", "--rank", "2", "--epochs", "2", "--quiet")
    text = out + err
    if "nan" in text.lower():
        return False, "reports nan"
    if "Traceback" in err:
        return False, "traceback"
    said = any(w in text.lower() for w in ("every item", "all items", "all the items", "no item left", "undefined"))
    return said, text.strip().replace("\n", " | ")[-150:]


@case("play counts through lfopt train: non-zero exit and a pointer to lfopt rank")
def _(tmp):
    src = DATA / "lastfm" / "user_artist.dat"
    if not src.exists():
        return None, "lastfm file not found"
    rc, out, err = cli("train", "--data", src, "--rank", "4", "--epochs", "3", "--quiet")
    if rc == 0:
        return False, f"exit 0: {out.strip()[-120:]}"
    return clean_error(rc, err, "rank")


# ------------------------------------------------------------------ determinism
@case("same seed, 1 and 2 threads: bit-identical predictions for every optimizer")
def _(tmp):
    code = ("import numpy as np, lfopt, sys\n"
            "d = lfopt.synthetic(n_users=150, n_items=100, nnz=6000, seed=1)\n"
            "out = []\n"
            "for o in ('sgd','adam','als','adago','slf','sslf','gibbs'):\n"
            "    m = lfopt.LatentFactorModel(rank=4, optimizer=o, epochs=25, seed=3).fit(d)\n"
            "    out.append(m.predict(d.user_ids[d.users[:300]], d.item_ids[d.items[:300]], clip=False))\n"
            "np.save(sys.argv[1], np.array(out))\n")
    outs = []
    for t in (1, 2):
        path = tmp / f"det{t}.npy"
        subprocess.run([sys.executable, "-c", code, str(path)], check=True, cwd=ROOT,
                       env=dict(os.environ, NUMBA_NUM_THREADS=str(t)), capture_output=True)
        outs.append(np.load(path))
    same = [bool(np.array_equal(a, b)) for a, b in zip(*outs)]
    return all(same), f"identical per optimizer: {same}"


def main(argv=None) -> int:
    global DATA
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="run the cases whose name contains this text")
    ap.add_argument("--data-dir", default=str(DATA))
    args = ap.parse_args(argv)
    DATA = Path(args.data_dir)
    results = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    t_all = time.perf_counter()
    for name, fn in CASES:
        if args.only and args.only.lower() not in name.lower():
            continue
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="lfopt-rel-") as d:
            try:
                ok, detail = fn(Path(d))
            except Exception as exc:  # the harness reports, it does not stop
                ok, detail = False, f"{type(exc).__name__}: {exc} ({traceback.extract_tb(exc.__traceback__)[-1].lineno})"
        status = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
        results[status] += 1
        print(f"{status}  {name}  [{time.perf_counter() - t0:.1f} s]  {detail}", flush=True)
    print(f"\n{results['PASS']} passed, {results['FAIL']} failed, {results['SKIP']} skipped "
          f"of {sum(results.values())} cases in {time.perf_counter() - t_all:.0f} s")
    return min(results["FAIL"], 100)


if __name__ == "__main__":
    sys.exit(main())
