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

Factor weights may be per row or per (row, dimension): ``wx`` (and the per-visit
``vu``/``vi``) is an array of shape (rows,) or (rows, 1) -- one coefficient for the
whole row -- or (rows, f) -- its own coefficient for every (row, dimension), the
penalty then 1/2 sum_{u,d} wx[u, d] x_{u,d}^2.  Kernels view it as (rows, 1 or f)
(:func:`_cols`) and branch once per row (per visit in the per-entry kernels), so the
per-row path runs the same loops as before.  Bias weights are always per row.
"""

from __future__ import annotations

import contextlib

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

_JIT = dict(cache=True, fastmath=True, nogil=True)


@njit(**_JIT)
def _cols(w):
    """A weight array as a 2-D (rows, k) view: (rows,) -> (rows, 1), (rows, k) unchanged."""
    return w.reshape((w.shape[0], -1))


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
    W = _cols(wx)
    for u in prange(indptr.shape[0] - 1):
        # inside the parallel body: the test is a compile-time constant for 1-D weights there
        elem = wx.ndim == 2 and W.shape[1] > 1
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
        if elem:
            for d in range(f):
                out[u, d] = scale * acc[d] + W[u, d] * X[u, d]
        else:
            reg = W[u, 0]
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
    W = _cols(wu)
    for u in prange(indptr.shape[0] - 1):
        # inside the parallel body: the test is a compile-time constant for 1-D weights there
        elem = wu.ndim == 2 and W.shape[1] > 1
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
        if elem:
            for d in range(f):
                gP[u, d] = W[u, d] * P[u, d] - acc[d]
        else:
            reg = W[u, 0]
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
    W = _cols(wu)
    for u in prange(indptr.shape[0] - 1):
        # inside the parallel body: the test is a compile-time constant for 1-D weights there
        elem = wu.ndim == 2 and W.shape[1] > 1
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
        if elem:
            for d in range(f):
                OP[u, d] = acc[d] + W[u, d] * VP[u, d]
        else:
            reg = W[u, 0]
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
    """Exact Gauss-Newton diagonal of one side: out[u, d] = sum_i Y[i, d]^2 + wx[u] (or wx[u, d]),
    out_b[u] = cnt_u + wb[u]."""
    f = Y.shape[1]
    W = _cols(wx)
    for u in prange(indptr.shape[0] - 1):
        # inside the parallel body: the test is a compile-time constant for 1-D weights there
        elem = wx.ndim == 2 and W.shape[1] > 1
        start = indptr[u]
        end = indptr[u + 1]
        cnt = np.float32(end - start)
        acc = np.zeros(f, dtype=np.float32)
        for k in range(start, end):
            i = indices[k]
            for d in range(f):
                acc[d] += Y[i, d] * Y[i, d]
        if elem:
            for d in range(f):
                out[u, d] = acc[d] + W[u, d]
        else:
            reg = W[u, 0]
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
    ~10 % of an epoch at rank 20).  ``vu``/``vi`` of shape (rows, f) (with ``uniform``:
    (1, f)) give every (row, dimension) its own coefficient.  Returns the sum of squared
    residuals seen during the epoch.
    """
    f = P.shape[1]
    total = 0.0
    Vu = _cols(vu)
    Vi = _cols(vi)
    # uniform coefficients are loop constants (no load per visit)
    cu0, ci0, cbu0, cbi0 = Vu[0, 0], Vi[0, 0], vbu[0], vbi[0]
    for s in range(n_blocks):
        for a in prange(n_blocks):
            # per-(row, dimension) coefficients on either side: the per-dimension loop below
            # (tested inside the parallel body, where it is a constant for 1-D coefficients)
            eu = vu.ndim == 2 and Vu.shape[1] > 1
            ei = vi.ndim == 2 and Vi.shape[1] > 1
            elem = eu or ei
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
                if elem:
                    ru = 0 if uniform else u
                    ri = 0 if uniform else i
                    for d in range(f):
                        pu = P[u, d]
                        qi = Q[i, d]
                        P[u, d] = pu + lr * (e * qi - Vu[ru, d if eu else 0] * pu)
                        Q[i, d] = qi + lr * (e * pu - Vi[ri, d if ei else 0] * qi)
                else:
                    cu = cu0 if uniform else Vu[u, 0]
                    ci = ci0 if uniform else Vi[i, 0]
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
    row with ``uniform``, as in :func:`sgd_epoch`; ``vu``/``vi`` per row or per (row,
    dimension)).

    ``scale = |K| / |B|`` gives unbiased estimates of the full gradient and diagonal;
    ``scale = 1`` the summed batch gradient of mini-batch SGD.
    Output arrays must be zero on entry; serial (race-free) over the batch.
    Returns the batch's sum of squared residuals.
    """
    f = P.shape[1]
    sse = 0.0
    Vu = _cols(vu)
    Vi = _cols(vi)
    eu = vu.ndim == 2 and Vu.shape[1] > 1
    ei = vi.ndim == 2 and Vi.shape[1] > 1
    cu0, ci0, cbu0, cbi0 = Vu[0, 0], Vi[0, 0], vbu[0], vbi[0]
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
        if eu or ei:
            ru = 0 if uniform else u
            ri = 0 if uniform else i
            for d in range(f):
                cu = Vu[ru, d if eu else 0]
                ci = Vi[ri, d if ei else 0]
                pu = P[u, d]
                qi = Q[i, d]
                g_P[u, d] += -se * qi + scale * cu * pu
                g_Q[i, d] += -se * pu + scale * ci * qi
                if want_diag:
                    d_P[u, d] += scale * (qi * qi + cu)
                    d_Q[i, d] += scale * (pu * pu + ci)
        else:
            cu = cu0 if uniform else Vu[u, 0]
            ci = ci0 if uniform else Vi[i, 0]
            for d in range(f):
                pu = P[u, d]
                qi = Q[i, d]
                g_P[u, d] += -se * qi + scale * cu * pu
                g_Q[i, d] += -se * pu + scale * ci * qi
                if want_diag:
                    d_P[u, d] += scale * (qi * qi + cu)
                    d_Q[i, d] += scale * (pu * pu + ci)
    return sse


# ------------------------------------------------------- dense row solves
# ALS and the block preconditioner solve, for every row u of a view, a system with the
# g x g matrix A_u = sum_k z_k z_k^T + D_u (z_k = (y_{i_k}, 1) with biases, D_u diagonal).
# Fast path (see benchmarks/bench_solves.py):
#   * the row's z_k are gathered into a contiguous (n_u, g) float32 buffer and the Gram
#     sum_k z_k z_k^T is one BLAS-3 call (ssyrk of scipy's OpenBLAS, lower triangle only;
#     without threadpoolctl, to keep OpenBLAS single-threaded inside the parallel loops,
#     a register-blocked numba kernel instead);
#   * the factorization is a row-oriented Cholesky with 4 x 4 register blocks in float64
#     (:func:`cholesky_factor`), as are the right-hand sides: the Gram is float32 (as the
#     former kernels'), a float32 factorization loses accuracy on ill-conditioned rows;
#   * a row with fewer entries than g (and D_u > 0) is solved through its n_u x n_u dual
#     (Woodbury, float64): (D + Z^T Z)^-1 Z^T = D^-1 Z^T (I + Z D^-1 Z^T)^-1, which costs
#     n_u^2 g + n_u^3 / 3 instead of n_u g^2 + g^3 / 3 and stores n_u (n_u + 1) / 2 floats.
# Matrices are C order; "lower" means the entries A[i, j], j <= i (row i contiguous).


def _cython_address(module: str, name: str) -> int:
    try:
        from numba.extending import get_cython_function_address

        return int(get_cython_function_address(module, name))
    except Exception:  # scipy without the cython BLAS: the numba Gram kernel is used
        return 0


#: address of scipy's BLAS ssyrk (0 when unavailable); kernels take it as an argument, so they stay cacheable
SSYRK = _cython_address("scipy.linalg.cython_blas", "ssyrk")
#: ALS solves a row by its dual when n_u < g * ALS_DUAL_PCT / 100 (the dual costs n_u^2 g + n_u^3 / 3
#: float64 flops against n_u g^2 float32 BLAS flops + g^3 / 3 of the normal equations)
ALS_DUAL_PCT = 100
#: Gram matrices of fewer columns than this use the numba kernel even when BLAS is available
#: (measured on ML-1M, one thread, gather included: the kernel is faster at g = 21 and 31, on par
#: at g = 41 and 51, ssyrk 1.4x faster at g = 101)
BLAS_MIN_G = 60

_threadpool = [None, False]  # [ThreadpoolController or None, looked up]


@contextlib.contextmanager
def single_threaded_blas():
    """Context in which the solve kernels may call BLAS: yields the ``blas`` argument for
    :func:`als_side` / :func:`side_gn_blocks` (the ssyrk address, or 0 for the numba Gram).

    The kernels call BLAS from every thread of their parallel loops; OpenBLAS must then run
    single-threaded (a multi-threaded OpenBLAS called from two threads at once is ~4x slower).
    The limit is set with ``threadpoolctl`` when it is installed; without it (or without
    scipy's cython BLAS) the context yields 0.
    """
    if not _threadpool[1]:
        _threadpool[1] = True
        try:
            from threadpoolctl import ThreadpoolController

            _threadpool[0] = ThreadpoolController()
        except Exception:
            _threadpool[0] = None
    ctl = _threadpool[0]
    if ctl is None or not SSYRK:
        yield 0
        return
    with ctl.limit(limits=1, user_api="blas"):
        yield SSYRK


_i8p = ir.IntType(8).as_pointer()


def _on_stack(builder, ty, value):
    slot = cgutils.alloca_once(builder, ty)
    builder.store(value, slot)
    return builder.bitcast(slot, _i8p)


@intrinsic
def _ssyrk_lower(typingctx, addr, trans, nrows, A, C):
    """BLAS ssyrk at ``addr`` on C-order float32 arrays, lower triangle of C:

    trans == 0:  C[:g, :g] = A[:nrows]^T A[:nrows]   (g = A.shape[1])
    trans == 1:  C[:nrows, :nrows] = A[:nrows] A[:nrows]^T

    (Fortran sees A as the column-major g x rows matrix with lda = g, and fills its upper
    triangle, which is C order's lower.)  C.shape[1] must be >= the size of the result.
    """
    sig = types.void(addr, trans, nrows, A, C)

    def codegen(context, builder, sig, args):
        a_addr, tr, nr, a, c = args
        aa = context.make_array(sig.args[3])(context, builder, a)
        ca = context.make_array(sig.args[4])(context, builder, c)
        i32 = ir.IntType(32)
        i8 = ir.IntType(8)
        f32 = ir.FloatType()
        g = builder.trunc(builder.extract_value(aa.shape, 1), i32)
        ldc = builder.trunc(builder.extract_value(ca.shape, 1), i32)
        k = builder.trunc(nr, i32)
        is_t = builder.icmp_signed("!=", tr, ir.Constant(tr.type, 0))
        n_f = builder.select(is_t, k, g)
        k_f = builder.select(is_t, g, k)
        ch = builder.select(is_t, ir.Constant(i8, ord("T")), ir.Constant(i8, ord("N")))
        fnty = ir.FunctionType(ir.VoidType(), [_i8p] * 10)
        fn = builder.inttoptr(a_addr, fnty.as_pointer())
        builder.call(fn, [_on_stack(builder, i8, ir.Constant(i8, ord("U"))), _on_stack(builder, i8, ch),
                          _on_stack(builder, i32, n_f), _on_stack(builder, i32, k_f),
                          _on_stack(builder, f32, ir.Constant(f32, 1.0)), builder.bitcast(aa.data, _i8p),
                          _on_stack(builder, i32, g), _on_stack(builder, f32, ir.Constant(f32, 0.0)),
                          builder.bitcast(ca.data, _i8p), _on_stack(builder, i32, ldc)])
        return context.get_dummy_value()

    return sig, codegen


@njit(**_JIT)
def _gram_rows(M, nr, C):
    """C[b, a] = M[a] . M[b] for a <= b < nr (lower triangle of M[:nr] M[:nr]^T; the diagonal
    4 x 4 blocks are written whole).  Reductions over M's contiguous rows, 4 x 4 register
    blocks; M must be C-contiguous for the loops to vectorize."""
    L = M.shape[1]
    n4 = nr - nr % 4
    for a in range(0, n4, 4):
        for b in range(a, n4, 4):
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = np.float32(0.0)
            s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = np.float32(0.0)
            for t in range(L):
                x0 = M[a, t]
                x1 = M[a + 1, t]
                x2 = M[a + 2, t]
                x3 = M[a + 3, t]
                y0 = M[b, t]
                y1 = M[b + 1, t]
                y2 = M[b + 2, t]
                y3 = M[b + 3, t]
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
            C[b, a] = s00
            C[b + 1, a] = s01
            C[b + 2, a] = s02
            C[b + 3, a] = s03
            C[b, a + 1] = s10
            C[b + 1, a + 1] = s11
            C[b + 2, a + 1] = s12
            C[b + 3, a + 1] = s13
            C[b, a + 2] = s20
            C[b + 1, a + 2] = s21
            C[b + 2, a + 2] = s22
            C[b + 3, a + 2] = s23
            C[b, a + 3] = s30
            C[b + 1, a + 3] = s31
            C[b + 2, a + 3] = s32
            C[b + 3, a + 3] = s33
    for b in range(n4, nr):
        for a in range(b + 1):
            s = np.float32(0.0)
            for t in range(L):
                s += M[a, t] * M[b, t]
            C[b, a] = s


@njit(**_JIT)
def cholesky_factor(A, g):
    """Cholesky factor in place: the lower triangle of A[:g, :g] (C order; the upper one is
    not read) becomes L with A = L L^T.  Works in A's dtype (float32 or float64).

    Row-oriented dot-product (Crout) form with 4 x 4 register blocks: every inner loop is a
    reduction over two contiguous rows.  A pivot <= 0 (a matrix that is not positive definite
    in floating point) is replaced by 1e-30 (1 + |A_ii|) -- as :func:`cholesky_solve` floors
    them -- and counted: returns the number of such pivots (0 for an SPD matrix).
    Solve with :func:`chol_solve_factored` (or :func:`lower_solve` / :func:`lower_t_solve`).
    """
    bad = 0
    i0 = 0
    while i0 < g:
        ib = min(4, g - i0)
        jstart = 0
        if ib == 4:
            j0 = 0
            while j0 + 4 <= i0:
                s00 = A[i0, j0]
                s01 = A[i0, j0 + 1]
                s02 = A[i0, j0 + 2]
                s03 = A[i0, j0 + 3]
                s10 = A[i0 + 1, j0]
                s11 = A[i0 + 1, j0 + 1]
                s12 = A[i0 + 1, j0 + 2]
                s13 = A[i0 + 1, j0 + 3]
                s20 = A[i0 + 2, j0]
                s21 = A[i0 + 2, j0 + 1]
                s22 = A[i0 + 2, j0 + 2]
                s23 = A[i0 + 2, j0 + 3]
                s30 = A[i0 + 3, j0]
                s31 = A[i0 + 3, j0 + 1]
                s32 = A[i0 + 3, j0 + 2]
                s33 = A[i0 + 3, j0 + 3]
                for k in range(j0):
                    x0 = A[i0, k]
                    x1 = A[i0 + 1, k]
                    x2 = A[i0 + 2, k]
                    x3 = A[i0 + 3, k]
                    y0 = A[j0, k]
                    y1 = A[j0 + 1, k]
                    y2 = A[j0 + 2, k]
                    y3 = A[j0 + 3, k]
                    s00 -= x0 * y0
                    s01 -= x0 * y1
                    s02 -= x0 * y2
                    s03 -= x0 * y3
                    s10 -= x1 * y0
                    s11 -= x1 * y1
                    s12 -= x1 * y2
                    s13 -= x1 * y3
                    s20 -= x2 * y0
                    s21 -= x2 * y1
                    s22 -= x2 * y2
                    s23 -= x2 * y3
                    s30 -= x3 * y0
                    s31 -= x3 * y1
                    s32 -= x3 * y2
                    s33 -= x3 * y3
                A[i0, j0] = s00
                A[i0, j0 + 1] = s01
                A[i0, j0 + 2] = s02
                A[i0, j0 + 3] = s03
                A[i0 + 1, j0] = s10
                A[i0 + 1, j0 + 1] = s11
                A[i0 + 1, j0 + 2] = s12
                A[i0 + 1, j0 + 3] = s13
                A[i0 + 2, j0] = s20
                A[i0 + 2, j0 + 1] = s21
                A[i0 + 2, j0 + 2] = s22
                A[i0 + 2, j0 + 3] = s23
                A[i0 + 3, j0] = s30
                A[i0 + 3, j0 + 1] = s31
                A[i0 + 3, j0 + 2] = s32
                A[i0 + 3, j0 + 3] = s33
                # the four columns' own triangle (k = j0 .. j - 1), then the division
                for jj in range(4):
                    j = j0 + jj
                    inv = 1.0 / A[j, j]
                    for t in range(4):
                        i = i0 + t
                        acc = A[i, j]
                        for k in range(j0, j):
                            acc -= A[i, k] * A[j, k]
                        A[i, j] = acc * inv
                j0 += 4
            jstart = j0
        # the diagonal block (every column of a last partial block): plain dots
        for t in range(ib):
            i = i0 + t
            for j in range(jstart, i + 1):
                acc = A[i, j]
                for k in range(j):
                    acc -= A[i, k] * A[j, k]
                if j < i:
                    A[i, j] = acc / A[j, j]
                else:
                    if not (acc > 0.0):
                        bad += 1
                        acc = 1e-30 * (1.0 + abs(A[i, i]))
                    A[i, i] = np.sqrt(acc)
        i0 += ib
    return bad


@njit(**_JIT)
def lower_solve(L, g, b):
    """b <- L^-1 b for the lower factor L[:g, :g] of :func:`cholesky_factor` (forward substitution)."""
    for i in range(g):
        acc = b[i]
        for k in range(i):
            acc -= L[i, k] * b[k]
        b[i] = acc / L[i, i]


@njit(**_JIT)
def lower_t_solve(L, g, b):
    """b <- L^-T b (back substitution with the transpose; reads L's rows contiguously).

    With b ~ N(0, I) this draws from N(0, A^-1), A = L L^T (what a Gibbs sampler needs)."""
    for i in range(g - 1, -1, -1):
        xi = b[i] / L[i, i]
        b[i] = xi
        for k in range(i):
            b[k] -= xi * L[i, k]


@njit(**_JIT)
def chol_solve_factored(L, g, b):
    """b <- A^-1 b with A = L L^T factored by :func:`cholesky_factor` (in place)."""
    lower_solve(L, g, b)
    lower_t_solve(L, g, b)


@njit(**_JIT)
def _gather_rows(start, n, indices, Y, use_bias, Z):
    """Z[k] = (Y[indices[start + k]], 1) for k < n (Z C-contiguous, (>= n, g))."""
    f = Y.shape[1]
    for k in range(n):
        i = indices[start + k]
        for d in range(f):
            Z[k, d] = Y[i, d]
        if use_bias:
            Z[k, f] = 1.0


@njit(**_JIT)
def _gather_cols(start, n, indices, Y, use_bias, Zt):
    """Zt[:, k] = (Y[indices[start + k]], 1, 0 ...) for k < n: the transposed gather of the
    numba Gram path (Zt C-contiguous (gp, n), rows past g zero)."""
    f = Y.shape[1]
    gp = Zt.shape[0]
    # 16 entries at a time: gathered as rows into a small tile, then transposed (1.6x faster
    # than writing Zt's columns directly)
    tile = np.empty((16, f), dtype=Zt.dtype)
    for k0 in range(0, n, 16):
        kb = min(16, n - k0)
        for kk in range(kb):
            i = indices[start + k0 + kk]
            for d in range(f):
                tile[kk, d] = Y[i, d]
        if kb == 16:
            for d in range(f):
                for kk in range(16):
                    Zt[d, k0 + kk] = tile[kk, d]
        else:
            for d in range(f):
                for kk in range(kb):
                    Zt[d, k0 + kk] = tile[kk, d]
    for d in range(f, gp):
        v = np.float32(1.0) if (use_bias and d == f) else np.float32(0.0)
        for k in range(n):
            Zt[d, k] = v


@njit(**_JIT)
def row_normal_matrix(start, end, indices, Y, use_bias, G, buf, blas):
    """G[:g, :g] = sum_{k in [start, end)} z_k z_k^T, z_k = (Y[indices[k]], 1) -- the faster
    :func:`_row_gram` (same result, float32, both triangles filled).

    ``buf`` is a float32 work array of at least ``(end - start) * gp`` entries (gp = g
    rounded up to a multiple of 4); ``G`` float32 with ``G.shape[1] >= gp`` when ``blas`` is
    0.  ``blas`` is the value :func:`single_threaded_blas` yields (call inside it): the
    ssyrk address, or 0 for the numba kernel.  Returns the gathered rows as a view
    ``(n, g)`` (BLAS path) or ``(gp, n)`` transposed (numba path) of ``buf``.
    """
    f = Y.shape[1]
    g = f + 1 if use_bias else f
    n = end - start
    if n == 0:
        G[:g, :g] = 0.0
        return buf[:0].reshape((0, g))
    if blas != 0 and g >= BLAS_MIN_G:
        Z = buf[:n * g].reshape((n, g))
        _gather_rows(start, n, indices, Y, use_bias, Z)
        _ssyrk_lower(blas, 0, n, Z, G)
        out = Z
    else:
        gp = (g + 3) // 4 * 4
        Zt = buf[:gp * n].reshape((gp, n))
        _gather_cols(start, n, indices, Y, use_bias, Zt)
        _gram_rows(Zt, g, G)
        out = Zt
    for i in range(g):
        for j in range(i + 1, g):
            G[i, j] = G[j, i]
    return out


@njit(**_JIT)
def _dual_ok(D, g):
    for d in range(g):
        if not (D[d] > 0.0):
            return False
    return True


@njit(**_JIT)
def _row_solve(start, n, indices, Y, use_bias, D, t, x, Zbuf, Gbuf, Abuf, blas, dual_pct):
    """x = (sum_k z_k z_k^T + diag(D))^-1 sum_k t_k z_k for one row: the dual (Woodbury) form
    when n < g dual_pct / 100 and D > 0, else the g x g normal equations.  The Gram of the normal
    equations is float32 (as the former kernel's), factorizations and right-hand sides are
    float64.  D, t, x float64; Zbuf, Gbuf float32 and Abuf float64 work buffers."""
    f = Y.shape[1]
    g = f + 1 if use_bias else f
    gp = (g + 3) // 4 * 4
    if n * 100 < g * dual_pct and _dual_ok(D, g):
        # x = D^-1 Z^T (I + Z D^-1 Z^T)^-1 t = D^-1/2 Zs^T C^-1 t, Zs = Z D^-1/2, C = I + Zs Zs^T,
        # all in float64: with a small D (a zero weight's 1e-6 n_u) C is ill-conditioned
        Zs = Abuf[:n * g].reshape((n, g))
        C = Abuf[n * g:n * g + n * n].reshape((n, n))
        dh = np.empty(g, dtype=np.float64)
        for d in range(g):
            dh[d] = 1.0 / np.sqrt(D[d])
        for k in range(n):
            i = indices[start + k]
            for d in range(f):
                Zs[k, d] = Y[i, d] * dh[d]
            if use_bias:
                Zs[k, f] = dh[f]
        _gram_rows(Zs, n, C)
        s = np.empty(n, dtype=np.float64)
        for k in range(n):
            C[k, k] += 1.0
            s[k] = t[k]
        cholesky_factor(C, n)
        chol_solve_factored(C, n, s)
        for d in range(g):
            x[d] = 0.0
        for k in range(n):
            sk = s[k]
            for d in range(g):
                x[d] += sk * Zs[k, d]
        for d in range(g):
            x[d] *= dh[d]
        return
    A = Abuf[:g * g].reshape((g, g))
    if blas != 0 and g >= BLAS_MIN_G:
        Z = Zbuf[:n * g].reshape((n, g))
        _gather_rows(start, n, indices, Y, use_bias, Z)
        G = Gbuf[:g * g].reshape((g, g))
        _ssyrk_lower(blas, 0, n, Z, G)
        for d in range(g):
            x[d] = 0.0
        for k in range(n):
            tk = t[k]
            for d in range(g):
                x[d] += tk * Z[k, d]
    else:
        Zt = Zbuf[:gp * n].reshape((gp, n))
        _gather_cols(start, n, indices, Y, use_bias, Zt)
        G = Gbuf[:gp * gp].reshape((gp, gp))
        _gram_rows(Zt, g, G)
        for d in range(g):
            acc = 0.0
            for k in range(n):
                acc += Zt[d, k] * t[k]
            x[d] = acc
    for i in range(g):
        for j in range(i + 1):
            A[i, j] = G[i, j]
        A[i, i] += D[i]
    cholesky_factor(A, g)
    chol_solve_factored(A, g, x)


@njit(**_JIT)
def _n_chunks(rows):
    """Work units of the parallel row loops: rows u = c, c + nc, c + 2 nc, ... (interleaved, so
    that the static schedule gives every thread about the same mix of long and short rows)."""
    return max(1, min(rows, 256))


@njit(**_JIT)
def chunk_max_count(indptr, c, nc):
    """The most entries of a row of work unit ``c`` (rows c, c + nc, ...; 0 if it has none): what
    each unit sizes its buffers by."""
    most = 0
    for u in range(c, indptr.shape[0] - 1, nc):
        most = max(most, indptr[u + 1] - indptr[u])
    return most


@njit(parallel=True, **_JIT)
def als_side(indptr, indices, data, mu, b_other, Y, wx, wb, use_bias, X, b_self, blas=0):
    """Closed-form ridge update of one side (rows of the view) with the other fixed.

    Minimizes, for each row u, sum_k (r_k - mu - b_other[i] - b_u - x_u . y_i)^2
    + sum_d wx[u, d] x_{u,d}^2 + wb[u] b_u^2 (``wx`` per row (m,) or per (row, dimension)
    (m, f); METHODS.md section 2 has wx = lam cnt_u) exactly, up to float32 rounding:
    the Gram matrix by BLAS ssyrk (``blas``, from :func:`single_threaded_blas`; 0: the numba
    Gram kernel), a float64 Cholesky, and the n_u x n_u dual for rows with fewer entries
    than f (+1).  Rows with no entry are set to zero.  A factor weight of 0 is replaced by
    1e-6 cnt_u: the normal matrix is singular when the row has fewer entries than f.
    """
    f = Y.shape[1]
    g = f + 1 if use_bias else f
    gp = (g + 3) // 4 * 4
    W = _cols(wx)
    m = indptr.shape[0] - 1
    nc = _n_chunks(m)
    for c in prange(nc):
        # inside the parallel body: the test is a compile-time constant for 1-D weights there
        elem = wx.ndim == 2 and W.shape[1] > 1
        maxn = max(1, chunk_max_count(indptr, c, nc))
        Zbuf = np.empty(maxn * gp, dtype=np.float32)
        Gbuf = np.empty(gp * gp, dtype=np.float32)
        Abuf = np.empty(2 * gp * gp, dtype=np.float64)
        t = np.empty(maxn, dtype=np.float64)
        D = np.empty(g, dtype=np.float64)
        x = np.empty(gp, dtype=np.float64)
        for u in range(c, m, nc):
            start = indptr[u]
            n = indptr[u + 1] - start
            if n == 0:
                for d in range(f):
                    X[u, d] = 0.0
                if use_bias:
                    b_self[u] = 0.0
                continue
            for d in range(f):
                reg = np.float64(W[u, d if elem else 0])
                D[d] = reg if reg != 0.0 else 1e-6 * n
            if use_bias:
                D[f] = wb[u]
            for k in range(n):
                target = np.float64(data[start + k] - mu)
                if use_bias:
                    target -= b_other[indices[start + k]]
                t[k] = target
            _row_solve(start, n, indices, Y, use_bias, D, t, x, Zbuf, Gbuf, Abuf, blas, ALS_DUAL_PCT)
            for d in range(f):
                X[u, d] = x[d]
            if use_bias:
                b_self[u] = x[f]


# ------------------------------------------------ block-Jacobi preconditioner
# Per row u the block is A_u = (sum_k z_k z_k^T + diag(w_u)) with its diagonal times
# ``diag_scale``, plus ``shift`` I.  Stored per side in one flat float32 array: a row with
# n_u >= g (or whose diagonal part is not positive) holds its packed lower Cholesky factor
# (g (g + 1) / 2 floats); a row with n_u < g holds D_u^-1 (g floats, D_u = A_u's diagonal
# part: (diag_scale - 1) colsq + diag_scale w + shift) followed by the packed factor of its
# dual I + Z D^-1 Z^T (n_u (n_u + 1) / 2 floats) and is applied by Woodbury from the other
# side's factors (a copy taken when the blocks are built).  Row-packed lower triangle:
# row i at offset i (i + 1) / 2.


@njit(**_JIT)
def _packed_solve(Lp, off, g, x):
    """x <- (L L^T)^-1 x, L row-packed lower at Lp[off:]."""
    for i in range(g):
        ri = off + i * (i + 1) // 2
        acc = x[i]
        for k in range(i):
            acc -= Lp[ri + k] * x[k]
        x[i] = acc / Lp[ri + i]
    for i in range(g - 1, -1, -1):
        ri = off + i * (i + 1) // 2
        xi = x[i] / Lp[ri + i]
        x[i] = xi
        for k in range(i):
            x[k] -= xi * Lp[ri + k]


@njit(parallel=True, **_JIT)
def side_gn_blocks(indptr, indices, Y, wx, wb, use_bias, shift, diag_scale, offsets, dual, store, blas=0):
    """Factor the per-row diagonal blocks of the Gauss-Newton matrix of one side into ``store``.

    Row u's block couples its factors and bias: sum_k z_k z_k^T + diag(wx[u, :], wb[u])
    with z_k = (Y[i_k], 1), its diagonal then multiplied by ``diag_scale`` (1 + gamma for
    Marquardt damping), plus ``shift`` I: the ALS normal matrices, a block-Jacobi
    preconditioner for CG.  ``offsets`` (rows + 1, int64) and ``dual`` (rows, bool) give each
    row's place and form in the float32 ``store`` (see the comment above; sizes from
    :func:`gn_block_layout`); :func:`side_block_solve` applies the inverse.
    """
    f = Y.shape[1]
    g = f + 1 if use_bias else f
    gp = (g + 3) // 4 * 4
    W = _cols(wx)
    m = indptr.shape[0] - 1
    nc = _n_chunks(m)
    for c in prange(nc):
        # inside the parallel body: the test is a compile-time constant for 1-D weights there
        elem = wx.ndim == 2 and W.shape[1] > 1
        maxn = max(1, chunk_max_count(indptr, c, nc))
        Zbuf = np.empty(maxn * gp, dtype=np.float32)
        G = np.empty((gp, gp), dtype=np.float32)
        Abuf = np.empty(2 * gp * gp, dtype=np.float64)
        D = np.empty(g, dtype=np.float64)
        sq = np.empty(g, dtype=np.float64)
        for u in range(c, m, nc):
            start = indptr[u]
            n = indptr[u + 1] - start
            off = offsets[u]
            for d in range(f):
                D[d] = W[u, d if elem else 0]
            if use_bias:
                D[f] = wb[u]
            if dual[u]:
                # D_u = (s - 1) colsq + s w + shift (stored inverted), then the factor of the
                # dual I + Zs Zs^T, Zs = Z D^-1/2 (float64, stored float32)
                Zs = Abuf[:n * g].reshape((n, g))
                _gather_rows(start, n, indices, Y, use_bias, Zs)
                for d in range(g):
                    sq[d] = 0.0
                for k in range(n):
                    for d in range(g):
                        sq[d] += Zs[k, d] * Zs[k, d]
                for d in range(g):
                    dd = (diag_scale - 1.0) * sq[d] + diag_scale * D[d] + shift
                    store[off + d] = 1.0 / dd
                    sq[d] = 1.0 / np.sqrt(dd)  # now the column scale D^-1/2
                if n == 0:
                    continue
                for k in range(n):
                    for d in range(g):
                        Zs[k, d] *= sq[d]
                C = Abuf[n * g:n * g + n * n].reshape((n, n))
                _gram_rows(Zs, n, C)
                for k in range(n):
                    C[k, k] += 1.0
                cholesky_factor(C, n)
                p = off + g
                for i in range(n):
                    for j in range(i + 1):
                        store[p + j] = C[i, j]
                    p += i + 1
            else:
                row_normal_matrix(start, start + n, indices, Y, use_bias, G, Zbuf, blas)
                A = Abuf[:g * g].reshape((g, g))
                for i in range(g):
                    for j in range(i + 1):
                        A[i, j] = G[i, j]
                    A[i, i] = (A[i, i] + D[i]) * diag_scale + shift
                cholesky_factor(A, g)
                p = off
                for i in range(g):
                    for j in range(i + 1):
                        store[p + j] = A[i, j]
                    p += i + 1


@njit(parallel=True, **_JIT)
def side_block_solve(indptr, indices, Y, use_bias, offsets, dual, store, rX, rb, outX, outb):
    """out = M^-1 r for one side, M block-diagonal with the blocks stored by
    :func:`side_gn_blocks` (``Y``: the other side's factors the blocks were built from)."""
    f = rX.shape[1]
    g = f + 1 if use_bias else f
    m = rX.shape[0]
    nc = _n_chunks(m)
    for c in prange(nc):
        x = np.empty(g, dtype=np.float32)
        maxn = max(1, chunk_max_count(indptr, c, nc))
        s = np.empty(maxn, dtype=np.float32)
        for u in range(c, m, nc):
            for d in range(f):
                x[d] = rX[u, d]
            if use_bias:
                x[f] = rb[u]
            off = offsets[u]
            if dual[u]:
                # M^-1 r = v - D^-1 Z^T C^-1 Z v,  v = D^-1 r,  C = I + Z D^-1 Z^T
                start = indptr[u]
                n = indptr[u + 1] - start
                for d in range(g):
                    x[d] *= store[off + d]
                for k in range(n):
                    i = indices[start + k]
                    acc = x[f] if use_bias else np.float32(0.0)
                    for d in range(f):
                        acc += Y[i, d] * x[d]
                    s[k] = acc
                _packed_solve(store, off + g, n, s)
                for k in range(n):
                    i = indices[start + k]
                    sk = s[k]
                    for d in range(f):
                        x[d] -= store[off + d] * sk * Y[i, d]
                    if use_bias:
                        x[f] -= store[off + f] * sk
            else:
                _packed_solve(store, off, g, x)
            for d in range(f):
                outX[u, d] = x[d]
            if use_bias:
                outb[u] = x[f]


def gn_block_layout(counts, g, dual_ok):
    """Where each row's block goes in :func:`side_gn_blocks`' flat store: ``(offsets, dual,
    n_floats)``.  ``counts`` are the rows' entry counts, ``dual_ok`` (rows, bool) whether
    the row's diagonal part is certainly positive (the dual form needs D > 0)."""
    counts = np.asarray(counts, dtype=np.int64)
    dual = (counts < g) & np.asarray(dual_ok, dtype=bool)
    size = np.where(dual, g + counts * (counts + 1) // 2, g * (g + 1) // 2)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(size, out=offsets[1:])
    return offsets, dual, int(offsets[-1])


# --------------------------------------------- the former kernels (reference)
@njit(**_JIT)
def cholesky_solve(A, b):
    """Solve A x = b for symmetric positive definite A (float64) in place: x overwrites b.

    Only the upper triangle of A is read; A is overwritten by its Cholesky factor.
    Kept for callers of the original interface; :func:`cholesky_factor` +
    :func:`chol_solve_factored` are the fast pair (lower triangle, float32 or float64).
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
    full rows (scalar outer products; :func:`row_normal_matrix` is the fast equivalent)."""
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
