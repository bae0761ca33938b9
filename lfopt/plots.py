"""Convergence plots (PNG, matplotlib's Agg backend: no display needed).

Curves that lie on top of each other stay visible: every curve has its own
colour, marker and line style (cycled independently, so no two of the first
dozen curves look the same), lines are drawn half-transparent over each other,
markers are spread out along long curves, and later curves are drawn thinner.
"""

from __future__ import annotations

import io
from pathlib import Path

from .results import write_atomic

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINESTYLES = ("-", "--", "-.", ":")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve_style(k: int, n_points: int) -> dict:
    """Matplotlib keywords of the ``k``-th curve: its marker, line style, alpha and marker spacing."""
    return {
        "marker": MARKERS[k % len(MARKERS)],
        "linestyle": LINESTYLES[k % len(LINESTYLES)],
        "linewidth": max(2.4 - 0.25 * k, 1.0),
        "markersize": 5,
        "markerfacecolor": "none" if k % 2 else None,
        "alpha": 0.8,
        "markevery": max(1, n_points // 12),
        "zorder": 3 + k,
    }


def plot_curves(curves: dict, x_key: str, y_key: str, path, title: str = "", xlabel: str = "", ylabel: str = "",
                logx: bool = False) -> Path:
    """One line per name: ``curves[name]`` is a list of history rows (dicts) with ``x_key``/``y_key``.

    ``title`` should name the dataset and the protocol (it may span lines).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
    for k, (name, rows) in enumerate(curves.items()):
        pts = [(r[x_key], r[y_key]) for r in rows if r.get(y_key) is not None and r.get(x_key) is not None]
        if pts:
            xs, ys = zip(*pts)
            style = {key: v for key, v in curve_style(k, len(pts)).items() if v is not None}
            ax.plot(xs, ys, label=name, **style)
    ax.set_xlabel(xlabel or x_key)
    ax.set_ylabel(ylabel or y_key)
    if logx:
        ax.set_xscale("log")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(framealpha=0.8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return write_atomic(Path(path), buf.getvalue(), overwrite=True)  # callers decide about overwriting
