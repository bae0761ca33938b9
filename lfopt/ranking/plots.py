"""PNG plots of ranking runs (matplotlib, Agg backend): validation curves and Lambda's trajectory."""

from __future__ import annotations

import io
from pathlib import Path

from ..results import write_atomic


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, plt, path, overwrite) -> Path:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return write_atomic(Path(path), buf.getvalue(), overwrite=overwrite)


def plot_validation(runs: dict, metric: str, path, overwrite: bool = False) -> Path:
    """Validation ``metric`` and training loss per epoch, one line per run (``runs[name]`` = history)."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for name, hist in runs.items():
        pts = [(h["epoch"], h[f"valid_{metric}"]) for h in hist if f"valid_{metric}" in h]
        if pts:
            ax1.plot(*zip(*pts), label=name)
        ax2.plot([h["epoch"] for h in hist], [h["train_loss"] for h in hist], label=name)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel(f"validation {metric}")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("training BPR loss")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if runs:
            ax.legend(fontsize=8)
    return _save(fig, plt, path, overwrite)


def plot_lambda(trajectory: list, path, title: str = "", overwrite: bool = False) -> Path:
    """Lambda per epoch: mean and 5-95 / 25-75 percentile bands for users and items, and
    (per-row granularities) the mean Lambda of each activity bucket."""
    plt = _pyplot()
    has_buckets = any(k.endswith("_by_activity") for k in (trajectory[-1] if trajectory else {}))
    fig, axes = plt.subplots(1, 2 if has_buckets else 1, figsize=(11 if has_buckets else 6, 4.2), dpi=110,
                             squeeze=False)
    ax = axes[0, 0]
    ep = [t["epoch"] for t in trajectory]
    for side, color in (("user", "tab:blue"), ("item", "tab:orange")):
        ax.plot(ep, [t[side]["mean"] for t in trajectory], color=color, label=f"{side} mean")
        ax.plot(ep, [t[side]["p50"] for t in trajectory], color=color, ls="--", lw=1, label=f"{side} median")
        ax.fill_between(ep, [t[side]["p5"] for t in trajectory], [t[side]["p95"] for t in trajectory],
                        color=color, alpha=0.12)
        ax.fill_between(ep, [t[side]["p25"] for t in trajectory], [t[side]["p75"] for t in trajectory],
                        color=color, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("lambda (bands: 5-95 and 25-75 percentiles)")
    ax.set_title(title or "Lambda trajectory")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if has_buckets:
        ax = axes[0, 1]
        for side, style in (("user", "-"), ("item", ":")):
            key = f"{side}_by_activity"
            if key not in trajectory[-1]:
                continue
            for k, bucket in enumerate(trajectory[-1][key]):
                lo, hi = bucket["count_range"]
                ax.plot(ep, [t[key][k]["mean"] for t in trajectory], ls=style,
                        label=f"{side}s with {lo}-{hi} train positives")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean lambda of the bucket")
        ax.set_title("Lambda by activity (sparse to active)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, plt, path, overwrite)


def plot_grid(table: list, metric_key: str, path, overwrite: bool = False) -> Path:
    """Validation metric against the fixed lambda of a grid search (log x axis where possible)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    xs = [row["lambda"] for row in table]
    ys = [row[metric_key] for row in table]
    ax.plot(xs, ys, marker="o")
    if all(x > 0 for x in xs):
        ax.set_xscale("log")
    ax.set_xlabel("fixed lambda")
    ax.set_ylabel(metric_key.replace("_", " "))
    ax.set_title("MF-lambdaFix grid search")
    ax.grid(alpha=0.3)
    return _save(fig, plt, path, overwrite)
