"""First-order optimizers and ALS: SGD, Adam (and AdaGO, Adam with another preconditioner), ALS."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..kernels.vector import adaptive_moment_update
from .base import Optimizer, positive, register


@register("sgd")
class SGD(Optimizer):
    """Per-entry SGD in shuffled order (parallel DSGD strata), per-visit L2.

    ``lr`` is the step size; it is multiplied by ``decay`` after every epoch.
    Entries are shuffled within their block once (LIBMF-style);
    ``reshuffle=True`` draws a new order every epoch, at some cost in speed.
    """

    name = "sgd"

    def __init__(self, lr: float = 0.01, decay: float = 1.0, reshuffle: bool = False, seed: int = 0):
        super().__init__(seed)
        self.lr = positive("lr", lr)
        self.decay = positive("decay", decay)
        self.reshuffle = bool(reshuffle)

    def epoch(self, obj, y, epoch):
        lr = self.lr * self.decay ** (epoch - 1)
        seed = (self.seed * 1_000_003 + epoch) & 0x7FFFFFFFFFFFFFFF
        mse = obj.sgd_epoch(y, lr, seed, self.reshuffle)
        return {"lr": lr, "sgd_mse": mse}


@register("als")
class ALS(Optimizer):
    """Alternating least squares: exact ridge solves for all users, then all items."""

    name = "als"

    def __init__(self, seed: int = 0):
        super().__init__(seed)

    def epoch(self, obj, y, epoch):
        obj.als_sweep(y)
        return {}


class AdaptiveMoments(Optimizer):
    """Adam's framework with a pluggable second-moment source.

    ``source(obj, y, g, batch)`` returns the vector ``d`` whose square feeds the
    second moment: Adam uses the gradient itself, AdaGO the Gauss-Newton diagonal
    plus damping.  ``batch_size=None`` (or 0) takes one full-batch step per epoch;
    otherwise an epoch is one pass over the shuffled entries in mini-batches.
    """

    def __init__(self, lr, beta1, beta2, eps, batch_size, seed):
        super().__init__(seed)
        self.lr = positive("lr", lr)
        for nm, b in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= b < 1.0:
                raise ConfigError(f"{nm} must lie in [0, 1), got {b!r}")
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.eps = positive("eps", eps)
        if batch_size is not None and (int(batch_size) != batch_size or batch_size < 0):
            raise ConfigError(f"batch_size must be a non-negative integer, got {batch_size!r}")
        self.batch_size = int(batch_size) if batch_size else 0
        self._state = None

    # the second-moment source; overridden by subclasses
    needs_diag = False

    def source(self, obj, y, g, d):
        return g

    def _init(self, obj, y):
        z = lambda: np.zeros_like(y)  # noqa: E731
        self._state = {"m": z(), "s": z(), "g": z(), "d": z() if self.needs_diag else None, "t": 0,
                       "rng": np.random.default_rng(self.seed)}

    def _apply(self, y, g, d):
        st = self._state
        st["t"] += 1
        t = st["t"]
        f32 = np.float32
        adaptive_moment_update(y, g, d, st["m"], st["s"], f32(self.lr), f32(self.beta1), f32(self.beta2),
                               f32(self.eps), f32(1 - self.beta1 ** t), f32(1 - self.beta2 ** t))

    def epoch(self, obj, y, epoch):
        if self._state is None:
            self._init(obj, y)
        st = self._state
        g, dbuf = st["g"], st["d"]
        if not self.batch_size or self.batch_size >= obj.nnz:
            obj.loss_grad(y, g)
            if self.needs_diag:
                obj.gn_diag(y, dbuf)
            self._apply(y, g, self.source(obj, y, g, dbuf))
            return {"steps": 1}
        order = st["rng"].permutation(obj.nnz)
        steps = 0
        for start in range(0, obj.nnz, self.batch_size):
            batch = order[start : start + self.batch_size]
            obj.batch_grad(y, batch, g, dbuf)
            self._apply(y, g, self.source(obj, y, g, dbuf))
            steps += 1
        return {"steps": steps}


@register("adam")
class Adam(AdaptiveMoments):
    """Adam on the LF objective (mini-batches of entries, or full batch)."""

    name = "adam"

    def __init__(self, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 batch_size: int | None = 8192, seed: int = 0):
        super().__init__(lr, beta1, beta2, eps, batch_size, seed)


@register("adago")
class AdaGO(AdaptiveMoments):
    """AdaGO: Adam whose second moment tracks the exact Gauss-Newton diagonal plus damping.

    d = diag(G) + damping, with diag(G) = diag(J^T J) + the regularizer's diagonal
    (METHODS.md section 3); everything else is Adam's update.  The defaults
    (mini-batches of 8192 entries, lr 0.02, damping 30) were chosen on a validation
    split of ML-1M; full batch (``batch_size=0``) needs a larger lr (~0.3).
    """

    name = "adago"
    needs_diag = True

    def __init__(self, lr: float = 0.02, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 damping: float = 30.0, batch_size: int | None = 8192, seed: int = 0):
        super().__init__(lr, beta1, beta2, eps, batch_size, seed)
        self.damping = positive("damping", damping)

    def source(self, obj, y, g, d):
        d += np.float32(self.damping)
        return d
