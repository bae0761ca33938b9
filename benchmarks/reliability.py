"""The reliability catalogue of issue 9: bad input and faults, with nothing the user owns lost.

Runs every case against the command line (``python -m lfopt ...`` in a fresh
process, as a user would) or the Python API, prints one line per case::

    PASS  files/race-api        two processes saving to one path: exactly one wins (20 rounds)
    FAIL  params/valid-nan      --valid-fraction nan is refused naming the flag: rc 0, ...

and the totals; the exit status is the number of failures (capped at 100).  A
case passes when lfopt does the right thing: a clear one-line error naming the
problem (file, line, value or the CLI flag) and a non-zero exit, never a
Python traceback, never a silent junk number, nothing the user owns lost.  A
case whose shared dataset is absent is skipped.  Each case is small (the
whole run takes about three minutes on 2 cores, the 20M-ratings case
included; ``--skip-big`` leaves that one out).

Usage::

    python benchmarks/reliability.py               # every case
    python benchmarks/reliability.py -k mat -k ids # cases whose name contains one of these (--only TEXT too)
    python benchmarks/reliability.py --list        # the names only
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lfopt  # noqa: E402
from lfopt.errors import DataError, ModelFileError  # noqa: E402

DATA_DIR = ROOT.parent / "shared" / "data"
DOUBAN = DATA_DIR / "douban-monti" / "training_test_dataset.mat"
TEMP_PREFIX = ".lfopt-tmp-"

CASES: list = []


def case(name: str, title: str, big: bool = False):
    """Register ``fn(ctx) -> (ok, detail)`` as a catalogue case."""

    def deco(fn):
        CASES.append((name, title, fn, big))
        return fn

    return deco


# ==================================================================== helpers
class Ctx:
    """A scratch folder, a CLI runner and lazily built shared inputs."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict = {}
        self.n = 0

    def dir(self, name: str) -> Path:
        self.n += 1
        d = self.root / f"{self.n:02d}-{name}"
        d.mkdir()
        return d

    def cli(self, *args, timeout: float = 120, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        return subprocess.run([sys.executable, "-m", "lfopt", *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, env=full_env, cwd=cwd or self.root)

    def popen(self, *args, env: dict | None = None) -> subprocess.Popen:
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        return subprocess.Popen([sys.executable, "-m", "lfopt", *map(str, args)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=full_env, cwd=self.root)

    # ------------------------------------------------------------ shared inputs
    def small_tsv(self) -> Path:
        """300 users x 200 items, 6000 integer ratings 1..5, ``user item rating``."""
        if "small" not in self._cache:
            d = lfopt.synthetic(n_users=300, n_items=200, nnz=6000, seed=5)
            path = self.root / "small.tsv"
            vals = np.clip(np.rint(d.values), 1, 5).astype(int)
            write_lines(path, (f"{u}\t{i}\t{v}" for u, i, v in zip(d.users.tolist(), d.items.tolist(), vals)))
            self._cache["small"] = path
        return self._cache["small"]

    def model(self) -> Path:
        """A model saved by ``lfopt train --save`` on :meth:`small_tsv`."""
        if "model" not in self._cache:
            path = self.root / "small-model.npz"
            p = self.cli("train", "--data", self.small_tsv(), "--rank", 4, "--epochs", 3, "--quiet", "--save", path)
            if p.returncode != 0:
                raise RuntimeError(f"could not train the shared model: {p.stderr[-300:]}")
            self._cache["model"] = path
        return self._cache["model"]

    def medium_tsv(self) -> Path:
        """A file whose training takes a few seconds and whose rank-64 model file is ~60 MB."""
        if "medium" not in self._cache:
            rng = np.random.default_rng(1)
            m, n, per = 200_000, 30_000, 4
            u = np.repeat(np.arange(m), per)
            i = (u * 7 + np.tile(np.arange(per), m) * 1009) % n
            r = rng.integers(1, 6, len(u))
            path = self.root / "medium.tsv"
            write_lines(path, (f"{a}\t{b}\t{c}" for a, b, c in zip(u.tolist(), i.tolist(), r.tolist())))
            self._cache["medium"] = path
        return self._cache["medium"]

    def monti_v5(self, both: int = 0) -> Path:
        """A small Monti-layout v5 file; ``both`` pairs marked in Otraining and Otest."""
        import scipy.io

        key = f"monti{both}"
        if key not in self._cache:
            rng = np.random.default_rng(2)
            M = np.where(rng.random((60, 50)) < 0.3, rng.integers(1, 6, (60, 50)), 0).astype(float)
            test = (M != 0) & (rng.random(M.shape) < 0.1)
            train = (M != 0) & ~test
            rows, cols = np.nonzero(test)
            train[rows[:both], cols[:both]] = True
            path = self.root / f"monti{both}.mat"
            scipy.io.savemat(path, {"M": M, "Otraining": train * 1.0, "Otest": test * 1.0})
            self._cache[key] = (path, int(test.sum()))
        return self._cache[key][0]


def write_lines(path: Path, lines) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def clean_error(p: subprocess.CompletedProcess) -> str | None:
    """None if the process failed cleanly (rc 1, one lfopt error line, no traceback), else why not."""
    if p.returncode == 0:
        return f"exit status 0 (stdout: {tail(p.stdout)})"
    if "Traceback" in p.stderr:
        return f"a traceback: {tail(p.stderr)}"
    return None


def tail(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else "..." + text[-n:]


def expect_error(p, *words, before_training: bool = False) -> tuple[bool, str]:
    why = clean_error(p)
    if why:
        return False, why
    missing = [w for w in words if w not in p.stderr]
    if missing:
        return False, f"the message lacks {missing}: {tail(p.stderr)}"
    if before_training and ("test RMSE" in p.stdout or "epochs (" in p.stdout):
        return False, f"refused only after training: {tail(p.stdout)}"
    return True, tail(p.stderr.strip().splitlines()[-1], 140)


def api_error(fn, cls, *words) -> tuple[bool, str]:
    try:
        fn()
    except cls as exc:
        msg = str(exc)
        missing = [w for w in words if w not in msg]
        return (not missing), (f"the message lacks {missing}: " if missing else "") + tail(msg, 140)
    except Exception as exc:
        return False, f"{type(exc).__name__} instead of {cls.__name__}: {tail(str(exc))}"
    return False, f"no {cls.__name__} raised"


def strays(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX) or p.suffix == ".tmp")


# ================================================================= bad files
@case("files/missing", "a missing data file is named")
def _(ctx):
    return expect_error(ctx.cli("train", "--data", ctx.root / "nope.tsv"), "nope.tsv", "no such file")


@case("files/empty", "an empty data file is named")
def _(ctx):
    path = ctx.dir("empty") / "e.tsv"
    path.write_text("\n\n")
    return expect_error(ctx.cli("train", "--data", path), "e.tsv", "empty")


@case("files/directory", "a folder given as data is refused")
def _(ctx):
    d = ctx.dir("dirdata")
    return expect_error(ctx.cli("train", "--data", d), "directory")


@case("files/field-count", "a line with a wrong number of fields is named")
def _(ctx):
    path = write_lines(ctx.dir("fields") / "f.tsv", ["1 1 4", "1 2 3", "2 1 5 6 7", "2 2 1"])
    return expect_error(ctx.cli("train", "--data", path), "line 3", "found 5")


@case("files/matrix-ragged", "a dense matrix file (--format matrix) with a short line names the line")
def _(ctx):
    path = write_lines(ctx.dir("matrix") / "rt.txt", ["0.5 -1 2.0", "-1 1.5 -1", "1.0 2.0", "3 -1 1"])
    return expect_error(ctx.cli("train", "--data", path, "--format", "matrix", "--missing", "-1"), "rt.txt",
                        "line 3", "expected 3")


@case("files/matrix-as-table", "a QoS matrix read as a table of ratings points to --format matrix")
def _(ctx):
    rng = np.random.default_rng(5)
    M = np.round(rng.lognormal(0, 1, (40, 60)), 3)
    M[rng.random(M.shape) < 0.7] = -1
    path = ctx.dir("qos") / "rtMatrix.txt"
    np.savetxt(path, M, fmt="%.3f", delimiter="\t")
    ok, detail = expect_error(ctx.cli("train", "--data", path), "rtMatrix.txt", "found 60", "--format matrix")
    if not ok:
        return ok, detail
    p = ctx.cli("train", "--data", path, "--format", "matrix", "--missing", "-1", "--rank", "4", "--epochs", "20")
    observed = int((M != -1).sum())
    if p.returncode != 0 or "test RMSE" not in p.stdout or f"{observed} entries" not in p.stderr:
        return False, f"rc {p.returncode}: {tail(p.stderr)}"
    return True, p.stdout.splitlines()[-2]


@case("files/not-utf8", "non-UTF-8 bytes: the error names the line")
def _(ctx):
    path = ctx.dir("utf8") / "latin1.tsv"
    path.write_bytes(b"ann\t1\t4\nbob\t2\t3\nren\xe9e\t1\t5\n")
    return expect_error(ctx.cli("train", "--data", path), "latin1.tsv", "line 3")


@case("files/corrupt-mat", "a corrupted .mat (bytes overwritten mid-file) is a DataError, not h5py's OSError")
def _(ctx):
    d = ctx.dir("corruptmat")
    if DOUBAN.exists():
        src = DOUBAN
    else:  # a gzip-compressed Monti file, like Douban's
        import h5py

        src = d / "src.mat"
        with h5py.File(src, "w") as f:
            for k in ("M", "Otraining", "Otest"):
                f.create_dataset(k, data=np.random.default_rng(0).integers(0, 2, (400, 400)).astype(float),
                                 compression="gzip", chunks=(400, 2))
    raw = bytearray(src.read_bytes())
    details = []
    for where in (0.3, 0.5, 0.7):
        off = int(len(raw) * where)
        bad = bytearray(raw)
        bad[off:off + 512] = np.random.default_rng(int(where * 10)).integers(0, 256, 512, dtype=np.uint8).tobytes()
        path = d / f"corrupt{int(where * 10)}.mat"
        path.write_bytes(bytes(bad))
        ok, detail = api_error(lambda: lfopt.load_data(path), DataError, path.name)
        if not ok:
            return False, f"offset {off}: {detail}"
        details.append(detail)
    ok, detail = expect_error(ctx.cli("train", "--data", d / "corrupt5.mat"), "corrupt5.mat")
    return ok, detail if not ok else details[-1]


@case("files/mat-v5-table", "MATLAB v5 table (Ciao-style user,item,category,rating,helpfulness) with --columns")
def _(ctx):
    import scipy.io

    d = ctx.dir("matv5")
    rng = np.random.default_rng(3)
    t = np.c_[rng.integers(1, 200, 4000), rng.integers(1, 150, 4000), rng.integers(1, 28, 4000),
              rng.integers(1, 6, 4000), rng.integers(0, 6, 4000)].astype(float)
    _, first = np.unique(t[:, :2], axis=0, return_index=True)
    t = t[np.sort(first)]
    path = d / "rating.mat"
    scipy.io.savemat(path, {"rating": t})
    ok, detail = expect_error(ctx.cli("train", "--data", path, "--epochs", 2), "--columns")
    if not ok:
        return False, f"without --columns: {detail}"
    p = ctx.cli("train", "--data", path, "--columns", "user=0,item=1,rating=3", "--epochs", 2, "--quiet")
    if p.returncode != 0:
        return False, f"with --columns: rc {p.returncode}: {tail(p.stderr)}"
    data = lfopt.load_data(path, columns={"user": 0, "item": 1, "rating": 3})
    if data.nnz != len(t) or sorted(data.values.tolist()) != sorted(t[:, 3].tolist()):
        return False, f"loaded {data.nnz} ratings, expected {len(t)} with the 4th column's values"
    return True, f"{data.nnz} ratings; without --columns: refused naming --columns"


@case("files/mat-v5-matrix", "MATLAB v5 sparse rating-matrix variable loads")
def _(ctx):
    import scipy.io
    import scipy.sparse as sp

    R = sp.random(80, 60, density=0.1, random_state=4, format="csc")
    R.data = np.ceil(R.data * 5)
    path = ctx.dir("matsp") / "R.mat"
    scipy.io.savemat(path, {"R": R})
    try:
        data = lfopt.load_data(path)
    except Exception as exc:
        return False, f"{type(exc).__name__}: {tail(str(exc))}"
    same = data.shape == R.shape and np.array_equal(data.to_scipy().toarray(), R.toarray())
    return same, f"{data.nnz} entries, shape {data.shape}"


@case("files/monti-both-masks", "a Monti file whose pair is in both masks is reported")
def _(ctx):
    path = ctx.monti_v5(both=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            lfopt.load_data(path)
        except DataError as exc:
            ok = "3" in str(exc)
            return ok, f"DataError: {tail(str(exc), 120)}"
    said = [str(w.message) for w in caught if "both" in str(w.message)]
    if not said:
        return False, "loaded silently"
    return ("3 " in said[0]), tail(said[0], 140)


@case("files/four-columns", "user,item,category,rating is refused unless --columns names the rating")
def _(ctx):
    d = ctx.dir("fourcol")
    rng = np.random.default_rng(6)
    u = rng.integers(0, 100, 3000)
    i = rng.integers(0, 80, 3000)
    keep = np.unique(u * 80 + i, return_index=True)[1]
    lines = [f"{u[k]},{i[k]},{rng.integers(1, 25)},{rng.integers(1, 6)}" for k in keep]
    path = write_lines(d / "ciao.txt", [line.replace(",", " ") for line in lines])
    ok, detail = expect_error(ctx.cli("train", "--data", path, "--epochs", 2), "--columns", "rating")
    if not ok:
        return False, f"without --columns: {detail}"
    p = ctx.cli("train", "--data", path, "--columns", "user=0,item=1,rating=3", "--epochs", 2, "--quiet")
    return p.returncode == 0, "refused, then trained with --columns" if p.returncode == 0 else tail(p.stderr)


@case("files/zero-ratings", "zero ratings on a 1..5 scale are reported with their count")
def _(ctx):
    lines = [f"{u} {i} {(u + i) % 5 + 1}" for u in range(40) for i in range(10)]
    lines[5] = "0 5 0"
    lines[17] = "1 7 0"
    path = write_lines(ctx.dir("zeros") / "z.tsv", lines)
    p = ctx.cli("train", "--data", path, "--epochs", 1, "--quiet")
    said = [line for line in p.stderr.splitlines() if "2 rating" in line and "0" in line]
    return bool(said), tail(said[0] if said else p.stderr, 140)


# ================================================================ bad values
@case("values/nan", "a NaN rating is named with its line")
def _(ctx):
    path = write_lines(ctx.dir("nan") / "n.tsv", ["1 1 4", "1 2 nan", "2 1 3"])
    return expect_error(ctx.cli("train", "--data", path), "line 2")


@case("values/1e39", "a rating beyond float32 (1e39) is refused at load naming file, line and value")
def _(ctx):
    path = write_lines(ctx.dir("e39") / "big.tsv", [f"{u} {i} 3" for u in range(20) for i in range(5)] + ["7 9 1e39"])
    return expect_error(ctx.cli("train", "--data", path), "big.tsv", "line 101", "1e+39", before_training=True)


@case("values/1e30", "a rating too large to train (1e30) is refused at load naming file, line and value")
def _(ctx):
    path = write_lines(ctx.dir("e30") / "big.tsv", [f"{u} {i} 3" for u in range(20) for i in range(5)] + ["7 9 1e30"])
    return expect_error(ctx.cli("train", "--data", path), "big.tsv", "line 101", "1e+30", before_training=True)


@case("values/duplicates", "a repeated (user, item) pair names both lines")
def _(ctx):
    path = write_lines(ctx.dir("dups") / "d.tsv", ["1 1 4", "1 2 3", "1 1 5"])
    return expect_error(ctx.cli("train", "--data", path), "line 3", "line 1")


@case("values/ids-2-63", "IDs from 2**63 to 2**64 keep their value (train, save, recommend)")
def _(ctx):
    d = ctx.dir("bigids")
    rng = np.random.default_rng(7)
    base = 2**63 + 11
    lines = [f"{base + u}\t{i}\t{rng.integers(1, 6)}" for u in range(60) for i in rng.choice(40, 12, replace=False)]
    path = write_lines(d / "big.tsv", lines)
    model = d / "m.npz"
    p = ctx.cli("train", "--data", path, "--rank", 3, "--epochs", 2, "--quiet", "--save", model)
    if p.returncode != 0:
        return False, f"train: {tail(p.stderr)}"
    ids = lfopt.load(model).user_ids_
    if int(ids.min()) != base or int(ids.max()) != base + 59:
        return False, f"saved user IDs run {ids.min()}..{ids.max()}, expected {base}..{base + 59}"
    p = ctx.cli("recommend", "--model", model, "--user", base + 5, "-k", 3)
    if p.returncode != 0 or "unknown" in p.stderr:
        return False, f"recommend: rc {p.returncode}: {tail(p.stderr)}"
    return True, f"user IDs {base}..{base + 59} kept (dtype {ids.dtype})"


@case("values/string-ids", "string IDs stay as written ('007' and '7' are two users)")
def _(ctx):
    d = ctx.dir("strids")
    lines = [f"{u} item{i} {(i % 5) + 1}" for u in ("007", "7", "u-1") for i in range(10)]
    path = write_lines(d / "s.tsv", lines)
    data = lfopt.load_data(path)
    users = sorted(data.user_ids.tolist())
    return users == ["007", "7", "u-1"], f"users {users}"


# ================================================================ odd shapes
def _trains_or_refuses_clearly(ctx, folder, lines):
    """``lfopt train`` on these lines either trains or refuses with a message: no traceback, no nan."""
    path = write_lines(ctx.dir(folder) / "r.tsv", lines)
    p = ctx.cli("train", "--data", path, "--epochs", 2)
    if "Traceback" in p.stderr or "nan" in p.stdout.lower():
        return False, tail(p.stderr + p.stdout)
    return True, f"rc {p.returncode}: {tail((p.stdout if p.returncode == 0 else p.stderr).strip(), 100)}"


@case("shapes/one-user", "data with a single user trains or is refused clearly")
def _(ctx):
    return _trains_or_refuses_clearly(ctx, "oneuser", [f"1 {i} {i % 5 + 1}" for i in range(30)])


@case("shapes/one-rating", "a file of one rating is refused clearly (or trains)")
def _(ctx):
    return _trains_or_refuses_clearly(ctx, "onerating", ["1 1 5"])


@case("shapes/rank-owns-all", "rank: a user who owns every item gives a clear message, not AUC nan")
def _(ctx):
    n = 30
    lines = [f"0 {i} 1" for i in range(n)]
    rng = np.random.default_rng(8)
    lines += [f"{u} {i} 1" for u in range(1, 80) for i in rng.choice(n, 8, replace=False)]
    path = write_lines(ctx.dir("ownsall") / "clicks.tsv", lines)
    p = ctx.cli("rank", "--data", path, "--k-core", 1, "--epochs", 2, "--rank", 4)
    text = p.stdout + p.stderr
    if "Traceback" in p.stderr or "AUC nan" in text:
        return False, tail(text)
    return True, f"rc {p.returncode}: " + tail(next((line for line in text.splitlines() if "every item" in line),
                                                    text.strip().splitlines()[-1] if text.strip() else ""), 120)


@case("shapes/unseen-drop", "evaluate --unseen drop counts the dropped pairs once")
def _(ctx):
    model = ctx.model()
    known = ctx.small_tsv().read_text().splitlines()[:10]
    lines = known + [f"{10**6 + k} 1 3" for k in range(5)]
    path = write_lines(ctx.dir("unseen") / "e.tsv", lines)
    p = ctx.cli("evaluate", "--model", model, "--data", path, "--unseen", "drop")
    if p.returncode != 0:
        return False, tail(p.stderr)
    ok = "on 10 ratings" in p.stdout and "-" not in p.stdout.split("on ")[1][:3]
    return ok, tail(p.stdout, 140)


@case("shapes/all-unseen", "evaluate with every pair unseen is a clear error, not RMSE nan")
def _(ctx):
    model = ctx.model()
    path = write_lines(ctx.dir("allunseen") / "e.tsv", [f"{10**6 + k} {10**6} 3" for k in range(5)])
    p = ctx.cli("evaluate", "--model", model, "--data", path, "--unseen", "drop")
    if p.returncode == 0 or "nan" in p.stdout.lower():
        return False, f"rc {p.returncode}: {tail(p.stdout + p.stderr)}"
    return expect_error(p)


@case("shapes/held-out-default", "evaluate of a saved model scores its held-out part by default")
def _(ctx):
    d = ctx.dir("heldout")
    data = ctx.small_tsv()
    model, res = d / "m.npz", d / "res.json"
    p = ctx.cli("train", "--data", data, "--rank", 3, "--epochs", 2, "--quiet", "--save", model, "--output", res)
    if p.returncode != 0:
        return False, f"train: {tail(p.stderr)}"
    n_test = json.loads(res.read_text()).get("n_test")
    p = ctx.cli("evaluate", "--model", model, "--data", data)
    if p.returncode != 0:
        return False, tail(p.stderr)
    return f"on {n_test} rating" in p.stdout, f"expected {n_test} held-out ratings: {tail(p.stdout, 120)}"


@case("shapes/recommend-unknown", "recommend for an unknown user exits non-zero")
def _(ctx):
    return expect_error(ctx.cli("recommend", "--model", ctx.model(), "--user", 123456, "-k", 3), "123456")


@case("values/play-counts", "play counts through lfopt train: non-zero exit and a pointer to lfopt rank")
def _(ctx):
    src = DATA_DIR / "lastfm" / "user_artist.dat"
    if not src.exists():
        return None, f"{src} not found"
    return expect_error(ctx.cli("train", "--data", src, "--rank", 4, "--epochs", 3, "--quiet"), "lfopt rank")


# ====================================================== bad hyper-parameters
def _bad_flag(ctx, flag, value, *extra_words):
    return expect_error(ctx.cli("train", "--epochs", 2, flag, value), flag, *extra_words, before_training=True)


@case("params/rank-0", "--rank 0 is refused naming --rank")
def _(ctx):
    return _bad_flag(ctx, "--rank", 0)


@case("params/lambda-negative", "--lambda -1 is refused naming --lambda (not the Python name)")
def _(ctx):
    return _bad_flag(ctx, "--lambda", -1)


@case("params/epochs-0", "--epochs 0 is refused naming --epochs")
def _(ctx):
    return expect_error(ctx.cli("train", "--epochs", 0), "--epochs", before_training=True)


@case("params/valid-1.5", "--valid-fraction 1.5 is refused naming the flag")
def _(ctx):
    return _bad_flag(ctx, "--valid-fraction", 1.5)


@case("params/valid-nan", "--valid-fraction nan is refused naming the flag")
def _(ctx):
    return _bad_flag(ctx, "--valid-fraction", "nan")


@case("params/valid-negative", "--valid-fraction -0.1 is refused naming the flag")
def _(ctx):
    return _bad_flag(ctx, "--valid-fraction", "-0.1")


@case("params/test-fraction-monti", "--test-fraction with a fixed-split file is refused or warned about")
def _(ctx):
    p = ctx.cli("train", "--data", ctx.monti_v5(), "--test-fraction", 0.3, "--epochs", 2)
    if "--test-fraction" not in p.stderr:
        return False, f"rc {p.returncode}, nothing said about --test-fraction: {tail(p.stderr)}"
    return "Traceback" not in p.stderr, f"rc {p.returncode}: " + tail(
        next(line for line in p.stderr.splitlines() if "--test-fraction" in line), 120)


# ============================================================= files written
@case("files/no-overwrite", "an existing --output is never replaced without --overwrite")
def _(ctx):
    out = ctx.dir("noover") / "res.json"
    out.write_text("mine")
    p = ctx.cli("train", "--epochs", 2, "--output", out)
    ok, detail = expect_error(p, "--overwrite", before_training=True)
    if out.read_text() != "mine":
        return False, "the user's file was replaced"
    return ok, detail


@case("files/no-overwrite-model", "an existing --save file is never replaced without --overwrite")
def _(ctx):
    target = ctx.dir("nooverm") / "m.npz"
    target.write_bytes(b"precious")
    ok, detail = expect_error(ctx.cli("train", "--epochs", 2, "--save", target), "m.npz", before_training=True)
    return ok and target.read_bytes() == b"precious", detail


@case("files/folder-not-writable", "a non-writable output folder is detected before training")
def _(ctx):
    d = ctx.dir("rofolder")
    if os.geteuid() == 0:  # root ignores permission bits; /sys refuses new files even to root
        folder = Path("/sys")
    else:
        folder = d / "ro"
        folder.mkdir()
        folder.chmod(0o555)
    try:
        return expect_error(ctx.cli("train", "--epochs", 2, "--output", folder / "res.json"), "--output",
                            before_training=True)
    finally:
        if folder != Path("/sys"):
            folder.chmod(0o755)


@case("files/parent-is-file", "--save under a path that is a file is detected before training")
def _(ctx):
    d = ctx.dir("parentfile")
    (d / "notes.txt").write_text("mine")
    p = ctx.cli("train", "--epochs", 2, "--save", d / "notes.txt" / "m.npz")
    ok, detail = expect_error(p, "--save", "notes.txt", before_training=True)
    return ok and (d / "notes.txt").read_text() == "mine", detail


@case("files/output-equals-save", "--output equal to --save is detected before training")
def _(ctx):
    path = ctx.dir("samefile") / "both.npz"
    p = ctx.cli("train", "--epochs", 2, "--output", path, "--save", path)
    return expect_error(p, "--output", "--save", before_training=True)


# ============================================================ kills and races
def _race_child(barrier, model_path, out, results):
    import lfopt as lf

    model = lf.load(model_path)
    barrier.wait()
    try:
        model.save(out)
        results.put("ok")
    except FileExistsError:
        results.put("refused")
    except BaseException as exc:  # pragma: no cover
        results.put(f"error {type(exc).__name__}: {exc}")


@case("races/api-20-rounds", "two processes saving to one path: exactly one succeeds (20 rounds, API)")
def _(ctx):
    if "fork" not in mp.get_all_start_methods():
        return False, "needs fork"
    d = ctx.dir("raceapi")
    mp_ctx = mp.get_context("fork")
    tally = {}
    for r in range(20):
        barrier, results = mp_ctx.Barrier(2), mp_ctx.Queue()
        procs = [mp_ctx.Process(target=_race_child, args=(barrier, ctx.model(), d / f"m{r}.npz", results))
                 for _ in range(2)]
        for p in procs:
            p.start()
        got = tuple(sorted(results.get(timeout=60) for _ in procs))
        for p in procs:
            p.join(timeout=60)
        tally[got] = tally.get(got, 0) + 1
        lfopt.load(d / f"m{r}.npz")
    ok = tally == {("ok", "refused"): 20} and not strays(d)
    return ok, ", ".join(f"{'+'.join(k)}: {v}" for k, v in tally.items()) + (f"; strays {strays(d)}" if strays(d) else "")


@case("races/cli-3-rounds", "two `lfopt train --save` of one path at once: exactly one exits 0")
def _(ctx):
    d = ctx.dir("racecli")
    tally = []
    for r in range(3):
        out = d / f"m{r}.npz"
        procs = [ctx.popen("train", "--data", ctx.small_tsv(), "--rank", 3, "--epochs", 2, "--quiet", "--save", out)
                 for _ in range(2)]
        results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
        for p in procs:
            p.stdout.close()
            p.stderr.close()
        codes = sorted(rc for rc, _ in results)
        tally.append(codes)
        if codes != [0, 1] or "exists" not in "".join(err for rc, err in results if rc):
            return False, f"round {r}: exit statuses {codes}: {tail(' '.join(e for _, e in results))}"
        lfopt.load(out)
    return not strays(d), f"exit statuses per round {tally}"


@case("kills/kill-9-during-save", "kill -9 during a save: no damaged file; the next save removes the leftover")
def _(ctx):
    d = ctx.dir("kill9")
    target = d / "model.npz"
    for attempt in range(3):
        p = ctx.popen("train", "--data", ctx.medium_tsv(), "--rank", 64, "--epochs", 1, "--valid-fraction", 0,
                      "--quiet", "--save", target)
        caught = False
        while p.poll() is None:
            if any(n.startswith(TEMP_PREFIX) or n.endswith(".tmp") for n in os.listdir(d)):
                p.send_signal(signal.SIGKILL)
                caught = True
                break
            time.sleep(0.002)
        p.wait()
        p.stdout.close()
        p.stderr.close()
        if caught:
            break
        if target.exists():
            target.unlink()
    else:
        return False, "the save ended before it could be killed (3 tries)"
    if target.exists():
        try:
            lfopt.load(target)
        except ModelFileError as exc:
            return False, f"a damaged model file was left: {tail(str(exc))}"
    left = strays(d)
    q = ctx.cli("train", "--data", ctx.small_tsv(), "--rank", 3, "--epochs", 1, "--quiet", "--save", d / "next.npz")
    if q.returncode != 0:
        return False, f"next save failed: {tail(q.stderr)}"
    after = strays(d)
    return not after, f"left by the kill: {len(left)} temp file(s); after the next save: {after or 'none'}"


@case("kills/ctrl-c-training", "Ctrl-C during training exits 130 and writes no partial file")
def _(ctx):
    d = ctx.dir("sigint")
    p = ctx.popen("train", "--data", ctx.medium_tsv(), "--rank", 32, "--epochs", 50, "--output", d / "r.json",
                  "--save", d / "m.npz")
    time.sleep(4.0)
    if p.poll() is not None:
        return False, f"training ended before the interrupt (rc {p.returncode})"
    p.send_signal(signal.SIGINT)
    rc = p.wait(timeout=60)
    err = p.stderr.read()
    p.stdout.close()
    p.stderr.close()
    left = sorted(x.name for x in d.iterdir())
    ok = rc == 130 and "Traceback" not in err and not left
    return ok, f"rc {rc}, files left {left}: {tail(err, 80)}"


# =========================================================== tampered models
def _tamper(ctx, name, edit):
    src = ctx.model()
    with np.load(src, allow_pickle=False) as z:
        arrays = dict(z)
    meta = json.loads(arrays["__lfopt_meta__"].tobytes().decode())
    edit(arrays, meta)
    arrays["__lfopt_meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path = ctx.dir("tamper") / f"{name}.npz"
    np.savez(path, **arrays)
    p = ctx.cli("recommend", "--model", path, "--user", 1, "-k", 3)
    return expect_error(p, path.name)


@case("models/missing-array", "a model file missing an array is refused clearly")
def _(ctx):
    return _tamper(ctx, "missing", lambda a, m: a.pop("params"))


@case("models/metadata-type", "a model file with a wrong type in the metadata is refused clearly")
def _(ctx):
    return _tamper(ctx, "metatype", lambda a, m: (m.update(n_users=str(m["n_users"])), m["params"].update(rank="4")))


@case("models/swapped-shapes", "a model file with swapped shapes is refused clearly")
def _(ctx):
    def edit(a, m):
        a["user_ids"], a["item_ids"] = a["item_ids"], a["user_ids"]
        a["user_counts"], a["item_counts"] = a["item_counts"], a["user_counts"]
        m["n_users"], m["n_items"] = m["n_items"], m["n_users"]
        m.pop("arrays", None)  # no manifest to compare with: the state itself must be checked

    return _tamper(ctx, "swapped", edit)


@case("models/nan-parameters", "a model file with NaN parameters is refused clearly")
def _(ctx):
    def edit(a, m):
        a["params"] = a["params"].copy()
        a["params"][::7] = np.nan

    return _tamper(ctx, "nanparams", edit)


@case("models/text-as-npz", "a text file renamed .npz gets an accurate message")
def _(ctx):
    path = ctx.dir("textnpz") / "model.npz"
    path.write_text("user item rating\n1 2 5\n")
    return expect_error(ctx.cli("recommend", "--model", path, "--user", 1), "model.npz", "not a zip/npz archive")


# =============================================================== determinism
_DETERMINISM = textwrap.dedent("""
    import hashlib, json, sys, warnings
    import numba, numpy as np, lfopt
    warnings.simplefilter("ignore")
    numba.set_num_threads(int(sys.argv[1]))
    data = lfopt.synthetic(n_users=150, n_items=100, nnz=6000, seed=1)
    out = {}
    for opt in ("sgd", "adam", "als", "adago", "slf", "sslf", "gibbs"):
        m = lfopt.LatentFactorModel(rank=4, optimizer=opt, epochs=25, seed=3).fit(data)
        out[opt] = hashlib.sha1(np.ascontiguousarray(m.params_).tobytes()).hexdigest()
    for opt in ("adam", "sgd"):
        m = lfopt.BPRMF(rank=4, epochs=3, seed=3, optimizer=opt, patience=None).fit(data, data)
        out["bpr-" + opt] = hashlib.sha1(np.ascontiguousarray(m.params_).tobytes()).hexdigest()
    print(json.dumps(out))
""")


@case("determinism/threads", "the same seed gives bit-identical models with 1 and 2 threads (every optimizer)")
def _(ctx):
    runs = []
    for threads in (1, 2):
        p = subprocess.run([sys.executable, "-c", _DETERMINISM, str(threads)], capture_output=True, text=True,
                           timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), "NUMBA_NUM_THREADS": "2"})
        if p.returncode != 0:
            return False, tail(p.stderr)
        runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
    differ = [k for k in runs[0] if runs[0][k] != runs[1][k]]
    return not differ, f"differ: {differ}" if differ else f"{len(runs[0])} models identical"


# ===================================================================== scale
_BIG = textwrap.dedent("""
    import resource, sys, time, warnings
    import numpy as np, lfopt
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    m, n, per = 200_000, 30_000, 100
    u = np.repeat(np.arange(m, dtype=np.int64), per)
    i = (u * 7919 + np.tile(np.arange(per, dtype=np.int64), m) * 13) % n  # distinct items per user
    r = (np.random.default_rng(0).integers(1, 6, len(u))).astype(np.float32)
    data = lfopt.Interactions.from_arrays(u, i, r)
    t1 = time.perf_counter()
    model = lfopt.LatentFactorModel(rank=8, optimizer="als", epochs=1, validation=None).fit(data)
    t2 = time.perf_counter()
    rmse = model.evaluate(data.subset(np.arange(0, data.nnz, 97)))["rmse"]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(data.nnz, t1 - t0, t2 - t1, rmse, rss)
""")


@case("scale/20M", "20M ratings: build, one ALS epoch, evaluate (finite, under 8 GiB)", big=True)
def _(ctx):
    p = subprocess.run([sys.executable, "-c", _BIG], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    if p.returncode != 0:
        return False, tail(p.stderr)
    nnz, t_build, t_fit, rmse, rss = (float(x) for x in p.stdout.split())
    ok = nnz == 20_000_000 and np.isfinite(rmse) and rss < 8
    return ok, f"{int(nnz)} ratings: build {t_build:.1f} s, fit {t_fit:.1f} s, RMSE {rmse:.3f}, peak {rss:.2f} GiB"


# ======================================================================= main
def main(argv=None) -> int:
    global DATA_DIR, DOUBAN
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", "--only", dest="k", action="append", default=[], metavar="TEXT",
                    help="run the cases whose name contains TEXT (repeatable)")
    ap.add_argument("--data-dir", default=str(DATA_DIR), help="the shared datasets (default: %(default)s)")
    ap.add_argument("--skip-big", action="store_true", help="leave out the 20M-ratings case")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args(argv)
    DATA_DIR = Path(args.data_dir)
    DOUBAN = DATA_DIR / "douban-monti" / "training_test_dataset.mat"
    chosen = [c for c in CASES if (not args.k or any(k in c[0] for k in args.k)) and not (args.skip_big and c[3])]
    if args.list:
        for name, title, _, _ in chosen:
            print(f"{name:28s} {title}")
        return 0
    root = Path(tempfile.mkdtemp(prefix="lfopt-reliability-"))
    ctx = Ctx(root)
    passed, failed, skipped = [], [], []
    t_all = time.perf_counter()
    try:
        for name, title, fn, _ in chosen:
            t0 = time.perf_counter()
            try:
                ok, detail = fn(ctx)
            except Exception as exc:  # the harness reports, it does not stop
                ok, detail = False, f"the case itself broke: {type(exc).__name__}: {tail(str(exc))}"
                if os.environ.get("LFOPT_RELIABILITY_DEBUG"):
                    traceback.print_exc()
            status = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
            {"SKIP": skipped, "PASS": passed, "FAIL": failed}[status].append(name)
            print(f"{status}  {name:28s} {title}  [{time.perf_counter() - t0:.1f} s] -- {detail}", flush=True)
    finally:
        if args.keep:
            print(f"scratch folder kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n{len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped of {len(chosen)} cases "
          f"in {time.perf_counter() - t_all:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return min(len(failed), 100)


if __name__ == "__main__":
    sys.exit(main())
