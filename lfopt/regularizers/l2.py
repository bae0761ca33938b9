"""Count-weighted L2 (METHODS.md section 2), with an optional constant part."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError


def _coefficient(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}") from None
    if not np.isfinite(v) or v < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


class L2:
    """L2 penalty whose weight on each row grows with its number of training entries.

    Row u's factors get weight ``lam * n_u + lam0`` and its bias ``lam_b * n_u + lam0_b``
    (``lam_b`` defaults to ``lam``, ``lam0_b`` to ``lam0``).  With ``lam0 = 0`` (the
    default) this is the count-weighted objective of METHODS.md section 2, the one
    per-entry SGD with penalty ``lam`` on every visit minimizes.

    >>> wu, wi, wbu, wbi = L2(0.1, lam_b=0.0).row_weights(np.array([2, 0]), np.array([1]))
    >>> wu.tolist(), wi.tolist(), wbu.tolist()
    ([0.20000000298023224, 0.0], [0.10000000149011612], [0.0, 0.0])
    """

    name = "l2"

    def __init__(self, lam: float, lam_b: float | None = None, lam0: float = 0.0, lam0_b: float | None = None):
        self.lam = _coefficient("lambda", lam)
        self.lam_b = self.lam if lam_b is None else _coefficient("lambda_b", lam_b)
        self.lam0 = _coefficient("lam0", lam0)
        self.lam0_b = self.lam0 if lam0_b is None else _coefficient("lam0_b", lam0_b)

    def __repr__(self) -> str:
        extra = f", lam0={self.lam0}, lam0_b={self.lam0_b}" if (self.lam0 or self.lam0_b) else ""
        return f"L2(lam={self.lam}, lam_b={self.lam_b}{extra})"

    def get_params(self) -> dict:
        return {"lam": self.lam, "lam_b": self.lam_b, "lam0": self.lam0, "lam0_b": self.lam0_b}

    def row_weights(self, user_counts, item_counts):
        """Per-row weights ``(wu, wi, wbu, wbi)`` as float32 arrays (lengths m, n, m, n).

        Computed as float32 products, so ``lam * n_u`` is exactly what the kernels
        computed from a scalar ``lam`` before weights existed.
        """
        f32 = np.float32
        cu = np.asarray(user_counts).astype(f32)
        ci = np.asarray(item_counts).astype(f32)
        out = []
        for lam, lam0 in ((self.lam, self.lam0), (self.lam_b, self.lam0_b)):
            for c in (cu, ci):
                w = f32(lam) * c
                if lam0:
                    w = w + f32(lam0)
                out.append(np.ascontiguousarray(w, dtype=f32))
        wu, wi, wbu, wbi = out
        return wu, wi, wbu, wbi

    def visit_weights(self, user_counts, item_counts):
        """Per-visit coefficients ``(vu, vi, vbu, vbi)``: the row weights divided by the row
        counts (``lam + lam0 / n_u``; 0 for rows without entries, which are never visited).

        Computed directly, so that with ``lam0 = 0`` every visited row gets exactly
        ``float32(lam)`` (per-entry kernels then take their uniform fast path).
        """
        f32 = np.float32
        out = []
        for lam, lam0 in ((self.lam, self.lam0), (self.lam_b, self.lam0_b)):
            for c in (np.asarray(user_counts), np.asarray(item_counts)):
                v = np.where(c > 0, lam + lam0 / np.maximum(c, 1), 0.0)
                out.append(np.ascontiguousarray(v, dtype=f32))
        vu, vi, vbu, vbi = out
        return vu, vi, vbu, vbi
