"""Train / validation / test splits of an :class:`Interactions`.

Every part of a split keeps the index space of the whole data, so a model fit
on the training part can score the others.  Users or items that appear in a
held-out part but not in the training part ("cold" entries) are handled at
evaluation time by the policy documented in :mod:`lfopt.eval.metrics`:
``unseen="bias"`` keeps them and predicts from the global mean and the known
bias, ``unseen="drop"`` leaves them out; either way they are counted.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..errors import ConfigError, DataError
from .interactions import Interactions


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ConfigError(f"{name} must lie strictly between 0 and 1, got {value!r}")


def random_split(data: Interactions, test_fraction: float = 0.1, seed: int = 42):
    """Random holdout: ``(train, test)`` with ``test_fraction`` of the entries in test.

    Examples
    --------
    >>> from lfopt.data.synthetic import synthetic
    >>> train, test = random_split(synthetic(n_users=100, n_items=80, nnz=2000), 0.1, seed=42)
    >>> train.nnz, test.nnz
    (1800, 200)
    """
    _check_fraction("test_fraction", test_fraction)
    perm = np.random.default_rng(seed).permutation(data.nnz)
    n_test = int(round(test_fraction * data.nnz))
    if n_test == 0 or n_test == data.nnz:
        raise DataError(f"{data.nnz} entries are too few for a test fraction of {test_fraction}")
    return data.subset(np.sort(perm[n_test:]), "train"), data.subset(np.sort(perm[:n_test]), "test")


def train_valid_test_split(data: Interactions, valid_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 42):
    """Random ``(train, valid, test)`` split, e.g. the 80/10/10 protocol."""
    _check_fraction("valid_fraction", valid_fraction)
    _check_fraction("test_fraction", test_fraction)
    if valid_fraction + test_fraction >= 1.0:
        raise ConfigError("valid_fraction + test_fraction must be below 1")
    perm = np.random.default_rng(seed).permutation(data.nnz)
    n_test = int(round(test_fraction * data.nnz))
    n_valid = int(round(valid_fraction * data.nnz))
    if min(n_test, n_valid) == 0:
        raise DataError(f"{data.nnz} entries are too few for these fractions")
    test = perm[:n_test]
    valid = perm[n_test : n_test + n_valid]
    train = perm[n_test + n_valid :]
    return (
        data.subset(np.sort(train), "train"),
        data.subset(np.sort(valid), "valid"),
        data.subset(np.sort(test), "test"),
    )


def kfold(data: Interactions, k: int = 5, seed: int = 42) -> Iterator[tuple[Interactions, Interactions]]:
    """Yield ``k`` (train, test) pairs whose test parts partition the entries."""
    if k < 2:
        raise ConfigError(f"k must be at least 2, got {k}")
    if data.nnz < k:
        raise DataError(f"{data.nnz} entries cannot be split into {k} folds")
    perm = np.random.default_rng(seed).permutation(data.nnz)
    folds = np.array_split(perm, k)
    for j in range(k):
        train = np.sort(np.concatenate([folds[x] for x in range(k) if x != j]))
        yield data.subset(train, f"train{j}"), data.subset(np.sort(folds[j]), f"test{j}")


def fixed_split(data: Interactions):
    """The split that came with the data (e.g. Monti's ``Otraining``/``Otest``)."""
    mask = data.meta.get("test_mask")
    if mask is None:
        raise DataError(f"{data!r} has no fixed split; use random_split")
    return data.subset(~mask, "train"), data.subset(mask, "test")


def align_test(train: Interactions, test: Interactions):
    """``(train, test)`` moved into one index space: the training data's, extended by the IDs that
    only the test data has.

    Users and items of ``test`` are matched to those of ``train`` by original ID;
    IDs the training data does not have get new indices after the training ones
    (with no training entry, so a model treats them as unseen: see the
    ``unseen`` policy of :mod:`lfopt.eval.metrics`).  The training entries and
    their order are unchanged.  ``test.meta`` reports ``n_unseen_users``,
    ``n_unseen_items`` and ``n_unseen_pairs`` (entries with an unseen user or item),
    and ``n_in_train`` (pairs present in both; warned about: a model is then tested
    on ratings it was trained on).  Integer IDs in one and string IDs in the other
    cannot match and are refused.
    """
    import warnings

    maps = []
    for what, a, b in (("user", train.user_ids, test.user_ids), ("item", train.item_ids, test.item_ids)):
        ka, kb = np.asarray(a).dtype.kind, np.asarray(b).dtype.kind
        if (ka in "iu") != (kb in "iu"):
            kinds = {True: "integers", False: "strings"}
            raise DataError(f"the training {what} IDs are {kinds[ka in 'iu']} and the test {what} IDs are "
                            f"{kinds[kb in 'iu']}: no test {what} can match a training one (e.g. test "
                            f"{what} {b[0]!r}, training {what} {a[0]!r})")
        ref = Interactions([], [], [], n_users=len(a), n_items=0, user_ids=a, item_ids=np.zeros(0, np.int64))
        index = ref.user_index(b)
        new = index < 0
        if ka in "iu":
            dtype = np.uint64 if (a.dtype == np.uint64 or b.dtype == np.uint64) else np.int64
            ids = np.concatenate([np.asarray(a).astype(dtype), np.asarray(b)[new].astype(dtype)])
        else:
            ids = np.concatenate([np.asarray(a).astype(str), np.asarray(b)[new].astype(str)])
        index[new] = len(a) + np.arange(int(new.sum()))
        maps.append((ids, index, int(new.sum())))
    (user_ids, u_index, new_users), (item_ids, i_index, new_items) = maps
    shape = dict(n_users=len(user_ids), n_items=len(item_ids), user_ids=user_ids, item_ids=item_ids)
    train_out = Interactions(train.users, train.items, train.values, timestamps=train.timestamps,
                             name=train.name, **shape)
    if "source" in train.meta:
        train_out.meta["source"] = train.meta["source"]
    rows, cols = u_index[test.users], i_index[test.items]
    test_out = Interactions(rows, cols, test.values, timestamps=test.timestamps, name=test.name or "test", **shape)
    if "source" in test.meta:
        test_out.meta["source"] = test.meta["source"]
    unseen = (rows >= train.n_users) | (cols >= train.n_items)
    m = len(item_ids)
    seen_keys = rows[~unseen].astype(np.int64) * m + cols[~unseen]
    train_keys = np.unique(train.users.astype(np.int64) * m + train.items)
    overlap = int(np.isin(seen_keys, train_keys).sum())
    test_out.meta.update(n_unseen_users=new_users, n_unseen_items=new_items, n_unseen_pairs=int(unseen.sum()),
                         n_in_train=overlap)
    if overlap:
        warnings.warn(f"{overlap} of the {test.nnz} test (user, item) pairs are also in the training data: "
                      f"the model is tested on ratings it was trained on", UserWarning, stacklevel=2)
    return train_out, test_out


def train_test_files(train_path, test_path, **load_kwargs):
    """A fixed train/test pair of files: ``(train, test)`` in one index space (see :func:`align_test`).

    Every entry of ``train_path`` is training data; ``test_path`` is read the same
    way (``load_kwargs`` go to :func:`lfopt.data.io.load` for both: ``format``,
    ``columns``, ``duplicates``, ...) and its IDs matched to the training IDs.  Test
    users or items the training file does not have are kept, with indices of
    their own and no training entry: ``model.evaluate(test, unseen="bias")``
    predicts them from the mean and biases, ``unseen="drop"`` leaves them out.

    Examples
    --------
    >>> import lfopt
    >>> train, test = lfopt.train_test_files("u1.base", "u1.test")  # doctest: +SKIP
    >>> model = lfopt.LatentFactorModel().fit(train)                 # doctest: +SKIP
    >>> model.evaluate(test)["rmse"]                                 # doctest: +SKIP
    """
    from .io import load

    train = load(train_path, **load_kwargs)
    test = load(test_path, **load_kwargs)
    if "test_mask" in train.meta or "test_mask" in test.meta:
        raise DataError(f"{train_path if 'test_mask' in train.meta else test_path} carries its own fixed "
                        f"train/test split (a Monti file); use lfopt.fixed_split(lfopt.load_data(path)) instead "
                        f"of a pair of files")
    return align_test(train, test)


def per_user_split(
    data: Interactions,
    fractions: tuple[float, ...] = (0.6, 0.2, 0.2),
    by_time: bool | None = None,
    seed: int = 42,
    min_train: int = 1,
):
    """Split every user's entries into parts of the given fractions (e.g. 60/20/20).

    ``by_time`` orders each user's entries by timestamp (earliest to train);
    the default uses time when the data has timestamps, random order otherwise.
    Each user keeps at least ``min_train`` entries in the first part; a user
    with too few entries to feed every part puts them in the first parts first.
    Returns one ``Interactions`` per fraction.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) < 2 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"fractions must be >= 2 positive numbers summing to 1, got {fractions}")
    if by_time is None:
        by_time = data.timestamps is not None
    if by_time and data.timestamps is None:
        raise DataError("by_time=True needs timestamps, and this data has none")
    rng = np.random.default_rng(seed)
    tiebreak = rng.random(data.nnz)
    primary = data.timestamps if by_time else tiebreak
    order = np.lexsort((tiebreak, primary, data.users))  # by user, then time/random
    counts = data.user_counts()
    starts = np.zeros(data.n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    rank_in_user = np.arange(data.nnz) - starts[data.users[order]]
    n_u = counts[data.users[order]]
    # Boundaries: cumulative fractions of each user's count, rounded, train first.
    part = np.zeros(data.nnz, dtype=np.int64)
    cum = np.cumsum(fractions)[:-1]
    for c in cum:
        edge = np.maximum(np.rint(c * n_u), min_train)
        part += rank_in_user >= edge
    parts = np.empty(data.nnz, dtype=np.int64)
    parts[order] = part
    names = ("train", "valid", "test") if len(fractions) == 3 else tuple(f"part{j}" for j in range(len(fractions)))
    return tuple(data.subset(np.flatnonzero(parts == j), names[j]) for j in range(len(fractions)))


def k_core(data: Interactions, k: int = 5) -> Interactions:
    """Keep users and items with at least ``k`` entries, repeating until stable.

    The result is re-indexed (compact), with the original IDs preserved.
    """
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    keep = np.ones(data.nnz, dtype=bool)
    while True:
        uc = np.bincount(data.users[keep], minlength=data.n_users)
        ic = np.bincount(data.items[keep], minlength=data.n_items)
        new_keep = keep & (uc[data.users] >= k) & (ic[data.items] >= k)
        if new_keep.sum() == keep.sum():
            break
        keep = new_keep
    if not keep.any():
        raise DataError(f"no user and item has at least {k} interactions")
    u_ids, u_idx = np.unique(data.users[keep], return_inverse=True)
    i_ids, i_idx = np.unique(data.items[keep], return_inverse=True)
    out = Interactions(
        u_idx,
        i_idx,
        data.values[keep],
        n_users=len(u_ids),
        n_items=len(i_ids),
        user_ids=data.user_ids[u_ids],
        item_ids=data.item_ids[i_ids],
        timestamps=None if data.timestamps is None else data.timestamps[keep],
        name=data.name,
    )
    return out
