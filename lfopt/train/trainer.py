"""The one training loop of every model.

Runs an optimizer's epochs on an objective, evaluates a validation metric after
each (lower RMSE or higher NDCG@K: a metric and its direction), stops early and
restores the best parameters (and the objective's learned extra state, e.g.
lambdaOpt's Lambda), detects divergence (stops, keeps the last good
parameters and says so), records one history row per epoch, prints one
progress line per epoch and calls one callback signature.

The parameter vector ``y`` lives on the objective's backend (a numpy array or a
torch tensor); the trainer only copies it through ``objective.backend``.
"""

from __future__ import annotations

import math
import numbers
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import ConfigError

LOWER_IS_BETTER = {"rmse", "mae", "loss", "bpr_loss"}


def metric_direction(metric: str) -> bool:
    """True when a higher value of ``metric`` is better (AUC, NDCG@K, ...), False for errors."""
    return str(metric).lower() not in LOWER_IS_BETTER


@dataclass
class TrainResult:
    history: list = field(default_factory=list)
    metric: str = ""
    best_epoch: int = 0
    best_value: float = math.nan
    stopped: str = "max_epochs"  # max_epochs | early_stop | diverged | time_budget
    message: str = ""
    seconds: float = 0.0

    @property
    def best_valid_rmse(self) -> float:
        """The best validation RMSE (NaN when the metric is not RMSE)."""
        return self.best_value if self.metric == "rmse" else math.nan


class Trainer:
    """Run ``optimizer`` on ``objective`` for up to ``epochs`` epochs.

    ``evaluate(y) -> dict`` scores the validation data (or is None); ``metric``
    names the entry of that dict that early stopping watches, and
    ``higher_is_better`` its direction (default: from the name).  ``patience``
    epochs without a relative improvement of ``min_delta`` stop training and
    restore the best epoch.  A non-finite loss or parameter, or a loss above
    ``divergence_factor`` times the initial loss, stops training with the last
    good parameters kept (``TrainResult.stopped == "diverged"``).
    ``callback(y, row)`` runs after every epoch with the epoch's history row
    (which it may extend); the estimators wrap it as ``callback(model, row)``.
    An objective with ``after_epoch(y, optimizer, epoch) -> dict`` has it called
    after every (non-diverged) optimizer epoch, before the validation score and
    the snapshots of ``extra_state`` (e.g. a learned regularizer's Lambda step,
    :class:`lfopt.regularizers.LearnedL2`); its numbers join the history row and
    its time counts as training time.
    ``time_budget`` (seconds, None: none) stops training before an epoch that would
    end past the budget, judged by the longest epoch so far (evaluation included).
    """

    def __init__(self, epochs: int = 40, patience: int | None = 5, min_delta: float = 1e-4,
                 verbose: bool = True, divergence_factor: float = 1e3, stream=None,
                 callback: Callable | None = None, metric: str = "rmse", higher_is_better: bool | None = None,
                 label: str = "", time_budget: float | None = None):
        if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1:
            raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
        if patience is not None and (isinstance(patience, bool) or int(patience) != patience or patience < 1):
            raise ConfigError(f"patience must be a positive integer or None, got {patience!r}")
        self.epochs = int(epochs)
        self.patience = patience
        self.min_delta = float(min_delta)
        self.verbose = verbose
        self.divergence_factor = float(divergence_factor)
        self.stream = stream or sys.stderr
        self.callback = callback
        self.metric = str(metric).lower()
        self.higher = metric_direction(self.metric) if higher_is_better is None else bool(higher_is_better)
        self.label = label
        if time_budget is not None and (isinstance(time_budget, bool) or not isinstance(time_budget, numbers.Real)
                                        or not time_budget > 0):
            raise ConfigError(f"time_budget must be a number of seconds > 0, got {time_budget!r}")
        self.time_budget = None if time_budget is None else float(time_budget)

    def _say(self, text: str) -> None:
        if self.verbose:
            print(text, file=self.stream, flush=True)

    def _better(self, value: float, best: float) -> bool:
        if not math.isfinite(value):
            return False
        if not math.isfinite(best):
            return True
        if self.higher:
            return value > best + self.min_delta * abs(best)
        return value < best - self.min_delta * abs(best)

    def run(self, objective, optimizer, y, evaluate: Callable | None = None) -> TrainResult:
        bk = objective.backend
        extra_state = objective.extra_state
        hook = getattr(objective, "after_epoch", None)
        if hasattr(optimizer, "check"):
            optimizer.check(objective)
        res = TrainResult(metric=self.metric if evaluate is not None else "")
        loss0 = objective.loss(y)
        if not math.isfinite(loss0):
            raise ConfigError("the initial loss is not finite: check the data and init_scale")
        last_good = bk.copy(y)
        last_extra = _copy_state(extra_state())
        best = None
        best_value = math.nan
        since_best = 0
        elapsed = 0.0
        name = getattr(optimizer, "name", type(optimizer).__name__)
        self._say(f"training {self.label or objective.name} with {name}: {getattr(objective, 'nnz', '?')} "
                  f"training entries, {objective.size} parameters, backend {bk.name}"
                  + (f" ({bk.device})" if bk.device != "cpu" else ""))
        start_all = time.perf_counter()
        longest = 0.0
        for epoch in range(1, self.epochs + 1):
            if self.time_budget is not None and epoch > 1 and \
                    time.perf_counter() - start_all + longest > self.time_budget:
                res.stopped = "time_budget"
                self._say(f"time budget of {self.time_budget:g} s reached after {epoch - 1} epochs")
                break
            t0 = time.perf_counter()
            info = optimizer.epoch(objective, y, epoch) or {}
            step_seconds = time.perf_counter() - t0
            elapsed += step_seconds
            loss = info.pop("train_loss", None)
            if loss is None:
                loss = objective.loss(y)
            loss = float(loss)
            row = {"epoch": epoch, "train_loss": loss, "seconds": elapsed, "epoch_seconds": step_seconds}
            finite = math.isfinite(loss) and bk.all_finite(y)
            if not finite or loss > self.divergence_factor * max(abs(loss0), 1e-12):
                y[:] = last_good
                objective.set_extra_state(_copy_state(last_extra))
                res.stopped = "diverged"
                res.message = (
                    f"training diverged at epoch {epoch} ({name}: loss {loss:.4g}, initial {loss0:.4g}); kept the "
                    f"parameters of epoch {epoch - 1}. {getattr(optimizer, 'divergence_advice', _ADVICE)}"
                )
                row["diverged"] = True
                res.history.append(row)
                self._say(res.message)
                break
            if hook is not None:
                # the objective's own per-epoch step (e.g. a learned regularizer's Lambda);
                # counted as training time, its numbers go into the history row
                t2 = time.perf_counter()
                info.update(hook(y, optimizer, epoch) or {})
                hook_seconds = time.perf_counter() - t2
                elapsed += hook_seconds
                row.update(seconds=elapsed, epoch_seconds=step_seconds + hook_seconds, hook_seconds=hook_seconds)
            last_good[:] = y
            last_extra = _copy_state(extra_state())
            row.update(objective.train_metrics(y, loss))
            if evaluate is not None:
                t1 = time.perf_counter()
                metrics = evaluate(y)
                row.update({f"valid_{k}": float(v) for k, v in metrics.items() if _is_number(v)})
                row["eval_seconds"] = time.perf_counter() - t1
                value = float(metrics[self.metric])
                if self._better(value, best_value):
                    best_value = value
                    res.best_epoch = epoch
                    best = (bk.copy(y), _copy_state(extra_state()))
                    since_best = 0
                else:
                    since_best += 1
            for k, v in info.items():
                if _is_number(v):
                    row[k] = float(v)
            if self.callback is not None:
                self.callback(y, row)
            res.history.append(row)
            self._say(_progress_line(row, self.metric))
            longest = max(longest, time.perf_counter() - t0)
            if self.patience is not None and evaluate is not None and since_best >= self.patience:
                res.stopped = "early_stop"
                break
        if best is not None:
            if res.best_epoch != res.history[-1]["epoch"] or res.stopped == "diverged":
                y[:] = best[0]
                objective.set_extra_state(best[1])
            res.best_value = best_value
        res.seconds = time.perf_counter() - start_all
        if res.stopped == "early_stop":
            self._say(f"early stop: best validation {self.metric} {best_value:.4f} at epoch {res.best_epoch} "
                      f"(restored)")
        return res


_ADVICE = "Lower the learning rate or raise the regularization."


def _is_number(v) -> bool:
    """A real scalar (Python or numpy), not a bool: what a history row records."""
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _copy_state(state: dict) -> dict:
    return {k: (v.copy() if hasattr(v, "copy") else v.clone()) for k, v in state.items()}


def _progress_line(row: dict, metric: str) -> str:
    parts = [f"epoch {row['epoch']:3d}", f"loss {row['train_loss']:.5g}"]
    if "train_rmse" in row:
        parts.append(f"train_rmse {row['train_rmse']:.4f}")
    for key in (f"valid_{metric}", "valid_rmse", "valid_mae", "test_rmse"):
        if key in row and f"{key} " not in " ".join(parts):
            parts.append(f"{key} {row[key]:.4f}")
    parts.append(f"{row['epoch_seconds']:.2f}s/epoch")
    parts.append(f"{row['seconds']:.2f}s")
    return "  ".join(parts)
