"""``BPRMF``: BPR matrix factorization with a fixed or learned (lambdaOpt) regularization.

See METHODS.md section 4, :mod:`lfopt.models.bpr` (the objective) and
:mod:`lfopt.kernels.bpr` (the race-free fused epoch and the Lambda hyper-gradient).
It trains through the one :class:`~lfopt.train.Trainer` (early stopping on a
full-ranking validation metric, higher is better) and lives on the one estimator
base: original IDs, ``recommend``, ``similar_items``, ``evaluate``, one model file.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..data.interactions import Interactions
from ..errors import ConfigError, DataError
from ..eval.ranking import DEFAULT_KS, activity_buckets, parse_metric, per_user_metrics, summarize
from ..regularizers.lambda_opt import LambdaOpt, check_granularity, lambda_summary
from .base import Recommender, register_model

OPTIMIZERS = ("sgd", "adam")
REGULARIZERS = ("fixed", "lambdaopt")
DEFAULT_LR = {"sgd": 0.05, "adam": 0.005}


def _positive(name, value, integer=False, allow_zero=False):
    ok = value is not None and not isinstance(value, bool)
    if ok:
        try:
            v = float(value)
        except (TypeError, ValueError):
            ok = False
        else:
            ok = math.isfinite(v) and (v >= 0 if allow_zero else v > 0) and (not integer or v == int(v))
    if not ok:
        kind = "integer" if integer else "number"
        raise ConfigError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} {kind}, got {value!r}")


@register_model("bpr")
class BPRMF(Recommender):
    """BPR matrix factorization for implicit feedback, x_ui = p_u . q_i (+ b_i).

    Parameters
    ----------
    rank : latent dimensions f.
    optimizer : ``"adam"`` (lazy, row-wise Adam) or ``"sgd"`` (mini-batch SGD on the
        batch's summed loss, so ``lr`` has its per-triple BPR meaning).
    lr : learning rate (default 0.005 for Adam, 0.05 for SGD).
    batch_size : training triples per step; one epoch = one triple per training positive.
    epochs : maximum number of epochs.
    regularizer : ``"fixed"`` (MF-lambdaFix: one lambda for every factor) or
        ``"lambdaopt"`` (Lambda learned on the validation data, see :mod:`lfopt.kernels.bpr`).
    granularity : lambdaOpt's ``"global"``, ``"D"``, ``"DU"``, ``"DI"`` or ``"DUI"``
        (ignored, i.e. ``"global"``, for ``"fixed"``).
    lam : the fixed lambda (default 0.01), or lambdaOpt's initial Lambda (default 0:
        training starts unregularized and Lambda is learned).  The penalty is
        ``lam * ||theta_r||^2`` for every occurrence of a row r in a triple.
    lam_lr : learning rate of Lambda's Adam (lambdaOpt).
    lam_bias : fixed L2 of the item biases.
    item_bias : add a learned item bias b_i.
    init_scale : factors start ~ N(0, init_scale^2) per coordinate.
    valid_batch_size : validation triples per Lambda step (default: batch_size).
    lambda_holdout : lambdaOpt only: fraction of each user's validation positives kept
        out of the Lambda steps and used only for early stopping (0: the Lambda steps
        and early stopping share all validation positives, as in the paper; Lambda
        then fits the validation set and its metric no longer detects overfitting).
    patience : stop when the validation ``metric`` has not improved for this many
        epochs (None: never stop early).  With validation data, the parameters of the
        epoch with the best validation ``metric`` are the ones kept.
    metric : validation metric for early stopping, e.g. ``"ndcg@50"``, ``"auc"``.
    ks : cut-offs K of the validation metrics recorded in the history.
    seed : initialization, shuffling and negative sampling.
    verbose : print one progress line per epoch (stderr).
    backend, device : ``"numba"`` (CPU, default) or ``"torch"`` on ``"cpu"`` / ``"cuda"``.
    distributed : train on the processes of a torch.distributed group (torchrun, see
        :mod:`lfopt.dist`): each samples the triples of its block of users; user rows come
        from their owner and item rows (and a learned Lambda's change) are averaged every
        epoch (:mod:`lfopt.models.bpr_dist`).  Every process calls ``fit`` with the same data.

    Examples
    --------
    >>> import numpy as np, lfopt
    >>> from lfopt.ranking import BPRMF, implicit_split
    >>> data = lfopt.synthetic(n_users=300, n_items=200, nnz=12000, seed=0)
    >>> split = implicit_split(data, threshold=4, k_core=3)
    >>> model = BPRMF(rank=8, epochs=3, regularizer="lambdaopt", granularity="DUI").fit(split)
    >>> sorted(model.evaluate(split.test))[:3]
    ['auc', 'by_activity', 'hr@10']
    >>> items, scores = model.recommend(split.train.user_ids[0], k=5)   # original IDs, seen items excluded
    >>> len(items)
    5
    """

    _task = "ranking"

    def __init__(self, rank: int = 64, optimizer: str = "adam", lr: float | None = None, batch_size: int = 1024,
                 epochs: int = 100, regularizer: str = "fixed", granularity: str = "DUI", lam: float | None = None,
                 lam_lr: float = 1e-3, lam_bias: float = 0.0, item_bias: bool = False, init_scale: float = 0.1,
                 beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, valid_batch_size: int | None = None,
                 lambda_holdout: float = 0.0, patience: int | None = 10, metric: str = "ndcg@50", ks=DEFAULT_KS,
                 seed: int = 42, verbose: bool = False, backend: str = "numba", device: str | None = None,
                 distributed: bool = False):
        self.rank = rank
        self.optimizer = optimizer
        self.lr = lr
        self.batch_size = batch_size
        self.epochs = epochs
        self.regularizer = regularizer
        self.granularity = granularity
        self.lam = lam
        self.lam_lr = lam_lr
        self.lam_bias = lam_bias
        self.item_bias = item_bias
        self.init_scale = init_scale
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.valid_batch_size = valid_batch_size
        self.lambda_holdout = lambda_holdout
        self.patience = patience
        self.metric = metric
        self.ks = ks
        self.seed = seed
        self.verbose = verbose
        self.backend = backend
        self.device = device
        self.distributed = distributed
        self._check_params()

    # ------------------------------------------------------------------ params
    def _check_params(self):
        """Validate the hyper-parameters (they stay as given; derived values go to private fields)."""
        _positive("rank", self.rank, integer=True)
        _positive("batch_size", self.batch_size, integer=True)
        _positive("epochs", self.epochs, integer=True)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
        if self.regularizer not in REGULARIZERS:
            raise ConfigError(f"unknown regularizer {self.regularizer!r}; expected one of {', '.join(REGULARIZERS)}")
        check_granularity(self.granularity)
        if self.lr is not None:
            _positive("lr", self.lr)
        if self.lam is not None:
            _positive("lam", self.lam, allow_zero=True)
        _positive("lam_lr", self.lam_lr, allow_zero=True)
        _positive("lam_bias", self.lam_bias, allow_zero=True)
        _positive("init_scale", self.init_scale)
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v < 1.0):
                raise ConfigError(f"{name} must lie in [0, 1), got {v!r}")
        _positive("eps", self.eps)
        if self.valid_batch_size is not None:
            _positive("valid_batch_size", self.valid_batch_size, integer=True)
        if not (isinstance(self.lambda_holdout, (int, float)) and 0.0 <= self.lambda_holdout < 1.0):
            raise ConfigError(f"lambda_holdout must lie in [0, 1), got {self.lambda_holdout!r}")
        if self.patience is not None:
            _positive("patience", self.patience, integer=True)
        parse_metric(self.metric)
        ks = [self.ks] if isinstance(self.ks, (int, np.integer)) else list(self.ks)
        for k in ks:
            _positive("every K of ks", k, integer=True)

    @property
    def ks_(self) -> tuple:
        """The cut-offs recorded in the history: ``ks`` plus the early-stopping metric's K."""
        ks = [self.ks] if isinstance(self.ks, (int, np.integer)) else list(self.ks)
        k_metric = parse_metric(self.metric)[1]
        return tuple(sorted({int(k) for k in ks} | ({k_metric} if k_metric else set())))

    @property
    def effective_lr(self) -> float:
        return float(self.lr if self.lr is not None else DEFAULT_LR[self.optimizer])

    @property
    def effective_lam(self) -> float:
        if self.lam is not None:
            return float(self.lam)
        return 0.0 if self.regularizer == "lambdaopt" else 0.01

    @property
    def effective_granularity(self) -> str:
        return check_granularity(self.granularity) if self.regularizer == "lambdaopt" else "global"

    # --------------------------------------------------------------------- fit
    def fit(self, data, valid=None, callback=None, columns: dict | None = None) -> "BPRMF":
        """Train on positives: ``data`` is an Interactions, DataFrame, scipy.sparse matrix or an
        :class:`~lfopt.ranking.ImplicitSplit` (whose ``valid`` part is then used).  ``valid``
        positives drive early stopping and lambdaOpt's Lambda steps (required for lambdaOpt).
        ``callback(model, row)`` runs after every epoch (see :meth:`Recommender.fit`)."""
        from ..ranking.data import ImplicitSplit

        if isinstance(data, ImplicitSplit):
            data, valid = data.train, (data.valid if valid is None else valid)
        return super().fit(data, valid, callback, columns)

    def _fit(self, train: Interactions, valid: Interactions | None, callback):
        from ..dist import leads
        from ..models.bpr import BPRObjective
        from ..optim.bpr import BPRStep
        from ..train.trainer import Trainer

        self._check_params()
        t_start = time.perf_counter()
        learn = self.regularizer == "lambdaopt"
        if learn and valid is None:
            raise DataError("lambdaOpt learns Lambda on validation positives: pass a non-empty valid set")
        lam_valid, stop_valid, stop_exclude = valid, valid, [train]
        if learn and self.lambda_holdout > 0:
            from ..data.split import per_user_split

            lam_valid, stop_valid = per_user_split(valid, (1.0 - self.lambda_holdout, self.lambda_holdout),
                                                   by_time=False, seed=self.seed + 1)
            if stop_valid.nnz == 0:
                raise DataError("lambda_holdout left no validation positive for early stopping")
            stop_exclude = [train, lam_valid]
        m, n, f = train.n_users, train.n_items, int(self.rank)
        reg = LambdaOpt(self.effective_granularity, self.effective_lam, learn=learn, lr=self.lam_lr)
        if self.distributed:
            from ..dist import communicator
            from ..models.bpr_dist import DistributedBPRObjective

            obj = DistributedBPRObjective(train, f, reg, self.item_bias, self.lam_bias, lam_valid if learn else None,
                                          seed=self.seed, backend=self.backend, device=self.device,
                                          comm=communicator())
        else:
            obj = BPRObjective(train, f, reg, self.item_bias, self.lam_bias, lam_valid if learn else None,
                               seed=self.seed, backend=self.backend, device=self.device)
        rng = np.random.default_rng(self.seed)
        y = obj.init_params(self.init_scale, rng)
        opt = BPRStep(self.optimizer, self.effective_lr, int(self.batch_size), self.valid_batch_size, self.beta1,
                      self.beta2, self.eps, seed=rng)
        bk = obj.backend
        self.objective_ = obj
        self.layout_ = obj.layout
        self._set_index_state(train, valid)
        self.regularizer_ = reg
        self.lambda_ = reg.lam
        user_buckets = activity_buckets(train.user_counts())
        item_buckets = activity_buckets(train.item_counts())
        ks = self.ks_
        metric = self.metric.lower()
        self.params_ = bk.to_numpy(y)
        self._say(f"BPR-MF rank {f}, {self.optimizer} lr {self.effective_lr:g}, batch {opt.batch_size}, "
                  f"{self.regularizer}{' ' + reg.granularity if learn else ''} lambda "
                  f"{'init ' if learn else ''}{self.effective_lam:g} ({reg.layout.size} lambda entries); "
                  f"{obj.nnz} training positives, {m} users x {n} items")
        evaluate = None
        if stop_valid is not None:

            def evaluate(params):
                self.params_ = bk.to_numpy(params)
                P, Q, b = self.layout_.unpack(self.params_)
                vm = summarize(per_user_metrics(P, Q, stop_valid, stop_exclude, b if self.item_bias else None, ks))
                return {k: v for k, v in vm.items() if k not in ("n_users", "n_targets")}

        lam_traj = []

        def hook(params, row):
            self.params_ = bk.to_numpy(params)
            lsum = lambda_summary(reg.layout, reg.lam, user_buckets=user_buckets, item_buckets=item_buckets)
            lam_traj.append({"epoch": row["epoch"], **lsum})
            row["lambda_user_mean"] = lsum["user"]["mean"]
            row["lambda_item_mean"] = lsum["item"]["mean"]
            if callback is not None:
                callback(self, row)

        trainer = Trainer(int(self.epochs), self.patience if evaluate is not None else None, min_delta=0.0,
                          verbose=self.verbose and leads(obj), callback=hook, metric=metric, higher_is_better=True,
                          label=f"BPR-MF (rank {f})")
        result = trainer.run(obj, opt, y, evaluate)
        self.params_ = bk.to_numpy(y) if bk.name == "numba" else np.array(bk.to_numpy(y), copy=True)
        self.lambda_ = reg.lam
        self.lambda_trajectory_ = lam_traj
        self._record_result(result, t_start)

    # ------------------------------------------------------------- inference
    @property
    def P_(self):
        return self.layout_.unpack(self.params_, "P")[0]

    @property
    def Q_(self):
        return self.layout_.unpack(self.params_, "Q")[0]

    @property
    def b_(self):
        return self.layout_.unpack(self.params_, "b_i")[0]

    @property
    def item_bias_(self):
        self._check_fitted()
        return self.b_ if len(self.b_) else None

    def _factors(self):
        return self.P_, self.Q_, None, self.item_bias_, 0.0

    def bpr_loss(self, data: Interactions, seed: int = 0) -> float:
        """Mean BPR loss on the positives of ``data`` (same index space) with one uniform
        negative each (excluding the data seen in fit and ``data`` itself)."""
        self._check_fitted()
        from ..eval.ranking import merged_csr
        from ..kernels.bpr import bpr_loss, sample_negatives

        ptr, idx = merged_csr([(self.seen_indptr_, self.seen_indices_), data], self.n_users_, self.n_items_)
        j = np.empty(data.nnz, dtype=np.int64)
        sample_negatives(data.users, ptr, idx, np.zeros(1, np.int64), np.zeros(0, np.int32), self.n_items_, seed, j)
        return float(bpr_loss(self.P_, self.Q_, self.b_, len(self.b_) > 0, data.users, data.items, j))

    def lambda_arrays(self):
        """(users' Lambda, items' Lambda) in their granularity's shapes (see LambdaLayout)."""
        self._check_fitted()
        from ..regularizers.lambda_opt import LambdaLayout

        layout = LambdaLayout(self.effective_granularity, self.n_users_, self.n_items_, int(self.rank))
        return layout.user_view(self.lambda_), layout.item_view(self.lambda_)

    # ---------------------------------------------------------------- fold-in
    #: fold_in's optimization of one user's row: full-batch Adam steps, learning rate,
    #: uniform negatives per positive (resampled every step).
    fold_in_steps, fold_in_lr, fold_in_negatives = 100, 0.05, 8

    def _user_lambda(self):
        """The factor lambda a user row gets: the fixed lambda, or the learned users' Lambda
        averaged over users ((rank,) for D/DU/DUI, a scalar for global)."""
        uv = np.asarray(self.lambda_arrays()[0], dtype=np.float64)
        lam = uv.mean(axis=0)
        return float(lam[0]) if lam.size == 1 else lam

    def _fold_in_row(self, cols, values):
        """A user's row from its positives with the items fixed: ``fold_in_steps`` full-batch Adam
        steps (lr ``fold_in_lr``) on the mean BPR loss -log sigma(p . (q_i - q_j) + b_i - b_j) over
        the positives i, each with ``fold_in_negatives`` uniform negatives j among the trained
        items that are not positives (resampled every step), plus the model's lambda ||p||^2 per
        triple (as in training); starts from N(0, init_scale^2), seeded by ``seed`` and the items.
        ``values`` are ignored (positives)."""
        P, Q, b = self.layout_.unpack(self.params_)
        f = int(self.rank)
        Q64 = np.asarray(Q, dtype=np.float64)
        b64 = np.asarray(b, dtype=np.float64) if len(b) else np.zeros(len(Q))
        rng = np.random.default_rng([int(self.seed), len(cols), int(np.sum(cols)) % (2 ** 31)])
        cand = np.flatnonzero(self.item_counts_ > 0)
        cand = cand[~np.isin(cand, cols)]
        x = rng.normal(0.0, float(self.init_scale), f)
        if len(cand) == 0:  # the user owns every item: nothing to rank against
            return x.astype(np.float32)
        lam = self._user_lambda()
        m1, m2 = np.zeros(f), np.zeros(f)
        b1, b2, eps, lr = 0.9, 0.999, 1e-8, float(self.fold_in_lr)
        qi, bi = Q64[cols], b64[cols]
        for t in range(1, int(self.fold_in_steps) + 1):
            j = cand[rng.integers(0, len(cand), (len(cols), int(self.fold_in_negatives)))]
            d = qi[:, None, :] - Q64[j]
            z = d @ x + (bi[:, None] - b64[j])
            w = 1.0 / (1.0 + np.exp(np.clip(z, -30, 30)))  # sigma(-z)
            g = -np.einsum("ab,abf->f", w, d) / w.size + 2.0 * lam * x
            m1 = b1 * m1 + (1 - b1) * g
            m2 = b2 * m2 + (1 - b2) * g * g
            x -= lr * (m1 / (1 - b1 ** t)) / (np.sqrt(m2 / (1 - b2 ** t)) + eps)
        return x.astype(np.float32)

    def _set_user_row(self, row: int, state) -> None:
        self.layout_.unpack(self.params_, "P")[0][row] = state

    def _grow(self, n_users: int, n_items: int, init: bool) -> None:
        """Extend P, Q, b (and a per-user/per-item Lambda, new rows getting the mean) to the current
        sizes; new factor rows are zeros, or N(0, init_scale^2) as in ``fit`` with ``init``."""
        from ..models.base import ParamLayout
        from ..regularizers.lambda_opt import LambdaLayout

        m, n, f = self.n_users_, self.n_items_, int(self.rank)
        P, Q, b = self.layout_.unpack(self.params_)
        rng = np.random.default_rng([int(self.seed), n_users, n_items, m, n])

        def rows(k):
            if not init or k == 0:
                return np.zeros((k, f), np.float32)
            return rng.normal(0.0, float(self.init_scale), (k, f)).astype(np.float32)

        nb = n if self.item_bias else 0
        b_new = np.concatenate([b, np.zeros(nb - len(b), np.float32)])
        old_layout = LambdaLayout(self.effective_granularity, n_users, n_items, f)
        uv, iv = old_layout.user_view(self.lambda_), old_layout.item_view(self.lambda_)
        if old_layout.per_user:
            uv = np.vstack([uv, np.repeat(uv.mean(axis=0, keepdims=True), m - n_users, axis=0)])
        if old_layout.per_item:
            iv = np.vstack([iv, np.repeat(iv.mean(axis=0, keepdims=True), n - n_items, axis=0)])
        lam = uv.ravel() if old_layout.shared else np.concatenate([uv.ravel(), iv.ravel()])
        self.lambda_ = np.ascontiguousarray(lam, dtype=np.asarray(self.lambda_).dtype)
        self.layout_ = ParamLayout((("P", (m, f)), ("Q", (n, f)), ("b_i", (nb,))))
        self.params_ = np.concatenate([np.vstack([P, rows(m - n_users)]).ravel(),
                                       np.vstack([Q, rows(n - n_items)]).ravel(), b_new]).astype(np.float32)

    def _partial_fit(self, train: Interactions, epochs: int | None) -> None:
        """``epochs`` epochs of the model's optimizer (a fresh optimizer state) on the positives of
        ``train`` (in the grown index space) from the current parameters, with Lambda fixed at its
        current value (lambdaOpt learns no further: there is no validation data); users and items
        absent from ``train`` keep their parameters (they would otherwise only be pushed down as
        negatives)."""
        from ..models.bpr import BPRObjective
        from ..optim.bpr import BPRStep
        from ..train.trainer import Trainer

        f = int(self.rank)
        reg = LambdaOpt(self.effective_granularity, 0.0, learn=False, lr=self.lam_lr)
        obj = BPRObjective(train, f, reg, self.item_bias, self.lam_bias, None, seed=self.seed + len(self.history_),
                           backend=self.backend, device=self.device)
        if np.shape(reg.lam) != np.shape(self.lambda_):  # pragma: no cover - _grow keeps them in step
            raise ConfigError("partial_fit: the model's Lambda does not match its size; fit again")
        reg.lam[...] = self.lambda_
        bk = obj.backend
        old = np.array(self.params_, dtype=np.float32, copy=True)
        y = bk.asarray(old.copy())
        rng = np.random.default_rng([int(self.seed), len(self.history_), train.nnz])
        opt = BPRStep(self.optimizer, self.effective_lr, int(self.batch_size), self.valid_batch_size, self.beta1,
                      self.beta2, self.eps, seed=rng)
        trainer = Trainer(int(epochs or self.epochs), None, verbose=self.verbose, metric=self.metric.lower(),
                          higher_is_better=True, label=f"BPR-MF (rank {f}), partial_fit")
        result = trainer.run(obj, opt, y, None)
        new = np.array(bk.to_numpy(y), dtype=np.float32, copy=True)
        for which, counts in (("P", train.user_counts()), ("Q", train.item_counts()), ("b_i", train.item_counts())):
            a_new, a_old = self.layout_.unpack(new, which)[0], self.layout_.unpack(old, which)[0]
            if len(a_new):
                a_new[counts == 0] = a_old[counts == 0]
        self.params_ = new
        self.history_ = list(self.history_) + [{**row, "phase": "partial_fit"} for row in result.history]
        if result.stopped == "diverged":
            import warnings

            warnings.warn(result.message, RuntimeWarning, stacklevel=3)

    # ----------------------------------------------------------------- files
    def _state_arrays(self) -> dict:
        return {"params": np.asarray(self.params_), "lam": np.asarray(self.lambda_)}

    def _state_meta(self) -> dict:
        return {"best_epoch": getattr(self, "best_epoch_", None), "stopped": getattr(self, "stopped_", None),
                "layout": self.layout_.to_meta()}

    def _set_state(self, arrays: dict, meta: dict) -> None:
        from ..errors import ModelFileError
        from ..models.base import ParamLayout

        m, n, f = self.n_users_, self.n_items_, int(self.rank)
        self.layout_ = ParamLayout((("P", (m, f)), ("Q", (n, f)), ("b_i", (n if self.item_bias else 0,))))
        if "params" in arrays:
            self.params_ = arrays["params"]
        else:  # an early BPR file: P, Q, b stored apart
            self.params_ = np.concatenate([arrays["P"].ravel(), arrays["Q"].ravel(), arrays["b"].ravel()])
        if self.params_.shape != (self.layout_.size,):
            raise ModelFileError("damaged lfopt model file (parameter vector has the wrong size)")
        self.lambda_ = arrays["lam"]
        from ..regularizers.lambda_opt import LambdaLayout

        if np.size(self.lambda_) != LambdaLayout(self.effective_granularity, m, n, f).size:
            raise ModelFileError("damaged lfopt model file (Lambda has the wrong size)")
        self.best_epoch_ = meta.get("best_epoch")
        self.stopped_ = meta.get("stopped")
        self.lambda_trajectory_ = []
