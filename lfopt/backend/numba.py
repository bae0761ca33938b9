"""The numba backend: numpy arrays on the CPU, the parallel kernels of :mod:`lfopt.kernels`."""

from __future__ import annotations

import numpy as np

from ..kernels import vector as V


class NumbaBackend:
    name = "numba"
    device = "cpu"
    float_dtype = np.float32

    def __repr__(self) -> str:
        return "NumbaBackend()"

    # ------------------------------------------------------------ vectors
    def asarray(self, x, dtype=np.float32):
        return np.ascontiguousarray(x, dtype=dtype)

    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    def zeros(self, n: int, dtype=np.float32):
        return np.zeros(n, dtype=dtype)

    def zeros_like(self, x):
        return np.zeros_like(x)

    def empty_like(self, x):
        return np.empty_like(x)

    def copy(self, x):
        return x.copy()

    def dot(self, a, b) -> float:
        return float(V.dot(a, b))

    def norm(self, a) -> float:
        return float(np.sqrt(V.dot(a, a)))

    def all_finite(self, x) -> bool:
        return bool(np.isfinite(x).all())

    def clamp_min_(self, x, value: float):
        np.maximum(x, np.float32(value), out=x)
        return x

    def moment_update(self, y, g, d, m, s, lr, beta1, beta2, eps, bc1, bc2) -> None:
        f32 = np.float32
        V.adaptive_moment_update(y, g, d, m, s, f32(lr), f32(beta1), f32(beta2), f32(eps), f32(bc1), f32(bc2))

    def permutation(self, rng: np.random.Generator, n: int):
        return rng.permutation(n)

    def index(self, x):
        """An index array (positions) in this backend's memory."""
        return np.asarray(x, dtype=np.int64)

    # ------------------------------------------------- BPR and full ranking
    # The same argument lists as the kernels of lfopt.kernels.bpr (see their docstrings);
    # a backend implements them on its own arrays.
    def sample_negatives(self, users, indptr_a, indices_a, indptr_b, indices_b, n_items, seed, out):
        from ..kernels.bpr import sample_negatives

        sample_negatives(users, indptr_a, indices_a, indptr_b, indices_b, n_items, seed, out)

    def bpr_train(self, *args):
        from ..kernels.bpr import bpr_train

        bpr_train(*args)

    def bpr_loss(self, P, Q, b, use_bias, tu, ti, tj) -> float:
        from ..kernels.bpr import bpr_loss

        return float(bpr_loss(P, Q, b, use_bias, tu, ti, tj))
