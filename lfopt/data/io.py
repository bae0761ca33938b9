"""Loaders from files into :class:`~lfopt.data.interactions.Interactions`.

Supported formats (``format=`` names, auto-detected from the file name when omitted):

=============  ==========================================================================
``ml-100k``    MovieLens 100K ``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp``
``ml-1m``      MovieLens 1M/10M ``ratings.dat``: ``user::item::rating[::timestamp]``
``ml-20m``     MovieLens 20M/25M ``ratings.csv``: header ``userId,movieId,rating,timestamp``
``mat``        any MATLAB ``.mat`` file, v5 (read with scipy) or v7.3 (HDF5, read with
               h5py), told apart by the file's header (see :func:`mat_version`):
               a Monti et al. file (variables ``M``, ``Otraining``, ``Otest``, e.g.
               Douban) keeps its fixed split; otherwise one numeric variable holds
               either a table of ``(user, item, rating[, timestamp])`` rows (Ciao /
               Epinions-style dumps; ``columns=`` maps them) or a rating matrix
               (sparse, or dense with zeros/NaN for missing entries)
``monti``      a Monti et al. ``.mat`` file (v7.3 or v5), refused if it is not one
``tsv``        whitespace/tab separated ``user item rating [timestamp]``, no header
``csv``        comma separated with a header; columns chosen by ``columns=``
``parquet``    a Parquet table; columns chosen by ``columns=``
=============  ==========================================================================

Text files are parsed by pandas' C engine (never the slow python engine), so
MovieLens 1M loads in well under a second.  Every problem is reported as a
:class:`~lfopt.errors.DataError` naming the file, line, column and value.
Text files larger than :data:`CHUNK_BYTES` (8 MiB) are read, parsed and
checked in pieces of that size and indexed as they come (``load(chunk_bytes=)``):
memory stays near the final arrays (20 bytes per rating with times, 12
without) instead of several times the text, with the same result, ID maps,
warnings and errors as reading them whole (see :func:`_load_text_chunked`);
100M lines of an ML-25M-like ``ratings.csv`` load on a 24 GB box
(``benchmarks/bench_load.py``, ``benchmarks/results/load.md``).  Text IDs
(``"u7"``) are mapped through a dict of the distinct IDs, piece by piece too.

Checks made at load time (each one a clear message, nothing silently changed):

* **A 4th column must be a plausible timestamp** (``tsv`` files and ``.mat``
  tables laid out by position, when ``columns=`` is not given): all its values
  are whole numbers >= 0, at most 4.2e12 (the year 2103 in epoch
  milliseconds), and the largest is at least 1e8 (1973-03-03 in epoch
  seconds: a real time column spans more than the first three years after
  1970).  A ``user, item, category, rating`` dump fails this (categories are
  small numbers) and is refused with a message telling how to pass
  ``columns`` (CLI ``--columns``) naming the rating column.
* **Ratings** beyond +-1e15 (float32 training would overflow; see
  :data:`~lfopt.data.interactions.MAX_ABS_RATING`) or not finite are refused,
  naming file, line, column and value.
* **Zero ratings on a 1..K scale** (the other ratings lie in [0.5, 10]) are
  reported with a :class:`DataWarning` giving their count and the first line:
  a 0 there usually means "no rating".
* **IDs**: integers from 2**63 to 2**64 - 1 keep their value (uint64); IDs
  that are not plain integers (``"u7"``, ``"007"``, integers beyond 2**64 - 1)
  stay strings exactly as written -- ``"007"`` and ``"7"`` are two users.
* **Text that is not UTF-8** is refused naming the line and byte.
* **Monti files**: a pair marked in both ``Otraining`` and ``Otest`` is
  reported (warning with the count; it is kept in the test part only, never
  trained on); ratings outside both masks are reported too.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numba import njit

from ..errors import ConfigError, DataError
from .interactions import (DUPLICATE_POLICIES, MAX_INT_ID, Interactions, _as_id_array, _checked_timestamps,
                           _sort_by_major_minor, check_rating_values, show)

FORMATS = ("ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "mat", "monti", "tsv", "csv", "parquet", "matrix")
FIELD_NAMES = ("user", "item", "rating", "timestamp")

#: Plausible timestamps (see the module docstring): whole numbers in [0, TS_MAX]
#: whose largest value is at least TS_MIN_LATEST.
TS_MIN_LATEST = 1e8
TS_MAX = 4.2e12

#: Text files larger than this many bytes are read in pieces of this size (``load(chunk_bytes=)``):
#: a piece costs a few times its size in scratch (bytes, pandas' table, checks).
CHUNK_BYTES = 8 << 20

#: A variable of a ``.mat`` file is a table of rows (not a rating matrix) when it has
#: at most this many columns and more rows than columns.
MAT_TABLE_MAX_COLUMNS = 8

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class DataWarning(UserWarning):
    """The data loaded, but something in it is probably not what the user meant."""


_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])


def _warn(message: str) -> None:
    """A DataWarning attributed to the first caller outside the lfopt package."""
    import sys

    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    warnings.warn(message, DataWarning, stacklevel=level)


def detect_format(path: str | os.PathLike) -> str:
    """Guess the format of ``path`` from its name."""
    name = Path(path).name.lower()
    if name == "u.data":
        return "ml-100k"
    if name == "ratings.dat":
        return "ml-1m"
    if name == "ratings.csv":
        return "ml-20m"
    suffix = Path(name).suffix
    if suffix == ".mat":
        return "mat"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    if suffix in (".tsv", ".dat", ".txt", ".data", ".tab"):
        return "tsv"
    raise DataError(
        f"{path}: cannot tell the format from the file name; pass format= one of {', '.join(FORMATS)}"
    )


def load(path, format: str | None = None, *, columns=None, duplicates: str = "error", implicit: bool = False,
         variable: str | None = None, chunk_bytes: int | None = None, missing: float | None = None):
    """Load a ratings file into an :class:`Interactions`.

    Parameters
    ----------
    path : str or Path
    format : one of :data:`FORMATS`, or None to detect it from the file name.
    columns : a mapping ``{"user": col, "item": col, "rating": col, "timestamp": col}``
        of column names (csv/parquet) or 0-based positions (tsv, ``.mat`` tables);
        ``rating``/``timestamp`` may be omitted.  For ``.mat`` files it may also
        name the variable: ``{"variable": "rating", ...}`` (the CLI's
        ``--columns variable=rating,user=0,item=1,rating=3``).
    duplicates : ``"error"``, ``"mean"`` or ``"last"`` for repeated (user, item) pairs.
    implicit : ignore the rating column and give every entry the value 1.
    variable : ``.mat`` files: the variable holding the ratings (default: the only
        numeric one, or Monti's ``M``/``Otraining``/``Otest``).
    chunk_bytes : text files larger than this are read, parsed and checked in
        pieces of about this many bytes (cut at line ends), so that memory stays
        near the final arrays (see :func:`_load_text_chunked`); default
        :data:`CHUNK_BYTES`; 0 reads every file whole.  The result, its ID maps,
        warnings and errors are the same either way (a file with several
        problems may have another one reported first: the chunked reader reports
        the first it meets by line; a column mixing integers and decimals may
        show a bad value as written, ``20000000000000000``, where the whole-file
        reader shows ``2e+16``).  A column of text IDs (``"u7"``) makes the pieces
        start again with that column read as text (the file is read up to three
        times, never whole); integer IDs with leading zeros (``"007"``) are read whole.
    missing : ``format="matrix"`` (a dense matrix in a text file, see :func:`load_matrix`):
        the number that marks a missing cell (QoS matrices such as WS-Dream use -1);
        None: 0 (and always NaN or an empty field).

    For Monti files the returned data carries its fixed split in
    ``data.meta["test_mask"]`` (see :func:`lfopt.data.split.fixed_split`).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a ratings file")
    fmt = (format or detect_format(path)).lower()
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if columns is not None:
        columns = dict(columns)
        variable = columns.pop("variable", variable)
        if not columns:
            columns = None
    if fmt in ("mat", "monti"):
        return load_mat(path, columns=columns, variable=variable, duplicates=duplicates, implicit=implicit,
                        monti_only=fmt == "monti")
    if variable is not None:
        raise DataError(f"{path}: variable= names a variable of a .mat file; this is a {fmt} file")
    if fmt == "matrix":
        if columns is not None:
            raise DataError(f"{path}: columns= maps the fields of a table of (user, item, rating) lines; a dense "
                            f"matrix file has one line per user and one value per item")
        return load_matrix(path, missing=missing, implicit=implicit)
    if missing is not None:
        raise DataError(f"{path}: missing={show(missing)} marks the missing cells of a dense matrix (format='matrix', "
                        f"CLI --format matrix); this {fmt} file has a line per rating, and its missing entries are "
                        f"the lines it does not have")
    if chunk_bytes is None:
        chunk_bytes = CHUNK_BYTES
    elif isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, (int, np.integer)) or chunk_bytes < 0:
        raise ConfigError(f"chunk_bytes must be a whole number of bytes >= 0 (0: read the file whole), "
                          f"got {chunk_bytes!r}")
    if fmt in _TEXT_FORMATS and chunk_bytes and _file_size(path) > chunk_bytes:
        text_labels = None
        try:
            for _ in range(3):  # the user column, then the item column, may turn out to hold text
                try:
                    return _load_text_chunked(path, fmt, columns, duplicates, implicit, int(chunk_bytes), text_labels)
                except _TextIds as again:
                    text_labels = again.labels
        except _ReadWhole:
            pass  # something only the whole-file reading decides exactly (see _load_text_chunked)
    if fmt == "parquet":
        table = _read_parquet(path)
        return _from_table(table, path, columns or _guess_columns(table.columns, path), duplicates, implicit, None)
    if fmt in ("ml-1m", "ml-10m"):
        original = _read_bytes(path)
        table = _read_delimited(path, original.replace(b"::", b"\t"), sep="\t", header=False, original=original)
        return _from_table(table, path, _positional(table, columns, path), duplicates, implicit, 0, integer_ids=True)
    if fmt in ("ml-20m", "ml-25m"):
        table = _read_delimited(path, _read_bytes(path), sep=",", header=True)
        cols = columns or {"user": "userId", "item": "movieId", "rating": "rating", "timestamp": "timestamp"}
        return _from_table(table, path, cols, duplicates, implicit, 1, integer_ids=True)
    if fmt == "ml-100k":
        table = _read_delimited(path, _read_bytes(path), sep=r"\s+", header=False)
        return _from_table(table, path, _positional(table, columns, path), duplicates, implicit, 0, integer_ids=True)
    if fmt == "tsv":
        raw = _read_bytes(path)
        table = _read_delimited(path, raw, sep=r"\s+", header=False)
        cols = _positional(table, columns, path, check_time=True)
        table = _keep_text_ids(table, raw, cols, sep=r"\s+", header=False)
        return _from_table(table, path, cols, duplicates, implicit, 0)
    # csv with a header
    raw = _read_bytes(path)
    table = _read_delimited(path, raw, sep=",", header=True)
    if columns is None:
        columns = _guess_columns(table.columns, path)
    table = _keep_text_ids(table, raw, columns, sep=",", header=True)
    return _from_table(table, path, columns, duplicates, implicit, header_lines=1)


# ============================================================== dense matrices
def load_matrix(path, *, missing: float | None = None, implicit: bool = False) -> Interactions:
    """A dense matrix in a text file: one line per user, one value per item (QoS matrices such as
    WS-Dream's rtMatrix.txt), separated by whitespace or commas, no header line.

    The observed entries are the cells that are not missing: NaN, an empty field (comma-separated)
    and ``missing`` (default: 0, as for a dense ``.mat`` matrix; WS-Dream marks them -1).  User and
    item IDs are the 0-based line and column numbers (blank lines are skipped and not counted).
    Every line must have the first line's number of values; a bad value is named by line and column.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "rt.txt")
    >>> _ = open(path, "w").write("0.5 -1 2.0\\n-1 1.5 -1\\n")
    >>> data = load_matrix(path, missing=-1)
    >>> data.shape, data.nnz, data.values.tolist()
    ((2, 3), 3, [0.5, 2.0, 1.5])
    """
    path = Path(path)
    raw = _read_bytes(path)
    bad = _not_utf8(path, raw)
    if bad is not None:
        raise bad
    if missing is not None and (isinstance(missing, bool) or not isinstance(missing, (int, float, np.number))
                                or not np.isfinite(missing)):
        raise ConfigError(f"missing must be a finite number (the value of a missing cell), got {missing!r}")
    text = raw.decode("utf-8")
    lines = [(k + 1, line) for k, line in enumerate(text.splitlines()) if line.strip()]
    if not lines:
        raise DataError(f"{path}: empty file (no line of values)")
    comma = "," in lines[0][1]
    rows = []
    width = None
    for number, line in lines:
        fields = [f.strip() for f in line.split(",")] if comma else line.split()
        if width is None:
            width = len(fields)
        elif len(fields) != width:
            raise DataError(f"{path}, line {number}: {len(fields)} values, expected {width} (the first line's): a "
                            f"dense matrix has one value per item on every line")
        try:
            rows.append(np.array([f if f else "nan" for f in fields], dtype=np.float64))
        except ValueError:
            col = next(j for j, f in enumerate(fields) if not _is_float(f or "nan"))
            header = " (a dense matrix file has no header line)" if number == lines[0][0] else ""
            raise DataError(f"{path}, line {number}, column {col + 1}: {fields[col]!r} is not a "
                            f"number{header}") from None
    value = np.vstack(rows)
    observed = ~np.isnan(value) & (value != (0.0 if missing is None else float(missing)))
    r, c = np.nonzero(observed)
    vals = value[r, c]
    line_of = np.array([number for number, _ in lines])
    check_rating_values(vals, lambda k: f"{path}, line {line_of[r[k]]}, column {c[k] + 1}", "value")
    if len(vals) == 0:
        raise DataError(f"{path}: the {value.shape[0]} x {value.shape[1]} matrix has no observed cell (missing: "
                        f"{'0' if missing is None else show(missing)} and NaN)")
    if missing is None and (vals == -1).any() and (vals[vals != -1] >= 0).all():
        _warn(f"{path}: {int((vals == -1).sum())} cells hold -1 and no other value is negative; they are read as "
              f"values: if -1 marks a missing cell (as in WS-Dream), pass missing=-1 (CLI: --missing -1)")
    data = Interactions(r, c, np.ones_like(vals) if implicit else vals, n_users=value.shape[0],
                        n_items=value.shape[1], name=path.stem)
    data.meta["source"] = str(path)
    return data


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ============================================================== MATLAB files
def mat_version(path) -> str:
    """``"7.3"`` (HDF5), ``"5"`` (v5-v7, scipy) or ``"unknown"``, from the file's header bytes.

    A v5 file starts with a 116-byte text header ``MATLAB 5.0 MAT-file...`` and
    has the version 0x0100 and the endian mark ``IM``/``MI`` at bytes 124-127;
    a v7.3 file is an HDF5 file (its signature ``\\x89HDF\\r\\n\\x1a\\n`` at byte 0,
    512, 1024 or 2048; MATLAB writes a 512-byte text header first, version 0x0200).
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(2056)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    for offset in (0, 512, 1024, 2048):
        if head[offset:offset + 8] == _HDF5_MAGIC:
            return "7.3"
    if len(head) >= 128 and head[126:128] in (b"IM", b"MI"):
        version = head[124:126] if head[126:128] == b"IM" else head[125:123:-1]
        if version == b"\x00\x01":
            return "5"
        if version == b"\x00\x02":
            return "7.3"
    if head.startswith(b"MATLAB 5.0 MAT-file"):
        return "5"
    return "unknown"


def load_mat(path, *, columns=None, variable=None, duplicates="error", implicit=False,
             monti_only=False) -> Interactions:
    """Load a MATLAB ``.mat`` file, v5 or v7.3, told apart by its header (:func:`mat_version`).

    A Monti et al. file (``M``, ``Otraining``, ``Otest``) keeps its fixed split
    (``data.meta["test_mask"]``).  Otherwise the ratings variable (``variable``,
    or the only numeric one) is read as

    * a **table** of rows when ``columns`` is given, or when it is dense with at
      most 8 columns and more rows than columns (2 columns: user, item; 3: user,
      item, rating; 4: user, item, rating, timestamp if the 4th column is a
      plausible timestamp, else refused; more: ``columns`` is needed).  IDs are
      the numbers in the file; positions in ``columns`` are 0-based;
    * a **rating matrix** otherwise (users in rows; sparse: the stored non-zero
      entries; dense: the non-zero, non-NaN entries); IDs are 0-based row and
      column indices.

    Damaged files (bytes overwritten, truncated) raise :class:`DataError` naming
    the file, never h5py's or scipy's own exceptions.
    """
    path = Path(path)
    version = mat_version(path)
    if version == "unknown":
        raise DataError(f"{path}: not a MATLAB .mat file: no v5 header ('MATLAB 5.0 MAT-file') and no HDF5 "
                        f"(MATLAB v7.3) signature")
    try:
        if version == "7.3":
            return _load_mat73(path, columns, variable, duplicates, implicit, monti_only)
        return _load_mat5(path, columns, variable, duplicates, implicit, monti_only)
    except DataError:
        raise
    except Exception as exc:  # h5py's OSError/KeyError, scipy's ValueError/zlib.error/...: a damaged file
        kind = "HDF5 (MATLAB v7.3)" if version == "7.3" else "MATLAB v5"
        raise DataError(f"{path}: damaged or unreadable {kind} file ({type(exc).__name__}: {exc})") from None


def _is_monti(names) -> bool:
    return {"M", "Otraining", "Otest"} <= set(names)


def _load_mat73(path, columns, variable, duplicates, implicit, monti_only):
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 (MATLAB v7.3) file: {exc}") from None
    with f:
        names = [k for k in f.keys() if not k.startswith("#")]
        if monti_only or (variable is None and columns is None and _is_monti(names)):
            missing = [k for k in ("M", "Otraining", "Otest") if k not in f]
            if missing:
                raise DataError(f"{path}: missing variables {missing} of a Monti file; found {sorted(names)}")
            # stored column-major: transpose to get rows = users
            M = np.asarray(f["M"], dtype=np.float64).T
            train = np.asarray(f["Otraining"], dtype=np.float64).T
            test = np.asarray(f["Otest"], dtype=np.float64).T
            return _monti(path, M, train, test, duplicates)
        candidates = {}
        for k in names:
            obj = f[k]
            if isinstance(obj, h5py.Dataset) and obj.ndim == 2 and obj.dtype.kind in "biuf":
                candidates[k] = obj.shape[::-1]
            elif isinstance(obj, h5py.Group) and {"data", "ir", "jc"} <= set(obj.keys()):
                candidates[k] = "sparse"
        name = _pick_variable(path, names, candidates, variable,
                              {k: (f[k].shape[::-1] if isinstance(f[k], h5py.Dataset) else "group") for k in names})
        obj = f[name]
        if isinstance(obj, h5py.Group):
            import scipy.sparse as sp

            n_rows = int(obj.attrs.get("MATLAB_sparse", 0))
            jc = np.asarray(obj["jc"], dtype=np.int64)
            value = sp.csc_matrix((np.asarray(obj["data"], dtype=np.float64), np.asarray(obj["ir"], dtype=np.int64),
                                   jc), shape=(n_rows or int(np.max(obj["ir"], initial=-1)) + 1, len(jc) - 1))
        else:
            value = np.asarray(obj).T
    return _from_mat_variable(path, name, value, columns, duplicates, implicit)


def _load_mat5(path, columns, variable, duplicates, implicit, monti_only):
    import scipy.io
    import scipy.sparse as sp

    contents = scipy.io.loadmat(path, squeeze_me=False)
    names = [k for k in contents if not k.startswith("__")]
    if monti_only or (variable is None and columns is None and _is_monti(names)):
        missing = [k for k in ("M", "Otraining", "Otest") if k not in contents]
        if missing:
            raise DataError(f"{path}: missing variables {missing} of a Monti file; found {sorted(names)}")
        dense = [np.asarray(contents[k].toarray() if sp.issparse(contents[k]) else contents[k], dtype=np.float64)
                 for k in ("M", "Otraining", "Otest")]
        return _monti(path, *dense, duplicates)

    def describe(v):
        return "sparse" if sp.issparse(v) else getattr(v, "shape", type(v).__name__)

    candidates = {k: describe(v) for k, v in contents.items() if k in names and
                  (sp.issparse(v) or (isinstance(v, np.ndarray) and v.ndim == 2 and v.dtype.kind in "biuf"))}
    name = _pick_variable(path, names, candidates, variable, {k: describe(contents[k]) for k in names})
    return _from_mat_variable(path, name, contents[name], columns, duplicates, implicit)


def _pick_variable(path, names, candidates: dict, variable, described: dict) -> str:
    listing = ", ".join(f"{k} {described[k]}" for k in names) or "none"
    if variable is not None:
        if variable not in names:
            raise DataError(f"{path}: no variable {variable!r}; the file has: {listing}")
        if variable not in candidates:
            raise DataError(f"{path}: variable {variable!r} ({described[variable]}) is not a numeric matrix")
        return variable
    if len(candidates) == 1:
        return next(iter(candidates))
    if not candidates:
        raise DataError(f"{path}: no numeric matrix in the file (variables: {listing})")
    raise DataError(f"{path}: several numeric variables ({listing}); say which holds the ratings with "
                    f"variable= (CLI: --columns variable=NAME,...)")


def _from_mat_variable(path, name, value, columns, duplicates, implicit) -> Interactions:
    import scipy.sparse as sp

    if sp.issparse(value):
        if columns is not None:
            raise DataError(f"{path}: variable {name!r} is a sparse rating matrix (users x items); columns= "
                            f"applies to a table of (user, item, rating) rows")
        data = Interactions.from_scipy(value, name=path.stem)
        if implicit:
            data = data.with_values(1.0)
        else:
            _report_zero_ratings(path, data.values, lambda k: f"entry {k}")
        data.meta["source"] = str(path)
        return data
    value = np.asarray(value)
    n_rows, n_cols = value.shape
    as_table = columns is not None or (n_cols <= MAT_TABLE_MAX_COLUMNS and n_rows > n_cols
                                       and _integral_nonneg(value[:, :2]))
    if as_table:
        table = pd.DataFrame(value)

        def locate(k):
            return f"{path}, variable {name!r}, row {k + 1}"

        if columns is None:
            if n_cols > 4:
                raise DataError(
                    f"{path}: variable {name!r} is a table of {n_cols} columns; say which columns hold the user, "
                    f"item and rating (0-based positions) with columns={{'user': 0, 'item': 1, 'rating': 3}} "
                    f"(CLI: --columns user=0,item=1,rating=3; Ciao/Epinions rating.mat: user, item, category, "
                    f"rating, helpfulness)")
            columns = _positional(table, None, path, check_time=True, label=f"{path}, variable {name!r}",
                                  row_word="row")
        return _from_table(table, path, columns, duplicates, implicit, None, locate=locate)
    # a dense rating matrix: zeros and NaN are missing entries
    observed = (value != 0) & ~np.isnan(value) if value.dtype.kind == "f" else value != 0
    rows, cols = np.nonzero(observed)
    vals = value[rows, cols].astype(np.float64)
    check_rating_values(vals, lambda k: f"{path}, variable {name!r}, entry ({rows[k] + 1}, {cols[k] + 1})",
                        "rating")
    if len(vals) == 0:
        raise DataError(f"{path}: variable {name!r} ({n_rows} x {n_cols}) has no non-zero entry")
    data = Interactions(rows, cols, np.ones_like(vals) if implicit else vals, n_users=n_rows, n_items=n_cols,
                        name=path.stem)
    data.meta["source"] = str(path)
    return data


def _integral_nonneg(a: np.ndarray) -> bool:
    if a.size == 0:
        return False
    if a.dtype.kind in "iu":
        return bool(a.min() >= 0)
    if a.dtype.kind != "f" or not np.isfinite(a).all():
        return False
    return bool((a >= 0).all() and (a == np.round(a)).all())


def _monti(path: Path, M: np.ndarray, train_mask: np.ndarray, test_mask: np.ndarray, duplicates) -> Interactions:
    """The fixed split of a Monti file from its rating matrix and two masks (rows = users)."""
    if M.shape != train_mask.shape or M.shape != test_mask.shape:
        raise DataError(f"{path}: M {M.shape}, Otraining {train_mask.shape} and Otest {test_mask.shape} have "
                        f"different shapes")
    for label, mask in (("Otraining", train_mask), ("Otest", test_mask)):
        odd = mask != 0
        odd &= mask != 1
        if odd.any():
            r, c = (int(x[0]) for x in np.nonzero(odd))
            raise DataError(f"{path}: {label}[{r}, {c}] = {show(mask[r, c])}: a mask holds only 0 and 1 "
                            f"(the file may be damaged)")
    train, test = train_mask != 0, test_mask != 0
    both = train & test
    n_both = int(both.sum())
    if n_both:
        r, c = (int(x[0]) for x in np.nonzero(both))
        _warn(f"{path}: {n_both} (user, item) pair(s) are marked in both Otraining and Otest (first: "
              f"user {r}, item {c}); they are kept in the test part only, never trained on")
    observed = train | test
    rows, cols = np.nonzero(observed)
    values = M[rows, cols]
    outside = int(np.count_nonzero(M)) - int(np.count_nonzero(values))  # NaN counts as non-zero too
    if outside:
        _warn(f"{path}: {outside} non-zero rating(s) of M lie outside both Otraining and Otest and are left out")
    check_rating_values(values, lambda k: f"{path}: M[{rows[k]}, {cols[k]}]", "rating")
    _report_zero_ratings(path, values, lambda k: f"M[{rows[k]}, {cols[k]}]")
    data = Interactions(rows, cols, values, n_users=M.shape[0], n_items=M.shape[1], name=path.stem)
    data.meta["test_mask"] = test[rows, cols]
    data.meta["source"] = str(path)
    data.meta["n_in_both_masks"] = n_both
    return data


def load_monti(path) -> Interactions:
    """Load a Monti et al. ``.mat`` file (v7.3 or v5) with its fixed train/test split.

    ``M`` holds the ratings, ``Otraining``/``Otest`` the masks of the split.
    """
    return load_mat(path, monti_only=True)


# ----------------------------------------------------------------------- reading
def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None


_TOKENIZE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def _not_utf8(path: Path, raw: bytes, line_offset: int = 0) -> DataError | None:
    """A DataError naming the line and byte of the first bytes that are not UTF-8, or None.

    ``line_offset``: lines of the file before ``raw`` (a chunk of it).
    """
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = exc.start
        line = raw.count(b"\n", 0, start) + 1 + line_offset
        col = start - (raw.rfind(b"\n", 0, start) + 1) + 1
        snippet = raw[start:start + 4]
        return DataError(f"{path}, line {line}, byte {col}: not UTF-8 text ({snippet!r}...); lfopt reads UTF-8 "
                         f"(or ASCII) files: convert it, e.g. iconv -f latin1 -t utf-8")
    return None


def _parse_text(path: Path, raw: bytes, sep: str, header: bool, original: bytes | None = None,
                line_offset: int = 0, dtype: dict | None = None) -> pd.DataFrame:
    """``raw`` parsed by pandas' C engine, its errors as DataErrors naming the line of the file.

    ``original``: the bytes as in the file when ``raw`` was rewritten (``::`` to tab);
    ``line_offset``: lines of the file that lie before line 1 of ``raw`` (negative
    when ``raw`` starts with lines copied from the file's head: see :func:`_load_text_chunked`);
    ``dtype``: columns read as given (``{label: str}``: the text as written).
    """
    try:
        return pd.read_csv(
            io.BytesIO(raw),
            sep=sep,
            header=0 if header else None,
            engine="c",
            skip_blank_lines=False,
            comment=None,
            dtype=dtype,
        )
    except pd.errors.ParserError as exc:
        m = _TOKENIZE.search(str(exc))
        if m:
            expected, line, saw = m.groups()
            raise DataError(f"{path}, line {int(line) + line_offset}: expected {expected} fields, "
                            f"found {saw}") from None
        raise DataError(f"{path}: cannot parse: {exc}") from None
    except UnicodeDecodeError as exc:
        err = _not_utf8(path, original if original is not None else raw, line_offset)
        raise (err or DataError(f"{path}: cannot parse: {exc}")) from None
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: cannot parse: {exc}") from None


def _read_delimited(path: Path, raw: bytes, sep: str, header: bool, original: bytes | None = None) -> pd.DataFrame:
    if not raw.strip():
        raise DataError(f"{path}: the file is empty")
    table = _parse_text(path, raw, sep, header, original)
    if len(table) == 0:
        raise DataError(f"{path}: the file has a header but no data")
    # Blank lines show up as all-NaN rows; trailing ones are harmless.
    blank = table.isna().all(axis=1).to_numpy()
    if blank.any():
        last_real = len(blank) - np.argmin(blank[::-1]) if not blank.all() else 0
        if blank[:last_real].any():
            k = int(np.argmax(blank[:last_real]))
            raise DataError(f"{path}, line {k + 1 + int(header)}: empty line")
        table = table.iloc[:last_real]
    return table


def _has_leading_zero_field(raw: bytes, chunk: int = 1 << 22) -> bool:
    """Whether some field starts with 0 followed by a digit ("007", which pandas would read as 7).

    Vectorized over the bytes (about 15 % of the parse time; a regex took 3 times the parse).
    """
    a = np.frombuffer(raw, np.uint8)
    if len(a) >= 2 and a[0] == 48 and 48 <= a[1] <= 57:
        return True
    for start in range(0, max(len(a) - 2, 0), chunk):
        b = a[start:start + chunk + 2]
        hit = b[1:-1] == 48  # '0'
        hit &= (b[2:] - np.uint8(48)) <= 9  # followed by a digit
        hit &= (b[:-2] <= 32) | (b[:-2] == 44)  # after white space or a comma
        if hit.any():
            return True
    return False


def _keep_text_ids(table: pd.DataFrame, raw: bytes, columns: dict, sep: str, header: bool) -> pd.DataFrame:
    """ID columns that pandas read as numbers but whose text is not a plain integer (``"007"``) stay strings.

    Only when the raw bytes hold such a field at all (one vectorized pass)
    are the ID columns read again as text and compared with their numbers.
    """
    if not _has_leading_zero_field(raw):
        return table
    id_cols = [columns.get(k) for k in ("user", "item")]
    targets = []
    for col in id_cols:
        if col is None:
            continue
        if isinstance(col, (int, np.integer)) and col not in table.columns:
            if not 0 <= col < table.shape[1]:
                continue
            col = table.columns[int(col)]
        if col in table.columns and pd.api.types.is_numeric_dtype(table[col]):
            targets.append(col)
    if not targets:
        return table
    positions = [table.columns.get_loc(c) for c in targets]
    text = pd.read_csv(io.BytesIO(raw), sep=sep, header=0 if header else None, engine="c", usecols=positions,
                       dtype=str, skip_blank_lines=False, keep_default_na=False)
    text = text.iloc[:len(table)]
    table = table.copy()
    for col, pos in zip(targets, positions):
        strings = text.iloc[:, positions.index(pos)].str.strip()
        plain = strings.str.fullmatch(r"0|[1-9]\d*").to_numpy()
        if not plain.all():
            table[col] = strings.to_numpy(dtype=object)
    return table


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except ImportError:
        raise DataError("reading Parquet needs pyarrow: pip install 'lfopt[parquet]'") from None
    except Exception as exc:  # pyarrow raises many types for corrupt files
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from None


def _positional(table: pd.DataFrame, columns, path, check_time: bool = False, label=None,
                row_word: str = "line") -> dict:
    """The default (user, item[, rating[, timestamp]]) mapping of a table without header names.

    ``check_time``: a 4th column must be a plausible timestamp (rule in the module docstring);
    ``label`` names the table in messages (default: the path), ``row_word`` its rows.
    """
    if columns is not None:
        return columns
    ncol = table.shape[1]
    if ncol < 2 or ncol > 4:
        hint = (" (a dense matrix, one line per user and one value per item, is read with format='matrix'; "
                "CLI: --format matrix)" if ncol > 4 else "")
        raise DataError(
            f"{path}: expected 2 to 4 fields per line (user, item[, rating[, timestamp]]), found {ncol}{hint}"
        )
    if ncol == 4 and check_time:
        problem = _timestamp_problem(table.iloc[:, 3], lambda k: f"{row_word} {k + 1}")
        if problem:
            raise _not_a_timestamp(label or path, problem)
    return {name: k for k, name in enumerate(FIELD_NAMES[:ncol])}


def _not_a_timestamp(label, problem: str) -> DataError:
    return DataError(
        f"{label}: the 4th column is not a plausible timestamp ({problem}); a timestamp column holds whole "
        f"numbers of seconds (or milliseconds) since 1970, up to the year 2103, the latest after 1973. "
        f"If the file is laid out otherwise (e.g. user, item, category, rating), say which column is the "
        f"rating with columns={{'user': 0, 'item': 1, 'rating': 3}} (CLI: --columns "
        f"user=0,item=1,rating=3; 0-based positions; add timestamp=K if column K is a time)")


def _timestamp_problem(series: pd.Series, locate, latest: bool = True) -> str | None:
    """Why ``series`` is not a plausible timestamp column (the rule in the module docstring), or None.

    ``latest=False`` leaves out the rule on the largest value (a chunk of a file
    is judged on it at the end, over the whole column).
    """
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if values.size == 0:
        return None  # no data lines (e.g. only "NA NA NA NA"): reported as empty data later
    bad = np.isnan(values)
    if bad.any():
        k = int(np.argmax(bad))
        return f"{locate(k)}: {str(series.iloc[k])!r} is not a number"
    bad = (values != np.round(values)) | (values < 0) | (values > TS_MAX)
    if bad.any():
        k = int(np.argmax(bad))
        return f"{locate(k)}: {show(series.iloc[k])} is not a whole number in [0, {TS_MAX:g}]"
    if latest and values.max() < TS_MIN_LATEST:
        k = int(np.argmax(values))
        return f"its largest value, {show(series.iloc[k])} at {locate(k)}, is before 1973"
    return None


def _guess_columns(names, path) -> dict:
    lowered = {str(c).lower(): c for c in names}
    aliases = {
        "user": ("user", "user_id", "userid", "uid", "u"),
        "item": ("item", "item_id", "itemid", "movieid", "movie_id", "iid", "i", "business_id", "artist"),
        "rating": ("rating", "score", "stars", "value", "r", "playcount", "count"),
        "timestamp": ("timestamp", "time", "ts", "date"),
    }
    found = {}
    for field, options in aliases.items():
        for opt in options:
            if opt in lowered:
                found[field] = lowered[opt]
                break
    if "user" not in found or "item" not in found:
        raise DataError(
            f"{path}: cannot tell the user and item columns from the header {list(names)}; "
            f"pass columns={{'user': ..., 'item': ..., 'rating': ...}}"
        )
    return found


def _from_table(
    table: pd.DataFrame,
    path: Path,
    columns: dict,
    duplicates: str,
    implicit: bool,
    header_lines: int | None,
    integer_ids: bool = False,
    locate=None,
):
    if locate is None:
        def locate(k: int) -> str:
            if header_lines is None:
                return f"{path}, row {k}"
            return f"{path}, line {k + 1 + header_lines}"

    arrays = _table_arrays(table, path, columns, locate, integer_ids)
    values = None if implicit or "rating" not in arrays else arrays["rating"]
    if values is not None:
        _report_zero_ratings(path, values, locate)
    return Interactions.from_arrays(
        arrays["user"],
        arrays["item"],
        values,
        timestamps=arrays.get("timestamp"),
        duplicates=duplicates,
        name=_data_name(path),
        locate=locate,
    )


def _data_name(path: Path) -> str:
    return path.stem if path.stem not in ("ratings", "u") else path.parent.name


def _table_arrays(table: pd.DataFrame, path: Path, columns: dict, locate, integer_ids: bool) -> dict:
    """The checked columns of ``table`` named by ``columns`` (``{field: array}``); row k is ``locate(k)``."""
    unknown = set(columns) - set(FIELD_NAMES)
    if unknown:
        raise DataError(f"unknown keys in columns: {sorted(unknown)}; use {FIELD_NAMES} (and 'variable' for "
                        f".mat files)")
    if "user" not in columns or "item" not in columns:
        raise DataError("columns must name at least 'user' and 'item'")
    arrays = {}
    for field, col in columns.items():
        if col is None:
            continue
        if isinstance(col, (int, np.integer)) and col not in table.columns:
            if not 0 <= col < table.shape[1]:
                raise DataError(f"{path}: column {col} does not exist (the file has {table.shape[1]})")
            series = table.iloc[:, int(col)]
        elif col in table.columns:
            series = table[col]
        else:
            raise DataError(f"{path}: column {col!r} not found; the columns are {list(table.columns)}")
        arrays[field] = _checked_column(series, field, locate, table, integer_ids)
    return arrays


def _report_zero_ratings(path, values: np.ndarray, locate) -> int:
    """Warn (DataWarning) when 0 appears among ratings on a 1..K scale; returns the count of zeros.

    Rule: some ratings are 0 and all the others lie in [0.5, 10] (star scales
    such as 1..5, 0.5..5, 1..10), where a 0 usually means "not rated".
    """
    values = np.asarray(values)
    zero = values == 0
    n_zero = int(zero.sum())
    if not n_zero or n_zero == len(values):
        return 0
    rest = values[~zero]
    lo, hi = float(rest.min()), float(rest.max())
    if lo < 0.5 or hi > 10:
        return 0
    first = locate(int(np.argmax(zero)))
    _warn(f"{path}: {n_zero} rating(s) are 0 (first at {first.replace(str(path) + ', ', '')}) while the "
          f"others lie in {lo:g}..{hi:g}: on such a scale 0 usually means 'no rating'; remove those "
          f"entries if so (they are kept and trained on as 0)")
    return n_zero


def _checked_column(series: pd.Series, field: str, locate, table, integer_ids: bool) -> np.ndarray:
    col_no = table.columns.get_loc(series.name) + 1 if series.name in table.columns else "?"
    where = f"column {col_no} ({field})"
    missing = series.isna().to_numpy()
    if missing.any():
        k = int(np.argmax(missing))
        raise DataError(f"{locate(k)}, {where}: missing value")
    numeric_dtype = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    if field in ("user", "item"):
        if not numeric_dtype:
            text = series.astype(str)
            if integer_ids:
                # the first value that is not a plain non-negative integer, or exceeds 2**64 - 1
                stripped = text.str.strip()
                ok = stripped.str.fullmatch(r"\d{1,20}").to_numpy()
                if not ok.all():
                    k = int(np.argmin(ok))
                    raise DataError(f"{locate(k)}, {where}: {field} ID {text.iloc[k]!r} is not a non-negative "
                                    f"integer")
                ints = [int(v) for v in stripped.tolist()]
                too_big = [v > MAX_INT_ID for v in ints]
                if any(too_big):
                    k = too_big.index(True)
                    raise DataError(f"{locate(k)}, {where}: {field} ID {text.iloc[k]!r} is larger than 2**64 - 1, "
                                    f"the largest integer ID of this format")
                return np.asarray(ints, dtype=np.uint64 if max(ints) > np.iinfo(np.int64).max else np.int64)
            return text.to_numpy()
        return series.to_numpy()  # integer (int64, or uint64 from 2**63) or float; float IDs are checked later
    if not numeric_dtype:
        numeric = pd.to_numeric(series.astype(str), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.isnan(numeric)
        if bad.any():
            k = int(np.argmax(bad))
            raise DataError(f"{locate(k)}, {where}: {str(series.iloc[k])!r} is not a number")
        series = pd.Series(numeric, name=series.name)
    arr = series.to_numpy()
    if field == "rating":
        check_rating_values(arr, lambda k: f"{locate(k)}, {where}", "rating")
    return arr


# ================================================= large text files, in chunks
class _ReadWhole(Exception):
    """The chunked reader met something that only the whole-file reader decides exactly."""


class _TextIds(Exception):
    """An ID column holds text somewhere: read the file again with those columns as text.

    ``labels``: ``{field: pandas column label}`` of every ID column known to hold text."""

    def __init__(self, labels: dict):
        super().__init__(labels)
        self.labels = labels


@dataclass(frozen=True)
class _TextFormat:
    sep: str
    header: bool
    integer_ids: bool  # IDs must be non-negative integers (MovieLens)
    check_time: bool = False  # a 4th column (columns= not given) must be a plausible timestamp
    text_ids: bool = False  # IDs that are not plain integers ("007", "u7") stay strings
    colons: bool = False  # fields separated by "::" (MovieLens 1M/10M)


_TEXT_FORMATS = {
    "ml-1m": _TextFormat("\t", False, True, colons=True),
    "ml-10m": _TextFormat("\t", False, True, colons=True),
    "ml-20m": _TextFormat(",", True, True),
    "ml-25m": _TextFormat(",", True, True),
    "ml-100k": _TextFormat(r"\s+", False, True),
    "tsv": _TextFormat(r"\s+", False, False, check_time=True, text_ids=True),
    "csv": _TextFormat(",", True, False, text_ids=True),
}
_ML_CSV_COLUMNS = {"user": "userId", "item": "movieId", "rating": "rating", "timestamp": "timestamp"}


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _line_chunks(path: Path, chunk_bytes: int, first_lines: int):
    """``(parts, lines_before)``: the file in pieces of about ``chunk_bytes`` bytes, each ending at a newline (the
    last one where the file ends), a piece being ``b"".join(parts)``, so that it is copied once; the first piece
    holds at least ``first_lines`` whole lines (or the whole file)."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with fh:
        rest, lines_before, first = b"", 0, True
        while True:
            try:
                block = fh.read(chunk_bytes)
            except OSError as exc:
                raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
            if not block:
                if rest:
                    yield [rest], lines_before
                return
            cut = block.rfind(b"\n") + 1
            if cut == 0 or (first and rest.count(b"\n") + block.count(b"\n") < first_lines):
                rest += block  # a line longer than a piece, or the first lines not complete yet
                continue
            view = memoryview(block)
            yield ([rest, view[:cut]] if rest else [view[:cut]]), lines_before
            lines_before += rest.count(b"\n") + block.count(b"\n", 0, cut)
            rest, first = bytes(view[cut:]), False
            del view, block


class _GrowingArray:
    """A 1-D array appended to in place (``ndarray.resize``: realloc, no second copy held)."""

    def __init__(self, dtype, capacity: int):
        self.array = np.empty(max(int(capacity), 16), dtype=dtype)
        self.size = 0

    def tail(self, k: int) -> np.ndarray:
        """A view of the next ``k`` slots (valid until the next call); :meth:`commit` them once written."""
        need = self.size + k
        if need > self.array.shape[0]:
            self.array.resize(max(need, self.array.shape[0] + self.array.shape[0] // 4), refcheck=False)
        return self.array[self.size:need]

    def commit(self, k: int) -> None:
        self.size += k

    def extend(self, values: np.ndarray) -> None:
        self.tail(len(values))[:] = values
        self.commit(len(values))

    def finish(self) -> np.ndarray:
        self.array.resize(self.size, refcheck=False)
        return self.array


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, nogil=True)
def _map_ids(ids, keys, slots, uniq, n_uniq, shift, out, start):
    """``out[k]`` = the index of ``ids[k]`` in order of first appearance, for ``k >= start``.

    An open-addressing hash table (``keys``/``slots``, power-of-two size, linear
    probing; ``slots`` -1 = empty) holds the IDs seen so far, ``uniq`` them in
    order of appearance.  Stops before the table becomes more than half full;
    returns ``(n_uniq, next k)``.
    """
    mask = keys.shape[0] - 1
    limit = keys.shape[0] >> 1
    for k in range(start, ids.shape[0]):
        x = ids[k]
        h = np.int64((x * _GOLDEN) >> shift)
        while True:
            s = slots[h]
            if s < 0:
                if n_uniq >= limit:
                    return n_uniq, k
                slots[h] = n_uniq
                keys[h] = x
                uniq[n_uniq] = x
                out[k] = n_uniq
                n_uniq += 1
                break
            if keys[h] == x:
                out[k] = s
                break
            h = (h + 1) & mask
    return n_uniq, ids.shape[0]


@njit(cache=True, nogil=True)
def _remap(index, rank):
    """``index[k] = rank[index[k]]`` in place."""
    for k in range(index.shape[0]):
        index[k] = rank[index[k]]


class _IdMap:
    """Integer IDs (int64 or uint64) to indices, built chunk by chunk; memory O(distinct IDs)."""

    def __init__(self, bits: int = 12):
        self._alloc(bits)
        self.uniq = np.empty(1 << (bits - 1), dtype=np.uint64)
        self.n = 0

    def _alloc(self, bits: int) -> None:
        self.bits = bits
        self.keys = np.zeros(1 << bits, dtype=np.uint64)
        self.slots = np.full(1 << bits, -1, dtype=np.int32)

    def _grow(self) -> None:
        self._alloc(self.bits + 1)
        uniq = np.empty(1 << self.bits, dtype=np.uint64)
        uniq[:self.n] = self.uniq[:self.n]
        self.uniq = uniq
        n, _ = _map_ids(uniq[:self.n].copy(), self.keys, self.slots, self.uniq, 0, np.uint64(64 - self.bits),
                        np.empty(self.n, dtype=np.int32), 0)
        assert n == self.n

    def map(self, ids: np.ndarray, out: np.ndarray) -> None:
        """``out`` = first-appearance indices of ``ids`` (int64 >= 0 or uint64)."""
        ids = np.ascontiguousarray(ids).view(np.uint64)
        start = 0
        while start < ids.shape[0]:
            if self.n + 1 >= (1 << 31):
                raise DataError("more than 2**31 - 1 distinct user or item IDs")
            self.n, start = _map_ids(ids, self.keys, self.slots, self.uniq, self.n, np.uint64(64 - self.bits),
                                     out, start)
            if start < ids.shape[0]:
                self._grow()

    def sorted_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, rank)``: the distinct IDs sorted (as ``np.unique`` gives them) and each one's new index."""
        seen = self.uniq[:self.n]
        order = np.argsort(seen, kind="stable")
        rank = np.empty(self.n, dtype=np.int32)
        rank[order] = np.arange(self.n, dtype=np.int32)
        ids = seen[order]
        if not (self.n and ids[-1] > np.uint64(np.iinfo(np.int64).max)):
            ids = ids.view(np.int64)  # IDs beyond int64 keep uint64, as in Interactions.from_arrays
        self.keys = self.slots = self.uniq = None
        return ids, rank


def _column_label(labels, col):
    """The pandas label of column ``col`` (a name, or a position among ``labels``)."""
    if col in labels or not isinstance(col, (int, np.integer)):
        return col
    return labels[int(col)]


class _StrIdMap:
    """String IDs to first-appearance indices, chunk by chunk (a dict of the distinct IDs)."""

    def __init__(self):
        self.index: dict = {}

    def map(self, ids: np.ndarray, out: np.ndarray) -> None:
        codes, uniq = pd.factorize(ids)
        index = self.index
        lut = np.empty(len(uniq), dtype=np.int32)
        for k, key in enumerate(uniq.tolist()):
            j = index.get(key)
            if j is None:
                j = index[key] = len(index)
                if j >= 2**31 - 1:
                    raise DataError("more than 2**31 - 1 distinct user or item IDs")
            lut[k] = j
        out[:] = lut[codes]

    def sorted_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, rank)`` as :meth:`_IdMap.sorted_ids`: the IDs sorted as ``np.unique`` sorts strings."""
        seen = np.array(list(self.index), dtype=str)
        self.index = None
        order = np.argsort(seen, kind="stable")
        rank = np.empty(len(seen), dtype=np.int32)
        rank[order] = np.arange(len(seen), dtype=np.int32)
        return seen[order], rank


@njit(cache=True, nogil=True)
def _pairs_increasing(major, minor):
    """Whether the (major, minor) pairs strictly increase: sorted, and no pair repeated."""
    for k in range(1, major.shape[0]):
        if major[k] < major[k - 1] or (major[k] == major[k - 1] and minor[k] <= minor[k - 1]):
            return False
    return True


@njit(cache=True, nogil=True)
def _scan_duplicates(order, major, minor):
    """``(n_groups, k, first)`` over entries sorted stably by (major, minor) by ``order``: the number of distinct
    pairs, and the repeated entry ``k`` earliest in the input with the first entry of its pair (-1, -1: none)."""
    n = order.shape[0]
    if n == 0:
        return 0, -1, -1
    groups, best, best_first, start = 1, -1, -1, 0
    for t in range(1, n):
        a = order[t]
        b = order[t - 1]
        if major[a] == major[b] and minor[a] == minor[b]:
            if best < 0 or a < best:
                best = a
                best_first = order[start]
        else:
            groups += 1
            start = t
    return groups, best, best_first


@njit(cache=True, nogil=True)
def _pairwise_sum(a, n):
    """numpy's pairwise summation of ``a[:n]`` (float64), as ``np.add.reduce`` computes it."""
    if n < 8:
        res = -0.0
        for i in range(n):
            res += a[i]
        return res
    if n <= 128:
        r = a[:8].copy()
        i = 8
        while i < n - (n % 8):
            for j in range(8):
                r[j] += a[i + j]
            i += 8
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        while i < n:
            res += a[i]
            i += 1
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return _pairwise_sum(a, n2) + _pairwise_sum(a[n2:], n - n2)


@njit(cache=True, nogil=True)
def _combine_duplicates(order, users, items, values, times, has_times, mean, n_groups):
    """Repeated (user, item) pairs combined as ``Interactions.from_arrays`` does: ``mean`` averages the values
    (float64 sums as numpy's) and keeps the latest time, else the last entry in input order is kept; entries
    come out sorted by (user, item)."""
    n = order.shape[0]
    out_u = np.empty(n_groups, dtype=np.int32)
    out_i = np.empty(n_groups, dtype=np.int32)
    out_v = np.empty(n_groups, dtype=np.float32)
    out_t = np.empty(n_groups if has_times else 0, dtype=np.int64)
    scratch = np.empty(16, dtype=np.float64)
    g, s = 0, 0
    while s < n:
        first = order[s]
        e = s + 1
        while e < n and users[order[e]] == users[first] and items[order[e]] == items[first]:
            e += 1
        if mean:
            m = e - s - 1
            if m > scratch.shape[0]:
                scratch = np.empty(2 * m, dtype=np.float64)
            latest = times[first] if has_times else 0
            for t in range(s + 1, e):
                scratch[t - s - 1] = np.float64(values[order[t]])
                if has_times and times[order[t]] > latest:
                    latest = times[order[t]]
            total = np.float64(values[first]) + _pairwise_sum(scratch, m)
            out_v[g] = np.float32(total / (e - s))
            keep = first
            if has_times:
                out_t[g] = latest
        else:
            keep = order[e - 1]
            out_v[g] = values[keep]
            if has_times:
                out_t[g] = times[keep]
        out_u[g] = users[keep]
        out_i[g] = items[keep]
        g += 1
        s = e
    return out_u, out_i, out_v, out_t


class _ColumnWatch:
    """What the whole-file reader would see of an integer column that some chunks parse as floats: a column
    holding floats is read as float64 by pandas there, and integers beyond 2**53 would not keep their value."""

    def __init__(self):
        self.saw_float = False
        self.largest = 0

    def see(self, arr: np.ndarray) -> None:
        if arr.dtype.kind == "f":
            self.saw_float = True
        elif arr.dtype.kind in "iu" and len(arr):
            self.largest = max(self.largest, int(arr.max()), -int(arr.min()))
        if self.saw_float and self.largest > 2**53:
            raise _ReadWhole


def _load_text_chunked(path: Path, fmt: str, columns, duplicates: str, implicit: bool,
                       chunk_bytes: int, text_labels: dict | None = None) -> Interactions:
    """A delimited text file read, checked and indexed piece by piece (pieces of ``chunk_bytes``, cut at newlines).

    Memory: the growing typed arrays (int32 user and item indices, float32
    values, int64 timestamps when there are some), two hash tables of the
    distinct IDs, and O(``chunk_bytes``) per piece; never the whole text, a table
    of it, or a Python object per line.  Each piece is parsed by pandas' C engine
    after the file's first line (and its header) so that it sees what the
    whole-file parse sees (the field count and header of the file); every check
    of the whole-file reader runs on each piece with the file's line numbers.
    The column-wide rules are kept across pieces: trailing blank lines are
    dropped but a blank line followed by data is refused; the latest 4th-column
    time and the zero-rating count are judged at the end; IDs get the indices
    of ``np.unique`` (sorted IDs), and repeated (user, item) pairs are found,
    refused or combined as ``Interactions.from_arrays`` does.

    String IDs (a column with a token that is not a number, ``"u7"``): the column is
    text for the whole file, so the first piece that shows one raises
    :class:`_TextIds` and the caller reads the file again with those columns parsed as
    text (``text_labels``), every ID as written, mapped through a dict of the distinct
    IDs (:class:`_StrIdMap`).

    Raises :class:`_ReadWhole` where only the whole file decides exactly: a
    first line (or header) that is blank, integer IDs written with leading zeros
    (``"007"``: the whole-file reader keeps the column as stripped text), and integer
    columns that are floats in some lines and beyond 2**53 in others.
    """
    spec = _TEXT_FORMATS[fmt]
    if duplicates not in DUPLICATE_POLICIES:
        raise DataError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {duplicates!r}")
    header_lines = int(spec.header)
    n_head = header_lines + 1  # lines parsed before every later piece: the header and the first data line

    def locate(k: int) -> str:
        return f"{path}, line {k + 1 + header_lines}"

    size = _file_size(path)
    head = cols = time_col = has_times = None
    users = items = values = times = None
    text_labels = dict(text_labels or {})
    dtype = {label: str for label in text_labels.values()} or None
    user_map, item_map = (_StrIdMap() if f in text_labels else _IdMap() for f in ("user", "item"))
    watch = {"user": _ColumnWatch(), "item": _ColumnWatch(), "timestamp": _ColumnWatch()}
    pending_blank = None  # the line of a blank line not yet followed by data
    latest = None  # (value, row, as shown) of the largest 4th-column time
    latest_float = False
    n_zero, first_zero, zero_lo, zero_hi = 0, None, np.inf, -np.inf
    n_rows = 0
    for parts, lines_before in _line_chunks(path, chunk_bytes, n_head):
        piece = b"".join(parts) if head is None else b"".join([head, *parts])
        del parts
        if head is None:  # the first piece: parsed as the whole file would start
            lines, pos = [], 0
            for _ in range(n_head):
                end = piece.find(b"\n", pos)
                lines.append(piece[pos:] if end < 0 else piece[pos:end])
                if end < 0:
                    break
                pos = end + 1
            if any(not line.strip() for line in lines):
                raise _ReadWhole  # a blank start (or a header without data): the whole-file rules decide
            head = b"".join(line + b"\n" for line in lines)
            first_bytes = len(piece)
            raw, offset, drop, row_base = piece, 0, 0, 0
        else:  # a later piece, after the first lines: pandas sees the file's header and field count
            raw, offset, drop, row_base = piece, lines_before - n_head, 1, lines_before - header_lines
        del piece
        text = raw.replace(b"::", b"\t") if spec.colons else raw
        table = _parse_text(path, text, spec.sep, spec.header, raw, offset, dtype=dtype)
        if cols is None:
            if fmt in ("ml-20m", "ml-25m"):
                cols = columns or _ML_CSV_COLUMNS
            elif spec.header:
                cols = columns if columns is not None else _guess_columns(table.columns, path)
            else:
                cols = _positional(table, columns, path)
            time_col = columns is None and spec.check_time and table.shape[1] == 4
            has_times = cols.get("timestamp") is not None
            head_columns = table.columns
        if spec.text_ids and _has_leading_zero_field(text):
            kept = _keep_text_ids(table, text, cols, spec.sep, spec.header)
            if any(kept[c].dtype != table[c].dtype for c in table.columns):
                raise _ReadWhole  # an ID column holds "007": it stays text, in the whole file
        del raw, text
        if drop:
            table = table.iloc[drop:]

        # blank lines: trailing ones are dropped, one before data is refused
        blank = table.isna().all(axis=1).to_numpy()
        if blank.any() or pending_blank is not None:
            data_rows = np.flatnonzero(~blank)
            if data_rows.size:
                if pending_blank is not None:
                    raise DataError(f"{path}, line {pending_blank}: empty line")
                end = int(data_rows[-1]) + 1
                if blank[:end].any():
                    raise DataError(f"{path}, line {row_base + int(np.argmax(blank[:end])) + 1 + header_lines}: "
                                    f"empty line")
            else:
                end = 0
            if end < len(table):
                if pending_blank is None:
                    pending_blank = row_base + end + 1 + header_lines
                table = table.iloc[:end]
        if len(table) == 0:
            continue

        def where(k: int, base=row_base) -> str:
            return locate(base + k)

        if time_col:
            series = table.iloc[:, 3]
            problem = _timestamp_problem(series, lambda k: f"line {row_base + k + 1}", latest=False)
            if problem:
                raise _not_a_timestamp(path, problem)
            numbers = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            k = int(np.argmax(numbers))
            latest_float |= series.dtype.kind == "f"
            if latest is None or numbers[k] > latest[0]:
                latest = (numbers[k], row_base + k, series.iloc[k])

        arrays = _table_arrays(table, path, cols, where, spec.integer_ids)
        del table
        for field in ("user", "item", "timestamp"):
            if field in arrays:
                watch[field].see(arrays[field])
        u = _as_id_array(arrays.pop("user"), "user", where)
        i = _as_id_array(arrays.pop("item"), "item", where)
        found = {f: _column_label(head_columns, cols[f]) for f, a in (("user", u), ("item", i))
                 if a.dtype.kind not in "iu" and f not in text_labels}
        if found:  # string IDs: the whole column is text; read again with it as text from line 1
            raise _TextIds({**text_labels, **found})
        v = None if implicit else arrays.pop("rating", None)
        t = arrays.pop("timestamp", None)
        if t is not None:
            t = _checked_timestamps(t, len(t), where)
        if v is not None:
            zero = v == 0
            nz = int(zero.sum())
            if nz:
                if first_zero is None:
                    first_zero = row_base + int(np.argmax(zero))
                n_zero += nz
            if nz < len(v):
                rest = v[~zero] if nz else v
                zero_lo, zero_hi = min(zero_lo, float(rest.min())), max(zero_hi, float(rest.max()))
                del rest

        n = len(u)
        if users is None:
            # a generous guess of the line count from the first piece (capacity never written costs no memory)
            capacity = int(size / max(first_bytes, 1) * n * 1.25) + 1024
            users = _GrowingArray(np.int32, capacity)
            items = _GrowingArray(np.int32, capacity)
            values = _GrowingArray(np.float32, capacity)
            times = _GrowingArray(np.int64, capacity) if has_times else None
        user_map.map(u, users.tail(n))
        users.commit(n)
        item_map.map(i, items.tail(n))
        items.commit(n)
        if v is None:
            values.tail(n)[:] = 1.0
            values.commit(n)
        else:
            values.extend(v.astype(np.float32))
        if times is not None:
            times.extend(t)
        n_rows += n
        del u, i, v, t, arrays

    name = _data_name(path)
    if n_rows == 0:
        raise DataError(f"no interactions: the data{' ' + repr(name) if name else ''} is empty")
    if time_col and latest[0] < TS_MIN_LATEST:
        shown = show(float(latest[2]) if latest_float else latest[2])
        raise _not_a_timestamp(path, f"its largest value, {shown} at line {latest[1] + 1}, is before 1973")
    if n_zero and n_zero < n_rows and zero_lo >= 0.5 and zero_hi <= 10:
        _warn(f"{path}: {n_zero} rating(s) are 0 (first at {locate(first_zero).replace(str(path) + ', ', '')}) "
              f"while the others lie in {zero_lo:g}..{zero_hi:g}: on such a scale 0 usually means 'no rating'; "
              f"remove those entries if so (they are kept and trained on as 0)")

    users, items, values = users.finish(), items.finish(), values.finish()
    times = None if times is None else times.finish()
    user_ids, rank = user_map.sorted_ids()
    _remap(users, rank)
    item_ids, rank = item_map.sorted_ids()
    _remap(items, rank)
    del rank
    if not _pairs_increasing(users, items):  # a file sorted by user, then item (MovieLens') has no repeats
        # repeated (user, item) pairs, found on the stable (user, item) order
        order = np.empty(n_rows, dtype=np.int32 if n_rows < 2**31 else np.int64)
        _sort_by_major_minor(users, items, len(item_ids), order, np.zeros(len(user_ids) + 1, dtype=np.int64))
        n_pairs, k, first = _scan_duplicates(order, users, items)
        if n_pairs < n_rows:
            if duplicates == "error":
                raise DataError(
                    f"{locate(k)}: duplicate (user, item) pair ({show(user_ids[users[k]])}, "
                    f"{show(item_ids[items[k]])}), first seen at {locate(first)}; pass duplicates='mean' or "
                    f"duplicates='last' to combine repeats")
            users, items, values, combined_times = _combine_duplicates(
                order, users, items, values, times if times is not None else np.empty(0, dtype=np.int64),
                times is not None, duplicates == "mean", n_pairs)
            times = None if times is None else combined_times
        del order
    return Interactions(users, items, values, n_users=len(user_ids), n_items=len(item_ids), user_ids=user_ids,
                        item_ids=item_ids, timestamps=times, name=name)
