"""Sharpness-aware minimization as a wrapper around any optimizer that steps along a gradient.

SAM (Foret et al. 2021; optax's ``contrib.sam`` is the model) minimizes
max_{|eps| <= rho} L(y + eps) ~ L(y + rho g / |g|): every step's gradient is
taken at the perturbed point z = y + eps, eps = rho g / |g| with g the
(batch) gradient at y, and the step is applied to y.

It is implemented once, as an objective view: :class:`SharpnessAwareView`
shows the wrapped optimizer L_eps(x) = L(x + eps), where eps is refreshed at
every gradient call (``loss_grad`` or ``batch_grad``) from the gradient at
that call's point and then held fixed until the next one.  Every other oracle
(loss, Gauss-Newton product and diagonal, line polynomial, row blocks) is
evaluated at x + eps.  So SGD / Adam / AdaGO step along the perturbed
(batch) gradient (AdaGO's Gauss-Newton diagonal is the perturbed point's too),
and SLF forms its whole quadratic model at z: gradient, GN products, line
search and damping ratio, which is SSLF (METHODS.md section 3).  The fused
per-entry kernels (``sgd_epoch``, ``als_sweep``) cannot be perturbed, so the
view hides them when rho > 0 (SGD then runs mini-batches); with rho = 0 the
view is the identity and the iterates are the base optimizer's, bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError
from ..models.base import Objective
from .base import Optimizer, positive

#: fused oracles that take their own steps, which a perturbation cannot reach
FUSED = frozenset({"sgd_epoch", "als_sweep", "bpr_epoch"})


class SharpnessAwareView(Objective):
    """``obj`` seen at x + eps, eps = rho g / |g| from the last gradient call (see module docstring).

    Attributes not defined here (``nnz``, ``layout``, ``mu``, ...) are the objective's.
    """

    def __init__(self, obj, rho: float):
        self.obj = obj
        self.rho = float(rho)
        self.backend = obj.backend
        # the fused paths and the row-sparse batch oracle would step at x, not at x + eps
        at_x = FUSED | {"sparse_minibatch"}
        self.capabilities = frozenset(obj.capabilities) - (at_x if self.rho > 0 else frozenset())
        self.name = f"sharpness-aware {obj.name}"
        self._eps = None  # None: no perturbation (rho = 0, or a zero gradient)
        self._eps_buf = None
        self._z = None

    def __getattr__(self, name):
        if name.startswith("__") or name in ("obj", "_eps", "_eps_buf", "_z"):
            raise AttributeError(name)
        return getattr(self.obj, name)

    @property
    def layout(self):
        return self.obj.layout

    # --------------------------------------------------------- perturbation
    def _set_eps(self, g) -> None:
        """eps = rho g / |g| (float32 scale), or none when rho or |g| is zero."""
        self._eps = None
        if self.rho == 0.0:
            return
        gnorm = self.backend.norm(g)
        if not (gnorm > 0.0 and math.isfinite(gnorm)):
            return
        if self._eps_buf is None:
            self._eps_buf = self.backend.empty_like(g)
        eps = self._eps_buf
        eps[:] = g
        eps *= float(np.float32(self.rho / gnorm))
        self._eps = eps

    def at(self, x):
        """The point where the oracles are evaluated: x + eps (a work buffer), or x itself."""
        if self._eps is None:
            return x
        if self._z is None:
            self._z = self.backend.empty_like(x)
        z = self._z
        z[:] = x
        z += self._eps
        return z

    # --------------------------------------------------------------- oracles
    def loss_grad(self, x, g) -> float:
        """Set eps from the gradient at x, then return L(x + eps) with ``g`` = its gradient."""
        loss = self.obj.loss_grad(x, g)
        self._set_eps(g)
        if self._eps is None:
            return loss
        return self.obj.loss_grad(self.at(x), g)

    def batch_grad(self, x, batch, g, diag=None, scale=None) -> float:
        """Set eps from the batch gradient at x; return the batch oracle at x + eps."""
        kw = {} if scale is None else {"scale": scale}
        if self.rho == 0.0:
            self._eps = None
            return self.obj.batch_grad(x, batch, g, diag, **kw)
        self.obj.batch_grad(x, batch, g, None, **kw)
        self._set_eps(g)
        return self.obj.batch_grad(self.at(x), batch, g, diag, **kw)

    def loss(self, x) -> float:
        return self.obj.loss(self.at(x))

    def gvp(self, x, v, out):
        return self.obj.gvp(self.at(x), v, out)

    def gn_diag(self, x, out):
        return self.obj.gn_diag(self.at(x), out)

    def step_polynomial(self, x, direction):
        return self.obj.step_polynomial(self.at(x), direction)

    def block_preconditioner(self, x, shift: float = 0.0, diag_scale: float = 1.0):
        return self.obj.block_preconditioner(self.at(x), shift, diag_scale)

    def sgd_epoch(self, *args, **kwargs):
        self.require(("sgd_epoch",), by="sgd_epoch()")
        return self.obj.sgd_epoch(*args, **kwargs)

    def als_sweep(self, *args, **kwargs):
        self.require(("als_sweep",), by="als_sweep()")
        return self.obj.als_sweep(*args, **kwargs)


class SharpnessAware(Optimizer):
    """``base`` made sharpness-aware with radius ``rho`` (rho = 0: ``base`` exactly).

    >>> from lfopt.optim.first_order import Adam
    >>> SharpnessAware(Adam(lr=0.01), rho=0.05).options()["rho"]
    0.05
    """

    def __init__(self, base: Optimizer, rho: float = 0.05, name: str | None = None):
        if not getattr(base, "has_gradient_step", False):
            raise ConfigError(f"optimizer {base.name!r} has no gradient step, so it cannot be made "
                              f"sharpness-aware (rho={rho!r}); use rho with sgd, adam, adago or slf")
        super().__init__(base.seed)
        self.rho = positive("rho", rho, allow_zero=True)
        self._base = base
        self._view = None
        self.name = name or base.name

    @property
    def base(self) -> Optimizer:
        return self._base

    @property
    def requires(self):
        reqs = tuple(self._base.requires)
        return reqs if self.rho == 0 else tuple(r for r in reqs if r not in FUSED)

    def check(self, obj) -> None:
        obj.require(self.requires, by=f"optimizer {self.name!r}")
        self._view = SharpnessAwareView(obj, self.rho)
        self._base.check(self._view)
        self._checked = obj

    def epoch(self, obj, y, epoch):
        self._ensure_checked(obj)
        return self._base.epoch(self._view, y, epoch)

    def options(self) -> dict:
        opts = self._base.options()
        opts["rho"] = self.rho
        return opts
