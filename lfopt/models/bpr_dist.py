"""BPR on many processes: triples sharded by user blocks, item side averaged every epoch.

Each process samples the triples of its block of users (every positive of a
user lives on one process, so negatives are drawn exactly as on one process) and
runs the usual fused BPR epoch on them from the same parameters; afterwards the
user rows are taken from their owner and the item rows (factors, biases) and a
learned Lambda are averaged over processes (local SGD with one averaging round per
epoch: it is not the one-process iteration, and the accuracy is checked against
it in the tests).  Communication per epoch: (m + n) f + n floats all-reduced.
"""

from __future__ import annotations

import numpy as np

from ..data.interactions import Interactions
from ..dist import LocalComm, balanced_ranges
from ..errors import ConfigError
from .bpr import BPRObjective


class DistributedBPRObjective(BPRObjective):
    """:class:`BPRObjective` of ``train`` (the whole training set, the same on every process)
    over ``comm.world`` processes; this one owns a contiguous block of users."""

    name = "BPR (distributed)"

    def __init__(self, train: Interactions, rank: int, *args, comm=None, **kwargs):
        self.comm = comm if comm is not None else LocalComm()
        bounds = balanced_ranges(train.user_counts(), self.comm.world)
        self.user_range = (int(bounds[self.comm.rank]), int(bounds[self.comm.rank + 1]))
        u0, u1 = self.user_range
        part = train.subset((train.users >= u0) & (train.users < u1))
        if part.nnz == 0:
            raise ConfigError(f"process {self.comm.rank} of {self.comm.world} owns no training positives: use "
                              f"fewer processes")
        super().__init__(part, rank, *args, **kwargs)
        self.total = float(self.comm.allreduce_scalars([self.nnz])[0])

    def agree(self, flag: bool) -> bool:
        return self.comm.any(flag)

    def _mean(self, value: float) -> float:
        """The mean over all triples of a per-process mean (weighted by its positives)."""
        return float(self.comm.allreduce_scalars([value * self.nnz])[0]) / self.total

    def loss(self, y) -> float:
        return self._mean(super().loss(y))

    def bpr_epoch(self, y, state: dict, *args, **kwargs) -> dict:
        reg = self.regularizer
        p = self.comm.world
        before = y.copy() if p > 1 else None
        lam0 = reg.lam.copy() if reg.learn else None
        out = super().bpr_epoch(y, state, *args, **kwargs)
        if p > 1:
            # the epoch's changes summed over processes: a user row changes on its owner only,
            # an item row wherever its triples were (as if the processes' epochs ran one after
            # the other from the same start: asynchronous SGD with one epoch of staleness)
            delta = y - before
            self.comm.allreduce_(delta)
            y[:] = before + delta
            if reg.learn:
                # Lambda likewise, but shared and item entries (changed on every process) averaged
                dlam = np.ascontiguousarray(reg.lam - lam0, dtype=np.float32)
                self.comm.allreduce_(dlam)
                scale = np.full(len(dlam), 1.0 / p, dtype=np.float32)
                if reg.layout.per_user:
                    scale[: int(np.prod(reg.layout.user_shape))] = 1.0
                reg.lam[:] = lam0 + scale * dlam
        out["train_loss"] = self._mean(out["train_loss"])
        if "valid_loss" in out:
            out["valid_loss"] = float(self.comm.allreduce_scalars([out["valid_loss"]])[0]) / p
        return out
