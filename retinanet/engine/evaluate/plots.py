"""Precision-recall curves of an evaluation as one PNG: a grid with one panel per class (Agg)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

from retinanet.files import write_atomic

PANEL_W, PANEL_H = 3.0, 2.7  # inches per class panel
MIN_W = 5.0  # inches: the two-line title fits even above a single panel


def grid_shape(n: int) -> tuple[int, int]:
    """``(rows, cols)`` for ``n`` panels: near-square, at most 8 columns (1 -> 1x1, 4 -> 2x2, 20 -> 4x5, 80 -> 10x8)."""
    cols = min(8, max(1, math.ceil(math.sqrt(n))))
    return max(1, math.ceil(n / cols)), cols


def pr_curves_figure(curves: dict[str, Any], per_class_ap: dict[str, float] | None = None) -> Figure:
    """The per-class PR curves as a matplotlib ``Figure`` (constrained layout: titles and labels fit).

    Args:
        curves: ``CocoEvaluation.pr_curves()``: ``{"iou", "recall": [R], "precision":
            {class: [R]}}`` (COCO's interpolated precision at R = 101 recall points).
        per_class_ap: optional ``{class: AP}`` shown in each panel's title.
    Returns:
        The figure. With no class to show, it says so instead of staying blank.
    """
    names = list(curves["precision"])
    rows, cols = grid_shape(len(names))
    fig = Figure(figsize=(max(MIN_W, PANEL_W * cols), PANEL_H * rows + 0.6), layout="constrained")
    # not sharex/sharey: every panel has the same fixed limits anyway, and shared axes make each draw
    # walk every sibling panel (80 classes: 14 s CPU to build and save, 7 s without)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        ax.set_visible(True)
        ax.plot(curves["recall"], curves["precision"][name], lw=1.5)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ap = (per_class_ap or {}).get(name)
        ax.set_title(name if ap is None else f"{name} (AP50 {ap:.3f})", fontsize=9)
    if not names:
        axes[0, 0].set_visible(True)
        axes[0, 0].text(0.5, 0.5, "no class with ground truth", ha="center", va="center")
    for i, ax in enumerate(axes.flat):  # x label and tick labels under the lowest panel of each column only
        if ax.get_visible() and (i + cols >= len(axes.flat) or not axes.flat[i + cols].get_visible()):
            ax.set_xlabel("recall")
        else:
            ax.xaxis.set_tick_params(labelbottom=False)
    for ax in axes[:, 1:].flat:  # y tick labels on the first column only
        ax.yaxis.set_tick_params(labelleft=False)
    for ax in axes[:, 0]:
        ax.set_ylabel("precision")
    fig.suptitle(f"Precision-recall at IoU {curves['iou']:.2f}\n(COCO interpolation, area all, 100 dets)", fontsize=10)
    return fig


def plot_pr_curves(curves: dict[str, Any], path: str | os.PathLike, per_class_ap: dict[str, float] | None = None) -> Path:
    """Write ``pr_curves_figure(curves, per_class_ap)`` to ``path`` (PNG, Agg, atomically); returns ``path`` as a Path."""
    fig = pr_curves_figure(curves, per_class_ap)
    return write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100))
