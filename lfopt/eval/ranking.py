"""Full-ranking evaluation of implicit-feedback models, and chunked top-k recommendation.

Every held-out positive of a user is ranked against **all** items the user has
not interacted with (the excluded items, typically train + validation
positives, are removed from the candidates; no sampled negatives).  Scores are
computed a block of users at a time (a BLAS matrix product of the block's user
factors with all item factors) and ranked by a numba kernel, parallel over the
block's users, so memory stays at ``chunk x n_items`` floats.

Definitions, for a user u with held-out positives T_u (targets) and candidate list
C_u = all items minus the excluded ones, sorted by score descending (ties by item
index); rank(i) is the 0-based position of target i in that list; negatives are
C_u minus T_u:

* ``AUC``: mean over targets i of the fraction of negatives scored below i (ties
  count 1/2), averaged over users;
* ``HR@K`` (hit ratio): 1 if at least one target is in the top K, else 0;
* ``Recall@K``: |top K ∩ T_u| / |T_u|;
* ``Precision@K``: |top K ∩ T_u| / K;
* ``NDCG@K``: sum over targets with rank < K of 1/log2(rank + 2), divided by the
  ideal value sum_{r < min(|T_u|, K)} 1/log2(r + 2).

Each metric is the mean over users with at least one target (users' AUC over
those with at least one negative too).  Targets that are themselves excluded are
not evaluated.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..kernels.bpr import rank_targets, topk_rows

DEFAULT_KS = (10, 20, 50)
METRICS = ("auc", "hr", "ndcg", "recall", "precision")


def merged_csr(parts, n_users: int, n_items: int):
    """One CSR (indptr int64, indices int32 sorted within each user) of the union of
    several ``Interactions`` (or ``(indptr, indices)`` CSR pairs) over the same index
    space (duplicates removed)."""
    parts = [p for p in parts if p is not None and (len(p[1]) if isinstance(p, tuple) else p.nnz)]
    if not parts:
        return np.zeros(n_users + 1, dtype=np.int64), np.zeros(0, dtype=np.int32)
    if len(parts) == 1:
        if isinstance(parts[0], tuple):
            return parts[0]
        v = parts[0].csr
        return v.indptr, v.indices

    def coo(p):
        if isinstance(p, tuple):  # a CSR (indptr, indices) already
            return np.repeat(np.arange(n_users, dtype=np.int64), np.diff(p[0])), np.asarray(p[1], dtype=np.int64)
        return p.users.astype(np.int64), p.items.astype(np.int64)

    pairs = [coo(p) for p in parts]
    u = np.concatenate([a for a, _ in pairs])
    i = np.concatenate([b for _, b in pairs])
    key = np.unique(u * n_items + i)
    users = key // n_items
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return indptr, (key % n_items).astype(np.int32)


def activity_buckets(counts: np.ndarray, n_buckets: int = 4) -> tuple[np.ndarray, list]:
    """Assign rows to ``n_buckets`` activity buckets (quantiles of ``counts``).

    Returns (bucket index per row, list of (low, high) inclusive count ranges).
    Rows with equal counts always share a bucket, so there may be fewer buckets.
    """
    counts = np.asarray(counts)
    qs = np.quantile(counts, np.linspace(0, 1, n_buckets + 1)[1:-1]) if len(counts) else []
    edges = np.unique(np.floor(qs).astype(np.int64))
    bucket = np.searchsorted(edges, counts, side="left")
    ranges = []
    lo = int(counts.min()) if len(counts) else 0
    for k in range(len(edges) + 1):
        sel = counts[bucket == k]
        if len(sel):
            ranges.append((int(sel.min()), int(sel.max())))
        else:
            ranges.append((lo, lo))
    # drop empty buckets, re-number
    used = np.unique(bucket)
    remap = np.full(len(edges) + 1, -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return remap[bucket], [ranges[k] for k in used]


def _chunk_rows(n_items: int, chunk_size: int | None, budget_floats: int = 1 << 22) -> int:
    if chunk_size is not None:
        if int(chunk_size) < 1:
            raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        return int(chunk_size)
    return int(max(1, min(4096, budget_floats // max(1, n_items))))


def _scores(P, Q, item_bias, rows):
    S = P[rows] @ Q.T
    if item_bias is not None and len(item_bias):
        S += item_bias[None, :]
    return np.ascontiguousarray(S, dtype=np.float32)


def parse_metric(name: str) -> tuple[str, int | None]:
    """``"ndcg@50"`` -> ("ndcg", 50); ``"auc"`` -> ("auc", None)."""
    text = str(name).strip().lower()
    if text == "auc":
        return "auc", None
    if "@" in text:
        base, k = text.split("@", 1)
        if base in METRICS[1:] and k.isdigit() and int(k) > 0:
            return base, int(k)
    raise ConfigError(f"unknown metric {name!r}; expected auc or one of hr/ndcg/recall/precision@K, e.g. ndcg@50")


def per_user_metrics(P, Q, target, exclude=(), item_bias=None, ks=DEFAULT_KS, chunk_size=None):
    """Per-user metrics: a dict of arrays over the evaluated users (``users``, ``n_targets``,
    ``auc``, and ``hr@K``, ``ndcg@K``, ``recall@K``, ``precision@K`` for every K).

    ``P`` (m x f), ``Q`` (n x f) factors, ``item_bias`` (n,) or None; ``target`` the
    held-out positives and ``exclude`` a sequence of ``Interactions`` whose items are
    not candidates (all in the same index space).
    """
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1:
        raise ConfigError(f"every K must be a positive integer, got {ks}")
    P = np.ascontiguousarray(P, dtype=np.float32)
    Q = np.ascontiguousarray(Q, dtype=np.float32)
    m, n = P.shape[0], Q.shape[0]
    if target.n_users != m or target.n_items != n:
        raise ConfigError(f"target data is {target.shape}, the factors are ({m}, {n})")
    ex_ptr, ex_idx = merged_csr(list(exclude), m, n)
    tv = target.csr
    t_ptr, t_idx = tv.indptr, tv.indices
    users = np.flatnonzero(np.diff(t_ptr) > 0)
    rank = np.full(len(t_idx), -1, dtype=np.int64)
    auc_e = np.full(len(t_idx), np.nan, dtype=np.float64)
    n_neg = np.zeros(len(users), dtype=np.int64)
    step = _chunk_rows(n, chunk_size)
    bias = None if item_bias is None else np.ascontiguousarray(item_bias, dtype=np.float32)
    for s in range(0, len(users), step):
        rows = users[s : s + step]
        S = _scores(P, Q, bias, rows)
        nn = np.zeros(len(rows), dtype=np.int64)
        rank_targets(S, rows.astype(np.int64), ex_ptr, ex_idx, t_ptr, t_idx, rank, auc_e, nn)
        n_neg[s : s + len(rows)] = nn
    return _aggregate(users, t_ptr, rank, auc_e, n_neg, ks)


def _aggregate(users, t_ptr, rank, auc_e, n_neg, ks):
    valid = rank >= 0
    owner = np.repeat(np.arange(len(t_ptr) - 1), np.diff(t_ptr))
    m = len(t_ptr) - 1
    n_t = np.bincount(owner[valid], minlength=m)[users]
    keep = n_t > 0
    users, n_t, n_neg = users[keep], n_t[keep], n_neg[keep]
    out = {"users": users, "n_targets": n_t, "n_negatives": n_neg}
    auc_sum = np.bincount(owner[valid], weights=np.nan_to_num(auc_e[valid]), minlength=m)[users]
    with np.errstate(invalid="ignore", divide="ignore"):
        out["auc"] = np.where(n_neg > 0, auc_sum / n_t, np.nan)
    r = rank[valid]
    ow = owner[valid]
    disc = 1.0 / np.log2(np.arange(max(ks)) + 2.0)
    cum_disc = np.concatenate([[0.0], np.cumsum(disc)])
    for k in ks:
        hit = r < k
        hits = np.bincount(ow[hit], minlength=m)[users]
        dcg = np.bincount(ow[hit], weights=disc[r[hit]], minlength=m)[users]
        idcg = cum_disc[np.minimum(n_t, k)]
        out[f"hr@{k}"] = (hits > 0).astype(np.float64)
        out[f"recall@{k}"] = hits / n_t
        out[f"precision@{k}"] = hits / float(k)
        out[f"ndcg@{k}"] = dcg / idcg
    return out


def summarize(per_user: dict, activity=None, n_buckets: int = 4) -> dict:
    """Mean of every metric over users, plus the same per activity bucket.

    ``activity`` (length n_users, e.g. training positives per user) splits the
    users into quantile buckets, sparse to active (``by_activity``: list of
    {count_range, n_users, metrics...}).
    """
    names = [k for k in per_user if k not in ("users", "n_targets", "n_negatives")]
    out = {name: float(np.nanmean(per_user[name])) if len(per_user[name]) else float("nan") for name in names}
    out["n_users"] = int(len(per_user["users"]))
    out["n_targets"] = int(per_user["n_targets"].sum())
    if activity is not None and len(per_user["users"]):
        act = np.asarray(activity)[per_user["users"]]
        idx, ranges = activity_buckets(act, n_buckets)
        buckets = []
        for k, r in enumerate(ranges):
            sel = idx == k
            row = {"count_range": list(r), "n_users": int(sel.sum())}
            for name in names:
                row[name] = float(np.nanmean(per_user[name][sel]))
            buckets.append(row)
        out["by_activity"] = buckets
    return out


def full_ranking_metrics(P, Q, target, exclude=(), item_bias=None, ks=DEFAULT_KS, chunk_size=None,
                         activity=None, n_buckets: int = 4) -> dict:
    """AUC, HR@K, NDCG@K, Recall@K, Precision@K (see the module docstring) of the
    model scores ``P Q^T (+ item_bias)`` on the positives ``target``, candidates
    excluding the items of ``exclude``; with per-activity buckets if ``activity`` given.

    Examples
    --------
    >>> import numpy as np, lfopt
    >>> P = np.eye(2, dtype=np.float32); Q = np.array([[1, 0], [0, 1], [.5, .5]], np.float32)
    >>> test = lfopt.Interactions(np.array([0, 1]), np.array([0, 1]), np.ones(2), n_users=2, n_items=3)
    >>> full_ranking_metrics(P, Q, test, ks=[1])["hr@1"]
    1.0
    """
    return summarize(per_user_metrics(P, Q, target, exclude, item_bias, ks, chunk_size), activity, n_buckets)


def iter_topk(P, Q, users=None, k: int = 10, exclude=(), item_bias=None, chunk_size=None):
    """Yield ``(users, items, scores)`` blocks of the top-``k`` recommendations.

    ``users``: indices (default all users); ``exclude``: ``Interactions`` whose items
    are never recommended to their user (e.g. the training data).  Each block holds
    at most ``chunk_size`` users (default: about 4M scores per block), so all users
    of a large catalog never need an m x n matrix.  ``items`` is (block, k) int64,
    ``scores`` float32; order: score descending, ties by item index; rows are padded
    with item -1 and score -inf when a user has fewer than k candidates.
    """
    P = np.ascontiguousarray(P, dtype=np.float32)
    Q = np.ascontiguousarray(Q, dtype=np.float32)
    m, n = P.shape[0], Q.shape[0]
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    users = np.arange(m, dtype=np.int64) if users is None else np.atleast_1d(np.asarray(users, dtype=np.int64))
    if len(users) and (users.min() < 0 or users.max() >= m):
        raise ConfigError(f"user indices must lie in [0, {m})")
    ex_ptr, ex_idx = merged_csr(list(exclude), m, n)
    bias = None if item_bias is None else np.ascontiguousarray(item_bias, dtype=np.float32)
    step = _chunk_rows(n, chunk_size)
    for s in range(0, len(users), step):
        rows = users[s : s + step]
        S = _scores(P, Q, bias, rows)
        items = np.empty((len(rows), k), dtype=np.int64)
        scores = np.empty((len(rows), k), dtype=np.float32)
        topk_rows(S, rows, ex_ptr, ex_idx, k, items, scores)
        yield rows, items, scores


def topk(P, Q, users=None, k: int = 10, exclude=(), item_bias=None, chunk_size=None):
    """All blocks of :func:`iter_topk` stacked: ``(items, scores)`` of shape (len(users), k)."""
    parts = list(iter_topk(P, Q, users, k, exclude, item_bias, chunk_size))
    if not parts:
        return np.empty((0, k), dtype=np.int64), np.empty((0, k), dtype=np.float32)
    return np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])
