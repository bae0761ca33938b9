"""Learned embedding dimensions, DNIS-style (METHODS.md section 5; issue 10 item 4).

``lfopt experiment dims --outdir D [--quick] [--datasets ml-1m,yelp]`` traces test RMSE against the
number of embedding parameters for uniform ranks and for mixed dimensions learned per frequency block.

The method, step by step (every choice is made on the validation part, never on the test part):

1. **Data.** Each dataset is split under its protocol (random 90/10, seed 42; Douban: Monti's fixed
   split); a validation part (10 % of the training entries, seed 0) is carved off and cut in two
   halves (seed 1): the *search* half, on which the selection weights are fitted, and the
   *selection* half, on which every model is early-stopped and every choice (lam, the claim's
   point) is made -- so a model whose weights were fitted on validation data is not also judged on
   them.  Every model is trained on the remaining 81 % and scored on the test part (predictions
   clipped to the rating scale).
2. **Frequency blocks.** Users (and, separately, items) are cut into ``n_blocks`` blocks by their
   number of training entries: block edges log-spaced between the smallest and the largest count
   (``scheme="log"``, the default) or cut so that every block holds about the same number of entries
   (``scheme="entries"``); a row's block grows with its count (ties share a block; rows without
   entries go to block 0).  See :func:`frequency_blocks`.
3. **Uniform ranks** (the baseline): the LF model (biases + P Q^T, lfopt's count-weighted L2 with its
   default form ``L2(lam, lam_b=0, lam0=6, lam0_b=3)``) trained by ALS with early stopping
   (patience 3, at most ``max_sweeps``); ``lam`` is picked per rank from ``lams`` on validation RMSE.
4. **Search.** Soft selection weights ``a_{b,k}`` (users and items separately, per block ``b`` and
   dimension ``k``) scale the embeddings, p~_u = a_{b(u)} * p_u, q~_i = a_{b(i)} * q_i.  The model's
   penalty on p, sum_u w_u |p_u|^2, becomes sum_{u,k} w_u p~_{uk}^2 / a_{b(u),k}^2 on the scaled
   factors, so for fixed ``a`` the training problem is an LF model in p~ with per-(row, dimension)
   weights, solved exactly by one ALS sweep (:meth:`lfopt.models.lf.LFObjective.set_row_weights`).
   The search alternates, DARTS-style (first order): one ALS sweep on the training part (model
   weights, ``a`` fixed), then ``val_batches`` Adam steps on ``a`` over mini-batches of the
   search half of the validation part, minimizing validation MSE + ``rho`` * sum |a| (``a`` >= 0; p stays fixed in that
   step, so p~ moves with ``a``).  A weight that falls below ``a_min`` is dead (its dimension is then
   pinned at 0).  It starts from the trained uniform rank-``rank`` model, rotated to its principal
   basis (the SVD of P Q^T, dimensions ordered by singular value): with uniform weights ALS's
   solution is only defined up to a rotation, and per-dimension selection needs a basis in which the
   dimensions differ.
5. **Prune and fine-tune.** For every threshold t, dimensions with a_{b,k} < t are pruned for all
   rows of block b, giving mixed dimensions per block; the pruned (row, dimension) entries get a
   weight of ``PIN_WEIGHT`` (so ALS's ridge solves of the kept dimensions are those of the smaller
   model) and are projected to exactly 0 after every sweep (:func:`masked_als`).  Two variants,
   fine-tuned by ALS from the search's factors with early stopping:

   * ``merged``: the selection folded into the factors and the kept entries under the plain penalty
     of the baseline, ``lam`` picked from the same grid on validation -- only the *structure* is
     learned, the regularizer is the uniform models';
   * ``scaled``: the kept entries keep the search's weights w / a^2 -- structure plus the learned
     per-(block, dimension) regularization.

   Embedding parameters = the number of kept (row, dimension) entries (biases, m + n for every
   model, reported apart).
6. **The claim** (issue 10's target): at the test RMSE of uniform rank 64 (within 0.002), at most
   50 % of its embedding parameters.  The point is *selected on validation*: the pruned model with
   the fewest parameters whose validation RMSE is within ``tolerance`` of uniform rank 64's
   validation RMSE; its test RMSE and parameter share are then reported, beside the smallest uniform
   rank that passes the same rule (whether the uniform curve alone already meets the target).

Outputs in ``--outdir``: ``results.json``, ``table.md``, ``pareto_<dataset>.png``; written atomically.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..results import check_outputs, write_atomic
from . import run_cli, study_parser, write_study

#: the shared datasets (``--data-root``, default ``<repo>/../shared/data`` or ``$LFOPT_DATA``)
DEFAULT_DATA_ROOT = Path(os.environ.get("LFOPT_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
DATASETS = {  # name: (file under the data root, split)
    "ml-100k": ("ml-100k/u.data", "random"),
    "ml-1m": ("ml-1m/ratings.dat", "random"),
    "yelp": ("yelp/user_business.dat", "random"),
    "amazon": ("amazon/user_item.dat", "random"),
    "douban": ("douban-monti/training_test_dataset.mat", "fixed"),
    "synthetic": (None, "random"),  # generated: planted lower rank in the rare blocks (planted_blocks)
}
SPLIT_SEED = 42
VALID_SEED = 0
VALID_FRACTION = 0.1
#: the validation part is cut into a search half (selection weights) and a selection half (early
#: stopping and every choice) with this seed
HALF_SEED = 1
#: the weight that pins a pruned (row, dimension) entry at 0 during fine-tuning
PIN_WEIGHT = 1e12
BLOCK_SCHEMES = ("log", "entries")


@dataclass
class StudyConfig:
    """Sizes and budgets of the study (the default runs ML-1M and Yelp in a few minutes on 2 cores)."""

    datasets: tuple = ("ml-1m", "yelp")
    data_root: str | None = None
    seed: int = 0  # initialization of the uniform models
    rank: int = 64  # the search starts from uniform rank F = rank
    ranks: tuple = (1, 2, 4, 8, 16, 32, 64)  # the uniform baseline
    lams: tuple = (0.03, 0.05, 0.08)  # lam grid (picked per uniform rank on validation)
    lam_b: float = 0.0
    lam0: float = 6.0
    lam0_b: float = 3.0
    init_scale: float = 0.1
    max_sweeps: int = 30
    patience: int = 3
    n_blocks: int = 6
    block_scheme: str = "log"
    rounds: int = 20  # search rounds (one ALS sweep + val_batches a-steps each)
    val_batches: int = 4
    a_lr: float = 0.05
    a_min: float = 1e-3
    a_max: float = 10.0
    rhos: tuple = (0.0, 1e-5, 3e-5, 1e-4)  # L1 strengths (one search each)
    thresholds: tuple = (0.05, 0.3, 0.6, 0.9)
    finetune_sweeps: int = 15
    #: fine-tuning variants: "merged" (the selection folded into the factors, plain penalty: only the
    #: structure is learned) and "scaled" (kept entries keep the search's weights w / a^2)
    variants: tuple = ("merged", "scaled")
    finetune_patience: int = 2
    tolerance: float = 0.002  # the claim: within 0.002 of uniform rank 64's RMSE ...
    param_share: float = 0.5  # ... with at most 50 % of its embedding parameters
    synthetic_size: tuple = (1500, 1000, 60_000)  # users, items, ratings of the "synthetic" dataset
    quick: bool = False

    def __post_init__(self):
        self.datasets = tuple(self.datasets)
        self.ranks = tuple(int(r) for r in self.ranks)
        self.variants = tuple(self.variants)
        bad = [v for v in self.variants if v not in ("merged", "scaled")]
        if bad or not self.variants:
            raise ConfigError(f"variants must be a non-empty subset of ('merged', 'scaled'), got {self.variants!r}")
        if self.rank not in self.ranks:
            self.ranks = tuple(sorted(set(self.ranks) | {self.rank}))


QUICK = dict(datasets=("synthetic",), rank=8, ranks=(1, 2, 4, 8), lams=(0.05,), max_sweeps=15, n_blocks=3,
             rounds=8, val_batches=2, rhos=(1e-3,), thresholds=(0.1, 0.3, 0.6), finetune_sweeps=6,
             synthetic_size=(300, 200, 8000), quick=True)


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


# ====================================================================== blocks
def frequency_blocks(counts, n_blocks: int = 6, scheme: str = "log"):
    """Cut rows into frequency blocks by their training counts.

    Returns ``(block, edges)``: ``block[r]`` in ``0..n_blocks-1`` (0 = rarest) for every row, and the
    ``n_blocks - 1`` count thresholds (a row with ``count >= edges[b - 1]`` is in block ``b`` or above).

    * ``"log"``: thresholds log-spaced between the smallest positive count and the largest count + 1,
      so every block spans the same ratio of counts;
    * ``"entries"``: thresholds at the counts where the cumulative number of entries (rows sorted by
      count) passes ``b / n_blocks`` of the total, so the blocks hold about equal numbers of entries.

    A row's block never decreases with its count and rows of equal count share a block (so a block
    can be empty when counts tie).  Rows with no entries are in block 0.

    >>> block, edges = frequency_blocks([1, 2, 4, 8, 16, 32], n_blocks=3)
    >>> block.tolist()
    [0, 0, 1, 1, 2, 2]
    """
    if isinstance(n_blocks, bool) or int(n_blocks) != n_blocks or n_blocks < 1:
        raise ConfigError(f"n_blocks must be a positive integer, got {n_blocks!r}")
    if scheme not in BLOCK_SCHEMES:
        raise ConfigError(f"block scheme must be one of {BLOCK_SCHEMES}, got {scheme!r}")
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or counts.size == 0 or (counts < 0).any():
        raise ConfigError("counts must be a non-empty 1-D array of non-negative integers")
    n_blocks = int(n_blocks)
    pos = counts[counts > 0]
    if n_blocks == 1 or pos.size == 0:
        return np.zeros(counts.size, dtype=np.int32), np.zeros(0)
    if scheme == "log":
        lo, hi = float(pos.min()), float(pos.max()) + 1.0
        edges = np.geomspace(lo, hi, n_blocks + 1)[1:-1]
    else:
        c = np.sort(pos)
        cum = np.cumsum(c, dtype=np.float64)
        targets = cum[-1] * np.arange(1, n_blocks) / n_blocks
        # the row where the cumulative entries pass the target opens the next block
        idx = np.minimum(np.searchsorted(cum, targets, side="left") + 1, c.size - 1)
        edges = c[idx].astype(np.float64)
    block = np.searchsorted(edges, counts, side="right").astype(np.int32)
    block[counts == 0] = 0
    return block, edges


def block_summary(block, counts, n_blocks: int) -> list:
    """Per block: rows, entries, smallest and largest count (None when empty)."""
    counts = np.asarray(counts)
    out = []
    for b in range(n_blocks):
        sel = counts[block == b]
        out.append({"block": b, "rows": int(sel.size), "entries": int(sel.sum()),
                    "min_count": int(sel.min()) if sel.size else None,
                    "max_count": int(sel.max()) if sel.size else None})
    return out


# ====================================================================== data
def planted_blocks(n_users: int = 1500, n_items: int = 1000, nnz: int = 60_000, rank: int = 8, rare_rank: int = 2,
                   noise_std: float = 0.5, signal: float = 2.0, tail_scale: float = 0.5, seed: int = 0):
    """Synthetic ratings with long-tailed degrees whose rare users and items carry a lower rank.

    Entry (u, i) = 3.5 + b_u + b_i + x_u . y_i + noise, with ``rank`` latent dimensions: the first
    ``rare_rank`` of scale ``signal / sqrt(rank)``, the others ``tail_scale`` times that; users and
    items in the rarer half (by expected degree) have factors only in their first ``rare_rank``
    dimensions.  Returns an :class:`Interactions`
    with ``meta["planted"]`` (the true factors and the rare masks).
    """
    from ..data.interactions import Interactions

    rng = np.random.default_rng(seed)
    wu = rng.lognormal(0.0, 1.0, n_users)
    wi = rng.lognormal(0.0, 1.2, n_items)
    pu, pi = wu / wu.sum(), wi / wi.sum()
    # draw cells (without repetition) by activity, every row and column at least once
    want = int(nnz * 1.3) + n_users + n_items
    u = np.concatenate([np.arange(n_users), rng.choice(n_users, want, p=pu), rng.choice(n_users, n_items, p=pu)])
    i = np.concatenate([rng.choice(n_items, n_users, p=pi), rng.choice(n_items, want, p=pi), np.arange(n_items)])
    cell = u.astype(np.int64) * n_items + i
    _, first = np.unique(cell, return_index=True)
    keep = np.sort(first)
    forced = keep[(keep < n_users) | (keep >= n_users + want)]
    rest = keep[(keep >= n_users) & (keep < n_users + want)]
    rest = rng.permutation(rest)[: max(0, nnz - forced.size)]
    sel = np.sort(np.concatenate([forced, rest]))
    u, i = u[sel].astype(np.int32), i[sel].astype(np.int32)
    scale = np.where(np.arange(rank) < rare_rank, 1.0, tail_scale) * signal / np.sqrt(rank)
    X = rng.standard_normal((n_users, rank)) * scale
    Y = rng.standard_normal((n_items, rank)) * scale
    rare_u = wu < np.median(wu)
    rare_i = wi < np.median(wi)
    X[rare_u, rare_rank:] = 0.0
    Y[rare_i, rare_rank:] = 0.0
    bu = 0.3 * rng.standard_normal(n_users)
    bi = 0.3 * rng.standard_normal(n_items)
    vals = 3.5 + bu[u] + bi[i] + np.einsum("ij,ij->i", X[u], Y[i]) + noise_std * rng.standard_normal(u.size)
    data = Interactions(u, i, np.clip(vals, 1.0, 5.0), n_users=n_users, n_items=n_items,
                        name="synthetic (planted blocks)")
    data.meta["planted"] = {"X": X, "Y": Y, "rare_users": rare_u, "rare_items": rare_i, "rank": rank,
                            "rare_rank": rare_rank}
    return data


def load_dataset(name: str, cfg: StudyConfig):
    """``(inner, select, search, test, info)`` of a dataset under its protocol (module docstring, step 1):
    the training part, the two halves of the validation part, and the test part."""
    from ..data.io import load
    from ..data.split import fixed_split, random_split

    if name not in DATASETS:
        raise ConfigError(f"--datasets: unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    rel, split = DATASETS[name]
    t0 = time.perf_counter()
    if rel is None:
        n_u, n_i, nnz = cfg.synthetic_size
        data = planted_blocks(n_u, n_i, nnz, rank=max(2, min(8, cfg.rank)), seed=cfg.seed)
        path = "generated"
    else:
        root = Path(cfg.data_root) if cfg.data_root else DEFAULT_DATA_ROOT
        path = root / rel
        if not path.is_file():
            raise ConfigError(f"--datasets {name}: {path} not found (give the folder of the datasets with --data-root)")
        data = load(str(path))
    if split == "fixed" and "test_mask" in data.meta:
        train, test = fixed_split(data)
        how = "fixed (Monti)"
    else:
        train, test = random_split(data, 0.1, seed=SPLIT_SEED)
        how = f"random 90/10 seed {SPLIT_SEED}"
    inner, valid = random_split(train, VALID_FRACTION, seed=VALID_SEED)
    select, search = random_split(valid, 0.5, seed=HALF_SEED)
    info = {"name": name, "path": str(path), "split": how, "validation": f"{VALID_FRACTION:g} of train, seed "
            f"{VALID_SEED}, halves seed {HALF_SEED}", "n_users": data.n_users, "n_items": data.n_items,
            "n_train": inner.nnz, "n_valid": valid.nnz, "n_select": select.nnz, "n_search": search.nnz,
            "n_test": test.nnz, "scale": [float(data.values.min()), float(data.values.max())],
            "load_seconds": time.perf_counter() - t0}
    return inner, select, search, test, info


# ====================================================================== models
def _regularizer(lam: float, cfg: StudyConfig):
    from ..regularizers import L2

    return L2(lam, cfg.lam_b, lam0=cfg.lam0, lam0_b=cfg.lam0_b)


def make_objective(train, rank: int, lam: float, cfg: StudyConfig):
    from ..models.lf import LFObjective

    return LFObjective(train, rank, regularizer=_regularizer(lam, cfg))


def rmse_on(obj, y, data, scale) -> float:
    """RMSE of the model's predictions (clipped to the rating scale) on ``data``."""
    pred = np.asarray(obj.predict(y, data.users, data.items), dtype=np.float64)
    pred = np.clip(pred, scale[0], scale[1])
    d = pred - data.values
    return float(np.sqrt(np.mean(d * d)))


#: factor entries below this magnitude are flushed to 0 after every masked sweep: pinned dimensions
#: decay by ~1/PIN_WEIGHT per sweep, and float32 subnormals on their way to 0 slow ALS's Gram
#: products down several-fold
FLUSH_BELOW = 1e-30


def project(obj, y, mask_u=None, mask_i=None) -> None:
    """Set the pruned (row, dimension) entries of ``y``'s factors to exactly 0 and flush tiny ones."""
    _, _, P, Q = obj.unpack(y)
    for X, mask in ((P, mask_u), (Q, mask_i)):
        if mask is not None:
            X[~mask] = 0.0
        X[np.abs(X) < FLUSH_BELOW] = 0.0


def masked_als(mask_u=None, mask_i=None, seed: int = 0):
    """lfopt's ALS optimizer followed, every sweep, by :func:`project` onto the masks (None: no mask).

    The pruned entries carry ``PIN_WEIGHT`` in the objective, so the kept dimensions' ridge solves
    are those of the smaller model; the projection only removes the ~1e-12 remainders.
    """
    from ..optim.first_order import ALS

    class MaskedALS(ALS):
        name = "als"

        def epoch(self, obj, y, epoch):
            out = super().epoch(obj, y, epoch)
            project(obj, y, mask_u, mask_i)
            return out

    return MaskedALS(seed=seed)


def train_als(obj, y, valid, scale, max_sweeps: int, patience: int, seed: int = 0, mask_u=None,
              mask_i=None) -> dict:
    """ALS (with the projection of :func:`masked_als` when masks are given) and early stopping on
    validation RMSE (lfopt's Trainer; the best sweep is restored in ``y``)."""
    from ..train.trainer import Trainer

    tr = Trainer(epochs=max_sweeps, patience=patience, min_delta=1e-5, verbose=False, metric="rmse")
    res = tr.run(obj, masked_als(mask_u, mask_i, seed), y,
                 evaluate=lambda yy: {"rmse": rmse_on(obj, yy, valid, scale)})
    return {"valid_rmse": float(res.best_value), "sweeps": len(res.history), "best_sweep": int(res.best_epoch),
            "stopped": res.stopped, "seconds": float(res.seconds)}


def base_weights(obj) -> tuple:
    """The plain (regularizer's) row weights ``(wu, wi, wbu, wbi)`` of an LF objective (copies)."""
    reg = obj.regularizer
    return tuple(np.array(w, dtype=np.float32) for w in reg.row_weights(*obj._counts))


def row_weights_for(obj, lam: float, cfg: StudyConfig) -> tuple:
    """The row weights ``(wu, wi, wbu, wbi)`` of the study's regularizer with ``lam`` on ``obj``'s data."""
    return tuple(np.array(w, dtype=np.float32) for w in _regularizer(lam, cfg).row_weights(*obj._counts))


def principal_basis(obj, y) -> None:
    """Rotate the factors (in place) to the principal basis of P Q^T: P = U_P U sqrt(S),
    Q = U_Q V sqrt(S), dimensions in decreasing order of the singular values S; predictions are
    unchanged."""
    _, _, P, Q = obj.unpack(y)
    P64, Q64 = P.astype(np.float64), Q.astype(np.float64)
    qp, rp = np.linalg.qr(P64)
    qq, rq = np.linalg.qr(Q64)
    U, s, Vt = np.linalg.svd(rp @ rq.T)
    r = np.sqrt(s)
    P[:] = (qp @ U) * r
    Q[:] = (qq @ Vt.T) * r


def embedding_params(mask_u, mask_i) -> int:
    """Kept (row, dimension) entries of the factor matrices."""
    return int(np.count_nonzero(mask_u) + np.count_nonzero(mask_i))


# ====================================================================== search
@dataclass
class SearchState:
    """Selection weights and where they came from."""

    a_u: np.ndarray  # (B_u, F)
    a_i: np.ndarray  # (B_i, F)
    history: list = field(default_factory=list)
    seconds: float = 0.0


def selection_weights(w, a, block, a_min: float):
    """Per-(row, dimension) penalty weights ``w[r] / a[block[r], k]^2`` of the scaled factors; a dead
    weight (``a < a_min``) gets ``PIN_WEIGHT``."""
    a_rows = a[block]  # (rows, F)
    out = np.where(a_rows >= a_min, w[:, None] / np.maximum(a_rows, a_min) ** 2, PIN_WEIGHT)
    return np.ascontiguousarray(np.minimum(out, PIN_WEIGHT), dtype=np.float32)


def install_selection(obj, base, a_u, a_i, block_u, block_i, a_min: float) -> None:
    wu, wi, wbu, wbi = base
    obj.set_row_weights(selection_weights(wu, a_u, block_u, a_min), selection_weights(wi, a_i, block_i, a_min),
                        wbu, wbi)


def selection_gradient(obj, y, a_u, a_i, block_u, block_i, vu, vi, vr):
    """Gradient of the validation MSE (entries ``vu, vi, vr``) in ``a_u, a_i`` with p = p~ / a held fixed.

    d r^_ui / d a_u[b(u), k] = p_uk q~_ik = p~_uk q~_ik / a_u[b(u), k] (items alike), so both
    gradients come from one product Z = p~_u * q~_i per entry, summed by block.
    Returns ``(g_u, g_i, mse)``.
    """
    _, _, P, Q = obj.unpack(y)
    pred = np.asarray(obj.predict(y, vu, vi), dtype=np.float64)
    e = pred - vr
    n = e.size
    Z = P[vu] * Q[vi]  # (n, F) float32
    Z *= (2.0 / n) * e[:, None].astype(np.float32)
    # sums by block: one-hot (blocks x entries) times Z
    Bu = np.eye(a_u.shape[0], dtype=np.float32)[block_u[vu]].T
    Bi = np.eye(a_i.shape[0], dtype=np.float32)[block_i[vi]].T
    gu = (Bu @ Z).astype(np.float64) / np.maximum(a_u, 1e-12)
    gi = (Bi @ Z).astype(np.float64) / np.maximum(a_i, 1e-12)
    gu[a_u <= 0] = 0.0
    gi[a_i <= 0] = 0.0
    return gu, gi, float(np.mean(e * e))


def search_dims(obj, y, valid, block_u, block_i, n_blocks_u: int, n_blocks_i: int, base, scale, *, rho: float,
                rounds: int = 30, val_batches: int = 4, lr: float = 0.05, a_min: float = 1e-3, a_max: float = 10.0,
                seed: int = 0, monitor=None, quiet: bool = True) -> SearchState:
    """The DNIS-style search (module docstring, step 4); ``y`` (scaled factors p~) is updated in place.

    Each round: one ALS sweep with the selection's per-(row, dimension) weights (the model on the
    training part), then ``val_batches`` Adam steps on ``a`` over disjoint mini-batches of the
    validation part (a fresh order each round) on validation MSE + ``rho`` sum |a|, projected on
    ``0 <= a <= a_max``; weights below ``a_min`` die (set to 0, their dimension pinned at 0).
    After each ``a`` step p = p~ / a is held, i.e. p~ is rescaled by a_new / a_old.
    ``monitor`` (default ``valid``): the data whose RMSE the history records after every round.
    """
    if rho < 0 or not math.isfinite(rho):
        raise ConfigError(f"rho (the L1 strength) must be a finite number >= 0, got {rho!r}")
    if rounds < 1:
        raise ConfigError(f"rounds must be a positive integer, got {rounds!r}")
    f = obj.f
    a_u = np.ones((n_blocks_u, f))
    a_i = np.ones((n_blocks_i, f))
    st = SearchState(a_u, a_i)
    m1 = [np.zeros_like(a_u), np.zeros_like(a_i)]
    m2 = [np.zeros_like(a_u), np.zeros_like(a_i)]
    b1, b2, eps = 0.9, 0.999, 1e-8
    rng = np.random.default_rng(seed)
    _, _, P, Q = obj.unpack(y)
    vu, vi = valid.users, valid.items
    vr = valid.values.astype(np.float64)
    t = 0
    t0 = time.perf_counter()
    for rnd in range(1, rounds + 1):
        install_selection(obj, base, a_u, a_i, block_u, block_i, a_min)
        obj.als_sweep(y)
        project(obj, y, (a_u > 0)[block_u], (a_i > 0)[block_i])  # dead weights: exactly 0
        mses = []
        for batch in np.array_split(rng.permutation(vu.size), max(1, min(val_batches, vu.size))):
            gu, gi, mse = selection_gradient(obj, y, a_u, a_i, block_u, block_i, vu[batch], vi[batch], vr[batch])
            mses.append(mse)
            t += 1
            for j, (a, g) in enumerate(((a_u, gu), (a_i, gi))):
                alive = a > 0
                g = g + rho * alive  # d/da of rho |a| for a > 0
                m1[j] = b1 * m1[j] + (1 - b1) * g
                m2[j] = b2 * m2[j] + (1 - b2) * g * g
                step = lr * (m1[j] / (1 - b1 ** t)) / (np.sqrt(m2[j] / (1 - b2 ** t)) + eps)
                new = np.clip(a - step, 0.0, a_max)
                new[(new < a_min) | ~alive] = 0.0
                ratio = np.where(alive, new / np.where(alive, a, 1.0), 0.0)
                (P if j == 0 else Q)[:] *= ratio[block_u if j == 0 else block_i].astype(np.float32)
                a[:] = new
        row = {"round": rnd, "valid_mse_batches": float(np.mean(mses)),
               "valid_rmse": rmse_on(obj, y, valid if monitor is None else monitor, scale),
               "seconds": time.perf_counter() - t0,
               "a_u_mean": float(a_u.mean()), "a_i_mean": float(a_i.mean()),
               "dead_u": int((a_u == 0).sum()), "dead_i": int((a_i == 0).sum())}
        st.history.append(row)
        if not quiet and (rnd == rounds or rnd % 10 == 0):
            _say(quiet, f"    round {rnd}: valid RMSE {row['valid_rmse']:.4f}, mean a users {row['a_u_mean']:.3f} "
                        f"items {row['a_i_mean']:.3f}, dead {row['dead_u']} + {row['dead_i']}")
    # leave the objective with the final selection installed and y its exact ALS state
    install_selection(obj, base, a_u, a_i, block_u, block_i, a_min)
    st.seconds = time.perf_counter() - t0
    return st


def prune_masks(a_u, a_i, block_u, block_i, threshold: float):
    """``(keep_u, keep_i, mask_u, mask_i)``: kept (block, dimension) pairs (a >= threshold) and the
    per-(row, dimension) masks they give."""
    keep_u = np.asarray(a_u) >= threshold
    keep_i = np.asarray(a_i) >= threshold
    return keep_u, keep_i, keep_u[block_u], keep_i[block_i]


def finetune(obj, y, mask_u, mask_i, base, valid, scale, max_sweeps: int = 20, patience: int = 2,
             zero_pruned: bool = True, kept_weights=None) -> dict:
    """Fine-tune the mixed-dimension model: ALS with the plain weights on kept (row, dimension)
    entries and ``PIN_WEIGHT`` on pruned ones, early-stopped on validation; ``y`` in place (pruned
    entries zeroed first and, with ``zero_pruned``, projected to exactly 0 after every sweep; without
    it they stay at the ~1e-12 the weight leaves them, which ``max_abs_pruned`` reports).

    ``kept_weights = (Wu, Wi)`` ((m, f), (n, f)) replaces the plain weights of the kept entries
    (e.g. the search's w / a^2: the "kept scales" variant)."""
    wu, wi, wbu, wbi = base
    if kept_weights is not None:
        wu, wi = (np.asarray(w, dtype=np.float32) for w in kept_weights)
    else:
        wu, wi = wu[:, None], wi[:, None]
    mask_u = np.asarray(mask_u, dtype=bool)
    mask_i = np.asarray(mask_i, dtype=bool)
    _, _, P, Q = obj.unpack(y)
    if mask_u.shape != P.shape or mask_i.shape != Q.shape:
        raise ConfigError(f"masks of shapes {mask_u.shape}, {mask_i.shape} do not fit factors {P.shape}, {Q.shape}")
    P[~mask_u] = 0.0
    Q[~mask_i] = 0.0
    obj.set_row_weights(np.where(mask_u, wu, PIN_WEIGHT).astype(np.float32),
                        np.where(mask_i, wi, PIN_WEIGHT).astype(np.float32), wbu, wbi)
    out = train_als(obj, y, valid, scale, max_sweeps, patience, mask_u=mask_u if zero_pruned else None,
                    mask_i=mask_i if zero_pruned else None)
    out["max_abs_pruned"] = float(max(np.abs(P[~mask_u]).max(initial=0.0), np.abs(Q[~mask_i]).max(initial=0.0)))
    return out


# ====================================================================== one dataset
def _dims_per_block(keep) -> list:
    return [int(x) for x in np.asarray(keep).sum(axis=1)]


def run_dataset(name: str, cfg: StudyConfig, quiet: bool = True) -> dict:
    """Uniform ranks, the searches, the pruned models, and the claim on one dataset."""
    t_all = time.perf_counter()
    inner, valid, search_part, test, info = load_dataset(name, cfg)  # valid: the selection half
    scale = info["scale"]
    m, n = inner.shape
    _say(quiet, f"  {name}: {m} users x {n} items, {inner.nnz:,} train / {valid.nnz:,} + {search_part.nnz:,} "
                f"valid (selection + search) / {test.nnz:,} test")
    cu, ci = inner.user_counts(), inner.item_counts()
    block_u, edges_u = frequency_blocks(cu, cfg.n_blocks, cfg.block_scheme)
    block_i, edges_i = frequency_blocks(ci, cfg.n_blocks, cfg.block_scheme)
    blocks = {"scheme": cfg.block_scheme, "users": block_summary(block_u, cu, cfg.n_blocks),
              "items": block_summary(block_i, ci, cfg.n_blocks),
              "user_edges": edges_u.tolist(), "item_edges": edges_i.tolist()}

    # ---- uniform ranks, lam picked on validation per rank
    uniform, start = [], None
    for rank in cfg.ranks:
        best = None
        for lam in cfg.lams:
            obj = make_objective(inner, rank, lam, cfg)
            y = obj.init_params(cfg.init_scale, seed=cfg.seed)
            fit = train_als(obj, y, valid, scale, cfg.max_sweeps, cfg.patience, cfg.seed)
            fit.update(lam=lam)
            if best is None or fit["valid_rmse"] < best[0]["valid_rmse"]:
                best = (fit, obj, y)
        fit, obj, y = best
        pt = {"method": "uniform", "rank": rank, "lam": fit["lam"], "params": (m + n) * rank, "bias_params": m + n,
              "valid_rmse": fit["valid_rmse"], "test_rmse": rmse_on(obj, y, test, scale), "sweeps": fit["sweeps"],
              "seconds": fit["seconds"], "dims_users": [rank] * cfg.n_blocks, "dims_items": [rank] * cfg.n_blocks}
        uniform.append(pt)
        _say(quiet, f"    uniform rank {rank:3d}: lam {fit['lam']:g}, {fit['sweeps']} sweeps, valid "
                    f"{pt['valid_rmse']:.4f}, test {pt['test_rmse']:.4f}  [{time.perf_counter() - t_all:.0f} s]")
        if rank == cfg.rank:
            start = (fit["lam"], np.array(y, copy=True))
    lam_f, y_f = start
    ref = next(u for u in uniform if u["rank"] == cfg.rank)

    # ---- searches from uniform rank F (principal basis), then prune + fine-tune at every threshold
    searches, pruned = [], []
    for rho in cfg.rhos:
        obj = make_objective(inner, cfg.rank, lam_f, cfg)
        base = base_weights(obj)
        y = np.array(y_f, copy=True)
        principal_basis(obj, y)
        st = search_dims(obj, y, search_part, block_u, block_i, cfg.n_blocks, cfg.n_blocks, base, scale, rho=rho,
                         rounds=cfg.rounds, val_batches=cfg.val_batches, lr=cfg.a_lr, a_min=cfg.a_min,
                         a_max=cfg.a_max, seed=cfg.seed, monitor=valid, quiet=quiet)
        soft = {"rho": rho, "a_users": st.a_u.tolist(), "a_items": st.a_i.tolist(), "history": st.history,
                "seconds": st.seconds, "valid_rmse_soft": rmse_on(obj, y, valid, scale),
                "test_rmse_soft": rmse_on(obj, y, test, scale)}
        searches.append(soft)
        _say(quiet, f"    search rho={rho:g}: {cfg.rounds} rounds in {st.seconds:.1f} s, soft model valid "
                    f"{soft['valid_rmse_soft']:.4f}")
        seen = set()
        for thr in cfg.thresholds:
            keep_u, keep_i, mask_u, mask_i = prune_masks(st.a_u, st.a_i, block_u, block_i, thr)
            key = (keep_u.tobytes(), keep_i.tobytes())
            if key in seen:
                continue  # the same structure as a lower threshold's
            seen.add(key)
            for variant in cfg.variants:
                if variant == "scaled":  # the search's weights (its lam) on the kept entries
                    kept = (selection_weights(base[0], st.a_u, block_u, cfg.a_min),
                            selection_weights(base[1], st.a_i, block_i, cfg.a_min))
                    tries = [(lam_f, base, kept)]
                else:  # the plain penalty, lam picked on validation from the uniform ranks' grid
                    tries = [(lam, row_weights_for(obj, lam, cfg), None) for lam in cfg.lams]
                best = None
                for lam, base_l, kept in tries:
                    y3 = np.array(y, copy=True)
                    ft = finetune(obj, y3, mask_u, mask_i, base_l, valid, scale, cfg.finetune_sweeps,
                                  cfg.finetune_patience, kept_weights=kept)
                    if best is None or ft["valid_rmse"] < best[0]["valid_rmse"]:
                        best = (ft, y3, lam)
                ft, y2, lam = best
                pt = {"method": f"learned-{variant}", "rho": rho, "threshold": thr, "lam": lam,
                      "params": embedding_params(mask_u, mask_i), "bias_params": m + n,
                      "valid_rmse": ft["valid_rmse"], "test_rmse": rmse_on(obj, y2, test, scale),
                      "sweeps": ft["sweeps"], "seconds": ft["seconds"], "max_abs_pruned": ft["max_abs_pruned"],
                      "dims_users": _dims_per_block(keep_u), "dims_items": _dims_per_block(keep_i)}
                pt["params_share"] = pt["params"] / ref["params"]
                pruned.append(pt)
                _say(quiet, f"    {variant:6s} rho {rho:g} t {thr:g}: {pt['params']:,} params "
                            f"({pt['params_share']:.0%}), dims users {pt['dims_users']} items {pt['dims_items']}, "
                            f"valid {pt['valid_rmse']:.4f}, test {pt['test_rmse']:.4f}")
    for u in uniform:
        u["params_share"] = u["params"] / ref["params"]
    out = {"info": info, "blocks": blocks, "uniform": uniform, "searches": searches, "learned": pruned,
           "claim": claim(uniform, pruned, cfg), "pareto": pareto(uniform + pruned),
           "seconds": time.perf_counter() - t_all}
    return out


def pareto(points: list) -> list:
    """Indices-free list of (method, params, test_rmse) on the lower-left front (by test RMSE; for the plot)."""
    front, best = [], math.inf
    for p in sorted(points, key=lambda p: (p["params"], p["test_rmse"])):
        if p["test_rmse"] < best:
            best = p["test_rmse"]
            front.append({"method": p["method"], "params": p["params"], "test_rmse": p["test_rmse"]})
    return front


def claim(uniform: list, learned: list, cfg: StudyConfig) -> dict:
    """Issue 10's target, with the point chosen on validation (module docstring, step 6)."""
    ref = next(u for u in uniform if u["rank"] == cfg.rank)
    tol, share = cfg.tolerance, cfg.param_share

    def pick(points):
        ok = [p for p in points if p["valid_rmse"] <= ref["valid_rmse"] + tol]
        return min(ok, key=lambda p: (p["params"], p["valid_rmse"])) if ok else None

    def judge(p):
        if p is None:
            return None
        return {"params": p["params"], "params_share": p["params"] / ref["params"], "valid_rmse": p["valid_rmse"],
                "test_rmse": p["test_rmse"], "test_gap": p["test_rmse"] - ref["test_rmse"],
                "within_tolerance": bool(p["test_rmse"] <= ref["test_rmse"] + tol),
                "meets_target": bool(p["test_rmse"] <= ref["test_rmse"] + tol and p["params"] <= share * ref["params"]),
                **{k: p[k] for k in ("method", "rank", "rho", "threshold", "dims_users", "dims_items") if k in p}}

    sel_l = judge(pick(learned))
    per_variant = {v: judge(pick([p for p in learned if p["method"] == f"learned-{v}"])) for v in cfg.variants}
    sel_u = judge(pick([u for u in uniform if u["rank"] != cfg.rank]))
    # the same question asked of every point (test-side view, for the table only: nothing is chosen by it)
    at_half = [p for p in learned if p["params"] <= share * ref["params"]]
    best_half = min(at_half, key=lambda p: p["test_rmse"]) if at_half else None
    return {"reference": {"rank": ref["rank"], "params": ref["params"], "valid_rmse": ref["valid_rmse"],
                          "test_rmse": ref["test_rmse"]},
            "tolerance": tol, "param_share": share, "rule": f"fewest parameters with validation RMSE <= uniform "
            f"rank {ref['rank']}'s + {tol:g}", "learned": sel_l, "learned_by_variant": per_variant, "uniform": sel_u,
            "target_met": None if sel_l is None else sel_l["meets_target"],
            "uniform_alone_meets_target": None if sel_u is None else sel_u["meets_target"],
            "learned_best_test_at_half": None if best_half is None else judge(best_half)}


# ====================================================================== outputs
def _fmt(x, spec=".4f") -> str:
    return "-" if x is None else format(x, spec)


def dataset_table(name: str, res: dict, cfg: StudyConfig) -> str:
    info, cl = res["info"], res["claim"]
    ref = cl["reference"]
    b = res["blocks"]
    lines = [f"## {name}: {info['n_users']:,} users x {info['n_items']:,} items; {info['n_train']:,} train / "
             f"{info['n_select']:,} + {info['n_search']:,} validation (selection + search halves) / "
             f"{info['n_test']:,} test ({info['split']}; validation {info['validation']}); "
             f"{res['seconds']:.0f} s", "", "valid RMSE = on the selection half.", "",
             f"Blocks ({b['scheme']} scheme), users: " + ", ".join(
                 f"{x['rows']} rows [{x['min_count']}-{x['max_count']}]" for x in b["users"]) + "; items: " +
             ", ".join(f"{x['rows']} rows [{x['min_count']}-{x['max_count']}]" for x in b["items"]) + ".", "",
             "| method | rank / (ρ, t) | λ | embedding params | % of rank " + str(cfg.rank) +
             " | dims per user block (rare→frequent) | dims per item block | valid RMSE | test RMSE | sweeps | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in res["uniform"] + res["learned"]:
        what = str(p["rank"]) if p["method"] == "uniform" else f"ρ={p['rho']:g}, t={p['threshold']:g}"
        lines.append(f"| {p['method']} | {what} | {p['lam']:g} | {p['params']:,} | {100 * p['params_share']:.1f} | "
                     f"{p['dims_users']} | {p['dims_items']} | {p['valid_rmse']:.4f} | {p['test_rmse']:.4f} | "
                     f"{p['sweeps']} | {p['seconds']:.1f} |")
    lines += ["", "Searches (soft selection, before pruning):", "",
              "| ρ | rounds | s | valid RMSE (soft) | test RMSE (soft) | dead (block, dim) users / items |",
              "|---|---|---|---|---|---|"]
    for s in res["searches"]:
        last = s["history"][-1]
        lines.append(f"| {s['rho']:g} | {len(s['history'])} | {s['seconds']:.1f} | {s['valid_rmse_soft']:.4f} | "
                     f"{s['test_rmse_soft']:.4f} | {last['dead_u']} / {last['dead_i']} |")
    lines += ["", f"**Claim** (target: test RMSE within {cl['tolerance']:g} of uniform rank {ref['rank']} "
              f"({ref['test_rmse']:.4f}; {ref['params']:,} params) with <= {cl['param_share']:.0%} of its parameters). "
              f"Selection rule ({cl['rule']}; validation RMSE of rank {ref['rank']}: {ref['valid_rmse']:.4f}):", ""]
    rows = [("learned dims (any variant)", cl["learned"])]
    rows += [(f"learned dims, {v} only", x) for v, x in cl["learned_by_variant"].items()]
    for label, s in rows + [("uniform ranks", cl["uniform"])]:
        if s is None:
            lines.append(f"- {label}: no point passes the validation rule.")
            continue
        what = f"rank {s['rank']}" if s["method"] == "uniform" else \
            f"{s['method']} ρ={s['rho']:g}, t={s['threshold']:g}"
        lines.append(f"- {label}: {what}, {s['params']:,} params ({100 * s['params_share']:.1f} %), valid "
                     f"{s['valid_rmse']:.4f}, test {s['test_rmse']:.4f} (gap {s['test_gap']:+.4f}); within "
                     f"{cl['tolerance']:g}: {s['within_tolerance']}; meets the target: {s['meets_target']}")
    bh = cl["learned_best_test_at_half"]
    if bh is not None:
        lines.append(f"- (for information, not a selection) best learned test RMSE at <= {cl['param_share']:.0%} "
                     f"params: {bh['test_rmse']:.4f} with {100 * bh['params_share']:.1f} %.")
    return "\n".join(lines)


def plot_pareto(name: str, res: dict, cfg: StudyConfig, path: Path) -> Path:
    from ..plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=100)
    uni = res["uniform"]
    ax.plot([u["params"] for u in uni], [u["test_rmse"] for u in uni], "o-", color="black", label="uniform rank")
    for u in uni:
        ax.annotate(str(u["rank"]), (u["params"], u["test_rmse"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    markers = ("s", "^", "D", "v", "P")
    styles = {"merged": "--", "scaled": ":"}
    for j, rho in enumerate(cfg.rhos):
        for variant in cfg.variants:
            pts = sorted((p for p in res["learned"] if p["rho"] == rho and p["method"] == f"learned-{variant}"),
                         key=lambda p: p["params"])
            if pts:
                ax.plot([p["params"] for p in pts], [p["test_rmse"] for p in pts],
                        markers[j % len(markers)] + styles.get(variant, "-."), alpha=0.8, color=f"C{j + 1}",
                        markerfacecolor="none" if variant == "scaled" else None,
                        label=f"learned ({variant}{', hollow' if variant == 'scaled' else ''}), ρ={rho:g}")
    cl = res["claim"]
    ref = cl["reference"]
    ax.axhspan(ref["test_rmse"] - cl["tolerance"], ref["test_rmse"] + cl["tolerance"], color="gray", alpha=0.15,
               label=f"rank {ref['rank']} ± {cl['tolerance']:g}")
    ax.axvline(cl["param_share"] * ref["params"], color="gray", linestyle=":", linewidth=1,
               label=f"{cl['param_share']:.0%} of rank {ref['rank']}'s params")
    if cl["learned"] is not None:
        ax.plot([cl["learned"]["params"]], [cl["learned"]["test_rmse"]], "*", color="red", markersize=14,
                label="learned, selected on validation")
    ax.set_xscale("symlog", linthresh=max(1000.0, 0.5 * min([p["params"] for p in uni] or [1000])))
    ax.set_xlabel("embedding parameters (kept (row, dimension) entries; symlog: 0 = biases only)")
    ax.set_ylabel("test RMSE")
    info = res["info"]
    ax.set_title(f"{name}: test RMSE vs embedding parameters ({info['split']}; ALS, early stopping on validation)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return write_atomic(path, buf.getvalue(), overwrite=True)


def warm_up() -> float:
    """Compile (or load from numba's cache) the kernels the study runs, on a tiny problem; returns seconds."""
    t0 = time.perf_counter()
    data = planted_blocks(60, 40, 900, rank=4, seed=0)
    cfg = StudyConfig(datasets=("synthetic",), rank=4, ranks=(4,))
    obj = make_objective(data, 4, 0.05, cfg)
    y = obj.init_params(0.1, seed=0)
    obj.als_sweep(y)  # 1-D weights
    base = base_weights(obj)
    block = np.zeros(60, dtype=np.int32), np.zeros(40, dtype=np.int32)
    install_selection(obj, base, np.ones((1, 4)), np.ones((1, 4)), *block, 1e-3)
    obj.als_sweep(y)  # 2-D weights
    obj.loss(y)
    rmse_on(obj, y, data, (1.0, 5.0))
    return time.perf_counter() - t0


def outputs(cfg: StudyConfig) -> tuple:
    return ("results.json", "table.md") + tuple(f"pareto_{d}.png" for d in cfg.datasets)


def run_study(cfg: StudyConfig, outdir, quiet: bool = True, overwrite: bool = False) -> dict:
    """Run every dataset and write the outputs into ``outdir``; returns the results dict."""
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise ConfigError(f"--outdir {outdir}: is a file, not a folder")
    for d in cfg.datasets:
        if d not in DATASETS:
            raise ConfigError(f"--datasets: unknown dataset {d!r}; choose from {', '.join(DATASETS)}")
    check_outputs([("--outdir", outdir / nm) for nm in outputs(cfg)], overwrite=overwrite)
    warm = warm_up()  # numba's compilation is not part of any timing
    t0 = time.perf_counter()
    _say(quiet, f"learned-dimensions study ({'quick' if cfg.quick else 'default'} size) -> {outdir}")
    per = {d: run_dataset(d, cfg, quiet) for d in cfg.datasets}
    total = time.perf_counter() - t0
    md = ["# Learned dimensions (DNIS-style) vs uniform ranks (METHODS.md §5)", "",
          f"Wall time {total:.0f} s (numba warm-up {warm:.1f} s before, not counted).  Every model: ALS on the "
          f"LF model (biases + P Qᵀ), penalty L2(λ, λ_b={cfg.lam_b:g}, λ0={cfg.lam0:g}, λ0_b={cfg.lam0_b:g}), "
          f"early stopping on the selection half of the validation part (patience {cfg.patience}; fine-tuning "
          f"{cfg.finetune_patience}); "
          f"uniform ranks pick λ from {list(cfg.lams)} on validation; the searches start from uniform rank "
          f"{cfg.rank} (its λ), {cfg.n_blocks} frequency blocks per side ({cfg.block_scheme} scheme), "
          f"{cfg.rounds} rounds of one ALS sweep + {cfg.val_batches} Adam steps (lr {cfg.a_lr:g}) on the "
          f"selection weights over mini-batches of the search half, L1 strengths ρ ∈ {list(cfg.rhos)}, pruning thresholds "
          f"t ∈ {list(cfg.thresholds)} (a structure equal to a lower threshold's is listed once).  Fine-tuning "
          f"variants: *merged* = the selection folded into the factors, plain penalty with λ picked from the same "
          f"grid on validation (only the structure is learned); *scaled* = the kept entries keep the search's "
          f"per-(block, dimension) weights w/a² (structure + learned regularization).  The selection weights are "
          f"fitted on one half of the validation part; early stopping and every choice use the other half.  "
          f"Embedding params = kept (row, dimension) "
          f"entries; biases (users + items) are extra for every model.  Test RMSE is never used for a choice.", ""]
    for d, res in per.items():
        md += [dataset_table(d, res, cfg), ""]
    table = "\n".join(md)
    results = {"config": asdict(cfg), "datasets": per, "seconds": total, "warmup_seconds": warm,
               "pin_weight": PIN_WEIGHT}
    outdir.mkdir(parents=True, exist_ok=True)
    for d, res in per.items():
        plot_pareto(d, res, cfg, outdir / f"pareto_{d}.png")
    return write_study(outdir, table, results)


# ====================================================================== CLI
def add_parser(sub):
    p = study_parser(
        sub,
        "dims",
        help="learned embedding dimensions (DNIS-style) vs uniform ranks: test RMSE against parameters",
        description="Selection weights per (frequency block, dimension) learned on validation batches "
        "(alternating with ALS on the training part, L1 pull), pruning to mixed dimensions per block and "
        "fine-tuning, beside uniform ranks; the Pareto curve of test RMSE vs embedding parameters on each "
        "dataset. Writes results.json, table.md and pareto_<dataset>.png into --outdir.",
        seed_help="seed of the initializations and searches (default: 0)",
        seed_default=None,
        quick_help="a small size for tests (seconds; a synthetic dataset unless --datasets is given)",
    )
    p.add_argument("--datasets", default=None,
                   help=f"comma-separated datasets from {', '.join(DATASETS)} (default: ml-1m,yelp; quick: synthetic)")
    p.add_argument("--data-root", default=None, help=f"folder of the shared datasets (default: {DEFAULT_DATA_ROOT})")
    p.add_argument("--rank", type=int, default=None, help="rank F the search starts from (default: 64; quick 8)")
    p.add_argument("--blocks", type=int, default=None, help="frequency blocks per side (default: 6; quick 3)")
    p.add_argument("--block-scheme", choices=BLOCK_SCHEMES, default=None,
                   help="log-spaced counts (default) or equal entries per block")
    return p


def config_from_args(args) -> StudyConfig:
    kw = dict(QUICK) if getattr(args, "quick", False) else {}
    if getattr(args, "datasets", None):
        names = tuple(d.strip() for d in args.datasets.split(",") if d.strip())
        bad = [d for d in names if d not in DATASETS]
        if not names or bad:
            raise ConfigError(f"--datasets: unknown dataset(s) {bad or args.datasets!r}; choose from "
                              f"{', '.join(DATASETS)}")
        kw["datasets"] = names
    for name, key in (("seed", "seed"), ("data_root", "data_root"), ("rank", "rank"), ("blocks", "n_blocks"),
                      ("block_scheme", "block_scheme")):
        val = getattr(args, name, None)
        if val is not None:
            kw[key] = val
    for key, flag in (("rank", "--rank"), ("n_blocks", "--blocks")):
        v = kw.get(key)
        if v is not None and (isinstance(v, bool) or int(v) != v or v < 1):
            raise ConfigError(f"{flag} must be a positive integer, got {v!r}")
    if "rank" in kw and getattr(args, "quick", False):
        kw["ranks"] = tuple(sorted({r for r in QUICK["ranks"] if r <= kw["rank"]} | {kw["rank"]}))
    return StudyConfig(**kw)


def run(args) -> int:
    return run_cli(args, config_from_args, run_study)
