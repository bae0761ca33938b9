"""Element-wise kernels over flat parameter vectors (parallel, float32)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_JIT = dict(cache=True, fastmath=True, nogil=True)


@njit(inline="always", cache=True, fastmath=False, nogil=True)
def _moment_entry(y, g, d, m, s, k, lr, beta1, beta2, eps, bc1, bc2, d_add):
    """Entry k of the Adam-style step (the one body of both kernels below)."""
    one = np.float32(1.0)
    dk = d[k] + d_add
    mk = beta1 * m[k] + (one - beta1) * g[k]
    sk = beta2 * s[k] + (one - beta2) * dk * dk
    m[k] = mk
    s[k] = sk
    y[k] -= lr * (mk / bc1) / (np.sqrt(sk / bc2) + eps)


@njit(parallel=True, cache=True, fastmath=False, nogil=True)
def adaptive_moment_update(y, g, d, m, s, lr, beta1, beta2, eps, bc1, bc2, d_add):
    """Adam-style step with second-moment source ``d + d_add`` (``d = g``, ``d_add = 0`` gives
    Adam; AdaGO: the Gauss-Newton diagonal plus its damping).

    m <- beta1 m + (1 - beta1) g;  s <- beta2 s + (1 - beta2) (d + d_add)^2;
    y <- y - lr (m / bc1) / (sqrt(s / bc2) + eps)

    Strict IEEE arithmetic (no fastmath): with fastmath the vectorized body may use an
    approximate reciprocal square root while the loop's scalar remainder does not, and
    where the remainders fall depends on the thread count (the step was then not the
    same with 1 and 2 threads).  The kernel is memory-bound: this costs nothing measurable.
    """
    for k in prange(y.shape[0]):
        _moment_entry(y, g, d, m, s, k, lr, beta1, beta2, eps, bc1, bc2, d_add)


@njit(parallel=True, cache=True, fastmath=False, nogil=True)
def adaptive_moment_update_segments(y, g, d, m, s, starts, lengths, lr, beta1, beta2, eps, bc1, bc2, d_add):
    """:func:`adaptive_moment_update` on the entries ``starts[j] <= k < starts[j] + lengths[j]``
    only (the lazy, row-sparse step: the rows a mini-batch touched), with second-moment
    source ``d[k] + d_add``; every other entry of y, m, s is left as it is.  The same
    arithmetic as the dense kernel entry by entry (strict IEEE), so segments covering the
    whole vector give its result bit for bit.  Segments must not overlap.
    """
    for j in prange(starts.shape[0]):
        k0 = starts[j]
        for k in range(k0, k0 + lengths[j]):
            _moment_entry(y, g, d, m, s, k, lr, beta1, beta2, eps, bc1, bc2, d_add)


@njit(parallel=True, **_JIT)
def dot(a, b):
    """float64 accumulation of a . b."""
    total = 0.0
    for k in prange(a.shape[0]):
        total += np.float64(a[k]) * np.float64(b[k])
    return total


@njit(parallel=True, **_JIT)
def weighted_dot(w, a, b):
    """float64 accumulation of sum_k w[k] a[k] b[k] (a penalty 1/2 y.W y with W diagonal)."""
    total = 0.0
    for k in prange(a.shape[0]):
        total += np.float64(w[k]) * np.float64(a[k]) * np.float64(b[k])
    return total
