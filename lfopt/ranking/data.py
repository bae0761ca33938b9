"""Implicit feedback from explicit ratings or counts, and the ranking protocol's split.

Protocol (METHODS.md section 6): positives = all entries, or entries whose value
(rating, play count) is at least a threshold; k-core filtering (users and items
with at least k positives, repeated until stable); per-user holdout 60/20/20 into
train / validation / test, by time where the data has timestamps, else random
(seeded).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data.interactions import Interactions
from ..data.split import k_core as _k_core
from ..data.split import per_user_split
from ..errors import ConfigError, DataError


def to_implicit(data: Interactions, threshold: float | None = None, keep_values: bool = False) -> Interactions:
    """Positives of ``data``: every entry, or those with value >= ``threshold``; values set to 1
    (``keep_values=True`` keeps them: play counts as strengths for implicit ALS).

    Works for explicit ratings (e.g. ``threshold=4``) and counts (e.g. Last.fm play
    counts, ``threshold=5`` keeps artists played at least 5 times).

    Examples
    --------
    >>> import lfopt
    >>> data = lfopt.Interactions.from_arrays([0, 0, 1], [0, 1, 1], [5.0, 2.0, 4.0])
    >>> to_implicit(data, threshold=4).nnz
    2
    """
    if threshold is None:
        keep = np.ones(data.nnz, dtype=bool)
    else:
        try:
            threshold = float(threshold)
        except (TypeError, ValueError):
            raise ConfigError(f"threshold must be a number, got {threshold!r}") from None
        if not np.isfinite(threshold):
            raise ConfigError(f"threshold must be a finite number, got {threshold!r}")
        keep = data.values >= threshold
    if not keep.any():
        lo, hi = (float(data.values.min()), float(data.values.max())) if data.nnz else (np.nan, np.nan)
        raise DataError(
            f"no interaction has a value >= {threshold:g} (the values range from {lo:g} to {hi:g}); "
            "lower the threshold"
        )
    if not isinstance(keep_values, (bool, np.bool_)):
        raise ConfigError(f"keep_values must be True or False, got {keep_values!r}")
    out = data.subset(np.flatnonzero(keep))
    if not keep_values:
        out.values = np.ones(out.nnz, dtype=np.float32)
    out.meta = dict(data.meta)
    out.meta["implicit_threshold"] = threshold
    return out


@dataclass
class ImplicitSplit:
    """Train / validation / test positives in one index space, with how they were made."""

    train: Interactions
    valid: Interactions
    test: Interactions
    info: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return self.train.n_users

    @property
    def n_items(self) -> int:
        return self.train.n_items

    def __repr__(self) -> str:
        return (f"<ImplicitSplit: {self.n_users} users x {self.n_items} items, train {self.train.nnz}, "
                f"valid {self.valid.nnz}, test {self.test.nnz}>")


def implicit_split(
    data: Interactions,
    threshold: float | None = None,
    k_core: int | None = 5,
    fractions=(0.6, 0.2, 0.2),
    by_time: bool | None = None,
    seed: int = 42,
    keep_values: bool = False,
) -> ImplicitSplit:
    """The ranking protocol in one call: implicit positives, k-core, per-user split.

    Parameters
    ----------
    threshold : keep entries with value >= threshold as positives (None: all).
    k_core : keep users and items with at least this many positives (None or 1: no filter).
    fractions : per-user train / validation / test fractions.
    by_time : split each user's positives by time (earliest to train); default: when
        the data has timestamps.
    seed : seed of the random per-user order (and of time ties).
    keep_values : keep the positives' values (e.g. play counts) instead of 1: the
        strengths of :class:`~lfopt.estimators.ials.ImplicitALS` (with
        ``value_transform="log"`` for heavy-tailed counts); BPR and the ranking
        metrics ignore them.
    """
    implicit = to_implicit(data, threshold, keep_values)
    kc = 1 if k_core is None else int(k_core)
    if kc < 1:
        raise ConfigError(f"k_core must be at least 1, got {k_core!r}")
    if kc > 1:
        try:
            implicit = _k_core(implicit, kc)
        except DataError:
            raise DataError(
                f"the {kc}-core of the data is empty: no user and item keep {kc} positives "
                f"({implicit.nnz} positives, {implicit.n_users} users, {implicit.n_items} items before "
                "filtering); lower k_core"
            ) from None
    else:
        # drop users/items with no positive so the index space is compact
        implicit = _k_core(implicit, 1)
    fractions = tuple(float(x) for x in fractions)
    if len(fractions) != 3:
        raise ConfigError(f"fractions must be three numbers (train, valid, test), got {fractions}")
    train, valid, test = per_user_split(implicit, fractions, by_time=by_time, seed=seed)
    if valid.nnz == 0 or test.nnz == 0:
        raise DataError(
            "the split left no validation or test positives: users need at least 3 positives "
            f"(use k_core >= 3; got k_core={kc})"
        )
    used_time = implicit.timestamps is not None if by_time is None else bool(by_time)
    info = {
        "threshold": threshold, "k_core": kc, "fractions": list(fractions), "by_time": used_time, "seed": seed,
        "n_users": implicit.n_users, "n_items": implicit.n_items, "n_positives": implicit.nnz,
        "n_train": train.nnz, "n_valid": valid.nnz, "n_test": test.nnz,
        "density": implicit.density,
    }
    info["keep_values"] = bool(keep_values)
    return ImplicitSplit(*(part.with_values(part.values if keep_values else 1.0, name) for part, name in
                           ((train, "train"), (valid, "valid"), (test, "test"))), info)
