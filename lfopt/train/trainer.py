"""The one training loop of every model.

Runs an optimizer's epochs on an objective, evaluates a validation metric after
each (lower RMSE or higher NDCG@K: a metric and its direction), stops early and
restores the best parameters (and the objective's learned extra state, e.g.
lambdaOpt's Lambda), detects divergence (stops, keeps the last good
parameters and says so), records one history row per epoch, shows progress
and calls one callback signature.

Progress (only with ``verbose``) goes to ``stream`` (stderr by default), in one
of two styles: a tqdm progress bar with ETA (``progress="bar"``; the default
``"auto"`` picks it when the stream is a terminal) or one line per epoch in
labelled columns under a header (``"lines"``; what logs and pipes get)::

    epoch  train_loss  train_rmse  valid_rmse  valid_mae  epoch_s  total_s
        1       98041      0.4470      0.5012     0.3990     0.02     0.02

``epoch_s`` is the epoch's training time, ``total_s`` the training time so far
(validation scoring excluded from both).  A run of more than ``LINE_EVERY_AFTER`` (50)
epochs prints epochs 1-10, then every 10th, and its last (a sampler's 200 sweeps: 29
lines).  :func:`progress_style` sets the style for every trainer created inside a
``with`` block (the CLI's ``--progress``).
Each history row is also sent to the ``logging`` logger ``"lfopt"`` at DEBUG level.

The parameter vector ``y`` lives on the objective's backend (a numpy array or a
torch tensor); the trainer only copies it through ``objective.backend``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import numbers
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import ConfigError

LOWER_IS_BETTER = {"rmse", "mae", "loss", "bpr_loss"}


#: The library's logger: messages for the user that are not per-epoch progress.
logger = logging.getLogger("lfopt")

PROGRESS_STYLES = ("auto", "bar", "lines")
#: a run of more epochs than this prints epochs 1-10, every 10th and its last (not every one)
LINE_EVERY_AFTER = 50
_PROGRESS: contextvars.ContextVar = contextvars.ContextVar("lfopt_progress", default="auto")


@contextlib.contextmanager
def progress_style(style: str | None):
    """Within the block, trainers created with ``progress=None`` use ``style``:
    ``"auto"`` (a bar on a terminal, lines otherwise), ``"bar"`` or ``"lines"``; None changes nothing."""
    if style is None:
        yield
        return
    token = _PROGRESS.set(_check_style(style))
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def _check_style(style) -> str:
    if style is True:
        return "bar"
    if style is False:
        return "lines"
    if style not in PROGRESS_STYLES:
        raise ConfigError(f"progress must be one of {PROGRESS_STYLES}, got {style!r}")
    return style


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
    ``divergence_factor`` times the initial loss (not for a sampler, ``is_sampler``: a draw
    may sit far above a start that fits nearly everything), stops training with the last
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
    ``progress`` (with ``verbose``): ``"bar"`` (tqdm, with ETA), ``"lines"`` (one
    labelled line per epoch) or ``"auto"`` (a bar when ``stream`` is a terminal);
    None takes the style of the enclosing :func:`progress_style` block (default auto).
    """

    def __init__(self, epochs: int = 40, patience: int | None = 5, min_delta: float = 1e-4,
                 verbose: bool = True, divergence_factor: float = 1e3, stream=None,
                 callback: Callable | None = None, metric: str = "rmse", higher_is_better: bool | None = None,
                 label: str = "", time_budget: float | None = None, progress: str | bool | None = None):
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
        self.progress = None if progress is None else _check_style(progress)
        self._bar = None
        self._columns = None
        self._held = None

    # -------------------------------------------------------------- progress
    def _style(self) -> str:
        style = self.progress or _PROGRESS.get()
        if style == "auto":
            isatty = getattr(self.stream, "isatty", None)
            try:
                style = "bar" if isatty is not None and isatty() else "lines"
            except (ValueError, OSError):  # a closed stream
                style = "lines"
        return style

    def _say(self, text: str) -> None:
        if not self.verbose:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def _open_bar(self, name: str):
        if not self.verbose or self._style() != "bar":
            return None
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm is a dependency
            return None
        by_time = self.time_budget is not None
        return tqdm(total=round(self.time_budget, 1) if by_time else self.epochs, unit="s" if by_time else "epoch",
                    desc=name, file=self.stream, dynamic_ncols=True, leave=True, mininterval=0.2,
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                               "[{elapsed}<{remaining}{postfix}]")

    def _show_row(self, row: dict) -> None:
        logger.debug("epoch %d: %s", row["epoch"], row)
        if not self.verbose:
            return
        if self._bar is not None:
            post = {"noise_std": f"{row['noise_std']:.4f}"} if "noise_std" in row else \
                {"loss": f"{row['train_loss']:.5g}"}
            keys = _metric_keys(row, self.metric)
            main = [k for k in keys if k.startswith("valid_")][:1] or keys[:1]
            for key in main + [k for k in keys if k == "test_rmse" and k not in main]:
                post[key] = f"{row[key]:.4f}"
            post["s/epoch"] = f"{row['epoch_seconds']:.2f}"
            self._bar.set_postfix(post, refresh=False)
            if self.time_budget is not None:
                self._bar.update(min(row["seconds"], self._bar.total) - self._bar.n)
            else:
                self._bar.update(1)
            return
        e = int(row["epoch"])
        if self.epochs > LINE_EVERY_AFTER and e > 10 and e % 10:
            self._held = row  # printed if it turns out to be the last
            return
        self._held = None
        if self._columns is None:
            self._columns = _columns(row, self.metric, self.epochs)
            print(_header(self._columns), file=self.stream, flush=True)
        print(_format_row(self._columns, row), file=self.stream, flush=True)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

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
        if hasattr(optimizer, "check"):
            optimizer.check(objective)
        res = TrainResult(metric=self.metric if evaluate is not None else "")
        loss0 = objective.loss(y)
        if not math.isfinite(loss0):
            raise ConfigError("the initial loss is not finite: check the data and init_scale")
        last_good = bk.copy(y)
        last_extra = _copy_state(objective.extra_state())
        name = getattr(optimizer, "name", type(optimizer).__name__)
        self._say(f"training {self.label or objective.name} with {name}: {getattr(objective, 'nnz', '?')} "
                  f"training entries, {objective.size} parameters, backend {bk.name}"
                  + (f" ({bk.device})" if bk.device != "cpu" else ""))
        start_all = time.perf_counter()
        self._columns = None
        self._held = None
        self._bar = self._open_bar(name)
        try:
            self._loop(objective, optimizer, y, evaluate, res, loss0, last_good, last_extra, name, start_all)
        finally:
            self._close_bar()
            if self._held is not None and self._columns is not None:  # the last row of a thinned run
                print(_format_row(self._columns, self._held), file=self.stream, flush=True)
        if res.stopped == "time_budget":
            self._say(f"time budget of {self.time_budget:g} s reached after {len(res.history)} epochs")
        elif res.stopped == "diverged":
            self._say(f"diverged at epoch {len(res.history)}; kept the parameters of epoch "
                      f"{len(res.history) - 1}")
        elif res.stopped == "early_stop":
            self._say(f"early stop: best validation {self.metric} {res.best_value:.4f} at epoch {res.best_epoch} "
                      f"(restored)")
        return res

    def _loop(self, objective, optimizer, y, evaluate, res, loss0, last_good, last_extra, name, start_all):
        bk = objective.backend
        extra_state = objective.extra_state
        hook = getattr(objective, "after_epoch", None)
        sampler = bool(getattr(optimizer, "is_sampler", False))
        best = None
        best_value = math.nan
        since_best = 0
        elapsed = 0.0
        longest = 0.0
        # processes of a distributed run stop together: any one over the budget stops all
        agree = getattr(objective, "agree", None) or (lambda flag: flag)
        sync = getattr(objective, "sync_params", None)
        for epoch in range(1, self.epochs + 1):
            if self.time_budget is not None and epoch > 1 and \
                    agree(time.perf_counter() - start_all + longest > self.time_budget):
                res.stopped = "time_budget"
                break
            t0 = time.perf_counter()
            info = optimizer.epoch(objective, y, epoch) or {}
            if sync is not None:  # a distributed objective makes y whole on every process again
                sync(y)
            step_seconds = time.perf_counter() - t0
            elapsed += step_seconds
            loss = info.pop("train_loss", None)
            if loss is None:
                loss = objective.loss(y)
            loss = float(loss)
            row = {"epoch": epoch, "train_loss": loss, "seconds": elapsed, "epoch_seconds": step_seconds}
            finite = math.isfinite(loss) and bk.all_finite(y)
            # a sampler's draw may sit far above a start that fits nearly everything (constant ratings,
            # a handful of them): only a non-finite sample is a failure there
            if not finite or (not sampler and loss > self.divergence_factor * max(abs(loss0), 1e-12)):
                y[:] = last_good
                objective.set_extra_state(_copy_state(last_extra))
                res.stopped = "diverged"
                res.message = (
                    f"training diverged at epoch {epoch} ({name}: loss {loss:.4g}, initial {loss0:.4g}); kept the "
                    f"parameters of epoch {epoch - 1}. {divergence_advice(optimizer)}"
                )
                row["diverged"] = True
                res.history.append(row)
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
            self._show_row(row)
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


_ADVICE = "Lower the learning rate (lr) if the optimizer has one, or raise the regularization (lam, lam0)."

#: What helps when a run diverges, by optimizer (an optimizer's own ``divergence_advice`` wins).
DIVERGENCE_ADVICE = {
    "sgd": "Lower the learning rate (lr) or raise the regularization (lam, lam0).",
    "adam": "Lower the learning rate (lr) or raise the regularization (lam, lam0).",
    "adago": "Lower the learning rate (lr), raise the damping, or raise the regularization (lam, lam0).",
    "als": "ALS has no learning rate: raise the regularization (lam, lam0), lower init_scale, or check the data "
           "for extreme values (play counts and other counts belong to 'lfopt rank', not to a rating model).",
    "slf": "Raise the damping or the regularization (lam, lam0), or give fewer cg_iters.",
    "sslf": "Lower rho, raise the damping or the regularization (lam, lam0).",
}


def divergence_advice(optimizer) -> str:
    """What to change after ``optimizer`` diverged: its own ``divergence_advice``, else the
    entry of :data:`DIVERGENCE_ADVICE` for its name (a sharpness-aware wrapper: "lower rho" first)."""
    own = getattr(optimizer, "divergence_advice", None)
    if own:
        return own
    name = str(getattr(optimizer, "name", "")).lower()
    if name in DIVERGENCE_ADVICE:
        text = DIVERGENCE_ADVICE[name]
    else:
        base = getattr(optimizer, "base", None)
        text = divergence_advice(base) if base is not None and base is not optimizer else _ADVICE
    if (getattr(optimizer, "rho", 0) or 0) > 0 and "rho" not in text:
        text = "Lower rho, or: " + text[0].lower() + text[1:]
    return text


def _is_number(v) -> bool:
    """A real scalar (Python or numpy), not a bool: what a history row records."""
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _copy_state(state: dict) -> dict:
    return {k: (v.copy() if hasattr(v, "copy") else v.clone()) for k, v in state.items()}


def _metric_keys(row: dict, metric: str) -> list:
    """The metrics of a history row that progress shows: training RMSE, validation metrics, test RMSE."""
    keys = []
    for key in ("train_rmse", f"valid_{metric}", "valid_rmse", "valid_mae", "test_rmse"):
        if key in row and key not in keys and _is_number(row[key]):
            keys.append(key)
    return keys


def _columns(row: dict, metric: str, epochs: int) -> list:
    """(label, key, width, format) of the per-epoch lines, fixed by the first row.

    A sampler (its rows count the samples ``kept``) shows ``noise_std``, the sampled noise
    level 1/sqrt(alpha) of its draw, instead of ``train_loss``: the penalized loss of a draw is
    not what a sampler lowers (it rises as the factors leave their small start)."""
    loss = ("noise_std", "noise_std", 10, ".4f") if "kept" in row else ("train_loss", "train_loss", 11, ".5g")
    cols = [("epoch", "epoch", max(5, len(str(epochs))), "d"), loss]
    for key in _metric_keys(row, metric):
        cols.append((key, key, max(10, len(key)), ".4f"))
    if "kept" in row:  # a sampler: the samples its average holds so far
        cols.append(("samples", "kept", 7, ".0f"))
    cols += [("epoch_s", "epoch_seconds", 8, ".2f"), ("total_s", "seconds", 8, ".2f")]
    return cols


def _header(cols: list) -> str:
    return "  ".join(label.rjust(width) for label, _, width, _ in cols)


def _format_row(cols: list, row: dict) -> str:
    cells = []
    for _, key, width, fmt in cols:
        v = row.get(key)
        cells.append((format(v, fmt) if _is_number(v) else "-").rjust(width))
    return "  ".join(cells)


def _progress_line(row: dict, metric: str) -> str:
    """One self-describing line for a history row (``name value`` pairs), for messages outside the table."""
    parts = [f"epoch {row['epoch']}", f"train_loss {row['train_loss']:.5g}"]
    parts += [f"{k} {row[k]:.4f}" for k in _metric_keys(row, metric)]
    parts += [f"epoch_s {row['epoch_seconds']:.2f}", f"total_s {row['seconds']:.2f}"]
    return "  ".join(parts)
