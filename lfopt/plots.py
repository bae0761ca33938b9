"""Convergence plots (PNG, matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

from .results import write_atomic


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(curves: dict, x_key: str, y_key: str, path, title: str = "", xlabel: str = "", ylabel: str = "",
                logx: bool = False) -> Path:
    """One line per name: ``curves[name]`` is a list of history rows (dicts) with ``x_key``/``y_key``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, rows in curves.items():
        pts = [(r[x_key], r[y_key]) for r in rows if r.get(y_key) is not None and r.get(x_key) is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", markersize=2.5, linewidth=1.2, label=name)
    ax.set_xlabel(xlabel or x_key)
    ax.set_ylabel(ylabel or y_key)
    if logx:
        ax.set_xscale("log")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return write_atomic(Path(path), buf.getvalue(), overwrite=True)  # callers decide about overwriting
