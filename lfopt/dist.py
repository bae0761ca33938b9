"""Training on many processes (METHODS.md section 5e): data parallel over the observed entries.

Every process holds the whole parameter vector ``y`` and the entries of one block
of users (for the loss, the gradient, the Gauss-Newton products and diagonal, the
user half of an ALS sweep and the user blocks of SLF's preconditioner) and of one
block of items (the item half of ALS and the item blocks).  Every full-batch
oracle is a sum over entries, so a process computes its block's part with the
usual kernels and one all-reduce of ``torch.distributed`` makes it the whole.  Only
the item rows need it: a user's rows depend on that user's entries alone, all on
the process that owns the user, so during an optimizer step every vector is whole
on this process's users' rows and on the item rows, the optimizers' dot products
and norms sum exactly those rows over the processes (a scalar each), and after the
step one exchange of the user rows makes ``y`` whole again
(:meth:`~lfopt.models.lf_dist.DistributedLFObjective.sync_params`).  Every process
sees the same numbers and takes the same step: ``slf``,
``sslf``, ``adam``/``adago`` (full batch or mini-batches), ``als`` and ``sgd``
with mini-batches give the iterates of one process to float32 rounding; the fused
``sgd`` epoch runs as DSGD with rotating strata across processes (p sub-epochs;
in sub-epoch s process r updates the entries of user block r and item block
(r + s) mod p, then the updated item rows are exchanged).

Launch with torchrun (gloo on CPUs, NCCL on GPUs)::

    torchrun --nproc-per-node 2 -m lfopt train --synthetic --optimizer slf --distributed

or from Python, in a script torchrun starts::

    import lfopt
    lfopt.dist.init()                     # from torchrun's environment
    model = lfopt.LatentFactorModel(optimizer="als", distributed=True).fit(train)
    if lfopt.dist.rank() == 0:
        model.save("model.lfopt")

Memory and communication, per process, with m users, n items, f factors and p
processes: ``y`` and the optimizer's buffers hold (m + n)(f + 1) floats each (as
on one process); the data 2|K|/p entries (user and item blocks; each process also
reads the whole file).  Each gradient, GN product and diagonal and block
preconditioner application all-reduces the item rows, n (f + 1) floats (a ring
all-reduce sends 2 (p - 1) / p of that per process), and a full-batch step then
exchanges the user rows, m (f + 1) floats, once; an ALS sweep all-reduces
(m + n)(f + 1) floats once; a DSGD epoch all-reduces the item rows n (f + 1) p
times and the user rows once; a mini-batch gradient all-reduces (m + n)(f + 1).  A sharded item side (each process owning Q for its item block, rows
sent to the process that needs them, as Spark's ALS and DSGD's rotating blocks do)
would cut memory to (m + n)(f + 1) / p and the ALS exchange to the rows each block
touches; it is not built.
"""

from __future__ import annotations

import atexit
import os

import numpy as np

from .errors import ConfigError

#: the environment torchrun sets for every process
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# --------------------------------------------------------------- communicators
class LocalComm:
    """One process: every collective is the identity."""

    rank = 0
    world = 1
    backend = "local"

    def allreduce_(self, x):
        return x

    def allreduce_scalars(self, values) -> np.ndarray:
        return np.asarray(values, dtype=np.float64)

    def any(self, flag: bool) -> bool:
        return bool(flag)

    def barrier(self) -> None:
        pass


class TorchComm:
    """Collectives of the default ``torch.distributed`` process group on numpy arrays
    (shared with a CPU tensor, or copied to this process's GPU under NCCL) and tensors."""

    def __init__(self):
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            raise ConfigError("torch.distributed is not initialized: call lfopt.dist.init() (under torchrun) first")
        self._torch, self._dist = torch, dist
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.backend = str(dist.get_backend())
        self._device = None
        if self.backend == "nccl":
            self._device = torch.device("cuda", torch.cuda.current_device())

    def _reduce(self, t):
        self._dist.all_reduce(t, op=self._dist.ReduceOp.SUM)

    def allreduce_(self, x):
        """Sum ``x`` over all processes, in place (numpy array or torch tensor); returns ``x``."""
        t = x
        if isinstance(x, np.ndarray):
            if not x.flags.c_contiguous:
                raise ValueError("allreduce_ needs a contiguous array")
            t = self._torch.from_numpy(x)  # shares x's memory (a CPU tensor)
        if self._device is not None and t.device.type != "cuda":  # NCCL: through this process's GPU
            d = t.to(self._device)
            self._reduce(d)
            t.copy_(d.cpu())
        else:
            self._reduce(t)
        return x

    def allreduce_scalars(self, values) -> np.ndarray:
        """The sums over processes of a few float64 numbers."""
        a = np.array(values, dtype=np.float64).reshape(-1)
        return self.allreduce_(a)

    def any(self, flag: bool) -> bool:
        return bool(self.allreduce_scalars([1.0 if flag else 0.0])[0] > 0)

    def barrier(self) -> None:
        self._dist.barrier()


def init(backend: str | None = None) -> TorchComm:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``): ``backend`` ``"gloo"`` (CPU) or ``"nccl"`` (GPUs; default when CUDA is
    available and ``LOCAL_RANK`` names a device).  Idempotent; returns the communicator."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError as exc:  # pragma: no cover - torch is an optional extra
        raise ConfigError("distributed training needs PyTorch: pip install 'lfopt[torch]' (CPU build: "
                          "pip install torch --index-url https://download.pytorch.org/whl/cpu)") from exc
    if not dist.is_initialized():
        missing = [k for k in TORCHRUN_ENV if k not in os.environ]
        if missing:
            raise ConfigError(f"distributed training needs the environment torchrun sets ({', '.join(missing)} "
                              f"missing): launch with  torchrun --nproc-per-node N -m lfopt train ... --distributed")
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend not in ("gloo", "nccl"):
            raise ConfigError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
        atexit.register(_finish)
    return TorchComm()


def _finish() -> None:
    """Leave the process group at exit (gloo aborts a process that exits inside one)."""
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def _group():
    """torch.distributed when a process group is initialized, else None."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is an optional extra
        return None
    return dist if dist.is_available() and dist.is_initialized() else None


def communicator():
    """The communicator of this process: torch.distributed's when a group is initialized
    (or torchrun's environment says to join one), else :class:`LocalComm`."""
    if _group() is not None:
        return TorchComm()
    if all(k in os.environ for k in TORCHRUN_ENV) and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return init()
    return LocalComm()


def rank() -> int:
    """This process's rank (0 without a process group): only rank 0 should write files."""
    dist = _group()
    if dist is not None:
        return dist.get_rank()
    return int(os.environ.get("RANK", 0)) if "WORLD_SIZE" in os.environ else 0


def world_size() -> int:
    """The number of processes of the group (1 without one)."""
    dist = _group()
    return 1 if dist is None else dist.get_world_size()


def leads(objective) -> bool:
    """Whether this process speaks for an objective's run: always on one process, rank 0 of a
    distributed objective's communicator (the one that prints progress)."""
    return getattr(getattr(objective, "comm", None), "rank", 0) == 0


def balanced_ranges(counts: np.ndarray, parts: int) -> np.ndarray:
    """Boundaries (parts + 1 of them) of ``parts`` contiguous row ranges with about equal
    numbers of entries (``counts`` per row).

    >>> balanced_ranges(np.array([5, 1, 1, 1, 1, 1]), 2).tolist()
    [0, 1, 6]
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    cum = np.concatenate([[0], np.cumsum(counts)])
    targets = total * np.arange(1, parts) / parts
    cuts = np.searchsorted(cum, targets, side="left")
    bounds = np.concatenate([[0], np.clip(cuts, 0, len(counts)), [len(counts)]]).astype(np.int64)
    return np.maximum.accumulate(bounds)
