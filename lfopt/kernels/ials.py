"""Numba kernels of implicit-feedback ALS (Hu, Koren, Volinsky 2008; METHODS.md section 5d).

Model and objective
-------------------
Scores s_ui = x_u . y_i.  Every one of the m x n cells (u, i) has a preference p_ui
(1 on an observed entry, 0 elsewhere) and a confidence c_ui (``conf[k]`` on the
observed entry k, typically 1 + alpha r_ui, and 1 elsewhere).  The loss is

    L(X, Y) = sum_{all u, i} c_ui (p_ui - x_u . y_i)^2 + sum_u lam_u |x_u|^2 + sum_i lam_i |y_i|^2

(``lam_u``/``lam_i``: per-row L2 weights; one shared weight is an array of length 1).
With Y fixed, row u's part is a ridge problem whose normal equations are

    (Y^T Y + sum_k (c_k - 1) y_k y_k^T + lam_u I) x_u = sum_k c_k y_k       (k over u's entries)

so every row needs only the shared Gram Y^T Y (computed once per half-sweep,
:func:`gramian`) plus its own observed items: O(n_u f^2) instead of O(n f^2).
The same kernels serve both sides: call them with (CSR, Y = item factors) to update
the users and with (CSC, X = user factors) to update the items.

Row solvers (``cg_steps``)
--------------------------
* ``cg_steps == 0``: the exact solve.  The n_u rows sqrt(c_k - 1) y_k are gathered
  into a contiguous float32 buffer and their Gram is one BLAS ssyrk (the helpers of
  :mod:`lfopt.kernels.lf`: :func:`~lfopt.kernels.lf.single_threaded_blas` gives the
  address; 0 selects the numba Gram kernel), Y^T Y + lam_u I is added in float64 and
  the system is factored by the float64 Cholesky of :mod:`lfopt.kernels.lf`.
* ``cg_steps > 0``: that many conjugate-gradient steps on the same system, started
  from the row's current value (Takacs, Pilaszy, Tikk 2011; what the ``implicit``
  library does, 3 steps by default).  A step costs one product with Y^T Y (f^2) and
  two passes over the row's items (2 n_u f): the matrix is never formed.  All CG
  arithmetic is float32, as the factors are.

Rows are processed in parallel (``prange`` over interleaved work units, each
writing only its own rows: race-free, and the result does not depend on the
number of threads).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .lf import (
    BLAS_MIN_G,
    _gather_cols,
    _gather_rows,
    _gram_rows,
    _n_chunks,
    _ssyrk_lower,
    chol_solve_factored,
    cholesky_factor,
    chunk_max_count,
)

_JIT = dict(cache=True, fastmath=True, nogil=True)

#: CG stops early on a row once the squared residual norm is below this (as ``implicit`` does)
CG_EPS = 1e-20


def gramian(Y) -> np.ndarray:
    """Y^T Y in float64 (the shared part of every row's normal matrix), by BLAS."""
    Yd = np.asarray(Y, dtype=np.float64)
    return Yd.T @ Yd


def as_row_weights(lam, rows: int) -> np.ndarray:
    """``lam`` as the kernels' per-row weight array: float64 of shape (rows,), or (1,) for a scalar."""
    w = np.ascontiguousarray(np.atleast_1d(np.asarray(lam, dtype=np.float64)))
    if w.ndim != 1 or (len(w) != 1 and len(w) != rows):
        raise ValueError(f"lam must be a scalar or have one entry per row ({rows}), got shape {w.shape}")
    return w


# ------------------------------------------------------------------ one row
@njit(**_JIT)
def _row_cg(start, n, indices, conf, Y, G, lam, steps, x, r, p, Ap):
    """``steps`` CG steps on (G + sum_k (c_k - 1) y_k y_k^T + lam I) x = sum_k c_k y_k, from x.

    G = Y^T Y (float32, full square); x, r, p, Ap float32 work vectors of length f."""
    f = Y.shape[1]
    lam32 = np.float32(lam)
    # r = b - A x
    for i in range(f):
        acc = np.float32(0.0)
        for j in range(f):
            acc += G[i, j] * x[j]
        r[i] = -acc - lam32 * x[i]
    for k in range(n):
        it = indices[start + k]
        c = np.float32(conf[start + k])
        dot = np.float32(0.0)
        for d in range(f):
            dot += Y[it, d] * x[d]
        w = c - (c - np.float32(1.0)) * dot
        for d in range(f):
            r[d] += w * Y[it, d]
    rs_old = np.float32(0.0)
    for d in range(f):
        p[d] = r[d]
        rs_old += r[d] * r[d]
    if rs_old < CG_EPS:
        return
    for _ in range(steps):
        # Ap = A p
        for i in range(f):
            acc = np.float32(0.0)
            for j in range(f):
                acc += G[i, j] * p[j]
            Ap[i] = acc + lam32 * p[i]
        for k in range(n):
            it = indices[start + k]
            cm1 = np.float32(conf[start + k]) - np.float32(1.0)
            dot = np.float32(0.0)
            for d in range(f):
                dot += Y[it, d] * p[d]
            w = cm1 * dot
            for d in range(f):
                Ap[d] += w * Y[it, d]
        pAp = np.float32(0.0)
        for d in range(f):
            pAp += p[d] * Ap[d]
        if not (pAp > 0.0):
            return
        a = rs_old / pAp
        rs_new = np.float32(0.0)
        for d in range(f):
            x[d] += a * p[d]
            r[d] -= a * Ap[d]
            rs_new += r[d] * r[d]
        if rs_new < CG_EPS:
            return
        beta = rs_new / rs_old
        for d in range(f):
            p[d] = r[d] + beta * p[d]
        rs_old = rs_new


@njit(**_JIT)
def _row_cholesky(start, n, indices, conf, Y, YtY, lam, x, Zbuf, Gbuf, A, blas):
    """The exact solve of row's normal equations into x (float64, length >= f).

    Zbuf: float32 work array of >= n * gp entries (gp = f rounded up to a multiple of 4);
    Gbuf: float32 >= gp * gp; A: float64 (gp, gp) or larger square."""
    f = Y.shape[1]
    gp = (f + 3) // 4 * 4
    for d in range(f):
        x[d] = 0.0
    for k in range(n):
        c = np.float64(conf[start + k])
        it = indices[start + k]
        for d in range(f):
            x[d] += c * Y[it, d]
    if n > 0 and blas != 0 and f >= BLAS_MIN_G:
        Z = Zbuf[:n * f].reshape((n, f))
        _gather_rows(start, n, indices, Y, False, Z)
        for k in range(n):
            s = np.float32(np.sqrt(max(np.float64(conf[start + k]) - 1.0, 0.0)))
            for d in range(f):
                Z[k, d] *= s
        G = Gbuf[:f * f].reshape((f, f))
        _ssyrk_lower(blas, 0, n, Z, G)
    elif n > 0:
        Zt = Zbuf[:gp * n].reshape((gp, n))
        _gather_cols(start, n, indices, Y, False, Zt)
        for k in range(n):
            s = np.float32(np.sqrt(max(np.float64(conf[start + k]) - 1.0, 0.0)))
            for d in range(f):
                Zt[d, k] *= s
        G = Gbuf[:gp * gp].reshape((gp, gp))
        _gram_rows(Zt, f, G)
    else:
        G = Gbuf[:f * f].reshape((f, f))
        G[:, :] = 0.0
    for i in range(f):
        for j in range(i + 1):
            A[i, j] = YtY[i, j] + G[i, j]
        A[i, i] += lam
    cholesky_factor(A, f)
    chol_solve_factored(A, f, x)


# ------------------------------------------------------------------ a side
@njit(parallel=True, **_JIT)
def ials_user_rows(Y, YtY, indptr, indices, conf, lam, cg_steps, out, blas=0):
    """Solve every row of a CSR (``indptr``/``indices``/``conf``) with the other side ``Y`` fixed.

    Row u's new value (written to ``out[u]``) minimizes
    sum_i c_ui (p_ui - x . y_i)^2 + lam_u |x|^2 over all n items (see the module docstring).

    Parameters
    ----------
    Y : (n, f) float32, the fixed factors (item factors to update users).
    YtY : (f, f) float64, ``Y^T Y`` (:func:`gramian`), without the regularization.
    indptr, indices, conf : the rows' observed items and their confidences c (>= 1).
    lam : float64 (rows,) per-row L2 weights, or (1,) for one weight shared by all rows.
    cg_steps : 0 for the exact Cholesky solve, else that many CG steps warm-started
        from the current ``out[u]`` (so ``out`` must hold a starting value).
    out : (rows, f) float32, updated in place.
    blas : the ssyrk address from :func:`lfopt.kernels.lf.single_threaded_blas` (0: numba Gram);
        only the Cholesky path uses it.

    It also serves one new user: ``indptr = [0, n]``, that user's items and confidences,
    ``out`` a (1, f) array (zeros, or a previous value to warm-start CG).
    """
    f = Y.shape[1]
    gp = (f + 3) // 4 * 4
    m = indptr.shape[0] - 1
    per_row = lam.shape[0] > 1
    G32 = np.empty((f, f), dtype=np.float32)
    for i in range(f):
        for j in range(f):
            G32[i, j] = YtY[i, j]
    nc = _n_chunks(m)
    for c in prange(nc):
        if cg_steps > 0:
            x = np.empty(f, dtype=np.float32)
            r = np.empty(f, dtype=np.float32)
            p = np.empty(f, dtype=np.float32)
            Ap = np.empty(f, dtype=np.float32)
            for u in range(c, m, nc):
                start = indptr[u]
                n = indptr[u + 1] - start
                for d in range(f):
                    x[d] = out[u, d]
                _row_cg(start, n, indices, conf, Y, G32, lam[u if per_row else 0], cg_steps, x, r, p, Ap)
                for d in range(f):
                    out[u, d] = x[d]
        else:
            maxn = max(1, chunk_max_count(indptr, c, nc))
            Zbuf = np.empty(maxn * gp, dtype=np.float32)
            Gbuf = np.empty(gp * gp, dtype=np.float32)
            A = np.empty((gp, gp), dtype=np.float64)
            xd = np.empty(gp, dtype=np.float64)
            for u in range(c, m, nc):
                start = indptr[u]
                n = indptr[u + 1] - start
                _row_cholesky(start, n, indices, conf, Y, YtY, lam[u if per_row else 0], xd, Zbuf, Gbuf, A,
                              blas)
                for d in range(f):
                    out[u, d] = xd[d]


# ---------------------------------------------------------------- objective
@njit(parallel=True, **_JIT)
def observed_loss(indptr, indices, conf, X, Y):
    """sum over observed entries of c (1 - s)^2 - s^2 (s = x_u . y_i), float64: the part of the
    loss that the all-cells term sum_{u,i} s_ui^2 = <X^T X, Y^T Y> does not already count."""
    m = indptr.shape[0] - 1
    f = X.shape[1]
    part = np.zeros(m, dtype=np.float64)
    for u in prange(m):
        acc = 0.0
        for k in range(indptr[u], indptr[u + 1]):
            i = indices[k]
            s = np.float32(0.0)
            for d in range(f):
                s += X[u, d] * Y[i, d]
            sd = np.float64(s)
            acc += np.float64(conf[k]) * (1.0 - sd) ** 2 - sd * sd
        part[u] = acc
    return part.sum()


@njit(parallel=True, **_JIT)
def weighted_sq_norm(X, lam):
    """sum_u lam_u |x_u|^2 (lam per row, or of length 1), float64."""
    m, f = X.shape
    last = lam.shape[0] - 1
    part = np.zeros(m, dtype=np.float64)
    for u in prange(m):
        acc = 0.0
        for d in range(f):
            acc += np.float64(X[u, d]) ** 2
        w = lam[0] if last == 0 else lam[u]
        part[u] = acc * w
    return part.sum()


def ials_loss(indptr, indices, conf, X, Y, lam_x, lam_y, XtX=None, YtY=None) -> float:
    """The full objective L(X, Y) of the module docstring, over all m x n cells, in O(nnz f + (m + n) f^2).

    ``indptr``/``indices``/``conf``: the CSR of observed entries (rows = X's rows);
    ``lam_x``/``lam_y``: per-row weights or length-1 arrays; Gram matrices may be passed if known.
    """
    XtX = gramian(X) if XtX is None else XtX
    YtY = gramian(Y) if YtY is None else YtY
    return float(np.sum(XtX * YtY) + observed_loss(indptr, indices, conf, X, Y)
                 + weighted_sq_norm(X, lam_x) + weighted_sq_norm(Y, lam_y))


def ials_sweep(csr, csc, X, Y, lam_x, lam_y, cg_steps: int, blas: int = 0) -> None:
    """One ALS iteration in place: every user row (Y fixed), then every item row (X fixed).

    ``csr``/``csc``: ``(indptr, indices, conf)`` of the observed entries by user and by item.
    Call it inside :func:`~lfopt.kernels.lf.single_threaded_blas` (whose value is ``blas``): the
    Gram matrices are BLAS calls, and a multi-threaded BLAS leaves its threads spinning on the
    cores the parallel row loop needs next."""
    ials_user_rows(Y, gramian(Y), csr[0], csr[1], csr[2], lam_x, cg_steps, X, blas)
    ials_user_rows(X, gramian(X), csc[0], csc[1], csc[2], lam_y, cg_steps, Y, blas)
