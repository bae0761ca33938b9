"""The optimizer interface.

An optimizer sees only a flat float32 parameter vector ``y`` (a numpy array or a
torch tensor, on the objective's backend) and an objective that offers oracles
(:mod:`lfopt.models.base`).  It computes with ``obj.backend``'s vector
operations and in-place arithmetic only, so one optimizer runs on every backend.
The trainer calls ``opt.check(obj)`` once, then ``opt.epoch(objective, y, epoch)``
once per epoch; the optimizer updates ``y`` in place and returns a dict of what
it wants recorded (at least nothing; the trainer computes the loss itself).
Optimizers keep their own state between epochs (moments, damping) and are
created fresh for every fit.

Each optimizer declares ``requires``, the capabilities it needs from the
objective; :meth:`Optimizer.check` turns a missing one into a
:class:`~lfopt.errors.ConfigError` naming both, before any work is done.
"""

from __future__ import annotations

import inspect
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
    """Base class: override :meth:`epoch` (and declare ``requires``)."""

    name = "base"
    #: capabilities (see lfopt.models.base.CAPABILITIES) the optimizer needs
    requires: tuple = ()
    #: whether each step is taken from a gradient, so that a sharpness-aware wrapper
    #: (lfopt.optim.sharpness) can perturb the point the gradient is taken at
    has_gradient_step = True

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self._checked = None

    def check(self, obj) -> None:
        """Raise a ConfigError unless ``obj`` offers every capability this optimizer needs."""
        obj.require(self.requires, by=f"optimizer {self.name!r}")
        self._checked = obj

    def _ensure_checked(self, obj) -> None:
        if getattr(self, "_checked", None) is not obj:
            self.check(obj)

    def epoch(self, obj, y, epoch: int) -> dict[str, Any]:  # pragma: no cover - interface
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
    ``None``; any other unknown option is an error.  ``rho`` (with any optimizer
    that steps along a gradient: sgd, adam, adago, slf) wraps it sharpness-aware
    (:class:`lfopt.optim.sharpness.SharpnessAware`): every step's gradient, and
    the curvature it uses, is taken at y + rho g / |g|.  ``sslf`` is ``slf`` with
    ``rho`` (default 0.05).
    """
    from . import first_order, second_order  # noqa: F401  (registration)
    from .sharpness import SharpnessAware

    key = name.lower()
    if key not in REGISTRY:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(sorted(REGISTRY))}")
    factory = REGISTRY[key]
    params = inspect.signature(factory).parameters
    given = {k: v for k, v in options.items() if v is not None}
    rho = None
    if "rho" in given and "rho" not in params:
        rho = given.pop("rho")
    unknown = sorted(set(given) - set(params))
    if unknown:
        accepted = sorted(set(params) | ({"rho"} if getattr(factory, "has_gradient_step", False) else set()))
        raise ConfigError(f"optimizer {key!r} does not take option(s) {unknown}; it takes {accepted}")
    opt = factory(**given)
    return opt if rho is None else SharpnessAware(opt, rho)
