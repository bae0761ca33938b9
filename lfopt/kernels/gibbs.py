"""Numba kernels of Gibbs sampling for the LF rating model (METHODS.md section 5c).

Model: r_ui ~ N(mu + b_u + b_i + p_u . q_i, 1/alpha).  Given the other side,
the row x_u = (p_u, b_u) of one side is Gaussian with

    precision  A_u = alpha sum_k z_k z_k^T + Lambda       (z_k = (y_{i_k}, 1))
    mean       m_u = A_u^-1 (alpha sum_k z_k t_k + h)      (t_k = r_k - mu - b_other[i_k])

where ``Lambda`` (g x g) and ``h = Lambda mu_prior`` (g) are the prior's precision
and linear term, the same for every row of the side.  These are ALS's per-row
normal equations with the ridge replaced by the prior; a draw is
x_u = L^-T (L^-1 (alpha b + h) + eps), A_u = L L^T, eps ~ N(0, I): one Cholesky
factor, two triangular solves.

Layout of the work (one parallel loop over fixed chunks of rows, so that every
buffer is allocated once per chunk and the result does not depend on the number
of threads): a row's entries are gathered into ``Zt`` (features x entries, the
targets t as one more feature), whose Gram matrix gives sum z z^T, sum z t and
sum t^2 at once; it is computed by a register-tiled SYRK (4 x 4 tiles of the upper
block triangle, the entry loop vectorized; 25-40 GFMA/s on one core here), about
twice the speed of accumulating rank-one updates.  The Cholesky factors and
triangular solves run LANES rows at a time, interleaved so that every scalar step
is a vector step across rows (the one-row reference :func:`row_posterior` uses
ALS's :func:`~lfopt.kernels.lf.cholesky_factor`).  Each row draws its normals from its own
counter-based stream (splitmix64 of (seed, row), Box-Muller), so a sweep is
deterministic given the seed, whatever the thread schedule.

Notation as in :mod:`lfopt.kernels.lf`: call the side kernel with (CSR, Q, P) for
the users and (CSC, P, Q) for the items.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .lf import chol_solve_factored, cholesky_factor, chunk_max_count

_JIT = dict(cache=True, fastmath=True, nogil=True)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO_PI = 6.283185307179586
_INV_2_53 = 1.0 / 9007199254740992.0


# ------------------------------------------------------------------ randomness
@njit(**_JIT)
def mix64(z):
    """The splitmix64 finalizer (a bijection of uint64 with good avalanche)."""
    z = np.uint64(z)
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(**_JIT)
def row_normals(seed, row, out, n):
    """Fill out[:n] with standard normals from the stream of (seed, row) (Box-Muller)."""
    state = mix64(np.uint64(seed) ^ mix64(np.uint64(row) * _GOLDEN + _GOLDEN))
    k = 0
    while k < n:
        state = state + _GOLDEN
        z1 = mix64(state)
        state = state + _GOLDEN
        z2 = mix64(state)
        u1 = (np.float64(z1 >> np.uint64(11)) + 0.5) * _INV_2_53  # (0, 1)
        u2 = np.float64(z2 >> np.uint64(11)) * _INV_2_53  # [0, 1)
        r = np.sqrt(-2.0 * np.log(u1))
        out[k] = r * np.cos(_TWO_PI * u2)
        if k + 1 < n:
            out[k + 1] = r * np.sin(_TWO_PI * u2)
        k += 2


# -------------------------------------------------------------- dense helpers
@njit(**_JIT)
def syrk_upper(Zt, n, G):
    """G[d, e] = sum_{k < n} Zt[d, k] Zt[e, k] on the 4 x 4 tiles with d-block <= e-block.

    ``Zt`` has a multiple of 4 rows (pad with zero rows); ``G`` is square of that
    size.  Every (d, e) with d <= e is written (and the lower part of the diagonal
    tiles); float32, the entry loop vectorizes with 16 accumulators.
    """
    gp = Zt.shape[0]
    for d0 in range(0, gp, 4):
        a0 = Zt[d0]
        a1 = Zt[d0 + 1]
        a2 = Zt[d0 + 2]
        a3 = Zt[d0 + 3]
        for e0 in range(d0, gp, 4):
            b0 = Zt[e0]
            b1 = Zt[e0 + 1]
            b2 = Zt[e0 + 2]
            b3 = Zt[e0 + 3]
            s00 = s01 = s02 = s03 = np.float32(0.0)
            s10 = s11 = s12 = s13 = np.float32(0.0)
            s20 = s21 = s22 = s23 = np.float32(0.0)
            s30 = s31 = s32 = s33 = np.float32(0.0)
            for k in range(n):
                x0 = a0[k]
                x1 = a1[k]
                x2 = a2[k]
                x3 = a3[k]
                y0 = b0[k]
                y1 = b1[k]
                y2 = b2[k]
                y3 = b3[k]
                s00 += x0 * y0
                s01 += x0 * y1
                s02 += x0 * y2
                s03 += x0 * y3
                s10 += x1 * y0
                s11 += x1 * y1
                s12 += x1 * y2
                s13 += x1 * y3
                s20 += x2 * y0
                s21 += x2 * y1
                s22 += x2 * y2
                s23 += x2 * y3
                s30 += x3 * y0
                s31 += x3 * y1
                s32 += x3 * y2
                s33 += x3 * y3
            G[d0, e0] = s00
            G[d0, e0 + 1] = s01
            G[d0, e0 + 2] = s02
            G[d0, e0 + 3] = s03
            G[d0 + 1, e0] = s10
            G[d0 + 1, e0 + 1] = s11
            G[d0 + 1, e0 + 2] = s12
            G[d0 + 1, e0 + 3] = s13
            G[d0 + 2, e0] = s20
            G[d0 + 2, e0 + 1] = s21
            G[d0 + 2, e0 + 2] = s22
            G[d0 + 2, e0 + 3] = s23
            G[d0 + 3, e0] = s30
            G[d0 + 3, e0 + 1] = s31
            G[d0 + 3, e0 + 2] = s32
            G[d0 + 3, e0 + 3] = s33


# ----------------------------------------------------------------- one side
@njit(**_JIT)
def _row_system(indptr, indices, data, mu, b_other, Y, use_bias, u, Zt, G):
    """Gather row u's entries into Zt (features, then the targets in row g) and take the
    Gram matrix G of them.  Returns the number of entries."""
    f = Y.shape[1]
    g = f + 1 if use_bias else f
    start = indptr[u]
    n = indptr[u + 1] - start
    for k in range(n):
        i = indices[start + k]
        for d in range(f):
            Zt[d, k] = Y[i, d]
        t = data[start + k] - mu
        if use_bias:
            t -= b_other[i]
        Zt[g, k] = t
    syrk_upper(Zt, n, G)
    return n


@njit(**_JIT)
def _row_sse(G, g, x):
    """sum_k (t_k - z_k . x)^2 = sum t^2 - 2 x . (sum z t) + x^T (sum z z^T) x, from the Gram G
    (the targets in row/column g)."""
    quad = 0.0
    lin_t = 0.0
    for d in range(g):
        acc = 0.0
        for e in range(d):
            acc += np.float64(G[e, d]) * x[e]
        quad += x[d] * (2.0 * acc + np.float64(G[d, d]) * x[d])
        lin_t += x[d] * np.float64(G[d, g])
    return max(np.float64(G[g, g]) - 2.0 * lin_t + quad, 0.0)


# ------------------------------------------- lane-batched Cholesky (LANES rows at once)
# Small dense factorizations are dominated by loop overhead when done one row at a
# time (inner products of varying short length); storing LANES rows' matrices
# interleaved, A[i, j, lane], makes every scalar operation of the factorization a
# vector operation across rows, with no reductions and no remainders (about 2x
# faster at rank 32, 3x at rank 10).
LANES = 8


@njit(**_JIT)
def batched_cholesky(A, g, inv):
    """Lower Cholesky factors of the LANES matrices A[:g, :g, lane] (float64, lower triangles
    read and overwritten), inv[j, lane] = 1 / L[j, j].  A non-positive pivot is replaced by
    1e-300 (cannot happen for the positive definite systems here)."""
    s = np.empty(LANES)
    for i in range(g):
        for j in range(i + 1):
            for ln in range(LANES):
                s[ln] = A[i, j, ln]
            for k in range(j):
                for ln in range(LANES):
                    s[ln] -= A[i, k, ln] * A[j, k, ln]
            if i == j:
                for ln in range(LANES):
                    r = np.sqrt(max(s[ln], 1e-300))
                    A[i, i, ln] = r
                    inv[i, ln] = 1.0 / r
            else:
                for ln in range(LANES):
                    A[i, j, ln] = s[ln] * inv[j, ln]


@njit(**_JIT)
def batched_solve_lower(L, inv, h, g):
    """h[:, lane] <- L^-1 h[:, lane] for every lane (forward substitution)."""
    for i in range(g):
        for k in range(i):
            for ln in range(LANES):
                h[i, ln] -= L[i, k, ln] * h[k, ln]
        for ln in range(LANES):
            h[i, ln] *= inv[i, ln]


@njit(**_JIT)
def batched_solve_lower_t(L, inv, h, g):
    """h[:, lane] <- L^-T h[:, lane] for every lane (back substitution, L read by rows)."""
    for i in range(g - 1, -1, -1):
        for ln in range(LANES):
            h[i, ln] *= inv[i, ln]
        for k in range(i):
            for ln in range(LANES):
                h[k, ln] -= L[i, k, ln] * h[i, ln]


# ------------------------------------------------------------------ one side
@njit(**_JIT)
def _work_buffers(gp, maxn, f, use_bias):
    Zt = np.zeros((gp, max(maxn, 1)), dtype=np.float32)
    if use_bias:
        Zt[f, :] = 1.0
    return Zt


@njit(parallel=True, **_JIT)
def sample_side(indptr, indices, data, mu, b_other, Y, use_bias, alpha, prec, lin, ridge, ridge_b, seed, draw,
                n_chunks, X, b_self, sse_chunks, X_mean, b_mean, prec_chol, df_chunks):
    """Update every row of one side from its conditional posterior (in place).

    Row u (entries k, z_k = (Y[i_k], 1), t_k = r_k - mu - b_other[i_k]; without
    biases z_k = Y[i_k]) has the Gaussian conditional with precision and linear term

        A_u = alpha sum z z^T + prec + n_u diag(ridge, ..., ridge, ridge_b),
        h_u = alpha sum z t + lin,

    ``prec`` (g x g, lower triangle read) and ``lin`` (g) the prior's, float64.  With
    ``draw`` x_u = (X[u], b_self[u]) is drawn from N(A_u^-1 h_u, A_u^-1), from the
    normal stream (``seed``, u); without, it is set to the mean A_u^-1 h_u (with
    ``alpha = 1``, ``prec = 0`` and a ridge this is ALS's exact update; a row with
    no entry and a singular A_u is then set to 0).  When ``X_mean`` has rows, the
    conditional means are written to ``X_mean``/``b_mean`` too (the Rao-Blackwellized
    average of predictions uses them).  When ``df_chunks`` (n_chunks x 1 or 2) has rows,
    ``df_chunks[c]`` receives the chunk's sum of tr(H_u) (and, with 2 columns, of
    tr(H_u^2)), H_u = alpha Z_u
    A_u^-1 Z_u^T the row's hat matrix: with M_u = prec A_u^-1 and W = L_u^-1 C
    (A_u = L_u L_u^T, ``prec_chol`` = C the lower Cholesky factor of ``prec``),
    tr(H_u) = g - tr(M_u) = g - ||W||_F^2 and tr(H_u^2) = g - 2 tr(M_u) + ||W^T W||_F^2;
    g more triangular solves and a g x g Gram a row (the sampler's degrees-of-freedom
    noise draw uses them).

    Rows are split into ``n_chunks`` fixed chunks (u = c, c + n_chunks, ...), each
    solved LANES rows at a time; ``sse_chunks[c]`` receives the chunk's sum of
    squared residuals at the new values, so the caller's sum is deterministic.
    """
    f = Y.shape[1]
    g = f + 1 if use_bias else f
    gp = (g + 4) // 4 * 4  # features, the target, zero padding
    nrow = indptr.shape[0] - 1
    want_mean = X_mean.shape[0] > 0
    want_df = df_chunks.shape[0] > 0
    gw = g if want_df else 0
    want_sq = want_df and df_chunks.shape[1] > 1
    for c in prange(n_chunks):
        maxn = chunk_max_count(indptr, c, n_chunks)
        Zt = _work_buffers(gp, maxn, f, use_bias)
        Gs = np.zeros((LANES, gp, gp), dtype=np.float32)
        A = np.empty((g, g, LANES))
        h = np.empty((g, LANES))
        hm = np.empty((g, LANES))
        inv = np.empty((g, LANES))
        eps = np.empty(g)
        x = np.empty(g)
        rows = np.empty(LANES, dtype=np.int64)
        W = np.empty((gw, gw, LANES))
        fro = np.empty(LANES)
        fro2 = np.empty(LANES)
        dot = np.empty(LANES)
        sse = 0.0
        tr_h = 0.0
        tr_h2 = 0.0
        n_rows = (nrow - c + n_chunks - 1) // n_chunks if c < nrow else 0
        for j0 in range(0, n_rows, LANES):
            nl = min(LANES, n_rows - j0)
            for ln in range(LANES):
                if ln >= nl:  # idle lane: identity system
                    for d in range(g):
                        for e in range(d + 1):
                            A[d, e, ln] = 1.0 if d == e else 0.0
                        h[d, ln] = 0.0
                    continue
                u = c + (j0 + ln) * n_chunks
                rows[ln] = u
                G = Gs[ln]
                n = _row_system(indptr, indices, data, mu, b_other, Y, use_bias, u, Zt, G)
                for d in range(g):
                    for e in range(d + 1):
                        A[d, e, ln] = alpha * np.float64(G[e, d]) + prec[d, e]
                    h[d, ln] = alpha * np.float64(G[d, g]) + lin[d]
                for d in range(f):
                    A[d, d, ln] += ridge * n
                if use_bias:
                    A[f, f, ln] += ridge_b * n
                if A[0, 0, ln] <= 0.0:  # no entry and no prior (ridge mode): the row becomes 0
                    for d in range(g):
                        for e in range(d + 1):
                            A[d, e, ln] = 1.0 if d == e else 0.0
            batched_cholesky(A, g, inv)
            if want_df:  # W = L^-1 C, one column of C at a time (W is lower triangular)
                for ln in range(LANES):
                    fro[ln] = 0.0
                    fro2[ln] = 0.0
                for j in range(g):
                    Wj = W[j]
                    for d in range(j):
                        for ln in range(LANES):
                            Wj[d, ln] = 0.0
                    for d in range(j, g):  # forward substitution from row j (C[:j, j] = 0)
                        cdj = prec_chol[d, j]
                        for ln in range(LANES):
                            Wj[d, ln] = cdj
                        for k in range(j, d):
                            for ln in range(LANES):
                                Wj[d, ln] -= A[d, k, ln] * Wj[k, ln]
                        for ln in range(LANES):
                            Wj[d, ln] *= inv[d, ln]
                            fro[ln] += Wj[d, ln] * Wj[d, ln]
                for j in range(g if want_sq else 0):
                    # ||W^T W||_F^2 = sum_j (W_j . W_j)^2 + 2 sum_{k < j} (W_j . W_k)^2
                    Wj = W[j]
                    for k in range(j + 1):
                        Wk = W[k]
                        for ln in range(LANES):
                            dot[ln] = 0.0
                        for d in range(j, g):  # W_j and W_k are zero above row max(j, k) = j
                            for ln in range(LANES):
                                dot[ln] += Wj[d, ln] * Wk[d, ln]
                        wgt = 1.0 if k == j else 2.0
                        for ln in range(LANES):
                            fro2[ln] += wgt * dot[ln] * dot[ln]
                for ln in range(nl):
                    tr_h += g - fro[ln]
                    tr_h2 += g - 2.0 * fro[ln] + fro2[ln]
            batched_solve_lower(A, inv, h, g)
            if want_mean:
                for d in range(g):
                    for ln in range(LANES):
                        hm[d, ln] = h[d, ln]
                batched_solve_lower_t(A, inv, hm, g)
                for ln in range(nl):
                    u = rows[ln]
                    for d in range(f):
                        X_mean[u, d] = hm[d, ln]
                    if use_bias:
                        b_mean[u] = hm[f, ln]
            if draw:
                for ln in range(nl):
                    row_normals(seed, rows[ln], eps, g)
                    for d in range(g):
                        h[d, ln] += eps[d]
            batched_solve_lower_t(A, inv, h, g)
            for ln in range(nl):
                u = rows[ln]
                for d in range(g):
                    x[d] = h[d, ln]
                for d in range(f):
                    X[u, d] = x[d]
                if use_bias:
                    b_self[u] = x[f]
                if indptr[u + 1] > indptr[u]:
                    sse += _row_sse(Gs[ln], g, x)
        sse_chunks[c] = sse
        if want_df:
            df_chunks[c, 0] = tr_h
            if want_sq:
                df_chunks[c, 1] = tr_h2


@njit(**_JIT)
def row_posterior(indptr, indices, data, mu, b_other, Y, use_bias, alpha, prec, lin, u):
    """(mean, L) of row u's conditional posterior (no ridge), L the lower Cholesky factor of its
    precision A_u: what :func:`sample_side` draws from, one row at a time (for tests)."""
    f = Y.shape[1]
    g = f + 1 if use_bias else f
    gp = (g + 4) // 4 * 4
    Zt = _work_buffers(gp, indptr[u + 1] - indptr[u], f, use_bias)
    G = np.zeros((gp, gp), dtype=np.float32)
    _row_system(indptr, indices, data, mu, b_other, Y, use_bias, u, Zt, G)
    A = np.zeros((g, g), dtype=np.float64)
    h = np.empty(g, dtype=np.float64)
    for d in range(g):
        for e in range(d + 1):
            A[d, e] = alpha * np.float64(G[e, d]) + prec[d, e]
        h[d] = alpha * np.float64(G[d, g]) + lin[d]
    cholesky_factor(A, g)
    chol_solve_factored(A, g, h)
    return h, A


# ------------------------------------------------------------- predictions
@njit(parallel=True, **_JIT)
def pair_dots(rows, cols, U, V, width, out):
    """out[k] = sum_{d < width} U[rows[k], d] V[cols[k], d] (float64 accumulation)."""
    for k in prange(rows.shape[0]):
        u = rows[k]
        i = cols[k]
        acc = 0.0
        for d in range(width):
            acc += np.float64(U[u, d]) * np.float64(V[i, d])
        out[k] = acc


@njit(parallel=True, **_JIT)
def add_pair_dots(rows, cols, P, Q, scale, out):
    """out[k] += scale * P[rows[k]] . Q[cols[k]] (float64 accumulation; running sums)."""
    f = P.shape[1]
    for k in prange(rows.shape[0]):
        u = rows[k]
        i = cols[k]
        acc = 0.0
        for d in range(f):
            acc += np.float64(P[u, d]) * np.float64(Q[i, d])
        out[k] += scale * acc


# --------------------------------------------------------- hyper-parameter statistics
@njit(parallel=True, **_JIT)
def row_scatter(X, b, use_bias, n_chunks, out_sum, out_scatter):
    """Sum and uncentered scatter of the rows x_u = (X[u], b[u]) (b only with ``use_bias``):
    out_sum = sum_u x_u, out_scatter = sum_u x_u x_u^T (float64, g = f (+ 1)).

    Fixed chunks of rows, combined in order: deterministic.  (The sampler computes
    these here, not with numpy: a multi-threaded BLAS call right after a numba
    parallel region was measured 100x slower than alone, the two thread pools
    fighting over the cores.)
    """
    m, f = X.shape
    g = f + 1 if use_bias else f
    part_s = np.zeros((n_chunks, g))
    part_S = np.zeros((n_chunks, g, g))
    for c in prange(n_chunks):
        x = np.empty(g)
        ps = part_s[c]
        pS = part_S[c]
        for u in range(c, m, n_chunks):
            for d in range(f):
                x[d] = X[u, d]
            if use_bias:
                x[f] = b[u]
            for d in range(g):
                ps[d] += x[d]
                xd = x[d]
                for e in range(g):
                    pS[d, e] += xd * x[e]
    for d in range(g):
        out_sum[d] = 0.0
        for e in range(g):
            out_scatter[d, e] = 0.0
    for c in range(n_chunks):
        for d in range(g):
            out_sum[d] += part_s[c, d]
            for e in range(g):
                out_scatter[d, e] += part_S[c, d, e]


@njit(parallel=True, **_JIT)
def store_slot(buf, s, X):
    """buf[:, s, :] = X (a kept sample into the (rows, samples, f) store; parallel over rows)."""
    for u in prange(X.shape[0]):
        for d in range(X.shape[1]):
            buf[u, s, d] = X[u, d]
