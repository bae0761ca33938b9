"""BPR-MF with a fixed L2 penalty (MF-lambdaFix) or learned fine-grained regularization (lambdaOpt).

See METHODS.md section 4 and :mod:`lfopt.kernels.bpr` for the exact objective,
the race-free mini-batch kernel and the Lambda hyper-gradient.
"""

from __future__ import annotations

import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from ..data.interactions import Interactions
from ..errors import ConfigError, DataError, DivergenceError, ModelFileError
from ..eval.ranking import (
    DEFAULT_KS,
    activity_buckets,
    iter_topk,
    parse_metric,
    per_user_metrics,
    summarize,
    topk,
)
from ..kernels.bpr import bpr_loss, bpr_train, sample_negatives
from ..results import to_jsonable, write_atomic
from .data import ImplicitSplit
from .regularizer import LambdaLayout, check_granularity, lambda_summary

OPTIMIZERS = ("sgd", "adam")
REGULARIZERS = ("fixed", "lambdaopt")
DEFAULT_LR = {"sgd": 0.05, "adam": 0.005}
FORMAT_TAG = "lfopt-bpr-model"
FORMAT_VERSION = 1
_EMPTY_PTR = np.zeros(1, dtype=np.int64)
_EMPTY_IDX = np.zeros(0, dtype=np.int32)


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


class BPRMF:
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

    Examples
    --------
    >>> import numpy as np, lfopt
    >>> from lfopt.ranking import BPRMF, implicit_split
    >>> data = lfopt.synthetic(n_users=300, n_items=200, nnz=12000, seed=0)
    >>> split = implicit_split(data, threshold=4, k_core=3)
    >>> model = BPRMF(rank=8, epochs=3, regularizer="lambdaopt", granularity="DUI").fit(split)
    >>> sorted(model.evaluate(split.test))[:3]
    ['auc', 'hr@10', 'hr@20']
    """

    def __init__(self, rank: int = 64, optimizer: str = "adam", lr: float | None = None, batch_size: int = 1024,
                 epochs: int = 100, regularizer: str = "fixed", granularity: str = "DUI", lam: float | None = None,
                 lam_lr: float = 1e-3, lam_bias: float = 0.0, item_bias: bool = False, init_scale: float = 0.1,
                 beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, valid_batch_size: int | None = None,
                 lambda_holdout: float = 0.0, patience: int | None = 10, metric: str = "ndcg@50", ks=DEFAULT_KS,
                 seed: int = 42,
                 verbose: bool = False):
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
        self._check_params()

    # ------------------------------------------------------------------ params
    def _check_params(self):
        _positive("rank", self.rank, integer=True)
        _positive("batch_size", self.batch_size, integer=True)
        _positive("epochs", self.epochs, integer=True)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
        if self.regularizer not in REGULARIZERS:
            raise ConfigError(f"unknown regularizer {self.regularizer!r}; expected one of {', '.join(REGULARIZERS)}")
        self.granularity = check_granularity(self.granularity)
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
        self._metric = parse_metric(self.metric)
        ks = [self.ks] if isinstance(self.ks, (int, np.integer)) else list(self.ks)
        for k in ks:
            _positive("every K of ks", k, integer=True)
        self.ks = tuple(sorted({int(k) for k in ks} | ({self._metric[1]} if self._metric[1] else set())))

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
        return self.granularity if self.regularizer == "lambdaopt" else "global"

    def get_params(self) -> dict:
        names = ("rank", "optimizer", "lr", "batch_size", "epochs", "regularizer", "granularity", "lam", "lam_lr",
                 "lam_bias", "item_bias", "init_scale", "beta1", "beta2", "eps", "valid_batch_size", "lambda_holdout",
                 "patience", "metric", "ks", "seed")
        out = {k: getattr(self, k) for k in names}
        out["lr"] = self.effective_lr
        out["lam"] = self.effective_lam
        out["granularity"] = self.effective_granularity
        return out

    # --------------------------------------------------------------------- fit
    def fit(self, train, valid: Interactions | None = None, callback=None) -> "BPRMF":
        """Train on ``train`` positives (an ``Interactions`` or an :class:`ImplicitSplit`,
        whose ``valid`` part is then used).  ``valid`` positives drive early stopping and
        lambdaOpt's Lambda steps (required for lambdaOpt).

        ``callback(model, row)`` is called after every epoch with the model holding the
        current parameters (so ``model.evaluate`` works) and the epoch's history row,
        which it may extend (e.g. diagnostics); it never influences training."""
        if isinstance(train, ImplicitSplit):
            train, valid = train.train, (train.valid if valid is None else valid)
        if not isinstance(train, Interactions):
            raise DataError(f"train must be an Interactions or ImplicitSplit, got {type(train).__name__}")
        if train.nnz == 0:
            raise DataError("no training positives")
        if valid is not None:
            if valid.shape != train.shape:
                raise DataError(f"valid is {valid.shape}, train is {train.shape}: they must share an index space")
            if valid.nnz == 0:
                valid = None
        if self.regularizer == "lambdaopt" and valid is None:
            raise DataError("lambdaOpt learns Lambda on validation positives: pass a non-empty valid set")
        t_start = time.perf_counter()
        learn = self.regularizer == "lambdaopt"
        lam_valid, stop_valid, stop_exclude = valid, valid, (train,)
        if learn and self.lambda_holdout > 0:
            from ..data.split import per_user_split

            lam_valid, stop_valid = per_user_split(valid, (1.0 - self.lambda_holdout, self.lambda_holdout),
                                                   by_time=False, seed=self.seed + 1)
            if stop_valid.nnz == 0:
                raise DataError("lambda_holdout left no validation positive for early stopping")
            stop_exclude = (train, lam_valid)
        m, n, f = train.n_users, train.n_items, int(self.rank)
        rng = np.random.default_rng(self.seed)
        P = (rng.standard_normal((m, f)) * self.init_scale).astype(np.float32)
        Q = (rng.standard_normal((n, f)) * self.init_scale).astype(np.float32)
        b = np.zeros(n if self.item_bias else 0, dtype=np.float32)
        adam = self.optimizer == "adam"
        z = (lambda *s: np.zeros(s, dtype=np.float32)) if adam else (lambda *s: np.zeros((0,) * len(s), np.float32))
        mP, vP, mQ, vQ = z(m, f), z(m, f), z(n, f), z(n, f)
        mb, vb = (z(n), z(n)) if self.item_bias else (z(0), z(0))
        cnt_u = np.zeros(m, dtype=np.int64)
        cnt_i = np.zeros(n, dtype=np.int64)
        layout = LambdaLayout(self.effective_granularity, m, n, f)
        lam = layout.init(self.effective_lam)
        lam_map = layout.lam_map()
        mL, vL = np.zeros_like(lam), np.zeros_like(lam)
        cL = np.zeros(lam.shape[0], dtype=np.int64)

        tv = train.csr
        pos_u = np.repeat(np.arange(m, dtype=np.int32), np.diff(tv.indptr))
        pos_i = tv.indices
        N = len(pos_u)
        B = int(min(self.batch_size, N))
        Bv = int(self.valid_batch_size or self.batch_size)
        n_steps = (N + B - 1) // B
        vv = lam_valid.csr if lam_valid is not None else None
        user_buckets = activity_buckets(train.user_counts())
        item_buckets = activity_buckets(train.item_counts())
        f32 = np.float32
        metric_name = self.metric.lower()

        history = []
        best = None
        best_value = -math.inf
        since = 0
        stopped = "max_epochs"
        lam_traj = []
        self._say(f"BPR-MF rank {f}, {self.optimizer} lr {self.effective_lr:g}, batch {B}, "
                  f"{self.regularizer}{' ' + layout.granularity if learn else ''} lambda "
                  f"{'init ' if learn else ''}{self.effective_lam:g} ({layout.size} lambda entries); "
                  f"{N} training positives, {m} users x {n} items")
        elapsed = 0.0
        for epoch in range(1, int(self.epochs) + 1):
            t0 = time.perf_counter()
            seed_e = int(rng.integers(0, 2**62))
            perm = rng.permutation(N)
            tu = np.ascontiguousarray(pos_u[perm])
            ti = np.ascontiguousarray(pos_i[perm])
            tj = np.empty(N, dtype=np.int64)
            sample_negatives(tu, tv.indptr, tv.indices, _EMPTY_PTR, _EMPTY_IDX, n, seed_e, tj)
            if learn:
                vidx = rng.integers(0, lam_valid.nnz, n_steps * Bv)
                vu = np.ascontiguousarray(lam_valid.users[vidx])
                vi = np.ascontiguousarray(lam_valid.items[vidx])
                vj = np.empty(len(vidx), dtype=np.int64)
                sample_negatives(vu, tv.indptr, tv.indices, vv.indptr, vv.indices, n, seed_e + 1, vj)
            else:
                vu = vi = np.zeros(0, dtype=np.int32)
                vj = np.zeros(0, dtype=np.int64)
            stats = np.zeros(4, dtype=np.float64)
            bpr_train(tu, ti, tj, B, vu, vi, vj, Bv, P, Q, b, bool(self.item_bias), f32(self.lam_bias),
                      1 if adam else 0, f32(self.effective_lr), f32(self.beta1), f32(self.beta2), f32(self.eps),
                      mP, vP, mQ, vQ, mb, vb, cnt_u, cnt_i,
                      lam, lam_map, learn, f32(self.lam_lr), mL, vL, cL, np.zeros(0, np.float32), stats)
            train_seconds = time.perf_counter() - t0
            loss = stats[0] / max(stats[1], 1.0)
            row = {"epoch": epoch, "train_loss": float(loss), "train_seconds": train_seconds}
            if learn:
                row["valid_loss"] = float(stats[2] / max(stats[3], 1.0))
            if not np.isfinite(loss) or not (np.isfinite(P).all() and np.isfinite(Q).all()):
                stopped = "diverged"
                history.append(row)
                if best is None:
                    raise DivergenceError(f"training diverged in epoch {epoch} (loss {loss}); lower lr")
                self._say(f"epoch {epoch}: diverged (loss {loss}); keeping epoch {best[-1]}")
                break
            lsum = lambda_summary(layout, lam, user_buckets=user_buckets, item_buckets=item_buckets)
            lam_traj.append({"epoch": epoch, **lsum})
            value = None
            if valid is not None:
                pu = per_user_metrics(P, Q, stop_valid, stop_exclude, b if self.item_bias else None, self.ks)
                vm = summarize(pu)
                row["valid"] = {k: v for k, v in vm.items() if k not in ("n_users", "n_targets")}
                value = vm[metric_name]
            elapsed += time.perf_counter() - t0
            row["seconds"] = elapsed
            row["lambda_user_mean"] = lsum["user"]["mean"]
            row["lambda_item_mean"] = lsum["item"]["mean"]
            self.P_, self.Q_, self.b_, self.lambda_ = P, Q, b, lam
            self._set_fitted(train, valid, layout)
            if callback is not None:
                callback(self, row)
            history.append(row)
            msg = f"epoch {epoch:3d}  loss {loss:.4f}"
            if learn:
                msg += f"  valid loss {row['valid_loss']:.4f}"
            if value is not None:
                msg += f"  valid {metric_name} {value:.4f}"
            if learn:
                msg += f"  lambda user {lsum['user']['mean']:.3g} item {lsum['item']['mean']:.3g}"
            msg += f"  {train_seconds:.2f}s (+eval {time.perf_counter() - t0 - train_seconds:.2f}s)"
            self._say(msg)
            if value is not None:
                if value > best_value:
                    best_value = value
                    best = (P.copy(), Q.copy(), b.copy(), lam.copy(), epoch)
                    since = 0
                else:
                    since += 1
                    if self.patience is not None and since >= self.patience:
                        stopped = "early_stop"
                        break
        if best is not None:
            P, Q, b, lam, best_epoch = best
        else:
            best_epoch = len(history)
        self.P_, self.Q_, self.b_, self.lambda_ = P, Q, b, lam
        self._set_fitted(train, valid, layout)
        self.history_ = history
        self.lambda_trajectory_ = lam_traj
        self.best_epoch_ = best_epoch
        self.best_valid_ = best_value if best is not None else None
        self.stopped_ = stopped
        self.fit_seconds_ = time.perf_counter() - t_start
        return self

    def _set_fitted(self, train, valid, layout):
        self.layout_ = layout
        self.n_users_, self.n_items_ = train.n_users, train.n_items
        self.user_ids_, self.item_ids_ = train.user_ids, train.item_ids
        self._seen = [train] + ([valid] if valid is not None else [])
        self.train_user_counts_ = train.user_counts()

    def _say(self, text: str) -> None:
        if self.verbose:
            print(text, file=sys.stderr, flush=True)

    # ------------------------------------------------------------- inference
    def _check_fitted(self):
        if not hasattr(self, "P_"):
            raise ConfigError("the model is not fitted yet; call fit() first")

    @property
    def item_bias_(self):
        self._check_fitted()
        return self.b_ if len(self.b_) else None

    def score(self, users) -> np.ndarray:
        """Scores of the given user indices for every item, shape (len(users), n_items)."""
        self._check_fitted()
        users = np.atleast_1d(np.asarray(users, dtype=np.int64))
        S = self.P_[users] @ self.Q_.T
        if self.item_bias_ is not None:
            S += self.item_bias_
        return S

    def evaluate(self, test: Interactions, exclude=None, ks=None, activity="train", n_buckets: int = 4,
                 chunk_size=None) -> dict:
        """Full-ranking metrics on ``test`` (see :mod:`lfopt.eval.ranking`).

        ``exclude`` defaults to the data seen in ``fit`` (train + valid); ``activity``
        ``"train"`` buckets users by their number of training positives (None: no buckets).
        """
        self._check_fitted()
        if test.shape != (self.n_users_, self.n_items_):
            raise DataError(f"test is {test.shape}, the model is {(self.n_users_, self.n_items_)}")
        exclude = self._seen if exclude is None else list(exclude)
        act = self.train_user_counts_ if isinstance(activity, str) and activity == "train" else activity
        pu = per_user_metrics(self.P_, self.Q_, test, exclude, self.item_bias_, ks or self.ks, chunk_size)
        return summarize(pu, act, n_buckets)

    def recommend(self, users=None, k: int = 10, exclude=None, chunk_size=None):
        """Top-``k`` item indices and scores for user indices ``users`` (an int, an array,
        or None for all users), never recommending the items in ``exclude`` (default:
        the data seen in ``fit``).  Returns ``(items, scores)``, shape (k,) for one
        user, else (len(users), k); see :func:`lfopt.eval.ranking.iter_topk`."""
        self._check_fitted()
        single = users is not None and np.ndim(users) == 0
        exclude = self._seen if exclude is None else list(exclude)
        items, scores = topk(self.P_, self.Q_, users, k, exclude, self.item_bias_, chunk_size)
        return (items[0], scores[0]) if single else (items, scores)

    def iter_recommend(self, users=None, k: int = 10, exclude=None, chunk_size=None):
        """Blocks ``(users, items, scores)`` of top-k recommendations (streaming, for all users)."""
        self._check_fitted()
        exclude = self._seen if exclude is None else list(exclude)
        return iter_topk(self.P_, self.Q_, users, k, exclude, self.item_bias_, chunk_size)

    def bpr_loss(self, data: Interactions, seed: int = 0) -> float:
        """Mean BPR loss on the positives of ``data`` with one uniform negative each
        (excluding the data seen in fit and ``data`` itself)."""
        self._check_fitted()
        from ..eval.ranking import merged_csr

        ptr, idx = merged_csr(self._seen + [data], self.n_users_, self.n_items_)
        j = np.empty(data.nnz, dtype=np.int64)
        sample_negatives(data.users, ptr, idx, _EMPTY_PTR, _EMPTY_IDX, self.n_items_, seed, j)
        return float(bpr_loss(self.P_, self.Q_, self.b_, len(self.b_) > 0, data.users, data.items, j))

    def lambda_arrays(self):
        """(users' Lambda, items' Lambda) in their granularity's shapes (see LambdaLayout)."""
        self._check_fitted()
        return self.layout_.user_view(self.lambda_), self.layout_.item_view(self.lambda_)

    # ----------------------------------------------------------------- files
    def save(self, path, overwrite: bool = False) -> Path:
        """Save factors, Lambda, ID maps and options to an ``.npz`` (no pickle)."""
        self._check_fitted()
        meta = {"format": FORMAT_TAG, "version": FORMAT_VERSION, "params": self.get_params(),
                "best_epoch": self.best_epoch_, "stopped": self.stopped_}
        buf = io.BytesIO()
        np.savez(buf, P=self.P_, Q=self.Q_, b=self.b_, lam=self.lambda_,
                 user_ids=_ids(self.user_ids_), item_ids=_ids(self.item_ids_),
                 meta=np.frombuffer(json.dumps(to_jsonable(meta)).encode(), dtype=np.uint8))
        return write_atomic(path, buf.getvalue(), overwrite)

    @classmethod
    def load(cls, path) -> "BPRMF":
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                arrays = {k: z[k] for k in ("P", "Q", "b", "lam", "user_ids", "item_ids")}
        except (OSError, KeyError, ValueError) as exc:
            raise ModelFileError(f"{path}: not a BPR model saved by lfopt ({exc})") from None
        if meta.get("format") != FORMAT_TAG:
            raise ModelFileError(f"{path}: not a BPR model saved by lfopt")
        params = {k: v for k, v in meta["params"].items()}
        model = cls(**params)
        model.P_, model.Q_, model.b_, model.lambda_ = arrays["P"], arrays["Q"], arrays["b"], arrays["lam"]
        model.n_users_, model.n_items_ = model.P_.shape[0], model.Q_.shape[0]
        model.layout_ = LambdaLayout(model.effective_granularity, model.n_users_, model.n_items_, int(model.rank))
        model.user_ids_, model.item_ids_ = arrays["user_ids"], arrays["item_ids"]
        model.best_epoch_, model.stopped_ = meta.get("best_epoch"), meta.get("stopped")
        model._seen = []
        model.train_user_counts_ = None
        model.history_, model.lambda_trajectory_ = [], []
        return model


def _ids(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    return ids.astype(str) if ids.dtype == object else ids
