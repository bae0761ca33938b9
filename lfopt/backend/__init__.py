"""Backends: the same table of kernels over numpy arrays (numba, CPU) or torch tensors (CPU / CUDA).

``get_backend("numba")`` (the default) runs today's numba kernels; ``get_backend("torch",
device="cuda")`` runs the same oracles on tensors.  Objectives and optimizers never import
numba or torch: they call the backend they were given.  A backend offers

* vector operations on flat parameter vectors (what optimizers and the trainer need):
  ``asarray``, ``to_numpy``, ``zeros``, ``zeros_like``, ``empty_like``, ``copy``, ``dot``
  (float64 accumulation), ``norm``, ``all_finite``, ``clamp_min_``, ``moment_update``
  (Adam's step with a pluggable second-moment source), ``permutation``, ``index``;
* per-model kernel sets built once from the training data (``lf_kernels(train, ...)``),
  which own the data in the backend's memory and compute the model's oracles.

The numba backend is the CPU default: measured here, its parallel sweeps run about 25x
faster than torch's CPU gather/scatter.  torch is an optional extra
(``pip install "lfopt[torch]"``) and is imported only when its backend is asked for.
"""

from __future__ import annotations

from ..errors import ConfigError

BACKENDS = ("numba", "torch")


def get_backend(name: str = "numba", device: str | None = None):
    """The backend called ``name`` ("numba" or "torch") on ``device`` ("cpu", "cuda", "cuda:1", ...)."""
    if hasattr(name, "name") and hasattr(name, "dot"):  # already a backend
        return name
    key = str(name).lower()
    if key == "numba":
        if device not in (None, "cpu"):
            raise ConfigError(f"the numba backend runs on the CPU only, got device={device!r}; "
                              f"use backend='torch' for {device!r}")
        from .numba import NumbaBackend

        return NumbaBackend()
    if key == "torch":
        try:
            import torch  # noqa: F401
        except ImportError:
            raise ConfigError("backend='torch' needs PyTorch: pip install \"lfopt[torch]\" (for the CPU-only "
                              "build: pip install torch --index-url https://download.pytorch.org/whl/cpu)") from None
        from .torch import TorchBackend

        return TorchBackend(device or "cpu")
    raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
