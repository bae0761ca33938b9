"""A generator of realistic high-dimensional and incomplete (HDI) rating data.

Degrees are long-tailed (a few very active users and very popular items, many
with a handful of entries), the complete matrix is low rank plus biases, and
observed values carry Gaussian noise of a known level.  The noise level is the
floor that no model's RMSE can beat on held-out entries, which makes the
generator the built-in default dataset and a correctness check for optimizers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from .interactions import Interactions


@dataclass
class SyntheticInfo:
    """What the generator knows and a model can only estimate."""

    rank: int
    noise_std: float
    mean: float
    #: noiseless expected value of every generated entry (aligned with the data arrays)
    clean_values: np.ndarray = field(repr=False)
    #: RMSE of the noiseless truth on all entries: the floor for any model's RMSE
    noise_floor: float = 0.0
    rounded: bool = False


def synthetic(
    n_users: int = 3000,
    n_items: int = 2000,
    nnz: int = 500_000,
    rank: int = 5,
    noise_std: float = 0.5,
    mean: float = 3.5,
    signal_std: float = 1.0,
    bias_std: float = 0.3,
    user_skew: float = 0.6,
    item_skew: float = 0.8,
    round_to_scale: bool = False,
    scale: tuple[float, float] = (1.0, 5.0),
    seed: int = 0,
    return_info: bool = False,
):
    """Generate an HDI rating matrix with long-tailed degrees.

    Entries are drawn without repetition with probability proportional to
    ``w_u * w_i`` where the activity weights are log-normal with spread
    ``user_skew`` / ``item_skew`` (0 gives uniform sampling).  Every user and
    item gets at least one entry.  The value of entry (u, i) is
    ``mean + b_u + b_i + x_u . y_i + noise`` with a true rank of ``rank``,
    ``signal_std`` the standard deviation of the low-rank part and ``noise_std``
    the standard deviation of the Gaussian noise.  With ``round_to_scale`` the
    values are rounded to the integers of ``scale`` (like star ratings) and the
    noise floor is measured from the rounded values.

    Returns the :class:`Interactions`, and a :class:`SyntheticInfo` too when
    ``return_info``.

    Examples
    --------
    >>> from lfopt.data.synthetic import synthetic
    >>> data, info = synthetic(n_users=200, n_items=100, nnz=4000, return_info=True)
    >>> data.shape, data.nnz, info.noise_std
    ((200, 100), 4000, 0.5)
    """
    if min(n_users, n_items, rank) <= 0 or nnz <= 0:
        raise ConfigError("n_users, n_items, nnz and rank must be positive")
    if nnz < max(n_users, n_items) or nnz > 0.5 * n_users * n_items:
        raise ConfigError(
            f"nnz={nnz} must be at least max(n_users, n_items) and at most half of the "
            f"{n_users * n_items} cells"
        )
    if noise_std < 0:
        raise ConfigError("noise_std must be >= 0")
    rng = np.random.default_rng(seed)
    wu = rng.lognormal(0.0, user_skew, n_users)
    wi = rng.lognormal(0.0, item_skew, n_items)
    users, items = _sample_cells(rng, wu / wu.sum(), wi / wi.sum(), nnz)

    x = rng.standard_normal((n_users, rank))
    y = rng.standard_normal((n_items, rank))
    scale_lr = signal_std / np.sqrt(rank)
    bu = rng.normal(0.0, bias_std, n_users)
    bi = rng.normal(0.0, bias_std, n_items)
    clean = mean + bu[users] + bi[items] + scale_lr * np.einsum("ij,ij->i", x[users], y[items])
    values = clean + rng.normal(0.0, noise_std, nnz)
    if round_to_scale:
        values = np.clip(np.rint(values), scale[0], scale[1])
    floor = float(np.sqrt(np.mean((values - clean) ** 2))) if round_to_scale else float(noise_std)
    data = Interactions(users, items, values, n_users=n_users, n_items=n_items, name="synthetic")
    data.meta["noise_floor"] = floor
    data.meta["true_rank"] = int(rank)
    if not return_info:
        return data
    info = SyntheticInfo(rank, float(noise_std), float(mean), clean.astype(np.float32), floor, round_to_scale)
    return data, info


def _sample_cells(rng, pu, pi, nnz):
    """Distinct (user, item) cells, every user and item at least once, the rest ~ pu x pi."""
    m, n = len(pu), len(pi)
    # Cover every row and column once so that no user or item is empty.
    cover_u = np.concatenate([np.arange(m), rng.choice(m, size=max(0, n - m), p=pu)])
    cover_i = np.concatenate([np.arange(n), rng.choice(n, size=max(0, m - n), p=pi)])
    rng.shuffle(cover_u)
    rng.shuffle(cover_i)
    keys = np.unique(cover_u.astype(np.int64) * n + cover_i)
    while len(keys) < nnz:
        need = int((nnz - len(keys)) * 1.2) + 16
        u = rng.choice(m, size=need, p=pu)
        i = rng.choice(n, size=need, p=pi)
        keys = np.unique(np.concatenate([keys, u.astype(np.int64) * n + i]))
    if len(keys) > nnz:
        # Keep the covering cells, drop a random surplus of the others.
        cover = np.unique(cover_u.astype(np.int64) * n + cover_i)
        rest = np.setdiff1d(keys, cover, assume_unique=True)
        keep = rng.choice(len(rest), size=nnz - len(cover), replace=False)
        keys = np.sort(np.concatenate([cover, rest[keep]]))
    return (keys // n).astype(np.int32), (keys % n).astype(np.int32)
