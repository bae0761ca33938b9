"""Low-rank matrix sensing with Gaussian measurements: the problem, its objective, and the methods
of the over-parameterization study (METHODS.md section 5; Xiong, Ding, Du, "How over-parameterization
slows down gradient descent in matrix sensing", ICLR 2024).

Problem (:class:`SensingProblem`): a rank-r PSD target M* (n x n) with singular values spread
linearly from 1 down to ``1 / cond``, and m measurements y_k = <A_k, M*> with A_k of i.i.d. N(0, 1)
entries.  The operator is stored scaled, ``A = [vec(A_k)]_k / sqrt(m)`` (m x n^2, float64), so that
E[A^T A] = I and the loss

    f = 1/2 ||A vec(M) - y||^2 = 1/(2m) sum_k (<A_k, M> - y_k)^2  ~  1/2 ||M - M*||_F^2

for M = X X^T (symmetric parameterization, X n x k) or M = F G^T (asymmetric, F, G n x k).  Every
operator application is one dense BLAS matrix-vector product (numpy).

Objective (:class:`SensingObjective`) speaks lfopt's objective protocol (loss, gradient,
Gauss-Newton product, the exact quartic along a line, the exact per-row Gauss-Newton blocks), so
SLF here *is* :class:`lfopt.optim.second_order.HessianFree`, the optimizer of the LF model, run on
float64 vectors.

Methods (:func:`run_methods`), all from the same initialization (:func:`initial_factors`): X0 = alpha Z,
or F0 = alpha Z_F and G0 = alpha/3 Z_G, Z of N(0, 1/n) entries (||Z||_2 ~ 1 + sqrt(k/n); sigma_1(M*)
= 1).  The asymmetric init is imbalanced on purpose, as in the paper's analysis: F0^T F0 - G0^T G0 is
O(alpha^2) and positive definite, and gradient flow conserves it.

* ``gd``: fixed step eta = 1 / L with L the Gauss-Newton curvature bound at the solution,
  L = 2 s1 (asymmetric: ||dF G^T + F dG^T||^2 <= (||F||^2 + ||G||^2) ||d||^2, ||F||^2 = ||G||^2 = s1
  when balanced) and L = 4 s1 (symmetric: ||D X^T + X D^T||^2 <= 4 ||X||^2 ||D||^2), where
  s1 = ||A^T y||_2 (the spectral norm of the back-projection, an over-estimate of sigma_1(M*)).
* ``onestep``: the paper's one-step modification of GD (asymmetric only): plain GD, except that at
  the first iteration T1 where the relative measurement residual ||A vec(M) - y|| / ||y|| falls below
  ``switch_tol`` (1e-2) the factors are rebalanced once,

      F <- F (F^T F)^{-1/2} sqrt(s1),    G <- G (F^T F)^{1/2} / sqrt(s1),

  which keeps F G^T unchanged and gives F all k singular values equal to sqrt(s1).  The alpha^2 rate
  of over-parameterized GD comes from the k - r spurious directions: there G's part must decay
  while F's stays O(alpha) (held there by the conserved imbalance), so it shrinks by about
  1 - eta O(alpha^2) per step; after the
  rebalancing F is well conditioned and G's spurious part decays like a well-conditioned least
  squares problem, at a rate independent of alpha.  **(choice)** METHODS.md names the modification
  without giving its formula; this is our reading of it, not checked against the paper's text.
* ``scaledgd``: ScaledGD(lambda) with a fixed damping: F <- F - eta grad_F (G^T G + lam I)^{-1},
  G <- G - eta grad_G (F^T F + lam I)^{-1} (symmetric: X <- X - eta grad_X (2 X^T X + lam I)^{-1};
  the factor 2 makes the preconditioner the isotropic row block of the Gauss-Newton matrix, as for
  F and G), eta = 0.5, lam = ``lam_rel`` s1 (default 0.01 s1).
* ``precgd``: the same right preconditioners with the damping tied to the current fit,
  lam_t = ||A vec(M_t) - y|| (~ ||M_t - M*||_F), as PrecGD does (Zhang, Fattahi, Zhang 2021).
* ``slf``: lfopt's SLF (:class:`~lfopt.optim.second_order.HessianFree`): a damped Gauss-Newton step
  solved by conjugate gradient on Gauss-Newton products, preconditioned by the exact per-row blocks
  of the Gauss-Newton matrix, scaled by the exact minimizer of the quartic f(y + t Delta), damping
  adapted Levenberg-Marquardt style (floor ``min_damping`` 1e-12 s1, so the GN step can become exact).

Every run records the relative error ||M_t - M*||_F / ||M*||_F after every iteration and the number
of operator applications (products with A or A^T) it used.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..backend import get_backend
from ..errors import ConfigError
from ..models.base import Objective, ParamLayout

METHODS = ("gd", "onestep", "scaledgd", "precgd", "slf")
SYMMETRIC_METHODS = ("gd", "scaledgd", "precgd", "slf")  # the one-step modification is asymmetric


class SensingProblem:
    """A Gaussian matrix-sensing instance (see the module docstring).

    Parameters
    ----------
    n : size of the square target.
    r : its rank.
    m : number of measurements (default ``10 n r``).
    cond : condition number of M* (singular values linearly from 1 down to 1 / cond).
    seed : seed of the target and the measurements.
    """

    def __init__(self, n: int = 50, r: int = 3, m: int | None = None, cond: float = 2.0, seed: int = 0):
        for name, value in (("n", n), ("r", r)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if r > n:
            raise ConfigError(f"r must be <= n, got r={r!r}, n={n!r}")
        m = 10 * n * r if m is None else m
        if isinstance(m, bool) or int(m) != m or m < 1:
            raise ConfigError(f"m must be a positive integer, got {m!r}")
        if not (np.isfinite(cond) and cond >= 1.0):
            raise ConfigError(f"cond must be a finite number >= 1, got {cond!r}")
        self.n, self.r, self.m, self.cond, self.seed = int(n), int(r), int(m), float(cond), int(seed)
        rng = np.random.default_rng(seed)
        U, _ = np.linalg.qr(rng.standard_normal((n, r)))
        self.sigmas = np.linspace(1.0, 1.0 / cond, r)
        self.M_star = (U * self.sigmas) @ U.T
        self.norm_star = float(np.linalg.norm(self.M_star))
        A = rng.standard_normal((self.m, n * n))
        A *= 1.0 / math.sqrt(self.m)
        self.A = A
        self.y = A @ self.M_star.ravel()
        self.y_norm = float(np.linalg.norm(self.y))
        # spectral estimate of sigma_1(M*) from the measurements alone
        self.s1 = float(np.linalg.norm((A.T @ self.y).reshape(n, n), 2))

    @property
    def A3(self) -> np.ndarray:
        """The operator as (m, n, n): ``A3[k]`` is A_k / sqrt(m)."""
        return self.A.reshape(self.m, self.n, self.n)

    def forward(self, M: np.ndarray) -> np.ndarray:
        """A vec(M) (m,)."""
        return self.A @ M.ravel()

    def adjoint(self, s: np.ndarray) -> np.ndarray:
        """A^T s as an n x n matrix: sum_k s_k A_k / sqrt(m)."""
        return (self.A.T @ s).reshape(self.n, self.n)

    def rel_error(self, M: np.ndarray) -> float:
        return float(np.linalg.norm(M - self.M_star)) / self.norm_star

    def info(self) -> dict:
        return {"n": self.n, "r": self.r, "m": self.m, "cond": self.cond, "seed": self.seed,
                "sigmas": self.sigmas.tolist(), "s1_estimate": self.s1}


class SensingObjective(Objective):
    """f(y) = 1/2 ||A vec(M(y)) - y_obs||^2 over the flat factor vector (lfopt's objective protocol).

    ``symmetric``: y holds X (n x k) and M = X X^T; else F, G (n x k each) and M = F G^T.
    Vectors are float64 numpy arrays.  ``n_products`` counts products with A or A^T.
    """

    name = "sensing"

    def __init__(self, problem: SensingProblem, k: int, symmetric: bool):
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ConfigError(f"k (model rank) must be a positive integer, got {k!r}")
        self.p = problem
        self.k = int(k)
        self.symmetric = bool(symmetric)
        n = problem.n
        blocks = (("X", (n, self.k)),) if self.symmetric else (("F", (n, self.k)), ("G", (n, self.k)))
        self.layout = ParamLayout(blocks)
        self.backend = get_backend("numba")
        self.capabilities = frozenset({"loss", "gradient", "gn_product", "line_polynomial", "row_blocks"})
        self.n_products = 0

    # ------------------------------------------------------------ helpers
    def matrix(self, y) -> np.ndarray:
        if self.symmetric:
            (X,) = self.unpack(y)
            return X @ X.T
        F, G = self.unpack(y)
        return F @ G.T

    def residual(self, y) -> np.ndarray:
        self.n_products += 1
        return self.p.forward(self.matrix(y)) - self.p.y

    def _adjoint(self, s) -> np.ndarray:
        self.n_products += 1
        return self.p.adjoint(s)

    def _pull(self, y, S, out) -> None:
        """out = J^T applied to the n x n matrix S = A^T s (the chain rule through M(y))."""
        if self.symmetric:
            (X,) = self.unpack(y)
            (oX,) = self.unpack(out)
            np.matmul(S + S.T, X, out=oX)
        else:
            F, G = self.unpack(y)
            oF, oG = self.unpack(out)
            np.matmul(S, G, out=oF)
            np.matmul(S.T, F, out=oG)

    def _dmatrix(self, y, v) -> np.ndarray:
        """The first-order change of M along v: D X^T + X D^T, or dF G^T + F dG^T."""
        if self.symmetric:
            (X,) = self.unpack(y)
            (D,) = self.unpack(v)
            DX = D @ X.T
            return DX + DX.T
        F, G = self.unpack(y)
        dF, dG = self.unpack(v)
        return dF @ G.T + F @ dG.T

    def _dmatrix2(self, v) -> np.ndarray:
        """The second-order change of M along v: D D^T, or dF dG^T."""
        if self.symmetric:
            (D,) = self.unpack(v)
            return D @ D.T
        dF, dG = self.unpack(v)
        return dF @ dG.T

    # ------------------------------------------------------------ oracles
    def loss(self, y) -> float:
        r = self.residual(y)
        return 0.5 * float(r @ r)

    def loss_grad(self, y, g) -> float:
        r = self.residual(y)
        self._pull(y, self._adjoint(r), g)
        return 0.5 * float(r @ r)

    def jvp(self, y, v) -> np.ndarray:
        """J v: the change of the (scaled) measurements along v (m,)."""
        self.n_products += 1
        return self.p.forward(self._dmatrix(y, v))

    def vjp(self, y, s, out):
        """J^T s for a vector s of m measurements."""
        self._pull(y, self._adjoint(s), out)
        return out

    def gvp(self, y, v, out):
        """Gauss-Newton product J^T J v (two products with the operator)."""
        return self.vjp(y, self.jvp(y, v), out)

    def step_polynomial(self, y, d) -> np.ndarray:
        """Coefficients (c0..c4, lowest first) of the exact quartic f(y + t d) in t.

        M(y + t d) = M + t M1 + t^2 M2, so the residual is r + t a + t^2 b with a = A vec(M1),
        b = A vec(M2).
        """
        r = self.residual(y)
        a = self.jvp(y, d)
        self.n_products += 1
        b = self.p.forward(self._dmatrix2(d))
        return np.array([0.5 * (r @ r), r @ a, 0.5 * (a @ a) + r @ b, a @ b, 0.5 * (b @ b)])

    def row_blocks(self, y) -> list[np.ndarray]:
        """The exact per-row diagonal blocks of J^T J: one (n, k, k) array per factor.

        Row i of F moves measurement k by d . (A_k G)[i]; so its block is sum_k a_ki a_ki^T with
        a_ki = (A_k G)[i] (G: (A_k^T F)[j]; X: ((A_k + A_k^T) X)[i]).  Costs m n^2 k + m n k^2.
        """
        A3 = self.p.A3
        if self.symmetric:
            (X,) = self.unpack(y)
            rows = [np.matmul(A3, X) + np.matmul(A3.transpose(0, 2, 1), X)]
        else:
            F, G = self.unpack(y)
            rows = [np.matmul(A3, G), np.matmul(A3.transpose(0, 2, 1), F)]
        self.n_products += len(rows) * self.k  # each costs m n^2 k flops: k matrix-vector products
        out = []
        for R in rows:  # (m, n, k) -> (n, k, k)
            Rt = np.ascontiguousarray(R.transpose(1, 0, 2))
            out.append(np.matmul(Rt.transpose(0, 2, 1), Rt))
        return out

    def block_preconditioner(self, y, shift: float = 0.0, diag_scale: float = 1.0):
        """``apply(r, out)``: out = M^-1 r, M the block diagonal of J^T J (diagonal x ``diag_scale``)
        plus ``shift`` I; each block is one row of a factor (lfopt's SLF block preconditioner)."""
        blocks = self.row_blocks(y)
        k = self.k
        facs = []
        for B in blocks:
            if diag_scale != 1.0:
                idx = np.arange(k)
                B[:, idx, idx] *= diag_scale
            B[:, np.arange(k), np.arange(k)] += shift
            # a tiny relative jitter keeps the Cholesky factorization defined at X = 0
            scale = np.maximum(np.trace(B, axis1=1, axis2=2) / k, 1e-300)
            B[:, np.arange(k), np.arange(k)] += 1e-12 * scale[:, None]
            facs.append(np.linalg.inv(B))

        def apply(r, out):
            for Binv, rv, ov in zip(facs, self.unpack(r), self.unpack(out)):
                np.matmul(Binv, rv[:, :, None], out=ov[:, :, None])
            return out

        return apply

    def rel_error(self, y) -> float:
        return self.p.rel_error(self.matrix(y))


# ---------------------------------------------------------------------- methods
def initial_factors(problem: SensingProblem, k: int, symmetric: bool, alpha: float, seed: int = 0) -> np.ndarray:
    """The initial factors: X0 = alpha Z, or F0 = alpha Z_F, G0 = alpha / 3 Z_G (asymmetric).

    Z has N(0, 1/n) entries (||Z||_2 ~ 1 + sqrt(k/n)), the same Z for every alpha and method of one
    seed.  The asymmetric init is imbalanced on purpose, as in the paper's analysis: F0^T F0 - G0^T G0
    ~ (8/9) alpha^2 I, an imbalance gradient flow conserves and that sets GD's alpha^2 rate.
    """
    if not (np.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"alpha (init scale) must be a finite number > 0, got {alpha!r}")
    rng = np.random.default_rng(10_000 + seed)
    nblk = 1 if symmetric else 2
    Z = rng.standard_normal(nblk * problem.n * k) / math.sqrt(problem.n)
    y = alpha * Z
    if not symmetric:
        y[problem.n * k:] *= 1.0 / 3.0  # G0 = alpha / 3 Z_G: F0^T F0 - G0^T G0 ~ (8/9) alpha^2 I
    return y


def _precondition(obj: SensingObjective, y, g, lam: float, out) -> None:
    """out = g with each factor's gradient right-multiplied by (other^T other + lam I)^-1
    (symmetric: (2 X^T X + lam I)^-1)."""
    k = obj.k
    eye = np.eye(k)
    if obj.symmetric:
        (X,) = obj.unpack(y)
        (gX,) = obj.unpack(g)
        (oX,) = obj.unpack(out)
        oX[:] = np.linalg.solve(2.0 * X.T @ X + lam * eye, gX.T).T
    else:
        F, G = obj.unpack(y)
        gF, gG = obj.unpack(g)
        oF, oG = obj.unpack(out)
        oF[:] = np.linalg.solve(G.T @ G + lam * eye, gF.T).T
        oG[:] = np.linalg.solve(F.T @ F + lam * eye, gG.T).T


def rebalance(obj: SensingObjective, y, scale: float) -> None:
    """The one-step modification: F <- F (F^T F)^{-1/2} sqrt(scale), G <- G (F^T F)^{1/2} / sqrt(scale)."""
    F, G = obj.unpack(y)
    w, V = np.linalg.eigh(F.T @ F)
    w = np.maximum(w, 1e-300)
    c = math.sqrt(scale)
    F[:] = (F @ (V / np.sqrt(w)) @ V.T) * c
    G[:] = (G @ (V * np.sqrt(w)) @ V.T) / c


def _check_run_args(method, symmetric, max_iter, alphas):
    method = str(method).lower()
    if method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
    if symmetric and method == "onestep":
        raise ConfigError("method 'onestep' (the one-step modification) is defined for the asymmetric "
                          "parameterization only (symmetric=False)")
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 1:
        raise ConfigError(f"max_iter must be a positive integer, got {max_iter!r}")
    if len(alphas) == 0:
        raise ConfigError("alphas must name at least one init scale")
    return method


def default_step(method: str, symmetric: bool, s1: float) -> float:
    """gd / onestep: 1 / L, L = 2 s1 (asymmetric) or 4 s1 (symmetric); preconditioned methods: 0.5."""
    if method in ("gd", "onestep"):
        return 1.0 / ((4.0 if symmetric else 2.0) * s1)
    return 0.5


def run_methods(problem: SensingProblem, method: str, k: int, alphas, symmetric: bool, seed: int = 0,
                max_iter: int = 1000, tol: float = 1e-6, step: float | None = None, lam_rel: float = 0.01,
                precgd_c: float = 1.0, switch_tol: float = 1e-2, slf_options: dict | None = None,
                time_limit: float | None = None) -> list[dict]:
    """Run one method from alpha Z for every alpha in ``alphas``; one result dict per alpha.

    Each run stops at relative error <= ``tol``, after ``max_iter`` iterations, on divergence, or
    when ``time_limit`` seconds have passed.  The first-order methods run the alphas in lock-step,
    so every iteration applies the operator to all of them at once (one matrix-matrix product
    instead of one matrix-vector product each); SLF runs them one after the other.

    Result: ``errors`` (relative error after 0, 1, ... iterations), ``products`` (operator
    applications, in units of one m x n^2 matrix-vector product, used up to each iteration; SLF's
    exact row blocks count k each), ``iters_to_tol`` (None if not reached), ``final_error``,
    ``seconds`` (SLF: the run's wall time; first-order: its share of the lock-step run's time),
    ``diverged``, ``step``, and extras: ``switch_iter`` (onestep: the iteration T1 of the
    rebalancing), ``lam`` (scaledgd), ``damping`` / ``cg_iters`` per iteration (slf).
    ``step`` overrides the default step (:func:`default_step`); ``lam_rel``: ScaledGD(lambda)'s fixed
    lambda = lam_rel s1; ``precgd_c``: PrecGD's lambda_t = precgd_c ||A vec(M_t) - y||.
    """
    alphas = [float(a) for a in np.atleast_1d(alphas)]
    method = _check_run_args(method, symmetric, max_iter, alphas)
    if method == "slf":
        return [_run_slf(problem, k, a, symmetric, seed, int(max_iter), tol, slf_options, time_limit)
                for a in alphas]
    return _run_first_order(problem, method, k, alphas, symmetric, seed, int(max_iter), tol, step, lam_rel,
                            precgd_c, switch_tol, time_limit)


def run_method(problem: SensingProblem, method: str, k: int, alpha: float, symmetric: bool, **options) -> dict:
    """:func:`run_methods` for one init scale."""
    return run_methods(problem, method, k, [alpha], symmetric, **options)[0]


def _result(method, k, alpha, symmetric, step, errors, products, seconds, diverged, tol, **extra) -> dict:
    errors = np.asarray(errors, dtype=float)
    hit = np.nonzero(errors <= tol)[0]
    return {"method": method, "k": int(k), "alpha": float(alpha), "symmetric": bool(symmetric),
            "step": float(step) if step is not None else None, "errors": errors,
            "products": np.asarray(products, dtype=np.int64), "iterations": len(errors) - 1,
            "iters_to_tol": int(hit[0]) if len(hit) else None, "final_error": float(errors[-1]),
            "seconds": float(seconds), "diverged": bool(diverged), **extra}


def _run_first_order(problem, method, k, alphas, symmetric, seed, max_iter, tol, step, lam_rel, precgd_c,
                     switch_tol, time_limit) -> list[dict]:
    obj = SensingObjective(problem, k, symmetric)
    p = problem
    nn = p.n * p.n
    if step is None:
        step = default_step(method, symmetric, p.s1)
    step = float(step)
    if not (math.isfinite(step) and step > 0):
        raise ConfigError(f"step must be a finite number > 0, got {step!r}")
    b = len(alphas)
    ys = [initial_factors(p, obj.k, symmetric, a, seed) for a in alphas]
    Ms = [obj.matrix(y) for y in ys]
    errors = [[p.rel_error(M)] for M in Ms]
    products = [[0] for _ in range(b)]
    seconds = [0.0] * b
    diverged = [False] * b
    switch = [None] * b
    active = [j for j in range(b) if errors[j][0] > tol]
    g = np.empty_like(ys[0])
    pg = np.empty_like(ys[0])
    lam_fixed = lam_rel * p.s1
    t_start = time.perf_counter()
    for _ in range(max_iter):
        if not active:
            break
        t0 = time.perf_counter()
        Mm = np.empty((nn, len(active)))
        for c, j in enumerate(active):
            Mm[:, c] = Ms[j].ravel()
        R = p.A @ Mm
        R -= p.y[:, None]
        S = p.A.T @ R
        for c, j in enumerate(active):
            y = ys[j]
            r = R[:, c]
            Sj = S[:, c].reshape(p.n, p.n)
            obj._pull(y, Sj, g)
            if method == "onestep" and switch[j] is None and math.sqrt(float(r @ r)) <= switch_tol * p.y_norm:
                rebalance(obj, y, p.s1)
                switch[j] = len(errors[j])  # this iteration; M is unchanged, so A^T r still holds
                obj._pull(y, Sj, g)
            if method in ("gd", "onestep"):
                y -= step * g
            else:
                lam = lam_fixed if method == "scaledgd" else precgd_c * math.sqrt(float(r @ r))
                _precondition(obj, y, g, lam, pg)
                y -= step * pg
            Ms[j] = obj.matrix(y)
            errors[j].append(p.rel_error(Ms[j]))
            products[j].append(products[j][-1] + 2)
        share = (time.perf_counter() - t0) / len(active)
        still = []
        for j in active:
            seconds[j] += share
            e = errors[j][-1]
            if not math.isfinite(e) or e > 1e6:
                diverged[j] = True
            elif e > tol:
                still.append(j)
        active = still
        if time_limit is not None and time.perf_counter() - t_start > time_limit:
            break
    out = []
    for j, a in enumerate(alphas):
        extra = {}
        if method == "onestep":
            extra["switch_iter"] = switch[j]
        if method == "scaledgd":
            extra["lam"] = lam_fixed
        if method == "precgd":
            extra["lam_c"] = precgd_c
        out.append(_result(method, k, a, symmetric, step, errors[j], products[j], seconds[j], diverged[j], tol,
                           **extra))
    return out


def _run_slf(problem, k, alpha, symmetric, seed, max_iter, tol, slf_options, time_limit) -> dict:
    from ..optim.second_order import HessianFree

    obj = SensingObjective(problem, k, symmetric)
    y = initial_factors(problem, obj.k, symmetric, alpha, seed)
    s1 = problem.s1
    opts = {"cg_iters": 20, "cg_tol": 1e-2, "damping": s1, "boost": 3.0, "min_damping": 1e-12 * s1,
            "precondition": "block", "line_search": True}
    opts.update(slf_options or {})
    opt = HessianFree(**opts)
    errors = [obj.rel_error(y)]
    products = [0]
    damping, cg_iters = [], []
    diverged = stalled = False
    t0 = time.perf_counter()
    while len(errors) <= max_iter and errors[-1] > tol:
        info = opt.epoch(obj, y, len(errors))
        damping.append(info.get("damping"))
        cg_iters.append(info.get("cg_iters"))
        errors.append(obj.rel_error(y))
        products.append(obj.n_products)
        if info.get("rejected", 0) > opt.max_retries:
            stalled = True  # every retry rejected: no decrease left at this precision
            break
        if not math.isfinite(errors[-1]) or errors[-1] > 1e6:
            diverged = True
            break
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            break
    return _result("slf", k, alpha, symmetric, None, errors, products, time.perf_counter() - t0, diverged, tol,
                   damping=damping, cg_iters=cg_iters, slf_options=opts, stalled=stalled)


def fit_rates(errors, window: float = 0.25, min_points: int = 6) -> dict:
    """Rates of the final phase of an error curve (the last ``window`` fraction of the iterations,
    at least ``min_points``).

    * ``linear``: -slope of a least-squares line through log10(error) vs t (error ~ 10^(-linear t));
      ``r2_linear`` its fit.
    * ``power``: slope of log10(error) vs log10(t) (error ~ t^power); ``r2_power`` its fit.
    * ``inv_slope``: slope of 1/error vs t, ``r2_inv`` its fit: 1/error growing linearly in t is the
      1/T law of over-parameterized symmetric GD (error ~ 1/T, i.e. loss ~ 1/T^2), whose local
      log-log slope only tends to -1 once t is large against the transient.
    * ``phase``: ``"linear"`` or ``"sublinear"``, whichever of the two models (log-linear, or 1/error
      linear in t), fitted on the first half of the window, predicts the last error better; over a
      short window both fit well, but they extrapolate very differently.
    """
    e = np.asarray(errors, dtype=float)
    e = e[np.isfinite(e) & (e > 0)]
    n = len(e)
    keys = ("linear", "r2_linear", "power", "r2_power", "inv_slope", "r2_inv", "phase", "window")
    if n < min_points + 1:
        return dict.fromkeys(keys)
    w = max(min_points, int(round(window * (n - 1))))
    t = np.arange(n - w, n, dtype=float)
    ew = e[n - w:]
    le = np.log10(ew)

    def fit(x, yv):
        A = np.vstack([x, np.ones_like(x)]).T
        coef, *_ = np.linalg.lstsq(A, yv, rcond=None)
        pred = A @ coef
        ss = float(((yv - yv.mean()) ** 2).sum())
        r2 = 1.0 - float(((yv - pred) ** 2).sum()) / ss if ss > 0 else 1.0
        return coef, r2

    (s_lin, c_lin), r2_lin = fit(t, le)
    (s_pow, _), r2_pow = fit(np.log10(np.maximum(t, 1.0)), le)
    (s_inv, _), r2_inv = fit(t, 1.0 / ew)
    # hold-out: fit both models on the first half, predict the last point
    h = max(3, w // 2)
    (a1, b1), _ = fit(t[:h], le[:h])
    (a2, b2), _ = fit(t[:h], 1.0 / ew[:h])
    miss_lin = abs(a1 * t[-1] + b1 - le[-1])
    inv_end = a2 * t[-1] + b2
    miss_inv = abs(math.log10(inv_end) + le[-1]) if inv_end > 0 else math.inf
    phase = "linear" if miss_lin <= miss_inv else "sublinear"
    return {"linear": -float(s_lin), "r2_linear": r2_lin, "power": float(s_pow), "r2_power": r2_pow,
            "inv_slope": float(s_inv), "r2_inv": r2_inv, "phase": phase, "window": [int(t[0]), n - 1]}


def extrapolate(errors, tol: float, window: float = 0.5) -> tuple[int | None, str | None]:
    """(iterations, model) to reach ``tol``: measured if reached, else extrapolated from the last
    ``window`` of the curve with the model :func:`fit_rates` selects -- ``"exp"`` (log-linear) or
    ``"1/T"`` (1/error linear in t); (None, None) if the curve does not decrease."""
    e = np.asarray(errors, dtype=float)
    hit = np.nonzero(e <= tol)[0]
    if len(hit):
        return int(hit[0]), "measured"
    f = fit_rates(e, window=window)
    if f["phase"] is None:
        return None, None
    n = len(e) - 1
    if f["phase"] == "linear":
        if not f["linear"] > 0:
            return None, None
        return int(math.ceil(n + math.log10(e[-1] / tol) / f["linear"])), "exp"
    if not f["inv_slope"] > 0:
        return None, None
    return int(math.ceil(n + (1.0 / tol - 1.0 / e[-1]) / f["inv_slope"])), "1/T"
