"""Numba kernels of BPR-MF and lambdaOpt (METHODS.md section 4) and of full-ranking evaluation.

Model: x_ui = p_u . q_i (+ b_i).  A triple (u, i, j) has x_uij = x_ui - x_uj and the loss
softplus(-x_uij) = -ln sigmoid(x_uij); its derivative with respect to x_uij is
c = -sigmoid(-x_uij).

Mini-batch training, race-free without atomics
----------------------------------------------
A training step takes a batch of B triples.  The batch is grouped by row (a
counting sort, serial, O(B)): every distinct user of the batch gets a slot with
the list of its triples, every distinct item a slot with its occurrences as
positive (+) or negative (-).  Then, in parallel phases separated by barriers:

1. one thread per triple computes c_t at the current parameters;
2. one thread per slot (user slots and item slots in one parallel loop) sums its
   row's gradient from its occurrence list (each slot is owned by one thread, as
   in the CSR/CSC sweeps of :mod:`lfopt.kernels.lf`), reading parameters only;
3. one thread per slot applies the optimizer step to its row.

No two threads ever write the same memory, so the result does not depend on
the number of threads or on scheduling (bit-identical with 1 or 2 threads).
That is three barriers per step; the Lambda step is serial (O(batch x f)).

The batch loss is the SUM over its triples (so an SGD learning rate means what it
means for per-triple BPR):

    L_B = sum_t [ softplus(-x_uij) + sum_d (Lu[u,d] p_ud^2 + Li[i,d] q_id^2 + Li[j,d] q_jd^2)
                  + lam_b (b_i^2 + b_j^2) ]

i.e. the penalty is paid by every occurrence of a row in the batch ("rows present
in the batch"), and its gradient is 2 n_r Lambda_r * theta_r for a row with n_r
occurrences.

Adam is lazy (row-wise): only rows present in the batch have their moments
updated and take a step, and each row's bias correction uses its own count of
steps, as if every row had its own Adam that steps when it has a gradient.

lambdaOpt's Lambda step
-----------------------
Lambda lives in one flat array; ``lam_map = (base_u, su_row, su_col, base_i,
si_row, si_col)`` gives the position of user u's dimension d as
``base_u + u*su_row + d*su_col`` and of item i's as ``base_i + i*si_row + d*si_col``
(zero strides share an entry; see :mod:`lfopt.regularizers.lambda_opt`).

After the Theta step theta' = U(theta, G(Lambda)) with G = g + 2 n Lambda * theta
(g the data gradient, all at the parameters before the step), the Lambda step
differentiates the validation BPR loss (mean over a validation batch, no
penalty) at theta' = theta_bar(Lambda) with respect to Lambda, through the closed
form of the step just taken (the "simulated" update equals the real one at the
current Lambda, so no second forward pass is needed):

    SGD:  theta_bar = theta - lr G                      d theta_bar/d G = -lr
    Adam: m = b1 m0 + (1-b1) G,  v = b2 v0 + (1-b2) G^2,
          theta_bar = theta - lr (m/bc1) / (sqrt(v/bc2) + eps)
          d theta_bar/d G = -lr [ (1-b1)/bc1 / den - (m/bc1) (1-b2) G / (bc2 s den^2) ],
          s = sqrt(v/bc2), den = s + eps  (v depends on Lambda too: exact, element-wise)

and d G / d Lambda_r = 2 n_r theta_r, element-wise.  Only rows present in both
the training batch and the validation batch get a non-zero hyper-gradient;
contributions are summed over the entries sharing a Lambda (serially: the
accumulation is O(rows x f) and shared granularities would otherwise race).
Validation negatives exclude the user's training and validation positives.
Lambda takes a lazy Adam step (per-entry counts) on the entries that got a
gradient and is projected onto Lambda >= 0.
"""

from __future__ import annotations

# lfopt/__init__.py sets OMP_WAIT_POLICY=PASSIVE before any kernel runs: the mini-batch
# kernel crosses a few barriers per step, which spin-waiting makes expensive on busy cores.

import numpy as np
from numba import njit, prange

_JIT = dict(cache=True, fastmath=True, nogil=True)
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


# ------------------------------------------------------------------ randomness
@njit(**_JIT)
def _mix(z):
    """SplitMix64 finalizer (a counter-based generator: value = _mix(seed + counter))."""
    z = (z + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
    z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
    z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
    return z ^ (z >> np.uint64(31))


@njit(**_JIT)
def _in_sorted(indices, start, end, x):
    """Whether x is in the sorted slice indices[start:end] (binary search)."""
    lo = start
    hi = end
    while lo < hi:
        mid = (lo + hi) >> 1
        v = indices[mid]
        if v < x:
            lo = mid + 1
        elif v > x:
            hi = mid
        else:
            return True
    return False


@njit(parallel=True, **_JIT)
def sample_negatives(users, indptr_a, indices_a, indptr_b, indices_b, n_items, seed, out):
    """out[t] = an item drawn uniformly among the items that user ``users[t]`` has
    not interacted with, according to the CSR views a and b (sorted indices;
    pass an empty view, indptr all zeros, for "none").  -1 when the user has
    interacted with every item.  Deterministic for a seed whatever the threads.
    """
    base = np.uint64(seed) * np.uint64(0x2545F4914F6CDD1D)
    n = np.uint64(n_items)
    use_b = indptr_b.shape[0] > 1
    for t in prange(users.shape[0]):
        u = users[t]
        a0 = indptr_a[u]
        a1 = indptr_a[u + 1]
        b0 = 0
        b1 = 0
        if use_b:
            b0 = indptr_b[u]
            b1 = indptr_b[u + 1]
        state = base + np.uint64(t) * np.uint64(0x9E3779B97F4A7C15)
        found = -1
        for attempt in range(64):
            state = (state + np.uint64(1)) & _MASK64
            j = np.int64(_mix(state) % n)
            if not _in_sorted(indices_a, a0, a1, j) and not (use_b and _in_sorted(indices_b, b0, b1, j)):
                found = j
                break
        if found < 0:
            # Dense user: scan from a random start for the k-th free item, k uniform.
            free = 0
            for j in range(n_items):
                if not _in_sorted(indices_a, a0, a1, j) and not (use_b and _in_sorted(indices_b, b0, b1, j)):
                    free += 1
            if free > 0:
                state = (state + np.uint64(1)) & _MASK64
                k = np.int64(_mix(state) % np.uint64(free))
                for j in range(n_items):
                    if not _in_sorted(indices_a, a0, a1, j) and not (use_b and _in_sorted(indices_b, b0, b1, j)):
                        if k == 0:
                            found = j
                            break
                        k -= 1
        out[t] = found


# ------------------------------------------------------------------ loss pieces
@njit(**_JIT)
def _softplus(z):
    """log(1 + exp(z)), stable."""
    if z > 0:
        return z + np.log1p(np.exp(-z))
    return np.log1p(np.exp(z))


@njit(**_JIT)
def _triple_x(P, Q, b, use_bias, u, i, j):
    f = P.shape[1]
    x = np.float32(0.0)
    for d in range(f):
        x += P[u, d] * (Q[i, d] - Q[j, d])
    if use_bias:
        x += b[i] - b[j]
    return x


@njit(parallel=True, **_JIT)
def bpr_loss(P, Q, b, use_bias, tu, ti, tj):
    """Mean BPR loss softplus(-x_uij) over triples (j = -1 triples skipped), float64."""
    total = 0.0
    cnt = 0
    for t in prange(tu.shape[0]):
        if tj[t] >= 0:
            total += _softplus(-np.float64(_triple_x(P, Q, b, use_bias, tu[t], ti[t], tj[t])))
            cnt += 1
    return total / max(cnt, 1)


# --------------------------------------------------------------- the training
@njit(**_JIT)
def _group_users(tu, tj, s0, s1, slot, uniq, ptr, occ):
    """Counting sort of triples s0..s1-1 by user; returns the number of slots."""
    nu = 0
    for t in range(s0, s1):
        if tj[t] < 0:
            continue
        u = tu[t]
        if slot[u] < 0:
            slot[u] = nu
            uniq[nu] = u
            ptr[nu + 1] = 0
            nu += 1
        ptr[slot[u] + 1] += 1
    ptr[0] = 0
    for s in range(nu):
        ptr[s + 1] += ptr[s]
    for t in range(s0, s1):
        if tj[t] < 0:
            continue
        s = slot[tu[t]]
        occ[ptr[s]] = t
        ptr[s] += 1
    for s in range(nu, 0, -1):
        ptr[s] = ptr[s - 1]
    ptr[0] = 0
    return nu


@njit(**_JIT)
def _group_items(ti, tj, s0, s1, slot, uniq, ptr, occ):
    """Counting sort of the item occurrences of triples s0..s1-1: occ = 2 t (positive) or 2 t + 1 (negative)."""
    ni = 0
    for t in range(s0, s1):
        if tj[t] < 0:
            continue
        for side in range(2):
            it = ti[t] if side == 0 else tj[t]
            if slot[it] < 0:
                slot[it] = ni
                uniq[ni] = it
                ptr[ni + 1] = 0
                ni += 1
            ptr[slot[it] + 1] += 1
    ptr[0] = 0
    for s in range(ni):
        ptr[s + 1] += ptr[s]
    for t in range(s0, s1):
        if tj[t] < 0:
            continue
        for side in range(2):
            it = ti[t] if side == 0 else tj[t]
            s = slot[it]
            occ[ptr[s]] = 2 * t + side
            ptr[s] += 1
    for s in range(ni, 0, -1):
        ptr[s] = ptr[s - 1]
    ptr[0] = 0
    return ni


@njit(**_JIT)
def _adam_dtheta_dG(G, mn, vn, bc1, bc2, lr, beta1, beta2, eps):
    """d theta_bar / d G of one lazy-Adam coordinate with new moments mn, vn and bias corrections bc1, bc2."""
    s = np.sqrt(vn / bc2)
    den = s + eps
    out = (np.float32(1.0) - beta1) / bc1 / den
    if s > 0:
        out -= (mn / bc1) * (np.float32(1.0) - beta2) * G / (bc2 * s * den * den)
    return -lr * out


@njit(parallel=True, **_JIT)
def bpr_train(
    tu, ti, tj, batch_size, vu, vi, vj, vbatch_size,
    P, Q, b, use_bias, lam_b,
    opt, lr, beta1, beta2, eps, mP, vP, mQ, vQ, mb, vb, cnt_u, cnt_i,
    lam, lam_map, learn_lam, lam_lr, mL, vL, cL, grad_out, stats,
):
    """Train on the triples (tu, ti, tj) in consecutive batches of ``batch_size``.

    ``opt`` 0 = SGD, 1 = lazy Adam (state mP, vP, mQ, vQ, mb, vb, per-row step
    counts cnt_u / cnt_i; length-0 arrays for SGD).  ``lam`` is the flat Lambda
    (the penalty of every step, see the module docstring); with ``learn_lam`` each
    step is followed by lambdaOpt's Lambda step on validation triples
    ``vbatch_size`` at a time (step s uses vu/vi/vj[s*vbatch_size : (s+1)*vbatch_size],
    which must hold enough triples), with Lambda's lazy Adam (mL, vL, per-entry
    counts cL, learning rate ``lam_lr``, beta1/beta2/eps shared with Theta's Adam).
    If ``grad_out`` is non-empty the raw Lambda hyper-gradients of all steps are
    added to it (tests, diagnostics).  Triples with j = -1 are skipped.

    ``stats`` (float64, length 4) accumulates: training BPR loss sum (before each
    step), training triples, validation BPR loss sum (after each step), validation triples.
    """
    m, f = P.shape
    n = Q.shape[0]
    N = tu.shape[0]
    B = batch_size
    n_steps = (N + B - 1) // B
    base_u = lam_map[0]
    su_row = lam_map[1]
    su_col = lam_map[2]
    base_i = lam_map[3]
    si_row = lam_map[4]
    si_col = lam_map[5]
    one = np.float32(1.0)
    two = np.float32(2.0)

    uslot = np.full(m, -1, dtype=np.int64)
    islot = np.full(n, -1, dtype=np.int64)
    uniq_u = np.empty(B, dtype=np.int64)
    uptr = np.zeros(B + 1, dtype=np.int64)
    uocc = np.empty(B, dtype=np.int64)
    uniq_i = np.empty(2 * B, dtype=np.int64)
    iptr = np.zeros(2 * B + 1, dtype=np.int64)
    iocc = np.empty(2 * B, dtype=np.int64)
    c = np.zeros(N if N < B else B, dtype=np.float32)
    closs = np.zeros(c.shape[0], dtype=np.float64)
    gU = np.empty((B, f), dtype=np.float32)
    gI = np.empty((2 * B, f), dtype=np.float32)
    gb = np.empty(2 * B, dtype=np.float32)
    nl = 1
    if learn_lam:
        nl = 2 * B
    # JU / JI: theta before the step of every updated row (lambdaOpt)
    JU = np.empty((B if learn_lam else 1, f), dtype=np.float32)
    JI = np.empty((nl, f), dtype=np.float32)
    aU = np.zeros((B if learn_lam else 1, f), dtype=np.float32)
    aI = np.zeros((nl, f), dtype=np.float32)
    hasU = np.zeros(B if learn_lam else 1, dtype=np.bool_)
    hasI = np.zeros(nl, dtype=np.bool_)
    Bv = vbatch_size
    vc = np.zeros(Bv if learn_lam else 1, dtype=np.float32)
    vloss = np.zeros(Bv if learn_lam else 1, dtype=np.float64)
    user_rows = su_row != 0  # users own their Lambda entries (DU, DUI): no sharing, parallel update
    item_rows = si_row != 0
    lgrad = np.zeros(lam.shape[0], dtype=np.float32)
    lflag = np.zeros(lam.shape[0], dtype=np.bool_)
    ltouched = np.empty(lam.shape[0], dtype=np.int64)
    want_grad = grad_out.shape[0] > 0
    # tables of beta^k for the bias corrections (k = a row's or a Lambda entry's step count)
    kmax = n_steps + 1
    if opt == 1:
        if m > 0:
            kmax = max(kmax, cnt_u.max() + n_steps + 1)
        if n > 0:
            kmax = max(kmax, cnt_i.max() + n_steps + 1)
    if learn_lam and cL.shape[0] > 0:
        kmax = max(kmax, cL.max() + n_steps + 1)
    pw1 = np.empty(kmax + 1, dtype=np.float32)
    pw2 = np.empty(kmax + 1, dtype=np.float32)
    a1 = 1.0
    a2 = 1.0
    for q in range(kmax + 1):
        pw1[q] = a1
        pw2[q] = a2
        a1 *= beta1
        a2 *= beta2

    for step in range(n_steps):
        s0 = step * B
        s1 = min(N, s0 + B)
        nb = s1 - s0
        nu = _group_users(tu, tj, s0, s1, uslot, uniq_u, uptr, uocc)
        ni = _group_items(ti, tj, s0, s1, islot, uniq_i, iptr, iocc)

        # 1. per-triple derivative c = d loss / d x at the current parameters
        for q in prange(nb):
            tq = s0 + q
            if tj[tq] < 0:
                c[q] = 0.0
                closs[q] = 0.0
                continue
            xq = _triple_x(P, Q, b, use_bias, tu[tq], ti[tq], tj[tq])
            c[q] = -one / (one + np.exp(xq))
            closs[q] = _softplus(-np.float64(xq))
        lsum = 0.0
        ntr = 0
        for q in range(nb):
            lsum += closs[q]
            if tj[s0 + q] >= 0:
                ntr += 1
        stats[0] += lsum
        stats[1] += ntr

        # 2. gradients G = g + 2 n Lambda theta, one thread per row slot (users, then items)
        for s_ in prange(nu + ni):
            s = np.int64(s_)
            if s < nu:
                u = uniq_u[s]
                for d in range(f):
                    gU[s, d] = 0.0
                for e in range(uptr[s], uptr[s + 1]):
                    t = uocc[e]
                    ck = c[t - s0]
                    i = ti[t]
                    j = tj[t]
                    for d in range(f):
                        gU[s, d] += ck * (Q[i, d] - Q[j, d])
                cntr = np.float32(uptr[s + 1] - uptr[s])
                for d in range(f):
                    gU[s, d] += two * cntr * lam[base_u + u * su_row + d * su_col] * P[u, d]
            else:
                si = s - nu
                it = uniq_i[si]
                for d in range(f):
                    gI[si, d] = 0.0
                gbs = np.float32(0.0)
                for e in range(iptr[si], iptr[si + 1]):
                    o = iocc[e]
                    t = o >> 1
                    ck = c[t - s0]
                    if o & 1:
                        ck = -ck
                    u = tu[t]
                    gbs += ck
                    for d in range(f):
                        gI[si, d] += ck * P[u, d]
                cntr = np.float32(iptr[si + 1] - iptr[si])
                for d in range(f):
                    gI[si, d] += two * cntr * lam[base_i + it * si_row + d * si_col] * Q[it, d]
                if use_bias:
                    gb[si] = gbs + two * cntr * lam_b * b[it]

        # 3. the optimizer step, one thread per row slot (users, then items)
        for s_ in prange(nu + ni):
            s = np.int64(s_)
            if s < nu:
                X = P
                mX = mP
                vX = vP
                r = uniq_u[s]
                gX = gU
                JX = JU
                sr = s
            else:
                X = Q
                mX = mQ
                vX = vQ
                r = uniq_i[s - nu]
                gX = gI
                JX = JI
                sr = s - nu
            kst = np.int64(0)
            if opt == 1:
                if s < nu:
                    cnt_u[r] += 1
                    kst = cnt_u[r]
                else:
                    cnt_i[r] += 1
                    kst = cnt_i[r]
            bc1 = one - pw1[kst]
            bc2 = one - pw2[kst]
            if learn_lam:  # keep theta_old for the Lambda step
                for d in range(f):
                    JX[sr, d] = X[r, d]
            if opt == 0:
                for d in range(f):
                    X[r, d] -= lr * gX[sr, d]
            else:
                for d in range(f):
                    G = gX[sr, d]
                    mn = beta1 * mX[r, d] + (one - beta1) * G
                    vn = beta2 * vX[r, d] + (one - beta2) * G * G
                    mX[r, d] = mn
                    vX[r, d] = vn
                    X[r, d] -= lr * (mn / bc1) / (np.sqrt(vn / bc2) + eps)
            if use_bias and s >= nu:
                G = gb[sr]
                if opt == 0:
                    b[r] = b[r] - lr * G
                else:
                    mn = beta1 * mb[r] + (one - beta1) * G
                    vn = beta2 * vb[r] + (one - beta2) * G * G
                    mb[r] = mn
                    vb[r] = vn
                    b[r] = b[r] - lr * (mn / bc1) / (np.sqrt(vn / bc2) + eps)

        # 4. lambdaOpt: Lambda step on a validation batch at the new parameters
        if learn_lam:
            v0 = step * Bv
            for q in prange(Bv):
                tq = v0 + q
                if vj[tq] < 0:
                    vc[q] = 0.0
                    vloss[q] = -1.0
                    continue
                xq = _triple_x(P, Q, b, use_bias, vu[tq], vi[tq], vj[tq])
                vc[q] = -one / (one + np.exp(xq))
                vloss[q] = _softplus(-np.float64(xq))
            nvalid = 0
            vsum = 0.0
            for q in range(Bv):
                if vloss[q] >= 0:
                    vsum += vloss[q]
                    nvalid += 1
            stats[2] += vsum
            stats[3] += nvalid
            if nvalid > 0:
                inv = one / np.float32(nvalid)
                # d l_val / d theta_bar for the rows of the training batch (serial: scattered rows)
                for q in range(Bv):
                    t = v0 + q
                    if vj[t] < 0:
                        continue
                    u = vu[t]
                    i = vi[t]
                    j = vj[t]
                    ck = vc[q] * inv
                    su = uslot[u]
                    if su >= 0:
                        hasU[su] = True
                        for d in range(f):
                            aU[su, d] += ck * (Q[i, d] - Q[j, d])
                    si = islot[i]
                    if si >= 0:
                        hasI[si] = True
                        for d in range(f):
                            aI[si, d] += ck * P[u, d]
                    sj = islot[j]
                    if sj >= 0:
                        hasI[sj] = True
                        for d in range(f):
                            aI[sj, d] -= ck * P[u, d]
                # rows that own their Lambda entries: hyper-gradient a * J and Lambda's
                # lazy Adam step in parallel (no entry is shared between rows)
                for s_ in prange(nu + ni):
                    s = np.int64(s_)
                    if s < nu:
                        if not (user_rows and hasU[s]):
                            continue
                        r = uniq_u[s]
                        base = base_u + r * su_row
                        col = su_col
                        aX = aU
                        JX = JU
                        hX = hasU
                        sr = s
                        X = P
                        mX = mP
                        vX = vP
                        gX = gU
                        cntr = np.float32(uptr[s + 1] - uptr[s])
                        kst = cnt_u[r]
                    else:
                        sr = s - nu
                        if not (item_rows and hasI[sr]):
                            continue
                        r = uniq_i[sr]
                        base = base_i + r * si_row
                        col = si_col
                        aX = aI
                        JX = JI
                        hX = hasI
                        X = Q
                        mX = mQ
                        vX = vQ
                        gX = gI
                        cntr = np.float32(iptr[sr + 1] - iptr[sr])
                        kst = cnt_i[r]
                    bc1 = one - pw1[kst]
                    bc2 = one - pw2[kst]
                    for d in range(f):
                        idx = base + d * col
                        if opt == 0:
                            dG = -lr
                        else:
                            dG = _adam_dtheta_dG(gX[sr, d], mX[r, d], vX[r, d], bc1, bc2, lr, beta1, beta2, eps)
                        g = aX[sr, d] * dG * two * cntr * JX[sr, d]
                        aX[sr, d] = 0.0
                        if want_grad:
                            grad_out[idx] += g
                        cL[idx] += 1
                        mn = beta1 * mL[idx] + (one - beta1) * g
                        vn = beta2 * vL[idx] + (one - beta2) * g * g
                        mL[idx] = mn
                        vL[idx] = vn
                        kl = cL[idx]
                        nv = lam[idx] - lam_lr * (mn / (one - pw1[kl])) / (np.sqrt(vn / (one - pw2[kl])) + eps)
                        lam[idx] = nv if nv > 0 else np.float32(0.0)
                    hX[sr] = False
                # shared entries (global, D, and the per-dimension side of DU / DI): serial sum
                nt = 0
                for s in range(nu + ni):
                    if s < nu:
                        if user_rows or not hasU[s]:
                            continue
                        r = uniq_u[s]
                        base = base_u + r * su_row
                        col = su_col
                        aX = aU
                        JX = JU
                        hX = hasU
                        sr = s
                        X = P
                        mX = mP
                        vX = vP
                        gX = gU
                        cntr = np.float32(uptr[s + 1] - uptr[s])
                        kst = cnt_u[r]
                    else:
                        sr = s - nu
                        if item_rows or not hasI[sr]:
                            continue
                        r = uniq_i[sr]
                        base = base_i + r * si_row
                        col = si_col
                        aX = aI
                        JX = JI
                        hX = hasI
                        X = Q
                        mX = mQ
                        vX = vQ
                        gX = gI
                        cntr = np.float32(iptr[sr + 1] - iptr[sr])
                        kst = cnt_i[r]
                    bc1 = one - pw1[kst]
                    bc2 = one - pw2[kst]
                    for d in range(f):
                        idx = base + d * col
                        if opt == 0:
                            dG = -lr
                        else:
                            dG = _adam_dtheta_dG(gX[sr, d], mX[r, d], vX[r, d], bc1, bc2, lr, beta1, beta2, eps)
                        lgrad[idx] += aX[sr, d] * dG * two * cntr * JX[sr, d]
                        aX[sr, d] = 0.0
                        if not lflag[idx]:
                            lflag[idx] = True
                            ltouched[nt] = idx
                            nt += 1
                    hX[sr] = False
                for e in range(nt):
                    idx = ltouched[e]
                    g = lgrad[idx]
                    if want_grad:
                        grad_out[idx] += g
                    cL[idx] += 1
                    mn = beta1 * mL[idx] + (one - beta1) * g
                    vn = beta2 * vL[idx] + (one - beta2) * g * g
                    mL[idx] = mn
                    vL[idx] = vn
                    kl = cL[idx]
                    nv = lam[idx] - lam_lr * (mn / (one - pw1[kl])) / (np.sqrt(vn / (one - pw2[kl])) + eps)
                    lam[idx] = nv if nv > 0 else np.float32(0.0)
                    lgrad[idx] = 0.0
                    lflag[idx] = False

        for s in range(nu):
            uslot[uniq_u[s]] = -1
        for s in range(ni):
            islot[uniq_i[s]] = -1


# -------------------------------------------------------------- full ranking
@njit(parallel=True, **_JIT)
def rank_targets(S, users, ex_ptr, ex_idx, t_ptr, t_idx, rank_out, auc_out, nneg_out):
    """Rank the held-out positives of each row of a score block.

    Row r of ``S`` holds the scores of user ``users[r]`` for every item; it is
    modified in place (excluded items set to -inf).  Candidates are all items not
    in the exclusion view (ex_ptr/ex_idx, by user).  For every target entry e of
    the user (t_ptr/t_idx, by user) writes:

    * ``rank_out[e]``: 0-based position of the target in the user's candidate list
      sorted by score descending, ties broken by item index (= stable argsort);
      -1 if the target itself is excluded (then it is not evaluated);
    * ``auc_out[e]``: the fraction of the user's negatives (candidates that are not
      targets) scored below the target, ties counting one half;
    * ``nneg_out[r]``: the number of negatives of the user.
    """
    n = S.shape[1]
    ninf = -np.inf
    for r in prange(S.shape[0]):
        u = users[r]
        n_ex = 0
        for e in range(ex_ptr[u], ex_ptr[u + 1]):
            j = ex_idx[e]
            if S[r, j] != ninf:
                S[r, j] = ninf
                n_ex += 1
        t0 = t_ptr[u]
        t1 = t_ptr[u + 1]
        n_t = 0
        for e in range(t0, t1):
            if S[r, t_idx[e]] != ninf:
                n_t += 1
        n_neg = n - n_ex - n_t
        nneg_out[r] = n_neg
        for e in range(t0, t1):
            i = t_idx[e]
            s = S[r, i]
            if s == ninf:
                rank_out[e] = -1
                auc_out[e] = np.nan
                continue
            greater = 0
            ties_before = 0
            ties = 0
            for j in range(n):
                v = S[r, j]
                greater += v > s
                ties += v == s
                ties_before += (v == s) & (j < i)
            ties -= 1  # the target itself
            rank_out[e] = greater + ties_before
            # remove the other targets from the counts to get negatives only
            pg = 0
            pt = 0
            for e2 in range(t0, t1):
                if e2 == e:
                    continue
                v = S[r, t_idx[e2]]
                if v == ninf:
                    continue
                pg += v > s
                pt += v == s
            if n_neg > 0:
                ng = greater - pg
                nt = ties - pt
                auc_out[e] = (n_neg - ng - 0.5 * nt) / n_neg
            else:
                auc_out[e] = np.nan


@njit(parallel=True, **_JIT)
def topk_rows(S, users, ex_ptr, ex_idx, k, out_items, out_scores):
    """Top ``k`` items of each row of a score block, excluded items left out.

    Order: score descending, ties by item index ascending (= a stable argsort of
    -score).  Rows with fewer than k candidates are padded with item -1 and
    score -inf.  ``S`` is modified in place (excluded items set to -inf).
    """
    n = S.shape[1]
    ninf = -np.inf
    for r in prange(S.shape[0]):
        u = users[r]
        for e in range(ex_ptr[u], ex_ptr[u + 1]):
            S[r, ex_idx[e]] = ninf
        filled = 0
        for q in range(k):
            out_items[r, q] = -1
            out_scores[r, q] = ninf
        for j in range(n):
            s = S[r, j]
            if s == ninf or s != s:
                continue
            if filled == k and not s > out_scores[r, k - 1]:
                continue
            # insert after every kept item with score >= s (earlier index wins ties)
            p = filled if filled < k else k - 1
            while p > 0 and out_scores[r, p - 1] < s:
                out_scores[r, p] = out_scores[r, p - 1]
                out_items[r, p] = out_items[r, p - 1]
                p -= 1
            out_scores[r, p] = s
            out_items[r, p] = j
            if filled < k:
                filled += 1
