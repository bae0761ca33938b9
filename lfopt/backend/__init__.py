"""Backends: the same table of kernels over numpy arrays (numba, CPU) or torch tensors (CPU / CUDA).

``get_backend("numba")`` (the default) runs today's numba kernels; ``get_backend("torch",
device="cuda")`` runs the same oracles on tensors.  Objectives and optimizers never import
numba or torch: they call the backend they were given.  A backend offers

* vector operations on flat parameter vectors (what optimizers and the trainer need):
  ``asarray``, ``to_numpy``, ``zeros``, ``zeros_like``, ``empty_like``, ``copy``, ``dot``
  (float64 accumulation), ``norm``, ``all_finite``, ``clamp_min_``, ``moment_update``
  (Adam's step with a pluggable second-moment source ``d + d_add``), ``permutation``, ``index``;
* per-model kernel sets built once from the training data (``lf_kernels(train, ...)``),
  which own the data in the backend's memory and compute the model's oracles.

Optional vector operations: ``weighted_dot(w, a, b)`` (sum w a b, float64; objectives fall
back to ``dot(w * a, b)`` without it); ``moment_update_segments(y, g, d, m, s, (starts,
lengths), ..., d_add)`` (``moment_update`` on those segments only: lazy Adam; needed where a
kernel set has ``has_batch_rows``).

LF kernel set
-------------
``backend.lf_kernels(train: Interactions, use_bias: bool, n_blocks=None)`` returns an object
that owns the training data (CSR/CSC views, the CSR -> CSC permutation, the DSGD block layout,
work buffers) and has attributes ``m``, ``n``, ``nnz``, ``use_bias``, ``has_sgd_epoch``.
Parameters are passed as 4-tuples ``params = (bu, bi, P, Q)`` of backend float32 arrays
(shapes (m,), (n,), (m, f), (n, f); the biases have length 0 and are never read when
``use_bias`` is False); directions, gradients and outputs are 4-tuples of the same shapes.
``w = (wu, wi, wbu, wbi)`` are the per-row L2 weights (backend float32 arrays of lengths m,
n, m, n): the penalty is 1/2 sum wu[u] |p_u|^2 + 1/2 sum wi[i] |q_i|^2 + 1/2 sum wbu[u] b_u^2
+ 1/2 sum wbi[i] b_i^2, W the flat diagonal with those entries.  ``v = (vu, vi, vbu, vbi)``
are per-visit coefficients (w divided by the row's count; 0 for rows without entries),
applied once per visited entry.  ``mu`` is a Python float (the kernels use it as float32).

=============================================  ==================================================
``residual_grad(mu, params, w, grad) -> sse``  grad = -J^T e + W y; returns sum e^2 (float)
``sse(mu, params) -> float``                    sum e^2, e = r - mu - b_u - b_i - p_u . q_i
``gvp(params, v, w, out)``                      out = J^T J v + W v (``v`` a direction here)
``gn_diag(params, w, out)``                     out = diag(J^T J) + W
``line_sums(mu, params, d)``                    (sum ee, es, ec, ss, sc, cc) as floats, s = J d,
                                                c_ui = d_pu . d_qi (as kernels.lf.step_polynomial)
``gn_blocks(params, w, shift, diag_scale)``     a handle on the factored per-row blocks of
                                                (J^T J + W) * diag_scale (diagonal) + shift I
``block_solve(handle, r, out)``                 out = M^-1 r with those blocks
``sgd_epoch(mu, params, lr, v, seed,            one per-entry SGD epoch in place (per-visit
reshuffle) -> sse``                             penalty v); only when ``has_sgd_epoch``
``batch_grad(mu, params, v, batch, scale,       grad (and diag, if given) = scale x the sums over
grad, diag=None) -> sse``                       the entries ``batch`` (positions in the
                                                Interactions' order, a backend index array) of
                                                -e dr/dy + v y (and of (dr/dy)^2 + v); zeroed by
                                                the callee; returns the batch's sum e^2
``batch_grad_rows(mu, params, v, batch,         ``batch_grad`` written only on the rows the batch
scale, grad, diag=None) -> (sse, users,         touches (zeroed first; other rows untouched);
items)``                                        returns them sorted; only when ``has_batch_rows``
``als_sweep(mu, params, w)``                    exact ridge solves of all users, then all items;
                                                a row with factor weight 0 uses 1e-6 n_u instead
                                                (its normal matrix may be singular); rows
                                                without entries are set to 0
``predict(mu, params, rows, cols) -> array``    mu + b_u + b_i + p_u . q_i for index arrays
=============================================  ==================================================

The numba backend is the CPU default: its fused per-entry SGD and BPR kernels have no torch
counterpart of the same speed, and torch's CPU gather/scatter is about 25x slower than numba's
sweeps.  The torch backend therefore computes the full-batch oracles as sparse products over the
rating pattern (MKL on the CPU, cuSPARSE on CUDA): on ML-1M at rank 20 it runs within about
1-3x of numba per oracle on 2 cores (``python benchmarks/bench_backends.py``).  torch is an optional extra
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
