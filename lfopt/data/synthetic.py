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

from numba import njit

SYNTHETIC_METHODS = ("auto", "exact", "chunked")
#: Above this many ratings ``method="auto"`` uses the chunked sampler.
CHUNKED_FROM_NNZ = 2_000_000


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
    method: str = "auto",
    chunk_size: int = 4_000_000,
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

    ``method`` picks the sampler: ``"exact"`` draws all cells at once (the
    reference; its scratch memory grows with ``nnz``), ``"chunked"`` draws each
    user's degree, then each user's items without repetition (weighted by the
    item activity), one block of users at a time, so memory is the final arrays
    (int32 users and items, float32 values: 12 bytes per rating, plus 4 for
    ``clean_values`` with ``return_info``) plus O(``chunk_size``) scratch; it
    makes 10**8 ratings on one box.  ``"auto"`` (default) uses ``"exact"`` up
    to ``CHUNKED_FROM_NNZ`` ratings (so small datasets are unchanged) and
    ``"chunked"`` above.  Both give the same kind of data (long-tailed degrees,
    every user and item at least once, no repeated cell, the same value model)
    but not the same draws.

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
    if method not in SYNTHETIC_METHODS:
        raise ConfigError(f"method must be one of {SYNTHETIC_METHODS}, got {method!r}")
    if method == "auto":
        method = "chunked" if nnz > CHUNKED_FROM_NNZ else "exact"
    if method == "chunked":
        return _synthetic_chunked(n_users, n_items, nnz, rank, noise_std, mean, signal_std, bias_std,
                                  user_skew, item_skew, round_to_scale, scale, seed, return_info, chunk_size)
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


# ------------------------------------------------------------------ chunked sampler
def _synthetic_chunked(n_users, n_items, nnz, rank, noise_std, mean, signal_std, bias_std, user_skew,
                       item_skew, round_to_scale, scale, seed, return_info, chunk_size):
    """The ``method="chunked"`` generator: final arrays plus O(chunk_size) scratch."""
    if int(chunk_size) < 1:
        raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    chunk_size = int(chunk_size)
    rng = np.random.default_rng(seed)
    wu = rng.lognormal(0.0, user_skew, n_users)
    wi = rng.lognormal(0.0, item_skew, n_items)
    pu, pi = wu / wu.sum(), wi / wi.sum()
    deg = _degrees(rng, pu, nnz, cap=(n_items + 1) // 2)
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(deg, out=indptr[1:])
    del deg
    cdf = np.cumsum(pi)
    cdf /= cdf[-1]
    items = np.empty(nnz, dtype=np.int32)
    stream = rng.integers(0, 2**63, size=2)
    _sample_user_items(indptr, cdf, pi, np.uint64(stream[0]), items, max(1, n_items // 8))
    _cover_items(indptr, items, n_items, np.uint64(stream[1]))
    users = np.repeat(np.arange(n_users, dtype=np.int32), np.diff(indptr))

    x = rng.standard_normal((n_users, rank))
    y = rng.standard_normal((n_items, rank))
    scale_lr = signal_std / np.sqrt(rank)
    bu = rng.normal(0.0, bias_std, n_users)
    bi = rng.normal(0.0, bias_std, n_items)
    values = np.empty(nnz, dtype=np.float32)
    clean_all = np.empty(nnz, dtype=np.float32) if return_info else None
    sq = 0.0
    for start in range(0, nnz, chunk_size):
        stop = min(nnz, start + chunk_size)
        clean = np.empty(stop - start, dtype=np.float32)
        _clean_values(users[start:stop], items[start:stop], x, y, bu, bi, float(mean), float(scale_lr), clean)
        noisy = clean + rng.normal(0.0, noise_std, stop - start)  # float64 chunk scratch
        if round_to_scale:
            np.clip(np.rint(noisy), scale[0], scale[1], out=noisy)
        values[start:stop] = noisy
        if round_to_scale:
            sq += float(np.sum((values[start:stop] - clean.astype(np.float64)) ** 2))
        if clean_all is not None:
            clean_all[start:stop] = clean
        del clean, noisy
    floor = float(np.sqrt(sq / nnz)) if round_to_scale else float(noise_std)
    data = Interactions(users, items, values, n_users=n_users, n_items=n_items, name="synthetic")
    data.meta["noise_floor"] = floor
    data.meta["true_rank"] = int(rank)
    if not return_info:
        return data
    return data, SyntheticInfo(rank, float(noise_std), float(mean), clean_all, floor, round_to_scale)


def _degrees(rng, pu, nnz, cap):
    """Per-user degrees: 1 each plus a multinomial share of the rest ~ pu, each at most ``cap``."""
    m = len(pu)
    deg = 1 + rng.multinomial(nnz - m, pu)
    while True:
        over = deg > cap
        if not over.any():
            return deg
        excess = int((deg[over] - cap).sum())
        deg[over] = cap
        p = np.where(deg < cap, pu, 0.0)
        deg += rng.multinomial(excess, p / p.sum())


@njit(cache=True, nogil=True)
def _splitmix(state):
    """One step of splitmix64: (new state, a uniform float in [0, 1))."""
    state = state + np.uint64(0x9E3779B97F4A7C15)
    z = state
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return state, (z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True, nogil=True)
def _sample_user_items(indptr, cdf, w, seed, items, heavy):
    """Each user's ``indptr[u+1] - indptr[u]`` distinct items ~ ``w``, sorted, written into ``items``.

    Light users draw with rejection of repeats (a stamp per item marks the current
    user's draws); users with more than ``heavy`` items take the smallest keys
    Exp(1) / w_j (Efraimidis-Spirakis weighted sampling without replacement),
    O(n_items log n_items) each, which bounds the cost when a user holds a large
    share of the items.
    """
    n = cdf.shape[0]
    mark = np.full(n, -1, dtype=np.int64)
    state = seed
    for u in range(indptr.shape[0] - 1):
        a = indptr[u]
        b = indptr[u + 1]
        d = b - a
        if d > heavy:
            keys = np.empty(n)
            for j in range(n):
                state, r = _splitmix(state)
                keys[j] = -np.log(1.0 - r) / w[j]
            sel = np.sort(np.argsort(keys)[:d])
            for k in range(d):
                items[a + k] = sel[k]
        else:
            k = a
            while k < b:
                state, r = _splitmix(state)
                j = np.searchsorted(cdf, r, side="right")
                if j >= n:
                    j = n - 1
                if mark[j] != u:
                    mark[j] = u
                    items[k] = j
                    k += 1
            items[a:b].sort()


@njit(cache=True, nogil=True)
def _cover_items(indptr, items, n_items, seed):
    """Give every item at least one entry: an empty item takes the place of a random entry
    whose item has two or more (the user keeps its degree; the cell stays distinct)."""
    counts = np.zeros(n_items, dtype=np.int64)
    nnz = items.shape[0]
    for k in range(nnz):
        counts[items[k]] += 1
    state = seed
    for j in range(n_items):
        if counts[j] > 0:
            continue
        while True:
            state, r = _splitmix(state)
            k = min(int(r * nnz), nnz - 1)
            old = items[k]
            if counts[old] >= 2:
                items[k] = j
                counts[old] -= 1
                counts[j] += 1
                u = np.searchsorted(indptr, k, side="right") - 1
                items[indptr[u]:indptr[u + 1]].sort()
                break


@njit(cache=True, fastmath=True, nogil=True)
def _clean_values(users, items, x, y, bu, bi, mean, scale, out):
    """out[k] = mean + bu[u] + bi[i] + scale * x[u] . y[i] for entry k = (u, i), in float64, stored in out."""
    rank = x.shape[1]
    for k in range(out.shape[0]):
        u = users[k]
        i = items[k]
        acc = 0.0
        for f in range(rank):
            acc += x[u, f] * y[i, f]
        out[k] = mean + bu[u] + bi[i] + scale * acc
