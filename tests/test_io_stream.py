"""The chunked reader of large text files (issue 11): the same data as the whole-file reader, in bounded memory.

Every case is loaded whole (``chunk_bytes=0``) and in pieces of 1 byte (each
line its own piece), 13 and 64 bytes (pieces cut anywhere in lines, a few lines
each): the results must be identical -- the same entries in the same order, the
same ID maps and dtypes, the same DataWarnings, the same DataError message
(file, line, column and value) -- for MovieLens 100K (tab), 1M (``::``) and
25M (csv with header) files, generic tsv/csv files, and the files of the
error tests (tests/test_errors.py).
"""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest

import lfopt
from lfopt import ConfigError, DataError
from lfopt.data import io as lio

CHUNKS = (1, 13, 64)
H25 = "userId,movieId,rating,timestamp\n"


def outcome(path, **kwargs):
    """``("ok", data, warnings)`` or ``("error", message, warnings)`` of one load."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = ("ok", lfopt.load_data(path, **kwargs))
        except DataError as exc:
            result = ("error", str(exc))
    return (*result, [str(w.message) for w in caught if issubclass(w.category, lio.DataWarning)])


def assert_same_data(a, b):
    for field in ("users", "items", "values", "user_ids", "item_ids"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype, field
        np.testing.assert_array_equal(x, y, err_msg=field)
    assert (a.timestamps is None) == (b.timestamps is None)
    if a.timestamps is not None:
        np.testing.assert_array_equal(a.timestamps, b.timestamps)
    assert (a.shape, a.name) == (b.shape, b.name)


def check_parity(path, chunks=CHUNKS, **kwargs):
    """Load ``path`` whole and in pieces; assert identical outcomes; return the whole-file one."""
    ref = outcome(path, chunk_bytes=0, **kwargs)
    for cb in chunks:
        got = outcome(path, chunk_bytes=cb, **kwargs)
        assert got[0] == ref[0], (cb, got[1], ref[1])
        if ref[0] == "ok":
            assert_same_data(got[1], ref[1])
        else:
            assert got[1] == ref[1], cb
        assert got[2] == ref[2], cb
    return ref


def ml_lines(sep, n_users=9, rated=(1, 4, 2, 9, 7), time=True, start=978300000):
    rows = []
    for u in range(1, n_users + 1):
        for k, i in enumerate(rated):
            fields = [u, i * 10 + u % 3, (u * i + k) % 5 + 1] + ([start + 37 * u + k] if time else [])
            rows.append(sep.join(map(str, fields)))
    return "\n".join(rows) + "\n"


ML25 = H25 + "".join(f"{u},{m},{(u + m) % 10 / 2 + 0.5},{1_100_000_000 + u * m}\n"
                     for u in (1, 2, 5, 17, 300) for m in (1, 31, 296, 2571, 209171))

GOOD = [
    ("u.data", ml_lines("\t"), {}),
    ("ratings.dat", ml_lines("::"), {}),
    ("ratings.dat", ml_lines("::", time=False), {}),
    ("ratings.dat", ml_lines("::").replace("\n", "\r\n"), {}),  # Windows line ends
    ("ratings.dat", ml_lines("::").rstrip("\n"), {}),  # no newline at the end
    ("ratings.dat", ml_lines("::") + "\n\n\n\n", {}),  # trailing blank lines, over several pieces
    ("ratings.csv", ML25, {}),
    ("ratings.csv", ML25, {"implicit": True}),
    ("ratings.csv", H25 + "".join(  # movies unsorted, users interleaved
        f"{u},{m},4.0,{1_200_000_000 + u}\n" for m in (9, 3, 7) for u in (8, 2, 5, 1)), {}),
    ("x.tsv", "3 1 4\n1 2 5\n2 1 3\n3 3 2\n", {}),  # two fields ... four: positional
    ("x.tsv", "3 1\n1 2\n2 1\n", {}),
    ("x.tsv", "".join(f"{u} {i} 4 {881250949 + u}\n" for u in range(5) for i in range(3)), {}),
    ("x.tsv", "1 1 4 5\n1 2 3 7\n2 1 2 12\n", {"columns": {"user": 0, "item": 1, "rating": 3}}),
    ("x.tsv", "alice book 4\nbob book 3\nalice pen 5\n", {}),  # string IDs: read whole
    ("x.tsv", "10 1 4\n0 1 3\n7 2 0.5\n", {}),  # "0.5" and "0": no leading zeros
    ("x.tsv", "1 1 4\n2 1 3\n007 2 5\n", {}),  # "007" stays a string, for the whole column
    ("x.tsv", "".join(f"{u} {k} 4\n" for k, u in enumerate([5, 2**63, 2**63 + 5, 2**64 - 1])), {}),  # uint64
    ("x.tsv", "1 1 4\n2 2 3\n3.0 1 5\n", {}),  # a float ID in one line
    ("x.tsv", f"1 1 4\n{2**53 + 1} 2 3\n3.0 1 5\n", {}),  # ... with an integer pandas' float64 cannot hold
    ("x.csv", "user_id,item_id,score\n1,10,2\n2,10,4\n1,11,3\n", {}),  # header guessed
    ("x.csv", "user_id,item_id,score\nu1,i1,2\nu2,i1,4\n", {}),
    ("x.csv", "who,what,stars,when\n5,a,4,10\n6,b,3,11\n5,b,1,12\n",
     {"columns": {"user": "who", "item": "what", "rating": "stars", "timestamp": "when"}}),
    ("x.csv", "a,b,c\n4.5,1,7\n3.0,2,7\n2.0,1,8\n", {"columns": {"user": 2, "item": 1, "rating": 0}}),
    ("ratings.dat", "1::1::5::978300760.0\n1::2::4::978300761\n", {}),  # a float time in one line
    ("ratings.dat", "1::1::5\n1::2::0\n2::1::3\n2::2::0\n", {}),  # zero ratings on a 1..5 scale: warned
    ("ratings.dat", "1::1::5\n1::2::-1\n2::1::0\n", {}),  # ... not on another scale
    ("ratings.dat", "1::1::1e14\n1::2::2.5\n", {}),  # large but trainable
]


@pytest.mark.parametrize("name, content, kwargs", GOOD, ids=[f"{k}" for k in range(len(GOOD))])
def test_same_data_as_the_whole_file(write, name, content, kwargs):
    ref = check_parity(write(name, content), **kwargs)
    assert ref[0] == "ok", ref[1]


DUPLICATES = "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in [
    (3, 1, 4, 50), (1, 2, 5, 10), (3, 1, 2, 40), (2, 2, 1, 30), (3, 1, 5, 60), (1, 2, 3, 20), (4, 4, 4, 1)])


@pytest.mark.parametrize("policy", ["error", "mean", "last"])
def test_duplicates_are_refused_or_combined_alike(write, policy):
    ref = check_parity(write("ratings.dat", DUPLICATES), duplicates=policy)
    if policy == "error":
        assert ref[1].endswith("line 3: duplicate (user, item) pair (3, 1), first seen at "
                               f"{ref[1].split('first seen at ')[1].split(';')[0]}; pass duplicates='mean' "
                               "or duplicates='last' to combine repeats")
        assert "ratings.dat, line 1;" in ref[1]
    else:
        assert ref[1].nnz == 4


def test_mean_of_many_repeats_sums_as_numpy(write):
    """Groups of up to 300 repeats of float values: the mean is computed as numpy's reduceat (pairwise sums)."""
    rng = np.random.default_rng(3)
    sizes = [1, 2, 7, 8, 9, 16, 129, 300]
    lines = [f"{g} {i % 3} {v!r}" for g, n in enumerate(sizes) for i in range(n)
             for v in [float(rng.standard_normal() * 10.0 ** rng.integers(-3, 4))]]
    order = rng.permutation(len(lines))
    text = "\n".join(lines[k] for k in order) + "\n"
    ref = check_parity(write("x.tsv", text), chunks=(200, 4096), duplicates="mean")
    assert ref[0] == "ok" and ref[1].nnz == sum(min(n, 3) for n in sizes)


def _error_cases():
    """The files of tests/test_errors.py and more, each with one problem."""
    ml = "1::1::5\n1::2::4\n2::1::3\n"
    return [
        ("ratings.dat", "1::1::5\n1::2::4\n2::1::3::5::6\n"),
        ("ratings.dat", "1::1::5::9\n1::2::4::9\n2::1::3::9::7\n1::3::2::1\n"),
        ("u.data", "1\t1\t5\t100\n1\t2\t4\t5\t7\n"),
        ("ratings.csv", H25 + "1,1,4.5,100\n1,2,3.0,200,5\n"),
        ("ratings.dat", "1::1::5\n1::2::4\n2::1\n"),
        ("u.data", "1\t1\t5\t100\n1\t2\t4\n"),
        ("ratings.csv", H25 + "1,1,4.5,100\n1,,3.0,200\n"),
        ("ratings.dat", "1::1::5\n2::1::4\n\n2::2::3\n"),  # a blank line before data
        ("ratings.dat", ml + "\n\n  \n" + "5::5::5\n"),  # blank lines over pieces, then data
        ("ratings.dat", "1::1::5\n1::2::4::978300760\n2::1::3\n"),
        ("x.tsv", "a b 3 1 2 3\nc b 4 1 2 3\n"),
        ("users.dat", "1\n2\n"),
        ("ratings.dat", "1::1::5\n1::2::x\n2::1::3\n"),
        ("u.data", "1\t1\t5\t100\n1\t2\tfoo\t5\n"),
        ("ratings.csv", H25 + "1,1,4.5,100\n1,2,bad,200\n"),
        ("x.tsv", "a b 3\nc b four\n"),
        ("u.data", "1\t1\t5\t100\n1\t2\t3\tyesterday\n"),
        ("ratings.dat", "1::1::5\n1::2::nan\n2::1::3\n"),
        ("ratings.dat", "1::1::5\n1::2::inf\n2::1::3\n"),
        ("ratings.dat", "1::1::5\n1::2::3\n2::1::-inf\n"),
        ("ratings.dat", "1::1::5\n1::2::1e400\n2::1::3\n"),
        ("x.tsv", "1 1 3\n1 2 1e39\n"),
        ("x.tsv", "1 1 3\n1 2 1e30\n"),
        ("ratings.dat", "1::1::5\n1::2::4\n2::1::-2e16\n"),
        ("ratings.csv", H25 + "1,1,4.5,100\n2,7,3e300,200\n"),
        ("x.tsv", "1 1 3\n1 2 1e-50\n"),
        ("ciao.txt", "1 10 3 4\n1 11 7 5\n2 10 3 2\n2 12 19 1\n"),  # user item category rating
        ("x.tsv", "1 1 4 978300760\n1 2 5 2.5\n"),
        ("x.tsv", "1 1 4 978300760\n1 2 5 -4\n"),
        ("x.tsv", "1 1 4 978300760\n1 2 5 oops\n"),
        ("ratings.dat", "1::1::5\n-3::2::4\n"),  # negative ID
        ("ratings.dat", "1::1::5\n2::u7::4\n"),  # not an integer where MovieLens has integers
        ("ratings.dat", "1::1::5\n18446744073709551616::2::4\n"),  # beyond 2**64 - 1
        ("ratings.dat", "1::1::5\n2.5::2::4\n"),  # a fractional ID
        ("ratings.dat", "1::1::5::9\n2::2::4::9.5\n"),  # a fractional time
        ("ratings.dat", "1::1::5\n2::3::4\n1::1::2\n"),  # a repeated pair
        ("ratings.dat", b"1::1::5\n2::3::4\n3::4\xff::5\n"),  # not UTF-8
        ("x.tsv", b"ann\t1\t5\nbob\t2\t4\nren\xe9e\t3\t2\n"),
        ("x.csv", b"user,item,rating\n1,1,4\n1,caf\xe9,4\n"),
        ("ratings.csv", H25),  # a header, no data
        ("ratings.csv", H25 + "\n\n"),  # a header and blank lines
        ("ratings.dat", "\n\n"), ("x.csv", "  \n"), ("x.tsv", "\n1 1 5\n"),  # empty; a blank first line
        ("x.csv", "who,what\n1,2\n"),  # header names not guessed
        ("x.tsv", "NA NA NA NA\n"), ("x.tsv", "NA NA NA\n1 2 3\n"),  # lines of missing values only
        ("ratings.dat", "NA::NA::NA\nNA::NA::NA\n"), ("x.csv", "u,i,r\nNA,NA,NA\n"),
    ]


@pytest.mark.parametrize("name, content", _error_cases(), ids=[f"{k}" for k in range(len(_error_cases()))])
def test_same_error_as_the_whole_file(write, name, content):
    ref = check_parity(write(name, content))
    assert ref[0] == "error", "the case is meant to fail"


def test_columns_and_policy_errors_alike(write):
    path = write("ratings.csv", ML25)
    for kwargs in ({"columns": {"user": "userId", "item": "nope"}}, {"columns": {"user": "userId", "itm": 1}},
                   {"columns": {"user": "userId"}}, {"duplicates": "first"}):
        assert check_parity(path, **kwargs)[0] == "error"
    assert check_parity(write("x.tsv", "1 2 3\n2 2 4\n"), columns={"user": 0, "item": 5})[0] == "error"


def test_line_numbers_are_the_files_far_into_it(write):
    """Problems hundreds of pieces into the file name their line in the file, not in the piece."""
    body = "".join(f"{u}::{i}::{(u + i) % 5 + 1}::{978300000 + u}\n" for u in range(1, 101) for i in range(1, 11))
    lines = body.splitlines(keepends=True)
    cases = {
        "bad value": (lines[:733] + ["8::9::x::978300000\n"] + lines[733:], "line 734, column 3 (rating)"),
        "too many fields": (lines[:811] + ["8::9::5::1::2\n"] + lines[811:], "line 812: expected 4 fields, found 5"),
        "blank line": (lines[:901] + ["\n"] + lines[901:], "line 902: empty line"),
        "repeat": (lines + ["50::3::1::978300050\n"], "line 1001: duplicate (user, item) pair (50, 3), first seen "
                                                      "at "),
    }
    for label, (text, expected) in cases.items():
        path = write("ratings.dat", "".join(text))
        for cb in (64, 1000):
            kind, message, _ = outcome(path, chunk_bytes=cb)
            assert kind == "error" and expected in message, (label, cb, message)
        assert outcome(path, chunk_bytes=0)[1] == message
    assert "line 493" in message  # the first (50, 3) is line 50 * 10 - 7 = 493


def test_zero_rating_warning_counts_over_pieces(write):
    body = ml_lines("::", n_users=40).splitlines()
    body[3] = "1::99::0::978300000"
    body[150] = "33::99::0::978300000"
    kind, data, caught = check_parity(write("ratings.dat", "\n".join(body) + "\n"), chunks=(64, 300))
    assert kind == "ok" and len(caught) == 1
    assert "2 rating(s) are 0 (first at line 4)" in caught[0] and "1..5" in caught[0]


def test_large_file_is_read_in_pieces(write, monkeypatch):
    """Above chunk_bytes the file is never read whole, and pandas parses pieces of about chunk_bytes."""
    rng = np.random.default_rng(0)
    n = 30_000
    users, items = rng.integers(1, 3000, n), rng.integers(1, 500, n)
    keep = np.unique(users * 1000 + items, return_index=True)[1]
    text = H25 + "".join(f"{u},{i},{r / 2},{t}\n" for u, i, r, t in zip(
        users[keep], items[keep], rng.integers(1, 11, n)[keep], rng.integers(10**9, 2 * 10**9, n)[keep]))
    path = write("ratings.csv", text)
    whole = lfopt.load_data(path, chunk_bytes=0)
    sizes = []
    parse = lio._parse_text

    def spy(path, raw, *args, **kwargs):
        sizes.append(len(raw))
        return parse(path, raw, *args, **kwargs)

    def never(path):
        raise AssertionError("the whole file was read")

    monkeypatch.setattr(lio, "_parse_text", spy)
    monkeypatch.setattr(lio, "_read_bytes", never)
    cb = 16 << 10
    data = lfopt.load_data(path, chunk_bytes=cb)
    assert_same_data(data, whole)
    assert len(sizes) >= len(text) // cb and max(sizes) <= cb + 200  # a piece, plus the header and first line
    assert data.nnz == len(keep) and data.timestamps.dtype == np.int32  # Unix seconds fit: compact


def test_peak_memory_is_the_arrays_not_the_text(write):
    """Traced allocations (numpy's and Python's): the chunked reader's peak stays near the final arrays (20 bytes
    per rating with times; reserved from a guess of the line count with 25 % to spare: pages never written cost
    no resident memory) plus a few pieces, far below the whole-file reader's."""
    rng = np.random.default_rng(1)
    n = 200_000
    key = np.unique(rng.integers(1, 20_000, n) * 10**6 + rng.integers(1, 5_000, n))  # sorted, no repeats
    u, i = key // 10**6, key % 10**6
    lines = [f"{a},{b},{r / 2},{t}" for a, b, r, t in zip(u, i, rng.integers(1, 11, len(key)),
                                                          rng.integers(10**9, 2 * 10**9, len(key)))]
    path = write("ratings.csv", H25 + "\n".join(lines) + "\n")

    def peak(cb):
        tracemalloc.start()
        try:
            return lfopt.load_data(path, chunk_bytes=cb), tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    cb = 64 << 10
    lfopt.load_data(path, chunk_bytes=cb)  # numba warm
    whole, peak_whole = peak(0)
    data, peak_chunked = peak(cb)
    assert_same_data(data, whole)
    arrays = data.nnz * 20
    assert peak_chunked < 1.5 * arrays + 16 * cb + (1 << 20), (peak_chunked, arrays)
    assert peak_chunked < 0.4 * peak_whole, (peak_chunked, peak_whole)


@pytest.mark.parametrize("bad", [-1, 2.5, "big", True])
def test_bad_chunk_bytes_is_a_config_error(write, bad):
    with pytest.raises(ConfigError, match=r"chunk_bytes .*got"):
        lfopt.load_data(write("u.data", "1\t1\t5\n"), chunk_bytes=bad)


def test_id_map_grows_and_sorts_like_unique():
    rng = np.random.default_rng(5)
    ids = np.concatenate([rng.integers(0, 2**62, 5000), rng.integers(0, 50, 5000)]).astype(np.int64)
    m = lio._IdMap(bits=2)
    out = np.empty(len(ids), dtype=np.int32)
    for cut in np.array_split(np.arange(len(ids)), 7):
        part = slice(cut[0], cut[-1] + 1)
        m.map(ids[part], out[part])
    sorted_ids, rank = m.sorted_ids()
    lio._remap(out, rank)
    ref_ids, ref_index = np.unique(ids, return_inverse=True)
    assert sorted_ids.dtype == np.int64
    np.testing.assert_array_equal(sorted_ids, ref_ids)
    np.testing.assert_array_equal(out, ref_index)
    big = lio._IdMap()
    big.map(np.array([2**64 - 1, 3, 2**63], dtype=np.uint64), np.empty(3, dtype=np.int32))
    assert big.sorted_ids()[0].tolist() == [3, 2**63, 2**64 - 1]


STRING_IDS = [
    ("x.tsv", "".join(f"{u} {i} {1 + (u + i) % 5}\n" for u in range(40) for i in range(3))
     + "u7 1 4\n3 b12 2\nu7 b12 5\n", {}),  # integers first, text in a late piece: both columns
    ("x.csv", "user,item,stars\n" + "".join(f"A{u:03d}X,B{i},{(u * i) % 5 + 1}\n" for u in range(30) for i in range(4)),
     {}),
    ("x.csv", "a,b,c\n" + "".join(f"{(u * i) % 5 + 1},{i},{u}\n" for u in range(30) for i in range(4))
     + "3,i9,zed\n", {"columns": {"user": 2, "item": 1, "rating": 0}}),  # positions on a header file
    ("x.tsv", "".join(f"{u} {i} 4\n" for u in range(30) for i in ("x", "y")) + "5 x 4\n", {"duplicates": "mean"}),
]


@pytest.mark.parametrize("name, content, kwargs", STRING_IDS, ids=[str(k) for k in range(len(STRING_IDS))])
def test_string_ids_are_read_in_pieces(write, monkeypatch, name, content, kwargs):
    """A column with text anywhere is text for the whole file: the piecewise reader starts again with
    it read as text (never the whole file at once) and gives the whole-file reader's data."""
    path = write(name, content)
    ref = check_parity(path, chunks=(13, 64, 500), **kwargs)
    assert ref[0] == "ok", ref[1]
    assert ref[1].user_ids.dtype.kind == "U" or ref[1].item_ids.dtype.kind == "U"
    runs = []
    chunked = lio._load_text_chunked

    def spy(*args):
        runs.append(args[-1])
        return chunked(*args)

    def never(path):
        raise AssertionError("the whole file was read")

    monkeypatch.setattr(lio, "_load_text_chunked", spy)
    monkeypatch.setattr(lio, "_read_bytes", never)
    data = lfopt.load_data(path, chunk_bytes=64, **kwargs)
    assert_same_data(data, ref[1])
    assert runs[0] is None and len(runs) >= 2  # read again with the text columns as text
    assert set(runs[-1]) == {f for f in ("user", "item") if getattr(ref[1], f + "_ids").dtype.kind == "U"}


def test_leading_zero_ids_still_read_whole(write, monkeypatch):
    path = write("x.tsv", "".join(f"{u} {i} 4\n" for u in range(1, 30) for i in range(3)) + "007 1 5\n")
    ref = check_parity(path, chunks=(64,))
    assert ref[0] == "ok" and "007" in ref[1].user_ids.tolist() and "7" in ref[1].user_ids.tolist()
