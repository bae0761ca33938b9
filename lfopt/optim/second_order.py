"""Second-order optimizers: Hessian-free Gauss-Newton (SLF) and its sharpness-aware form (SSLF).

:class:`HessianFree` (SLF): each epoch forms a quadratic model of the objective
at y, solves (G(y) + gamma I) Delta = -g(y) by conjugate gradient with
Gauss-Newton vector products only, and applies Delta.  The step is scaled by an
exact line search of L(y + t Delta) (a quartic in t for the bilinear model), and
the damping gamma adapts Levenberg-Marquardt style from the ratio of actual to
predicted decrease of L(y + Delta); a step that raises it is rejected and
retried with more damping.

SSLF is SLF seen through the sharpness-aware wrapper
(:mod:`lfopt.optim.sharpness`): the gradient, the Gauss-Newton products, the
line search and the damping ratio are all taken at the perturbed point
z = y + rho g / |g| (with the perturbation held fixed for the step), and the
step is applied to y.  rho = 0 gives SLF's iterates exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import ConfigError
from .base import Optimizer, positive, register
from .sharpness import SharpnessAware


@dataclass
class CGResult:
    x: object  # a vector of the backend
    iterations: int
    relative_residual: float
    #: x . (A x), from the recurrences (no extra product)
    curvature: float


def conjugate_gradient(
    matvec: Callable,
    b,
    max_iter: int = 10,
    tol: float = 1e-2,
    precond=None,
    backend=None,
) -> CGResult:
    """Solve A x = b for symmetric positive definite A given only ``matvec(v, out)``.

    Starts from x = 0; stops after ``max_iter`` products or when
    ||b - A x|| <= tol ||b||.  ``precond`` is the preconditioner M: an array
    (the diagonal of a Jacobi preconditioner) or a function ``apply(r, out)``
    that writes M^-1 r into ``out``.  A direction of non-positive
    curvature stops the iteration (it cannot happen for G + gamma I, gamma > 0).
    ``backend`` gives the vector operations (default: numpy through the numba backend).
    """
    be = backend if backend is not None else _numpy_backend()
    x = be.zeros_like(b)
    r = be.copy(b)
    bnorm = be.norm(b)
    if bnorm == 0.0:
        return CGResult(x, 0, 0.0, 0.0)
    if precond is None:
        solve = None
    elif callable(precond):
        zbuf = be.empty_like(b)
        solve = lambda r: precond(r, zbuf)  # noqa: E731
    else:
        solve = lambda r: r / precond  # noqa: E731
    z = solve(r) if solve is not None else r
    p = be.copy(z)
    rz = be.dot(r, z)
    Ap = be.empty_like(b)
    it = 0
    rel = 1.0
    for it in range(1, max_iter + 1):
        matvec(p, Ap)
        pAp = be.dot(p, Ap)
        if not pAp > 0.0:
            it -= 1
            break
        alpha = _f32(rz / pAp)
        x += alpha * p
        r -= alpha * Ap
        rel = be.norm(r) / bnorm
        if rel <= tol:
            break
        z = solve(r) if solve is not None else r
        rz_new = be.dot(r, z)
        p *= _f32(rz_new / rz)
        p += z
        rz = rz_new
    # A x = b - r  =>  x . A x = x . (b - r)
    curvature = be.dot(x, b) - be.dot(x, r)
    return CGResult(x, it, float(rel), float(curvature))


def _f32(value) -> float:
    """``value`` rounded to float32, as a Python float: scales float32 arrays and tensors alike."""
    return float(np.float32(value))


def _numpy_backend():
    from ..backend import get_backend

    return get_backend("numba")


@register("slf")
class HessianFree(Optimizer):
    """SLF: Hessian-free Gauss-Newton with CG and Levenberg-Marquardt damping.

    Parameters
    ----------
    cg_iters : at most this many CG iterations (Gauss-Newton products) per step.
    cg_tol : relative residual at which CG stops early.
    damping : initial gamma; adapted every step (x ``boost`` when the model is
        poor or the step rejected, x ``1/boost`` when it is good).
    precondition : preconditioner of CG: ``"block"`` (default) the per-row diagonal
        blocks of G + damping (each user's / item's factors and bias: the ALS
        normal matrices, factored once per step), ``"jacobi"`` the diagonal of
        G + damping, ``"none"``.  ``True``/``False`` mean ``"jacobi"``/``"none"``.
    max_retries : rejected steps retried with more damping within one epoch.
    line_search : scale the CG step by the exact minimizer t of L(y + t Delta) over
        (0, 2]: for the bilinear LF model the loss along a line is a quartic
        polynomial whose coefficients one sweep of the data gives
        (:meth:`LFObjective.step_polynomial`), so the search costs less than one
        loss evaluation and replaces the trial evaluation at t = 1.
    damping_mode : ``"identity"`` solves (G + gamma I) Delta = -g as in METHODS.md;
        ``"marquardt"`` solves (G + gamma diag(G)) Delta = -g, which damps every
        row relative to its own curvature (rows of the LF model differ by orders
        of magnitude in their number of entries).
    """

    name = "slf"

    def __init__(self, cg_iters: int = 10, cg_tol: float = 1e-2, damping: float = 1.0, boost: float = 1.5,
                 precondition: str = "block", max_retries: int = 8, min_damping: float = 1e-4,
                 damping_mode: str = "identity", line_search: bool = True, seed: int = 0):
        super().__init__(seed)
        self.line_search = bool(line_search)
        if damping_mode not in ("identity", "marquardt"):
            raise ConfigError(f"damping_mode must be 'identity' or 'marquardt', got {damping_mode!r}")
        self.damping_mode = damping_mode
        if int(cg_iters) != cg_iters or cg_iters < 1:
            raise ConfigError(f"cg_iters must be a positive integer, got {cg_iters!r}")
        self.cg_iters = int(cg_iters)
        self.cg_tol = positive("cg_tol", cg_tol)
        self.damping = positive("damping", damping)
        self.boost = positive("boost", boost)
        if self.boost <= 1.0:
            raise ConfigError(f"boost must be > 1, got {boost!r}")
        if precondition is True:
            precondition = "jacobi"
        elif precondition is False or precondition is None:
            precondition = "none"
        if precondition not in ("block", "jacobi", "none"):
            raise ConfigError(f"precondition must be 'block', 'jacobi' or 'none', got {precondition!r}")
        self.precondition = precondition
        self.max_retries = int(max_retries)
        self.min_damping = positive("min_damping", min_damping)
        self._gamma = float(damping)
        self._buf = None

    @property
    def requires(self):
        need = ["loss", "gradient", "gn_product"]
        if self.line_search:
            need.append("line_polynomial")
        if self.precondition == "block":
            need.append("row_blocks")
        if self.precondition == "jacobi" or self.damping_mode == "marquardt":
            need.append("gn_diagonal")
        return tuple(need)

    def epoch(self, obj, y, epoch):
        self._ensure_checked(obj)
        be = obj.backend
        if self._buf is None:
            self._buf = {k: be.empty_like(y) for k in ("g", "diag", "trial")}
        b = self._buf
        g = b["g"]
        loss0 = obj.loss_grad(y, g)
        rhs = -g
        marquardt = self.damping_mode == "marquardt"
        diag = obj.gn_diag(y, b["diag"]) if (self.precondition == "jacobi" or marquardt) else None
        if diag is not None:
            # rows without training entries have a zero diagonal (and zero gradient)
            be.clamp_min_(diag, 1e-6)
        cg_total = 0
        for attempt in range(self.max_retries + 1):
            gamma = _f32(self._gamma)
            # damping matrix D: the identity, or diag(G) (Marquardt)
            if marquardt:

                def matvec(v, out):
                    obj.gvp(y, v, out)
                    out += gamma * diag * v
                    return out

                pre = _f32(1 + gamma) * diag if self.precondition == "jacobi" else None
            else:

                def matvec(v, out):
                    obj.gvp(y, v, out)
                    out += gamma * v
                    return out

                pre = (diag + gamma) if self.precondition == "jacobi" else None
            if self.precondition == "block":
                shift, scale = (0.0, 1.0 + gamma) if marquardt else (gamma, 1.0)
                pre = None  # a retry's blocks replace the last ones: never two sets in memory at once
                pre = obj.block_preconditioner(y, shift, scale)
            res = conjugate_gradient(matvec, rhs, self.cg_iters, self.cg_tol, pre, backend=be)
            cg_total += res.iterations
            delta = res.x
            # model decrease: -(g.d + 1/2 d.G d), with d.G d = d.(G + gamma D)d - gamma d.D d
            dDd = be.dot(delta * diag, delta) if marquardt else be.dot(delta, delta)
            dGd = res.curvature - gamma * dDd
            gd = be.dot(g, delta)
            t = 1.0
            if self.line_search:
                t, loss1 = _quartic_minimizer(obj.step_polynomial(y, delta), t_max=2.0)
                delta *= _f32(t)
            predicted = -(t * gd + 0.5 * t * t * dGd)
            trial = b["trial"]
            trial[:] = y
            trial += delta
            if not self.line_search:
                loss1 = obj.loss(trial)
            actual = loss0 - loss1
            ratio = actual / predicted if predicted > 0 else -np.inf
            if ratio < 0.25 or not np.isfinite(loss1):
                # capped: at a minimum every float32 step is rejected, and an unbounded gamma
                # overflowed (inf, then NaN) after a few such epochs
                self._gamma = min(self._gamma * self.boost, MAX_DAMPING)
            elif ratio > 0.75:
                self._gamma = max(self._gamma / self.boost, self.min_damping)
            if np.isfinite(loss1) and loss1 <= loss0:
                y[:] = trial
                return {"damping": gamma, "cg_iters": cg_total, "rho_lm": float(ratio), "rejected": attempt,
                        "step": float(t)}
        return {"damping": float(self._gamma), "cg_iters": cg_total, "rho_lm": float(ratio), "rejected": attempt + 1}


#: the largest Levenberg-Marquardt damping: beyond it a step is (G + gamma I)^-1 g ~ g / gamma, nothing
MAX_DAMPING = 1e8


def _quartic_minimizer(coef: np.ndarray, t_max: float) -> tuple[float, float]:
    """argmin and min over t in [0, t_max] of sum_k coef[k] t^k (coef lowest first)."""
    poly = np.polynomial.Polynomial(coef)
    crit = poly.deriv().roots()
    cands = [0.0, t_max] + [float(r.real) for r in np.atleast_1d(crit) if abs(r.imag) < 1e-9 and 0 < r.real < t_max]
    vals = [float(poly(c)) for c in cands]
    best = int(np.argmin(vals))
    return cands[best], vals[best]


@register("sslf")
def sslf(rho: float = 0.05, cg_iters: int = 10, cg_tol: float = 1e-2, damping: float = 1.0, boost: float = 1.5,
         precondition: str = "block", max_retries: int = 8, min_damping: float = 1e-4,
         damping_mode: str = "identity", line_search: bool = True, seed: int = 0) -> SharpnessAware:
    """SSLF: SLF on the sharpness-aware objective max_{|eps| <= rho} L(y + eps).

    eps = rho g / |g|; the gradient, the Gauss-Newton products, the line search and
    the damping ratio are taken at y + eps, the step is applied to y.  ``rho = 0``
    reproduces SLF exactly.
    """
    base = HessianFree(cg_iters, cg_tol, damping, boost, precondition, max_retries, min_damping, damping_mode,
                       line_search, seed)
    return SharpnessAware(base, rho, name="sslf")
