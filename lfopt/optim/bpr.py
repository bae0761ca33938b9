"""The BPR step: mini-batch SGD or lazy (row-wise) Adam on a BPR objective's fused epoch."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .base import Optimizer


class BPRStep(Optimizer):
    """One epoch = one sampled triple per training positive, in batches of ``batch_size``.

    ``kind="sgd"`` steps on the batch's summed loss (so ``lr`` keeps its per-triple
    BPR meaning); ``kind="adam"`` is lazy Adam: only rows present in a batch update
    their moments, each with its own step count.  lambdaOpt's Lambda steps (when
    the objective's regularizer learns Lambda) run inside the same fused epoch.
    """

    requires = ("bpr_epoch",)

    def __init__(self, kind: str = "adam", lr: float = 0.005, batch_size: int = 1024,
                 valid_batch_size: int | None = None, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 seed=0):
        # ``seed`` may be a numpy Generator: the BPR estimator shares the one that drew the
        # initial factors, so an epoch's shuffles and negatives follow from one seed
        super().__init__(0 if isinstance(seed, np.random.Generator) else seed)
        if kind not in ("sgd", "adam"):
            raise ConfigError(f"unknown BPR optimizer {kind!r}; expected sgd or adam")
        self.name = f"bpr-{kind}"
        self.kind = kind
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.valid_batch_size = int(valid_batch_size or batch_size)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self._rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self._state: dict = {}

    divergence_advice = "Lower the learning rate (lr)."

    def epoch(self, obj, y, epoch):
        return obj.bpr_epoch(y, self._state, self.kind, self.lr, self.batch_size, self.valid_batch_size,
                             self.beta1, self.beta2, self.eps, self._rng)
