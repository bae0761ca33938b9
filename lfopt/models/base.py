"""The objective protocol: what an optimizer may ask of a model.

An objective owns the training data (on its backend) and a :class:`ParamLayout`,
the one place where the flat parameter vector ``y`` is cut into named blocks
(``b_u``, ``b_i``, ``P``, ``Q``, ...).  Optimizers see only ``y`` and the
objective's oracles:

=====================  ==========================================================
capability             oracle
=====================  ==========================================================
``loss``               ``loss(y) -> float``
``gradient``           ``loss_grad(y, g) -> float`` (fills ``g``)
``gn_product``         ``gvp(y, v, out)``: Gauss-Newton product G(y) v
``gn_diagonal``        ``gn_diag(y, out)``: the exact diagonal of G(y)
``minibatch``          ``batch_grad(y, batch, g, diag=None) -> sse`` over entries
``sparse_minibatch``   ``batch_grad_rows(y, batch, g, diag=None) -> (sse, segments)``:
                       the same, written only on ``segments = (starts, lengths)``
                       of ``y`` (the rows the batch touches; the rest of g is stale)
``line_polynomial``    ``step_polynomial(y, d)``: L(y + t d) is a polynomial in t
``row_blocks``         ``block_preconditioner(y, shift, scale)``: per-row GN blocks
``sgd_epoch``          fused per-entry SGD epoch (a registered fast path)
``als_sweep``          fused alternating exact row solves
``bpr_epoch``          fused mini-batch BPR epoch (SGD or lazy Adam, lambdaOpt)
=====================  ==========================================================

An optimizer declares the capabilities it needs (``Optimizer.requires``) and is
checked against the objective before the first epoch: a model that lacks one
fails at once with a :class:`~lfopt.errors.ConfigError` naming both, never deep
inside with an ``AttributeError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ..errors import ConfigError

CAPABILITIES = ("loss", "gradient", "gn_product", "gn_diagonal", "minibatch", "sparse_minibatch", "line_polynomial",
                "row_blocks", "sgd_epoch", "als_sweep", "bpr_epoch")


@dataclass(frozen=True)
class ParamLayout:
    """Named blocks of a flat parameter vector, in order.

    ``blocks`` is a tuple of ``(name, shape)``; a block of shape ``(0,)`` is
    absent (e.g. biases of the plain model).  :meth:`views` cuts any flat
    array (numpy or torch, the parameters, a gradient, a direction) into
    views of those shapes without copying.

    >>> lay = ParamLayout((("b_u", (3,)), ("P", (3, 2))))
    >>> lay.size, lay.offset("P")
    (9, 3)
    >>> v = lay.views(np.arange(9.0))
    >>> v["P"].tolist()
    [[3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]
    """

    blocks: tuple

    def __post_init__(self):
        # (name, start, end, shape) of every block, computed once: unpack runs several
        # times per mini-batch
        slices, pos = [], 0
        for name, shape in self.blocks:
            k = int(np.prod(shape))
            slices.append((name, pos, pos + k, tuple(shape)))
            pos += k
        object.__setattr__(self, "_slices", tuple(slices))
        object.__setattr__(self, "_size", pos)

    @property
    def names(self) -> tuple:
        return tuple(name for name, _ in self.blocks)

    def _slice(self, name: str):
        for sl in self._slices:
            if sl[0] == name:
                return sl
        raise KeyError(f"no block {name!r} in layout {self.names}")

    def shape(self, name: str) -> tuple:
        return self._slice(name)[3]

    def offset(self, name: str) -> int:
        return self._slice(name)[1]

    @property
    def size(self) -> int:
        return self._size

    def _check(self, y) -> None:
        if tuple(y.shape) != (self._size,):
            raise ValueError(f"parameter vector has shape {tuple(y.shape)}, expected ({self._size},)")

    def views(self, y) -> dict:
        """``{name: view}`` into the flat vector ``y`` (numpy array or torch tensor)."""
        self._check(y)
        return {name: y[a:b].reshape(shape) for name, a, b, shape in self._slices}

    def unpack(self, y, *names):
        """The views of ``names`` (all blocks if none), as a tuple."""
        self._check(y)
        if not names:
            return tuple(y[a:b].reshape(shape) for _, a, b, shape in self._slices)
        return tuple(y[a:b].reshape(shape) for _, a, b, shape in map(self._slice, names))

    def to_meta(self) -> list:
        return [[name, list(shape)] for name, shape in self.blocks]

    @classmethod
    def from_meta(cls, meta) -> "ParamLayout":
        return cls(tuple((str(name), tuple(int(s) for s in shape)) for name, shape in meta))


class Objective:
    """Base of every model objective (see the module docstring for the protocol).

    Subclasses set ``layout``, ``backend``, ``capabilities`` and implement the
    oracles they declare.  ``extra_state`` holds learned quantities that are
    not parameters but must be saved and restored with them (lambdaOpt's
    Lambda): the trainer snapshots it with ``y`` when it keeps a best epoch.
    """

    layout: ParamLayout
    capabilities: frozenset = frozenset()
    name = "objective"

    @property
    def size(self) -> int:
        return self.layout.size

    def has(self, capability: str) -> bool:
        return capability in self.capabilities

    def require(self, capabilities: Iterable[str], by: str) -> None:
        """Raise a ConfigError naming ``by`` unless every capability is offered."""
        missing = [c for c in capabilities if c not in self.capabilities]
        if missing:
            offered = ", ".join(sorted(self.capabilities)) or "none"
            raise ConfigError(f"{by} needs {', '.join(missing)}, which the {self.name} objective does not offer "
                              f"(it offers: {offered})")

    def unpack(self, y):
        return self.layout.unpack(y)

    # learned non-parameter state (Lambda); empty by default
    def extra_state(self) -> dict:
        return {}

    def set_extra_state(self, state: dict) -> None:
        for k in state:
            raise KeyError(f"{self.name} has no extra state {k!r}")

    def train_metrics(self, y, loss: float) -> dict:
        """Extra training numbers for the history (e.g. the training RMSE), computed cheaply."""
        return {}
