"""The numba backend: numpy arrays on the CPU, the parallel kernels of :mod:`lfopt.kernels`."""

from __future__ import annotations

import os
import warnings

import numpy as np

from ..kernels import lf as K
from ..kernels import vector as V


#: bytes the block preconditioner may allocate (both sides' factors and a copy of the factors);
#: None: half the memory available when the blocks are built (see :func:`block_budget_bytes`)
MAX_BLOCK_BYTES: int | None = None


def block_budget_bytes() -> int:
    """The block preconditioner's memory budget: :data:`MAX_BLOCK_BYTES`, or half of the
    available memory (``MemAvailable`` of /proc/meminfo, else ``os.sysconf`` free pages)."""
    if MAX_BLOCK_BYTES is not None:
        return int(MAX_BLOCK_BYTES)
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 8 << 30
    return int(avail // 2)


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

    def weighted_dot(self, w, a, b) -> float:
        """sum_k w[k] a[k] b[k], float64 accumulation (a diagonal quadratic form)."""
        return float(V.weighted_dot(w, a, b))

    def norm(self, a) -> float:
        return float(np.sqrt(V.dot(a, a)))

    def all_finite(self, x) -> bool:
        return bool(np.isfinite(x).all())

    def clamp_min_(self, x, value: float):
        np.maximum(x, np.float32(value), out=x)
        return x

    def moment_update(self, y, g, d, m, s, lr, beta1, beta2, eps, bc1, bc2, d_add: float = 0.0) -> None:
        f32 = np.float32
        V.adaptive_moment_update(y, g, d, m, s, f32(lr), f32(beta1), f32(beta2), f32(eps), f32(bc1), f32(bc2),
                                 f32(d_add))

    def moment_update_segments(self, y, g, d, m, s, segments, lr, beta1, beta2, eps, bc1, bc2,
                               d_add: float = 0.0) -> None:
        """:meth:`moment_update` on the entries of ``segments = (starts, lengths)`` only, with
        second-moment source ``d + d_add`` (the lazy step of a row-sparse mini-batch)."""
        f32 = np.float32
        starts, lengths = segments
        V.adaptive_moment_update_segments(y, g, d, m, s, starts, lengths, f32(lr), f32(beta1), f32(beta2),
                                          f32(eps), f32(bc1), f32(bc2), f32(d_add))

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

    # ------------------------------------------------------------------ LF
    def lf_kernels(self, train, use_bias: bool, n_blocks: int | None = None) -> "NumbaLFKernels":
        """The LF model's oracles over ``train`` (see :class:`NumbaLFKernels`)."""
        return NumbaLFKernels(train, use_bias, n_blocks)


MIN_SGD_BLOCKS = 8


class NumbaLFKernels:
    """The LF kernel set on the CPU: owns the CSR/CSC views of the training data, the
    CSR -> CSC permutation, the DSGD block layout and the work buffers.

    Parameters come as 4-tuples ``(bu, bi, P, Q)`` of float32 arrays, row weights as
    ``(wu, wi, wbu, wbi)`` (per-visit coefficients for ``sgd_epoch``/``batch_grad``);
    the interface is described in :mod:`lfopt.backend`.  The factor weights ``wu``/``wi``
    (and ``vu``/``vi``) may be per row, shape (m,) / (n,), or per (row, dimension),
    shape (m, f) / (n, f); bias weights are per row.
    """

    has_sgd_epoch = True
    has_batch_rows = True

    def __init__(self, train, use_bias: bool, n_blocks: int | None = None):
        self.train = train
        self.m, self.n = train.shape
        self.nnz = train.nnz
        self.use_bias = bool(use_bias)
        self.csr = train.csr
        self.csc = train.csc
        # int32 positions below 2**31 entries (100M ratings: 0.4 GB less than int64)
        itype = np.int32 if self.nnz < 2**31 else np.int64
        inv = np.empty(self.nnz, dtype=itype)
        inv[self.csr.order] = np.arange(self.nnz, dtype=itype)
        self.csc_from_csr = inv[self.csc.order]
        del inv
        self._e = np.empty(self.nnz, dtype=np.float32)
        self._e_csc = np.empty(self.nnz, dtype=np.float32)
        self._n_blocks = n_blocks
        self._sgd = None
        self._visits = (None, None)  # (v as given, what the per-entry kernels get)
        self._visited_u = np.diff(self.csr.indptr) > 0
        self._visited_i = np.diff(self.csc.indptr) > 0

    def _per_visit(self, v):
        """``(vu, vi, vbu, vbi, uniform)`` for the per-entry kernels: when every row that has
        entries has the same coefficients (the count-weighted L2), length-1 arrays and
        ``uniform=True`` (saves four scattered loads per visit); else ``v`` itself.
        Per-(row, dimension) coefficients ``vu`` (m, f) / ``vi`` (n, f) that are the same for
        every visited row become one (1, f) row (one (1, 1) value when all its entries are
        equal).  Cached for the last ``v`` seen (objectives pass the same tuple every call)."""
        if self._visits[0] is not v:
            vu, vi, vbu, vbi = v
            uniform = True
            one = []
            for a, seen in ((vu, self._visited_u), (vi, self._visited_i), (vbu, self._visited_u),
                            (vbi, self._visited_i)):
                vals = a[seen] if len(a) == len(seen) else a
                if len(vals) and not np.all(vals == vals[0]):
                    uniform = False
                    break
                if a.ndim == 2:
                    row = vals[0] if len(vals) else np.zeros(a.shape[1], dtype=np.float32)
                    if np.all(row == row[0]):
                        row = row[:1]
                    one.append(np.ascontiguousarray(row[None, :], dtype=np.float32))
                else:
                    one.append(np.full(1, vals[0] if len(vals) else 0.0, dtype=np.float32))
            self._visits = (v, (*one, True) if uniform else (vu, vi, vbu, vbi, False))
        return self._visits[1]

    # ------------------------------------------------------- full-batch oracles
    def residual_grad(self, mu, params, w, grad) -> float:
        """grad = -J^T e + W y; returns sum e^2 (two sweeps: users over CSR, items over CSC)."""
        bu, bi, P, Q = params
        wu, wi, wbu, wbi = w
        gbu, gbi, gP, gQ = grad
        e = self._e
        csr, csc = self.csr, self.csc
        K.residual_grad_rows(csr.indptr, csr.indices, csr.data, np.float32(mu), bu, bi, P, Q, wu, wbu,
                             self.use_bias, e, gP, gbu)
        K.gather(e, self.csc_from_csr, self._e_csc)
        K.side_accumulate(csc.indptr, csc.indices, self._e_csc, P, np.float32(-1.0), Q, wi, bi, wbi, self.use_bias,
                          gQ, gbi)
        return float(K.sum_squares(e))

    def sse(self, mu, params) -> float:
        bu, bi, P, Q = params
        csr = self.csr
        K.residuals(csr.indptr, csr.indices, csr.data, np.float32(mu), bu, bi, P, Q, self.use_bias, self._e)
        return float(K.sum_squares(self._e))

    def gvp(self, params, v, w, out) -> None:
        """out = J^T J v + W v by the hidden mapping (s = J v stored in CSR order, then J^T s)."""
        _, _, P, Q = params
        vbu, vbi, VP, VQ = v
        wu, wi, wbu, wbi = w
        obu, obi, OP, OQ = out
        csr, csc = self.csr, self.csc
        s = self._e
        K.jv_rows(csr.indptr, csr.indices, P, Q, vbu, vbi, VP, VQ, wu, wbu, self.use_bias, s, OP, obu)
        K.gather(s, self.csc_from_csr, self._e_csc)
        K.side_accumulate(csc.indptr, csc.indices, self._e_csc, P, np.float32(1.0), VQ, wi, vbi, wbi, self.use_bias,
                          OQ, obi)

    def gn_diag(self, params, w, out) -> None:
        _, _, P, Q = params
        wu, wi, wbu, wbi = w
        obu, obi, OP, OQ = out
        K.side_gn_diagonal(self.csr.indptr, self.csr.indices, Q, wu, wbu, self.use_bias, OP, obu)
        K.side_gn_diagonal(self.csc.indptr, self.csc.indices, P, wi, wbi, self.use_bias, OQ, obi)

    def line_sums(self, mu, params, d):
        bu, bi, P, Q = params
        dbu, dbi, DP, DQ = d
        csr = self.csr
        sums = K.step_polynomial(csr.indptr, csr.indices, csr.data, np.float32(mu), bu, bi, P, Q, dbu, dbi, DP, DQ,
                                 self.use_bias)
        return tuple(float(x) for x in sums)

    def gn_blocks(self, params, w, shift: float, diag_scale: float, sides=("u", "i")):
        """Factor the per-row blocks of (J^T J + W) * diag_scale (diagonal) + shift I; returns a
        handle for :meth:`block_solve`.  ``sides`` builds only the user (``"u"``) or item
        (``"i"``) blocks; :meth:`block_solve` then writes zeros on the other side (a process
        of a data-parallel run owns the entries of its users on one side only).

        Float32 packed Cholesky factors, and for rows with fewer entries than g = f (+1) the
        factor of their n_u x n_u dual (Woodbury), so the blocks take sum_u min(n_u, g)^2 / 2
        floats instead of (m + n) g^2.  When even that exceeds :func:`block_budget_bytes`,
        warns once and returns the Gauss-Newton diagonal (Jacobi) instead.
        """
        _, _, P, Q = params
        wu, wi, wbu, wbi = w
        f = P.shape[1]
        g = f + 1 if self.use_bias else f
        sh, sc = np.float64(shift), np.float64(diag_scale)
        sides_ = []
        need = 0
        for side, view, Y, wX, wB in (("u", self.csr, Q, wu, wbu), ("i", self.csc, P, wi, wbi)):
            if side not in sides:
                sides_.append(None)
                continue
            rows = len(view.indptr) - 1
            counts = np.diff(view.indptr)
            # the dual form needs a positive diagonal part D = (s - 1) colsq + s w + shift
            ok = np.full(rows, sc >= 1.0)
            if sc >= 1.0:
                ok &= np.all(sc * np.asarray(wX, dtype=np.float64).reshape(rows, -1) + sh > 0, axis=1)
                if self.use_bias:
                    ok &= sc * np.asarray(wB, dtype=np.float64) + sh > 0
            offsets, dual, n_floats = K.gn_block_layout(counts, g, ok)
            snapshot = bool(dual.any())
            need += 4 * n_floats + offsets.nbytes + dual.nbytes + (Y.nbytes if snapshot else 0)
            sides_.append((view, Y, wX, wB, offsets, dual, n_floats, snapshot))
        budget = block_budget_bytes()
        handle = None
        if need <= budget:
            try:
                built = []
                for view, Y, wX, wB, offsets, dual, n_floats, snapshot in filter(None, sides_):
                    store = np.empty(n_floats, dtype=np.float32)
                    # the dual rows are applied from the other side's factors: keep a copy
                    Ys = Y.copy() if snapshot else Y[:0]
                    built.append((view, Y, Ys, offsets, dual, store, wX, wB))
                with K.single_threaded_blas() as blas:
                    for view, Y, Ys, offsets, dual, store, wX, wB in built:
                        K.side_gn_blocks(view.indptr, view.indices, Y, wX, wB, self.use_bias, sh, sc, offsets, dual,
                                         store, blas)
                done = iter([(view, Ys, offsets, dual, store) for view, _, Ys, offsets, dual, store, _, _ in built])
                handle = ("blocks", [None if sd is None else next(done) for sd in sides_])
            except MemoryError:
                handle = None
        if handle is None:
            warnings.warn(f"block preconditioner: the per-row blocks need {need / 2**30:.2f} GiB, more than the "
                          f"budget {budget / 2**30:.2f} GiB (lfopt.backend.numba.MAX_BLOCK_BYTES); using the "
                          f"Gauss-Newton diagonal (Jacobi) instead", RuntimeWarning, stacklevel=3)
            diag = [np.empty_like(a) for a in (params[0], params[1], P, Q)]
            self.gn_diag(params, w, diag)
            for a in diag:
                a *= np.float32(sc)
                a += np.float32(sh)
                a[~(a > 0)] = 1.0  # rows without entries and weight: their residual is 0
            handle = ("jacobi", diag)
        return handle

    def block_solve(self, handle, r, out) -> None:
        kind, data = handle
        rbu, rbi, RP, RQ = r
        obu, obi, OP, OQ = out
        if kind == "jacobi":
            for a, d, o in zip(r, data, out):
                np.divide(a, d, out=o)
            return
        for blocks, RX, rb, OX, ob in zip(data, (RP, RQ), (rbu, rbi), (OP, OQ), (obu, obi)):
            if blocks is None:  # a side not built (see gn_blocks' sides)
                OX[...] = 0.0
                ob[...] = 0.0
                continue
            view, Ys, offsets, dual, store = blocks
            K.side_block_solve(view.indptr, view.indices, Ys, self.use_bias, offsets, dual, store, RX, rb, OX, ob)

    # ---------------------------------------------------------- per-entry oracles
    def _sgd_layout(self):
        """Entries grouped into DSGD blocks (user group x item group), shuffled once within
        each block and stored in that order (LIBMF-style: sequential reads)."""
        if self._sgd is None:
            self._sgd = self.sgd_layout_of(None)
        return self._sgd

    def sgd_layout_of(self, positions=None) -> dict:
        """The DSGD layout of the entries at ``positions`` of the training data (all when
        None): a grid of nb x nb blocks by random user and item groups, entries shuffled
        once within each block and stored in that order; what :meth:`sgd_block` runs."""
        from numba import get_num_threads

        # a fixed 8 x 8 grid up to 4 threads: the same blocks, hence the same updates in the
        # same order, whatever the thread count (bit-identical results with 1, 2, 3 or 4)
        nb = self._n_blocks or max(MIN_SGD_BLOCKS, 2 * get_num_threads())
        nb = max(1, min(nb, self.m, self.n))
        rng = np.random.default_rng(12345)
        ug = rng.integers(0, nb, self.m)
        ig = rng.integers(0, nb, self.n)
        t = self.train
        users, items = t.users, t.items
        if positions is not None:
            positions = np.asarray(positions, dtype=np.int64)
            users, items = users[positions], items[positions]
        block = ug[users].astype(np.int64) * nb + ig[items]
        del users, items
        shuffled = rng.permutation(len(block))
        order = shuffled[np.argsort(block[shuffled], kind="stable")]
        del shuffled
        ptr = np.zeros(nb * nb + 1, dtype=np.int64)
        np.cumsum(np.bincount(block, minlength=nb * nb), out=ptr[1:])
        del block
        if positions is not None:
            order = positions[order]
        if self.nnz < 2**31:  # positions fit int32: half the memory (100M ratings: 0.4 GB)
            order = order.astype(np.int32)
        # perm (the visiting order of reshuffled epochs) is made on first use: see _perm
        return dict(rows=np.ascontiguousarray(t.users[order]), cols=np.ascontiguousarray(t.items[order]),
                    vals=np.ascontiguousarray(t.values[order]), ptr=ptr, nb=nb, order=order,
                    perm=np.zeros(1, dtype=np.int64))

    @staticmethod
    def _perm(lay: dict) -> np.ndarray:
        """The layout's reshuffle permutation, allocated when a reshuffled epoch first asks."""
        if len(lay["perm"]) != len(lay["rows"]):
            lay["perm"] = np.arange(len(lay["rows"]), dtype=np.int64)
        return lay["perm"]

    def sgd_block(self, mu, params, lr, v, lay) -> float:
        """One pass of per-entry SGD over a layout of :meth:`sgd_layout_of` (in place);
        returns the sum of squared residuals seen."""
        bu, bi, P, Q = params
        return float(K.sgd_epoch(lay["rows"], lay["cols"], lay["vals"], lay["ptr"], lay["nb"], lay["perm"], False,
                                 np.uint64(0), np.float32(mu), bu, bi, P, Q, np.float32(lr), *self._per_visit(v),
                                 self.use_bias))

    def sgd_order(self) -> np.ndarray:
        """Positions (in the Interactions' order) in an order that visits the entries exactly
        as a fused epoch without reshuffle does: its parallel blocks share no user and no
        item, so running them one after the other gives the same updates."""
        lay = self._sgd_layout()
        nb, ptr, order = lay["nb"], lay["ptr"], lay["order"]
        parts = [order[ptr[a * nb + (a + s) % nb]:ptr[a * nb + (a + s) % nb + 1]] for s in range(nb) for a in range(nb)]
        return np.concatenate(parts) if parts else order[:0]

    def sgd_epoch(self, mu, params, lr, v, seed, reshuffle) -> float:
        lay = self._sgd_layout()
        bu, bi, P, Q = params
        perm = self._perm(lay) if reshuffle else lay["perm"]
        return float(K.sgd_epoch(lay["rows"], lay["cols"], lay["vals"], lay["ptr"], lay["nb"], perm,
                                 bool(reshuffle), np.uint64(seed), np.float32(mu), bu, bi, P, Q, np.float32(lr),
                                 *self._per_visit(v), self.use_bias))

    def batch_grad_rows(self, mu, params, v, batch, scale, grad, diag=None):
        """:meth:`batch_grad` written only on the rows the batch touches: returns ``(sse, users,
        items)``, the sorted distinct rows; those rows of ``grad`` (``diag``) are zeroed and
        filled, every other row is left as it is.  O(|B| f): no pass over the whole vector."""
        t = self.train
        b = np.asarray(batch)
        users, items = np.unique(t.users[b]), np.unique(t.items[b])
        for bu_, bi_, P_, Q_ in (grad,) if diag is None else (grad, diag):
            if bu_.size:
                bu_[users] = 0.0
                bi_[items] = 0.0
            P_[users] = 0.0
            Q_[items] = 0.0
        return self._batch_sums(mu, params, v, b, scale, grad, diag), users, items

    def batch_grad(self, mu, params, v, batch, scale, grad, diag=None) -> float:
        for a in grad if diag is None else (*grad, *diag):
            a[...] = 0.0
        return self._batch_sums(mu, params, v, batch, scale, grad, diag)

    def _batch_sums(self, mu, params, v, batch, scale, grad, diag) -> float:
        """Add the batch's sums into ``grad`` (and ``diag``), which are zero on the rows it touches."""
        t = self.train
        bu, bi, P, Q = params
        want = diag is not None
        return float(K.batch_grad_diag(t.users, t.items, t.values, batch, np.float32(mu), bu, bi, P, Q,
                                       *self._per_visit(v), self.use_bias, np.float32(scale), want, *grad,
                                       *(diag if want else grad)))

    def als_sweep(self, mu, params, w, sides=("u", "i")) -> None:
        """Exact ridge solves of every user row, then of every item row (in place); ``sides``
        runs only one of the two half-sweeps."""
        bu, bi, P, Q = params
        wu, wi, wbu, wbi = w
        csr, csc = self.csr, self.csc
        mu = np.float32(mu)
        with K.single_threaded_blas() as blas:
            if "u" in sides:
                K.als_side(csr.indptr, csr.indices, csr.data, mu, bi, Q, wu, wbu, self.use_bias, P, bu, blas)
            if "i" in sides:
                K.als_side(csc.indptr, csc.indices, csc.data, mu, bu, P, wi, wbi, self.use_bias, Q, bi, blas)

    def predict(self, mu, params, rows, cols) -> np.ndarray:
        bu, bi, P, Q = params
        rows = np.ascontiguousarray(rows, dtype=np.int32)
        cols = np.ascontiguousarray(cols, dtype=np.int32)
        out = np.empty(len(rows), dtype=np.float32)
        K.predict_entries(rows, cols, np.float32(mu), bu, bi, P, Q, self.use_bias, out)
        return out
