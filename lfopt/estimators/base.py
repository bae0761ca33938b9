"""``Recommender``: the one estimator base of every lfopt model.

What every model shares lives here, written once:

* input: ``fit(data, valid=None)`` takes an :class:`~lfopt.Interactions`, a pandas
  DataFrame (columns ``user``/``item``/``rating``, renamed with ``columns=``) or a
  scipy.sparse matrix (rows = users, columns = items);
* original IDs in and out: ``predict(users, items)``, ``recommend(users, k)`` for
  one user, a list of users or all users (chunked: never an m x n matrix),
  ``similar_items`` / ``similar_users`` (cosine on the factors);
* ``evaluate(test)``: rating metrics for rating models, full-ranking metrics
  (AUC, HR/NDCG/Recall/Precision@K) for any model (``kind="ranking"``);
* scikit-learn conventions: hyper-parameters stored as given by ``__init__``
  and validated in ``fit``, ``get_params(deep=True)``, ``set_params``,
  ``sklearn.base.clone``, a readable ``repr``;
* one model file (:mod:`lfopt.estimators.io`): ``model.save(path)`` and
  ``lfopt.load(path)`` for any model, the items seen in training included.

A model implements ``_fit(train, valid, callback)`` and ``_factors()``, which
returns ``(U, V, user_offset, item_offset, global_offset)`` so that the score of
(u, i) is ``global + user_offset[u] + item_offset[i] + U[u] . V[i]``; rating models
override ``_predict_indices`` to add their fallback and clipping.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np

from ..data.interactions import Interactions
from ..errors import ConfigError, DataError
from ..eval.ranking import DEFAULT_KS, iter_topk, per_user_metrics, summarize

MODEL_CLASSES: dict = {}


def register_model(tag: str):
    """Class decorator: the model file's tag for ``cls`` (``lfopt.load`` dispatches on it)."""

    def deco(cls):
        cls._model_tag = tag
        MODEL_CLASSES[tag] = cls
        return cls

    return deco


# ----------------------------------------------------------------- data input
def as_interactions(data, columns: dict | None = None, what: str = "data") -> Interactions:
    """``data`` as an Interactions: an Interactions itself, a pandas DataFrame or a scipy.sparse matrix.

    ``columns`` renames the DataFrame's columns: ``{"user": "userId", "item": "movieId",
    "rating": "stars"}`` (``"rating": None`` for implicit data, all values 1).

    >>> import pandas as pd
    >>> df = pd.DataFrame({"userId": ["a", "a", "b"], "movieId": [1, 2, 1], "stars": [4, 3, 5]})
    >>> as_interactions(df, columns={"user": "userId", "item": "movieId", "rating": "stars"}).shape
    (2, 2)
    """
    if isinstance(data, Interactions):
        return data
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None
    if pd is not None and isinstance(data, pd.DataFrame):
        cols = {"user": "user", "item": "item", "rating": "rating"}
        cols.update(columns or {})
        unknown = set(cols) - {"user", "item", "rating", "time"}
        if unknown:
            raise ConfigError(f"columns: unknown field(s) {sorted(unknown)}; use user, item, rating, time")
        rating = cols["rating"]
        if rating is not None and rating not in data.columns and "rating" not in (columns or {}):
            rating = None  # no rating column: implicit feedback
        return Interactions.from_dataframe(data, cols["user"], cols["item"], rating, cols.get("time"), name=what)
    import scipy.sparse as sp

    if sp.issparse(data):
        return Interactions.from_scipy(data, name=what)
    raise DataError(f"{what} must be an lfopt.Interactions, a pandas DataFrame or a scipy.sparse matrix, "
                    f"got {type(data).__name__}")


def same_index_space(data: Interactions, user_ids, item_ids) -> bool:
    """Whether ``data`` indexes users and items exactly as ``user_ids``/``item_ids`` do."""
    return (data.user_ids is user_ids or np.array_equal(data.user_ids, user_ids)) and (
        data.item_ids is item_ids or np.array_equal(data.item_ids, item_ids))


def reindex(data: Interactions, user_ids, item_ids, what: str) -> tuple[Interactions, int]:
    """``data`` moved into the index space of ``user_ids``/``item_ids`` (matched by original IDs).

    Entries whose user or item is not in that space are dropped; returns the
    re-indexed data and the number dropped.
    """
    if same_index_space(data, user_ids, item_ids):
        return data, 0
    ref = Interactions([], [], [], n_users=len(user_ids), n_items=len(item_ids), user_ids=user_ids,
                       item_ids=item_ids)
    rows = ref.user_index(data.user_ids[data.users])
    cols = ref.item_index(data.item_ids[data.items])
    keep = (rows >= 0) & (cols >= 0)
    out = Interactions(rows[keep], cols[keep], data.values[keep], n_users=len(user_ids), n_items=len(item_ids),
                       user_ids=user_ids, item_ids=item_ids,
                       timestamps=None if data.timestamps is None else data.timestamps[keep], name=what)
    return out, int((~keep).sum())


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    return int(k)


# ---------------------------------------------------------------------- base
class Recommender:
    """Base of every lfopt model (see the module docstring)."""

    _model_tag = "recommender"
    _task = "rating"  # or "ranking": what evaluate() scores by default

    # ------------------------------------------------------ scikit-learn API
    @classmethod
    def _param_names(cls) -> list:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]

    def get_params(self, deep: bool = True) -> dict:
        """The hyper-parameters, exactly as given to the constructor (scikit-learn convention)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> "Recommender":
        """Set hyper-parameters (validated at the next ``fit``); returns the model."""
        valid = set(self._param_names())
        for name, value in params.items():
            if name not in valid:
                raise ConfigError(f"{type(self).__name__} has no parameter {name!r}; "
                                  f"valid parameters: {', '.join(sorted(valid))}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        sig = inspect.signature(type(self).__init__)
        defaults = {p.name: p.default for p in sig.parameters.values() if p.default is not p.empty}
        shown = []
        for name, value in self.get_params().items():
            if name in defaults and _same(defaults[name], value):
                continue
            shown.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    # ------------------------------------------------------------------ fit
    def fit(self, data, valid=None, callback=None, columns: dict | None = None):
        """Train on ``data`` (Interactions, DataFrame or scipy.sparse); returns the model.

        ``valid`` (same kinds) is scored after every epoch for early stopping; a
        split of the same Interactions shares its index space, anything else is
        matched by original IDs (entries with IDs unknown to ``data`` dropped).
        ``callback(model, row)`` runs after every epoch with the model holding
        the current parameters and that epoch's history row (which it may extend).
        """
        train = as_interactions(data, columns, "train")
        if train.nnz == 0:
            raise DataError("the training data is empty")
        if valid is not None:
            valid, dropped = reindex(as_interactions(valid, columns, "valid"), train.user_ids, train.item_ids,
                                     "valid")
            if dropped:
                warnings.warn(f"{dropped} validation entries have a user or item absent from the training data; "
                              f"left out of validation", stacklevel=2)
            if valid.nnz == 0:
                valid = None
        self._fit(train, valid, callback)
        return self

    def _fit(self, train: Interactions, valid: Interactions | None, callback):  # pragma: no cover
        raise NotImplementedError

    def _set_index_state(self, train: Interactions, valid: Interactions | None = None) -> None:
        """The ID maps, counts and the items each user was seen with (train + valid)."""
        self.n_users_, self.n_items_ = train.shape
        self.user_ids_ = train.user_ids
        self.item_ids_ = train.item_ids
        self.user_counts_ = train.user_counts().astype(np.int32)
        self.item_counts_ = train.item_counts().astype(np.int32)
        from ..eval.ranking import merged_csr

        self.seen_indptr_, self.seen_indices_ = merged_csr([train, valid], self.n_users_, self.n_items_)
        self._lookup = None
        self._seen_data = None

    # ------------------------------------------------------------- state
    def _check_fitted(self):
        if not hasattr(self, "user_ids_"):
            raise ConfigError(f"this {type(self).__name__} is not fitted yet: call fit() or lfopt.load()")

    @property
    def history(self) -> list:
        """One record per epoch: epoch, train_loss, validation metrics, seconds, optimizer diagnostics."""
        self._check_fitted()
        return self.history_

    def _factors(self):  # pragma: no cover - per model
        """(U, V, user_offset or None, item_offset or None, global_offset) as numpy arrays."""
        raise NotImplementedError

    def _ids(self):
        if getattr(self, "_lookup", None) is None:
            self._lookup = Interactions([], [], [], n_users=self.n_users_, n_items=self.n_items_,
                                        user_ids=self.user_ids_, item_ids=self.item_ids_)
        return self._lookup

    def _user_rows(self, users) -> np.ndarray:
        return self._ids().user_index(np.atleast_1d(np.asarray(users)))

    def _item_cols(self, items) -> np.ndarray:
        return self._ids().item_index(np.atleast_1d(np.asarray(items)))

    def _seen(self) -> Interactions:
        """The (user, item) pairs seen in fit, as Interactions in the model's index space."""
        if getattr(self, "_seen_data", None) is None:
            counts = np.diff(self.seen_indptr_)
            rows = np.repeat(np.arange(self.n_users_, dtype=np.int32), counts)
            self._seen_data = Interactions(rows, self.seen_indices_, np.ones(len(rows), np.float32),
                                           n_users=self.n_users_, n_items=self.n_items_,
                                           user_ids=self.user_ids_, item_ids=self.item_ids_)
        return self._seen_data

    # -------------------------------------------------------------- scoring
    def _predict_indices(self, rows, cols, clip: bool = True):
        """Scores of index pairs (-1: unknown). Returns (scores, fallback mask); unknown pairs score NaN."""
        U, V, uo, io, g = self._factors()
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        ok = (rows >= 0) & (cols >= 0)
        r, c = rows[ok], cols[ok]
        out = np.full(len(rows), np.nan)
        s = np.einsum("ij,ij->i", U[r], V[c], dtype=np.float64) + g
        if uo is not None:
            s += uo[r]
        if io is not None:
            s += io[c]
        out[ok] = s
        return out, ~ok

    def predict(self, users, items, clip: bool = True) -> np.ndarray:
        """Predictions (rating models) or scores (ranking models) for pairs of original IDs.

        Unknown IDs get the model's fallback (rating models: the mean plus the
        known side's bias; ranking models: NaN); their number is stored in
        ``n_unknown_`` and warned about.
        """
        self._check_fitted()
        users = np.atleast_1d(np.asarray(users))
        items = np.atleast_1d(np.asarray(items))
        if users.shape != items.shape:
            raise DataError(f"users and items must have the same length, got {len(users)} and {len(items)}")
        pred, fallback = self._predict_indices(self._user_rows(users), self._item_cols(items), clip)
        self.n_unknown_ = int(fallback.sum())
        if self.n_unknown_:
            warnings.warn(f"{self.n_unknown_} of {len(pred)} pairs have a user or item unseen in training; "
                          f"{self._fallback_words}", stacklevel=2)
        return pred

    _fallback_words = "scored NaN"

    def _fallback_scores(self) -> np.ndarray:
        """Item scores for a user the model does not know: popularity (item offset, else counts)."""
        _, _, _, io, g = self._factors()
        return (io.astype(np.float64) + g) if io is not None else self.item_counts_.astype(np.float64)

    # ------------------------------------------------------------ recommend
    def recommend(self, users=None, k: int = 10, exclude_seen: bool = True, items=None, chunk_size=None):
        """Top-``k`` items for users given by original ID: ``(item_ids, scores)``, best first.

        ``users``: one ID (returns arrays of shape (k,)), a list/array of IDs (shape
        (len(users), k)) or None for every user (computed a block of users at a
        time: never an m x n matrix).  ``exclude_seen`` leaves out the items each
        user had in fit (training and validation data); items never seen in
        training are never recommended.  ``items`` restricts the candidates to
        these item IDs.  A user unknown to the model gets the popularity ranking
        (with a warning).  Rows with fewer than k candidates are padded with
        score -inf and item ID -1 (None for non-numeric IDs).
        """
        self._check_fitted()
        k = _check_k(k)
        single = users is not None and np.ndim(users) == 0
        rows = np.arange(self.n_users_) if users is None else self._user_rows(users)
        if users is None:
            users = self.user_ids_
        U, V, uo, io, g = self._factors()
        cand = np.flatnonzero(self.item_counts_ > 0)
        if items is not None:
            sel = self._item_cols(items)
            if (sel < 0).any():
                bad = np.atleast_1d(np.asarray(items))[sel < 0][0]
                raise DataError(f"items: item ID {bad!r} is unknown to the model")
            cand = np.intersect1d(cand, sel)
        full = len(cand) == self.n_items_
        Vc = V if full else V[cand]
        ioc = None if io is None else (io if full else io[cand])
        # exclusions in the candidates' index space
        if exclude_seen:
            ptr, idx = self.seen_indptr_, self.seen_indices_
            if not full:
                pos = np.full(self.n_items_, -1, dtype=np.int64)
                pos[cand] = np.arange(len(cand))
                mapped = pos[idx]
                keep = mapped >= 0
                owner = np.repeat(np.arange(self.n_users_), np.diff(ptr))
                ptr = np.zeros(self.n_users_ + 1, dtype=np.int64)
                np.cumsum(np.bincount(owner[keep], minlength=self.n_users_), out=ptr[1:])
                idx = mapped[keep].astype(np.int32)
        else:
            ptr, idx = np.zeros(self.n_users_ + 1, dtype=np.int64), np.zeros(0, dtype=np.int32)
        out_items = np.full((len(rows), k), -1, dtype=np.int64)
        out_scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
        known = rows >= 0
        known[known] = self.user_counts_[rows[known]] > 0  # users with no training entry: popularity
        if known.any():
            pos_known = np.flatnonzero(known)
            for block_users, it, sc in iter_topk(U, Vc, rows[known], k, [(ptr, idx)], ioc, chunk_size):
                sel = pos_known[:len(block_users)]
                pos_known = pos_known[len(block_users):]
                shift = np.float32(g) + (uo[block_users].astype(np.float32)[:, None] if uo is not None else 0)
                out_items[sel] = np.where(it >= 0, it if full else cand[np.maximum(it, 0)], -1)
                out_scores[sel] = np.where(it >= 0, sc + shift, -np.inf)
        if (~known).any():
            bad = np.atleast_1d(np.asarray(users))[~known]
            warnings.warn(f"{len(bad)} user(s) unknown to the model or without training data (e.g. {bad[0]!r}): "
                          f"recommended by popularity",
                          stacklevel=2)
            pop = self._fallback_scores()[cand]
            order = np.argsort(-pop, kind="stable")[:k]
            for r in np.flatnonzero(~known):
                out_items[r, :len(order)] = cand[order]
                out_scores[r, :len(order)] = pop[order]
        ids = self._to_ids(out_items, self.item_ids_)
        if single:
            n_ok = int((out_items[0] >= 0).sum())
            return ids[0][:n_ok], out_scores[0][:n_ok]
        return ids, out_scores

    @staticmethod
    def _to_ids(index: np.ndarray, id_map: np.ndarray) -> np.ndarray:
        ids = id_map[np.maximum(index, 0)]
        if (index < 0).any():
            if ids.dtype.kind in "iuf":
                ids = np.where(index >= 0, ids, -1)
            else:
                ids = ids.astype(object)
                ids[index < 0] = None
        return ids

    # -------------------------------------------------------------- similar
    def similar_items(self, items, k: int = 10):
        """The ``k`` items most similar to each given item ID (cosine of the item factors).

        One ID gives ``(item_ids, scores)`` of shape (k,); a list gives (len, k)
        arrays.  The item itself and items never seen in training are left out.
        """
        self._check_fitted()
        _, V, _, _, _ = self._factors()
        return self._similar(V, self._item_cols(items), items, self.item_counts_, self.item_ids_, k, "item")

    def similar_users(self, users, k: int = 10):
        """The ``k`` users most similar to each given user ID (cosine of the user factors)."""
        self._check_fitted()
        U, _, _, _, _ = self._factors()
        return self._similar(U, self._user_rows(users), users, self.user_counts_, self.user_ids_, k, "user")

    def _similar(self, X, rows, given, counts, id_map, k, what):
        k = _check_k(k)
        if (rows < 0).any():
            bad = np.atleast_1d(np.asarray(given))[rows < 0][0]
            raise DataError(f"{what} ID {bad!r} is unknown to the model")
        Xn = np.asarray(X, dtype=np.float32)
        norms = np.linalg.norm(Xn, axis=1)
        Xn = Xn / np.maximum(norms, 1e-12)[:, None]
        n = Xn.shape[0]
        kk = min(k, max(int((counts > 0).sum()) - 1, 0))
        out_idx = np.full((len(rows), k), -1, dtype=np.int64)
        out_sc = np.full((len(rows), k), -np.inf, dtype=np.float32)
        step = max(1, (1 << 22) // max(n, 1))
        for s in range(0, len(rows), step):
            block = rows[s:s + step]
            S = Xn[block] @ Xn.T
            S[:, counts == 0] = -np.inf
            S[np.arange(len(block)), block] = -np.inf
            if kk:
                top = np.argpartition(-S, kk - 1, axis=1)[:, :kk]
                vals = np.take_along_axis(S, top, axis=1)
                order = np.argsort(-vals, axis=1, kind="stable")
                out_idx[s:s + len(block), :kk] = np.take_along_axis(top, order, axis=1)
                out_sc[s:s + len(block), :kk] = np.take_along_axis(vals, order, axis=1)
        ids = self._to_ids(out_idx, id_map)
        if np.ndim(given) == 0:
            return ids[0][:kk], out_sc[0][:kk]
        return ids, out_sc

    # ------------------------------------------------------------- evaluate
    def evaluate(self, test, kind: str | None = None, ks=DEFAULT_KS, threshold: float | None = None,
                 unseen: str = "bias", activity: bool = True, n_buckets: int = 4, columns: dict | None = None,
                 chunk_size=None) -> dict:
        """Score the model on ``test`` (Interactions, DataFrame or scipy.sparse).

        ``kind="rating"`` (rating models' default): RMSE/MAE, see
        :mod:`lfopt.eval.metrics` for the ``unseen`` policy.  ``kind="ranking"``
        (ranking models' default, available for every model): full-ranking AUC,
        HR/NDCG/Recall/Precision@K over all items the user did not have in fit;
        the test entries (those with value >= ``threshold`` if given) are the
        positives; ``activity`` adds the metrics of ``n_buckets`` groups of users by
        their number of training entries.  A split of the training data is scored
        by index; other data is matched by original IDs.
        """
        self._check_fitted()
        test = as_interactions(test, columns, "test")
        kind = kind or self._task
        if kind == "rating":
            return self._evaluate_rating(test, unseen)
        if kind != "ranking":
            raise ConfigError(f"kind must be 'rating' or 'ranking', got {kind!r}")
        if threshold is not None:
            test = test.subset(test.values >= threshold)
        target, dropped = reindex(test, self.user_ids_, self.item_ids_, "test")
        U, V, _, io, _ = self._factors()
        pu = per_user_metrics(U, V, target, [self._seen()], io, ks, chunk_size)
        out = summarize(pu, self.user_counts_ if activity else None, n_buckets)
        out["n_unseen"] = dropped
        return out

    def _evaluate_rating(self, test: Interactions, unseen: str) -> dict:
        raise ConfigError(f"{type(self).__name__} is a ranking model: evaluate(test) gives ranking metrics; "
                          f"it predicts no ratings")

    # ---------------------------------------------------------------- files
    def save(self, path, overwrite: bool = False):
        """Write the model to ``path`` (.npz: arrays + JSON metadata, no pickle), atomically.

        An existing file is never replaced unless ``overwrite``.  ``lfopt.load(path)``
        reads any model back.
        """
        from .io import save_model

        self._check_fitted()
        return save_model(self, path, overwrite)

    @classmethod
    def load(cls, path):
        """Load a model file; it must hold a ``cls`` (``lfopt.load`` takes any model)."""
        from .io import load_model

        model = load_model(path)
        if not isinstance(model, cls):
            from ..errors import ModelFileError

            raise ModelFileError(f"{path}: holds a {type(model).__name__}, not a {cls.__name__}")
        return model

    # subclasses: what goes into the file beyond the common index state
    def _state_arrays(self) -> dict:  # pragma: no cover
        return {}

    def _state_meta(self) -> dict:  # pragma: no cover
        return {}

    def _set_state(self, arrays: dict, meta: dict) -> None:  # pragma: no cover
        raise NotImplementedError


def _same(a, b) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except (TypeError, ValueError):
        return a is b


class RatingRecommender(Recommender):
    """A model that predicts ratings: ``evaluate(test)`` scores RMSE/MAE of ``_predict_indices``
    (which returns the clipped predictions and the mask of pairs predicted by a fallback)."""

    def _predict_indices(self, rows, cols, clip: bool = True):  # pragma: no cover - per model
        raise NotImplementedError

    def _score_indices(self, rows, cols, truth, policy: str = "bias"):
        from ..eval.metrics import rating_metrics

        pred, unseen = self._predict_indices(rows, cols)
        return rating_metrics(pred, truth, unseen, policy)

    def _evaluate_rating(self, test: Interactions, unseen: str) -> dict:
        if same_index_space(test, self.user_ids_, self.item_ids_):
            rows, cols = test.users, test.items
        else:
            rows, cols = self._user_rows(test.user_ids[test.users]), self._item_cols(test.item_ids[test.items])
        return self._score_indices(rows, cols, test.values, unseen)
