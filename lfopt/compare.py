"""Side-by-side comparison of optimizers on one dataset and split (``lfopt compare``).

Every optimizer gets the same training/validation/test split, the same
initial parameters (same seed) and the same lambda.  Selection is on the
validation set only: each run stops early on validation RMSE and is scored on
the test set at its best validation epoch.  The test RMSE of every epoch is
recorded for the convergence plots, never used to choose anything.
"""

from __future__ import annotations

import math
import time
import tracemalloc
from dataclasses import dataclass, field

import numpy as np

from .data.interactions import Interactions
from .data.split import fixed_split, random_split, train_valid_test_split
from .estimators import LatentFactorModel

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


def split_80_10_10(data: Interactions, seed: int, valid_fraction: float = 0.1, test_fraction: float = 0.1):
    """(train, valid, test): a fixed test split if the data has one (validation carved from its
    training part), else a random train/validation/test split."""
    if "test_mask" in data.meta:
        train, test = fixed_split(data)
        train, valid = random_split(train, valid_fraction / (1 - test_fraction), seed)
        return train, valid, test
    return train_valid_test_split(data, valid_fraction, test_fraction, seed)


def run_one(name: str, train, valid, test, seed: int, rank: int, lam: float, epochs: int, patience: int,
            options: dict, verbose: bool = False) -> Run:
    model = LatentFactorModel(rank=rank, optimizer=name, epochs=epochs, lam=lam, seed=seed, patience=patience,
                              verbose=verbose, **options)
    rows, cols, truth = test.users, test.items, test.values

    def track_test(m, row):
        scores = m._score_indices(rows, cols, truth)
        row["test_rmse"] = scores["rmse"]
        row["test_mae"] = scores["mae"]

    tracemalloc.start()
    t0 = time.perf_counter()
    model.fit(train, valid, callback=track_test)
    _ = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    res = model.train_result_
    final = model.evaluate(test)
    hist = model.history_
    seconds = hist[-1]["seconds"] if hist else 0.0
    return Run(name, seed, res.best_valid_rmse, final["rmse"], final["mae"], res.best_epoch, len(hist), seconds,
               peak, hist)


def mark_targets(runs: list[Run], reference: str = "sgd") -> None:
    """Epochs (and seconds) each run needs to get within 0.5 % of the reference's best validation RMSE
    of the same seed."""
    by_seed = {}
    for r in runs:
        if r.optimizer == reference:
            by_seed[r.seed] = r.best_valid_rmse
    for r in runs:
        ref = by_seed.get(r.seed)
        if ref is None:
            continue
        target = ref * (1 + TARGET_FRACTION)
        for row in r.history:
            if row.get("valid_rmse", math.inf) <= target:
                r.epochs_to_target = row["epoch"]
                r.seconds_to_target = row["seconds"]
                break


def compare(data: Interactions, optimizers, seeds=(0,), rank: int = 20, lam: float = 0.02, epochs: int = 100,
            patience: int = 5, options: dict | None = None, verbose: bool = False, log=None) -> list[Run]:
    """Train every optimizer for every seed; return the runs (see :func:`summarize`)."""
    options = options or {}
    runs = []
    for seed in seeds:
        train, valid, test = split_80_10_10(data, seed)
        for name in optimizers:
            run = run_one(name, train, valid, test, seed, rank, lam, epochs, patience, options.get(name, {}), verbose)
            runs.append(run)
            if log:
                log(f"seed {seed} {name:6s} valid {run.best_valid_rmse:.4f} test {run.test_rmse:.4f} "
                    f"best epoch {run.best_epoch}/{run.epochs} {run.seconds:.1f}s")
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
        rs = [r for r in runs if r.optimizer == name]
        row = {"optimizer": name, "seeds": len(rs), "n_reached": sum(np.isfinite(r.epochs_to_target) for r in rs)}
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
        cells = [r["optimizer"]]
        for key, _, digits in COLUMNS:
            cell = _fmt(r[key], r[key + "_std"], digits, several)
            if key == "epochs_to_target" and r["n_reached"] < r["seeds"]:
                cell += f" ({r['n_reached']}/{r['seeds']} reached)"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(summary: list[dict]) -> str:
    keys = ["optimizer", "seeds", "n_reached"] + [k for key, _, _ in COLUMNS for k in (key, key + "_std")]
    lines = [",".join(keys)]
    for r in summary:
        lines.append(",".join(str(r[k]) for k in keys))
    return "\n".join(lines) + "\n"
