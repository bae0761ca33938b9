"""Numba kernels of the latent factor model (METHODS.md section 2).

Plain functions over arrays, float32, parallel over rows with ``prange``.
Every reduction is race-free without atomics: quantities indexed by users are
accumulated in a sweep over the CSR view (one thread owns a user), quantities
indexed by items in a sweep over the CSC view (one thread owns an item).  The
same "side" kernels serve both sweeps: call them with (CSR, P, Q) for the user
side and (CSC, Q, P) for the item side.

Notation: ``indptr``/``indices`` of a view, ``w`` a per-entry array in that
view's order, ``X`` the factors of the side being accumulated (rows = the view's
major index), ``Y`` the factors of the other side.

Regularization enters as per-row weights, never as a scalar: ``wx[u]`` is the
L2 coefficient of row u's factors and ``wb[u]`` that of its bias, so the penalty
is 1/2 sum_u wx[u] |x_u|^2 + 1/2 sum_u wb[u] b_u^2 on each side.  The
count-weighted L2 of METHODS.md section 2 is ``wx = lam * cnt``, ``wb = lam_b *
cnt`` (cnt = the row's number of training entries); a constant part or a learned
Lambda changes only the weights, never the kernels.  Per-entry methods (SGD,
mini-batch estimates) take per-visit coefficients ``v = w / cnt`` instead, so
that visiting every entry once applies the full penalty.
Bias arrays (and bias weights) have length 0 when ``use_bias`` is False and are
then never read.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_JIT = dict(cache=True, fastmath=True, nogil=True)


# ------------------------------------------------------------------ predictions
@njit(parallel=True, **_JIT)
def predict_entries(rows, cols, mu, bu, bi, P, Q, use_bias, out):
    """out[k] = mu + bu[rows[k]] + bi[cols[k]] + P[rows[k]] . Q[cols[k]]."""
    f = P.shape[1]
    for k in prange(rows.shape[0]):
        u = rows[k]
        i = cols[k]
        acc = np.float32(0.0)
        for d in range(f):
            acc += P[u, d] * Q[i, d]
        if use_bias:
            acc += bu[u] + bi[i]
        out[k] = mu + acc


@njit(parallel=True, **_JIT)
def residuals(indptr, indices, data, mu, bu, bi, P, Q, use_bias, out):
    """Residuals e = r - r_hat of every entry of a CSR view, in CSR order."""
    f = P.shape[1]
    for u in prange(indptr.shape[0] - 1):
        for k in range(indptr[u], indptr[u + 1]):
            i = indices[k]
            acc = np.float32(0.0)
            for d in range(f):
                acc += P[u, d] * Q[i, d]
            if use_bias:
                acc += bu[u] + bi[i]
            out[k] = data[k] - mu - acc


@njit(parallel=True, **_JIT)
def gather(src, perm, out):
    """out[k] = src[perm[k]] (re-order a per-entry array from one view to another)."""
    for k in prange(perm.shape[0]):
        out[k] = src[perm[k]]


# ------------------------------------------------------------ side accumulation
@njit(parallel=True, **_JIT)
def side_accumulate(indptr, indices, w, Y, scale, X, wx, b, wb, use_bias, out, out_b):
    """For every row u of the view:

    out[u]   = scale * sum_k w[k] Y[indices[k]] + wx[u] * X[u]
    out_b[u] = scale * sum_k w[k]               + wb[u] * b[u]

    With ``w = e, scale = -1, X = P`` this is the gradient of the objective;
    with ``w = J v, scale = +1, X = V`` it is the Gauss-Newton product G v.
    """
    f = Y.shape[1]
    for u in prange(indptr.shape[0] - 1):
        start = indptr[u]
        end = indptr[u + 1]
        acc = np.zeros(f, dtype=np.float32)
        sb = np.float32(0.0)
        for k in range(start, end):
            wk = w[k]
            i = indices[k]
            sb += wk
            for d in range(f):
                acc[d] += wk * Y[i, d]
        reg = wx[u]
        for d in range(f):
            out[u, d] = scale * acc[d] + reg * X[u, d]
        if use_bias:
            out_b[u] = scale * sb + wb[u] * b[u]


@njit(parallel=True, **_JIT)
def residual_grad_rows(indptr, indices, data, mu, bu, bi, P, Q, wu, wbu, use_bias, e_out, gP, gbu):
    """Fused user-side sweep: residuals e (CSR order) and the user-side gradient.

    e_k = r_k - r_hat_k;  gP[u] = -sum_k e_k Q[i_k] + wu[u] P[u];
    gbu[u] = -sum_k e_k + wbu[u] bu[u].
    """
    f = P.shape[1]
    for u in prange(indptr.shape[0] - 1):
        start = indptr[u]
        end = indptr[u + 1]
        acc = np.zeros(f, dtype=np.float32)
        sb = np.float32(0.0)
        for k in range(start, end):
            i = indices[k]
            pred = np.float32(0.0)
            for d in range(f):
                pred += P[u, d] * Q[i, d]
            if use_bias:
                pred += bu[u] + bi[i]
            e = data[k] - mu - pred
            e_out[k] = e
            sb += e
            for d in range(f):
                acc[d] += e * Q[i, d]
        reg = wu[u]
        for d in range(f):
            gP[u, d] = reg * P[u, d] - acc[d]
        if use_bias:
            gbu[u] = wbu[u] * bu[u] - sb


@njit(parallel=True, **_JIT)
def jv_rows(indptr, indices, P, Q, vbu, vbi, VP, VQ, wu, wbu, use_bias, s_out, OP, obu):
    """Fused user-side sweep of the Gauss-Newton product.

    s_k = (J v)_k = vbu[u] + vbi[i] + VP[u] . Q[i] + P[u] . VQ[i]  (stored, CSR order);
    OP[u] = sum_k s_k Q[i_k] + wu[u] VP[u];  obu[u] = sum_k s_k + wbu[u] vbu[u].
    """
    f = P.shape[1]
    for u in prange(indptr.shape[0] - 1):
        start = indptr[u]
        end = indptr[u + 1]
        acc = np.zeros(f, dtype=np.float32)
        sb = np.float32(0.0)
        for k in range(start, end):
            i = indices[k]
            sk = np.float32(0.0)
            for d in range(f):
                sk += VP[u, d] * Q[i, d] + P[u, d] * VQ[i, d]
            if use_bias:
                sk += vbu[u] + vbi[i]
            s_out[k] = sk
            sb += sk
            for d in range(f):
                acc[d] += sk * Q[i, d]
        reg = wu[u]
        for d in range(f):
            OP[u, d] = acc[d] + reg * VP[u, d]
        if use_bias:
            obu[u] = sb + wbu[u] * vbu[u]


@njit(parallel=True, **_JIT)
def step_polynomial(indptr, indices, data, mu, bu, bi, P, Q, dbu, dbi, DP, DQ, use_bias):
    """Sums that give the data term of L(y + t D) as a quartic polynomial in t.

    For the bilinear model the residual along a direction D is exactly
    e(t) = e - t s - t^2 c with s = J D (the hidden mapping) and
    c_ui = DP[u] . DQ[i].  Returns (sum e^2, sum e s, sum e c, sum s^2, sum s c,
    sum c^2) in float64, from one sweep of the CSR view.
    """
    f = P.shape[1]
    ee = 0.0
    es = 0.0
    ec = 0.0
    ss = 0.0
    sc = 0.0
    cc = 0.0
    for u in prange(indptr.shape[0] - 1):
        for k in range(indptr[u], indptr[u + 1]):
            i = indices[k]
            pred = np.float32(0.0)
            sk = np.float32(0.0)
            ck = np.float32(0.0)
            for d in range(f):
                pred += P[u, d] * Q[i, d]
                sk += DP[u, d] * Q[i, d] + P[u, d] * DQ[i, d]
                ck += DP[u, d] * DQ[i, d]
            if use_bias:
                pred += bu[u] + bi[i]
                sk += dbu[u] + dbi[i]
            e = np.float64(data[k] - mu - pred)
            s64 = np.float64(sk)
            c64 = np.float64(ck)
            ee += e * e
            es += e * s64
            ec += e * c64
            ss += s64 * s64
            sc += s64 * c64
            cc += c64 * c64
    return ee, es, ec, ss, sc, cc


@njit(parallel=True, **_JIT)
def side_gn_diagonal(indptr, indices, Y, wx, wb, use_bias, out, out_b):
    """Exact Gauss-Newton diagonal of one side: out[u, d] = sum_i Y[i, d]^2 + wx[u],
    out_b[u] = cnt_u + wb[u]."""
    f = Y.shape[1]
    for u in prange(indptr.shape[0] - 1):
        start = indptr[u]
        end = indptr[u + 1]
        cnt = np.float32(end - start)
        acc = np.zeros(f, dtype=np.float32)
        for k in range(start, end):
            i = indices[k]
            for d in range(f):
                acc[d] += Y[i, d] * Y[i, d]
        reg = wx[u]
        for d in range(f):
            out[u, d] = acc[d] + reg
        if use_bias:
            out_b[u] = cnt + wb[u]


@njit(parallel=True, **_JIT)
def sum_squares(x):
    total = 0.0
    for k in prange(x.shape[0]):
        total += x[k] * x[k]
    return total


# --------------------------------------------------------------------- SGD epoch
@njit(**_JIT)
def _splitmix(state):
    state = (state + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    z = state
    z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    return state, z ^ (z >> np.uint64(31))


@njit(**_JIT)
def _shuffle_range(perm, start, end, seed):
    """Fisher-Yates shuffle of perm[start:end] with a counter-based generator."""
    state = np.uint64(seed)
    for k in range(end - 1, start, -1):
        state, z = _splitmix(state)
        j = start + np.int64(z % np.uint64(k - start + 1))
        tmp = perm[k]
        perm[k] = perm[j]
        perm[j] = tmp


@njit(parallel=True, **_JIT)
def sgd_epoch(
    rows, cols, vals, block_ptr, n_blocks, perm, reshuffle, seed, mu, bu, bi, P, Q, lr, vu, vi, vbu, vbi, uniform,
    use_bias
):
    """One epoch of per-entry SGD, parallel and race-free by stratification (DSGD).

    Entries are grouped into ``n_blocks x n_blocks`` blocks by (user group, item
    group); block (a, b) holds positions ``block_ptr[a * n_blocks + b] ..
    block_ptr[a * n_blocks + b + 1]`` of ``rows/cols/vals``.  In sub-epoch s the
    blocks (a, (a + s) mod n_blocks) share no user and no item, so threads update
    them at once without races.  With ``reshuffle`` entries are visited in a fresh
    random order every epoch (``perm`` is shuffled in place from ``seed``);
    otherwise in their stored order (the caller stores them shuffled within each
    block once, as LIBMF does), which reads memory sequentially and is faster.  Per-visit L2
    coefficients (``vu[u]``, ``vi[i]`` on factors, ``vbu[u]``, ``vbi[i]`` on biases:
    the row weights divided by the row counts) make one epoch apply the full
    row-weighted penalty; with ``uniform`` every visited row has the same coefficients,
    given at index 0 (the count-weighted L2: the loads of per-row coefficients cost
    ~10 % of an epoch at rank 20).  Returns the sum of squared residuals seen during the epoch.
    """
    f = P.shape[1]
    total = 0.0
    # uniform coefficients are loop constants (no load per visit)
    cu0, ci0, cbu0, cbi0 = vu[0], vi[0], vbu[0], vbi[0]
    for s in range(n_blocks):
        for a in prange(n_blocks):
            blk = a * n_blocks + (a + s) % n_blocks
            start = block_ptr[blk]
            end = block_ptr[blk + 1]
            if reshuffle:
                _shuffle_range(perm, start, end, seed * np.uint64(1000003) + np.uint64(blk))
            sse = 0.0
            for t in range(start, end):
                k = perm[t] if reshuffle else t
                u = rows[k]
                i = cols[k]
                pred = np.float32(0.0)
                for d in range(f):
                    pred += P[u, d] * Q[i, d]
                if use_bias:
                    pred += bu[u] + bi[i]
                e = vals[k] - mu - pred
                sse += e * e
                if use_bias:
                    cbu = cbu0 if uniform else vbu[u]
                    cbi = cbi0 if uniform else vbi[i]
                    bu[u] += lr * (e - cbu * bu[u])
                    bi[i] += lr * (e - cbi * bi[i])
                cu = cu0 if uniform else vu[u]
                ci = ci0 if uniform else vi[i]
                for d in range(f):
                    pu = P[u, d]
                    qi = Q[i, d]
                    P[u, d] = pu + lr * (e * qi - cu * pu)
                    Q[i, d] = qi + lr * (e * pu - ci * qi)
            total += sse
    return total


# ------------------------------------------------------------- mini-batch oracle
@njit(**_JIT)
def batch_grad_diag(
    rows, cols, vals, batch, mu, bu, bi, P, Q, vu, vi, vbu, vbi, uniform, use_bias, scale, want_diag,
    g_bu, g_bi, g_P, g_Q, d_bu, d_bi, d_P, d_Q,
):
    """``scale`` times the batch sums of the gradient, and optionally of the Gauss-Newton
    diagonal, over the entries ``batch`` (positions in rows/cols/vals); every visit
    adds its per-visit penalty (``vu``, ``vi``, ``vbu``, ``vbi``; at index 0 for every
    row with ``uniform``, as in :func:`sgd_epoch`).

    ``scale = |K| / |B|`` gives unbiased estimates of the full gradient and diagonal;
    ``scale = 1`` the summed batch gradient of mini-batch SGD.
    Output arrays must be zero on entry; serial (race-free) over the batch.
    Returns the batch's sum of squared residuals.
    """
    f = P.shape[1]
    sse = 0.0
    cu0, ci0, cbu0, cbi0 = vu[0], vi[0], vbu[0], vbi[0]
    for t in range(batch.shape[0]):
        k = batch[t]
        u = rows[k]
        i = cols[k]
        pred = np.float32(0.0)
        for d in range(f):
            pred += P[u, d] * Q[i, d]
        if use_bias:
            pred += bu[u] + bi[i]
        e = vals[k] - mu - pred
        sse += e * e
        se = scale * e
        if use_bias:
            cbu = cbu0 if uniform else vbu[u]
            cbi = cbi0 if uniform else vbi[i]
            g_bu[u] += -se + scale * cbu * bu[u]
            g_bi[i] += -se + scale * cbi * bi[i]
            if want_diag:
                d_bu[u] += scale * (np.float32(1.0) + cbu)
                d_bi[i] += scale * (np.float32(1.0) + cbi)
        cu = cu0 if uniform else vu[u]
        ci = ci0 if uniform else vi[i]
        for d in range(f):
            pu = P[u, d]
            qi = Q[i, d]
            g_P[u, d] += -se * qi + scale * cu * pu
            g_Q[i, d] += -se * pu + scale * ci * qi
            if want_diag:
                d_P[u, d] += scale * (qi * qi + cu)
                d_Q[i, d] += scale * (pu * pu + ci)
    return sse


# ----------------------------------------------------------------------- ALS
@njit(**_JIT)
def cholesky_solve(A, b):
    """Solve A x = b for symmetric positive definite A (float64) in place: x overwrites b.

    Only the upper triangle of A is read; A is overwritten by its Cholesky factor.
    """
    n = A.shape[0]
    for j in range(n):
        s = A[j, j]
        for k in range(j):
            s -= A[k, j] * A[k, j]
        if s <= 0.0:
            s = 1e-12
        d = np.sqrt(s)
        A[j, j] = d
        for i in range(j + 1, n):
            t = A[j, i]
            for k in range(j):
                t -= A[k, j] * A[k, i]
            A[j, i] = t / d
    # R^T z = b (R upper: A[k, j] for k <= j), then R x = z
    for i in range(n):
        t = b[i]
        for k in range(i):
            t -= A[k, i] * b[k]
        b[i] = t / A[i, i]
    for i in range(n - 1, -1, -1):
        t = b[i]
        for k in range(i + 1, n):
            t -= A[i, k] * b[k]
        b[i] = t / A[i, i]


@njit(**_JIT)
def _row_gram(start, end, indices, Y, use_bias, G, z):
    """G = sum over entries k in [start, end) of z_k z_k^T, z_k = (Y[i_k], 1): float32,
    full rows (contiguous inner loop, vectorizes)."""
    f = Y.shape[1]
    g = G.shape[0]
    G[:, :] = 0.0
    for k in range(start, end):
        i = indices[k]
        for d in range(f):
            z[d] = Y[i, d]
        if use_bias:
            z[f] = 1.0
        for d in range(g):
            zd = z[d]
            for e in range(g):
                G[d, e] += zd * z[e]


@njit(parallel=True, **_JIT)
def als_side(indptr, indices, data, mu, b_other, Y, wx, wb, use_bias, X, b_self):
    """Closed-form ridge update of one side (rows of the view) with the other fixed.

    Minimizes, for each row u, sum_k (r_k - mu - b_other[i] - b_u - x_u . y_i)^2
    + wx[u] ||x_u||^2 + wb[u] b_u^2, exactly (the row-weighted objective;
    METHODS.md section 2 has wx = lam cnt_u): accumulates the (f+1) x (f+1) normal
    equations in float64 and solves them by Cholesky, no BLAS (so no thread
    oversubscription inside the parallel loop).  Rows with no entry are set to zero.
    A row whose factor weight is 0 is solved with weight 1e-6 cnt_u instead: its
    normal matrix is singular when the row has fewer entries than f.
    """
    f = Y.shape[1]
    g = f + 1 if use_bias else f
    for u in prange(indptr.shape[0] - 1):
        start = indptr[u]
        end = indptr[u + 1]
        n = end - start
        if n == 0:
            for d in range(f):
                X[u, d] = 0.0
            if use_bias:
                b_self[u] = 0.0
            continue
        G = np.empty((g, g), dtype=np.float32)
        z = np.empty(g, dtype=np.float32)
        _row_gram(start, end, indices, Y, use_bias, G, z)
        A = G.astype(np.float64)
        rhs = np.zeros(g, dtype=np.float64)
        for k in range(start, end):
            i = indices[k]
            target = np.float64(data[k] - mu)
            if use_bias:
                target -= b_other[i]
                rhs[f] += target
            for d in range(f):
                rhs[d] += Y[i, d] * target
        reg = np.float64(wx[u])
        if reg == 0.0:
            reg = 1e-6 * n
        for d in range(f):
            A[d, d] += reg
        if use_bias:
            A[f, f] += wb[u]
        cholesky_solve(A, rhs)
        for d in range(f):
            X[u, d] = rhs[d]
        if use_bias:
            b_self[u] = rhs[f]


# ------------------------------------------------ block-Jacobi preconditioner
@njit(parallel=True, **_JIT)
def side_gn_blocks(indptr, indices, Y, wx, wb, use_bias, shift, diag_scale, blocks):
    """Cholesky factors of the per-row diagonal blocks of the Gauss-Newton matrix.

    Row u's block couples its factors and bias: sum_k z_k z_k^T + diag(wx[u],
    ..., wb[u]) + shift I with z_k = (Y[i_k], 1), its diagonal first multiplied
    by ``diag_scale`` (1 + gamma for Marquardt damping).  These are exactly the
    normal-equation matrices of ALS; they make a block-Jacobi preconditioner for
    CG.  ``blocks`` has shape (rows, g, g), g = f (+ 1 with biases); it is
    overwritten by the upper Cholesky factors (float64).
    """
    f = Y.shape[1]
    g = f + 1 if use_bias else f
    for u in prange(indptr.shape[0] - 1):
        A = blocks[u]
        G = np.empty((g, g), dtype=np.float32)
        z = np.empty(g, dtype=np.float32)
        start = indptr[u]
        end = indptr[u + 1]
        _row_gram(start, end, indices, Y, use_bias, G, z)
        for d in range(g):
            for e in range(g):
                A[d, e] = G[d, e]
        reg = np.float64(wx[u])
        for d in range(f):
            A[d, d] = (A[d, d] + reg) * diag_scale + shift
        if use_bias:
            A[f, f] = (A[f, f] + wb[u]) * diag_scale + shift
        rhs = np.zeros(g, dtype=np.float64)
        cholesky_solve(A, rhs)  # factor in place (rhs unused)


@njit(parallel=True, **_JIT)
def side_block_solve(blocks, rX, rb, use_bias, outX, outb):
    """out = M^-1 r for one side, M block-diagonal with the factors of side_gn_blocks."""
    f = rX.shape[1]
    g = f + 1 if use_bias else f
    for u in prange(rX.shape[0]):
        R = blocks[u]
        x = np.empty(g, dtype=np.float64)
        for d in range(f):
            x[d] = rX[u, d]
        if use_bias:
            x[f] = rb[u]
        for i in range(g):  # R^T z = r
            t = x[i]
            for k in range(i):
                t -= R[k, i] * x[k]
            x[i] = t / R[i, i]
        for i in range(g - 1, -1, -1):  # R x = z
            t = x[i]
            for k in range(i + 1, g):
                t -= R[i, k] * x[k]
            x[i] = t / R[i, i]
        for d in range(f):
            outX[u, d] = x[d]
        if use_bias:
            outb[u] = x[f]
