"""Loaders from files into :class:`~lfopt.data.interactions.Interactions`.

Supported formats (``format=`` names, auto-detected from the file name when omitted):

=============  ==========================================================================
``ml-100k``    MovieLens 100K ``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp``
``ml-1m``      MovieLens 1M/10M ``ratings.dat``: ``user::item::rating[::timestamp]``
``ml-20m``     MovieLens 20M/25M ``ratings.csv``: header ``userId,movieId,rating,timestamp``
``monti``      Monti et al. ``.mat`` (HDF5, v7.3) with ``M``, ``Otraining``, ``Otest`` (e.g. Douban)
``tsv``        whitespace/tab separated ``user item rating [timestamp]``, no header
``csv``        comma separated with a header; columns chosen by ``columns=``
``parquet``    a Parquet table; columns chosen by ``columns=``
=============  ==========================================================================

Text files are parsed by pandas' C engine (never the slow python engine), so
MovieLens 1M loads in well under a second.  Every problem is reported as a
:class:`~lfopt.errors.DataError` naming the file, line and column.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from .interactions import Interactions

FORMATS = ("ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "monti", "tsv", "csv", "parquet")
FIELD_NAMES = ("user", "item", "rating", "timestamp")


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
        return "monti"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    if suffix in (".tsv", ".dat", ".txt", ".data", ".tab"):
        return "tsv"
    raise DataError(
        f"{path}: cannot tell the format from the file name; pass format= one of {', '.join(FORMATS)}"
    )


def load(path, format: str | None = None, *, columns=None, duplicates: str = "error", implicit: bool = False):
    """Load a ratings file into an :class:`Interactions`.

    Parameters
    ----------
    path : str or Path
    format : one of :data:`FORMATS`, or None to detect it from the file name.
    columns : for ``csv``/``parquet`` (and optionally ``tsv``), a mapping
        ``{"user": col, "item": col, "rating": col, "timestamp": col}`` of column
        names (or 0-based positions); ``rating``/``timestamp`` may be omitted.
    duplicates : ``"error"``, ``"mean"`` or ``"last"`` for repeated (user, item) pairs.
    implicit : ignore the rating column and give every entry the value 1.

    For ``monti`` files the returned data carries its fixed split in
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
    if fmt == "monti":
        return load_monti(path)
    if fmt == "parquet":
        table = _read_parquet(path)
        return _from_table(table, path, columns or _guess_columns(table.columns, path), duplicates, implicit, None)
    if fmt in ("ml-1m", "ml-10m"):
        raw = _read_bytes(path).replace(b"::", b"\t")
        table = _read_delimited(path, raw, sep="\t", header=False)
        return _from_table(table, path, _positional(table, columns, path), duplicates, implicit, 0, integer_ids=True)
    if fmt in ("ml-20m", "ml-25m"):
        table = _read_delimited(path, _read_bytes(path), sep=",", header=True)
        cols = columns or {"user": "userId", "item": "movieId", "rating": "rating", "timestamp": "timestamp"}
        return _from_table(table, path, cols, duplicates, implicit, 1, integer_ids=True)
    if fmt in ("ml-100k", "tsv"):
        table = _read_delimited(path, _read_bytes(path), sep=r"\s+", header=False)
        ids_int = fmt == "ml-100k"
        return _from_table(table, path, _positional(table, columns, path), duplicates, implicit, 0, integer_ids=ids_int)
    # csv with a header
    table = _read_delimited(path, _read_bytes(path), sep=",", header=True)
    if columns is None:
        columns = _guess_columns(table.columns, path)
    return _from_table(table, path, columns, duplicates, implicit, header_lines=1)


def load_monti(path) -> Interactions:
    """Load a Monti et al. ``.mat`` file (HDF5) with its fixed train/test split.

    ``M`` holds the ratings, ``Otraining``/``Otest`` the masks of the split; they
    are stored column-major, so they are transposed to get rows = users.
    """
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not an HDF5 (MATLAB v7.3) file: {exc}") from None
    with f:
        missing = [k for k in ("M", "Otraining", "Otest") if k not in f]
        if missing:
            raise DataError(f"{path}: missing variables {missing}; found {sorted(f.keys())}")
        M = np.asarray(f["M"], dtype=np.float64).T
        train = np.asarray(f["Otraining"]).T != 0
        test = np.asarray(f["Otest"]).T != 0
    if M.shape != train.shape or M.shape != test.shape:
        raise DataError(f"{path}: M, Otraining and Otest have different shapes")
    observed = train | test
    rows, cols = np.nonzero(observed)
    values = M[rows, cols]
    if not np.isfinite(values).all():
        k = int(np.argmin(np.isfinite(values)))
        raise DataError(f"{path}: M[{rows[k]}, {cols[k]}] = {values[k].item()!r} is not a finite number")
    data = Interactions(rows, cols, values, n_users=M.shape[0], n_items=M.shape[1], name=path.stem)
    data.meta["test_mask"] = test[rows, cols]
    data.meta["source"] = str(path)
    return data


# ----------------------------------------------------------------------- reading
def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None


_TOKENIZE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def _read_delimited(path: Path, raw: bytes, sep: str, header: bool) -> pd.DataFrame:
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
    except (UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
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


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except ImportError:
        raise DataError("reading Parquet needs pyarrow: pip install 'lfopt[parquet]'") from None
    except Exception as exc:  # pyarrow raises many types for corrupt files
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from None


def _positional(table: pd.DataFrame, columns, path) -> dict:
    if columns is not None:
        return columns
    ncol = table.shape[1]
    if ncol < 2 or ncol > 4:
        raise DataError(
            f"{path}: expected 2 to 4 fields per line (user, item[, rating[, timestamp]]), found {ncol}"
        )
    return {name: k for k, name in enumerate(FIELD_NAMES[:ncol])}


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
):
    unknown = set(columns) - set(FIELD_NAMES)
    if unknown:
        raise DataError(f"unknown keys in columns: {sorted(unknown)}; use {FIELD_NAMES}")
    if "user" not in columns or "item" not in columns:
        raise DataError("columns must name at least 'user' and 'item'")

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
    return Interactions.from_arrays(
        arrays["user"],
        arrays["item"],
        values,
        timestamps=arrays.get("timestamp"),
        duplicates=duplicates,
        name=path.stem if path.stem not in ("ratings", "u") else path.parent.name,
        locate=locate,
    )


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
                # the first value that is not a plain non-negative integer, or overflows int64
                ok = text.str.fullmatch(r"\s*\d{1,18}\s*").to_numpy()
                k = int(np.argmin(ok)) if not ok.all() else 0
                raise DataError(f"{locate(k)}, {where}: {field} ID {text.iloc[k]!r} is not a non-negative integer")
            return text.to_numpy()
        return series.to_numpy()  # integer or float; float IDs are checked later
    if not numeric_dtype:
        numeric = pd.to_numeric(series.astype(str), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.isnan(numeric)
        if bad.any():
            k = int(np.argmax(bad))
            raise DataError(f"{locate(k)}, {where}: {str(series.iloc[k])!r} is not a number")
        series = pd.Series(numeric, name=series.name)
    arr = series.to_numpy()
    if field == "rating":
        finite = np.isfinite(arr)
        if not finite.all():
            k = int(np.argmin(finite))
            raise DataError(f"{locate(k)}, {where}: {arr[k].item()!r} is not a finite number")
    return arr
