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
from ..eval.ranking import activity_buckets  # noqa: F401  (re-exported)

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
