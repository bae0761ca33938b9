"""The :class:`Interactions` container: a validated sparse matrix of observed entries.

An ``Interactions`` holds the observed entries of an m x n matrix as three
compact arrays (``users`` int32, ``items`` int32, ``values`` float32), the maps
between original IDs and indices, optional timestamps, and lazily built CSR
(by user) and CSC (by item) views.  Splits of one dataset share the same index
space (same ``n_users``, ``n_items`` and ID maps), so a model trained on one
part can be evaluated on another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from numba import njit

from ..errors import DataError

DUPLICATE_POLICIES = ("error", "mean", "last")

#: The largest |rating| accepted.  Rule: the squared sums of training must stay
#: finite in float32 for any dataset up to 10**8 ratings: 10**8 * (10**15)**2 =
#: 1e38 < 3.4e38 (float32's largest number).  Larger values (and values beyond
#: float32's range, which would become inf) are refused where they are read.
MAX_ABS_RATING = 1e15
#: The smallest non-zero |rating| accepted: float32's smallest normal number;
#: below it a value loses its precision or becomes 0 when stored.
MIN_ABS_RATING = float(np.finfo(np.float32).tiny)
#: The largest integer ID: IDs from 2**63 to 2**64 - 1 are kept as uint64.
MAX_INT_ID = 2**64 - 1
_MAX_EXACT_FLOAT_ID = 2**53


@dataclass(frozen=True)
class SparseView:
    """A compressed view of the entries, by row (CSR) or by column (CSC).

    ``indptr`` (int64, length ``n_major + 1``), ``indices`` (int32, minor index of
    each entry), ``data`` (float32 values) and ``order`` (int32, or int64 from
    2**31 entries on: position in the ``Interactions`` arrays of each entry of
    the view), so any per-entry array ``a`` aligned with the ``Interactions`` can
    be read in view order as ``a[order]``.  With int32 ``order`` a view costs 12
    bytes per entry, and an ``Interactions`` with both views 36 bytes per rating
    (plus the two ``indptr``).
    """

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    order: np.ndarray


def _compress(major: np.ndarray, minor: np.ndarray, values: np.ndarray, n_major: int,
              n_minor: int | None = None) -> SparseView:
    """The view sorted by (major, minor), stable: ties keep the order of the arrays.

    Two stable counting sorts (by minor, then by major) in O(nnz + n_major +
    n_minor) time; scratch is one permutation of the index dtype.  Arrays already
    sorted by (major, minor) take a linear check and no sort.
    """
    nnz = major.shape[0]
    if n_minor is None:
        n_minor = int(minor.max()) + 1 if nnz else 0
    index_dtype = np.int32 if nnz < 2**31 else np.int64
    order = np.empty(nnz, dtype=index_dtype)
    counts = np.zeros(n_major + 1, dtype=np.int64)
    _sort_by_major_minor(major, minor, int(n_minor), order, counts)
    indptr = np.cumsum(counts)  # counts[0] == 0: indptr[k] = entries of majors < k
    return SparseView(
        indptr=indptr,
        indices=np.ascontiguousarray(minor[order], dtype=np.int32),
        data=np.ascontiguousarray(values[order], dtype=np.float32),
        order=order,
    )


@njit(cache=True, nogil=True)
def _sort_by_major_minor(major, minor, n_minor, order, counts):
    """``order`` = the stable sort of the entries by (major, minor); ``counts[1 + j]`` = entries of major j."""
    nnz = major.shape[0]
    for k in range(nnz):
        counts[major[k] + 1] += 1
    is_sorted = True
    for k in range(1, nnz):
        if major[k] < major[k - 1] or (major[k] == major[k - 1] and minor[k] < minor[k - 1]):
            is_sorted = False
            break
    if is_sorted:
        for k in range(nnz):
            order[k] = k
        return
    # Pass 1: stable counting sort by minor into tmp.
    start = np.zeros(n_minor + 1, dtype=np.int64)
    for k in range(nnz):
        start[minor[k] + 1] += 1
    for j in range(n_minor):
        start[j + 1] += start[j]
    tmp = np.empty_like(order)
    for k in range(nnz):
        j = minor[k]
        tmp[start[j]] = k
        start[j] += 1
    # Pass 2: stable counting sort of tmp by major (ties stay sorted by minor, then by position).
    pos = np.zeros(counts.shape[0], dtype=np.int64)
    for j in range(counts.shape[0] - 1):
        pos[j + 1] = pos[j] + counts[j + 1]
    for t in range(nnz):
        k = tmp[t]
        j = major[k]
        order[pos[j]] = k
        pos[j] += 1


def show(value) -> str:
    """repr of a value for error messages, without numpy's type wrappers (``np.float64(inf)``)."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


def _default_locate(k: int) -> str:
    return f"entry {k}"


class Interactions:
    """Observed entries (user, item, value) of a sparse matrix.

    Build one with the ``from_*`` constructors or the loaders of
    :mod:`lfopt.data.io`; the constructor itself takes already-indexed arrays.

    Examples
    --------
    >>> import numpy as np, lfopt
    >>> data = lfopt.Interactions.from_arrays(["ann", "ann", "bob"], [10, 20, 10], [4.0, 3.0, 5.0])
    >>> data.shape, data.nnz
    ((2, 2), 3)
    >>> data.user_index(["bob", "zed"]).tolist()
    [1, -1]
    """

    def __init__(
        self,
        users,
        items,
        values,
        *,
        n_users: int | None = None,
        n_items: int | None = None,
        user_ids=None,
        item_ids=None,
        timestamps=None,
        name: str = "",
    ):
        self.users = np.ascontiguousarray(users, dtype=np.int32)
        self.items = np.ascontiguousarray(items, dtype=np.int32)
        self.values = np.ascontiguousarray(values, dtype=np.float32)
        if not (self.users.ndim == self.items.ndim == self.values.ndim == 1):
            raise DataError("users, items and values must be one-dimensional arrays")
        if not (len(self.users) == len(self.items) == len(self.values)):
            raise DataError(
                f"users, items and values must have the same length, got "
                f"{len(self.users)}, {len(self.items)} and {len(self.values)}"
            )
        self.n_users = int(n_users if n_users is not None else (self.users.max() + 1 if self.nnz else 0))
        self.n_items = int(n_items if n_items is not None else (self.items.max() + 1 if self.nnz else 0))
        if self.nnz:
            if self.users.min() < 0 or self.users.max() >= self.n_users:
                raise DataError(f"user indices must lie in [0, {self.n_users})")
            if self.items.min() < 0 or self.items.max() >= self.n_items:
                raise DataError(f"item indices must lie in [0, {self.n_items})")
        self.user_ids = np.arange(self.n_users) if user_ids is None else np.asarray(user_ids)
        self.item_ids = np.arange(self.n_items) if item_ids is None else np.asarray(item_ids)
        if len(self.user_ids) != self.n_users or len(self.item_ids) != self.n_items:
            raise DataError("user_ids / item_ids must have one entry per user / item index")
        self.timestamps = None if timestamps is None else _compact_times(timestamps)
        if self.timestamps is not None and len(self.timestamps) != self.nnz:
            raise DataError("timestamps must have one entry per interaction")
        self.name = name
        self.meta: dict = {}
        self._csr: SparseView | None = None
        self._csc: SparseView | None = None
        self._user_lookup: dict | None = None
        self._item_lookup: dict | None = None

    # ------------------------------------------------------------------ basics
    @property
    def nnz(self) -> int:
        return int(self.values.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_users, self.n_items)

    @property
    def density(self) -> float:
        cells = self.n_users * self.n_items
        return self.nnz / cells if cells else 0.0

    def __len__(self) -> int:
        return self.nnz

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return (
            f"<Interactions{label}: {self.n_users} users x {self.n_items} items, "
            f"{self.nnz} entries ({100 * self.density:.3f}% dense)>"
        )

    @property
    def csr(self) -> SparseView:
        """Entries grouped by user (rows), items sorted within a user."""
        if self._csr is None:
            self._csr = _compress(self.users, self.items, self.values, self.n_users, self.n_items)
        return self._csr

    @property
    def csc(self) -> SparseView:
        """Entries grouped by item (columns), users sorted within an item."""
        if self._csc is None:
            self._csc = _compress(self.items, self.users, self.values, self.n_items, self.n_users)
        return self._csc

    def user_counts(self) -> np.ndarray:
        """Number of entries of each user (length ``n_users``)."""
        return np.bincount(self.users, minlength=self.n_users)

    def item_counts(self) -> np.ndarray:
        """Number of entries of each item (length ``n_items``)."""
        return np.bincount(self.items, minlength=self.n_items)

    def to_scipy(self, fmt: str = "csr"):
        """The entries as a ``scipy.sparse`` matrix of shape ``(n_users, n_items)``."""
        import scipy.sparse as sp

        mat = sp.coo_matrix((self.values, (self.users, self.items)), shape=self.shape)
        return mat.asformat(fmt)

    # -------------------------------------------------------------- ID lookups
    def user_index(self, ids) -> np.ndarray:
        """Indices of original user IDs; -1 for IDs this dataset does not know."""
        if self._user_lookup is None:
            self._user_lookup = {k: j for j, k in enumerate(self.user_ids.tolist())}
        return _lookup(self._user_lookup, ids)

    def item_index(self, ids) -> np.ndarray:
        """Indices of original item IDs; -1 for IDs this dataset does not know."""
        if self._item_lookup is None:
            self._item_lookup = {k: j for j, k in enumerate(self.item_ids.tolist())}
        return _lookup(self._item_lookup, ids)

    # ------------------------------------------------------------------ subsets
    def subset(self, index, name: str | None = None) -> "Interactions":
        """The entries selected by ``index`` (boolean mask or positions), same index space."""
        index = np.asarray(index)
        return Interactions(
            self.users[index],
            self.items[index],
            self.values[index],
            n_users=self.n_users,
            n_items=self.n_items,
            user_ids=self.user_ids,
            item_ids=self.item_ids,
            timestamps=None if self.timestamps is None else self.timestamps[index],
            name=self.name if name is None else name,
        )

    def with_values(self, values, name: str | None = None) -> "Interactions":
        """The same entries with other values (e.g. 1.0 for implicit feedback, or ratings
        rescaled).  The index arrays, and the index parts of views already built, are shared
        with ``self`` (not copied: at 100M ratings that is 2.4 GB less)."""
        values = np.ascontiguousarray(np.broadcast_to(values, (self.nnz,)), dtype=np.float32)
        out = Interactions(self.users, self.items, values, n_users=self.n_users, n_items=self.n_items,
                           user_ids=self.user_ids, item_ids=self.item_ids, timestamps=self.timestamps,
                           name=self.name if name is None else name)
        for attr in ("_csr", "_csc"):
            view = getattr(self, attr)
            if view is not None:
                setattr(out, attr, SparseView(view.indptr, view.indices, values[view.order], view.order))
        return out

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_arrays(
        cls,
        users,
        items,
        values=None,
        *,
        timestamps=None,
        duplicates: str = "error",
        name: str = "",
        locate: Callable[[int], str] | None = None,
    ) -> "Interactions":
        """Build from arrays of original IDs (any integers or strings) and values.

        ``values`` defaults to all ones (implicit feedback).  ``duplicates`` says
        what to do with repeated (user, item) pairs: ``"error"`` (default, names
        the first repeat), ``"mean"`` (average them) or ``"last"`` (keep the last).
        ``locate(k)`` describes where entry ``k`` came from in error messages
        (the file loaders pass one that names the file and line).
        """
        locate = locate or _default_locate
        users = _as_id_array(users, "user", locate)
        items = _as_id_array(items, "item", locate)
        if values is None:
            values = np.ones(len(users), dtype=np.float32)
        values = np.asarray(values)
        if not (len(users) == len(items) == len(values)):
            raise DataError(
                f"users, items and values must have the same length, got "
                f"{len(users)}, {len(items)} and {len(values)}"
            )
        if len(users) == 0:
            raise DataError(f"no interactions: the data{' ' + repr(name) if name else ''} is empty")
        if values.dtype.kind not in "biuf":
            try:
                values = values.astype(np.float64)
            except (TypeError, ValueError):
                bad = _first_non_numeric(values)
                raise DataError(f"{locate(bad)}: value {show(values[bad])} is not a number") from None
        check_rating_values(values, locate)
        if timestamps is not None:
            timestamps = _checked_timestamps(timestamps, len(users), locate)
        user_ids, u_idx = np.unique(users, return_inverse=True)
        item_ids, i_idx = np.unique(items, return_inverse=True)
        u_idx = u_idx.astype(np.int32).ravel()
        i_idx = i_idx.astype(np.int32).ravel()
        values = values.astype(np.float32)
        u_idx, i_idx, values, timestamps = _resolve_duplicates(
            u_idx, i_idx, values, timestamps, len(item_ids), duplicates, locate, user_ids, item_ids
        )
        return cls(
            u_idx,
            i_idx,
            values,
            n_users=len(user_ids),
            n_items=len(item_ids),
            user_ids=user_ids,
            item_ids=item_ids,
            timestamps=timestamps,
            name=name,
        )

    @classmethod
    def from_dataframe(
        cls,
        df,
        user_col: str = "user",
        item_col: str = "item",
        rating_col: str | None = "rating",
        time_col: str | None = None,
        **kwargs,
    ) -> "Interactions":
        """Build from a pandas DataFrame with configurable column names.

        ``rating_col=None`` makes implicit data (all values 1).
        """
        for col in (user_col, item_col, rating_col, time_col):
            if col is not None and col not in df.columns:
                raise DataError(f"column {col!r} not found; the columns are {list(df.columns)}")
        kwargs.setdefault("locate", lambda k: f"row {k} (index {show(df.index[k])})")
        return cls.from_arrays(
            df[user_col].to_numpy(),
            df[item_col].to_numpy(),
            None if rating_col is None else df[rating_col].to_numpy(),
            timestamps=None if time_col is None else df[time_col].to_numpy(),
            **kwargs,
        )

    @classmethod
    def from_scipy(cls, matrix, name: str = "", keep_zeros: bool = False) -> "Interactions":
        """Build from a ``scipy.sparse`` matrix (rows = users, columns = items).

        Explicitly stored zeros are dropped unless ``keep_zeros``; repeated
        coordinates in a COO matrix are summed, as scipy does.
        """
        import scipy.sparse as sp

        if not sp.issparse(matrix):
            raise DataError(f"expected a scipy.sparse matrix, got {type(matrix).__name__}")
        coo = sp.coo_matrix(matrix)
        coo.sum_duplicates()
        keep = np.ones(coo.nnz, dtype=bool) if keep_zeros else coo.data != 0
        values = coo.data[keep]
        rows, cols = coo.row[keep], coo.col[keep]
        check_rating_values(values, lambda k: f"matrix entry ({int(rows[k])}, {int(cols[k])})")
        if values.size == 0:
            raise DataError("no interactions: the sparse matrix has no stored non-zero entries")
        return cls(coo.row[keep], coo.col[keep], values, n_users=coo.shape[0], n_items=coo.shape[1], name=name)


# ---------------------------------------------------------------------- helpers
def check_rating_values(values: np.ndarray, locate: Callable[[int], str], what: str = "value") -> None:
    """Refuse values that are not finite or that float32 training cannot hold.

    ``|v| > MAX_ABS_RATING`` (1e15: beyond it the squared sums of 10**8 ratings
    overflow float32; it also covers values beyond float32's range, which would
    silently become inf) and non-zero ``|v| < MIN_ABS_RATING`` (they would
    become 0 or lose their precision in float32).  ``locate(k)`` names entry k.
    """
    values = np.asarray(values)
    if values.size == 0:
        return
    lo, hi = float(values.min()), float(values.max())  # NaN propagates
    if (np.isfinite(lo) and np.isfinite(hi) and max(-lo, hi) <= MAX_ABS_RATING
            and (values.dtype.kind != "f" or lo >= MIN_ABS_RATING or hi <= -MIN_ABS_RATING)):
        return  # the common case, decided without temporary arrays
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.all():
            bad = int(np.argmin(finite))
            raise DataError(f"{locate(bad)}: {what} {show(values[bad])} is not a finite number")
    mag = np.abs(values.astype(np.float64, copy=False))
    big = mag > MAX_ABS_RATING
    if big.any():
        bad = int(np.argmax(big))
        beyond = " (beyond float32's range)" if mag[bad] > float(np.finfo(np.float32).max) else ""
        raise DataError(f"{locate(bad)}: {what} {show(values[bad])} is too large{beyond}: ratings must lie "
                        f"within +-{MAX_ABS_RATING:g}, so that training's squared sums stay finite in float32")
    tiny = (mag < MIN_ABS_RATING) & (mag > 0)
    if tiny.any():
        bad = int(np.argmax(tiny))
        raise DataError(f"{locate(bad)}: {what} {show(values[bad])} is too small for float32 (non-zero values "
                        f"must be at least {MIN_ABS_RATING:.3g} in magnitude; it would become 0)")


def _compact_times(timestamps) -> np.ndarray:
    """Timestamps as int32 when they all fit (Unix seconds up to 2038: 4 bytes per rating
    less), else int64."""
    ts = np.asarray(timestamps)
    if ts.dtype == np.int32:
        return np.ascontiguousarray(ts)
    ts = np.ascontiguousarray(ts, dtype=np.int64)
    if len(ts) and ts.min() >= -(2**31) and ts.max() < 2**31:
        return ts.astype(np.int32)
    return ts


def _checked_timestamps(timestamps, n: int, locate: Callable[[int], str]) -> np.ndarray:
    """Timestamps as int64: whole numbers within int64 (a float or uint64 beyond it would wrap)."""
    ts = np.asarray(timestamps)
    if ts.ndim != 1 or len(ts) != n:
        raise DataError(f"timestamps must be one per interaction, got shape {ts.shape} for {n} interactions")
    kind = ts.dtype.kind
    if kind in "ib":
        return ts.astype(np.int64)
    if kind == "u":
        big = ts > np.iinfo(np.int64).max
    elif kind == "f":
        big = ~np.isfinite(ts) | (ts != np.round(ts)) | (np.abs(ts) >= 2.0**63)
    else:
        try:
            return _checked_timestamps(ts.astype(np.float64), n, locate)
        except (TypeError, ValueError):
            bad = _first_non_numeric(ts)
            raise DataError(f"{locate(bad)}: timestamp {show(ts[bad])} is not a number") from None
    if big.any():
        bad = int(np.argmax(big))
        raise DataError(f"{locate(bad)}: timestamp {show(ts[bad])} is not a whole number within int64")
    return ts.astype(np.int64)


def _lookup(table: dict, ids) -> np.ndarray:
    ids = np.atleast_1d(np.asarray(ids))
    return np.fromiter((table.get(k, -1) for k in ids.tolist()), dtype=np.int64, count=len(ids))


def _first_non_numeric(values: np.ndarray) -> int:
    for k, v in enumerate(values.tolist()):
        try:
            float(v)
        except (TypeError, ValueError):
            return k
    return 0


def _as_id_array(ids, what: str, locate: Callable[[int], str]) -> np.ndarray:
    """IDs as a numpy array of integers or strings, rejecting values that are neither."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise DataError(f"{what} IDs must be a one-dimensional array, got shape {arr.shape}")
    kind = arr.dtype.kind
    if kind in "iub":
        if kind == "i" and len(arr) and arr.min() < 0:
            bad = int(np.argmin(arr))
            raise DataError(f"{locate(bad)}: {what} ID {arr[bad]} is negative")
        if kind == "u" and len(arr) and arr.max() > np.iinfo(np.int64).max:
            return arr.astype(np.uint64)  # IDs from 2**63 to 2**64 - 1 keep their value
        return arr.astype(np.int64)
    if kind == "f":
        if len(arr):
            bad_mask = ~np.isfinite(arr) | (arr != np.round(arr)) | (arr < 0)
            if bad_mask.any():
                bad = int(np.argmax(bad_mask))
                raise DataError(f"{locate(bad)}: {what} ID {show(arr[bad])} is not a non-negative integer")
            big = arr > _MAX_EXACT_FLOAT_ID
            if big.any():
                bad = int(np.argmax(big))
                raise DataError(f"{locate(bad)}: {what} ID {show(arr[bad])} is a float beyond 2**53, where floats "
                                f"no longer hold every integer; give IDs as integers or strings")
        return arr.astype(np.int64)
    if kind in "US":
        return arr.astype(str)
    if kind == "O":
        # Mixed objects: accept if all are strings, or all integers.
        values = arr.tolist()
        if all(isinstance(v, str) for v in values):
            return np.asarray(values, dtype=str)
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            ints = [int(v) for v in values]
            if ints and min(ints) < 0:
                bad = ints.index(min(ints))
                raise DataError(f"{locate(bad)}: {what} ID {ints[bad]} is negative")
            if ints and max(ints) > MAX_INT_ID:
                bad = next(k for k, v in enumerate(ints) if v > MAX_INT_ID)
                raise DataError(f"{locate(bad)}: {what} ID {ints[bad]} is larger than 2**64 - 1, the largest "
                                f"integer ID; give such IDs as strings")
            dtype = np.uint64 if ints and max(ints) > np.iinfo(np.int64).max else np.int64
            return np.asarray(ints, dtype=dtype)
        bad = next((k for k, v in enumerate(values) if not isinstance(v, (str, int, np.integer)) or isinstance(v, bool)),
                   None)
        if bad is not None:
            raise DataError(f"{locate(bad)}: {what} ID {show(values[bad])} is neither an integer nor a string")
        first = isinstance(values[0], str)
        bad = next(k for k, v in enumerate(values) if isinstance(v, str) != first)
        raise DataError(f"{locate(bad)}: {what} ID {show(values[bad])} mixes integer and string IDs in one column")
    raise DataError(f"{what} IDs of dtype {arr.dtype} are not supported (use integers or strings)")


def _resolve_duplicates(u, i, v, t, n_items, policy, locate, user_ids, item_ids):
    if policy not in DUPLICATE_POLICIES:
        raise DataError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {policy!r}")
    key = u.astype(np.int64) * n_items + i
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    repeat = sorted_key[1:] == sorted_key[:-1]
    if not repeat.any():
        return u, i, v, t
    if policy == "error":
        # The first repeated entry in input order.
        dup_positions = order[1:][repeat]
        k = int(dup_positions.min())
        first = int(order[np.searchsorted(sorted_key, key[k])])
        raise DataError(
            f"{locate(k)}: duplicate (user, item) pair ({show(user_ids[u[k]])}, {show(item_ids[i[k]])}), "
            f"first seen at {locate(first)}; pass duplicates='mean' or duplicates='last' to combine repeats"
        )
    starts = np.flatnonzero(np.r_[True, ~repeat])
    if policy == "mean":
        sums = np.add.reduceat(v[order].astype(np.float64), starts)
        counts = np.diff(np.r_[starts, len(order)])
        keep = order[starts]
        new_v = (sums / counts).astype(np.float32)
        new_t = None if t is None else np.maximum.reduceat(t[order], starts)
    else:  # last: the stable sort keeps input order within a key
        ends = np.r_[starts[1:], len(order)] - 1
        keep = order[ends]
        new_v = v[keep]
        new_t = None if t is None else t[keep]
    return u[keep], i[keep], new_v, new_t
