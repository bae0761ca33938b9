"""Learned L2 for the LF rating model: lambdaOpt's Lambda, learned during training (METHODS.md 4, 5b).

The penalty of :class:`LearnedL2` is the row-weighted L2 of METHODS.md section 2
with one coefficient per (row, dimension)::

    W_P[u, d] = Lambda_U[u, d] * s_u,    s_u = a0 + a1 n_u     (n_u = row u's training count)
    W_Q[i, d] = Lambda_I[i, d] * s_i
    W_bu[u]   = Lambda_bU[u] * sb_u,     sb_u = b0 + b1 n_u    (biases)

``Lambda`` at a granularity (``global``, ``D``, ``DU``, ``DI``, ``DUI``: see
:mod:`lfopt.regularizers.lambda_opt`, the rows of Lambda broadcast over the rows of
the factors) and a fixed per-row scale (the form lambda_0 + lambda_1 n_u).  Defaults,
chosen by measurement (``benchmarks/bench_lambda_rating.py``): count-weighted factors
(``scale=(0, 1)``: Lambda is then exactly the ``lam`` of :class:`~lfopt.regularizers.L2`),
uniform biases (``bias_scale=(1, 0)``: b_u ~ sum(e) / (n_u + Lambda_b), the damped
mean of the bias-only baseline; count-weighted biases were worse on every dataset),
one factor Lambda (``global``: D was no better, DU / DI / DUI fit the validation set
instead of the data, e.g. ML-100K adam DUI: validation RMSE 0.69, test 0.95) and
one bias Lambda per side.

Lambda is learned on a validation set (``bind(objective, valid)``), in log space
(theta = log Lambda) by lazy Adam, after every optimizer epoch
(:meth:`LearnedL2.after_epoch`, which the trainer calls):

* first-order optimizers (``sgd``, ``adam``, ``adago``): the look-ahead of METHODS.md
  section 4.  The optimizer's next update is simulated in closed form (Adam / AdaGO:
  one mini-batch step through the optimizer's current moments and bias corrections,
  the second moment included; SGD: its next epoch, y - eta (grad f + W y), since an
  epoch of per-entry steps moves y by about eta times the full summed gradient: the
  one-mini-batch horizon pulled Lambda to 1e-4 and below), the validation squared
  error is evaluated at the simulated point and differentiated with respect to W
  only, element-wise (:func:`lookahead_hypergrad`);
* full-batch second-order optimizers (``als``, ``slf``, ``sslf``) and anything else:
  implicit differentiation at the (approximate) minimizer y* of the training
  objective, d l_valid / dW = -(H^-1 grad l_valid) * y*, H^-1 v by one preconditioned
  CG solve warm started from the previous one (:func:`implicit_hypergrad`), H = G +
  diag(W) by the objective's Gauss-Newton products (or, ``hessian="exact"``, the
  Hessian itself: Gauss-Newton drops the residual term, so its hyper-gradient is not
  the exact derivative, yet it steers a global Lambda as well, see :class:`LearnedL2`).

Either way d l_valid / d Lambda = sum over the coordinates sharing a Lambda entry of
d l_valid / dW * s, and d / d theta = Lambda * d / d Lambda.  The validation loss is
1/2 mean(e^2) / sigma^2 (sigma: the training ratings' standard deviation), so every
number the hyper-optimizer sees is free of the rating scale.  Hyper-steps start once
the validation loss improves by less than 0.5 % per epoch (before that every
hyper-gradient asks for less penalty, whatever its right level), and Lambda stays
within a factor ``band`` (4) of its initial value.

Scale rule of the defaults (``init="auto"``): multiplying every rating by c (a 1..5
scale to 1..100: c = 20) scales the minimizer as b -> c b, P, Q -> sqrt(c) P, sqrt(c) Q
exactly when the factors' lambda is multiplied by c and the biases' lambda is kept
(the loss grows as c^2, the factor penalty as lambda c, the bias penalty as
lambda_b c^2): the factors need sigma-times (not sigma^2-times) larger penalties.  So
the factors' initial Lambda is ``init_rel * sigma`` and the biases' ``init_bias``
(scale-free).
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..errors import ConfigError
from .l2 import _coefficient as _nonneg
from .lambda_opt import LambdaLayout, _stats, check_granularity, lambda_summary

BIAS_GRANULARITIES = ("global", "side", "row")
METHODS = ("auto", "lookahead", "implicit")
HESSIANS = ("gn", "exact")

#: defaults chosen by measurement (benchmarks/bench_lambda_rating.py)
DEFAULT_INIT_REL = 0.2
DEFAULT_INIT_BIAS = 5.0


def _positive(name, value) -> float:
    v = _nonneg(name, value)
    if v <= 0:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def _scale_pair(name, value) -> tuple[float, float]:
    try:
        a0, a1 = value
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a pair (a0, a1) of numbers >= 0 (s_u = a0 + a1 n_u), got {value!r}") \
            from None
    a0, a1 = _nonneg(f"{name}[0]", a0), _nonneg(f"{name}[1]", a1)
    if a0 == 0 and a1 == 0:
        raise ConfigError(f"{name} = {value!r} gives every row a zero scale s_u = a0 + a1 n_u")
    return a0, a1


def _pos_int_or_auto(name, value):
    if value is None or (isinstance(value, str) and value == "auto"):
        return None
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ConfigError(f"{name} must be a positive integer or 'auto', got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- sparse helpers
def _csr(u, i, data, shape):
    import scipy.sparse as sp

    return sp.csr_matrix((np.asarray(data, dtype=np.float64), (u, i)), shape=shape)


def _scatter(u, i, c, m, n, P, Q, use_bias):
    """The sums over a set of entries of c_k (q_i, p_u, 1, 1) into (P rows, Q rows, bu, bi):
    returns ``(sbu, sbi, sP, sQ)`` (float64; zeros where no entry).  Duplicated entries add."""
    C = _csr(u, i, c, (m, n))
    sP = np.asarray(C @ Q)
    sQ = np.asarray(C.T @ P)
    if use_bias:
        sbu = np.asarray(C.sum(axis=1)).ravel()
        sbi = np.asarray(C.sum(axis=0)).ravel()
    else:
        sbu, sbi = np.zeros(0), np.zeros(0)
    return sbu, sbi, sP, sQ


def _residuals(mu, params, u, i, r, use_bias):
    bu, bi, P, Q = params
    pred = np.einsum("kd,kd->k", P[u], Q[i])
    if use_bias:
        pred = pred + bu[u] + bi[i]
    return np.asarray(r, dtype=np.float64) - mu - pred


def _valid_loss_grad(mu, params, vbatch, use_bias, norm):
    """``(l, a)``: l = 1/2 mean(e^2) / norm over the validation entries, a = dl/dy (4 blocks)."""
    bu, bi, P, Q = params
    m, n = P.shape[0], Q.shape[0]
    vu, vi, vr = vbatch
    e = _residuals(mu, params, vu, vi, vr, use_bias)
    k = max(len(e), 1)
    l_val = 0.5 * float(e @ e) / (k * norm)
    a = _scatter(vu, vi, -e / (k * norm), m, n, P, Q, use_bias)
    return l_val, a


# --------------------------------------------------------------------------- look-ahead
def lookahead_hypergrad(kind: str, mu: float, params, W, alpha, tbatch, vbatch, lr: float, scale: float = 1.0,
                        moments=None, t: int = 0, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                        damping: float = 0.0, use_bias: bool = True, norm: float = 1.0):
    """The one-step look-ahead hyper-gradient d l_valid(ybar) / dW, element-wise (float64 numpy).

    ``params = (bu, bi, P, Q)`` the current parameters, ``W = (Wbu, Wbi, WP, WQ)`` the
    penalty weights of every coordinate (same shapes), ``alpha = (au, ai)`` the fraction
    of each row's penalty that the training batch applies (occurrences in the batch /
    training count; 1 everywhere for the full batch), ``tbatch = (u, i, r)`` the
    training batch, ``vbatch`` the validation batch.  The simulated step, with
    g = scale * (sum over the batch of the residual gradient + alpha W y):

    * ``kind="sgd"``:   ybar = y - lr g;
    * ``kind="adam"``:  m' = b1 m + (1 - b1) g, s' = b2 s + (1 - b2) g^2,
      ybar = y - lr (m' / bc1) / (sqrt(s' / bc2) + eps), bc = 1 - b^(t + 1);
    * ``kind="adago"``: the same with s' = b2 s + (1 - b2) d^2, d = scale * (batch sum of
      the Gauss-Newton diagonal + alpha W) + damping (what AdaGO's mini-batch step uses).

    ``moments = (m, s)``, each 4 blocks, are the optimizer's state before the step and
    ``t`` its step count.  Returns ``(l_valid, hW, ybar)``: l_valid = 1/2 mean(e^2) /
    norm of the validation batch at ybar, hW (4 blocks) its derivative with respect to
    each coordinate's weight, every other input held fixed (the derivative flows
    through g and, for Adam / AdaGO, through both moments).
    """
    if kind not in ("sgd", "adam", "adago"):
        raise ConfigError(f"look-ahead kind must be 'sgd', 'adam' or 'adago', got {kind!r}")
    bu, bi, P, Q = params
    m, n = P.shape[0], Q.shape[0]
    u, i, r = tbatch
    e = _residuals(mu, params, u, i, r, use_bias)
    gdata = _scatter(u, i, -e, m, n, P, Q, use_bias)
    au, ai = alpha
    al = (au if use_bias else au[:0], ai if use_bias else ai[:0], au[:, None], ai[:, None])
    # dg/dW = scale * alpha * y  (per coordinate)
    dg = [scale * a * y for a, y in zip(al, params)]
    g = [scale * gd + dgk * w for gd, dgk, w in zip(gdata, dg, W)]
    if kind == "sgd":
        ybar = [y - lr * gk for y, gk in zip(params, g)]
        dy = [-lr * dgk for dgk in dg]
    else:
        m0, s0 = moments
        bc1 = 1.0 - beta1 ** (t + 1)
        bc2 = 1.0 - beta2 ** (t + 1)
        if kind == "adago":
            # the batch's Gauss-Newton diagonal: one per visit on a bias, the other
            # side's squares on a factor
            ddata = _scatter(u, i, np.ones(len(u)), m, n, P ** 2, Q ** 2, use_bias)
            src = [scale * (dk + a * w) + damping for dk, a, w in zip(ddata, al, W)]
            dsrc = [scale * a * np.ones_like(w) for a, w in zip(al, W)]
        else:
            src, dsrc = g, dg
        ybar, dy = [], []
        for y, gk, dgk, sk, dsk, mk, vk in zip(params, g, dg, src, dsrc, m0, s0):
            m1 = beta1 * mk + (1 - beta1) * gk
            s1 = beta2 * vk + (1 - beta2) * sk * sk
            root = np.sqrt(s1 / bc2)
            D = root + eps
            ybar.append(y - lr * (m1 / bc1) / D)
            # d root / d s1 = 1 / (2 bc2 root); 0 where root = 0 (then s1 = 0 and src = 0)
            inv = np.divide(1.0, 2.0 * bc2 * root, out=np.zeros_like(root), where=root > 0)
            dm1 = (1 - beta1) * dgk
            ds1 = (1 - beta2) * 2.0 * sk * dsk
            dy.append(-lr / bc1 * (dm1 / D - m1 / (D * D) * inv * ds1))
    l_val, a = _valid_loss_grad(mu, tuple(ybar), vbatch, use_bias, norm)
    hW = [ak * dk for ak, dk in zip(a, dy)]
    return l_val, hW, ybar


# --------------------------------------------------------------------------- implicit
def implicit_hypergrad(obj, y, a_blocks, x0=None, cg_iters: int = 10, cg_tol: float = 1e-3, hessian: str = "gn",
                       train_residuals=None):
    """d l_valid(y*) / dW = -(H^-1 a) * y* by one preconditioned CG solve (float32, obj's backend).

    ``a_blocks`` is the validation loss's gradient at y (4 numpy blocks), H = G(y) +
    diag(W) through ``obj.gvp`` (``hessian="exact"`` adds the residual term of the
    bilinear model, -sum_K e_ui (v_qi on p_u, v_pu on q_i), from the numpy
    ``train_residuals`` csr matrix of the training residuals).  ``x0`` (a backend
    vector) warm-starts CG: it solves H d = a - H x0 and returns x0 + d.  The
    preconditioner is the per-row Gauss-Newton blocks (the ALS normal matrices) when
    the objective offers them, else Jacobi.  Returns ``(hW blocks, x, cg_iterations,
    relative_residual)``.
    """
    from ..optim.second_order import conjugate_gradient

    be = obj.backend
    lay = obj.layout
    flat = np.zeros(obj.size, dtype=np.float32)
    for blk, src in zip(lay.unpack(flat), a_blocks):
        blk[...] = src
    b = be.asarray(flat)
    exact = hessian == "exact"
    if exact:
        E = train_residuals

    def matvec(v, out):
        obj.gvp(y, v, out)
        if exact:
            vn = be.to_numpy(v)
            _, _, VP, VQ = lay.unpack(vn)
            corr = np.zeros(obj.size, dtype=np.float32)
            _, _, CP, CQ = lay.unpack(corr)
            CP[...] = E @ VQ.astype(np.float64)
            CQ[...] = E.T @ VP.astype(np.float64)
            out -= be.asarray(corr)
        return out

    if obj.has("row_blocks"):
        # a tiny shift keeps the blocks of rows without training entries (G = 0 there, and
        # W = 0 under a count-weighted scale) invertible; CG never moves those rows (a = 0)
        pre = obj.block_preconditioner(y, 1e-6, 1.0)
    else:
        d = obj.gn_diag(y, be.empty_like(b))
        be.clamp_min_(d, 1e-12)
        pre = d
    bnorm = be.norm(b)

    def solve(x0):
        rhs = b
        if x0 is not None:
            rhs = be.empty_like(b)
            matvec(x0, rhs)
            rhs *= -1.0
            rhs += b
        rnorm = be.norm(rhs)
        if not math.isfinite(rnorm) or rnorm == 0.0:
            return None if not math.isfinite(rnorm) else (be.zeros_like(b) if x0 is None else x0, 0, 0.0)
        tol = cg_tol * bnorm / rnorm
        res = conjugate_gradient(matvec, rhs, cg_iters, tol, pre, backend=be)
        if exact and res.iterations < cg_iters and res.relative_residual > max(tol, 0.1):
            return None  # CG met negative curvature early: H is indefinite here
        rel = res.relative_residual * rnorm / bnorm
        if not (math.isfinite(rel) and rel < 1.0 and be.all_finite(res.x)):
            return None
        return (res.x if x0 is None else res.x + x0), res.iterations, rel

    out = solve(x0)
    if out is None and exact:
        # the exact Hessian is indefinite away from a minimizer: fall back to Gauss-Newton
        exact = False
        out = solve(None)
    elif out is None and x0 is not None:  # a stale warm start (y moved far): start afresh
        out = solve(None)
    if out is None:
        return [np.zeros(blk.shape) for blk in lay.unpack(np.zeros(obj.size))], None, 0, float("nan")
    x, its, rel = out
    yn = be.to_numpy(y).astype(np.float64)
    xn = be.to_numpy(x).astype(np.float64)
    hW = [-xb * yb for xb, yb in zip(lay.unpack(xn), lay.unpack(yn))]
    return hW, x, its, rel


# --------------------------------------------------------------------------- the regularizer
def _unwrap(optimizer):
    """The optimizer that takes the steps (through sharpness-aware wrappers)."""
    seen = 0
    while hasattr(optimizer, "base") and seen < 5 and getattr(optimizer, "base") is not optimizer:
        optimizer = optimizer.base
        seen += 1
    return optimizer


def _optimizer_kind(optimizer) -> str:
    """'sgd', 'adam', 'adago' (look-ahead) or 'implicit'."""
    from ..optim.first_order import SGD, AdaGO, AdaptiveMoments

    base = _unwrap(optimizer)
    if isinstance(base, SGD):
        return "sgd"
    if isinstance(base, AdaGO):
        return "adago"
    if isinstance(base, AdaptiveMoments):
        return "adam"
    return "implicit"


def _batch_size_of(optimizer, nnz: int) -> int:
    bs = getattr(optimizer, "batch_size", None)
    if isinstance(bs, str):
        try:
            from ..optim.first_order import auto_batch_size
        except ImportError:  # pragma: no cover - older first_order
            return min(nnz, 8192)
        return auto_batch_size(nnz)
    if not bs:
        return nnz
    return int(min(bs, nnz))


class LearnedL2:
    """Row-and-dimension L2 of the LF model whose coefficients Lambda are learned on validation data.

    Parameters
    ----------
    granularity : ``"global"`` (default), ``"D"``, ``"DU"``, ``"DI"`` or ``"DUI"`` (factors).
        Measured (benchmarks/bench_lambda_rating.py): the finer ones fit the validation
        set rather than the data (DUI: as many Lambdas as factors), global is the default.
    bias : ``"side"`` (one Lambda for user biases, one for item biases; default: a bias
        is one number per row, so one Lambda per row would be fit by the validation
        ratings of that row alone), ``"global"`` (one for both) or ``"row"``.
    init : the factors' initial Lambda; ``"auto"`` is ``init_rel * sigma`` (sigma: the
        standard deviation of the training ratings), the scale rule of the module
        docstring.
    init_bias : the biases' initial Lambda (``"auto"``: ``DEFAULT_INIT_BIAS``, scale-free).
    scale, bias_scale : ``(a0, a1)``: row u's fixed scale s_u = a0 + a1 n_u.  Defaults:
        count-weighted factors (0, 1), so Lambda is the ``lam`` of
        :class:`~lfopt.regularizers.L2`; uniform biases (1, 0), b_u ~ sum(e) / (n_u + Lambda),
        the damped mean of the bias-only baseline.
    lr : Adam's step on log Lambda (a relative change) per mini-batch look-ahead step
        (adam, adago: ``hyper_steps`` of them per epoch).
    lr_epoch : the same for the once-per-epoch hyper-steps: implicit (als, slf, sslf) and
        sgd's one-epoch look-ahead.
    beta1, beta1_epoch, beta2 : Adam's moment decays on log Lambda (``beta1_epoch`` for the
        once-per-epoch steps: 0.9 would carry Lambda on for ~10 epochs after its
        hyper-gradient changed sign).
    hyper_steps : look-ahead steps after each epoch (``"auto"``: 10 for adam / adago, 1 for
        sgd's one-epoch look-ahead).
    method : ``"auto"`` (look-ahead for sgd / adam / adago, implicit otherwise),
        ``"lookahead"`` or ``"implicit"`` (for every optimizer).
    sgd_horizon : ``"epoch"`` (default): sgd's look-ahead simulates its whole next epoch
        (per-entry steps of size eta move y by about eta times the full summed gradient:
        one full-batch step); ``"batch"``: one mini-batch step of ``train_batch_size``.
        The one-batch horizon pulls Lambda far below the validation-best fixed lambda.
    valid_batch_size : validation entries per mini-batch look-ahead step (``None``: all).
    train_batch_size : training entries of the simulated step (``None``: the optimizer's
        mini-batch size).
    cg_iters, cg_tol : the implicit step's CG solve (warm-started).
    hessian : ``"gn"`` (default: H = G + diag(W) as METHODS.md 5b writes it) or ``"exact"``
        (the Gauss-Newton product plus the residual term of the bilinear model,
        -sum_K e_ui on the (p_u, q_i) pairs: two sparse products in numpy per CG
        iteration; falls back to Gauss-Newton where CG meets negative curvature).  Only
        ``"exact"`` is the derivative of l_valid(y*) (tests: finite differences within
        1 %; Gauss-Newton was off by up to a factor 8 on a tiny problem), but with one
        global Lambda Adam needs little more than its sign: measured on ML-100K, Douban,
        Amazon and Yelp (als, slf, sslf) both reach the same test RMSE within 0.0006, and
        Gauss-Newton in half the time.
    learn : False keeps Lambda at its initial values.
    lam_min, lam_max : bounds of Lambda (log space is clipped to them).
    band : Lambda stays within [init / band, init * band] (None: only lam_min, lam_max).
    warmup : epochs before the first hyper-step, or ``"auto"``: from the first epoch whose
        validation loss improved by less than ``warmup_tol`` (relative) on the previous
        epoch's (before that the model is underfit and every hyper-gradient asks for less
        penalty, whatever the penalty's right level).
    seed : seeds the batches of the look-ahead.

    Use: ``reg = LearnedL2(); obj = LFObjective(train, rank, regularizer=reg);
    reg.bind(obj, valid)``; then the trainer's per-epoch hook
    (``obj.after_epoch``, installed by :meth:`bind`) learns Lambda, and
    ``obj.extra_state()`` carries it (restored with the best epoch).
    """

    name = "learned_l2"

    def __init__(self, granularity: str = "global", bias: str = "side", init="auto", init_bias="auto",
                 init_rel: float = DEFAULT_INIT_REL, scale=(0.0, 1.0), bias_scale=(1.0, 0.0), lr: float = 0.02,
                 lr_epoch: float = 0.2, hyper_steps="auto", method: str = "auto", sgd_horizon: str = "epoch",
                 valid_batch_size: int | None = 8192, train_batch_size: int | None = None, cg_iters: int = 10,
                 cg_tol: float = 1e-3, hessian: str = "gn", learn: bool = True, lam_min: float = 1e-6,
                 lam_max: float = 1e4, band: float | None = 4.0, warmup="auto", warmup_tol: float = 0.005,
                 beta1: float = 0.9, beta1_epoch: float = 0.5, beta2: float = 0.999, seed: int = 0):
        self.granularity = check_granularity(granularity)
        if bias not in BIAS_GRANULARITIES:
            raise ConfigError(f"bias must be one of {', '.join(BIAS_GRANULARITIES)}, got {bias!r}")
        self.bias = bias
        self.init = "auto" if init == "auto" else _positive("init", init)
        self.init_bias = "auto" if init_bias == "auto" else _positive("init_bias", init_bias)
        self.init_rel = _positive("init_rel", init_rel)
        self.scale = _scale_pair("scale", scale)
        self.bias_scale = _scale_pair("bias_scale", bias_scale)
        self.lr = _nonneg("lr", lr)
        self.lr_epoch = _nonneg("lr_epoch", lr_epoch)
        self.hyper_steps = _pos_int_or_auto("hyper_steps", hyper_steps)
        if method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        self.method = method
        if sgd_horizon not in ("epoch", "batch"):
            raise ConfigError(f"sgd_horizon must be 'epoch' or 'batch', got {sgd_horizon!r}")
        self.sgd_horizon = sgd_horizon
        self.valid_batch_size = _pos_int_or_auto("valid_batch_size", valid_batch_size)
        self.train_batch_size = _pos_int_or_auto("train_batch_size", train_batch_size)
        if isinstance(cg_iters, bool) or int(cg_iters) != cg_iters or cg_iters < 1:
            raise ConfigError(f"cg_iters must be a positive integer, got {cg_iters!r}")
        self.cg_iters = int(cg_iters)
        self.cg_tol = _positive("cg_tol", cg_tol)
        if hessian not in HESSIANS:
            raise ConfigError(f"hessian must be one of {', '.join(HESSIANS)}, got {hessian!r}")
        self.hessian = hessian
        self.learn = bool(learn)
        self.lam_min = _positive("lam_min", lam_min)
        self.lam_max = _positive("lam_max", lam_max)
        if self.lam_max <= self.lam_min:
            raise ConfigError(f"lam_max ({lam_max!r}) must exceed lam_min ({lam_min!r})")
        self.band = None if band is None else _positive("band", band)
        if self.band is not None and self.band < 1:
            raise ConfigError(f"band must be >= 1 (Lambda stays within [init / band, init * band]), got {band!r}")
        if isinstance(warmup, str) and warmup == "auto":
            self.warmup = "auto"
        elif isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 0:
            raise ConfigError(f"warmup must be a non-negative integer or 'auto', got {warmup!r}")
        else:
            self.warmup = int(warmup)
        self.warmup_tol = _nonneg("warmup_tol", warmup_tol)
        for nm, b in (("beta1", beta1), ("beta1_epoch", beta1_epoch), ("beta2", beta2)):
            if not 0.0 <= b < 1.0:
                raise ConfigError(f"{nm} must lie in [0, 1), got {b!r}")
        self.beta1, self.beta1_epoch, self.beta2 = float(beta1), float(beta1_epoch), float(beta2)
        self.seed = int(seed)
        self.objective = None
        self.layout = None
        self.theta = None
        self.trajectory = []

    def __repr__(self) -> str:
        return f"LearnedL2(granularity={self.granularity!r}, bias={self.bias!r}, lr={self.lr})"

    def get_params(self) -> dict:
        keys = ("granularity", "bias", "init", "init_bias", "init_rel", "scale", "bias_scale", "lr", "lr_epoch",
                "hyper_steps", "method", "sgd_horizon", "valid_batch_size", "train_batch_size", "cg_iters", "cg_tol",
                "hessian", "learn", "lam_min", "lam_max", "band", "warmup", "warmup_tol", "beta1", "beta1_epoch",
                "beta2", "seed")
        return {k: getattr(self, k) for k in keys}

    # ------------------------------------------------------------ weights
    @staticmethod
    def _row_scale(pair, counts) -> np.ndarray:
        a0, a1 = pair
        return a0 + a1 * np.asarray(counts, dtype=np.float64)

    def _init_values(self, sigma: float) -> tuple[float, float]:
        lam = self.init_rel * sigma if self.init == "auto" else self.init
        lam_b = DEFAULT_INIT_BIAS if self.init_bias == "auto" else self.init_bias
        return float(lam), float(lam_b)

    def row_weights(self, user_counts, item_counts):
        """Per-row weights ``(wu, wi, wbu, wbi)`` (float32): before :meth:`bind`, from the
        initial Lambda (``init="auto"`` then takes sigma = 1; :meth:`bind` installs the
        right ones); after it, the current Lambda ((m, f) / (n, f) factor weights unless
        the granularity is global)."""
        if self.theta is not None:
            return self.weights()
        lam, lam_b = self._init_values(1.0)
        su, si = self._row_scale(self.scale, user_counts), self._row_scale(self.scale, item_counts)
        sbu, sbi = self._row_scale(self.bias_scale, user_counts), self._row_scale(self.bias_scale, item_counts)
        f32 = np.float32
        return (np.asarray(lam * su, f32), np.asarray(lam * si, f32), np.asarray(lam_b * sbu, f32),
                np.asarray(lam_b * sbi, f32))

    # ---------------------------------------------------------------- binding
    def bind(self, objective, valid=None) -> "LearnedL2":
        """Size Lambda for ``objective`` (its users, items, rank), reset it to its initial
        values, install the weights, and take ``valid`` (an :class:`Interactions` in the
        training set's index space) as the data Lambda is learned on.

        The objective gains ``after_epoch(y, optimizer, epoch)`` (the trainer's hook),
        and its ``extra_state`` / ``set_extra_state`` carry Lambda and its optimizer
        state, unless its class already provides them.
        """
        from ..models.base import Objective

        if self.learn and (valid is None or valid.nnz == 0):
            raise ConfigError("LearnedL2 learns Lambda on validation ratings: pass a non-empty valid set to bind()")
        if valid is not None and tuple(valid.shape) != (objective.m, objective.n):
            raise ConfigError(f"the validation set has shape {tuple(valid.shape)}, the objective "
                              f"({objective.m}, {objective.n}): split both from the same data")
        self.objective = obj = objective
        m, n, f = obj.m, obj.n, obj.f
        self.use_bias = bool(obj.use_bias)
        cu, ci = obj.train.user_counts(), obj.train.item_counts()
        self.counts = (np.asarray(cu, dtype=np.float64), np.asarray(ci, dtype=np.float64))
        self.s = (self._row_scale(self.scale, cu), self._row_scale(self.scale, ci))
        self.sb = (self._row_scale(self.bias_scale, cu), self._row_scale(self.bias_scale, ci))
        vals = np.asarray(obj.train.values, dtype=np.float64)
        self.sigma = float(vals.std()) if vals.std() > 0 else 1.0
        self.layout = LambdaLayout(self.granularity, m, n, f)
        self.nb = {"global": 1, "side": 2, "row": m + n}[self.bias] if self.use_bias else 0
        lam, lam_b = self._init_values(self.sigma)
        self.init_values = (lam, lam_b)
        self.theta = np.concatenate([np.full(self.layout.size, math.log(lam)),
                                     np.full(self.nb, math.log(lam_b))])
        lo = np.full_like(self.theta, math.log(self.lam_min))
        hi = np.full_like(self.theta, math.log(self.lam_max))
        if self.band is not None:
            lo = np.maximum(lo, self.theta - math.log(self.band))
            hi = np.minimum(hi, self.theta + math.log(self.band))
        self._lo, self._hi = lo, hi
        self.adam_m = np.zeros_like(self.theta)
        self.adam_v = np.zeros_like(self.theta)
        self.count = np.zeros(self.theta.shape[0], dtype=np.int64)
        self.valid = valid
        self.rng = np.random.default_rng(self.seed)
        self.trajectory = []
        self._x = None
        self._E = None
        self._started = False
        self._prev_lval = None
        self._valid_all = None
        if valid is not None:
            # entries of users / items without training entries are predicted from the
            # fallback (their factors never train, and H is singular there): left out
            vu, vi = np.asarray(valid.users, np.int64), np.asarray(valid.items, np.int64)
            seen = (self.counts[0][vu] > 0) & (self.counts[1][vi] > 0)
            if self.learn and not seen.any():
                raise ConfigError("no validation rating has both its user and its item in the training set")
            self._valid_all = (vu[seen], vi[seen], np.asarray(valid.values, np.float64)[seen])
        self._train = (np.asarray(obj.train.users, np.int64), np.asarray(obj.train.items, np.int64),
                       np.asarray(obj.train.values, np.float64))
        self._buckets = None
        self.install()
        # the objective's hooks (the lead may move these into LFObjective itself)
        if type(obj).extra_state is Objective.extra_state:
            obj.extra_state = self.state
            obj.set_extra_state = self.set_state
        if not hasattr(type(obj), "after_epoch"):
            obj.after_epoch = self.after_epoch
        return self

    def _check_bound(self):
        if self.theta is None:
            raise ConfigError("LearnedL2 is not bound to an objective: call bind(objective, valid) first")

    # ------------------------------------------------------------- Lambda views
    @property
    def lam(self) -> np.ndarray:
        """The factors' Lambda (flat, :class:`LambdaLayout` order)."""
        self._check_bound()
        return np.exp(self.theta[: self.layout.size])

    @property
    def lam_bias(self) -> np.ndarray:
        """The biases' Lambda: (1,) global, (2,) [users, items] for ``side``, (m + n,) for ``row``."""
        self._check_bound()
        return np.exp(self.theta[self.layout.size:])

    def _bias_views(self, lb):
        m, n = self.layout.n_users, self.layout.n_items
        if self.nb == 0:
            return np.zeros(m), np.zeros(n)
        if self.bias == "global":
            return np.broadcast_to(lb[:1], (m,)), np.broadcast_to(lb[:1], (n,))
        if self.bias == "side":
            return np.broadcast_to(lb[:1], (m,)), np.broadcast_to(lb[1:2], (n,))
        return lb[:m], lb[m:]

    def weights64(self):
        """``(Wbu, Wbi, WP, WQ)``: every coordinate's weight (float64, full block shapes)."""
        lu, li = self.layout.expand(self.lam)
        WP = lu * self.s[0][:, None]
        WQ = li * self.s[1][:, None]
        lbu, lbi = self._bias_views(self.lam_bias)
        Wbu = lbu * self.sb[0]
        Wbi = lbi * self.sb[1]
        if not self.use_bias:
            Wbu, Wbi = np.zeros(0), np.zeros(0)
        return Wbu, Wbi, WP, WQ

    def weights(self):
        """The objective's ``(wu, wi, wbu, wbi)`` (float32): 1-D factor weights for ``global``,
        (m, f) / (n, f) otherwise."""
        self._check_bound()
        f32 = np.float32
        lam = self.lam
        if self.granularity == "global":
            wu = np.asarray(lam[0] * self.s[0], f32)
            wi = np.asarray(lam[0] * self.s[1], f32)
        else:
            lu, li = self.layout.expand(lam)
            wu = np.ascontiguousarray(lu * self.s[0][:, None], dtype=f32)
            wi = np.ascontiguousarray(li * self.s[1][:, None], dtype=f32)
        lbu, lbi = self._bias_views(self.lam_bias)
        wbu = np.asarray(lbu * self.sb[0], f32)
        wbi = np.asarray(lbi * self.sb[1], f32)
        return wu, wi, wbu, wbi

    def install(self) -> None:
        """Hand the current weights to the bound objective."""
        self.objective.set_row_weights(*self.weights())

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        """Lambda (log) and its Adam state: what early stopping saves and restores."""
        if self.theta is None:
            return {}
        return {"lambda_log": self.theta, "lambda_m": self.adam_m, "lambda_v": self.adam_v,
                "lambda_count": self.count}

    def set_state(self, state: dict) -> None:
        for key, attr in (("lambda_log", "theta"), ("lambda_m", "adam_m"), ("lambda_v", "adam_v"),
                          ("lambda_count", "count")):
            if key in state:
                getattr(self, attr)[...] = np.asarray(state[key])
            elif attr == "theta":
                raise KeyError("LearnedL2 state needs 'lambda_log'")
        unknown = set(state) - {"lambda_log", "lambda_m", "lambda_v", "lambda_count"}
        if unknown:
            raise KeyError(f"LearnedL2 has no state {sorted(unknown)}")
        if self.objective is not None:
            self.install()

    # ------------------------------------------------------- hyper-gradients
    def reduce(self, hW) -> np.ndarray:
        """d l / d Lambda (flat, like :attr:`theta`) from the per-coordinate d l / dW:
        times the row scale, summed over the coordinates sharing each Lambda entry."""
        lay = self.layout
        hbu, hbi, hP, hQ = hW
        out = np.zeros_like(self.theta)

        def fold(h, shape):
            if shape[0] == 1:
                h = h.sum(axis=0, keepdims=True)
            if shape[1] == 1:
                h = h.sum(axis=1, keepdims=True)
            return h

        gu = fold(hP * self.s[0][:, None], lay.user_shape)
        gi = fold(hQ * self.s[1][:, None], lay.item_shape)
        nu = int(np.prod(lay.user_shape))
        if lay.shared:
            out[:nu] = (gu + gi).ravel()
        else:
            out[:nu] = gu.ravel()
            out[nu:lay.size] = gi.ravel()
        if self.nb:
            bu_ = hbu * self.sb[0]
            bi_ = hbi * self.sb[1]
            base = lay.size
            if self.bias == "global":
                out[base] = bu_.sum() + bi_.sum()
            elif self.bias == "side":
                out[base] = bu_.sum()
                out[base + 1] = bi_.sum()
            else:
                out[base:base + len(bu_)] = bu_
                out[base + len(bu_):] = bi_
        return out

    def _params64(self, y):
        yn = self.objective.backend.to_numpy(y).astype(np.float64)
        return tuple(self.objective.layout.unpack(yn))

    def _alpha_full(self):
        m, n = self.layout.n_users, self.layout.n_items
        return np.ones(m), np.ones(n)

    def lookahead_step_inputs(self, optimizer, epoch: int, y):
        """What the look-ahead of the optimizer's next step needs: (kind, dict of keyword
        arguments of :func:`lookahead_hypergrad` except params / W / batches, batch size)."""
        obj = self.objective
        base = _unwrap(optimizer)
        kind = _optimizer_kind(optimizer)
        nnz = obj.nnz
        if kind == "sgd":
            # "epoch": an epoch of per-entry steps of size eta moves y by about eta times the
            # full summed gradient, so the next epoch is simulated as one full-batch step
            bs = nnz if self.sgd_horizon == "epoch" else (self.train_batch_size or _batch_size_of(base, nnz))
            lr = base.lr * base.decay ** epoch  # the next epoch's step
            return kind, {"lr": lr, "scale": 1.0}, bs
        st = getattr(base, "_state", None)
        bs = self.train_batch_size or _batch_size_of(base, nnz)
        kw = {"lr": base.lr, "beta1": base.beta1, "beta2": base.beta2, "eps": base.eps,
              "scale": 1.0 if bs >= nnz else nnz / bs}
        if kind == "adago":
            kw["damping"] = float(np.float32(base.damping))
        if st is None:
            z = tuple(np.zeros_like(b) for b in self._params64(y))
            kw.update(moments=(z, z), t=0)
        else:
            mm = self._params64(st["m"])
            ss = self._params64(st["s"])
            kw.update(moments=(mm, ss), t=int(st["t"]))
        return kind, kw, bs

    def _train_residual_matrix(self, y):
        """The training residuals r - r_hat(y) as a scipy CSR matrix (float64; predictions by the
        objective's kernel, the sparsity structure built once)."""
        import scipy.sparse as sp

        obj = self.objective
        if self._E is None:
            csr = obj.train.csr
            rows = np.repeat(np.arange(obj.m, dtype=np.int32), np.diff(csr.indptr))
            self._E = sp.csr_matrix((np.asarray(csr.data, np.float64), csr.indices, csr.indptr),
                                    shape=(obj.m, obj.n))
            self._E_rc = (rows, csr.indices, np.asarray(csr.data, np.float64))
        rows, cols, vals = self._E_rc
        pred = obj.backend.to_numpy(obj.predict(y, rows, cols))
        self._E.data[:] = vals - pred
        return self._E

    def _sample(self, k: int, total: int):
        if k >= total:
            return np.arange(total)
        return self.rng.choice(total, size=k, replace=False)

    def lookahead_grad(self, y, optimizer, epoch: int):
        """One look-ahead hyper-gradient (d l / d theta) from fresh batches; returns (l_valid, grad)."""
        obj = self.objective
        kind, kw, bs = self.lookahead_step_inputs(optimizer, epoch, y)
        params = self._params64(y)
        tu, ti, tr = self._train
        if bs >= obj.nnz:
            tb = (tu, ti, tr)
            alpha = self._alpha_full()
        else:
            sel = self._sample(bs, obj.nnz)
            tb = (tu[sel], ti[sel], tr[sel])
            m, n = self.layout.n_users, self.layout.n_items
            alpha = (np.bincount(tb[0], minlength=m) / np.maximum(self.counts[0], 1),
                     np.bincount(tb[1], minlength=n) / np.maximum(self.counts[1], 1))
        vu, vi, vr = self._valid_all
        full = bs >= obj.nnz and kind == "sgd"
        vsel = self._sample(len(vu) if full else (self.valid_batch_size or len(vu)), len(vu))
        vb = (vu[vsel], vi[vsel], vr[vsel])
        l_val, hW, _ = lookahead_hypergrad(kind, obj.mu, params, self.weights64(), alpha, tb, vb,
                                           use_bias=self.use_bias, norm=self.sigma ** 2, **kw)
        return l_val, self.reduce(hW) * np.exp(self.theta)

    def implicit_grad(self, y):
        """The implicit hyper-gradient (d l / d theta) at y over the whole validation set; returns
        (l_valid, grad, cg iterations, relative residual)."""
        obj = self.objective
        params = self._params64(y)
        l_val, a = _valid_loss_grad(obj.mu, params, self._valid_all, self.use_bias, self.sigma ** 2)
        E = None
        if self.hessian == "exact":
            E = self._train_residual_matrix(y)
        x0 = self._x
        if x0 is not None and tuple(x0.shape) != (obj.size,):
            x0 = None
        hW, self._x, its, rel = implicit_hypergrad(obj, y, a, x0, self.cg_iters, self.cg_tol, self.hessian, E)
        return l_val, self.reduce(hW) * np.exp(self.theta), its, rel

    def _adam(self, grad, lr: float, beta1: float) -> int:
        """One lazy Adam step (step size ``lr``, momentum ``beta1``) on theta over the entries with
        a non-zero, finite gradient; returns how many entries moved."""
        idx = np.flatnonzero((grad != 0) & np.isfinite(grad))
        if not len(idx) or lr == 0:
            return 0
        g = grad[idx]
        b1, b2 = beta1, self.beta2
        self.count[idx] += 1
        k = self.count[idx]
        self.adam_m[idx] = b1 * self.adam_m[idx] + (1 - b1) * g
        self.adam_v[idx] = b2 * self.adam_v[idx] + (1 - b2) * g * g
        mh = self.adam_m[idx] / (1 - b1 ** k)
        vh = self.adam_v[idx] / (1 - b2 ** k)
        step = mh / (np.sqrt(vh) + 1e-30)
        self.theta[idx] = np.clip(self.theta[idx] - lr * step, self._lo[idx], self._hi[idx])
        return len(idx)

    def plan(self, optimizer) -> tuple[str, int, float, float]:
        """(method, hyper-steps, step size, momentum) after an epoch of ``optimizer``:
        ``"implicit"`` (one step of ``lr_epoch``, ``beta1_epoch``), ``"lookahead"`` of sgd's
        next epoch (the same: it is deterministic) or of adam's / adago's next mini-batch
        step (``hyper_steps`` steps of ``lr``, ``beta1``, fresh batches each)."""
        kind = _optimizer_kind(optimizer)
        if self.method == "implicit" or (self.method == "auto" and kind == "implicit"):
            return "implicit", 1, self.lr_epoch, self.beta1_epoch
        if kind == "sgd" and self.sgd_horizon == "epoch":
            return "lookahead", self.hyper_steps or 1, self.lr_epoch, self.beta1_epoch
        return "lookahead", self.hyper_steps or 10, self.lr, self.beta1

    def valid_loss(self, y) -> float:
        """1/2 mean(e^2) / sigma^2 over the validation entries (those with a trained user and item)."""
        params = self._params64(y)
        e = _residuals(self.objective.mu, params, *self._valid_all, self.use_bias)
        return 0.5 * float(e @ e) / (max(len(e), 1) * self.sigma ** 2)

    def _active(self, y, epoch: int) -> bool:
        """Whether to take hyper-steps after this epoch: after ``warmup`` epochs, or with
        ``warmup="auto"`` from the first epoch whose validation loss improved on the previous
        one's by less than ``warmup_tol`` (relative), for good.  Before that the model is
        in its fast underfit phase, where the validation gradient asks for larger factors
        whatever the penalty (a short-horizon signal that pulls every Lambda down)."""
        if self.warmup != "auto":
            return epoch > self.warmup
        if not self._started:
            l_now = self.valid_loss(y)
            prev, self._prev_lval = self._prev_lval, l_now
            if prev is not None and not l_now < prev * (1.0 - self.warmup_tol):
                self._started = True
        return self._started

    def after_epoch(self, y, optimizer, epoch: int) -> dict:
        """The trainer's hook: learn Lambda after an epoch, install it, and report it.

        First-order optimizers: ``hyper_steps`` look-ahead steps (fresh batches each);
        others (or ``method="implicit"``): one implicit step.  Returns the history
        row's additions: the validation loss the hyper-gradient saw and Lambda's
        statistics (``lam_user_mean``, ``lam_user_p5`` ... ``lam_item_p95``, the
        biases' ``lam_bu_mean`` / ``lam_bi_mean``)."""
        self._check_bound()
        t0 = time.perf_counter()
        info = {}
        if self.learn and self._active(y, epoch):
            method, steps, lr, b1 = self.plan(optimizer)
            if method == "implicit":
                l_val, grad, its, rel = self.implicit_grad(y)
                moved = self._adam(grad, lr, b1)
                info.update(hyper_cg_iters=its, hyper_cg_residual=rel)
            else:
                ls = []
                moved = 0
                for _ in range(steps):
                    l_val, grad = self.lookahead_grad(y, optimizer, epoch)
                    moved = max(moved, self._adam(grad, lr, b1))
                    ls.append(l_val)
                l_val = float(np.mean(ls))
            self.install()
            info.update(hyper_valid_mse=l_val * self.sigma ** 2 * 2.0, hyper_steps=steps, hyper_moved=moved)
        summary = self.summary()
        self.trajectory.append({"epoch": epoch, **summary})
        info.update(self.flat_summary(summary))
        info["hyper_seconds"] = time.perf_counter() - t0
        return info

    # -------------------------------------------------------------- reports
    def summary(self) -> dict:
        """:func:`~lfopt.regularizers.lambda_opt.lambda_summary` of the factors' Lambda (with
        activity buckets for per-row granularities) plus the biases' Lambda stats."""
        self._check_bound()
        if self._buckets is None:
            from ..eval.ranking import activity_buckets

            self._buckets = (activity_buckets(self.counts[0].astype(np.int64)),
                             activity_buckets(self.counts[1].astype(np.int64)))
        out = lambda_summary(self.layout, self.lam, user_buckets=self._buckets[0], item_buckets=self._buckets[1])
        if self.nb:
            lbu, lbi = self._bias_views(self.lam_bias)
            out["bias_user"] = _stats(lbu)
            out["bias_item"] = _stats(lbi)
        return out

    @staticmethod
    def flat_summary(summary: dict) -> dict:
        """Numbers for a history row: ``lam_user_mean``, ``lam_user_p50``, ..., ``lam_bu_mean``."""
        out = {}
        for side in ("user", "item"):
            for k, v in summary[side].items():
                out[f"lam_{side}_{k}"] = v
        for side, key in (("bias_user", "bu"), ("bias_item", "bi")):
            if side in summary:
                out[f"lam_{key}_mean"] = summary[side]["mean"]
        return out

    def plot(self, path, title: str = "", overwrite: bool = True):
        """Lambda's trajectory (mean, median, 5-95 / 25-75 bands; activity buckets) as a PNG."""
        from ..ranking.plots import plot_lambda

        if not self.trajectory:
            raise ConfigError("no Lambda trajectory yet: train with this regularizer first")
        return plot_lambda(self.trajectory, path, title=title or f"learned Lambda ({self.granularity})",
                           overwrite=overwrite)


def plot_lambda_trajectory(trajectory: list, path, title: str = "", overwrite: bool = True):
    """Plot a :attr:`LearnedL2.trajectory` (a list of ``{"epoch", "user", "item", ...}``)."""
    from ..ranking.plots import plot_lambda

    return plot_lambda(trajectory, path, title=title, overwrite=overwrite)
