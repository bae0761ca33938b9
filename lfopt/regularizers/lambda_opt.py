"""Fine-grained regularization Lambda of lambdaOpt (METHODS.md section 4): layout and trajectory.

Granularities (f latent dimensions, m users, n items):

=========  =====================================================  ==========
name       Lambda                                                  size
=========  =====================================================  ==========
``global``  one lambda for every parameter                          1
``D``       one lambda per dimension, shared by users and items     f
``DU``      per (user, dimension) for users, per dimension for items  m f + f
``DI``      per dimension for users, per (item, dimension) for items  f + n f
``DUI``     per (user, dimension) and per (item, dimension)          m f + n f
=========  =====================================================  ==========

Lambda is stored flat; :class:`LambdaLayout` maps (user u, dimension d) and
(item i, dimension d) to positions ``base + row * row_stride + d * col_stride``,
the form the kernels of :mod:`lfopt.kernels.bpr` read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError


GRANULARITIES = ("global", "D", "DU", "DI", "DUI")
PERCENTILES = (5, 25, 50, 75, 95)


def check_granularity(name: str) -> str:
    """The canonical spelling of a granularity name (case-insensitive), or a ConfigError."""
    for g in GRANULARITIES:
        if str(name).lower() == g.lower():
            return g
    raise ConfigError(f"unknown granularity {name!r}; expected one of {', '.join(GRANULARITIES)}")


@dataclass(frozen=True)
class LambdaLayout:
    """Where each (row, dimension) of each side finds its lambda in the flat Lambda."""

    granularity: str
    n_users: int
    n_items: int
    rank: int

    @property
    def per_user(self) -> bool:
        return self.granularity in ("DU", "DUI")

    @property
    def per_item(self) -> bool:
        return self.granularity in ("DI", "DUI")

    @property
    def shared(self) -> bool:
        """Users and items read the same entries (global, D)."""
        return self.granularity in ("global", "D")

    @property
    def user_shape(self) -> tuple[int, int]:
        if self.granularity == "global":
            return (1, 1)
        return (self.n_users if self.per_user else 1, self.rank)

    @property
    def item_shape(self) -> tuple[int, int]:
        if self.granularity == "global":
            return (1, 1)
        return (self.n_items if self.per_item else 1, self.rank)

    @property
    def size(self) -> int:
        if self.shared:
            return int(np.prod(self.user_shape))
        return int(np.prod(self.user_shape) + np.prod(self.item_shape))

    def lam_map(self) -> np.ndarray:
        """(base_u, su_row, su_col, base_i, si_row, si_col) for the kernels."""
        f = self.rank
        col = 0 if self.granularity == "global" else 1
        su_row = f if self.per_user else 0
        si_row = f if self.per_item else 0
        base_i = 0 if self.shared else int(np.prod(self.user_shape))
        return np.array([0, su_row, col, base_i, si_row, col], dtype=np.int64)

    def init(self, value: float) -> np.ndarray:
        return np.full(self.size, value, dtype=np.float32)

    def user_view(self, lam: np.ndarray) -> np.ndarray:
        """The users' Lambda as an array of shape ``user_shape`` (a view)."""
        return lam[: int(np.prod(self.user_shape))].reshape(self.user_shape)

    def item_view(self, lam: np.ndarray) -> np.ndarray:
        """The items' Lambda as an array of shape ``item_shape`` (a view)."""
        start = 0 if self.shared else int(np.prod(self.user_shape))
        return lam[start : start + int(np.prod(self.item_shape))].reshape(self.item_shape)

    def expand(self, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Full (m x f) and (n x f) arrays of the lambda applied to every user / item parameter."""
        lu = np.broadcast_to(self.user_view(lam), (self.n_users, self.rank))
        li = np.broadcast_to(self.item_view(lam), (self.n_items, self.rank))
        return lu, li


def _stats(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=np.float64).ravel()
    out = {"mean": float(x.mean()), "min": float(x.min()), "max": float(x.max())}
    for p, v in zip(PERCENTILES, np.percentile(x, PERCENTILES)):
        out[f"p{p}"] = float(v)
    return out


def lambda_summary(layout: LambdaLayout, lam: np.ndarray, user_counts=None, item_counts=None,
                   user_buckets=None, item_buckets=None) -> dict:
    """Mean / min / max / percentiles of the lambdas applied to users and items, the
    per-dimension means, and (for per-row granularities) the mean lambda of each
    user / item activity bucket (buckets from :func:`activity_buckets`)."""
    uv = layout.user_view(lam)
    iv = layout.item_view(lam)
    out = {"user": _stats(uv), "item": _stats(iv)}
    if layout.granularity != "global":
        out["user_per_dim"] = uv.mean(axis=0).astype(float).tolist()
        out["item_per_dim"] = iv.mean(axis=0).astype(float).tolist()
    for side, view, per_row, buckets in (("user", uv, layout.per_user, user_buckets),
                                         ("item", iv, layout.per_item, item_buckets)):
        if per_row and buckets is not None:
            idx, ranges = buckets
            row_mean = view.mean(axis=1)
            out[f"{side}_by_activity"] = [
                {"count_range": list(r), "n": int((idx == k).sum()), "mean": float(row_mean[idx == k].mean())}
                for k, r in enumerate(ranges)
            ]
    return out


class LambdaOpt:
    """lambdaOpt's regularizer: Lambda at a granularity, fixed or learned on validation data.

    The penalty of a mini-batch is ``sum over occurrences of a row r of Lambda_r * theta_r^2``
    (METHODS.md section 4).  With ``learn=False`` Lambda stays at ``init`` (MF-lambdaFix is
    ``LambdaOpt("global", lam, learn=False)``); with ``learn=True`` every training step is
    followed by a hyper-gradient step on Lambda (:meth:`hyper_step`, or fused inside a
    backend's BPR kernel), Lambda's own lazy Adam with learning rate ``lr``, projected
    onto Lambda >= 0.  Lambda and its optimizer state are learned state, saved with the
    model and restored with the best epoch.

    >>> reg = LambdaOpt("DU", init=0.1, learn=True)
    >>> reg.bind(n_users=3, n_items=2, rank=4)
    >>> reg.lam.shape, reg.user_view().shape, reg.item_view().shape
    ((16,), (3, 4), (1, 4))
    """

    name = "lambdaopt"

    def __init__(self, granularity: str = "DUI", init: float = 0.0, learn: bool = True, lr: float = 1e-3):
        self.granularity = check_granularity(granularity)
        if not np.isfinite(init) or init < 0:
            raise ConfigError(f"the initial lambda must be a finite number >= 0, got {init!r}")
        if not np.isfinite(lr) or lr < 0:
            raise ConfigError(f"lambda's learning rate must be a finite number >= 0, got {lr!r}")
        self.init = float(init)
        self.learn = bool(learn)
        self.lr = float(lr)
        self.layout = None
        self.lam = None

    def get_params(self) -> dict:
        return {"granularity": self.granularity, "init": self.init, "learn": self.learn, "lr": self.lr}

    def bind(self, n_users: int, n_items: int, rank: int) -> None:
        """Size Lambda for a model and reset it (and its optimizer state) to ``init``."""
        self.layout = LambdaLayout(self.granularity, n_users, n_items, rank)
        self.lam = self.layout.init(self.init)
        self.m = np.zeros_like(self.lam)
        self.v = np.zeros_like(self.lam)
        self.count = np.zeros(self.lam.shape[0], dtype=np.int64)

    def user_view(self):
        return self.layout.user_view(self.lam)

    def item_view(self):
        return self.layout.item_view(self.lam)

    def state(self) -> dict:
        return {"lambda": self.lam, "lambda_m": self.m, "lambda_v": self.v, "lambda_count": self.count}

    def set_state(self, state: dict) -> None:
        for key, attr in (("lambda", "lam"), ("lambda_m", "m"), ("lambda_v", "v"), ("lambda_count", "count")):
            if key in state:
                getattr(self, attr)[...] = state[key]

    def hyper_step(self, parts, beta1=0.9, beta2=0.999, eps=1e-8, grad_out=None) -> None:
        """One Lambda step from the rows of one training step (the composed path, numpy).

        ``parts`` is a list of ``(side, rows, a, dtheta_dG, occurrences, theta_old)``, one
        per side ("user", "item"): ``rows`` (r,) the rows the step updated, ``a`` (r, f)
        the validation loss's gradient at the new parameters, ``dtheta_dG`` (r, f) the
        derivative of the new theta with respect to the regularized gradient G (-lr for
        SGD), ``occurrences`` (r,) each row's count in the training batch and
        ``theta_old`` (r, f) the rows before the step.  d l_val / d Lambda_(r,d) =
        a dtheta_dG 2 n_r theta_old, summed over everything sharing a Lambda entry;
        then one lazy Adam step per touched entry, projected onto Lambda >= 0.  The
        fused kernels compute exactly this (tests/test_bpr_composed.py).
        """
        if not self.learn:
            return
        lam_map = self.layout.lam_map()
        f = self.layout.rank
        total = np.zeros(self.lam.shape[0], dtype=np.float32)
        touched = []
        for side, rows, a, dtheta_dG, occurrences, theta_old in parts:
            base, srow, scol = lam_map[:3] if side == "user" else lam_map[3:]
            g = a * dtheta_dG * (np.float32(2.0) * np.asarray(occurrences, np.float32)[:, None]) * theta_old
            idx = (base + np.asarray(rows, np.int64)[:, None] * srow + np.arange(f)[None, :] * scol).ravel()
            np.add.at(total, idx, g.ravel().astype(np.float32))
            touched.append(idx)
        if not touched:
            return
        idx = np.unique(np.concatenate(touched))
        if grad_out is not None:
            grad_out[idx] += total[idx]
        self._adam(idx, total[idx], np.float32(beta1), np.float32(beta2), np.float32(eps))

    def _adam(self, idx, g, beta1, beta2, eps):
        one = np.float32(1.0)
        self.count[idx] += 1
        k = self.count[idx]
        m = beta1 * self.m[idx] + (one - beta1) * g
        v = beta2 * self.v[idx] + (one - beta2) * g * g
        self.m[idx] = m
        self.v[idx] = v
        bc1 = (one - beta1 ** k.astype(np.float32)).astype(np.float32)
        bc2 = (one - beta2 ** k.astype(np.float32)).astype(np.float32)
        new = self.lam[idx] - np.float32(self.lr) * (m / bc1) / (np.sqrt(v / bc2) + eps)
        self.lam[idx] = np.maximum(new, 0).astype(np.float32)
