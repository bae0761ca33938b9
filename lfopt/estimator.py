"""``LatentFactorModel``: the scikit-learn style entry point for rating prediction."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np

from . import __version__
from .data.interactions import Interactions
from .errors import ConfigError, DataError, ModelFileError
from .eval.metrics import rating_metrics
from .models.lf import LFObjective
from .optim.base import make_optimizer
from .results import check_writable, model_path, to_jsonable, write_atomic
from .train.trainer import Trainer

FORMAT_TAG = "lfopt-latent-factor-model"
FORMAT_VERSION = 1
_META_KEY = "__lfopt_meta__"


class LatentFactorModel:
    """Latent factor model r_ui ~ mu + b_u + b_i + p_u . q_i (METHODS.md section 2).

    Parameters
    ----------
    rank : number of latent dimensions f.
    optimizer : ``"sgd"``, ``"adam"``, ``"als"``, ``"adago"``, ``"slf"`` or ``"sslf"``.
    epochs : maximum number of epochs (for SLF/SSLF an epoch is one Gauss-Newton step).
    lam, lam_b : count-weighted L2 strength of the factors and of the biases
        (``lam_b=None`` uses ``lam``).
    use_bias : include the global mean and user/item biases (False gives the
        plain model r_ui ~ p_u . q_i of the papers).
    init_scale : factors start ~ N(0, init_scale^2 / rank).  Small starts help
        generalization (the early epochs fit the strongest directions first); a
        very strong lambda with exact solvers (ALS) may shrink tiny factors to
        the zero saddle, in which case a larger init_scale helps.
    seed : seeds the initialization and the optimizer's randomness.
    patience : early stopping on the validation RMSE (None: no early stopping).
    verbose : print one progress line per epoch (to stderr).
    **optimizer_options : the optimizer's hyper-parameters, e.g. ``lr=0.01``,
        ``batch_size=8192``, ``rho=0.05``, ``cg_iters=10``, ``damping=1.0``.

    Examples
    --------
    >>> import lfopt
    >>> data = lfopt.synthetic(n_users=400, n_items=300, nnz=30000, seed=0)
    >>> train, test = lfopt.random_split(data, 0.1, seed=0)
    >>> model = lfopt.LatentFactorModel(rank=5, optimizer="als", epochs=10, lam=0.02).fit(train)
    >>> model.evaluate(test)["rmse"] < 1.15 * data.meta["noise_floor"]  # the generator's noise level
    True
    >>> scores = model.predict([0, 1], [0, 1])
    >>> items, _ = model.recommend(0, k=3)
    >>> len(items)
    3
    """

    def __init__(self, rank: int = 10, optimizer: str = "sgd", epochs: int = 40, lam: float = 0.02,
                 lam_b: float | None = None, use_bias: bool = True, init_scale: float = 0.1, seed: int = 0,
                 patience: int | None = 5, verbose: bool = False, **optimizer_options):
        self.rank = rank
        self.optimizer = optimizer
        self.epochs = epochs
        self.lam = lam
        self.lam_b = lam_b
        self.use_bias = use_bias
        self.init_scale = init_scale
        self.seed = seed
        self.patience = patience
        self.verbose = verbose
        self.optimizer_options = optimizer_options
        self._check_params()

    def _check_params(self):
        if isinstance(self.rank, bool) or int(self.rank) != self.rank or self.rank <= 0:
            raise ConfigError(f"rank must be a positive integer, got {self.rank!r}")
        for name in ("lam", "lam_b"):
            v = getattr(self, name)
            if v is not None and (not np.isfinite(v) or v < 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
        if not np.isfinite(self.init_scale) or self.init_scale <= 0:
            raise ConfigError(f"init_scale must be > 0, got {self.init_scale!r}")

    def get_params(self) -> dict:
        params = {k: getattr(self, k) for k in ("rank", "optimizer", "epochs", "lam", "lam_b", "use_bias",
                                                 "init_scale", "seed", "patience", "verbose")}
        params.update(self.optimizer_options)
        return params

    # --------------------------------------------------------------- training
    def fit(self, train: Interactions, valid: Interactions | None = None, callback=None) -> "LatentFactorModel":
        """Train on ``train``; with ``valid``, evaluate each epoch and stop early.

        ``callback(row, model)``, if given, runs after every epoch with that
        epoch's history record (which it may extend) and the model holding the
        current parameters, e.g. to track a test metric for plots.
        """
        self._check_params()
        if not isinstance(train, Interactions):
            raise DataError(f"train must be an lfopt.Interactions, got {type(train).__name__}")
        if valid is not None:
            valid = self._aligned(valid, train, "valid")
        obj = LFObjective(train, self.rank, self.lam, self.lam_b, self.use_bias)
        opt = make_optimizer(self.optimizer, seed=self.seed, **self.optimizer_options)
        y = obj.init_params(self.init_scale, self.seed)
        self.objective_ = obj
        self._set_state(obj, y, train)
        evaluate = None
        if valid is not None:
            rows, cols, truth = valid.users, valid.items, valid.values

            def evaluate(params):
                self.params_ = params
                return self._score_indices(rows, cols, truth)

        hook = None
        if callback is not None:

            def hook(row, params):
                self.params_ = params
                callback(row, self)

        trainer = Trainer(self.epochs, self.patience if valid is not None else None, verbose=self.verbose,
                          callback=hook)
        result = trainer.run(obj, opt, y, evaluate)
        self.params_ = y
        self.history_ = result.history
        self.train_result_ = result
        self.optimizer_ = opt
        if result.stopped == "diverged":
            warnings.warn(result.message, RuntimeWarning, stacklevel=2)
        return self

    def _set_state(self, obj: LFObjective, y: np.ndarray, train: Interactions):
        self.params_ = y
        self.mu_ = float(obj.mu)
        self.global_mean_ = float(train.values.mean())
        self.n_users_, self.n_items_ = train.shape
        self.user_ids_ = train.user_ids
        self.item_ids_ = train.item_ids
        self.user_counts_ = train.user_counts().astype(np.int32)
        self.item_counts_ = train.item_counts().astype(np.int32)
        self.seen_indptr_ = train.csr.indptr
        self.seen_indices_ = train.csr.indices
        lo, hi = float(train.values.min()), float(train.values.max())
        self.rating_range_ = (lo, hi)
        self._lookup = None

    @property
    def history(self) -> list:
        """Per-epoch records: epoch, train_loss, train_rmse, valid_rmse/mae, seconds, ..."""
        self._check_fitted()
        return self.history_

    def _check_fitted(self):
        if not hasattr(self, "params_"):
            raise ConfigError("this model is not fitted yet: call fit() or lfopt.load()")

    def factors(self):
        """``(b_u, b_i, P, Q)`` as arrays (biases are empty without ``use_bias``)."""
        self._check_fitted()
        m, n, f = self.n_users_, self.n_items_, self.rank
        y = self.params_
        nb = m + n if self.use_bias else 0
        return y[:m] if nb else y[:0], y[m:nb] if nb else y[:0], y[nb:nb + m * f].reshape(m, f), y[nb + m * f:].reshape(n, f)

    # ------------------------------------------------------------- prediction
    @staticmethod
    def _same_index_space(data: Interactions, user_ids, item_ids) -> bool:
        """Whether ``data`` indexes users and items exactly as ``user_ids``/``item_ids`` do."""
        return (data.user_ids is user_ids or np.array_equal(data.user_ids, user_ids)) and (
            data.item_ids is item_ids or np.array_equal(data.item_ids, item_ids)
        )

    def _aligned(self, data: Interactions, train: Interactions, what: str) -> Interactions:
        """``data`` itself, after checking it shares ``train``'s index space (a split of the same data)."""
        if not isinstance(data, Interactions):
            raise DataError(f"{what} must be an lfopt.Interactions, got {type(data).__name__}")
        if self._same_index_space(data, train.user_ids, train.item_ids):
            return data
        raise DataError(
            f"{what} does not share the training data's index space; build it with a split of the same "
            f"Interactions, or use predict() with original IDs"
        )

    def _predict_indices(self, rows, cols, clip: bool = True):
        """Predictions for index pairs; -1 marks an unknown user/item. Returns (pred, unseen mask)."""
        bu, bi, P, Q = self.factors()
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        known_u = rows >= 0
        known_i = cols >= 0
        ru = np.where(known_u, rows, 0)
        ci = np.where(known_i, cols, 0)
        seen_u = known_u & (self.user_counts_[ru] > 0)
        seen_i = known_i & (self.item_counts_[ci] > 0)
        both = seen_u & seen_i
        if self.use_bias:
            pred = self.mu_ + np.where(seen_u, bu[ru], 0.0) + np.where(seen_i, bi[ci], 0.0)
        else:  # the plain model p.q has no mean: fall back to the training mean
            pred = np.full(len(rows), self.global_mean_, dtype=np.float64)
            pred[both] = 0.0
        pred[both] += np.einsum("ij,ij->i", P[ru[both]], Q[ci[both]], dtype=np.float64)
        if clip:
            np.clip(pred, *self.rating_range_, out=pred)
        return pred, ~both

    def _score_indices(self, rows, cols, truth, policy: str = "bias"):
        pred, unseen = self._predict_indices(rows, cols)
        return rating_metrics(pred, truth, unseen, policy)

    def predict(self, users, items, clip: bool = True) -> np.ndarray:
        """Predicted ratings for pairs of original user and item IDs.

        Unknown IDs (or users/items with no training entry) get the fallback
        prediction: the global mean plus the bias of the known side.  Their
        number is stored in ``model.n_unknown_`` (and warned about).
        """
        self._check_fitted()
        users = np.atleast_1d(np.asarray(users))
        items = np.atleast_1d(np.asarray(items))
        if users.shape != items.shape:
            raise DataError(f"users and items must have the same length, got {len(users)} and {len(items)}")
        rows, cols = self._index(users, items)
        pred, fallback = self._predict_indices(rows, cols, clip)
        self.n_unknown_ = int(fallback.sum())
        if self.n_unknown_:
            warnings.warn(f"{self.n_unknown_} of {len(rows)} pairs have a user or item unseen in training; "
                          f"predicted from the mean and biases", stacklevel=2)
        return pred

    def _index(self, users, items):
        if self._lookup is None:
            self._lookup = Interactions([], [], [], n_users=self.n_users_, n_items=self.n_items_,
                                        user_ids=self.user_ids_, item_ids=self.item_ids_)
        return self._lookup.user_index(users), self._lookup.item_index(items)

    def evaluate(self, test: Interactions, unseen: str = "bias") -> dict:
        """RMSE/MAE on ``test`` (predictions clipped to the training rating range).

        ``test`` from a split of the training data is scored by index; any other
        ``Interactions`` is matched by original IDs.  See
        :mod:`lfopt.eval.metrics` for the ``unseen`` policy.
        """
        self._check_fitted()
        if not isinstance(test, Interactions):
            raise DataError(f"test must be an lfopt.Interactions, got {type(test).__name__}")
        if self._same_index_space(test, self.user_ids_, self.item_ids_):
            rows, cols = test.users, test.items
        else:
            rows, cols = self._index(test.user_ids[test.users], test.item_ids[test.items])
        return self._score_indices(rows, cols, test.values, unseen)

    def recommend(self, user, k: int = 10, exclude_seen: bool = True):
        """Top-``k`` items for one user (original ID): ``(item_ids, scores)``, best first.

        An unknown user gets the items with the highest item bias (popularity fallback).
        """
        self._check_fitted()
        if int(k) != k or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        bu, bi, P, Q = self.factors()
        u = int(self._index(np.array([user]), np.array([self.item_ids_[0]]))[0][0])
        if u >= 0 and self.user_counts_[u] > 0:
            scores = Q @ P[u] + (bi + bu[u] + self.mu_ if self.use_bias else 0.0)
        else:
            scores = (bi.astype(np.float64) + self.mu_) if self.use_bias else np.zeros(self.n_items_)
        scores = np.asarray(scores, dtype=np.float64).copy()
        if exclude_seen and u >= 0:
            scores[self.seen_indices_[self.seen_indptr_[u]:self.seen_indptr_[u + 1]]] = -np.inf
        scores[self.item_counts_ == 0] = -np.inf  # never-trained items have random factors
        k = min(int(k), int(np.isfinite(scores).sum()))
        top = np.argpartition(-scores, k - 1)[:k] if k else np.array([], dtype=np.int64)
        top = top[np.argsort(-scores[top], kind="stable")]
        return self.item_ids_[top], scores[top]

    # ------------------------------------------------------------ persistence
    def save(self, path, overwrite: bool = False) -> Path:
        """Save to ``path`` (.npz with JSON metadata inside; no pickle), atomically.

        Refuses to replace an existing file unless ``overwrite=True``.
        """
        self._check_fitted()
        path = model_path(path)
        check_writable(path, overwrite)
        meta = {
            "format": FORMAT_TAG, "format_version": FORMAT_VERSION, "lfopt_version": __version__,
            "params": to_jsonable(self.get_params()), "mu": self.mu_, "global_mean": self.global_mean_, "rating_range": list(self.rating_range_),
            "n_users": self.n_users_, "n_items": self.n_items_, "history": to_jsonable(getattr(self, "history_", [])),
        }
        arrays = {
            "params": self.params_, "user_ids": _id_array(self.user_ids_), "item_ids": _id_array(self.item_ids_),
            "user_counts": self.user_counts_, "item_counts": self.item_counts_,
            "seen_indptr": self.seen_indptr_, "seen_indices": self.seen_indices_,
            _META_KEY: np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        }
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return write_atomic(path, buf.getvalue(), overwrite)


def load(path) -> LatentFactorModel:
    """Load a model saved by :meth:`LatentFactorModel.save`."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            files = dict(z)
    except Exception as exc:
        raise ModelFileError(f"{path}: not an lfopt model file (not a readable .npz: {exc})") from None
    if _META_KEY not in files:
        raise ModelFileError(f"{path}: not an lfopt model file (no lfopt metadata)")
    try:
        meta = json.loads(files[_META_KEY].tobytes().decode())
    except ValueError:
        raise ModelFileError(f"{path}: damaged lfopt model file (metadata is not JSON)") from None
    if meta.get("format") != FORMAT_TAG:
        raise ModelFileError(f"{path}: not an lfopt latent factor model (format {meta.get('format')!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(f"{path}: saved by a newer lfopt (format {meta['format_version']}); upgrade lfopt")
    needed = ("params", "user_ids", "item_ids", "user_counts", "item_counts", "seen_indptr", "seen_indices")
    missing = [k for k in needed if k not in files]
    if missing:
        raise ModelFileError(f"{path}: damaged lfopt model file (missing {missing})")
    params = dict(meta["params"])
    fixed = {k: params.pop(k) for k in ("rank", "optimizer", "epochs", "lam", "lam_b", "use_bias", "init_scale",
                                         "seed", "patience", "verbose")}
    model = LatentFactorModel(**fixed, **params)
    model.params_ = files["params"]
    model.mu_ = float(meta["mu"])
    model.global_mean_ = float(meta["global_mean"])
    model.n_users_, model.n_items_ = int(meta["n_users"]), int(meta["n_items"])
    model.user_ids_, model.item_ids_ = files["user_ids"], files["item_ids"]
    model.user_counts_, model.item_counts_ = files["user_counts"], files["item_counts"]
    model.seen_indptr_, model.seen_indices_ = files["seen_indptr"], files["seen_indices"]
    model.rating_range_ = tuple(meta["rating_range"])
    model.history_ = meta.get("history", [])
    model._lookup = None
    nb = model.n_users_ + model.n_items_ if model.use_bias else 0
    expected = nb + (model.n_users_ + model.n_items_) * model.rank
    if model.params_.shape != (expected,):
        raise ModelFileError(f"{path}: damaged lfopt model file (parameter vector has the wrong size)")
    return model


def _id_array(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    return ids.astype(str) if ids.dtype == object else ids
