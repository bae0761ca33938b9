"""The latent factor objective (METHODS.md section 2) as oracles over a flat vector.

``LFObjective`` owns the training data's CSR/CSC views and work buffers and
exposes what optimizers need, each computed by the numba kernels of
:mod:`lfopt.kernels.lf` in O(|K| f) without forming any |y| x |y| matrix:

* ``loss(y)``, ``loss_grad(y, g)``: the count-weighted L2 objective and its gradient,
* ``gvp(y, v, out)``: the Gauss-Newton product G v = J^T J v + reg diag * v,
* ``gn_diag(y, out)``: the exact Gauss-Newton diagonal,
* ``sgd_epoch``, ``batch_grad``, ``als_sweep``: the structured oracles of SGD,
  mini-batch methods and ALS.

The flat parameter vector is laid out as ``[b_u (m), b_i (n), P (m f), Q (n f)]``
(without the biases when ``use_bias`` is False); :meth:`unpack` returns views.
"""

from __future__ import annotations

import numpy as np

from ..data.interactions import Interactions
from ..errors import ConfigError
from ..kernels import lf as K
from ..kernels.vector import dot


class LFObjective:
    """Count-weighted L2 least squares of the LF model on a training set."""

    def __init__(self, train: Interactions, rank: int, lam: float, lam_b: float | None = None, use_bias: bool = True,
                 n_blocks: int | None = None):
        if rank <= 0 or int(rank) != rank:
            raise ConfigError(f"rank must be a positive integer, got {rank!r}")
        if lam < 0 or not np.isfinite(lam):
            raise ConfigError(f"lambda must be a finite number >= 0, got {lam!r}")
        lam_b = lam if lam_b is None else lam_b
        if lam_b < 0 or not np.isfinite(lam_b):
            raise ConfigError(f"lambda_b must be a finite number >= 0, got {lam_b!r}")
        if train.nnz == 0:
            raise ConfigError("the training set is empty")
        self.train = train
        self.m, self.n = train.shape
        self.f = int(rank)
        self.lam = np.float32(lam)
        self.lam_b = np.float32(lam_b)
        self.use_bias = bool(use_bias)
        self.mu = np.float32(train.values.mean() if use_bias else 0.0)
        self.nnz = train.nnz
        self.csr = train.csr
        self.csc = train.csc
        inv = np.empty(self.nnz, dtype=np.int64)
        inv[self.csr.order] = np.arange(self.nnz)
        self.csc_from_csr = inv[self.csc.order]
        nb = self.m + self.n if use_bias else 0
        self.n_bias = nb
        self.size = nb + (self.m + self.n) * self.f
        self._e = np.empty(self.nnz, dtype=np.float32)
        self._e_csc = np.empty(self.nnz, dtype=np.float32)
        self._sgd_layout = None
        self.last_sse = float("nan")  # sum of squared residuals at the last loss() call
        self._n_blocks = n_blocks

    # ----------------------------------------------------------------- layout
    def unpack(self, y: np.ndarray):
        """Views ``(b_u, b_i, P, Q)`` into the flat vector ``y`` (biases empty if unused)."""
        m, n, f, nb = self.m, self.n, self.f, self.n_bias
        if y.shape != (self.size,):
            raise ValueError(f"parameter vector has shape {y.shape}, expected ({self.size},)")
        bu = y[:m] if nb else y[:0]
        bi = y[m:nb] if nb else y[:0]
        P = y[nb : nb + m * f].reshape(m, f)
        Q = y[nb + m * f :].reshape(n, f)
        return bu, bi, P, Q

    def init_params(self, scale: float = 0.1, seed: int = 0) -> np.ndarray:
        """Biases 0, factors ~ N(0, scale^2 / f) so that initial predictions are O(scale^2)."""
        rng = np.random.default_rng(seed)
        y = np.zeros(self.size, dtype=np.float32)
        _, _, P, Q = self.unpack(y)
        std = scale / np.sqrt(self.f)
        P[:] = rng.normal(0.0, std, P.shape)
        Q[:] = rng.normal(0.0, std, Q.shape)
        if not self.use_bias:
            # The plain model p.q has no mean term: start near the mean rating.
            level = np.sqrt(max(float(self.train.values.mean()), 0.0) / self.f)
            P += level
            Q += level
        return y

    # ---------------------------------------------------------------- oracles
    def _residuals(self, y):
        bu, bi, P, Q = self.unpack(y)
        K.residuals(self.csr.indptr, self.csr.indices, self.csr.data, self.mu, bu, bi, P, Q, self.use_bias, self._e)
        return self._e

    def _penalty(self, y) -> float:
        bu, bi, P, Q = self.unpack(y)
        pen = float(self.lam) * (K.weighted_sq_norm(self.csr.indptr, P) + K.weighted_sq_norm(self.csc.indptr, Q))
        if self.use_bias:
            cu = np.diff(self.csr.indptr)
            ci = np.diff(self.csc.indptr)
            pen += float(self.lam_b) * (float(cu @ (bu.astype(np.float64) ** 2)) + float(ci @ (bi.astype(np.float64) ** 2)))
        return 0.5 * pen

    def loss(self, y: np.ndarray) -> float:
        """L(y) = 1/2 sum e^2 + lam/2 sum n_u |p_u|^2 + ... (float64)."""
        self.last_sse = float(K.sum_squares(self._residuals(y)))
        return 0.5 * self.last_sse + self._penalty(y)

    def loss_grad(self, y: np.ndarray, g: np.ndarray) -> float:
        """Fill ``g`` with the gradient at ``y``; return the loss."""
        bu, bi, P, Q = self.unpack(y)
        gbu, gbi, gP, gQ = self.unpack(g)
        e = self._e
        K.residual_grad_rows(self.csr.indptr, self.csr.indices, self.csr.data, self.mu, bu, bi, P, Q, self.lam,
                             self.lam_b, self.use_bias, e, gP, gbu)
        K.gather(e, self.csc_from_csr, self._e_csc)
        m1 = np.float32(-1.0)
        K.side_accumulate(self.csc.indptr, self.csc.indices, self._e_csc, P, m1, Q, self.lam, bi, self.lam_b, self.use_bias, gQ, gbi)
        self.last_sse = float(K.sum_squares(e))
        return 0.5 * self.last_sse + self._penalty(y)

    def gvp(self, y: np.ndarray, v: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Gauss-Newton product ``out = G(y) v`` by the hidden mapping (two sweeps of K)."""
        bu, bi, P, Q = self.unpack(y)
        vbu, vbi, VP, VQ = self.unpack(v)
        obu, obi, OP, OQ = self.unpack(out)
        s = self._e  # reuse the residual buffer for s = J v
        K.jv_rows(self.csr.indptr, self.csr.indices, P, Q, vbu, vbi, VP, VQ, self.lam, self.lam_b, self.use_bias,
                  s, OP, obu)
        K.gather(s, self.csc_from_csr, self._e_csc)
        one = np.float32(1.0)
        K.side_accumulate(self.csc.indptr, self.csc.indices, self._e_csc, P, one, VQ, self.lam, vbi, self.lam_b, self.use_bias, OQ, obi)
        return out

    def gn_diag(self, y: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Exact diagonal of G(y) (including the regularizer's diagonal)."""
        _, _, P, Q = self.unpack(y)
        obu, obi, OP, OQ = self.unpack(out)
        K.side_gn_diagonal(self.csr.indptr, self.csr.indices, Q, self.lam, self.lam_b, self.use_bias, OP, obu)
        K.side_gn_diagonal(self.csc.indptr, self.csc.indices, P, self.lam, self.lam_b, self.use_bias, OQ, obi)
        return out

    def reg_diagonal(self) -> np.ndarray:
        """The regularizer's diagonal (lam n_u per factor entry, lam_b n_u per bias), flat."""
        if getattr(self, "_reg_diag", None) is None:
            w = np.empty(self.size, dtype=np.float32)
            wbu, wbi, WP, WQ = self.unpack(w)
            cu = np.diff(self.csr.indptr).astype(np.float32)
            ci = np.diff(self.csc.indptr).astype(np.float32)
            WP[:] = (self.lam * cu)[:, None]
            WQ[:] = (self.lam * ci)[:, None]
            if self.use_bias:
                wbu[:] = self.lam_b * cu
                wbi[:] = self.lam_b * ci
            self._reg_diag = w
        return self._reg_diag

    def step_polynomial(self, y: np.ndarray, direction: np.ndarray) -> np.ndarray:
        """Coefficients (c0..c4, lowest first) of the exact quartic L(y + t direction) in t."""
        bu, bi, P, Q = self.unpack(y)
        dbu, dbi, DP, DQ = self.unpack(direction)
        ee, es, ec, ss, sc, cc = K.step_polynomial(self.csr.indptr, self.csr.indices, self.csr.data, self.mu,
                                                   bu, bi, P, Q, dbu, dbi, DP, DQ, self.use_bias)
        w = self.reg_diagonal()
        wy_d = dot(w * y, direction)
        w_dd = dot(w * direction, direction)
        return np.array([0.5 * ee + self._penalty(y), -es + wy_d, 0.5 * (ss - 2 * ec) + 0.5 * w_dd, sc, 0.5 * cc])

    def block_preconditioner(self, y: np.ndarray, shift: float = 0.0, diag_scale: float = 1.0):
        """A function ``apply(r, out)`` computing M^-1 r, M the block diagonal of G(y) + shift I
        (with the diagonal of G first multiplied by ``diag_scale``).

        Each block is one user's (or item's) factors and bias: the ALS normal
        matrices.  Costs about one ALS sweep to build, O(|y| f) to apply.
        """
        _, _, P, Q = self.unpack(y)
        g = self.f + 1 if self.use_bias else self.f
        bu_blocks = np.empty((self.m, g, g), dtype=np.float64)
        bi_blocks = np.empty((self.n, g, g), dtype=np.float64)
        sh = np.float64(shift)
        K.side_gn_blocks(self.csr.indptr, self.csr.indices, Q, np.float64(self.lam), np.float64(self.lam_b),
                         self.use_bias, sh, np.float64(diag_scale), bu_blocks)
        K.side_gn_blocks(self.csc.indptr, self.csc.indices, P, np.float64(self.lam), np.float64(self.lam_b),
                         self.use_bias, sh, np.float64(diag_scale), bi_blocks)

        def apply(r, out):
            rbu, rbi, RP, RQ = self.unpack(r)
            obu, obi, OP, OQ = self.unpack(out)
            K.side_block_solve(bu_blocks, RP, rbu, self.use_bias, OP, obu)
            K.side_block_solve(bi_blocks, RQ, rbi, self.use_bias, OQ, obi)
            return out

        return apply

    # ---------------------------------------------------- structured oracles
    def _sgd_blocks(self):
        if self._sgd_layout is None:
            from numba import get_num_threads

            nb = self._n_blocks or max(2, 2 * get_num_threads())
            nb = max(1, min(nb, self.m, self.n))
            rng = np.random.default_rng(12345)
            ug = rng.integers(0, nb, self.m)
            ig = rng.integers(0, nb, self.n)
            t = self.train
            block = ug[t.users].astype(np.int64) * nb + ig[t.items]
            # grouped by block, in random order within each block
            shuffled = rng.permutation(self.nnz)
            order = shuffled[np.argsort(block[shuffled], kind="stable")]
            ptr = np.zeros(nb * nb + 1, dtype=np.int64)
            np.cumsum(np.bincount(block, minlength=nb * nb), out=ptr[1:])
            self._sgd_layout = (
                np.ascontiguousarray(t.users[order]),
                np.ascontiguousarray(t.items[order]),
                np.ascontiguousarray(t.values[order]),
                ptr,
                nb,
                np.arange(self.nnz, dtype=np.int64),
            )
        return self._sgd_layout

    def sgd_epoch(self, y: np.ndarray, lr: float, seed: int, reshuffle: bool = False) -> float:
        """One epoch of per-entry SGD (in place); returns the epoch's mean squared residual.

        Entries are stored shuffled within their DSGD block once; ``reshuffle``
        draws a fresh order every epoch (slower: scattered reads).
        """
        rows, cols, vals, ptr, nb, perm = self._sgd_blocks()
        bu, bi, P, Q = self.unpack(y)
        sse = K.sgd_epoch(rows, cols, vals, ptr, nb, perm, reshuffle, np.uint64(seed), self.mu, bu, bi, P, Q,
                          np.float32(lr), self.lam, self.lam_b, self.use_bias)
        return sse / self.nnz

    def batch_grad(self, y, batch, g, diag=None) -> float:
        """Unbiased mini-batch estimates of the gradient (and GN diagonal) into g (diag).

        ``batch`` holds positions of training entries.  Returns the batch's SSE.
        """
        t = self.train
        g[:] = 0.0
        want = diag is not None
        if want:
            diag[:] = 0.0
        else:
            diag = g  # never written
        bu, bi, P, Q = self.unpack(y)
        scale = np.float32(self.nnz / len(batch))
        return K.batch_grad_diag(t.users, t.items, t.values, batch, self.mu, bu, bi, P, Q, self.lam, self.lam_b,
                                 self.use_bias, scale, want, *self.unpack(g), *self.unpack(diag))

    def als_sweep(self, y: np.ndarray) -> None:
        """One ALS epoch: exact update of all users, then of all items (in place)."""
        bu, bi, P, Q = self.unpack(y)
        csr, csc = self.csr, self.csc
        lam = self.lam if self.lam > 0 else np.float32(1e-6)
        K.als_side(csr.indptr, csr.indices, csr.data, self.mu, bi, Q, lam, self.lam_b, self.use_bias, P, bu)
        K.als_side(csc.indptr, csc.indices, csc.data, self.mu, bu, P, lam, self.lam_b, self.use_bias, Q, bi)

    # ------------------------------------------------------------- prediction
    def predict(self, y: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        bu, bi, P, Q = self.unpack(y)
        out = np.empty(len(rows), dtype=np.float32)
        K.predict_entries(np.ascontiguousarray(rows, dtype=np.int32), np.ascontiguousarray(cols, dtype=np.int32),
                          self.mu, bu, bi, P, Q, self.use_bias, out)
        return out
