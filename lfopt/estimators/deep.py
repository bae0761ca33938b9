"""``DeepMF``: rating prediction with the deep factorization r_ui ~ mu + b_u + b_i + p_u W_1..W_L q_i^T.

The estimator is :class:`~lfopt.estimators.lf.LatentFactorModel` with the objective
:class:`~lfopt.models.deep.DeepLFObjective` (METHODS.md section 5): the same data input,
standardization, early stopping on a held-out part, refit, save/load and fold-in.  For
prediction and recommendation the model is the LF model with the end-to-end user
factors ``P A`` (A = W_1 ... W_L), which :meth:`DeepMF.factors` returns.
"""

from __future__ import annotations

import numpy as np

from ..data.interactions import Interactions
from ..errors import ConfigError
from .base import register_model
from .lf import _FIXED as _LF_FIXED
from .lf import LatentFactorModel

_FIXED = _LF_FIXED + ("depth", "lam_w", "flatness", "init")


@register_model("deep_mf")
class DeepMF(LatentFactorModel):
    """Deep matrix factorization r_ui ~ mu + b_u + b_i + p_u W_1 ... W_L q_i^T.

    Parameters
    ----------
    rank : number of latent dimensions f (every layer W_l is f x f).
    depth : number of layers L (0: the LF model, exactly).
    optimizer : ``"adam"``, ``"sgd"``, ``"adago"``, ``"slf"`` or ``"sslf"`` (not ALS or
        Gibbs sampling: the rows of the deep model have no closed-form solve).
    lam_w : per-visit decay of the layers toward the identity: the penalty
        ``lam_w |K| / 2 sum_l ||W_l - I||^2`` (|K| training entries).
    flatness : beta >= 0, the weight of the flatness penalty beta tr(J^T J) (the trace of the
        Gauss-Newton matrix, exact per entry; see :mod:`lfopt.models.deep`).
    init : ``"identity"`` (default: the model starts as the LF model with the same P, Q) or
        ``"random"`` (N(0, 1/f) layers).
    The other parameters are :class:`~lfopt.estimators.lf.LatentFactorModel`'s (``lam``,
    ``lam0``, biases, ``standardize``, early stopping, ``**optimizer_options``); ``lam="learn"``
    and ``preset="accurate"`` are not available.

    Examples
    --------
    >>> import lfopt
    >>> from lfopt.estimators.deep import DeepMF
    >>> data = lfopt.synthetic(n_users=300, n_items=200, nnz=20000, seed=0)
    >>> train, test = lfopt.random_split(data, 0.1, seed=0)
    >>> model = DeepMF(rank=5, depth=2, epochs=10, lam=0.02, lam0=0.0).fit(train)
    >>> model.evaluate(test)["rmse"] < 1.15 * data.meta["noise_floor"]  # the generator's noise level
    True
    >>> model.layers().shape, model.factors()[2].shape  # W (L, f, f) and the end-to-end P A
    ((2, 5, 5), (300, 5))
    """

    _fallback_words = "predicted from the mean and biases"

    def __init__(self, rank: int = 32, depth: int = 1, optimizer: str = "adam", epochs: int = 40,
                 lam: float = 0.05, lam_b: float | None = 0.0, lam0: float = 6.0, lam0_b: float | None = 3.0,
                 lam_w: float = 0.05, flatness: float = 0.0, init: str = "identity", use_bias: bool = True,
                 init_scale: float = 0.1, seed: int = 0, patience: int | None = 5,
                 validation: float | None = 0.1, refit: bool = True, standardize: bool = True,
                 time_budget: float | None = None, verbose: bool = False, backend: str = "numba",
                 **optimizer_options):
        self.depth = depth
        self.lam_w = lam_w
        self.flatness = flatness
        self.init = init
        super().__init__(rank=rank, optimizer=optimizer, epochs=epochs, lam=lam, lam_b=lam_b, lam0=lam0,
                         lam0_b=lam0_b, use_bias=use_bias, init_scale=init_scale, seed=seed, patience=patience,
                         validation=validation, refit=refit, standardize=standardize, time_budget=time_budget,
                         verbose=verbose, backend=backend, **optimizer_options)

    # ------------------------------------------------------------ parameters
    def _check_params(self):
        super()._check_params()
        d = self.depth
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0:
            raise ConfigError(f"depth must be an integer >= 0, got {d!r}")
        for name in ("lam_w", "flatness"):
            v = getattr(self, name)
            if (isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer))
                    or not np.isfinite(v) or v < 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.init not in ("identity", "random"):
            raise ConfigError(f"init must be 'identity' or 'random', got {self.init!r}")
        if self.lam == "learn":
            raise ConfigError("DeepMF does not learn lam (lam='learn'); give a number")
        if str(self.optimizer).lower() in ("als", "gibbs", "auto"):
            raise ConfigError(f"DeepMF cannot train with optimizer={self.optimizer!r} (no closed-form row "
                              f"solve for the deep model); use adam, sgd, adago, slf or sslf")

    def set_params(self, **params) -> "DeepMF":
        fixed = {k: v for k, v in params.items() if k in _FIXED}
        valid = set(self._param_names())
        bad = [k for k in fixed if k not in valid]
        if bad:
            raise ConfigError(f"DeepMF has no parameter {bad[0]!r}")
        for k, v in fixed.items():
            setattr(self, k, v)
        self.optimizer_options = {**self.optimizer_options, **{k: v for k, v in params.items() if k not in _FIXED}}
        return self

    # ------------------------------------------------------------------ fit
    def _make_objective(self, train: Interactions, valid: Interactions | None = None, fitted=None,
                        rank: int | None = None):
        from ..models.deep import DeepLFObjective
        from ..regularizers import L2

        reg = fitted if fitted is not None else L2(self.lam, self.lam_b, lam0=self.lam0, lam0_b=self.lam0_b)
        self.rank_ = int(self.rank)  # no preset here: the rank fitted is rank
        return DeepLFObjective(train, self.rank, depth=int(self.depth), regularizer=reg, use_bias=self.use_bias,
                               backend=self.backend, lam_w=float(self.lam_w), flatness=float(self.flatness),
                               init=self.init)

    def _layers(self, params) -> np.ndarray:
        return self.layout_.unpack(params, "W")[0]

    def _scale_factors(self, out: np.ndarray, scale: float) -> np.ndarray:
        """Biases x scale, P and Q x sqrt(scale) (so that P A Q^T scales by ``scale``); W unchanged."""
        if scale != 1.0:
            bu, bi, P, Q = self.layout_.unpack(out, "b_u", "b_i", "P", "Q")
            bu *= np.float32(scale)
            bi *= np.float32(scale)
            P *= np.float32(np.sqrt(scale))
            Q *= np.float32(np.sqrt(scale))
        return out

    def _to_raw(self, params) -> np.ndarray:
        out = np.array(params, dtype=np.float32, copy=True)
        return self._scale_factors(out, getattr(self, "scale_", 1.0))

    def _from_raw(self, params) -> np.ndarray:
        out = np.array(params, dtype=np.float32, copy=True)
        s = float(getattr(self, "scale_", 1.0))
        return self._scale_factors(out, 1.0 / s) if s != 1.0 else out

    # --------------------------------------------------------------- factors
    def end_to_end(self) -> np.ndarray:
        """A = W_1 ... W_L (float64; the identity at depth 0)."""
        self._check_fitted()
        A = np.eye(int(self.rank))
        for W in self._layers(self.params_):
            A = A @ W.astype(np.float64)
        return A

    def factors(self):
        """``(b_u, b_i, P A, Q)``: the LF factors of the same predictions (A = W_1 ... W_L)."""
        self._check_fitted()
        bu, bi, P, Q = self.layout_.unpack(self.params_, "b_u", "b_i", "P", "Q")
        if int(self.depth) == 0:
            return bu, bi, P, Q
        cached = getattr(self, "_pa_cache", None)
        if cached is not None and cached[0] is self.params_ and np.array_equal(cached[1], self._layers(self.params_)):
            return bu, bi, cached[2], Q
        from ..models.deep import one_blas_thread

        with one_blas_thread():
            PA = (P @ self.end_to_end().astype(np.float32)).astype(np.float32)
        self._pa_cache = (self.params_, self._layers(self.params_).copy(), PA)
        return bu, bi, PA, Q

    def layers(self) -> np.ndarray:
        """The layers W (L, f, f) (a view of the fitted parameters)."""
        self._check_fitted()
        return self._layers(self.params_)

    @property
    def n_samples_(self) -> int:
        return 0

    # ----------------------------------------------------------------- files
    def _set_state(self, arrays: dict, meta: dict) -> None:
        from ..errors import ModelFileError
        from ..models.base import ParamLayout

        self.params_ = arrays["params"]
        self.mu_ = float(meta["mu"])
        self.global_mean_ = float(meta["global_mean"])
        self.rating_range_ = tuple(meta["rating_range"])
        m, n, f, L = self.n_users_, self.n_items_, int(self.rank), int(self.depth)
        self.rank_ = f
        nb = (m, n) if self.use_bias else (0, 0)
        self.layout_ = ParamLayout((("b_u", (nb[0],)), ("b_i", (nb[1],)), ("P", (m, f)), ("Q", (n, f)),
                                    ("W", (L, f, f))))
        if self.params_.shape != (self.layout_.size,):
            raise ModelFileError("damaged lfopt model file (parameter vector has the wrong size)")
        self.posterior_ = None
        scale = meta.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not np.isfinite(scale) or scale <= 0:
            raise ModelFileError(f"damaged lfopt model file (state 'scale' must be a number > 0, found {scale!r})")
        self.scale_ = float(scale)

    # -------------------------------------------------- fold-in / partial_fit
    def _fold_in_row(self, cols, values):
        """The ridge solve of a new user's p_u with everything else fixed: r ~ b_u + p_u . (A q_i)
        is linear in (p_u, b_u), the LF fold-in with Q A^T in place of Q (the same penalty on p_u)."""
        s = float(getattr(self, "scale_", 1.0))
        rs = np.float64(np.sqrt(s))
        wx, wb = self._fold_in_weights(len(cols))
        target = np.asarray(values, dtype=np.float64) / s - (self.mu_ / s if self.use_bias else 0.0)
        _, bi, _, Q = self.layout_.unpack(self.params_, "b_u", "b_i", "P", "Q")
        Qt = Q.astype(np.float64) @ self.end_to_end().T
        x, b = self._ridge_row(Qt / rs, bi / s, cols, target, wx, wb)
        return b * s, x * rs, None

    def _set_user_row(self, row: int, state) -> None:
        b, x, _ = state
        bu, P = self.layout_.unpack(self.params_, "b_u", "P")
        P[row] = x
        if self.use_bias:
            bu[row] = b
        self._pa_cache = None

    def _grow(self, n_users: int, n_items: int, init: bool) -> None:
        """Extend b_u, b_i, P, Q to the current ``n_users_``/``n_items_`` (as LatentFactorModel), W kept."""
        W = self._layers(self.params_).copy()
        L, f = W.shape[0], int(self.rank)
        from ..models.base import ParamLayout

        old = self.layout_
        self.layout_ = ParamLayout(old.blocks[:4])
        self.params_ = self.params_[:self.layout_.size].copy()
        super()._grow(n_users, n_items, init)
        self.layout_ = ParamLayout(self.layout_.blocks + (("W", (L, f, f)),))
        self.params_ = np.concatenate([self.params_, W.ravel()]).astype(np.float32)
        self._pa_cache = None

    def _partial_fit(self, train: Interactions, epochs: int | None) -> None:
        super()._partial_fit(train, epochs)
        self._pa_cache = None
