"""The torch backend: the table of :mod:`lfopt.backend.numba` on tensors, CPU or CUDA.

``TorchBackend(device)`` offers the same vector operations, the same latent-factor
oracles (:meth:`TorchBackend.lf_kernels`) and the same BPR / full-ranking kernels
(same argument lists as :mod:`lfopt.kernels.bpr`) on float32 tensors (int64 indices)
on one device.

How the LF oracles are computed
-------------------------------
The bilinear model's sweeps are sparse-matrix products over the pattern K, which
torch runs through MKL (CPU) or cuSPARSE (CUDA) without ever gathering an
(|K|, f) array:

* predictions / ``J v`` (the hidden mapping) are one SDDMM (``sampled_addmm``)
  with augmented factors: ``[VP, P, vbu, 1] . [Q, VQ, 1, vbi] = VP.Q + P.VQ + vbu + vbi``;
* ``J^T s`` is one SpMM per side: ``S [Q, 1]`` gives the user rows and their bias
  together, ``S^T [P, 1]`` the item rows (S^T's values are S's, permuted to CSC order);
* per-row Gauss-Newton blocks and ALS normal matrices are one SpMM of the 0/1 pattern
  with the products z_a z_b (a <= b, the upper triangle) of the other side's rows,
  z = (y, 1): never an (|K|, f, f) array; the products are formed a slice of pairs at a
  time (``chunk_floats`` bounds every temporary), factored in float64 by batched Cholesky.

Measured on 2 CPU cores (ML-1M, rank 20), these products take 2-4 ms where a
gather + ``index_add_`` formulation takes 100+ ms.  Mini-batch oracles
(``batch_grad``, BPR) gather and ``index_add_`` their few rows.

Per-entry sequential SGD is not a GPU algorithm: ``has_sgd_epoch`` is False and the
SGD optimizer uses mini-batches through ``batch_grad``.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..errors import ConfigError

# torch warns once per process that sparse CSR is "beta"; the products used here are stable.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")

_F32 = torch.float32
_F64 = torch.float64
_I64 = torch.int64


def _torch_dtype(dtype) -> torch.dtype:
    """torch dtype of a numpy dtype (or a torch dtype)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    return torch.from_numpy(np.empty(0, dtype=np.dtype(dtype))).dtype


def _sparse(crow, col, values, shape):
    return torch.sparse_csr_tensor(crow, col, values, size=shape, check_invariants=False)


class _InOut:
    """Converts kernel arguments (numpy arrays or tensors) to tensors on a device once,
    and writes in-place results back into the caller's arrays at :meth:`finish`.

    A numpy array on the CPU device with the right dtype is shared (``from_numpy``),
    so nothing needs copying back; a tensor already on the device is used as is.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._back = []

    def read(self, x, dtype) -> torch.Tensor:
        dtype = _torch_dtype(dtype)
        if isinstance(x, torch.Tensor):
            return x.to(device=self.device, dtype=dtype)
        return torch.as_tensor(np.asarray(x), device=self.device).to(dtype)

    def rw(self, x, dtype) -> torch.Tensor:
        dtype = _torch_dtype(dtype)
        if isinstance(x, torch.Tensor):
            if x.device == self.device and x.dtype == dtype:
                return x
            t = x.to(device=self.device, dtype=dtype)
            self._back.append((x, t))
            return t
        arr = np.asarray(x)
        if (self.device.type == "cpu" and arr.flags.c_contiguous and arr.flags.writeable
                and _torch_dtype(arr.dtype) == dtype):
            return torch.from_numpy(arr)
        t = torch.as_tensor(np.ascontiguousarray(arr), device=self.device).to(dtype)
        self._back.append((arr, t))
        return t

    def finish(self) -> None:
        for orig, t in self._back:
            if isinstance(orig, torch.Tensor):
                orig.copy_(t.to(device=orig.device, dtype=orig.dtype))
            else:
                orig[...] = t.detach().cpu().numpy().astype(orig.dtype, copy=False)
        self._back = []


def _expand_ranges(ptr: torch.Tensor, rows: torch.Tensor):
    """For CSR ``ptr`` and the rows ``rows`` of a block: (block row of each element,
    position in the CSR's index array of each element), row by row."""
    starts = ptr[rows]
    counts = ptr[rows + 1] - starts
    block = torch.repeat_interleave(torch.arange(len(rows), device=ptr.device), counts)
    if block.numel() == 0:
        return block, block
    first = torch.cumsum(counts, 0) - counts
    pos = torch.arange(block.numel(), device=ptr.device) - first[block] + starts[block]
    return block, pos


def _pow_f32(beta: float, k: torch.Tensor) -> torch.Tensor:
    """float32(beta^k) computed in float64, as the numba kernel's table of powers."""
    return torch.pow(torch.tensor(float(np.float32(beta)), dtype=_F64, device=k.device), k.to(_F64)).to(_F32)


class TorchBackend:
    """The backend's table on torch tensors.

    >>> import numpy as np
    >>> be = TorchBackend("cpu")
    >>> x = be.asarray(np.arange(3))
    >>> be.dot(x, x), be.to_numpy(x).dtype
    (5.0, dtype('float32'))
    """

    name = "torch"
    float_dtype = np.float32

    def __init__(self, device: str = "cpu", chunk_floats: int | None = None):
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} needs a CUDA GPU, and torch sees none "
                              f"(torch {torch.__version__}); use device='cpu'")
        if dev.type not in ("cpu", "cuda"):
            raise ConfigError(f"the torch backend runs on 'cpu' or 'cuda[:N]', got device={device!r}")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        self.torch_device = dev
        self.device = str(dev)
        # bound on the floats of one temporary (outer products, score blocks, comparisons):
        # 2^23 floats = 32 MiB on the CPU, 2^27 = 512 MiB on a GPU
        self.chunk_floats = int(chunk_floats or (1 << 27 if dev.type == "cuda" else 1 << 23))

    def __repr__(self) -> str:
        return f"TorchBackend({self.device!r})"

    # ------------------------------------------------------------ vectors
    def asarray(self, x, dtype=np.float32) -> torch.Tensor:
        dt = _torch_dtype(dtype)
        if isinstance(x, torch.Tensor):
            return x.to(device=self.torch_device, dtype=dt).contiguous()
        return torch.as_tensor(np.ascontiguousarray(x), device=self.torch_device).to(dt)

    def to_numpy(self, x) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy()
        return np.asarray(x)

    def zeros(self, n: int, dtype=np.float32) -> torch.Tensor:
        return torch.zeros(n, dtype=_torch_dtype(dtype), device=self.torch_device)

    def zeros_like(self, x) -> torch.Tensor:
        return torch.zeros_like(x)

    def empty_like(self, x) -> torch.Tensor:
        return torch.empty_like(x)

    def copy(self, x) -> torch.Tensor:
        return x.clone()

    def dot(self, a, b) -> float:
        """a . b accumulated in float64."""
        return float(torch.dot(a.reshape(-1).to(_F64), b.reshape(-1).to(_F64)))

    def weighted_dot(self, w, a, b) -> float:
        """sum_k w[k] a[k] b[k], float64 accumulation (a diagonal quadratic form)."""
        return float((w.reshape(-1).to(_F64) * a.reshape(-1).to(_F64) * b.reshape(-1).to(_F64)).sum())

    def norm(self, a) -> float:
        return float(torch.linalg.vector_norm(a.reshape(-1).to(_F64)))

    def all_finite(self, x) -> bool:
        return bool(torch.isfinite(x).all())

    def clamp_min_(self, x, value: float):
        return x.clamp_min_(float(value))

    def moment_update(self, y, g, d, m, s, lr, beta1, beta2, eps, bc1, bc2, d_add: float = 0.0) -> None:
        """m <- b1 m + (1-b1) g;  s <- b2 s + (1-b2) (d + d_add)^2;  y <- y - lr (m/bc1) / (sqrt(s/bc2) + eps)
        (``d_add``: added to ``d`` in place)."""
        f32 = np.float32
        b1, b2 = f32(beta1), f32(beta2)
        if d_add:
            d.add_(float(f32(d_add)))
        m.mul_(float(b1)).add_(g, alpha=float(f32(1) - b1))
        s.mul_(float(b2)).addcmul_(d, d, value=float(f32(1) - b2))
        den = (s / float(f32(bc2))).sqrt_().add_(float(f32(eps)))
        y.addcdiv_(m, den, value=-float(f32(lr)) / float(f32(bc1)))

    def permutation(self, rng: np.random.Generator, n: int) -> torch.Tensor:
        """The permutation numpy's ``rng.permutation(n)`` draws (so iterates match numba's), on the device."""
        return torch.as_tensor(rng.permutation(n), dtype=_I64, device=self.torch_device)

    def index(self, x) -> torch.Tensor:
        """An index tensor (int64 positions) on this backend's device."""
        if isinstance(x, torch.Tensor):
            return x.to(device=self.torch_device, dtype=_I64)
        return torch.as_tensor(np.asarray(x, dtype=np.int64), device=self.torch_device)

    # -------------------------------------------------------- model kernels
    def lf_kernels(self, train, use_bias: bool, n_blocks=None) -> "TorchLFKernels":
        """The latent-factor oracles on ``train`` (an :class:`~lfopt.Interactions`), data on the device.

        ``n_blocks`` (the DSGD stratification of the numba backend) is accepted and unused.
        """
        return TorchLFKernels(self, train, use_bias)

    # ------------------------------------------------- BPR and full ranking
    def sample_negatives(self, users, indptr_a, indices_a, indptr_b, indices_b, n_items, seed, out):
        """out[t] = an item drawn uniformly among those user ``users[t]`` has not interacted
        with in the CSR views a and b (sorted indices; an empty view, indptr all zeros, for
        "none"); -1 when there is none.  Same distribution as the numba kernel, another stream."""
        io = _InOut(self.torch_device)
        dev = self.torch_device
        u = io.read(users, np.int64)
        res = io.rw(out, np.int64)
        n_items = int(n_items)
        keys = []
        for ptr, idx in ((indptr_a, indices_a), (indptr_b, indices_b)):
            ptr = io.read(ptr, np.int64)
            if ptr.numel() > 1 and int(ptr[-1]) > 0:
                idx = io.read(idx, np.int64)
                rows = torch.repeat_interleave(torch.arange(ptr.numel() - 1, device=dev), ptr[1:] - ptr[:-1])
                keys.append(rows * n_items + idx)  # sorted: rows ascending, indices sorted within a row

        def taken(key):
            hit = torch.zeros(key.shape, dtype=torch.bool, device=dev)
            for kk in keys:
                pos = torch.searchsorted(kk, key).clamp_max_(kk.numel() - 1)
                hit |= kk[pos] == key
            return hit

        gen = torch.Generator(device=dev)
        gen.manual_seed(int(seed) % (1 << 63))
        res.fill_(-1)
        pending = torch.arange(u.numel(), device=dev)
        if n_items > 0:
            for _ in range(64):
                if pending.numel() == 0:
                    break
                j = torch.randint(0, n_items, (pending.numel(),), generator=gen, device=dev)
                bad = taken(u[pending] * n_items + j)
                ok = ~bad
                res[pending[ok]] = j[ok]
                pending = pending[bad]
            # dense users: the k-th free item, k uniform, from a mask of their items
            rows_per = max(1, self.chunk_floats // max(1, n_items))
            for s in range(0, pending.numel(), rows_per):
                pend = pending[s:s + rows_per]
                free = torch.ones((pend.numel(), n_items), dtype=torch.bool, device=dev)
                cand = torch.arange(n_items, device=dev)
                for r in range(pend.numel()):  # rare: users that hold nearly every item
                    free[r] = ~taken(u[pend[r]] * n_items + cand)
                nfree = free.sum(1)
                k = (torch.rand(pend.numel(), generator=gen, device=dev) * nfree).floor().long()
                k = torch.minimum(k, (nfree - 1).clamp_min(0))
                pick = ((free.cumsum(1) == (k + 1)[:, None]) & free).float().argmax(1)
                res[pend] = torch.where(nfree > 0, pick, torch.full_like(pick, -1))
        io.finish()

    def _triple_x(self, P, Q, b, use_bias, u, i, j):
        x = (P[u] * (Q[i] - Q[j])).sum(1)
        if use_bias:
            x = x + (b[i] - b[j])
        return x

    @staticmethod
    def _softplus64(z):
        """log(1 + exp(z)) in float64, stable (the numba kernel's formula)."""
        z = z.to(_F64)
        return z.clamp_min(0) + torch.log1p(torch.exp(-z.abs()))

    def bpr_loss(self, P, Q, b, use_bias, tu, ti, tj) -> float:
        """Mean BPR loss softplus(-x_uij) over triples (j = -1 skipped), float64."""
        io = _InOut(self.torch_device)
        P, Q = io.read(P, np.float32), io.read(Q, np.float32)
        b = io.read(b, np.float32)
        tu, ti, tj = io.read(tu, np.int64), io.read(ti, np.int64), io.read(tj, np.int64)
        keep = tj >= 0
        tu, ti, tj = tu[keep], ti[keep], tj[keep]
        if tu.numel() == 0:
            return 0.0
        x = self._triple_x(P, Q, b, bool(use_bias), tu, ti, tj)
        return float(self._softplus64(-x).sum()) / tu.numel()

    def bpr_train(self, tu, ti, tj, batch_size, vu, vi, vj, vbatch_size, P, Q, b, use_bias, lam_b, opt, lr, beta1,
                  beta2, eps, mP, vP, mQ, vQ, mb, vb, cnt_u, cnt_i, lam, lam_map, learn_lam, lam_lr, mL, vL, cL,
                  grad_out, stats):
        """The numba ``bpr_train`` (see :mod:`lfopt.kernels.bpr`) on tensors: consecutive batches
        of ``batch_size`` triples, SGD (``opt`` 0) or lazy row-wise Adam (1), and with
        ``learn_lam`` lambdaOpt's Lambda step after every step.  Every state array is
        updated in place (numpy arrays too)."""
        dev = self.torch_device
        io = _InOut(dev)
        f32 = np.float32
        rd = io.read
        tu_h = np.asarray(tu.cpu() if isinstance(tu, torch.Tensor) else tu)
        tj_h = np.asarray(tj.cpu() if isinstance(tj, torch.Tensor) else tj)
        tu, ti, tj = rd(tu, np.int64), rd(ti, np.int64), rd(tj, np.int64)
        P, Q, b = io.rw(P, np.float32), io.rw(Q, np.float32), io.rw(b, np.float32)
        adam = int(opt) == 1
        if adam:
            mP, vP, mQ, vQ = (io.rw(x, np.float32) for x in (mP, vP, mQ, vQ))
            if use_bias:
                mb, vb = io.rw(mb, np.float32), io.rw(vb, np.float32)
        cnt_u, cnt_i = io.rw(cnt_u, np.int64), io.rw(cnt_i, np.int64)
        lam = io.rw(lam, np.float32)
        stats_t = io.rw(stats, np.float64)
        want_grad = len(grad_out) > 0
        if want_grad:
            grad_out = io.rw(grad_out, np.float32)
        learn = bool(learn_lam)
        if learn:
            vj_h = np.asarray(vj.cpu() if isinstance(vj, torch.Tensor) else vj)
            vu, vi, vj = rd(vu, np.int64), rd(vi, np.int64), rd(vj, np.int64)
            mL, vL, cL = io.rw(mL, np.float32), io.rw(vL, np.float32), io.rw(cL, np.int64)
        base_u, su_row, su_col, base_i, si_row, si_col = (int(x) for x in np.asarray(
            lam_map.cpu() if isinstance(lam_map, torch.Tensor) else lam_map))
        use_bias = bool(use_bias)
        lr, beta1, beta2, eps = float(f32(lr)), float(f32(beta1)), float(f32(beta2)), float(f32(eps))
        lam_b, lam_lr = float(f32(lam_b)), float(f32(lam_lr))
        om1, om2 = float(f32(1) - f32(beta1)), float(f32(1) - f32(beta2))
        m, f = P.shape
        n = Q.shape[0]
        N = int(tu_h.shape[0])
        B = int(batch_size)
        Bv = int(vbatch_size)
        n_steps = (N + B - 1) // B if B > 0 else 0
        dr = torch.arange(f, device=dev)
        # the valid triples (j >= 0) of every step, found once on the host (no per-step sync)
        valid = tj_h >= 0
        cum = np.concatenate([[0], np.cumsum(valid)])
        keep = torch.as_tensor(np.flatnonzero(valid), device=dev)
        tu_c, ti_c, tj_c = tu[keep], ti[keep], tj[keep]
        if learn:
            vvalid = vj_h >= 0
            vcum = np.concatenate([[0], np.cumsum(vvalid)])
            vkeep = torch.as_tensor(np.flatnonzero(vvalid), device=dev)
            vu_c, vi_c, vj_c = vu[vkeep], vi[vkeep], vj[vkeep]
            uslot = torch.full((m,), -1, dtype=_I64, device=dev)
            islot = torch.full((n,), -1, dtype=_I64, device=dev)
        acc = torch.zeros(4, dtype=_F64, device=dev)

        def lam_idx(rows, base, srow, scol):
            return base + rows[:, None] * srow + dr[None, :] * scol

        def adam_rows(X, mX, vX, rows, G, k):
            bc1 = 1.0 - _pow_f32(beta1, k)[:, None]
            bc2 = 1.0 - _pow_f32(beta2, k)[:, None]
            if G.dim() == 1:
                bc1, bc2 = bc1[:, 0], bc2[:, 0]
            mn = beta1 * mX[rows] + om1 * G
            vn = beta2 * vX[rows] + om2 * G * G
            mX[rows] = mn
            vX[rows] = vn
            X[rows] = X[rows] - lr * (mn / bc1) / (torch.sqrt(vn / bc2) + eps)
            return mn, vn, bc1, bc2

        def dtheta_dG(G, mn, vn, bc1, bc2):
            s = torch.sqrt(vn / bc2)
            den = s + eps
            out = om1 / bc1 / den
            corr = (mn / bc1) * om2 * G / (bc2 * s * den * den)
            out = out - torch.where(s > 0, corr, torch.zeros_like(corr))
            return -lr * out

        for step in range(n_steps):
            a0, a1 = int(cum[step * B]), int(cum[min(N, step * B + B)])
            if a1 == a0:
                continue
            u, i, j = tu_c[a0:a1], ti_c[a0:a1], tj_c[a0:a1]
            nb = a1 - a0
            # 1. c = d loss / d x at the current parameters
            x = self._triple_x(P, Q, b, use_bias, u, i, j)
            c = -torch.sigmoid(-x)
            acc[0] += self._softplus64(-x).sum()
            acc[1] += nb
            # 2. row gradients G = g + 2 n Lambda theta, summed per distinct row
            uu, inv_u, n_u = torch.unique(u, return_inverse=True, return_counts=True)
            occ = torch.cat([i, j])
            sgn_c = torch.cat([c, -c])
            ii, inv_i, n_i = torch.unique(occ, return_inverse=True, return_counts=True)
            Pu = P[uu]
            Qi = Q[ii]
            idx_u = lam_idx(uu, base_u, su_row, su_col)
            idx_i = lam_idx(ii, base_i, si_row, si_col)
            two_nu = (2.0 * n_u.to(_F32))[:, None]
            two_ni = (2.0 * n_i.to(_F32))[:, None]
            gU = torch.zeros((uu.numel(), f), dtype=_F32, device=dev)
            gU.index_add_(0, inv_u, c[:, None] * (Q[i] - Q[j]))
            gU += two_nu * lam[idx_u] * Pu
            gI = torch.zeros((ii.numel(), f), dtype=_F32, device=dev)
            gI.index_add_(0, inv_i, sgn_c[:, None] * P[torch.cat([u, u])])
            gI += two_ni * lam[idx_i] * Qi
            if use_bias:
                gb = torch.zeros(ii.numel(), dtype=_F32, device=dev).index_add_(0, inv_i, sgn_c)
                gb += two_ni[:, 0] * lam_b * b[ii]
            # 3. the optimizer step on the rows present
            if adam:
                cnt_u[uu] += 1
                cnt_i[ii] += 1
                ku, ki = cnt_u[uu], cnt_i[ii]
                mnU, vnU, bc1U, bc2U = adam_rows(P, mP, vP, uu, gU, ku)
                mnI, vnI, bc1I, bc2I = adam_rows(Q, mQ, vQ, ii, gI, ki)
                if use_bias:
                    adam_rows(b, mb, vb, ii, gb, ki)
            else:
                P[uu] = Pu - lr * gU
                Q[ii] = Qi - lr * gI
                if use_bias:
                    b[ii] = b[ii] - lr * gb
            # 4. lambdaOpt: Lambda's step on a validation batch at the new parameters
            if not learn:
                continue
            v0, v1 = int(vcum[min(len(vj_h), step * Bv)]), int(vcum[min(len(vj_h), step * Bv + Bv)])
            nvalid = v1 - v0
            if nvalid == 0:
                continue
            wu, wi, wj = vu_c[v0:v1], vi_c[v0:v1], vj_c[v0:v1]
            xv = self._triple_x(P, Q, b, use_bias, wu, wi, wj)
            acc[2] += self._softplus64(-xv).sum()
            acc[3] += nvalid
            ck = -torch.sigmoid(-xv) * float(f32(1) / f32(nvalid))
            nu, ni = uu.numel(), ii.numel()
            uslot[uu] = torch.arange(nu, device=dev)
            islot[ii] = torch.arange(ni, device=dev)
            # d l_val / d theta_bar of the training batch's rows (a spare last slot for "absent")
            su, si, sj = uslot[wu], islot[wi], islot[wj]
            su = torch.where(su >= 0, su, nu)
            si = torch.where(si >= 0, si, ni)
            sj = torch.where(sj >= 0, sj, ni)
            aU = torch.zeros((nu + 1, f), dtype=_F32, device=dev).index_add_(0, su, ck[:, None] * (Q[wi] - Q[wj]))
            Pw = ck[:, None] * P[wu]
            aI = torch.zeros((ni + 1, f), dtype=_F32, device=dev).index_add_(0, si, Pw).index_add_(0, sj, -Pw)
            hasU = torch.zeros(nu + 1, dtype=torch.bool, device=dev)
            hasU[su] = True
            hasI = torch.zeros(ni + 1, dtype=torch.bool, device=dev)
            hasI[si] = True
            hasI[sj] = True
            uslot[uu] = -1
            islot[ii] = -1
            if adam:
                dGU = dtheta_dG(gU, mnU, vnU, bc1U, bc2U)
                dGI = dtheta_dG(gI, mnI, vnI, bc1I, bc2I)
            else:
                dGU = dGI = -lr
            hU = aU[:nu] * dGU * two_nu * Pu  # Pu, Qi: theta before the step
            hI = aI[:ni] * dGI * two_ni * Qi
            ru = hasU[:nu].nonzero().squeeze(1)
            ri = hasI[:ni].nonzero().squeeze(1)
            idx = torch.cat([idx_u[ru].reshape(-1), idx_i[ri].reshape(-1)])
            if idx.numel() == 0:
                continue
            hg = torch.cat([hU[ru].reshape(-1), hI[ri].reshape(-1)])
            ul, inv_l = torch.unique(idx, return_inverse=True)
            g = torch.zeros(ul.numel(), dtype=_F32, device=dev).index_add_(0, inv_l, hg)
            if want_grad:
                grad_out.index_add_(0, ul, g)
            cL[ul] += 1
            kl = cL[ul]
            mn = beta1 * mL[ul] + om1 * g
            vn = beta2 * vL[ul] + om2 * g * g
            mL[ul] = mn
            vL[ul] = vn
            step_l = (mn / (1.0 - _pow_f32(beta1, kl))) / (torch.sqrt(vn / (1.0 - _pow_f32(beta2, kl))) + eps)
            nv = lam[ul] - lam_lr * step_l
            lam[ul] = nv.clamp_min(0.0)
        stats_t += acc
        io.finish()

    def scores(self, P, Q, item_bias, rows) -> torch.Tensor:
        """The score block P[rows] Q^T (+ item_bias), float32 on the device."""
        rd = _InOut(self.torch_device).read
        P, Q = rd(P, np.float32), rd(Q, np.float32)
        S = P[rd(rows, np.int64)] @ Q.T
        if item_bias is not None and len(item_bias):
            S += rd(item_bias, np.float32)[None, :]
        return S

    def _exclude(self, S, users, ex_ptr, ex_idx):
        """Set the excluded items of every row to -inf; return the number of them that were not -inf."""
        block, pos = _expand_ranges(ex_ptr, users)
        ex_mask = torch.zeros(S.shape, dtype=torch.bool, device=S.device)
        if block.numel():
            ex_mask[block, ex_idx[pos]] = True
        n_ex = (ex_mask & (S != -np.inf)).sum(1)
        S.masked_fill_(ex_mask, -np.inf)
        return n_ex

    def topk_rows(self, S, users, ex_ptr, ex_idx, k, out_items, out_scores):
        """Top ``k`` items of each row of the score block ``S`` (modified: excluded items set
        to -inf), excluded, -inf and NaN scores left out; order score descending, ties by item
        index; rows with fewer than k candidates padded with item -1 and score -inf."""
        io = _InOut(self.torch_device)
        S = io.rw(S, np.float32)
        users = io.read(users, np.int64)
        ex_ptr, ex_idx = io.read(ex_ptr, np.int64), io.read(ex_idx, np.int64)
        items = io.rw(out_items, np.int64)
        sc = io.rw(out_scores, np.float32)
        k = int(k)
        self._exclude(S, users, ex_ptr, ex_idx)
        n = S.shape[1]
        W = torch.nan_to_num(S, nan=-np.inf, posinf=np.inf, neginf=-np.inf)
        kk = min(k, n)
        vals, idx = torch.sort(W, dim=1, descending=True, stable=True)
        vals, idx = vals[:, :kk], idx[:, :kk]
        items.fill_(-1)
        sc.fill_(-np.inf)
        items[:, :kk] = torch.where(vals == -np.inf, torch.full_like(idx, -1), idx)
        sc[:, :kk] = vals
        io.finish()

    def rank_targets(self, S, users, ex_ptr, ex_idx, t_ptr, t_idx, rank_out, auc_out, nneg_out):
        """Rank each user's held-out positives in the score block ``S`` (modified: excluded
        items set to -inf): the numba ``rank_targets`` (same outputs, same tie rules)."""
        dev = self.torch_device
        io = _InOut(dev)
        S = io.rw(S, np.float32)
        users = io.read(users, np.int64)
        ex_ptr, ex_idx = io.read(ex_ptr, np.int64), io.read(ex_idx, np.int64)
        t_ptr, t_idx = io.read(t_ptr, np.int64), io.read(t_idx, np.int64)
        rank_out = io.rw(rank_out, np.int64)
        auc_out = io.rw(auc_out, np.float64)
        nneg_out = io.rw(nneg_out, np.int64)
        R, n = S.shape
        n_ex = self._exclude(S, users, ex_ptr, ex_idx)
        tblock, tpos = _expand_ranges(t_ptr, users)  # target entries of the block, by row
        items = t_idx[tpos]
        s = S[tblock, items]
        live = (s != -np.inf) & ~torch.isnan(s)  # a NaN target is not evaluated (undefined in numba's fastmath)
        n_t = torch.zeros(R, dtype=_I64, device=dev).index_add_(0, tblock, live.to(_I64))
        n_neg = n - n_ex - n_t
        nneg_out.copy_(n_neg)
        # target multiplicity of every item of every row (other targets leave the negatives)
        C = torch.zeros((R, n), dtype=torch.int32, device=dev)
        C.index_put_((tblock, items), torch.ones_like(items, dtype=torch.int32), accumulate=True)
        cols = torch.arange(n, device=dev)
        step = max(1, self.chunk_floats // max(1, 4 * n))  # about 4 (targets x n) temporaries at once
        for a in range(0, tpos.numel(), step):
            sl = slice(a, a + step)
            r, it, sv = tblock[sl], items[sl], s[sl]
            rowS = S[r]
            gt = rowS > sv[:, None]
            eq = rowS == sv[:, None]
            greater = gt.sum(1)
            ties = eq.sum(1) - 1
            before = (eq & (cols[None, :] < it[:, None])).sum(1)
            Cr = C[r]
            pg = (gt * Cr).sum(1)
            pt = (eq * Cr).sum(1) - 1
            ok = live[sl]
            rank = torch.where(ok, greater + before, torch.full_like(greater, -1))
            nn = n_neg[r].to(_F64)
            ng = (greater - pg).to(_F64)
            nt = (ties - pt).to(_F64)
            auc = torch.where(ok & (nn > 0), (nn - ng - 0.5 * nt) / nn.clamp_min(1), torch.full_like(nn, np.nan))
            rank_out[tpos[sl]] = rank
            auc_out[tpos[sl]] = auc
        io.finish()


class TorchLFKernels:
    """The latent-factor oracles of one training set on a torch device.

    Parameters are 4-tuples ``(bu, bi, P, Q)`` of float32 tensors (``bu``/``bi`` of
    shape (0,) without biases); row weights ``w = (wu, wi, wbu, wbi)`` give the
    penalty 1/2 sum_u wu[u] |p_u|^2 + 1/2 sum_i wi[i] |q_i|^2 + 1/2 sum wbu b_u^2 +
    1/2 sum wbi b_i^2 (per-row tensors, or numbers for one weight for every row).
    Residuals are e = r - (mu + b_u + b_i + p_u . q_i).
    """

    has_sgd_epoch = False

    def __init__(self, backend: TorchBackend, train, use_bias: bool):
        self.backend = backend
        dev = self.device = backend.torch_device
        self.use_bias = bool(use_bias)
        self.m, self.n = int(train.n_users), int(train.n_items)
        self.nnz = int(train.nnz)
        csr, csc = train.csr, train.csc
        t = lambda a, dt=_I64: torch.as_tensor(np.ascontiguousarray(a), device=dev).to(dt)  # noqa: E731
        # entry order (mini-batches index it)
        self.users, self.items, self.values = t(train.users), t(train.items), t(train.values, _F32)
        # CSR (by user) and the transpose (by item)
        self.u_ptr, self.u_col, self.u_val = t(csr.indptr), t(csr.indices), t(csr.data, _F32)
        self.i_ptr, self.i_col, self.i_val = t(csc.indptr), t(csc.indices), t(csc.data, _F32)
        # the sparse products' index arrays: int32 where they fit (cuSPARSE's and MKL's native width)
        idx_dt = torch.int32 if self.nnz < 2**31 - 1 and max(self.m, self.n) < 2**31 - 1 else _I64
        self._sp = {side: (ptr.to(idx_dt), col.to(idx_dt)) for side, ptr, col in
                    (("u", self.u_ptr, self.u_col), ("i", self.i_ptr, self.i_col))}
        inv = np.empty(self.nnz, dtype=np.int64)
        inv[csr.order] = np.arange(self.nnz)
        self.csc_from_csr = t(inv[csc.order])  # position in CSR order of every CSC entry
        self.cnt_u = (self.u_ptr[1:] - self.u_ptr[:-1]).to(_F32)
        self.cnt_i = (self.i_ptr[1:] - self.i_ptr[:-1]).to(_F32)
        self._zeros_pat = self._U(torch.zeros(self.nnz, dtype=_F32, device=dev))
        self._ones_u = torch.ones((self.m, 1), dtype=_F32, device=dev)
        self._ones_i = torch.ones((self.n, 1), dtype=_F32, device=dev)

    def __repr__(self) -> str:
        return f"<TorchLFKernels {self.m} x {self.n}, {self.nnz} entries, bias={self.use_bias}, {self.device}>"

    # ------------------------------------------------------------ helpers
    def _U(self, vals_csr):
        """The m x n sparse matrix with values (CSR order)."""
        return _sparse(*self._sp["u"], vals_csr, (self.m, self.n))

    def _I(self, vals_csr):
        """The n x m transpose, from values in CSR order."""
        return _sparse(*self._sp["i"], vals_csr[self.csc_from_csr], (self.n, self.m))

    def _side_sparse(self, side, vals):
        """The sparse matrix of a side (users: m x n, items: n x m) with values in that side's order."""
        shape = (self.m, self.n) if side == "u" else (self.n, self.m)
        return _sparse(*self._sp[side], vals, shape)

    def _sddmm(self, A, B):
        """(A[u] . B[i]) of every entry, CSR order."""
        return torch.sparse.sampled_addmm(self._zeros_pat, A, B.T, beta=0.0).values()

    def _aug(self, X, b, side):
        """[X, b, 1] / [X, 1, b] augmented factors: rowdot gives x . y + b_u + b_i."""
        if not self.use_bias:
            return X
        ones = self._ones_u if side == "u" else self._ones_i
        if side == "u":
            return torch.cat([X, b[:, None], ones], 1)
        return torch.cat([X, ones, b[:, None]], 1)

    def _pred(self, params):
        bu, bi, P, Q = params
        return self._sddmm(self._aug(P, bu, "u"), self._aug(Q, bi, "i"))

    def _jv(self, params, v):
        """s = J v (hidden mapping) of every entry, CSR order."""
        bu, bi, P, Q = params
        vbu, vbi, VP, VQ = v
        A = torch.cat([VP, P], 1)
        B = torch.cat([Q, VQ], 1)
        return self._sddmm(self._aug(A, vbu, "u"), self._aug(B, vbi, "i"))

    def _one(self, X):
        """[X, 1] (bias column) or X."""
        if not self.use_bias:
            return X
        return torch.cat([X, torch.ones((X.shape[0], 1), dtype=X.dtype, device=X.device)], 1)

    def _weights(self, w):
        """Weights as float32 tensors: the factor weights of shapes (m, 1) / (n, 1) (per row) or
        (m, f) / (n, f) (per row and dimension), the bias weights (m,) / (n,) ((0,) without
        biases); numbers give one weight for every row."""
        out = []
        for j, (x, rows) in enumerate(zip(w, (self.m, self.n, self.m, self.n))):
            factor = j < 2
            if np.ndim(x) == 0 or (isinstance(x, torch.Tensor) and x.numel() == 1 and rows != 1):
                t = torch.full((rows,), float(x), dtype=_F32, device=self.device)
            else:
                t = (x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))).to(
                    device=self.device, dtype=_F32)
                if not factor and not self.use_bias and t.numel() == 0:
                    out.append(t)
                    continue
                if not (factor and t.dim() == 2 and t.shape[0] == rows):
                    t = t.reshape(rows)
            if factor and t.dim() == 1:
                t = t[:, None]
            out.append(t)
        return tuple(out)

    def _sides(self, vals, params, out, w, X_self, scale=1.0):
        """Both sides of scale J^T s + W x for per-entry values s (CSR order):
        out_P = scale S [Q, 1] + wu X_P, out_Q = scale S^T [P, 1] + wi X_Q (bias columns likewise)."""
        bu, bi, P, Q = params
        obu, obi, OP, OQ = out
        f = P.shape[1]
        Gu = self._U(vals) @ self._one(Q)
        Gi = self._I(vals) @ self._one(P)
        xbu, xbi, XP, XQ = X_self
        wu, wi, wbu, wbi = w
        if scale != 1.0:
            Gu.mul_(scale)
            Gi.mul_(scale)
        OP.copy_(Gu[:, :f]).addcmul_(wu, XP)
        OQ.copy_(Gi[:, :f]).addcmul_(wi, XQ)
        if self.use_bias:
            obu.copy_(Gu[:, f]).addcmul_(wbu, xbu)
            obi.copy_(Gi[:, f]).addcmul_(wbi, xbi)

    # ------------------------------------------------------------ oracles
    def sse(self, mu, params) -> float:
        """sum of e^2 over the training entries (float64 accumulation)."""
        e = (self.u_val - float(mu)) - self._pred(params)
        e = e.to(_F64)
        return float(torch.dot(e, e))

    def residual_grad(self, mu, params, w, grad) -> float:
        """grad <- -J^T e + W y (written in place); returns sum e^2."""
        e = (self.u_val - float(mu)) - self._pred(params)
        self._sides(e, params, grad, self._weights(w), params, scale=-1.0)
        e64 = e.to(_F64)
        return float(torch.dot(e64, e64))

    def gvp(self, params, v, w, out):
        """out <- J^T J v + W v (the Gauss-Newton product by the hidden mapping)."""
        s = self._jv(params, v)
        self._sides(s, params, out, self._weights(w), v)
        return out

    def gn_diag(self, params, w, out):
        """out <- the exact diagonal of J^T J + W."""
        bu, bi, P, Q = params
        obu, obi, OP, OQ = out
        wu, wi, wbu, wbi = self._weights(w)
        ones = torch.ones(self.nnz, dtype=_F32, device=self.device)
        OP.copy_(self._U(ones) @ (Q * Q)).add_(wu)
        OQ.copy_(self._side_sparse("i", ones) @ (P * P)).add_(wi)
        if self.use_bias:
            torch.add(self.cnt_u, wbu, out=obu)
            torch.add(self.cnt_i, wbi, out=obi)
        return out

    def line_sums(self, mu, params, d):
        """(sum e^2, e s, e c, s^2, s c, c^2) in float64, s = J d, c_ui = DP[u] . DQ[i]."""
        e = (self.u_val - float(mu)) - self._pred(params)
        s = self._jv(params, d)
        c = self._sddmm(d[2], d[3])
        X = torch.stack([e, s, c]).to(_F64)
        M = (X @ X.T).cpu().numpy()
        return (float(M[0, 0]), float(M[0, 1]), float(M[0, 2]), float(M[1, 1]), float(M[1, 2]), float(M[2, 2]))

    def predict(self, mu, params, rows, cols) -> torch.Tensor:
        bu, bi, P, Q = params
        rows = self.backend.index(rows)
        cols = self.backend.index(cols)
        out = (P[rows] * Q[cols]).sum(1) + float(mu)
        if self.use_bias:
            out += bu[rows] + bi[cols]
        return out

    def batch_grad(self, mu, params, v, batch, scale, grad, diag=None) -> float:
        """Mini-batch estimate over the entries at positions ``batch`` (entry order), scaled by
        ``scale``; ``v`` = per-visit coefficients (vu, vi, vbu, vbi).  Returns the batch's sum e^2."""
        bu, bi, P, Q = params
        for g in grad:
            g.zero_()
        if diag is not None:
            for g in diag:
                g.zero_()
        vu, vi, vbu, vbi = self._weights(v)
        batch = self.backend.index(batch)
        u, i = self.users[batch], self.items[batch]
        pu, qi = P[u], Q[i]
        e = self.values[batch] - float(mu) - (pu * qi).sum(1)
        if self.use_bias:
            e = e - (bu[u] + bi[i])
        sc = float(np.float32(scale))
        se = sc * e
        gbu, gbi, gP, gQ = grad
        cu, ci = vu[u], vi[i]  # (B, 1) or (B, f)
        gP.index_add_(0, u, sc * (cu * pu) - se[:, None] * qi)
        gQ.index_add_(0, i, sc * (ci * qi) - se[:, None] * pu)
        if self.use_bias:
            gbu.index_add_(0, u, sc * vbu[u] * bu[u] - se)
            gbi.index_add_(0, i, sc * vbi[i] * bi[i] - se)
        if diag is not None:
            dbu, dbi, dP, dQ = diag
            dP.index_add_(0, u, sc * (qi * qi + cu))
            dQ.index_add_(0, i, sc * (pu * pu + ci))
            if self.use_bias:
                dbu.index_add_(0, u, sc * (1.0 + vbu[u]))
                dbi.index_add_(0, i, sc * (1.0 + vbi[i]))
        e64 = e.to(_F64)
        return float(torch.dot(e64, e64))

    # ------------------------------------------------- per-row blocks
    def _grams(self, side, Y, r0, r1):
        """Per-row Gram matrices sum_k z_k z_k^T (z = (y, 1) with biases) of rows r0..r1-1 of a
        side, float32 sums (as the numba kernel), returned as float64 (R, g, g).

        One SpMM of the rows' 0/1 pattern with the other side's products z_a z_b over the
        upper triangle a <= b (the blocks are symmetric: g (g + 1) / 2 columns instead of
        g^2), a slice of pairs at a time so that no temporary exceeds chunk_floats."""
        ptr, col = self._sp[side]
        n_other = self.n if side == "u" else self.m
        Z = self._one(Y)
        g = Z.shape[1]
        R = r1 - r0
        e0, e1 = int(ptr[r0]), int(ptr[r1])
        sub_ptr = ptr[r0:r1 + 1] - e0
        pat = _sparse(sub_ptr, col[e0:e1], torch.ones(e1 - e0, dtype=_F32, device=self.device), (R, n_other))
        out = torch.empty((R, g, g), dtype=_F64, device=self.device)
        ia, ib = torch.triu_indices(g, g, device=self.device)
        step = max(1, self.backend.chunk_floats // max(1, n_other, R))
        for a in range(0, ia.numel(), step):
            pa, pb = ia[a:a + step], ib[a:a + step]
            G = (pat @ (Z[:, pa] * Z[:, pb])).to(_F64)
            out[:, pa, pb] = G
            out[:, pb, pa] = G
        return out

    def _row_chunks(self, rows, g):
        """Row ranges whose float64 blocks fit in chunk_floats (at least one row each)."""
        per = max(1, self.backend.chunk_floats // (2 * g * g))
        return [(r, min(rows, r + per)) for r in range(0, rows, per)]

    @staticmethod
    def _cholesky(A):
        """Batched lower Cholesky factors in float64; rows that are not positive definite get
        a growing multiple of the identity added (the numba kernel floors pivots at 1e-12)."""
        L, info = torch.linalg.cholesky_ex(A)
        if bool((info > 0).any()):
            bad = (info > 0).nonzero().squeeze(1)
            Ab = A[bad]
            g = A.shape[-1]
            scale = Ab.diagonal(dim1=-2, dim2=-1).abs().mean(-1).clamp_min(1.0)
            eye = torch.eye(g, dtype=A.dtype, device=A.device)
            jitter = 1e-12
            for _ in range(8):
                Lb, ib = torch.linalg.cholesky_ex(Ab + (jitter * scale)[:, None, None] * eye)
                if not bool((ib > 0).any()):
                    break
                jitter *= 1e3
            L[bad] = Lb
        return L

    def _add_diag(self, A, wX, wb, diag_scale=1.0, shift=0.0):
        d = A.diagonal(dim1=-2, dim2=-1)
        g = A.shape[-1]
        fdim = g - 1 if self.use_bias else g
        d[:, :fdim] += wX.to(_F64)  # (rows, 1) or (rows, f)
        if self.use_bias:
            d[:, fdim] += wb.to(_F64)
        if diag_scale != 1.0:
            d.mul_(diag_scale)
        if shift != 0.0:
            d.add_(shift)

    def _block_budget(self) -> int:
        """Bytes the block preconditioner may take: ``lfopt.backend.numba.MAX_BLOCK_BYTES`` when
        set, else half the free memory (of the GPU on CUDA)."""
        from . import numba as nb

        if nb.MAX_BLOCK_BYTES is None and self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(free // 2)
        return nb.block_budget_bytes()

    def gn_blocks(self, params, w, shift=0.0, diag_scale=1.0, sides=("u", "i")):
        """Cholesky factors of the per-row blocks of the GN matrix (ALS normal matrices): for
        user u, sum_i z z^T + diag(wu[u, :], wbu[u]), diagonal times ``diag_scale``, plus
        ``shift``; z = (q_i, 1).  Returns a handle for :meth:`block_solve` (the blocks'
        inverses, float64, built a chunk of rows at a time).  When they would take more than
        the budget (:meth:`_block_budget`), warns and returns the Gauss-Newton diagonal
        (Jacobi) instead."""
        bu, bi, P, Q = params
        wu, wi, wbu, wbi = self._weights(w)
        g = P.shape[1] + (1 if self.use_bias else 0)
        need = (self.m + self.n) * g * g * 8 + 4 * self.backend.chunk_floats * 8
        budget = self._block_budget()
        if need > budget:
            warnings.warn(f"block preconditioner: the per-row blocks need {need / 2**30:.2f} GiB, more than the "
                          f"budget {budget / 2**30:.2f} GiB (lfopt.backend.numba.MAX_BLOCK_BYTES); using the "
                          f"Gauss-Newton diagonal (Jacobi) instead", RuntimeWarning, stacklevel=3)
            diag = [torch.empty_like(a) for a in params]
            self.gn_diag(params, w, diag)
            for a in diag:
                a.mul_(float(np.float32(diag_scale))).add_(float(np.float32(shift)))
                a[~(a > 0)] = 1.0  # rows without entries and weight: their residual is 0
            return ("jacobi", diag)
        handle = []
        for side, Y, wX, wb, rows in (("u", Q, wu, wbu, self.m), ("i", P, wi, wbi, self.n)):
            if side not in sides:  # not built: block_solve writes zeros there
                handle.append(None)
                continue
            inv = torch.empty((rows, g, g), dtype=_F64, device=self.device)
            for r0, r1 in self._row_chunks(rows, g):
                A = self._grams(side, Y, r0, r1)
                self._add_diag(A, wX[r0:r1], wb[r0:r1] if self.use_bias else wb, float(diag_scale), float(shift))
                # the explicit inverse (from the Cholesky factor): every solve is then one batched
                # product instead of thousands of small triangular solves (4x faster on the CPU)
                inv[r0:r1] = torch.cholesky_inverse(self._cholesky(A))
            handle.append(inv)
        return tuple(handle)

    def block_solve(self, handle, r, out):
        """out <- M^-1 r, M the block diagonal factored by :meth:`gn_blocks` (both sides)."""
        if isinstance(handle[0], str):  # ("jacobi", diagonal)
            for a, d, o in zip(r, handle[1], out):
                torch.div(a, d, out=o)
            return out
        Mu, Mi = handle
        rbu, rbi, RP, RQ = r
        obu, obi, OP, OQ = out
        for Minv, RX, rb, OX, ob in ((Mu, RP, rbu, OP, obu), (Mi, RQ, rbi, OQ, obi)):
            if Minv is None:
                OX.zero_()
                ob.zero_()
                continue
            x = torch.cat([RX, rb[:, None]], 1) if self.use_bias else RX
            sol = torch.bmm(Minv, x.to(_F64)[:, :, None])[:, :, 0]
            f = RX.shape[1]
            OX.copy_(sol[:, :f])
            if self.use_bias:
                ob.copy_(sol[:, f])
        return out

    def als_sweep(self, mu, params, w, sides=("u", "i")) -> None:
        """Exact ridge solve of every user row given the items, then of every item row given
        the users (in place); rows without entries are set to 0.  ``sides`` runs only one
        of the two half-sweeps."""
        bu, bi, P, Q = params
        wu, wi, wbu, wbi = self._weights(w)
        mu = float(mu)
        # user side: targets r - mu - b_i in CSR order
        if "u" in sides:
            t_u = self.u_val - mu
            if self.use_bias:
                t_u = t_u - bi[self.u_col]
            self._als_side("u", t_u, Q, wu, wbu, P, bu)
        if "i" in sides:
            t_i = self.i_val - mu
            if self.use_bias:
                t_i = t_i - bu[self.i_col]
            self._als_side("i", t_i, P, wi, wbi, Q, bi)

    def _als_side(self, side, target, Y, wX, wb, X, b_self):
        rows = X.shape[0]
        f = Y.shape[1]
        Z64 = self._one(Y).to(_F64)
        g = Z64.shape[1]
        cnt = self.cnt_u if side == "u" else self.cnt_i
        rhs_all = self._side_sparse(side, target.to(_F64)) @ Z64
        for r0, r1 in self._row_chunks(rows, g):
            A = self._grams(side, Y, r0, r1)
            wr = wX[r0:r1]
            # a zero factor weight is solved with 1e-6 n_u (as the numba kernel): the normal
            # matrix of a row with fewer entries than f is singular without it
            wr = torch.where(wr == 0, 1e-6 * cnt[r0:r1, None], wr)
            self._add_diag(A, wr, wb[r0:r1] if self.use_bias else wb)
            L = self._cholesky(A)
            sol = torch.cholesky_solve(rhs_all[r0:r1, :, None], L)[:, :, 0]
            sol = torch.where((cnt[r0:r1] > 0)[:, None], sol, torch.zeros_like(sol))
            X[r0:r1] = sol[:, :f].to(_F32)
            if self.use_bias:
                b_self[r0:r1] = sol[:, f].to(_F32)
