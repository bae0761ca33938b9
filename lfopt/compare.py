"""Side-by-side comparison of optimizers on one dataset and split (``lfopt compare``).

Every optimizer gets the same training/validation/test split, the same
initial parameters (same seed) and the same model hyper-parameters (by default
those of ``LatentFactorModel()``, the same as ``lfopt train``'s).  Selection is on
the validation set only: each run stops early on validation RMSE and is scored
on the test set at its best validation epoch (``valid_fraction=0``: no
validation part, every run trains for all its epochs and is scored at the
last).  The test RMSE of every epoch is recorded for the convergence plots,
never used to choose anything.  A run that diverges is marked (``diverged``)
and left out of the means.

Timings are the trainer's (optimizer steps only, validation scoring excluded);
call :func:`lfopt.commands.common.warm_up` first so that they exclude numba's
first compilation, as ``lfopt compare`` does.  Per-run lines go to the
``logging`` logger ``"lfopt"`` (INFO).
"""

from __future__ import annotations

import inspect
import logging
import math
import tracemalloc
from dataclasses import dataclass, field

import numpy as np

from .data.interactions import Interactions
from .data.split import fixed_split, random_split, train_valid_test_split
from .estimators import LatentFactorModel

logger = logging.getLogger("lfopt")

TARGET_FRACTION = 0.005  # "within 0.5 % of SGD's best RMSE"


@dataclass
class Run:
    optimizer: str
    seed: int
    best_valid_rmse: float
    test_rmse: float
    test_mae: float
    best_epoch: int
    epochs: int
    seconds: float
    peak_mb: float
    history: list = field(repr=False, default_factory=list)
    epochs_to_target: float = math.nan
    seconds_to_target: float = math.nan
    target_rmse: float = math.nan
    stopped: str = ""
    diverged: bool = False
    message: str = ""


def model_default(name: str):
    """The default of a :class:`LatentFactorModel` parameter."""
    return inspect.signature(LatentFactorModel).parameters[name].default


def split_80_10_10(data: Interactions, seed: int, valid_fraction: float = 0.1, test_fraction: float = 0.1):
    """(train, valid, test): a fixed test split if the data has one (validation carved from its
    training part), else a random train/validation/test split.  ``valid_fraction=0``: valid is None."""
    if "test_mask" in data.meta:
        train, test = fixed_split(data)
        if not valid_fraction:
            return train, None, test
        train, valid = random_split(train, valid_fraction / (1 - test_fraction), seed)
        return train, valid, test
    if not valid_fraction:
        train, test = random_split(data, test_fraction, seed)
        return train, None, test
    return train_valid_test_split(data, valid_fraction, test_fraction, seed)


def run_one(name: str, train, valid, test, seed: int, rank: int | None = None, lam: float | None = None,
            epochs: int | None = None, patience: int | None = None, options: dict | None = None,
            verbose: bool = False, **model_params) -> Run:
    """Train optimizer ``name`` on ``train`` (early stopping on ``valid``, None: none) and score ``test``.

    Parameters left None take :class:`LatentFactorModel`'s defaults; ``model_params``
    (e.g. ``lam0``, ``init_scale``, ``backend``) go to the model as well.
    """
    given = {k: v for k, v in dict(rank=rank, lam=lam, epochs=epochs, patience=patience, **model_params).items()
             if v is not None}
    model = LatentFactorModel(optimizer=name, seed=seed, validation=None, verbose=verbose, **given,
                              **(options or {}))
    rows, cols, truth = test.users, test.items, test.values

    def track_test(m, row):
        scores = m._score_indices(rows, cols, truth)
        row["test_rmse"] = scores["rmse"]
        row["test_mae"] = scores["mae"]

    import warnings

    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="training diverged", category=RuntimeWarning)
            model.fit(train, valid, callback=track_test)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    res = model.train_result_
    hist = model.history_
    seconds = hist[-1]["seconds"] if hist else 0.0
    if res.stopped == "diverged":
        return Run(name, seed, math.nan, math.nan, math.nan, res.best_epoch, len(hist), seconds, peak, hist,
                   stopped=res.stopped, diverged=True, message=res.message)
    final = model.evaluate(test)
    best_epoch = res.best_epoch or len(hist)
    return Run(name, seed, res.best_valid_rmse, final["rmse"], final["mae"], best_epoch, len(hist), seconds,
               peak, hist, stopped=res.stopped)


def mark_targets(runs: list[Run], reference: str = "sgd") -> None:
    """Epochs (and seconds) each run needs to get within 0.5 % of the reference's best validation RMSE
    of the same seed."""
    by_seed = {}
    for r in runs:
        if r.optimizer == reference and not r.diverged and np.isfinite(r.best_valid_rmse):
            by_seed[r.seed] = r.best_valid_rmse
    for r in runs:
        ref = by_seed.get(r.seed)
        if ref is None or r.diverged:
            continue
        target = ref * (1 + TARGET_FRACTION)
        r.target_rmse = target
        for row in r.history:
            if row.get("valid_rmse", math.inf) <= target:
                r.epochs_to_target = row["epoch"]
                r.seconds_to_target = row["seconds"]
                break


def compare(data: Interactions, optimizers, seeds=(0,), rank: int | None = None, lam: float | None = None,
            epochs: int | None = None, patience: int | None = None, options: dict | None = None,
            verbose: bool = False, log=None, valid_fraction: float = 0.1, test_fraction: float = 0.1,
            **model_params) -> list[Run]:
    """Train every optimizer for every seed; return the runs (see :func:`summarize`).

    The hyper-parameters left None (rank, lam, epochs, patience and any of
    ``model_params``: lam0, lam_b, lam0_b, init_scale, ...) take
    :class:`LatentFactorModel`'s defaults, the same as ``lfopt train``'s.  Each seed
    draws its own split (``valid_fraction`` of the data for early stopping, 0 for
    none; ``test_fraction`` for the test part unless the data has a fixed split).
    ``options``: per-optimizer options, ``{"sgd": {"lr": 0.01}}``.  One line per
    run goes to ``log`` (a callable) or, by default, to the ``"lfopt"`` logger.
    """
    options = options or {}
    say = log or logger.info
    runs = []
    for seed in seeds:
        train, valid, test = split_80_10_10(data, seed, valid_fraction, test_fraction)
        for name in optimizers:
            run = run_one(name, train, valid, test, seed, rank, lam, epochs, patience, options.get(name, {}), verbose,
                          **model_params)
            runs.append(run)
            if run.diverged:
                say(f"seed {seed} {name:6s} diverged at epoch {run.epochs} ({run.seconds:.1f}s)")
            else:
                valid_text = f"valid {run.best_valid_rmse:.4f} " if np.isfinite(run.best_valid_rmse) else ""
                say(f"seed {seed} {name:6s} {valid_text}test {run.test_rmse:.4f} best epoch "
                    f"{run.best_epoch}/{run.epochs} {run.seconds:.2f}s")
    mark_targets(runs)
    return runs


COLUMNS = [
    ("best_valid_rmse", "valid RMSE", 4), ("test_rmse", "test RMSE", 4), ("test_mae", "test MAE", 4),
    ("best_epoch", "epochs to best", 1), ("epochs_to_target", "epochs to SGD+0.5%", 1),
    ("seconds_to_target", "s to SGD+0.5%", 2), ("seconds", "train s", 2), ("peak_mb", "peak MiB", 0),
]


def summarize(runs: list[Run]) -> list[dict]:
    """Per optimizer: mean and std over seeds of every column (NaN-aware; a run that never reached
    the target counts in ``n_reached``)."""
    out = []
    names = list(dict.fromkeys(r.optimizer for r in runs))
    for name in names:
        every = [r for r in runs if r.optimizer == name]
        rs = [r for r in every if not r.diverged]
        row = {"optimizer": name, "seeds": len(every), "n_diverged": len(every) - len(rs),
               "n_reached": int(sum(np.isfinite(r.epochs_to_target) for r in rs)),
               "n_with_target": int(sum(np.isfinite(r.target_rmse) for r in rs))}
        for key, _, _ in COLUMNS:
            vals = np.array([getattr(r, key) for r in rs], dtype=float)
            fin = vals[np.isfinite(vals)]
            row[key] = float(fin.mean()) if fin.size else math.nan
            row[key + "_std"] = float(fin.std()) if fin.size > 1 else 0.0 if fin.size else math.nan
        out.append(row)
    return out


def _fmt(mean: float, std: float, digits: int, several: bool) -> str:
    if not np.isfinite(mean):
        return "n/a"
    text = f"{mean:.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if several else text


def markdown_table(summary: list[dict], title: str = "") -> str:
    several = any(r["seeds"] > 1 for r in summary)
    head = ["optimizer"] + [label for _, label, _ in COLUMNS]
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary:
        n_div = r.get("n_diverged", 0)
        cells = [r["optimizer"] + (f" (diverged {n_div}/{r['seeds']})" if n_div else "")]
        for key, _, digits in COLUMNS:
            cell = "diverged" if n_div == r["seeds"] else _fmt(r[key], r[key + "_std"], digits, several)
            n_target = r.get("n_with_target", r["seeds"] - n_div)
            if key == "epochs_to_target" and r["n_reached"] < n_target:
                cell += f" ({r['n_reached']}/{n_target} reached)"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(summary: list[dict]) -> str:
    keys = ["optimizer", "seeds", "n_diverged", "n_reached"] + [k for key, _, _ in COLUMNS for k in (key, key + "_std")]
    lines = [",".join(keys)]
    for r in summary:
        lines.append(",".join(str(r[k]) for k in keys))
    return "\n".join(lines) + "\n"
