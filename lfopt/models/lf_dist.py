"""The LF objective on many processes (METHODS.md section 5e; the scheme is in :mod:`lfopt.dist`).

:class:`DistributedLFObjective` offers the oracles of :class:`~lfopt.models.lf.LFObjective`
to every optimizer unchanged: each process computes its block's part with the
usual kernels (called with the users' penalty weights and zero item weights), one
all-reduce sums the parts, and the item rows' penalty W y is added once.  The
regularizer's weights and the mean come from the whole training set, so the
objective is the one-process objective.

The full-batch oracles (gradient, Gauss-Newton product and diagonal, block
preconditioner) all-reduce only the item rows: a user's rows depend on that user's
entries alone, all on the process that owns the user, so during an epoch every
vector is whole on the rows of this process's users and on the item rows, and the
vector reductions the optimizers take through :attr:`backend` (dot, norm, the
penalty's weighted dot) sum exactly those rows over the processes.  After the
optimizer's step, :meth:`sync_params` exchanges the new user rows once.
"""

from __future__ import annotations

import numpy as np

from ..data.interactions import Interactions
from ..dist import LocalComm, balanced_ranges
from ..errors import ConfigError
from .lf import LFObjective


class DistributedLFObjective(LFObjective):
    """The LF objective of ``train`` (the whole training set, the same on every process),
    computed by ``comm.world`` processes, this one owning a block of users and a block
    of items (contiguous index ranges with about equal numbers of entries).

    >>> import lfopt
    >>> from lfopt.dist import LocalComm
    >>> data = lfopt.synthetic(n_users=40, n_items=30, nnz=400, seed=0)
    >>> one = LFObjective(data, rank=3, lam=0.05)
    >>> many = DistributedLFObjective(data, rank=3, lam=0.05, comm=LocalComm())
    >>> y = one.init_params(0.1, seed=0)
    >>> abs(one.loss(y) - many.loss(y)) < 1e-3 * one.loss(y)
    True
    """

    name = "LF (distributed)"

    def __init__(self, train: Interactions, rank: int, regularizer=None, use_bias: bool = True, backend="numba",
                 device: str | None = None, lam: float | None = None, lam_b: float | None = None, comm=None):
        self.comm = comm if comm is not None else LocalComm()
        r, p = self.comm.rank, self.comm.world
        uc, ic = train.user_counts(), train.item_counts()
        self.user_bounds = balanced_ranges(uc, p)
        self.item_bounds = balanced_ranges(ic, p)
        u0, u1 = int(self.user_bounds[r]), int(self.user_bounds[r + 1])
        i0, i1 = int(self.item_bounds[r]), int(self.item_bounds[r + 1])
        self.user_range, self.item_range = (u0, u1), (i0, i1)
        mine_u = (train.users >= u0) & (train.users < u1)
        self._owned_pos = np.flatnonzero(mine_u)
        self._owned_mask = mine_u
        user_part = train.subset(self._owned_pos)
        if user_part.nnz == 0:
            raise ConfigError(f"process {r} of {p} owns no training entries ({train.nnz} entries for {p} "
                              f"processes): use fewer processes")
        item_part = train.subset((train.items >= i0) & (train.items < i1))
        # the kernels of this process's users (and, on a second kernel set, items)
        super().__init__(user_part, rank, regularizer=regularizer, use_bias=use_bias, backend=backend,
                         device=device, lam=lam, lam_b=lam_b)
        self.item_kernels = self.backend.lf_kernels(item_part, self.use_bias, None)
        # the whole training set's statistics: the mean, the counts, hence the weights
        self.train = train
        self.nnz = train.nnz
        self.mu = float(np.float32(train.values.mean())) if self.use_bias else 0.0
        self._counts = (uc, ic)
        reg = self.regularizer
        if hasattr(reg, "bind"):
            raise ConfigError("a learned regularization (lam='learn') is not available in distributed training: "
                              "give lam (and lam0) numbers")
        visits = reg.visit_weights(uc, ic) if hasattr(reg, "visit_weights") else None
        self.set_row_weights(*reg.row_weights(uc, ic), visits=visits)
        be = self.backend
        self._no_item_weight = be.asarray(np.zeros(self.n, dtype=np.float32))
        self.backend = ShardedVectors(be, self)  # dot, norm, weighted_dot over this process's rows, summed
        self._stale = False  # other processes' user rows of y are out of date (see sync_params)
        # a row-sparse batch step would update only this process's rows: Adam runs dense here
        self.capabilities = self.capabilities - {"sparse_minibatch"}
        self._dsgd = None

    # ------------------------------------------------------------- helpers
    def _reduce(self, x):
        """Sum ``x`` over processes in place (a flat vector on the backend)."""
        return self.comm.allreduce_(x)

    def _own_only(self, x, users=None, items=None):
        """Zero, in the flat vector ``x``, the user rows outside ``users`` and the item rows outside
        ``items`` (index ranges ``(lo, hi)``; None leaves that side as it is)."""
        bu, bi, P, Q = self.unpack(x)
        for rows, parts in ((users, (P, bu)), (items, (Q, bi))):
            if rows is None:
                continue
            lo, hi = rows
            for a in parts:
                if a.size:
                    a[:lo] = 0.0
                    a[hi:] = 0.0

    def _reduce_items(self, x):
        """Sum the item rows (b_i, Q) of ``x`` over processes, in place: each process computed its users'
        entries' part of them.  The rows of its own users are whole already (a user's entries are all
        on the process that owns the user); the other users' rows are left as they are."""
        if self.comm.world > 1:
            _, bi, _, Q = self.unpack(x)
            for part in (bi, Q):
                if part.size:
                    self._reduce(part.reshape(-1))
            self._stale = True
        return x

    def _user_weights(self) -> tuple:
        """The penalty weights with the item rows' set to 0: the kernels add W y on the user rows (each
        user's on its own process), the item rows' W y is added once, after their reduction."""
        wu, _, wbu, _ = self._w
        return wu, self._no_item_weight, wbu, self._no_item_weight

    def _add_item_penalty(self, out, v) -> None:
        """out += W v on the item rows (``v`` None: out += W, the diagonal's)."""
        _, obi, _, OQ = self.unpack(out)
        _, dbi, _, DQ = self.unpack(self._reg_diag)
        if v is None:
            OQ += DQ
            obi += dbi
            return
        _, vbi, _, VQ = self.unpack(v)
        OQ += DQ * VQ
        if obi.size:
            obi += dbi * vbi

    def sync_params(self, y) -> None:
        """After an optimizer step on the full-batch oracles every process holds the new rows of its own
        users (and all item rows): exchange the user rows, so that ``y`` is whole on every process (once
        an epoch; the trainer calls it after each step)."""
        if self._stale:
            self._reduce_rows(y, users=self.user_range)
        self._stale = False

    def _reduce_rows(self, y, users=None, items=None):
        """Every process keeps only the rows of ``users`` / ``items`` (the ranges it updated), then
        the sum over processes gives every process all of them."""
        if self.comm.world == 1:
            return
        self._own_only(y, users, items)
        bu, bi, P, Q = self.unpack(y)
        for part, on in ((bu, users), (bi, items), (P, users), (Q, items)):
            if on is not None and part.size:
                self._reduce(part.reshape(-1))

    def agree(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any (the trainer's time budget)."""
        return self.comm.any(flag)

    # -------------------------------------------------------------- oracles
    def loss(self, y) -> float:
        sse = self.kernels.sse(self.mu, self.unpack(y))
        self.last_sse = float(self.comm.allreduce_scalars([sse])[0])
        return 0.5 * self.last_sse + self.penalty(y)

    def loss_grad(self, y, g) -> float:
        sse = self.kernels.residual_grad(self.mu, self.unpack(y), self._user_weights(), self.unpack(g))
        self._reduce_items(g)
        self._add_item_penalty(g, y)
        self.last_sse = float(self.comm.allreduce_scalars([sse])[0])
        return 0.5 * self.last_sse + self.penalty(y)

    def gvp(self, y, v, out):
        self.kernels.gvp(self.unpack(y), self.unpack(v), self._user_weights(), self.unpack(out))
        self._reduce_items(out)
        self._add_item_penalty(out, v)
        return out

    def gn_diag(self, y, out):
        self.kernels.gn_diag(self.unpack(y), self._user_weights(), self.unpack(out))
        self._reduce_items(out)
        self._add_item_penalty(out, None)
        return out

    def step_polynomial(self, y, direction) -> np.ndarray:
        sums = self.comm.allreduce_scalars(self.kernels.line_sums(self.mu, self.unpack(y), self.unpack(direction)))
        ee, es, ec, ss, sc, cc = (float(s) for s in sums)
        wy_d = self._wdot(y, direction)
        w_dd = self._wdot(direction, direction)
        return np.array([0.5 * ee + self.penalty(y), -es + wy_d, 0.5 * (ss - 2 * ec) + 0.5 * w_dd, sc, 0.5 * cc])

    def block_preconditioner(self, y, shift: float = 0.0, diag_scale: float = 1.0):
        """The per-row blocks of every user and item row, each built by the process that owns
        the row's entries; one application solves the owned rows and all-reduces the item rows
        (the other processes' user rows are set to 0)."""
        params = self.unpack(y)
        hu = self.kernels.gn_blocks(params, self._w, float(shift), float(diag_scale), sides=("u",))
        hi = self.item_kernels.gn_blocks(params, self._w, float(shift), float(diag_scale), sides=("i",))
        if _is_jacobi(hu) or _is_jacobi(hi):  # over the memory budget: the (global) GN diagonal
            d = self.gn_diag(y, self.backend.empty_like(y))
            d *= np.float32(diag_scale)
            d += np.float32(shift)
            self.backend.clamp_min_(d, 1e-6)

            def jacobi(r, out):
                out[:] = r / d
                return out

            return jacobi
        none = self.backend.zeros(0)  # the side a kernel set has no blocks for: written to nothing

        def apply(r, out):
            rv = self.unpack(r)
            obu, obi, OP, OQ = self.unpack(out)
            self.kernels.block_solve(hu, rv, (obu, none, OP, none))  # the user rows
            self.item_kernels.block_solve(hi, rv, (none, obi, none, OQ))  # the item rows
            self._own_only(out, self.user_range, self.item_range)
            self._reduce_items(out)
            return out

        return apply

    def als_sweep(self, y) -> None:
        """Users of this process's block solved exactly, user rows exchanged, then items."""
        params = self.unpack(y)
        self.kernels.als_sweep(self.mu, params, self._w, sides=("u",))
        self._reduce_rows(y, users=self.user_range)
        self.item_kernels.als_sweep(self.mu, params, self._w, sides=("i",))
        self._reduce_rows(y, items=self.item_range)

    def batch_grad(self, y, batch, g, diag=None, scale: float | None = None) -> float:
        """The batch's entries of this process's users, summed over processes: the same
        numbers as one process on the whole batch (``batch`` holds positions in ``train``)."""
        if scale is None:
            scale = self.nnz / len(batch)
        be = self.backend
        b = be.to_numpy(batch)
        mine = b[self._owned_mask[b]]
        local = be.index(np.searchsorted(self._owned_pos, mine))
        sse = self.kernels.batch_grad(self.mu, self.unpack(y), self._v, local, scale, self.unpack(g),
                                      None if diag is None else self.unpack(diag))
        self._reduce(g)
        if diag is not None:
            self._reduce(diag)
        return float(self.comm.allreduce_scalars([sse])[0])

    def sgd_epoch(self, y, lr: float, seed: int, reshuffle: bool = False) -> float:
        """One DSGD epoch over all processes (in place); returns the mean squared residual.

        p sub-epochs: in sub-epoch s this process updates the entries of its users and of
        item block (rank + s) mod p (within it, the usual parallel epoch over a grid of
        sub-blocks), then every process receives the updated item rows."""
        if reshuffle:
            raise ConfigError("sgd with reshuffle=True is not available in distributed training")
        if self.comm.world == 1:
            return super().sgd_epoch(y, lr, seed, reshuffle)
        blocks = self._dsgd_blocks()
        p, r = self.comm.world, self.comm.rank
        sse = 0.0
        for s in range(p):
            c = (r + s) % p
            sse += self.kernels.sgd_block(self.mu, self.unpack(y), lr, self._v, blocks[c])
            # every item block was updated by one process: keep ours, the sum gives all
            self._reduce_rows(y, items=(int(self.item_bounds[c]), int(self.item_bounds[c + 1])))
        self._reduce_rows(y, users=self.user_range)
        return float(self.comm.allreduce_scalars([sse])[0]) / self.nnz

    def _dsgd_blocks(self):
        """This process's entries split by item block (positions into its user part)."""
        if self._dsgd is None:
            items = self.kernels.train.items
            which = np.searchsorted(self.item_bounds, items, side="right") - 1
            self._dsgd = [self.kernels.sgd_layout_of(np.flatnonzero(which == c)) for c in range(self.comm.world)]
        return self._dsgd


class ShardedVectors:
    """A backend whose vector reductions (``dot``, ``norm``, ``weighted_dot``) are those of the
    distributed objective's vectors: the rows of this process's users plus the item rows (counted
    by process 0), summed over the processes; every other operation is the wrapped backend's."""

    def __init__(self, base, obj: DistributedLFObjective):
        self._base = base
        self._obj = obj

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_base", "_obj"):
            raise AttributeError(name)
        return getattr(self._base, name)

    def _rows(self, x) -> list:
        bu, bi, P, Q = self._obj.unpack(x)
        u0, u1 = self._obj.user_range
        parts = [bu[u0:u1], P[u0:u1]]
        if self._obj.comm.rank == 0:
            parts += [bi, Q]
        return [a.reshape(-1) for a in parts if a.size]

    def _sum(self, local: float) -> float:
        return float(self._obj.comm.allreduce_scalars([local])[0])

    def dot(self, a, b) -> float:
        return self._sum(sum(self._base.dot(x, z) for x, z in zip(self._rows(a), self._rows(b))))

    def norm(self, a) -> float:
        return float(np.sqrt(max(self.dot(a, a), 0.0)))

    def weighted_dot(self, w, a, b) -> float:
        wdot = getattr(self._base, "weighted_dot", None)
        local = 0.0
        for v, x, z in zip(self._rows(w), self._rows(a), self._rows(b)):
            local += wdot(v, x, z) if wdot is not None else self._base.dot(v * x, z)
        return self._sum(local)


def _is_jacobi(handle) -> bool:
    return isinstance(handle, tuple) and len(handle) == 2 and isinstance(handle[0], str) and handle[0] == "jacobi"
