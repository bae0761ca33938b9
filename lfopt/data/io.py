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
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from .interactions import MAX_INT_ID, Interactions, check_rating_values, show

FORMATS = ("ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "mat", "monti", "tsv", "csv", "parquet")
FIELD_NAMES = ("user", "item", "rating", "timestamp")

#: Plausible timestamps (see the module docstring): whole numbers in [0, TS_MAX]
#: whose largest value is at least TS_MIN_LATEST.
TS_MIN_LATEST = 1e8
TS_MAX = 4.2e12

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
         variable: str | None = None):
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


def _not_utf8(path: Path, raw: bytes) -> DataError | None:
    """A DataError naming the line and byte of the first bytes that are not UTF-8, or None."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = exc.start
        line = raw.count(b"\n", 0, start) + 1
        col = start - (raw.rfind(b"\n", 0, start) + 1) + 1
        snippet = raw[start:start + 4]
        return DataError(f"{path}, line {line}, byte {col}: not UTF-8 text ({snippet!r}...); lfopt reads UTF-8 "
                         f"(or ASCII) files: convert it, e.g. iconv -f latin1 -t utf-8")
    return None


def _read_delimited(path: Path, raw: bytes, sep: str, header: bool, original: bytes | None = None) -> pd.DataFrame:
    if not raw.strip():
        raise DataError(f"{path}: the file is empty")
    try:
        table = pd.read_csv(
            io.BytesIO(raw),
            sep=sep,
            header=0 if header else None,
            engine="c",
            skip_blank_lines=False,
            comment=None,
        )
    except pd.errors.ParserError as exc:
        m = _TOKENIZE.search(str(exc))
        if m:
            expected, line, saw = m.groups()
            raise DataError(f"{path}, line {line}: expected {expected} fields, found {saw}") from None
        raise DataError(f"{path}: cannot parse: {exc}") from None
    except UnicodeDecodeError as exc:
        err = _not_utf8(path, original if original is not None else raw)
        raise (err or DataError(f"{path}: cannot parse: {exc}")) from None
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: cannot parse: {exc}") from None
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
        raise DataError(
            f"{path}: expected 2 to 4 fields per line (user, item[, rating[, timestamp]]), found {ncol}"
        )
    if ncol == 4 and check_time:
        problem = _timestamp_problem(table.iloc[:, 3], lambda k: f"{row_word} {k + 1}")
        if problem:
            raise DataError(
                f"{label or path}: the 4th column is not a plausible timestamp ({problem}); a timestamp column holds whole "
                f"numbers of seconds (or milliseconds) since 1970, up to the year 2103, the latest after 1973. "
                f"If the file is laid out otherwise (e.g. user, item, category, rating), say which column is the "
                f"rating with columns={{'user': 0, 'item': 1, 'rating': 3}} (CLI: --columns "
                f"user=0,item=1,rating=3; 0-based positions; add timestamp=K if column K is a time)")
    return {name: k for k, name in enumerate(FIELD_NAMES[:ncol])}


def _timestamp_problem(series: pd.Series, locate) -> str | None:
    """Why ``series`` is not a plausible timestamp column (the rule in the module docstring), or None."""
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isnan(values)
    if bad.any():
        k = int(np.argmax(bad))
        return f"{locate(k)}: {str(series.iloc[k])!r} is not a number"
    bad = (values != np.round(values)) | (values < 0) | (values > TS_MAX)
    if bad.any():
        k = int(np.argmax(bad))
        return f"{locate(k)}: {show(series.iloc[k])} is not a whole number in [0, {TS_MAX:g}]"
    if values.max() < TS_MIN_LATEST:
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
    unknown = set(columns) - set(FIELD_NAMES)
    if unknown:
        raise DataError(f"unknown keys in columns: {sorted(unknown)}; use {FIELD_NAMES} (and 'variable' for "
                        f".mat files)")
    if "user" not in columns or "item" not in columns:
        raise DataError("columns must name at least 'user' and 'item'")

    if locate is None:
        def locate(k: int) -> str:
            if header_lines is None:
                return f"{path}, row {k}"
            return f"{path}, line {k + 1 + header_lines}"

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
    values = None if implicit or "rating" not in arrays else arrays["rating"]
    if values is not None:
        _report_zero_ratings(path, values, locate)
    return Interactions.from_arrays(
        arrays["user"],
        arrays["item"],
        values,
        timestamps=arrays.get("timestamp"),
        duplicates=duplicates,
        name=path.stem if path.stem not in ("ratings", "u") else path.parent.name,
        locate=locate,
    )


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
