"""The optimizer interface.

An optimizer sees only a flat float32 parameter vector ``y`` and an objective
that offers oracles (``loss``, ``loss_grad``, ``gvp``, ``gn_diag`` and the
structured ``sgd_epoch``, ``batch_grad``, ``als_sweep``).  The trainer calls
``opt.epoch(objective, y, epoch)`` once per epoch; the optimizer updates ``y``
in place and returns a dict of what it wants recorded (at least nothing; the
trainer computes the loss itself).  Optimizers keep their own state between
epochs (moments, damping) and are created fresh for every fit.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import ConfigError

REGISTRY: dict[str, Callable[..., "Optimizer"]] = {}


def register(name: str):
    def deco(factory):
        REGISTRY[name] = factory
        return factory

    return deco


class Optimizer:
    """Base class: override :meth:`epoch`."""

    name = "base"

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def epoch(self, obj, y: np.ndarray, epoch: int) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """Hyper-parameters, for results files."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def positive(name: str, value, allow_zero: bool = False):
    ok = value >= 0 if allow_zero else value > 0
    if value is None or not np.isfinite(value) or not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be a finite number {bound}, got {value!r}")
    return value


def make_optimizer(name: str, **options) -> Optimizer:
    """Create a registered optimizer by name, with its hyper-parameters.

    Options that the optimizer does not take are ignored only when they are
    ``None``; any other unknown option is an error.
    """
    from . import first_order, second_order  # noqa: F401  (registration)

    key = name.lower()
    if key not in REGISTRY:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(sorted(REGISTRY))}")
    factory = REGISTRY[key]
    import inspect

    params = inspect.signature(factory).parameters
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise ConfigError(f"optimizer {key!r} does not take option(s) {unknown}; it takes {sorted(params)}")
    return factory(**given)
