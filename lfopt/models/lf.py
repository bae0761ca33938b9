"""The latent factor objective (METHODS.md section 2) as oracles over a flat vector.

``LFObjective`` is the model's side of the objective protocol
(:mod:`lfopt.models.base`): a :class:`ParamLayout` ``[b_u (m), b_i (n), P (m, f),
Q (n, f)]`` (biases of shape (0,) when ``use_bias`` is False), a regularizer that
gives per-row L2 weights, and a backend kernel set (``backend.lf_kernels``) that
owns the data and computes every oracle in O(|K| f) without forming any
|y| x |y| matrix:

* ``loss(y)``, ``loss_grad(y, g)``: the row-weighted L2 objective and its gradient,
* ``gvp(y, v, out)``: the Gauss-Newton product G v = J^T J v + W v,
* ``gn_diag(y, out)``: the exact Gauss-Newton diagonal,
* ``step_polynomial``, ``block_preconditioner``: the bilinear model's extras,
* ``sgd_epoch``, ``batch_grad``, ``als_sweep``: the structured oracles of SGD,
  mini-batch methods and ALS.

The objective itself holds no numerics beyond the penalty: it cuts ``y`` into
blocks and passes them, with the weights, to its kernel set, so the same class
runs on every backend.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np

from ..backend import get_backend
from ..data.interactions import Interactions
from ..errors import ConfigError
from ..regularizers import L2
from .base import Objective, ParamLayout

#: what every LF kernel set computes; ``sgd_epoch`` is added when the kernel set has it
LF_CAPABILITIES = ("loss", "gradient", "gn_product", "gn_diagonal", "minibatch", "line_polynomial", "row_blocks",
                   "als_sweep")


class LFObjective(Objective):
    """Row-weighted L2 least squares of the LF model on a training set.

    ``regularizer`` gives the per-row weights (default: count-weighted
    :class:`~lfopt.regularizers.L2`); ``lam``/``lam_b`` are a shortcut for
    ``L2(lam, lam_b)``.  ``backend`` is ``"numba"`` (CPU, default), ``"torch"``
    (with ``device``) or a backend object.

    >>> import lfopt
    >>> obj = LFObjective(lfopt.synthetic(n_users=30, n_items=20, nnz=200, seed=0), rank=3, lam=0.05)
    >>> y = obj.init_params(0.1, seed=0)
    >>> obj.layout.names, obj.size == 30 + 20 + (30 + 20) * 3
    (('b_u', 'b_i', 'P', 'Q'), True)
    """

    name = "LF"

    def __init__(self, train: Interactions, rank: int, regularizer=None, use_bias: bool = True, backend="numba",
                 device: str | None = None, n_blocks: int | None = None, lam: float | None = None,
                 lam_b: float | None = None):
        if isinstance(regularizer, Real) and not isinstance(regularizer, bool):
            # legacy positional form LFObjective(train, rank, lam, lam_b, use_bias)
            regularizer, lam = None, regularizer
            if not isinstance(use_bias, bool):
                lam_b, use_bias = use_bias, (True if backend == "numba" else backend)
                backend = "numba"
        if rank is None or isinstance(rank, bool) or int(rank) != rank or rank <= 0:
            raise ConfigError(f"rank must be a positive integer, got {rank!r}")
        if regularizer is None:
            if lam is None:
                raise ConfigError("LFObjective needs a regularizer (e.g. lfopt.regularizers.L2(0.05)) or lam=...")
            regularizer = L2(lam, lam_b)
        elif lam is not None or lam_b is not None:
            raise ConfigError("give either a regularizer or lam/lam_b, not both")
        if not hasattr(regularizer, "row_weights"):
            raise ConfigError(f"regularizer must offer row_weights(user_counts, item_counts), got {regularizer!r}")
        if train.nnz == 0:
            raise ConfigError("the training set is empty")
        self.train = train
        self.regularizer = regularizer
        self.backend = get_backend(backend, device)
        self.m, self.n = train.shape
        self.f = int(rank)
        self.use_bias = bool(use_bias)
        self.mu = float(np.float32(train.values.mean())) if self.use_bias else 0.0
        self.nnz = train.nnz
        self.n_bias = self.m + self.n if self.use_bias else 0
        nb = (lambda k: (k,)) if self.use_bias else (lambda k: (0,))
        self.layout = ParamLayout((("b_u", nb(self.m)), ("b_i", nb(self.n)), ("P", (self.m, self.f)),
                                   ("Q", (self.n, self.f))))
        self.kernels = self.backend.lf_kernels(train, self.use_bias, n_blocks)
        caps = set(LF_CAPABILITIES)
        if getattr(self.kernels, "has_sgd_epoch", False):
            caps.add("sgd_epoch")
        if getattr(self.kernels, "has_batch_rows", False):
            caps.add("sparse_minibatch")
        self.capabilities = frozenset(caps)
        self.last_sse = float("nan")  # sum of squared residuals at the last loss() / loss_grad() call
        self._counts = (train.user_counts(), train.item_counts())
        visits = regularizer.visit_weights(*self._counts) if hasattr(regularizer, "visit_weights") else None
        self.set_row_weights(*regularizer.row_weights(*self._counts), visits=visits)

    # ---------------------------------------------------------------- weights
    def set_row_weights(self, wu, wi, wbu, wbi, visits=None) -> None:
        """Install L2 weights: the kernels' ``w``, the per-visit coefficients of SGD and
        mini-batches (``visits``, default ``w / n``; 0 for rows without entries, which are
        never visited) and the flat diagonal W of the penalty.

        ``wu`` is (m,) -- one coefficient per user row -- or (m, f) -- one per (user,
        dimension), the penalty then 1/2 sum_{u,d} wu[u, d] p_{u,d}^2; ``wi`` likewise (n,)
        or (n, f); the bias weights ``wbu``/``wbi`` are (m,)/(n,).  ``visits = (vu, vi, vbu,
        vbi)`` has the same shapes (each factor array independently 1-D or 2-D).  Numpy
        arrays (or anything ``np.asarray`` takes); stored as float32.
        """
        m, n, f = self.m, self.n, self.f
        cu, ci = self._counts

        def check(arrays, what):
            out = [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]
            for a, k, nm, per_dim in zip(out, (m, n, m, n), ("u", "i", "bu", "bi"), (True, True, False, False)):
                ok = a.shape == (k,) or (per_dim and a.shape == (k, f))
                if not ok:
                    want = f"({k},) or ({k}, {f})" if per_dim else f"({k},)"
                    raise ConfigError(f"{what} {what[0]}{nm} has shape {a.shape}, expected {want}")
            return out

        ws = check((wu, wi, wbu, wbi), "weights")
        if visits is None:
            visits = []
            for a, c in zip(ws, (cu, ci, cu, ci)):
                c = np.maximum(c, 1).astype(np.float64)
                visits.append((a.astype(np.float64) / (c[:, None] if a.ndim == 2 else c)).astype(np.float32))
        if len(visits) != 4:
            raise ConfigError(f"visits must be 4 arrays (vu, vi, vbu, vbi), got {len(visits)}")
        visits = check(visits, "visits")
        diag = np.empty(self.size, dtype=np.float32)
        dbu, dbi, DP, DQ = self.layout.unpack(diag)
        DP[:] = ws[0] if ws[0].ndim == 2 else ws[0][:, None]
        DQ[:] = ws[1] if ws[1].ndim == 2 else ws[1][:, None]
        if self.use_bias:
            dbu[:] = ws[2]
            dbi[:] = ws[3]
        be = self.backend
        self.row_weights = tuple(ws)  # numpy, for reports and the regularizer
        self._w = tuple(be.asarray(a) for a in ws)
        self._v = tuple(be.asarray(a) for a in visits)
        self._reg_diag = be.asarray(diag)

    def reg_diagonal(self):
        """The regularizer's diagonal W (flat, |y| floats): wu[u] on p_u's entries, wbu[u] on b_u, ..."""
        return self._reg_diag

    def _wdot(self, a, b) -> float:
        wdot = getattr(self.backend, "weighted_dot", None)
        if wdot is not None:
            return wdot(self._reg_diag, a, b)
        return self.backend.dot(self._reg_diag * a, b)

    def penalty(self, y) -> float:
        """1/2 y . W y (float64)."""
        return 0.5 * self._wdot(y, y)

    # ----------------------------------------------------------------- params
    def init_params(self, scale: float = 0.1, seed: int = 0):
        """Biases 0, factors ~ N(0, scale^2 / f) so that initial predictions are O(scale^2).

        Drawn with numpy, so every backend starts from the same numbers.
        """
        rng = np.random.default_rng(seed)
        y = np.zeros(self.size, dtype=np.float32)
        _, _, P, Q = self.layout.unpack(y)
        std = scale / np.sqrt(self.f)
        P[:] = rng.normal(0.0, std, P.shape)
        Q[:] = rng.normal(0.0, std, Q.shape)
        if not self.use_bias:
            # The plain model p.q has no mean term: start near the mean rating.
            level = np.sqrt(max(float(self.train.values.mean()), 0.0) / self.f)
            P += level
            Q += level
        return self.backend.asarray(y)

    # ---------------------------------------------------------------- oracles
    def loss(self, y) -> float:
        """L(y) = 1/2 sum e^2 + 1/2 y . W y (float64)."""
        self.last_sse = self.kernels.sse(self.mu, self.unpack(y))
        return 0.5 * self.last_sse + self.penalty(y)

    def loss_grad(self, y, g) -> float:
        """Fill ``g`` with the gradient at ``y``; return the loss."""
        self.last_sse = self.kernels.residual_grad(self.mu, self.unpack(y), self._w, self.unpack(g))
        return 0.5 * self.last_sse + self.penalty(y)

    def gvp(self, y, v, out):
        """Gauss-Newton product ``out = G(y) v`` by the hidden mapping (two sweeps of K)."""
        self.kernels.gvp(self.unpack(y), self.unpack(v), self._w, self.unpack(out))
        return out

    def gn_diag(self, y, out):
        """Exact diagonal of G(y) (including the regularizer's diagonal)."""
        self.kernels.gn_diag(self.unpack(y), self._w, self.unpack(out))
        return out

    def step_polynomial(self, y, direction) -> np.ndarray:
        """Coefficients (c0..c4, lowest first) of the exact quartic L(y + t direction) in t."""
        ee, es, ec, ss, sc, cc = self.kernels.line_sums(self.mu, self.unpack(y), self.unpack(direction))
        wy_d = self._wdot(y, direction)
        w_dd = self._wdot(direction, direction)
        return np.array([0.5 * ee + self.penalty(y), -es + wy_d, 0.5 * (ss - 2 * ec) + 0.5 * w_dd, sc, 0.5 * cc])

    def block_preconditioner(self, y, shift: float = 0.0, diag_scale: float = 1.0):
        """A function ``apply(r, out)`` computing M^-1 r, M the block diagonal of G(y) + shift I
        (with the diagonal of G first multiplied by ``diag_scale``).

        Each block is one user's (or item's) factors and bias: the ALS normal
        matrices.  Costs about one ALS sweep to build, O(|y| f) to apply.
        """
        handle = self.kernels.gn_blocks(self.unpack(y), self._w, float(shift), float(diag_scale))

        def apply(r, out):
            self.kernels.block_solve(handle, self.unpack(r), self.unpack(out))
            return out

        return apply

    # ---------------------------------------------------- structured oracles
    def sgd_epoch(self, y, lr: float, seed: int, reshuffle: bool = False) -> float:
        """One epoch of per-entry SGD (in place); returns the epoch's mean squared residual.

        Entries are stored shuffled within their DSGD block once; ``reshuffle``
        draws a fresh order every epoch (slower: scattered reads).
        """
        if "sgd_epoch" not in self.capabilities:
            self.require(("sgd_epoch",), by="sgd_epoch()")
        return self.kernels.sgd_epoch(self.mu, self.unpack(y), lr, self._v, seed, reshuffle) / self.nnz

    def batch_grad(self, y, batch, g, diag=None, scale: float | None = None) -> float:
        """``scale`` times the batch sums of the gradient (and GN diagonal) into g (diag).

        ``batch`` holds positions of training entries (a backend index array).  The
        default ``scale = |K| / |B|`` gives unbiased estimates of the full gradient and
        diagonal; ``scale = 1`` the summed gradient of mini-batch SGD.  Returns the
        batch's SSE.
        """
        if scale is None:
            scale = self.nnz / len(batch)
        return self.kernels.batch_grad(self.mu, self.unpack(y), self._v, batch, scale, self.unpack(g),
                                       None if diag is None else self.unpack(diag))

    def batch_grad_rows(self, y, batch, g, diag=None, scale: float | None = None):
        """:meth:`batch_grad` written only on the rows the batch touches, in O(|B| f).

        Returns ``(sse, (starts, lengths))``: the segments of the flat vector that hold the
        batch's users' (b_u, P rows) and items' (b_i, Q rows) entries; g (diag) is exact
        there and left as it was everywhere else (what a lazy, row-sparse step reads).
        """
        if "sparse_minibatch" not in self.capabilities:
            self.require(("sparse_minibatch",), by="batch_grad_rows()")
        if scale is None:
            scale = self.nnz / len(batch)
        sse, users, items = self.kernels.batch_grad_rows(self.mu, self.unpack(y), self._v, batch, scale,
                                                         self.unpack(g), None if diag is None else self.unpack(diag))
        lay, f = self.layout, self.f
        starts, lengths = [], []
        blocks = (("P", users, f), ("Q", items, f))
        if self.use_bias:
            blocks += (("b_u", users, 1), ("b_i", items, 1))
        for name, rows, width in blocks:
            starts.append(lay.offset(name) + rows.astype(np.int64) * width)
            lengths.append(np.full(len(rows), width, dtype=np.int64))
        return sse, (np.concatenate(starts), np.concatenate(lengths))

    def als_sweep(self, y) -> None:
        """One ALS epoch: exact update of all users, then of all items (in place)."""
        self.kernels.als_sweep(self.mu, self.unpack(y), self._w)

    # ------------------------------------------------------------- prediction
    def predict(self, y, rows, cols):
        return self.kernels.predict(self.mu, self.unpack(y), rows, cols)

    def train_metrics(self, y, loss: float) -> dict:
        ok = math.isfinite(loss) and math.isfinite(self.last_sse)
        return {"train_rmse": math.sqrt(self.last_sse / self.nnz) if ok else math.nan}
