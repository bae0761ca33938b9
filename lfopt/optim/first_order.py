"""First-order optimizers and ALS: SGD, Adam (and AdaGO, Adam with another preconditioner), ALS."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .base import Optimizer, positive, register


#: "auto" mini-batches give about this many steps per epoch, within the bounds below
AUTO_STEPS_PER_EPOCH = 100
AUTO_BATCH_BOUNDS = (256, 8192)


def auto_batch_size(nnz: int) -> int:
    """The mini-batch size of ``batch_size="auto"``: |K| / 100 clipped to [256, 8192].

    A fixed 8192 leaves a 10K-entry dataset one step per epoch; |K| / 100 gives every
    dataset about 100 steps per epoch, and the bounds keep batches large enough for the
    parallel kernels (small data) and small enough to keep many steps (large data).
    """
    lo, hi = AUTO_BATCH_BOUNDS
    return int(min(hi, max(lo, int(nnz) // AUTO_STEPS_PER_EPOCH)))


#: ``lazy="auto"``: row-sparse steps when the vector holds more than this many times the
#: values a batch can touch, |y| > LAZY_RATIO 2 |B| (f + 1).  A lazy step reads its rows at
#: random (cache misses: ~6 ns a value against ~1 ns for the dense sweep, measured on this
#: machine), so it pays only well beyond the break-even of about 8x.
LAZY_RATIO = 16


def lazy_wanted(lazy, obj, batch_size: int) -> bool:
    """Whether a mini-batch step of ``batch_size`` entries updates only the rows it touches.

    ``lazy=True`` always (the objective must offer ``sparse_minibatch``), False never,
    ``"auto"`` when the objective offers it and the parameter vector is more than
    ``LAZY_RATIO`` times what a batch touches at most (2 |B| rows of f + 1 values): a dense
    step is O(|y|), a lazy one O(|B| f) with random reads.  Measured (ms a step, batch 8192,
    dense / lazy): 120K rows rank 32 (ratio 7.3) 5.0 / 7.5; 440K rows rank 64 (ratio 27)
    37 / 12.  ML-1M rank 32 (ratio 0.6) stays dense; 100M ratings, 550K rows, rank 64
    (ratio 34) is lazy.
    """
    if lazy is True:
        return True
    if lazy is False or "sparse_minibatch" not in obj.capabilities:
        return False
    f = int(getattr(obj, "f", 0) or 0)
    return obj.size > LAZY_RATIO * 2 * batch_size * (f + 1)


def _batch_size(value, allow_zero: bool):
    if value is None:
        return 0
    if isinstance(value, str) and value.lower() == "auto":
        return "auto"
    if isinstance(value, bool) or int(value) != value or value < 0 or (value == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise ConfigError(f"batch_size must be a {bound} integer, got {value!r}")
    return int(value)


@register("sgd")
class SGD(Optimizer):
    """Per-entry SGD in shuffled order, per-visit L2.

    ``lr`` is the step size; it is multiplied by ``decay`` after every epoch.
    When the objective offers the fused ``sgd_epoch`` (numba: parallel DSGD
    strata, entries shuffled within their block once, LIBMF-style) and ``fused``
    is True, an epoch is one call of it; ``reshuffle=True`` draws a new order
    every epoch, at some cost in speed.  Otherwise (``fused=False``, a backend
    without per-entry kernels, or sharpness-aware) an epoch steps
    y <- y - lr g_B along the summed gradient g_B of mini-batches of
    ``batch_size`` entries (each visit with its per-visit penalty), in a random
    order drawn once (``reshuffle``: every epoch).  With ``batch_size=1`` and the
    fused path's order (:meth:`visit_order`) both give the same iterates.
    """

    name = "sgd"

    def __init__(self, lr: float = 0.01, decay: float = 1.0, reshuffle: bool = False, batch_size: int = 1024,
                 fused: bool = True, seed: int = 0):
        super().__init__(seed)
        self.lr = positive("lr", lr)
        self.decay = positive("decay", decay)
        self.reshuffle = bool(reshuffle)
        self.batch_size = _batch_size(batch_size, allow_zero=False)
        self.fused = bool(fused)
        self._state = None

    requires = ("minibatch",)  # or the fused sgd_epoch, see check()

    def check(self, obj) -> None:
        if self.fused and obj.has("sgd_epoch"):
            self._checked = obj
            return
        super().check(obj)

    def visit_order(self, obj, epoch: int):
        """Positions of the training entries in the order the mini-batch path visits them."""
        st = self._state
        if st["order"] is None or self.reshuffle:
            st["order"] = obj.backend.permutation(st["rng"], obj.nnz)
        return st["order"]

    def epoch(self, obj, y, epoch):
        self._ensure_checked(obj)
        lr = self.lr * self.decay ** (epoch - 1)
        if self.fused and obj.has("sgd_epoch"):
            seed = (self.seed * 1_000_003 + epoch) & 0x7FFFFFFFFFFFFFFF
            mse = obj.sgd_epoch(y, lr, seed, self.reshuffle)
            return {"lr": lr, "sgd_mse": mse}
        if self._state is None:
            self._state = {"g": obj.backend.zeros_like(y), "order": None, "rng": np.random.default_rng(self.seed)}
        g = self._state["g"]
        order = self.visit_order(obj, epoch)
        sse = 0.0
        bs = auto_batch_size(obj.nnz) if self.batch_size == "auto" else self.batch_size
        for start in range(0, obj.nnz, bs):
            sse += obj.batch_grad(y, order[start:start + bs], g, scale=1.0)
            g *= lr
            y -= g
        return {"lr": lr, "sgd_mse": sse / obj.nnz}


@register("als")
class ALS(Optimizer):
    """Alternating least squares: exact ridge solves for all users, then all items."""

    name = "als"
    requires = ("als_sweep",)
    has_gradient_step = False

    def __init__(self, seed: int = 0):
        super().__init__(seed)

    def epoch(self, obj, y, epoch):
        self._ensure_checked(obj)
        obj.als_sweep(y)
        return {}


class AdaptiveMoments(Optimizer):
    """Adam's framework with a pluggable second-moment source.

    ``second_moment(g, d)`` returns ``(array, add)``: array + add is the vector whose
    square feeds the second moment: Adam uses the gradient itself, AdaGO the Gauss-Newton
    diagonal plus damping.  ``batch_size=None`` (or 0) takes one full-batch step per epoch;
    otherwise an epoch is one pass over the shuffled entries in mini-batches
    (unbiased estimates: batch sums scaled by |K| / |B|).

    ``lazy``: a mini-batch step updates the moments and parameters of the rows the batch
    touches only (LazyAdam, as TF's LazyAdam and torch's SparseAdam): O(|B| f) a step
    instead of O(|y|); the moments of the other rows do not decay meanwhile, so it is
    Adam exactly where every step touches every row and differs elsewhere.  ``"auto"``
    (the default) uses it when the vector is large against a batch (:func:`lazy_wanted`):
    100M ratings at rank 64 make 12,200 dense steps an epoch of 35.8M values each.
    """

    def __init__(self, lr, beta1, beta2, eps, batch_size, seed, lazy="auto"):
        super().__init__(seed)
        if not (lazy is True or lazy is False or lazy == "auto"):
            raise ConfigError(f"lazy must be True, False or 'auto', got {lazy!r}")
        self.lazy = lazy
        self.lr = positive("lr", lr)
        for nm, b in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= b < 1.0:
                raise ConfigError(f"{nm} must lie in [0, 1), got {b!r}")
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.eps = positive("eps", eps)
        self.batch_size = _batch_size(batch_size, allow_zero=True)
        self._state = None

    # the second-moment source; overridden by subclasses
    needs_diag = False

    @property
    def requires(self):
        if self.batch_size:  # mini-batches (the full batch when batch_size >= |K|: checked per epoch)
            lazy = ("sparse_minibatch",) if self.lazy is True else ()
            return ("gradient", "minibatch") + lazy + (("gn_diagonal",) if self.needs_diag else ())
        return ("gradient",) + (("gn_diagonal",) if self.needs_diag else ())

    def second_moment(self, g, d):
        """``(array, add)``: the second moment's source is array + add (dense and lazy steps)."""
        return g, 0.0

    def _init(self, obj, y):
        be = obj.backend
        z = lambda: be.zeros_like(y)  # noqa: E731
        self._state = {"m": z(), "s": z(), "g": z(), "d": z() if self.needs_diag else None, "t": 0,
                       "rng": np.random.default_rng(self.seed)}

    def _apply(self, obj, y, g, d, d_add: float = 0.0, segments=None):
        """One Adam step with source ``d + d_add``: on the whole vector, or (lazy) on ``segments`` only."""
        st = self._state
        st["t"] += 1
        t = st["t"]
        args = (self.lr, self.beta1, self.beta2, self.eps, 1 - self.beta1 ** t, 1 - self.beta2 ** t)
        if segments is None:
            obj.backend.moment_update(y, g, d, st["m"], st["s"], *args, d_add)
        else:
            obj.backend.moment_update_segments(y, g, d, st["m"], st["s"], segments, *args, d_add)

    def epoch(self, obj, y, epoch):
        self._ensure_checked(obj)
        if self._state is None:
            self._init(obj, y)
        st = self._state
        g, dbuf = st["g"], st["d"]
        batch_size = auto_batch_size(obj.nnz) if self.batch_size == "auto" else self.batch_size
        if not batch_size or batch_size >= obj.nnz:
            obj.loss_grad(y, g)
            if self.needs_diag:
                obj.gn_diag(y, dbuf)
            self._apply(obj, y, g, *self.second_moment(g, dbuf))
            self.lazy_ = False
            return {"steps": 1}
        order = obj.backend.permutation(st["rng"], obj.nnz)
        steps = 0
        lazy = lazy_wanted(self.lazy, obj, batch_size)
        for start in range(0, obj.nnz, batch_size):
            batch = order[start : start + batch_size]
            if lazy:
                _, segments = obj.batch_grad_rows(y, batch, g, dbuf)
                self._apply(obj, y, g, *self.second_moment(g, dbuf), segments)
            else:
                obj.batch_grad(y, batch, g, dbuf)
                self._apply(obj, y, g, *self.second_moment(g, dbuf))
            steps += 1
        self.lazy_ = lazy  # what "auto" chose (inspect after an epoch)
        return {"steps": steps}


@register("adam")
class Adam(AdaptiveMoments):
    """Adam on the LF objective (mini-batches of entries, or full batch)."""

    name = "adam"

    def __init__(self, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 batch_size: int | str | None = "auto", lazy="auto", seed: int = 0):
        super().__init__(lr, beta1, beta2, eps, batch_size, seed, lazy)


@register("adago")
class AdaGO(AdaptiveMoments):
    """AdaGO: Adam whose second moment tracks the exact Gauss-Newton diagonal plus damping.

    d = diag(G) + damping, with diag(G) = diag(J^T J) + the regularizer's diagonal
    (METHODS.md section 3); everything else is Adam's update.  The defaults
    (lr 0.02, damping 30) were chosen on a validation split of ML-1M with mini-batches
    of 8192 entries (what ``batch_size="auto"`` gives there); full batch (``batch_size=0``)
    needs a larger lr (~0.3).
    """

    name = "adago"
    needs_diag = True

    def __init__(self, lr: float = 0.02, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 damping: float = 30.0, batch_size: int | str | None = "auto", lazy="auto", seed: int = 0):
        super().__init__(lr, beta1, beta2, eps, batch_size, seed, lazy)
        self.damping = positive("damping", damping)

    def second_moment(self, g, d):
        return d, float(np.float32(self.damping))
