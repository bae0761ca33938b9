"""``ImplicitALS`` (implicit-feedback ALS, Hu, Koren, Volinsky 2008) and ``PopularityRanker``.

iALS (METHODS.md section 5d) fits scores s_ui = x_u . y_i to the preferences of all
m x n cells (1 where the user interacted with the item, 0 elsewhere) with
confidence weights c_ui (1 + alpha r_ui on the interactions, 1 elsewhere) and an L2
penalty; it alternates exact (Cholesky) or approximate (a few conjugate-gradient
steps, as the ``implicit`` library does) row solves, see :mod:`lfopt.kernels.ials`.
It trains through the one :class:`~lfopt.train.Trainer` (one epoch = one ALS
iteration: all users, then all items; early stopping on a full-ranking validation
metric, higher is better) and lives on the one estimator base.

``PopularityRanker`` ranks items by their training popularity, the same for every
user: the floor every personalized ranking model must clear.

Conventions (both chosen so that a default means the same on data of any size
and value scale, not tuned to one dataset):

* **alpha relative to the values.**  With ``normalize_values=True`` (default) the
  confidence is c_ui = 1 + alpha r_ui / rbar, rbar the mean training value: 1 for
  0/1 data (then c = 1 + alpha), so alpha means "an interaction weighs 1 + alpha
  times an empty cell on average" for binary data, star ratings and play counts alike.
* **lambda scaled by the row's weight** (``lam_scaling="frequency"``, default): row
  u's penalty is lam_u |x_u|^2 with lam_u = lam * sum_i c_ui = lam * (n + sum_k
  (c_uk - 1)), the total confidence of the row's n cells (items: lam * (m + ...)),
  i.e. Tikhonov regularization proportional to the number of weighted terms of the
  row's loss (the frequency-scaled regularization of Rendle et al. 2022, "Revisiting
  the performance of iALS", with nu = 1).  Doubling the catalogue doubles the row's
  data term and its penalty alike, so the same lam fits data of other sizes;
  ``lam_scaling="none"`` is the convention of Hu et al. and of ``implicit``: lam_u = lam
  for every row (``implicit``'s ``regularization``; note that ``implicit`` uses
  c = alpha r, so its ``alpha`` is 1 + this alpha on 0/1 data).

The defaults alpha = 10, lam = 0.02 (frequency-scaled), 15 iterations, 3 CG steps were
chosen on *validation* NDCG@10 of four datasets at once (Last.fm, ML-100K, ML-1M
ratings >= 4, Amazon; ranks 64 and 128; grid alpha in {3, 10, 30}, lam in {0.005,
0.01, 0.02, 0.04}): no other setting is as close to every case's best (at most 1.8 %
below it, 4.9 % on Amazon at rank 128; ``benchmarks/results/implicit.md``).  Twice that
lam over-regularizes at alpha <= 10.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..data.interactions import Interactions
from ..errors import ConfigError, DataError
from ..eval.ranking import DEFAULT_KS, parse_metric, per_user_metrics, summarize
from ..models.base import Objective, ParamLayout
from .base import Recommender, register_model
from .bpr import _positive

SOLVERS = ("cg", "cholesky")
LAM_SCALINGS = ("frequency", "none")
VALUE_TRANSFORMS = ("linear", "log")
POPULARITY = ("count", "sum", "mean")


def _check_ks(ks, metric) -> tuple:
    ks = [ks] if isinstance(ks, (int, np.integer)) else list(ks)
    for k in ks:
        _positive("every K of ks", k, integer=True)
    k_metric = parse_metric(metric)[1]
    return tuple(sorted({int(k) for k in ks} | ({k_metric} if k_metric else set())))


# ----------------------------------------------------------- objective / step
class IALSObjective(Objective):
    """The iALS loss over all m x n cells (see :mod:`lfopt.kernels.ials`) on a flat ``y = (P, Q)``.

    ``loss(y)`` is the objective divided by the total confidence sum_{u,i} c_ui (a
    weighted mean squared error over all cells plus the penalty, on the same scale for
    data of any size).
    """

    name = "ials"
    capabilities = frozenset({"loss", "ials_sweep"})

    def __init__(self, train: Interactions, rank: int, conf_values: np.ndarray, lam: float, lam_scaling: str):
        from ..backend.numba import NumbaBackend

        self.backend = NumbaBackend()
        m, n = train.shape
        self.m, self.n, self.f = m, n, int(rank)
        self.nnz = train.nnz
        self.layout = ParamLayout((("P", (m, self.f)), ("Q", (n, self.f))))
        csr, csc = train.csr, train.csc
        conf = np.ascontiguousarray(conf_values, dtype=np.float32)
        self.csr = (csr.indptr, csr.indices, np.ascontiguousarray(conf[csr.order]))
        self.csc = (csc.indptr, csc.indices, np.ascontiguousarray(conf[csc.order]))
        self.lam_x, self.lam_y = row_weights(self.csr, self.csc, m, n, lam, lam_scaling)
        self.total_weight = float(m) * n + float(np.sum(conf - 1.0, dtype=np.float64))

    def init_params(self, scale: float, rng) -> np.ndarray:
        y = rng.normal(0.0, scale / math.sqrt(self.f), self.layout.size).astype(np.float32)
        return y

    # Both run their BLAS calls (the Gram matrices Y^T Y, the Cholesky path's ssyrk) single-threaded:
    # a multi-threaded OpenBLAS call leaves its threads spinning on the two cores the numba loop
    # that follows needs (measured on ML-1M, rank 128: the user half-sweep took 36-43 ms after a
    # 2-thread Gram instead of 24-27 ms).
    def loss(self, y) -> float:
        from ..kernels.ials import ials_loss
        from ..kernels.lf import single_threaded_blas

        P, Q = self.layout.unpack(y)
        with single_threaded_blas():
            return ials_loss(*self.csr, P, Q, self.lam_x, self.lam_y) / self.total_weight

    def sweep(self, y, cg_steps: int) -> None:
        from ..kernels.ials import ials_sweep
        from ..kernels.lf import single_threaded_blas

        P, Q = self.layout.unpack(y)
        with single_threaded_blas() as blas:
            ials_sweep(self.csr, self.csc, P, Q, self.lam_x, self.lam_y, cg_steps, blas)


def row_weights(csr, csc, m: int, n: int, lam: float, lam_scaling: str):
    """Per-row L2 weights (users, items) as the kernels take them (see the module docstring)."""
    from ..kernels.ials import as_row_weights

    if lam_scaling == "none":
        return as_row_weights(lam, m), as_row_weights(lam, n)

    def mass(view, other):
        indptr, _, conf = view
        rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        extra = np.bincount(rows, weights=conf.astype(np.float64) - 1.0, minlength=len(indptr) - 1)
        return lam * (other + extra)

    return mass(csr, n), mass(csc, m)


class IALSSweep:
    """One epoch = one ALS iteration of the objective's fused sweep (users, then items)."""

    requires = ("ials_sweep",)
    divergence_advice = "Raise the regularization (lam) or lower alpha."

    def __init__(self, cg_steps: int):
        self.cg_steps = int(cg_steps)
        self.name = f"ials-{'cg' + str(cg_steps) if cg_steps else 'cholesky'}"

    def check(self, obj) -> None:
        obj.require(self.requires, by=f"optimizer {self.name!r}")

    def epoch(self, obj, y, epoch):
        obj.sweep(y, self.cg_steps)
        return {}


# ------------------------------------------------------------------- ImplicitALS
@register_model("ials")
class ImplicitALS(Recommender):
    """Implicit-feedback ALS (Hu, Koren, Volinsky 2008): weighted least squares over all cells.

    Parameters
    ----------
    rank : latent dimensions f.
    alpha : confidence of an interaction: c = 1 + alpha r (r / mean r with ``normalize_values``).
    lam : L2 weight; per row lam * (the row's total confidence) with
        ``lam_scaling="frequency"`` (default), or lam itself with ``"none"`` (the
        convention of Hu et al. and of ``implicit``'s ``regularization``).
    lam_scaling : ``"frequency"`` or ``"none"`` (see the module docstring).
    epochs : maximum number of ALS iterations (each solves all users, then all items).
    solver : ``"cg"`` (``cg_steps`` conjugate-gradient steps per row, warm-started from the
        row's current value; Takacs et al. 2011, as ``implicit`` does) or ``"cholesky"``
        (the exact row solve; every iteration then decreases the loss).
    cg_steps : CG steps per row and iteration (``solver="cg"``).
    normalize_values : divide the training values by their mean before c = 1 + alpha r
        (0/1 data is unchanged); False uses the raw values.
    value_transform : ``"linear"`` (default: r as given) or ``"log"``: r becomes log(1 + r)
        before the normalization (Hu et al.'s log confidence; 0/1 data is unchanged).
        Heavy-tailed counts need it: Last.fm play counts (median 260, largest 352,698),
        rank 64, defaults, NDCG@10 on the test part (mean of 3 seeds): binary 0.2622, raw
        counts 0.2448, log counts 0.2652 (HR@10 0.8008 / 0.7787 / 0.8067;
        ``implicit_split(data, k_core=5, keep_values=True)``).
    init_scale : factors start ~ N(0, init_scale^2 / rank) per coordinate.
    patience : with validation data, stop when ``metric`` has not improved for this many
        epochs (None: run every epoch); the best epoch's factors are kept either way.
    metric : validation metric for early stopping, e.g. ``"ndcg@50"``.
    ks : cut-offs K of the validation metrics recorded in the history.
    seed : initialization.
    verbose : one progress line per epoch (stderr).

    Examples
    --------
    >>> import lfopt
    >>> from lfopt.estimators.ials import ImplicitALS
    >>> split = lfopt.implicit_split(lfopt.synthetic(n_users=300, n_items=200, nnz=12000, seed=0),
    ...                              threshold=4, k_core=3)
    >>> model = ImplicitALS(rank=8, epochs=3).fit(split)
    >>> round(model.evaluate(split.test)["auc"], 1) > 0.5
    True
    """

    _task = "ranking"

    def __init__(self, rank: int = 64, alpha: float = 10.0, lam: float = 0.02, lam_scaling: str = "frequency",
                 epochs: int = 15, solver: str = "cg", cg_steps: int = 3, normalize_values: bool = True,
                 value_transform: str = "linear", init_scale: float = 0.1, patience: int | None = None,
                 metric: str = "ndcg@50", ks=DEFAULT_KS, seed: int = 0, verbose: bool = False):
        self.rank = rank
        self.alpha = alpha
        self.lam = lam
        self.lam_scaling = lam_scaling
        self.epochs = epochs
        self.solver = solver
        self.cg_steps = cg_steps
        self.normalize_values = normalize_values
        self.value_transform = value_transform
        self.init_scale = init_scale
        self.patience = patience
        self.metric = metric
        self.ks = ks
        self.seed = seed
        self.verbose = verbose
        self._check_params()

    def _check_params(self):
        _positive("rank", self.rank, integer=True)
        _positive("alpha", self.alpha, allow_zero=True)
        _positive("lam", self.lam, allow_zero=True)
        _positive("epochs", self.epochs, integer=True)
        _positive("init_scale", self.init_scale)
        if self.solver not in SOLVERS:
            raise ConfigError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if self.lam_scaling not in LAM_SCALINGS:
            raise ConfigError(f"lam_scaling must be one of {', '.join(LAM_SCALINGS)}, got {self.lam_scaling!r}")
        _positive("cg_steps", self.cg_steps, integer=True)
        if self.patience is not None:
            _positive("patience", self.patience, integer=True)
        if not isinstance(self.normalize_values, (bool, np.bool_)):
            raise ConfigError(f"normalize_values must be True or False, got {self.normalize_values!r}")
        if self.value_transform not in VALUE_TRANSFORMS:
            raise ConfigError(f"value_transform must be one of {', '.join(VALUE_TRANSFORMS)}, got "
                              f"{self.value_transform!r}")
        _check_ks(self.ks, self.metric)

    @property
    def ks_(self) -> tuple:
        return _check_ks(self.ks, self.metric)

    @property
    def effective_cg_steps(self) -> int:
        """CG steps per row (0: the exact Cholesky solve)."""
        return int(self.cg_steps) if self.solver == "cg" else 0

    # --------------------------------------------------------------------- fit
    def fit(self, data, valid=None, callback=None, columns: dict | None = None) -> "ImplicitALS":
        """Train on interactions: ``data`` is an Interactions, DataFrame, scipy.sparse matrix or an
        :class:`~lfopt.ranking.ImplicitSplit` (whose ``valid`` part is then used).  The values are
        the r of c = 1 + alpha r (all 1 for 0/1 data); ``valid`` positives drive early stopping."""
        from ..ranking.data import ImplicitSplit

        if isinstance(data, ImplicitSplit):
            data, valid = data.train, (data.valid if valid is None else valid)
        return super().fit(data, valid, callback, columns)

    def _transformed(self, values) -> np.ndarray:
        r = np.asarray(values, dtype=np.float64)
        return np.log1p(r) if self.value_transform == "log" else r

    def confidences(self, values) -> np.ndarray:
        """c = 1 + alpha t(r) / value_scale_ for training-like values ``values`` (float32), t the
        ``value_transform``."""
        scale = getattr(self, "value_scale_", 1.0)
        return (1.0 + float(self.alpha) * self._transformed(values) / scale).astype(np.float32)

    def _fit(self, train: Interactions, valid: Interactions | None, callback):
        from ..kernels.lf import single_threaded_blas
        from ..train.trainer import Trainer

        self._check_params()
        t_start = time.perf_counter()
        vals = np.asarray(train.values, dtype=np.float64)
        if not np.isfinite(vals).all() or (vals < 0).any():
            bad = vals[~np.isfinite(vals) | (vals < 0)][0]
            raise DataError(f"implicit ALS needs non-negative finite values (interaction strengths), got {bad:g}")
        mean = float(self._transformed(vals).mean())
        self.value_scale_ = mean if (self.normalize_values and mean > 0) else 1.0
        f = int(self.rank)
        obj = IALSObjective(train, f, self.confidences(vals), float(self.lam), self.lam_scaling)
        rng = np.random.default_rng(self.seed)
        y = obj.init_params(float(self.init_scale), rng)
        opt = IALSSweep(self.effective_cg_steps)
        self._set_index_state(train, valid)
        self.layout_ = obj.layout
        self.params_ = y
        ks, metric = self.ks_, self.metric.lower()
        self._say(f"iALS rank {f}, alpha {float(self.alpha):g}"
                  + (f" (values / {self.value_scale_:g})" if self.value_scale_ != 1.0 else "")
                  + f", lambda {float(self.lam):g} ({self.lam_scaling}), {opt.name}; {train.nnz} training "
                  f"entries, {train.n_users} users x {train.n_items} items")
        evaluate = None
        if valid is not None:

            def evaluate(params):
                # single-threaded BLAS for the score blocks too: faster here (measured on ML-1M, rank
                # 128, 2 cores: 89 instead of 119 ms) and the next sweep does not start against
                # spinning BLAS threads (51 instead of 79 ms)
                P, Q = self.layout_.unpack(params)
                with single_threaded_blas():
                    vm = summarize(per_user_metrics(P, Q, valid, [train], None, ks))
                return {k: v for k, v in vm.items() if k not in ("n_users", "n_targets")}

        def hook(params, row):
            self.params_ = params
            if callback is not None:
                callback(self, row)

        trainer = Trainer(int(self.epochs), self.patience if evaluate is not None else None, min_delta=0.0,
                          verbose=self.verbose, callback=hook, metric=metric, higher_is_better=True,
                          label=f"iALS (rank {f})")
        result = trainer.run(obj, opt, y, evaluate)
        self.params_ = y
        self.objective_ = obj
        self._record_result(result, t_start)

    # ------------------------------------------------------------- inference
    @property
    def P_(self) -> np.ndarray:
        """User factors (n_users, rank), float32."""
        self._check_fitted()
        return self.layout_.unpack(self.params_, "P")[0]

    @property
    def Q_(self) -> np.ndarray:
        """Item factors (n_items, rank), float32."""
        self._check_fitted()
        return self.layout_.unpack(self.params_, "Q")[0]

    def _factors(self):
        return self.P_, self.Q_, None, None, 0.0

    def user_factors_for(self, item_cols, values=None, cg_steps: int = 0) -> np.ndarray:
        """The factor row of a user with interactions ``item_cols`` (item *indices* of this model)
        and ``values`` (default 1 each), the item factors fixed: the exact row solve of training
        (``cg_steps=0``) or CG from zero.  What fold-in of a new user needs."""
        from ..kernels.ials import as_row_weights, gramian, ials_user_rows
        from ..kernels.lf import single_threaded_blas

        self._check_fitted()
        cols = np.asarray(item_cols, dtype=np.int64)
        if len(cols) and (cols.min() < 0 or cols.max() >= self.n_items_):
            raise DataError("item indices out of range")
        order = np.argsort(cols, kind="stable")
        cols = cols[order].astype(np.int32)
        vals = np.ones(len(cols)) if values is None else np.asarray(values, dtype=np.float64)[order]
        conf = self.confidences(vals)
        lam = float(self.lam)
        if self.lam_scaling == "frequency":
            lam *= self.n_items_ + float(np.sum(conf - 1.0, dtype=np.float64))
        Q = np.ascontiguousarray(self.Q_)
        out = np.zeros((1, int(self.rank)), dtype=np.float32)
        with single_threaded_blas() as blas:
            ials_user_rows(Q, gramian(Q), np.array([0, len(cols)], np.int64), cols, conf, as_row_weights(lam, 1),
                           int(cg_steps), out, blas)
        return out[0]

    # ------------------------------------------------------ fold-in (base hooks)
    def _fold_in_row(self, cols, values):
        """A user's row from its interactions with the items fixed: the exact row solve of
        training (:meth:`user_factors_for`, confidences from ``values``)."""
        return self.user_factors_for(cols, values)

    def _set_user_row(self, row: int, state) -> None:
        self.layout_.unpack(self.params_, "P")[0][row] = state

    def _grow(self, n_users: int, n_items: int, init: bool) -> None:
        """Extend P and Q to the current sizes: new rows zeros, or N(0, init_scale^2 / rank) with ``init``."""
        m, n, f = self.n_users_, self.n_items_, int(self.rank)
        P, Q = (np.array(a) for a in self.layout_.unpack(self.params_))
        rng = np.random.default_rng([int(self.seed), n_users, n_items, m, n])

        def rows(k):
            out = np.zeros((k, f), np.float32)
            if init and k:
                out[:] = rng.normal(0.0, float(self.init_scale) / np.sqrt(f), (k, f))
            return out

        self.layout_ = ParamLayout((("P", (m, f)), ("Q", (n, f))))
        self.params_ = np.concatenate([P.ravel(), rows(m - n_users).ravel(), Q.ravel(),
                                       rows(n - n_items).ravel()]).astype(np.float32)

    # ----------------------------------------------------------------- files
    def _state_arrays(self) -> dict:
        return {"params": np.asarray(self.params_)}

    def _state_meta(self) -> dict:
        return {"best_epoch": getattr(self, "best_epoch_", None), "stopped": getattr(self, "stopped_", None),
                "value_scale": float(getattr(self, "value_scale_", 1.0))}

    def _set_state(self, arrays: dict, meta: dict) -> None:
        from ..errors import ModelFileError

        m, n, f = self.n_users_, self.n_items_, int(self.rank)
        self.layout_ = ParamLayout((("P", (m, f)), ("Q", (n, f))))
        params = arrays["params"]
        if params.dtype != np.float32 or params.shape != (self.layout_.size,):
            raise ModelFileError("damaged lfopt model file (the factors have the wrong size or type)")
        if not np.isfinite(params).all():
            raise ModelFileError("damaged lfopt model file (non-finite factors)")
        scale = meta.get("value_scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
            raise ModelFileError(f"damaged lfopt model file (value_scale {scale!r})")
        self.params_ = params
        self.value_scale_ = float(scale)
        self.best_epoch_ = meta.get("best_epoch")
        self.stopped_ = meta.get("stopped")


# -------------------------------------------------------------- PopularityRanker
@register_model("popularity")
class PopularityRanker(Recommender):
    """Every user gets the same ranking: items by training popularity (a baseline, no factors).

    Parameters
    ----------
    by : ``"count"`` (default): the number of users who interacted with the item;
        ``"sum"``: the sum of the item's values (e.g. total plays);
        ``"mean"``: the item's mean value shrunk to the global mean,
        (sum_u r_ui + shrink * rbar) / (n_i + shrink), so that an item with two 5-star
        ratings does not outrank one with a thousand 4.5s.
    shrink : pseudo-count of the ``"mean"`` score (ignored otherwise).
    """

    _task = "ranking"

    def __init__(self, by: str = "count", shrink: float = 10.0):
        self.by = by
        self.shrink = shrink
        self._check_params()

    def _check_params(self):
        if self.by not in POPULARITY:
            raise ConfigError(f"by must be one of {', '.join(POPULARITY)}, got {self.by!r}")
        _positive("shrink", self.shrink, allow_zero=True)

    def fit(self, data, valid=None, callback=None, columns: dict | None = None) -> "PopularityRanker":
        """Count the training interactions (an :class:`~lfopt.ranking.ImplicitSplit` uses its train part;
        validation data only joins the items excluded from recommendations)."""
        from ..ranking.data import ImplicitSplit

        if isinstance(data, ImplicitSplit):
            data, valid = data.train, (data.valid if valid is None else valid)
        return super().fit(data, valid, callback, columns)

    def _fit(self, train: Interactions, valid: Interactions | None, callback):
        self._check_params()
        t0 = time.perf_counter()
        vals = np.asarray(train.values, dtype=np.float64)
        if not np.isfinite(vals).all():
            raise DataError("popularity needs finite values")
        n = train.n_items
        counts = np.bincount(train.items, minlength=n).astype(np.float64)
        if self.by == "count":
            score = counts
        else:
            sums = np.bincount(train.items, weights=vals, minlength=n)
            if self.by == "sum":
                score = sums
            else:
                k = float(self.shrink)
                score = (sums + k * vals.mean()) / np.maximum(counts + k, 1e-12)
        self._set_index_state(train, valid)
        self.scores_ = score
        self.history_ = []
        self.best_epoch_ = None
        self.best_valid_ = None
        self.stopped_ = "closed_form"
        self.fit_seconds_ = time.perf_counter() - t0
        if callback is not None:
            callback(self, {"epoch": 1})

    def _factors(self):
        return (np.zeros((self.n_users_, 1), np.float32), np.zeros((self.n_items_, 1), np.float32), None,
                self.scores_, 0.0)

    def _fallback_scores(self) -> np.ndarray:
        return np.asarray(self.scores_, dtype=np.float64)

    # fold-in: a user has no parameters here; folding one in records its items (excluded from
    # its recommendations), new items score 0
    def _fold_in_row(self, cols, values):
        return None

    def _set_user_row(self, row: int, state) -> None:
        pass

    def _grow(self, n_users: int, n_items: int, init: bool) -> None:
        self.scores_ = np.concatenate([np.asarray(self.scores_, np.float64), np.zeros(self.n_items_ - n_items)])


    def similar_items(self, items, k: int = 10):
        raise ConfigError("PopularityRanker has no item factors: similar_items needs a factor model "
                          "(ImplicitALS, BPRMF)")

    def similar_users(self, users, k: int = 10):
        raise ConfigError("PopularityRanker has no user factors: similar_users needs a factor model "
                          "(ImplicitALS, BPRMF)")

    def _state_arrays(self) -> dict:
        return {"scores": np.asarray(self.scores_, dtype=np.float64)}

    def _state_meta(self) -> dict:
        return {}

    def _set_state(self, arrays: dict, meta: dict) -> None:
        from ..errors import ModelFileError

        s = arrays["scores"]
        if s.shape != (self.n_items_,) or s.dtype.kind != "f" or not np.isfinite(s).all():
            raise ModelFileError("damaged lfopt model file (popularity scores have the wrong size or values)")
        self.scores_ = s
        self.best_epoch_ = None
        self.best_valid_ = None
        self.stopped_ = "closed_form"
