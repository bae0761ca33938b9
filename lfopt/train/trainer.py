"""The training loop shared by every optimizer.

Runs epochs, evaluates on a validation set after each, stops early on the
validation RMSE (restoring the best parameters), detects divergence (keeping
the last good parameters), records a history and prints progress.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import ConfigError


@dataclass
class TrainResult:
    history: list = field(default_factory=list)
    best_epoch: int = 0
    best_valid_rmse: float = math.nan
    stopped: str = "max_epochs"  # max_epochs | early_stop | diverged | converged
    message: str = ""
    seconds: float = 0.0


class Trainer:
    """Run ``optimizer`` on ``objective`` for up to ``epochs`` epochs.

    ``evaluate(y) -> {"rmse": .., "mae": ..}`` scores the validation set (or is
    None).  ``patience`` epochs without an improvement of the validation RMSE
    by ``min_delta`` (relative) stop training; the best parameters are then
    restored.  A non-finite loss, or one above ``divergence_factor`` times the
    initial loss, stops training with the last good parameters kept.
    """

    def __init__(self, epochs: int = 40, patience: int | None = 5, min_delta: float = 1e-4,
                 verbose: bool = True, divergence_factor: float = 1e3, stream=None,
                 callback: Callable | None = None):
        if int(epochs) != epochs or epochs < 1:
            raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
        if patience is not None and patience < 1:
            raise ConfigError(f"patience must be >= 1 or None, got {patience!r}")
        self.epochs = int(epochs)
        self.patience = patience
        self.min_delta = float(min_delta)
        self.verbose = verbose
        self.divergence_factor = float(divergence_factor)
        self.stream = stream or sys.stderr
        self.callback = callback

    def _say(self, text: str) -> None:
        if self.verbose:
            print(text, file=self.stream, flush=True)

    def run(self, objective, optimizer, y: np.ndarray, evaluate: Callable | None = None) -> TrainResult:
        res = TrainResult()
        loss0 = objective.loss(y)
        if not np.isfinite(loss0):
            raise ConfigError("the initial loss is not finite: check the data and init_scale")
        last_good = y.copy()
        best = y.copy() if evaluate is not None else None
        best_rmse = math.inf
        since_best = 0
        elapsed = 0.0
        self._say(f"training {optimizer.name} on {objective.nnz} entries, {objective.size} parameters")
        start_all = time.perf_counter()
        for epoch in range(1, self.epochs + 1):
            t0 = time.perf_counter()
            info = optimizer.epoch(objective, y, epoch) or {}
            step_seconds = time.perf_counter() - t0
            elapsed += step_seconds
            loss = objective.loss(y)
            row = {"epoch": epoch, "train_loss": float(loss), "seconds": elapsed, "epoch_seconds": step_seconds}
            row["train_rmse"] = float(np.sqrt(objective.last_sse / objective.nnz)) if np.isfinite(loss) else math.nan
            if not np.isfinite(loss) or loss > self.divergence_factor * max(loss0, 1e-12):
                y[:] = last_good
                res.stopped = "diverged"
                res.message = (
                    f"training diverged at epoch {epoch} ({optimizer.name}: loss {loss:.4g}, initial "
                    f"{loss0:.4g}); kept the parameters of epoch {epoch - 1}. Lower the learning rate "
                    f"or raise the regularization."
                )
                row["diverged"] = True
                res.history.append(row)
                self._say(res.message)
                break
            last_good[:] = y
            if evaluate is not None:
                metrics = evaluate(y)
                row.update({f"valid_{k}": float(v) for k, v in metrics.items()})
                rmse = metrics["rmse"]
                if rmse < best_rmse * (1.0 - self.min_delta):
                    best_rmse = rmse
                    res.best_epoch = epoch
                    best[:] = y
                    since_best = 0
                else:
                    since_best += 1
            for k, v in info.items():
                if isinstance(v, (int, float, np.floating, np.integer)):
                    row[k] = float(v)
            if self.callback is not None:
                self.callback(row, y)
            res.history.append(row)
            self._say(_progress_line(row))
            if self.patience is not None and evaluate is not None and since_best >= self.patience:
                res.stopped = "early_stop"
                break
        if evaluate is not None and best is not None and res.best_epoch > 0:
            if res.best_epoch != res.history[-1]["epoch"] or res.stopped == "diverged":
                y[:] = best
            res.best_valid_rmse = best_rmse
        res.seconds = time.perf_counter() - start_all
        if res.stopped == "early_stop":
            self._say(f"early stop: best validation RMSE {best_rmse:.4f} at epoch {res.best_epoch} (restored)")
        return res


def _progress_line(row: dict) -> str:
    parts = [f"epoch {row['epoch']:3d}", f"loss {row['train_loss']:.5g}", f"train_rmse {row['train_rmse']:.4f}"]
    if "valid_rmse" in row:
        parts.append(f"valid_rmse {row['valid_rmse']:.4f}")
    if "valid_mae" in row:
        parts.append(f"valid_mae {row['valid_mae']:.4f}")
    if "test_rmse" in row:
        parts.append(f"test_rmse {row['test_rmse']:.4f}")
    parts.append(f"{row['seconds']:.2f}s")
    return "  ".join(parts)
