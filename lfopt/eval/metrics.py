"""Rating-prediction metrics and the policy for users/items unseen in training.

Policy for held-out entries whose user or item has no training entry
("unseen"): ``unseen="bias"`` (default) keeps them and predicts from what is
known, the global mean plus the bias of the seen side (the factors of an
unseen row were never trained); ``unseen="drop"`` leaves them out of the
metrics.  Either way their number is reported as ``n_unseen``.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

UNSEEN_POLICIES = ("bias", "drop")


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    diff = np.asarray(pred, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return float(np.sqrt(np.mean(diff * diff))) if diff.size else float("nan")


def mae(pred: np.ndarray, truth: np.ndarray) -> float:
    diff = np.asarray(pred, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return float(np.mean(np.abs(diff))) if diff.size else float("nan")


def rating_metrics(pred: np.ndarray, truth: np.ndarray, unseen: np.ndarray | None = None,
                   policy: str = "bias") -> dict:
    """RMSE and MAE of ``pred`` against ``truth`` with the unseen-entry policy applied.

    ``pred`` must already hold the fallback prediction for unseen entries.
    """
    if policy not in UNSEEN_POLICIES:
        raise ConfigError(f"unseen policy must be one of {UNSEEN_POLICIES}, got {policy!r}")
    n_unseen = int(unseen.sum()) if unseen is not None else 0
    if policy == "drop" and unseen is not None:
        keep = ~unseen
        pred, truth = pred[keep], truth[keep]
    return {"rmse": rmse(pred, truth), "mae": mae(pred, truth), "n": int(len(truth)), "n_unseen": n_unseen,
            "n_dropped": n_unseen if policy == "drop" else 0}
