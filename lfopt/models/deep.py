"""Deep matrix factorization (METHODS.md section 5) with an optional flatness penalty.

The model is ``r_ui = mu + b_u + b_i + p_u W_1 ... W_L q_i^T`` with L square f x f
layers between the two embeddings (L = 0 is the LF model of section 2).  The flat
parameter vector is laid out ``[b_u (m), b_i (n), P (m, f), Q (n, f), W (L, f, f)]``.

No new sparse kernel: with ``A = W_1 ... W_L`` the deep model *is* the LF model on
``(P~ = P A, Q)``, so every oracle is the LF kernel set's (``backend.lf_kernels``)
evaluated at ``(b, P~, Q)`` plus dense f x f algebra.  The Jacobian of the deep model
factors as ``J_deep = J_LF T`` with the linear map

    T(db, dP, dQ, dW) = (db, dP A + P dA, dQ),   dA = sum_l W_1 .. dW_l .. W_L,

so ``G v = T^T J_LF^T J_LF T v`` (one LF Gauss-Newton product between two O(m f^2)
transforms) and the gradient is ``T^T`` of the LF gradient at ``(P~, Q)``.  The LF
kernels are called with *zero* weights on the P~ side (its penalty is on P, added here).
The exact Gauss-Newton diagonal: P's is LF's with Q~ = Q A^T in place of Q, Q's is LF's
at P~, and for layer l, entry (a, b): sum_K x_a^2 z_b^2 with x = p_u W_1..W_{l-1} and
z = W_{l+1}..W_L q_i^T, i.e. (X o X)^T D with D[u] = sum_{i in K(u)} z_i o z_i (LF's
P-side diagonal with Q := Z): one sweep of K per layer.

Regularization
--------------
* P, Q and the biases: the per-row L2 weights of the regularizer (default the
  count-weighted :class:`~lfopt.regularizers.L2`), exactly as the LF objective;
* the layers: ``lam_w |K| / 2 sum_l ||W_l - I||_F^2``, a decay toward the identity with
  a count weight (every entry "visits" every layer, so ``lam_w`` is a per-visit
  coefficient like ``lam``; mini-batches add ``lam_w (W - I)`` per entry).  Toward I,
  not 0: identity-initialized layers (the default ``init="identity"``) start at zero
  penalty and the depth-L model starts as the LF model with the same P, Q (the same
  function, the same initial loss); a decay toward 0 would pull the end-to-end matrix
  toward the zero saddle, where small random layers already start (their gradient
  vanishes like t^(L+1) at the origin).

Flatness penalty (Gatmiry et al. 2023)
--------------------------------------
``flatness = beta`` adds ``beta tr(J^T J)`` with ``tr(J^T J) = sum_K ||d r_ui / d theta||^2``,
computed exactly per entry by the hidden mapping.  Seeing the model as the chain of
factors ``p_u, W_1, ..., W_L, q_i^T`` (positions j = 0 .. L + 1), the derivative with
respect to the factor at position j is ``x^j (x) z^j`` with ``x^j = p_u W_1..W_{j-1}``
(1 for j = 0) and ``z^j = W_{j+1}..W_L q_i^T`` (1 for j = L + 1), so

    tr(J^T J) = 2 |K| [biases] + sum_{j=0}^{L+1} sum_K ||x_u^j||^2 ||z_i^j||^2.

For L = 0 this is ``sum_u n_u ||p_u||^2 + sum_i n_i ||q_i||^2 + 2|K|``: the count-weighted
L2 with ``lam = 2 beta`` plus a constant (METHODS.md section 2).  Its gradient is by hand
(O(L (m + n) f^2 + L |K|)).  In Gauss-Newton products the penalty's Hessian is replaced
by its **exact diagonal** (F is a quadratic in each factor alone, so the diagonal is that
of the per-factor blocks, non-negative): exact for L = 0, where the Hessian is diagonal,
a Jacobi approximation for L >= 1 (its off-diagonal, possibly indefinite, part is left
out, keeping G positive semi-definite).  ``gn_diag`` includes the same diagonal.

Mini-batches touch only the batch's rows: P~ is formed for the |U_B| users of the batch
(O(|B| f^2) per batch, never O(m f^2)), on a compact copy of the batch that the LF
mini-batch kernel sweeps; the flatness penalty, a sum over entries, is estimated on the
batch the same way.

``line_polynomial``: L(y + t d) is a polynomial of degree 2L + 4 in t; its data part comes
from L + 2 hidden-mapping sweeps (the coefficients of the prediction along the line), the
flatness part from the same factor-chain polynomials.  ``row_blocks``: the LF per-row
blocks at (P~, Q~) for b, P, Q (the exact Gauss-Newton blocks of each user's and item's
row), Jacobi on the layers.
"""

from __future__ import annotations

import contextlib
import functools
import math
from numbers import Real

import numpy as np

from ..data.interactions import Interactions
from ..errors import ConfigError
from .base import Objective, ParamLayout
from .lf import LFObjective

#: what the deep objective offers (``line_polynomial``: see ``DeepLFObjective.step_polynomial``)
DEEP_CAPABILITIES = ("loss", "gradient", "gn_product", "gn_diagonal", "minibatch", "line_polynomial",
                     "row_blocks")

INITS = ("identity", "random")


# ------------------------------------------------------------- f x f algebra
_CONTROLLER = [None, False]  # [threadpoolctl.ThreadpoolController or None, looked up]


@contextlib.contextmanager
def one_blas_thread():
    """BLAS limited to one thread (threadpoolctl, when installed) for the dense algebra.

    The products here are small (f x f, or m x f times f x f); a multi-threaded OpenBLAS
    synchronizing its threads on a busy machine made them up to 500x slower (measured:
    P^T X with 3000 x 64 operands, 148 ms on two busy cores against 0.24 ms on one thread).
    """
    if not _CONTROLLER[1]:
        _CONTROLLER[1] = True
        try:
            from threadpoolctl import ThreadpoolController

            _CONTROLLER[0] = ThreadpoolController()
        except Exception:  # pragma: no cover - threadpoolctl is a dependency
            _CONTROLLER[0] = None
    ctl = _CONTROLLER[0]
    if ctl is None:
        yield
        return
    with ctl.limit(limits=1, user_api="blas"):
        yield


def _single_blas(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with one_blas_thread():
            return fn(*args, **kwargs)

    return wrapper


def _prod(W, a: int, b: int, f: int) -> np.ndarray:
    """W_a W_{a+1} ... W_b (1-indexed layers, float64); the identity when a > b."""
    out = np.eye(f)
    for l in range(a, b + 1):
        out = out @ W[l - 1]
    return out


def _chain_grad(W, a: int, b: int, G: np.ndarray, gW: np.ndarray) -> None:
    """Add to gW[l - 1] (l = a..b) the gradient of <G, W_a ... W_b> w.r.t. W_l:
    (W_a..W_{l-1})^T G (W_{l+1}..W_b)^T."""
    f = G.shape[0]
    for l in range(a, b + 1):
        gW[l - 1] += _prod(W, a, l - 1, f).T @ G @ _prod(W, l + 1, b, f).T


def _poly_chain(W, dW, a: int, b: int, f: int) -> list:
    """Coefficients (lowest first) of prod_{l=a..b} (W_l + t dW_l), f x f float64 matrices."""
    coef = [np.eye(f)]
    for l in range(a, b + 1):
        w, d = W[l - 1], dW[l - 1]
        new = [np.zeros((f, f)) for _ in range(len(coef) + 1)]
        for k, c in enumerate(coef):
            new[k] += c @ w
            new[k + 1] += c @ d
        coef = new
    return coef


def _rows_poly(X0, X1, mats) -> list:
    """Coefficients of (X0 + t X1) sum_k t^k mats[k] as a list of float32 (rows, f) arrays."""
    out = []
    for k in range(len(mats) + 1):
        acc = None
        if k < len(mats):
            acc = X0 @ mats[k].astype(np.float32)
        if k >= 1:
            term = X1 @ mats[k - 1].astype(np.float32)
            acc = term if acc is None else acc + term
        out.append(acc)
    return out


def _sq_poly(coefs) -> np.ndarray:
    """(rows, 2 deg + 1) float64 coefficients of the row norms ||sum_k t^k X_k||^2."""
    deg = len(coefs) - 1
    rows = coefs[0].shape[0]
    out = np.zeros((rows, 2 * deg + 1))
    for j, Xj in enumerate(coefs):
        for k in range(j, len(coefs)):
            d = np.einsum("ij,ij->i", Xj, coefs[k], dtype=np.float64)
            out[:, j + k] += d if j == k else 2.0 * d
    return out


def _rowsq(X) -> np.ndarray:
    return np.einsum("ij,ij->i", X, X, dtype=np.float64)


# ---------------------------------------------------------- flatness penalty
@_single_blas
def flatness_terms(P, Q, W, rows, cols, want_grad: bool = True, want_diag: bool = False):
    """The factor part of tr(J^T J) of the deep model on the entries (rows[k], cols[k]):

    F = sum_k sum_{j=0}^{L+1} ||x^j_{rows[k]}||^2 ||z^j_{cols[k]}||^2

    (see the module docstring; the biases' constant 2 |K| is not included).  ``P`` (m, f)
    and ``Q`` (n, f) are float32, ``W`` (L, f, f); ``rows``/``cols`` index them.  Returns
    ``(F, grads, diags)`` with ``grads = (gP, gQ, gW)`` (float32, float32, float64) or None,
    and ``diags = (dP, dQ, dW)``, the exact diagonal of the Hessian of F, or None.
    Cost O(L (m + n) f^2 + L |K| + L^3 f^3).
    """
    m, f = P.shape
    n = Q.shape[0]
    L = W.shape[0]
    Wd = np.asarray(W, dtype=np.float64)
    rows = np.asarray(rows)
    cols = np.asarray(cols)
    nu = np.bincount(rows, minlength=m).astype(np.float64)
    ni = np.bincount(cols, minlength=n).astype(np.float64)
    X, Z = {}, {}  # x^j = P B_j (j >= 1), z^j = Q C_j^T (j <= L)
    B, C = {}, {}
    s, t = {}, {}
    total = 0.0
    for j in range(L + 2):
        if j >= 1:
            B[j] = _prod(Wd, 1, j - 1, f)
            X[j] = P if j == 1 else P @ B[j].astype(np.float32)
            a = _rowsq(X[j])
        if j <= L:
            C[j] = _prod(Wd, j + 1, L, f)
            Z[j] = Q if j == L else Q @ C[j].T.astype(np.float32)
            c = _rowsq(Z[j])
        # s_u = sum_{k: rows[k] = u} c_{cols[k]},  t_i = sum_{k: cols[k] = i} a_{rows[k]}
        s[j] = np.bincount(rows, weights=c[cols], minlength=m) if j <= L else nu
        t[j] = np.bincount(cols, weights=a[rows], minlength=n) if j >= 1 else ni
        total += float(np.dot(a, s[j])) if j >= 1 else float(np.dot(ni, c))
    grads = diags = None
    if want_grad:
        gP = np.zeros((m, f), dtype=np.float32)
        gQ = np.zeros((n, f), dtype=np.float32)
        gW = np.zeros((L, f, f))
        for j in range(L + 2):
            if j >= 1:  # d/dP and d/dB_j of sum_u s_u ||p_u B_j||^2
                SX = X[j] * s[j].astype(np.float32)[:, None]
                gP += 2.0 * (SX if j == 1 else SX @ B[j].T.astype(np.float32))
                if j >= 2:
                    _chain_grad(Wd, 1, j - 1, 2.0 * (P.T @ SX).astype(np.float64), gW)
            if j <= L:  # d/dQ and d/dC_j of sum_i t_i ||C_j q_i^T||^2
                TZ = Z[j] * t[j].astype(np.float32)[:, None]
                gQ += 2.0 * (TZ if j == L else TZ @ C[j].astype(np.float32))
                if j <= L - 1:
                    _chain_grad(Wd, j + 1, L, 2.0 * (TZ.T @ Q).astype(np.float64), gW)
        grads = (gP, gQ, gW)
    if want_diag:
        dP = np.zeros((m, f))
        dQ = np.zeros((n, f))
        dW = np.zeros((L, f, f))
        for j in range(L + 2):
            if j >= 1:
                dP += 2.0 * s[j][:, None] * (B[j] ** 2).sum(axis=1)[None, :]
            if j <= L:
                dQ += 2.0 * t[j][:, None] * (C[j] ** 2).sum(axis=0)[None, :]
        for l in range(1, L + 1):
            X2 = X[l].astype(np.float64) ** 2
            Z2 = Z[l].astype(np.float64) ** 2
            for j in range(l + 1, L + 2):  # x^j = x^l W_l M, M = W_{l+1}..W_{j-1}
                M = _prod(Wd, l + 1, j - 1, f)
                dW[l - 1] += 2.0 * np.outer(X2.T @ s[j], (M ** 2).sum(axis=1))
            for j in range(0, l):  # z^j = N W_l z^l, N = W_{j+1}..W_{l-1}
                N = _prod(Wd, j + 1, l - 1, f)
                dW[l - 1] += 2.0 * np.outer((N ** 2).sum(axis=0), Z2.T @ t[j])
        diags = (dP.astype(np.float32), dQ.astype(np.float32), dW)
    return total, grads, diags


@_single_blas
def flatness_polynomial(P, dP, Q, dQ, W, dW, rows, cols) -> np.ndarray:
    """Coefficients (lowest first, float64) of F(y + t d) (see :func:`flatness_terms`), a
    polynomial of degree 2 (L + 1) in t."""
    m, f = P.shape
    n = Q.shape[0]
    L = W.shape[0]
    Wd = np.asarray(W, dtype=np.float64)
    dWd = np.asarray(dW, dtype=np.float64)
    coef = np.zeros(2 * L + 3)
    rows = np.asarray(rows)
    cols = np.asarray(cols)
    for j in range(L + 2):
        if j >= 1:
            a = _sq_poly(_rows_poly(P, dP, _poly_chain(Wd, dWd, 1, j - 1, f)))
        else:
            a = np.ones((m, 1))
        if j <= L:
            Ct = [c.T for c in _poly_chain(Wd, dWd, j + 1, L, f)]
            c = _sq_poly(_rows_poly(Q, dQ, Ct))
        else:
            c = np.ones((n, 1))
        for q in range(c.shape[1]):
            sq = np.bincount(rows, weights=c[cols, q], minlength=m)
            coef[q:q + a.shape[1]] += a.T @ sq
    return coef


# ------------------------------------------------------------------ objective
class DeepLFObjective(Objective):
    """Row-weighted L2 least squares of the deep LF model (see the module docstring).

    ``rank`` f, ``depth`` L >= 0 layers, ``regularizer`` (or ``lam``/``lam_b``) as for
    :class:`~lfopt.models.lf.LFObjective`, ``lam_w`` the per-visit decay of the layers
    toward the identity (default: ``lam``, or 0 without it), ``flatness`` beta >= 0 the
    weight of tr(J^T J), ``init`` the layers' start (``"identity"`` or ``"random"``:
    N(0, 1/f) entries).  Runs on the numba backend (the mini-batch and line oracles call
    its kernels directly); depth 0 is the LF objective exactly (every oracle delegated).

    >>> import lfopt
    >>> obj = DeepLFObjective(lfopt.synthetic(n_users=30, n_items=20, nnz=200, seed=0), rank=3, depth=2,
    ...                       lam=0.05)
    >>> obj.layout.names, obj.layout.shape("W")
    (('b_u', 'b_i', 'P', 'Q', 'W'), (2, 3, 3))
    """

    name = "deep LF"

    def __init__(self, train: Interactions, rank: int, depth: int = 1, regularizer=None, use_bias: bool = True,
                 backend="numba", device: str | None = None, lam: float | None = None,
                 lam_b: float | None = None, lam_w: float | None = None, flatness: float = 0.0,
                 init: str = "identity", n_blocks: int | None = None):
        if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 0:
            raise ConfigError(f"depth must be an integer >= 0, got {depth!r}")
        if init not in INITS:
            raise ConfigError(f"init must be one of {INITS}, got {init!r}")
        for nm, v in (("lam_w", lam_w), ("flatness", flatness)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v) or v < 0):
                raise ConfigError(f"{nm} must be a finite number >= 0, got {v!r}")
        self.lf = LFObjective(train, rank, regularizer=regularizer, use_bias=use_bias, backend=backend,
                              device=device, n_blocks=n_blocks, lam=lam, lam_b=lam_b)
        if depth > 0 and self.lf.backend.name != "numba":
            raise ConfigError(f"DeepLFObjective with depth={depth} runs on the numba backend only, "
                              f"got backend={self.lf.backend.name!r}")
        self.train = train
        self.regularizer = self.lf.regularizer
        self.backend = self.lf.backend
        self.kernels = self.lf.kernels
        self.m, self.n, self.f = self.lf.m, self.lf.n, self.lf.f
        self.depth = int(depth)
        self.use_bias = self.lf.use_bias
        self.nnz = train.nnz
        self.n_bias = self.lf.n_bias
        if lam_w is None:
            lam_w = getattr(self.regularizer, "lam", 0.0) or 0.0
        self.lam_w = float(lam_w)
        self.flatness = float(flatness)
        self.init = init
        L, f = self.depth, self.f
        self.layout = ParamLayout(self.lf.layout.blocks + (("W", (L, f, f)),))
        self._n4 = self.lf.size
        self.capabilities = frozenset(DEEP_CAPABILITIES)
        self.last_sse = float("nan")
        self._cache_y = None
        self._cache = {}
        self._eye = np.eye(f, dtype=np.float32)

    @property
    def mu(self) -> float:
        """The global mean (the LF objective's; setting it sets both)."""
        return self.lf.mu

    @mu.setter
    def mu(self, value: float) -> None:
        self.lf.mu = value

    # ----------------------------------------------------------- helpers
    @property
    def w_layers(self) -> float:
        """The layers' L2 coefficient: lam_w |K|."""
        return self.lam_w * self.nnz

    def _split(self, y):
        return self.layout.unpack(y)

    def _state(self, y) -> dict:
        """Quantities derived from y (A, P~, ...), recomputed only when y changed (CG calls the
        Gauss-Newton product many times at one point)."""
        if self._cache_y is not None and np.array_equal(self._cache_y, y):
            return self._cache
        if self._cache_y is None or self._cache_y.shape != y.shape:
            self._cache_y = np.empty_like(y)
        self._cache_y[:] = y
        _, _, P, Q, W = self._split(y)
        f = self.f
        A = _prod(np.asarray(W, dtype=np.float64), 1, self.depth, f)
        A32 = A.astype(np.float32)
        self._cache = {"A": A, "A32": A32, "Pt": np.ascontiguousarray(P @ A32)}
        return self._cache

    def _Qt(self, y, st) -> np.ndarray:
        if "Qt" not in st:
            _, _, _, Q, _ = self._split(y)
            st["Qt"] = np.ascontiguousarray(Q @ st["A32"].T)
        return st["Qt"]

    def _flat_diag(self, y, st):
        """beta x the exact diagonal of the flatness penalty's Hessian, as (dP, dQ, dW)."""
        if "flat_diag" not in st:
            _, _, P, Q, W = self._split(y)
            _, _, d = flatness_terms(P, Q, W, self.train.users, self.train.items, want_grad=False,
                                     want_diag=True)
            b = np.float32(self.flatness)
            st["flat_diag"] = (d[0] * b, d[1] * b, d[2] * self.flatness)
        return st["flat_diag"]

    def _w0(self):
        """The LF kernels' weights with zero on the P~ side (its penalty is on P)."""
        if getattr(self, "_w0_cache", None) is None or self._w0_cache[0] is not self.lf._w:
            wu, wi, wbu, wbi = self.lf._w
            self._w0_cache = (self.lf._w, (np.zeros_like(wu), wi, wbu, wbi))
        return self._w0_cache[1]

    def _wu_cols(self):
        wu = self.lf._w[0]
        return wu if wu.ndim == 2 else wu[:, None]

    # ---------------------------------------------------------- penalties
    def penalty(self, y) -> float:
        """The L2 penalties (P, Q, biases: the regularizer's; layers: lam_w |K| / 2 ||W - I||^2)."""
        pen = self.lf.penalty(y[:self._n4])
        if self.depth:
            W = self.layout.unpack(y, "W")[0]
            D = np.asarray(W, dtype=np.float64) - np.eye(self.f)
            pen += 0.5 * self.w_layers * float(np.sum(D * D))
        return pen

    @_single_blas
    def flatness_trace(self, y) -> float:
        """tr(J^T J) = sum_K ||d r_ui / d theta||^2 at y, exactly (biases included: 2 per entry)."""
        _, _, P, Q, W = self._split(y)
        F, _, _ = flatness_terms(P, Q, W, self.train.users, self.train.items, want_grad=False)
        return F + (2.0 * self.nnz if self.use_bias else 0.0)

    # ---------------------------------------------------------- params
    def init_params(self, scale: float = 0.1, seed: int = 0):
        """P, Q (and biases) exactly as the LF objective's ``init_params(scale, seed)``; the layers
        W_l = I (``init="identity"``: the start is the LF model's) or N(0, 1/f) entries drawn
        with ``seed + 1`` (``"random"``)."""
        y4 = self.backend.to_numpy(self.lf.init_params(scale, seed))
        W = np.empty((self.depth, self.f, self.f), dtype=np.float32)
        if self.init == "identity":
            W[:] = self._eye
        else:
            rng = np.random.default_rng(seed + 1)
            W[:] = rng.normal(0.0, 1.0 / np.sqrt(self.f), W.shape)
        return self.backend.asarray(np.concatenate([y4, W.ravel()]))

    @_single_blas
    def end_to_end(self, y) -> tuple:
        """``(P A, Q)``: the LF factors of the same predictions (A = W_1 .. W_L)."""
        _, _, P, Q, _ = self._split(y)
        if self.depth == 0:
            return P.copy(), Q.copy()
        return self._state(y)["Pt"].copy(), Q.copy()

    # ---------------------------------------------------------- oracles
    @_single_blas
    def loss(self, y) -> float:
        """1/2 sum e^2 + the L2 penalties + flatness tr(J^T J) (float64)."""
        bu, bi, P, Q, W = self._split(y)
        if self.depth == 0:
            self.last_sse = self.kernels.sse(self.mu, (bu, bi, P, Q))
        else:
            st = self._state(y)
            self.last_sse = self.kernels.sse(self.mu, (bu, bi, st["Pt"], Q))
        out = 0.5 * self.last_sse + self.penalty(y)
        if self.flatness:
            out += self.flatness * self.flatness_trace(y)
        return out

    @_single_blas
    def loss_grad(self, y, g) -> float:
        """Fill ``g`` with the gradient at ``y``; return the loss."""
        bu, bi, P, Q, W = self._split(y)
        gbu, gbi, gP, gQ, gW = self._split(g)
        if self.depth == 0:
            self.last_sse = self.kernels.residual_grad(self.mu, (bu, bi, P, Q), self.lf._w, (gbu, gbi, gP, gQ))
        else:
            st = self._state(y)
            gPt = self._buf("gPt", (self.m, self.f))
            self.last_sse = self.kernels.residual_grad(self.mu, (bu, bi, st["Pt"], Q), self._w0(),
                                                       (gbu, gbi, gPt, gQ))
            np.matmul(gPt, st["A32"].T, out=gP)
            gP += self._wu_cols() * P
            gA = (P.T @ gPt).astype(np.float64)
            G = np.zeros((self.depth, self.f, self.f))
            _chain_grad(np.asarray(W, dtype=np.float64), 1, self.depth, gA, G)
            G += self.w_layers * (np.asarray(W, dtype=np.float64) - np.eye(self.f))
            gW[:] = G
        out = 0.5 * self.last_sse + self.penalty(y)
        if self.flatness:
            F, (fP, fQ, fW), _ = flatness_terms(P, Q, W, self.train.users, self.train.items)
            b = np.float32(self.flatness)
            gP += b * fP
            gQ += b * fQ
            if self.depth:
                gW += (self.flatness * fW).astype(np.float32)
            out += self.flatness * (F + (2.0 * self.nnz if self.use_bias else 0.0))
        return out

    def _buf(self, name, shape):
        key = "_buf_" + name
        a = getattr(self, key, None)
        if a is None or a.shape != shape:
            a = np.empty(shape, dtype=np.float32)
            setattr(self, key, a)
        return a

    @_single_blas
    def gvp(self, y, v, out):
        """``out = G(y) v``: T^T J_LF^T J_LF T v + the L2 diagonal + beta diag(Hess tr(J^T J)) v."""
        bu, bi, P, Q, W = self._split(y)
        vbu, vbi, VP, VQ, VW = self._split(v)
        obu, obi, OP, OQ, OW = self._split(out)
        if self.depth == 0:
            self.kernels.gvp((bu, bi, P, Q), (vbu, vbi, VP, VQ), self.lf._w, (obu, obi, OP, OQ))
            st = self._state(y) if self.flatness else None
        else:
            st = self._state(y)
            f, L = self.f, self.depth
            Wd = np.asarray(W, dtype=np.float64)
            dA = np.zeros((f, f))
            for l in range(1, L + 1):
                dA += _prod(Wd, 1, l - 1, f) @ VW[l - 1] @ _prod(Wd, l + 1, L, f)
            dPt = self._buf("dPt", (self.m, f))
            np.matmul(VP, st["A32"], out=dPt)
            dPt += P @ dA.astype(np.float32)
            oPt = self._buf("oPt", (self.m, f))
            self.kernels.gvp((bu, bi, st["Pt"], Q), (vbu, vbi, dPt, VQ), self._w0(), (obu, obi, oPt, OQ))
            np.matmul(oPt, st["A32"].T, out=OP)
            OP += self._wu_cols() * VP
            oA = (P.T @ oPt).astype(np.float64)
            G = np.zeros((L, f, f))
            _chain_grad(Wd, 1, L, oA, G)
            G += self.w_layers * np.asarray(VW, dtype=np.float64)
            OW[:] = G
        if self.flatness:
            dP, dQ, dW = self._flat_diag(y, st)
            OP += dP * VP
            OQ += dQ * VQ
            if self.depth:
                OW += (dW * VW).astype(np.float32)
        return out

    @_single_blas
    def gn_diag(self, y, out):
        """Exact diagonal of G(y): J^T J's, the L2 weights, and beta diag(Hess tr(J^T J))."""
        bu, bi, P, Q, W = self._split(y)
        obu, obi, OP, OQ, OW = self._split(out)
        if self.depth == 0:
            self.kernels.gn_diag((bu, bi, P, Q), self.lf._w, (obu, obi, OP, OQ))
            st = self._state(y) if self.flatness else None
        else:
            from ..kernels import lf as K

            st = self._state(y)
            f, L = self.f, self.depth
            self.kernels.gn_diag((bu, bi, st["Pt"], self._Qt(y, st)), self.lf._w, (obu, obi, OP, OQ))
            Wd = np.asarray(W, dtype=np.float64)
            csr = self.kernels.csr
            D = self._buf("Dz", (self.m, f))
            zero = np.zeros(1, dtype=np.float32)
            zeros_m = np.zeros(self.m, dtype=np.float32)
            for l in range(1, L + 1):
                X = P if l == 1 else P @ _prod(Wd, 1, l - 1, f).astype(np.float32)
                Z = Q if l == L else np.ascontiguousarray(Q @ _prod(Wd, l + 1, L, f).T.astype(np.float32))
                K.side_gn_diagonal(csr.indptr, csr.indices, Z, zeros_m, zero, False, D, zero)
                OW[l - 1] = (X * X).T @ D + np.float32(self.w_layers)
        if self.flatness:
            dP, dQ, dW = self._flat_diag(y, st)
            OP += dP
            OQ += dQ
            if self.depth:
                OW += dW.astype(np.float32)
        return out

    # ---------------------------------------------------------- mini-batches
    @_single_blas
    def batch_grad(self, y, batch, g, diag=None, scale: float | None = None) -> float:
        """``scale`` times the batch sums of the gradient (and GN diagonal) into g (diag).

        As :meth:`LFObjective.batch_grad`: every visit adds its per-visit penalty (the
        layers' ``lam_w (W - I)`` included), the flatness penalty is estimated on the batch's
        entries, ``scale = |K| / |B|`` (default) gives unbiased estimates.  O(|B| f^2): only
        the batch's users are transformed.
        """
        if scale is None:
            scale = self.nnz / len(batch)
        if self.depth == 0 and not self.flatness:
            return self.lf.batch_grad(y[:self._n4], batch, g[:self._n4],
                                      None if diag is None else diag[:self._n4], scale)
        from ..kernels import lf as K

        f, L = self.f, self.depth
        bu, bi, P, Q, W = self._split(y)
        gbu, gbi, gP, gQ, gW = self._split(g)
        g[:] = 0.0
        want = diag is not None
        if want:
            dbu, dbi, dP, dQ, dW = self._split(diag)
            diag[:] = 0.0
        t = self.train
        batch = np.asarray(batch)
        rows, cols = t.users[batch], t.items[batch]
        ub, ru = np.unique(rows, return_inverse=True)
        ib, ci = np.unique(cols, return_inverse=True)
        ru = ru.astype(np.int32)
        ci = ci.astype(np.int32)
        nb = len(batch)
        Pb, Qb = P[ub], np.ascontiguousarray(Q[ib])
        Wd = np.asarray(W, dtype=np.float64)
        A = _prod(Wd, 1, L, f)
        A32 = A.astype(np.float32)
        Ptb = np.ascontiguousarray(Pb @ A32) if L else Pb
        bub = bu[ub] if self.use_bias else bu
        bib = bi[ib] if self.use_bias else bi
        gbub = np.zeros(len(ub) if self.use_bias else 0, np.float32)
        gbib = np.zeros(len(ib) if self.use_bias else 0, np.float32)
        gPt = np.zeros((len(ub), f), np.float32)
        gQb = np.zeros((len(ib), f), np.float32)
        if want:
            dbub, dbib = np.zeros_like(gbub), np.zeros_like(gbib)
            dPt, dQb = np.zeros_like(gPt), np.zeros_like(gQb)
        else:
            dbub, dbib, dPt, dQb = gbub, gbib, gPt, gQb  # never written
        v0 = np.zeros(1, np.float32)
        pos = np.arange(nb, dtype=np.int64)
        f32 = np.float32
        sse = float(K.batch_grad_diag(ru, ci, t.values[batch], pos, f32(self.mu), bub, bib, Ptb, Qb, v0, v0, v0,
                                      v0, True, self.use_bias, f32(scale), want, gbub, gbib, gPt, gQb, dbub, dbib,
                                      dPt, dQb))
        # the data part through T^T
        gPb = gPt @ A32.T if L else gPt
        gW_acc = np.zeros((L, f, f))
        if L:
            _chain_grad(Wd, 1, L, (Pb.T @ gPt).astype(np.float64), gW_acc)
        # per-visit L2 (one visit per batch entry)
        vu, vi, vbu, vbi = self.lf._v
        cu = np.bincount(ru, minlength=len(ub)).astype(np.float32) * f32(scale)
        cq = np.bincount(ci, minlength=len(ib)).astype(np.float32) * f32(scale)
        vub = vu[ub] if vu.ndim == 2 else vu[ub][:, None]
        vib = vi[ib] if vi.ndim == 2 else vi[ib][:, None]
        gPb = gPb + cu[:, None] * vub * Pb
        gQb += cq[:, None] * vib * Qb
        if self.use_bias:
            gbub += cu * vbu[ub] * bub
            gbib += cq * vbi[ib] * bib
        if want:
            if L:  # P's diagonal: sum of Q~^2 over the user's batch entries (LF's P side with Q := Q A^T)
                Qtb = np.ascontiguousarray(Qb @ A32.T)
                _, _, dPb, _ = self._batch_sq(ru, ci, Ptb, Qtb, scale)
            else:
                dPb = dPt
            dPb = dPb + cu[:, None] * vub
            dQb += cq[:, None] * vib
            if self.use_bias:
                dbub += cu * vbu[ub]
                dbib += cq * vbi[ib]
        if L:
            gW_acc += (scale * nb * self.lam_w) * (Wd - np.eye(f))
            if want:
                dW_acc = np.full((L, f, f), scale * nb * self.lam_w)
                for l in range(1, L + 1):
                    X = Pb if l == 1 else Pb @ _prod(Wd, 1, l - 1, f).astype(np.float32)
                    Z = Qb if l == L else Qb @ _prod(Wd, l + 1, L, f).T.astype(np.float32)
                    # sum over the batch of x_a^2 z_b^2 = (X o X)^T D, D[u] = sum of z^2 over u's entries
                    Dz = self._batch_sq(ru, ci, X, np.ascontiguousarray(Z), scale)[2]
                    dW_acc[l - 1] += ((X * X).T @ Dz).astype(np.float64)
        if self.flatness:
            _, (fP, fQ, fW), fd = flatness_terms(Pb, Qb, W, ru, ci, want_grad=True, want_diag=want)
            c = f32(scale * self.flatness)
            gPb += c * fP
            gQb += c * fQ
            if L:
                gW_acc += (scale * self.flatness) * fW
            if want:
                dPb += c * fd[0]
                dQb += c * fd[1]
                if L:
                    dW_acc += (scale * self.flatness) * fd[2]
        gP[ub] = gPb
        gQ[ib] = gQb
        if self.use_bias:
            gbu[ub] = gbub
            gbi[ib] = gbib
        if L:
            gW[:] = gW_acc
        if want:
            dP[ub] = dPb
            dQ[ib] = dQb
            if self.use_bias:
                dbu[ub] = dbub
                dbi[ib] = dbib
            if L:
                dW[:] = dW_acc
        return sse

    def _batch_sq(self, ru, ci, Pb, Yb, scale):
        """LF's mini-batch diagonal with Q := Yb: d_P[u] = scale sum over u's batch entries of Yb[i]^2."""
        from ..kernels import lf as K

        f32 = np.float32
        nb = len(ru)
        v0 = np.zeros(1, np.float32)
        e0 = np.zeros(0, np.float32)
        g = (e0, e0, np.zeros_like(Pb), np.zeros_like(Yb))
        d = (e0, e0, np.zeros_like(Pb), np.zeros_like(Yb))
        K.batch_grad_diag(ru, ci, np.zeros(nb, np.float32), np.arange(nb, dtype=np.int64), f32(0.0), e0, e0, Pb,
                          Yb, v0, v0, v0, v0, True, False, f32(scale), True, *g, *d)
        return d

    # ---------------------------------------------------------- line search
    @_single_blas
    def step_polynomial(self, y, direction) -> np.ndarray:
        """Coefficients (lowest first) of the exact polynomial L(y + t d) in t (degree 2 L + 4)."""
        if self.depth == 0 and not self.flatness:
            return self.lf.step_polynomial(y[:self._n4], direction[:self._n4])
        from ..kernels import lf as K

        bu, bi, P, Q, W = self._split(y)
        dbu, dbi, dP, dQ, dW = self._split(direction)
        f, L = self.f, self.depth
        csr = self.kernels.csr
        Ak = _poly_chain(np.asarray(W, dtype=np.float64), np.asarray(dW, dtype=np.float64), 1, L, f)
        Ck = [np.ascontiguousarray(c) for c in _rows_poly(P, dP, Ak)]  # P~(t) = sum_k t^k C_k
        Ck.append(np.zeros_like(Ck[0]))
        nnz = self.nnz
        S = np.empty((nnz, L + 3))
        e = self._buf("e_line", (nnz,))
        K.residuals(csr.indptr, csr.indices, csr.data, np.float32(self.mu), bu, bi, Ck[0], Q, self.use_bias, e)
        S[:, 0] = e
        s = self._buf("s_line", (nnz,))
        scratch = self._buf("op_line", (self.m, f))
        zw = np.zeros(self.m, np.float32)  # zero weights
        ob = np.zeros(self.m, np.float32)  # the bias output (unused)
        for k in range(1, L + 3):
            # s_k = C_k . q_i + C_{k-1} . dq_i (+ db_u + db_i at k = 1)
            K.jv_rows(csr.indptr, csr.indices, Ck[k - 1], Q, dbu, dbi, Ck[k], dQ, zw, zw, self.use_bias and k == 1,
                      s, scratch, ob)
            S[:, k] = -s
        M = S.T @ S
        deg = 2 * (L + 2)
        coef = np.zeros(deg + 1)
        for a in range(L + 3):
            for b in range(L + 3):
                coef[a + b] += 0.5 * M[a, b]
        y4, d4 = y[:self._n4], direction[:self._n4]
        coef[0] += self.lf.penalty(y4)
        coef[1] += self.lf._wdot(y4, d4)
        coef[2] += 0.5 * self.lf._wdot(d4, d4)
        if L:
            Dw = np.asarray(W, dtype=np.float64) - np.eye(f)
            dWd = np.asarray(dW, dtype=np.float64)
            coef[0] += 0.5 * self.w_layers * float(np.sum(Dw * Dw))
            coef[1] += self.w_layers * float(np.sum(Dw * dWd))
            coef[2] += 0.5 * self.w_layers * float(np.sum(dWd * dWd))
        if self.flatness:
            fc = flatness_polynomial(P, dP, Q, dQ, W, dW, self.train.users, self.train.items)
            coef[:len(fc)] += self.flatness * fc
            coef[0] += self.flatness * (2.0 * nnz if self.use_bias else 0.0)
        return coef

    # ---------------------------------------------------------- preconditioner
    @_single_blas
    def block_preconditioner(self, y, shift: float = 0.0, diag_scale: float = 1.0):
        """``apply(r, out)`` = M^-1 r, M the per-row blocks of G(y) + shift I (diagonal x diag_scale)
        for b, P, Q (LF's blocks at (P~, Q~) with the flatness diagonal added to the row weights)
        and the diagonal of G for the layers (Jacobi)."""
        bu, bi, P, Q, W = self._split(y)
        if self.depth == 0 and not self.flatness:
            inner = self.lf.block_preconditioner(y[:self._n4], shift, diag_scale)

            def apply0(r, out):
                inner(r[:self._n4], out[:self._n4])
                return out

            return apply0
        st = self._state(y)
        wu, wi, wbu, wbi = self.lf._w
        if self.flatness:
            dP, dQ, _ = self._flat_diag(y, st)
            wu = (wu if wu.ndim == 2 else wu[:, None]) + dP
            wi = (wi if wi.ndim == 2 else wi[:, None]) + dQ
        Pt = st["Pt"] if self.depth else P
        Qt = self._Qt(y, st) if self.depth else Q
        handle = self.kernels.gn_blocks((bu, bi, Pt, Qt), (wu, wi, wbu, wbi), float(shift), float(diag_scale))
        dWp = None
        if self.depth:
            d = np.empty(self.size, dtype=np.float32)
            self.gn_diag(y, d)
            dWp = self.layout.unpack(d, "W")[0] * np.float32(diag_scale) + np.float32(shift)
            dWp[~(dWp > 0)] = 1.0

        def apply(r, out):
            rbu, rbi, RP, RQ, RW = self._split(r)
            obu, obi, OP, OQ, OW = self._split(out)
            self.kernels.block_solve(handle, (rbu, rbi, RP, RQ), (obu, obi, OP, OQ))
            if dWp is not None:
                np.divide(RW, dWp, out=OW)
            return out

        return apply

    # ---------------------------------------------------------- prediction
    @_single_blas
    def predict(self, y, rows, cols):
        bu, bi, P, Q, _ = self._split(y)
        Pt = self._state(y)["Pt"] if self.depth else P
        return self.kernels.predict(self.mu, (bu, bi, Pt, Q), rows, cols)

    def train_metrics(self, y, loss: float) -> dict:
        ok = math.isfinite(loss) and math.isfinite(self.last_sse)
        return {"train_rmse": math.sqrt(self.last_sse / self.nnz) if ok else math.nan}
