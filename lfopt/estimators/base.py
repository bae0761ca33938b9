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

    def _given_params(self) -> dict:
        """The hyper-parameters that differ from the constructor's defaults (what was asked for)."""
        sig = inspect.signature(type(self).__init__)
        defaults = {p.name: p.default for p in sig.parameters.values() if p.default is not p.empty}
        return {name: value for name, value in self.get_params().items()
                if not (name in defaults and _same(defaults[name], value))}

    def __repr__(self) -> str:
        shown = [f"{name}={value!r}" for name, value in self._given_params().items()]
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

    def _record_result(self, result, t_start: float) -> None:
        """What every trained model keeps of a Trainer run (history, best epoch and value, why it
        stopped, fit seconds since ``t_start``); a diverged run warns."""
        import time

        self.history_ = result.history
        self.train_result_ = result
        self.best_epoch_ = result.best_epoch or len(result.history)
        self.best_valid_ = result.best_value if result.best_epoch else None
        self.stopped_ = result.stopped
        self.fit_seconds_ = time.perf_counter() - t_start
        if result.stopped == "diverged":
            warnings.warn(result.message, RuntimeWarning, stacklevel=4)

    def _say(self, text: str) -> None:
        """One progress line on stderr when ``verbose``."""
        if getattr(self, "verbose", False):
            import sys

            print(text, file=sys.stderr, flush=True)

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

    #: Damping (in entries) of the shrunk popularity that ranks items for unknown users.
    popularity_damping = 25.0

    def popularity(self) -> np.ndarray:
        """The shrunk popularity that ranks items for a user the model does not know (model item order).

        Rating models: the fallback's item score (mean plus item bias) shrunk toward the
        global mean by the item's training count n_i, ``g + (s_i - g) n_i / (n_i +
        popularity_damping)`` -- a damped mean rating, so an item with 2 high ratings
        does not outrank one with 200.  Ranking models: the training count n_i.

        >>> import lfopt
        >>> data = lfopt.synthetic(n_users=200, n_items=100, nnz=8000, seed=0)
        >>> pop = lfopt.BiasBaseline().fit(data).popularity()
        >>> pop.shape
        (100,)
        """
        self._check_fitted()
        counts = self.item_counts_.astype(np.float64)
        if self._task != "rating":
            return counts
        raw = np.asarray(self._fallback_scores(), dtype=np.float64)
        center = getattr(self, "mu_", None)
        if center is None or not np.isfinite(center):
            center = float(np.average(raw, weights=counts)) if counts.sum() > 0 else float(raw.mean())
        return center + (raw - center) * counts / (counts + float(self.popularity_damping))

    # ------------------------------------------------------------ recommend
    def recommend(self, users=None, k: int = 10, exclude_seen: bool = True, items=None, chunk_size=None,
                  min_support: int | None = None):
        """Top-``k`` items for users given by original ID: ``(item_ids, scores)``, best first.

        ``users``: one ID (returns arrays of shape (k,)), a list/array of IDs (shape
        (len(users), k)) or None for every user (computed a block of users at a
        time: never an m x n matrix).  ``exclude_seen`` leaves out the items each
        user had in fit (training and validation data); items never seen in
        training are never recommended.  ``items`` restricts the candidates to
        these item IDs.  A user unknown to the model gets the popularity ranking
        (with a warning): the shrunk popularity of :meth:`popularity`, not the raw item
        bias.  ``min_support`` recommends only items with at least that many training
        entries (default: 1).  Rows with fewer than k candidates are padded with
        score -inf and item ID -1 (None for non-numeric IDs).

        >>> import lfopt
        >>> data = lfopt.synthetic(n_users=200, n_items=100, nnz=8000, seed=0)
        >>> model = lfopt.BiasBaseline().fit(data)
        >>> items, _ = model.recommend(0, k=5, min_support=90)
        >>> bool((model.item_counts_[model._item_cols(items)] >= 90).all())
        True
        """
        self._check_fitted()
        k = _check_k(k)
        if min_support is None:
            min_support = 1
        if isinstance(min_support, bool) or not isinstance(min_support, (int, np.integer)) or min_support < 1:
            raise ConfigError(f"min_support must be a positive integer, got {min_support!r}")
        single = users is not None and np.ndim(users) == 0
        rows = np.arange(self.n_users_) if users is None else self._user_rows(users)
        if users is None:
            users = self.user_ids_
        U, V, uo, io, g = self._factors()
        cand = np.flatnonzero(self.item_counts_ >= max(int(min_support), 1))
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
            warnings.warn(f"{len(bad)} user(s) unknown to the model or without training data "
                          f"(e.g. {_plain(bad[0])!r}): recommended by popularity", stacklevel=2)
            pop = self.popularity()[cand]
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

    # ------------------------------------------------------ fold-in / grow
    # The per-model hooks (a model that implements all three gets fold_in; partial_fit also
    # needs ``_partial_fit``):
    #
    # * ``_fold_in_row(cols, values) -> state``: solve one user's row with the item side
    #   fixed, from ``cols`` (int64 indices of trained items, unique) and ``values``
    #   (float64, same length; ones for implicit data).  Pure: it must not change the model
    #   (every row of a call is solved before anything is written, so an error leaves the
    #   model as it was).  ``state`` is whatever ``_set_user_row`` takes.
    # * ``_grow(n_users, n_items, init)``: extend the model arrays from their current sizes to
    #   ``n_users`` / ``n_items`` rows (the ID maps and counts are already extended when it is
    #   called: ``self.n_users_`` etc. hold the new sizes, the arguments the old ones).  New rows
    #   are zeros, or initialized as ``fit`` would when ``init`` is True (partial_fit).
    # * ``_set_user_row(row, state)``: write a state of ``_fold_in_row`` into user row ``row``.
    _fold_in_needs_values = False

    def fold_in(self, user, items=None, values=None, columns: dict | None = None):
        """Add a new user, or re-solve a known one, from a few interactions: no retraining.

        The user's row is solved with every item parameter fixed (the ridge solve of ALS
        for the rating model, a few BPR gradient steps for BPR, the damped bias for the
        baseline: see each model's ``_fold_in_row``).  ``user`` is one user ID, ``items``
        its item IDs and ``values`` their ratings (required by rating models; implicit
        models take None: all ones).  Or pass many users at once as ``fold_in(data)``
        with an Interactions or a DataFrame (``columns`` as in ``fit``).

        Item IDs unknown to the model (or never seen in training) are left out with one
        warning; a user left with no item is not folded in (named in the warning); no
        user left is a DataError (the model is then unchanged).  A repeated item keeps
        its last value.  A known user's row is solved from the given interactions only
        (the model keeps no ratings); its seen items become the old ones plus the new.  Afterwards
        the user is known to ``predict``/``recommend`` (which excludes the folded-in
        items), ``user_counts_`` holds the number of interactions the row was solved from,
        and ``save``/``lfopt.load`` keep it.  Returns the model.

        >>> import lfopt
        >>> data = lfopt.synthetic(n_users=200, n_items=100, nnz=8000, seed=0)
        >>> model = lfopt.LatentFactorModel(rank=4, epochs=5).fit(data)
        >>> model = model.fold_in(10_000, items=[0, 1, 2], values=[5.0, 4.0, 1.0])   # a new user ID
        >>> int(model.user_ids_[-1]), int(model.user_counts_[-1])
        (10000, 3)
        >>> items, _ = model.recommend(10_000, k=5)   # folded-in items excluded
        >>> bool(set(items.tolist()) & {0, 1, 2})
        False
        """
        self._check_fitted()
        if items is None:
            data = as_interactions(user, columns, "fold-in data")
            if data.nnz == 0:
                raise DataError("fold_in: the data holds no interaction")
            order = np.argsort(data.users, kind="stable")
            bounds = np.flatnonzero(np.diff(data.users[order])) + 1
            groups = [(data.user_ids[data.users[g[0]]], data.item_ids[data.items[g]],
                       data.values[g] if data.values is not None else None) for g in np.split(order, bounds)]
        else:
            if np.ndim(user) != 0:
                raise DataError(f"fold_in: user must be one ID (pass a DataFrame or Interactions for several "
                                f"users), got {type(user).__name__}")
            groups = [(user, items, values)]
        prepared, n_bad, bad_example, empty = [], 0, None, []
        for uid, its, vals in groups:
            cols, vals, bad = self._fold_in_entries(uid, its, vals)
            if len(bad):
                n_bad += len(bad)
                bad_example = _plain(bad[0]) if bad_example is None else bad_example
            if len(cols) == 0:
                empty.append(_plain(uid))
                continue
            prepared.append((uid, cols, vals, self._fold_in_row(cols, vals)))
        if not prepared:
            raise DataError(f"fold_in: none of the {n_bad} item(s) given is known to the model or was seen in "
                            f"training (e.g. {bad_example!r}); nothing to fold in")
        if n_bad:
            skipped = (f"; {len(empty)} user(s) left with no item were not folded in (e.g. {empty[0]!r})"
                       if empty else "")
            warnings.warn(f"fold_in: {n_bad} item(s) unknown to the model or never seen in training were left out "
                          f"(e.g. {bad_example!r}){skipped}", stacklevel=2)
        rows = self._user_rows([g[0] for g in prepared])
        new = [g[0] for g, r in zip(prepared, rows) if r < 0]
        if new:
            self._extend_ids(new, [], init=False)
            rows = self._user_rows([g[0] for g in prepared])
        for r, (_, cols, _, state) in zip(rows, prepared):
            self._set_user_row(int(r), state)
            self.user_counts_[r] = len(cols)
        self._add_seen(np.repeat(rows, [len(g[1]) for g in prepared]),
                       np.concatenate([g[1] for g in prepared]))
        return self

    def _fold_in_entries(self, uid, items, values):
        """(cols, values, unknown item IDs) of one user's fold-in interactions: known trained items only,
        unique (a repeated item keeps its last value)."""
        uid = _plain(uid)  # messages show 381, not np.int64(381)
        items = np.atleast_1d(np.asarray(items))
        if items.ndim != 1 or len(items) == 0:
            raise DataError(f"fold_in: user {uid!r}: items must be a non-empty list of item IDs")
        if values is None:
            if self._fold_in_needs_values:
                raise DataError(f"fold_in: {type(self).__name__} predicts ratings: give values= (the user's "
                                f"ratings of the items)")
            vals = np.ones(len(items), dtype=np.float64)
        else:
            vals = np.atleast_1d(np.asarray(values, dtype=np.float64))
            if vals.shape != items.shape:
                raise DataError(f"fold_in: user {uid!r}: {len(items)} items but {len(vals)} values")
            if not np.isfinite(vals).all():
                raise DataError(f"fold_in: user {uid!r}: values must be finite, got {vals[~np.isfinite(vals)][0]!r}")
        cols = self._item_cols(items)
        ok = cols >= 0
        ok[ok] = self.item_counts_[cols[ok]] > 0
        cols, vals = cols[ok].astype(np.int64), vals[ok]
        last = len(cols) - 1 - np.unique(cols[::-1], return_index=True)[1]  # the last of repeated items
        return cols[last], vals[last], items[~ok]

    def _fold_in_row(self, cols, values):  # pragma: no cover - per model
        raise ConfigError(f"{type(self).__name__} does not support fold_in")

    def _grow(self, n_users: int, n_items: int, init: bool) -> None:  # pragma: no cover - per model
        raise ConfigError(f"{type(self).__name__} cannot grow its ID maps")

    def _set_user_row(self, row: int, state) -> None:  # pragma: no cover - per model
        raise NotImplementedError

    def _extend_ids(self, users, items, init: bool) -> None:
        """Append new user/item IDs to the maps (counts 0, no seen items) and grow the model arrays."""
        m, n = self.n_users_, self.n_items_
        self.user_ids_ = _append_ids(self.user_ids_, users, "user")
        self.item_ids_ = _append_ids(self.item_ids_, items, "item")
        self.n_users_, self.n_items_ = len(self.user_ids_), len(self.item_ids_)
        self.user_counts_ = np.concatenate([self.user_counts_, np.zeros(self.n_users_ - m, self.user_counts_.dtype)])
        self.item_counts_ = np.concatenate([self.item_counts_, np.zeros(self.n_items_ - n, self.item_counts_.dtype)])
        self.seen_indptr_ = np.concatenate([self.seen_indptr_,
                                            np.full(self.n_users_ - m, self.seen_indptr_[-1], self.seen_indptr_.dtype)])
        self._lookup = None
        self._seen_data = None
        self._grow(m, n, init)

    def _add_seen(self, rows, cols) -> int:
        """Add (row, col) pairs to the seen-items CSR (indices kept sorted within each row); returns
        how many were not there yet (per row and per column: ``_new_pairs_per_row`` / ``_per_col``).

        A few touched rows (fold_in) are merged row by row and the rest copied in bulk: O(nnz)
        copying, no sort of the whole CSR; many touched rows (partial_fit) take one global sort."""
        ptr, idx = self.seen_indptr_, self.seen_indices_
        m, n = self.n_users_, self.n_items_
        keys = np.unique(np.asarray(rows, np.int64) * n + np.asarray(cols, np.int64))
        touched, starts = np.unique(keys // n, return_index=True)
        if len(touched) > 1000:
            owner = np.repeat(np.arange(m, dtype=np.int64), np.diff(ptr))
            keys_old = owner * n + idx
            fresh = keys[~np.isin(keys, keys_old)]
            allk = np.union1d(keys_old, fresh)
            out_ptr = np.zeros(m + 1, dtype=ptr.dtype)
            np.cumsum(np.bincount(allk // n, minlength=m), out=out_ptr[1:])
            out_idx = (allk % n).astype(idx.dtype)
            fresh_rows, fresh_cols = fresh // n, fresh % n
        else:
            bounds = np.append(starts, len(keys))
            pieces, counts, prev = [], np.diff(ptr).astype(np.int64), 0
            fresh_rows, fresh_cols = [], []
            for t, r in enumerate(touched):
                old_r = idx[ptr[r]:ptr[r + 1]]
                add = keys[bounds[t]:bounds[t + 1]] % n
                add = add[~np.isin(add, old_r)]
                pieces.append(idx[ptr[prev]:ptr[r]])  # the untouched rows before r, in bulk
                pieces.append(np.union1d(old_r, add).astype(idx.dtype))
                counts[r] += len(add)
                fresh_rows.append(np.full(len(add), r, np.int64))
                fresh_cols.append(add)
                prev = r + 1
            pieces.append(idx[ptr[prev]:])
            out_idx = np.concatenate(pieces)
            out_ptr = np.zeros(m + 1, dtype=ptr.dtype)
            np.cumsum(counts, out=out_ptr[1:])
            fresh_rows = np.concatenate(fresh_rows) if fresh_rows else np.zeros(0, np.int64)
            fresh_cols = np.concatenate(fresh_cols) if fresh_cols else np.zeros(0, np.int64)
        self.seen_indptr_, self.seen_indices_ = out_ptr, out_idx
        self._seen_data = None
        self._new_pairs_per_row = np.bincount(fresh_rows, minlength=m)
        self._new_pairs_per_col = np.bincount(fresh_cols, minlength=n)
        return len(fresh_rows)

    def partial_fit(self, data, epochs: int | None = None, columns: dict | None = None):
        """Continue training from the current parameters on ``data``; new users and items join.

        ``data`` (Interactions, DataFrame or scipy.sparse; original IDs) may hold users
        and items the model has never seen: the ID maps grow and their rows start as
        ``fit`` would start them; every existing parameter is kept as the starting point.
        The model then trains ``epochs`` epochs (default: the model's own) on ``data``
        alone, with no validation and no early stopping; rows (users or items) absent
        from ``data`` keep their parameters.  So pass the ratings you want the model to
        fit (old and new, for ALS), not only the new ones, unless you want the rows they
        touch refit on the new ones alone.  Counts and seen items grow by the new pairs.
        A sampled ``LatentFactorModel`` (the default ``optimizer="auto"`` on small data) has
        no optimizer to carry on: it updates every row ``data`` touches to its posterior mean
        given the new ratings, the other side fixed and its current row as the prior (with the
        precision of the ratings it was fitted on; new rows: the population prior of fold-in),
        users then items, in one exact pass (``epochs`` is not used; a pair fitted before is in
        its rows already and is not counted again, so old and new ratings or the new ones alone
        give the same update).  ML-100K fitted on 80 % of the training part, then the other 20 %
        given: test RMSE 0.8910 -> 0.8856 (a fresh fit on all 0.8814); SGD epochs from the
        summary would give 0.7526 -> 0.7578 where this gives 0.7307 on a synthetic set (fresh fit
        0.7336).
        Returns the model.

        >>> import lfopt
        >>> data = lfopt.synthetic(n_users=200, n_items=100, nnz=8000, seed=0)
        >>> old, new = lfopt.random_split(data, 0.2, seed=0)
        >>> model = lfopt.LatentFactorModel(rank=4, epochs=5).fit(old)
        >>> n_before = model.n_users_
        >>> model = model.partial_fit(data, epochs=2)
        >>> model.n_users_ >= n_before
        True
        """
        self._check_fitted()
        data = as_interactions(data, columns, "partial_fit data")
        if data.nnz == 0:
            raise DataError("partial_fit: the data holds no interaction")
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer))
                                   or epochs < 1):
            raise ConfigError(f"epochs must be a positive integer or None, got {epochs!r}")
        present_u = np.unique(data.users)
        present_i = np.unique(data.items)
        new_u = [x for x, r in zip(data.user_ids[present_u], self._user_rows(data.user_ids[present_u])) if r < 0]
        new_i = [x for x, c in zip(data.item_ids[present_i], self._item_cols(data.item_ids[present_i])) if c < 0]
        if new_u or new_i:
            self._extend_ids(new_u, new_i, init=True)
        train, _ = reindex(data, self.user_ids_, self.item_ids_, "train")
        self._partial_fit(train, epochs)
        self._add_seen(train.users, train.items)
        self.user_counts_ = self.user_counts_ + self._new_pairs_per_row.astype(self.user_counts_.dtype)
        self.item_counts_ = self.item_counts_ + self._new_pairs_per_col.astype(self.item_counts_.dtype)
        return self

    def _partial_fit(self, train: Interactions, epochs: int | None) -> None:  # pragma: no cover - per model
        raise ConfigError(f"{type(self).__name__} does not support partial_fit")

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
        if target.nnz == 0:
            raise DataError(f"none of the {test.nnz} test entries has a user and an item known to the model "
                            f"({dropped} with a user or item unseen in training): nothing to rank"
                            if test.nnz else "the test data is empty (after the threshold): nothing to rank")
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


def _plain(x):
    """A numpy scalar as the Python value (for messages: 381, not np.int64(381))."""
    return x.item() if isinstance(x, np.generic) else x


def _append_ids(id_map: np.ndarray, new, what: str) -> np.ndarray:
    """``id_map`` with the IDs ``new`` appended, keeping its kind (integers stay integers of the same
    dtype, strings stay strings); an ID of another kind or out of the dtype's range is a DataError."""
    new = list(new)
    if not new:
        return id_map
    if id_map.dtype.kind in "iu":
        out = []
        info = np.iinfo(id_map.dtype)
        for x in new:
            if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
                raise DataError(f"{what} ID {x!r}: the model's {what} IDs are integers")
            if not info.min <= int(x) <= info.max:
                raise DataError(f"{what} ID {x!r} is out of the range of the model's {what} IDs ({id_map.dtype})")
            out.append(int(x))
        return np.concatenate([id_map, np.array(out, dtype=id_map.dtype)])
    for x in new:
        if not isinstance(x, (str, np.str_)):
            raise DataError(f"{what} ID {x!r}: the model's {what} IDs are strings")
    if id_map.dtype == object:
        return np.concatenate([id_map, np.array([str(x) for x in new], dtype=object)])
    return np.concatenate([id_map, np.array([str(x) for x in new])])


def _same(a, b) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except (TypeError, ValueError):
        return a is b


class RatingRecommender(Recommender):
    """A model that predicts ratings: ``evaluate(test)`` scores RMSE/MAE of ``_predict_indices``
    (which returns the clipped predictions and the mask of pairs predicted by a fallback)."""

    _fold_in_needs_values = True

    def _predict_indices(self, rows, cols, clip: bool = True):  # pragma: no cover - per model
        raise NotImplementedError

    def _score_indices(self, rows, cols, truth, policy: str = "bias"):
        from ..eval.metrics import rating_metrics

        pred, unseen = self._predict_indices(rows, cols)
        return rating_metrics(pred, truth, unseen, policy)

    def _evaluate_rating(self, test: Interactions, unseen: str) -> dict:
        """RMSE/MAE; ``n`` is the number of pairs scored, ``n_dropped`` those left out by
        ``unseen="drop"`` (each counted once: ``n + n_dropped`` = the test size), ``n_unseen``
        the pairs with a user or item unseen in training (dropped or predicted by the fallback)."""
        if test.nnz == 0:
            raise DataError("the test data is empty: nothing to evaluate")
        if same_index_space(test, self.user_ids_, self.item_ids_):
            rows, cols = test.users, test.items
        else:
            rows, cols = self._user_rows(test.user_ids[test.users]), self._item_cols(test.item_ids[test.items])
        out = self._score_indices(rows, cols, test.values, unseen)
        if unseen == "drop" and out["n"] == 0:
            raise DataError(f"all {test.nnz} test pairs have a user or item unseen in training; with unseen='drop' "
                            f"nothing is left to score (use unseen='bias' to score them by the fallback)")
        out["n_dropped"] = test.nnz - out["n"] if unseen == "drop" else 0
        return out
