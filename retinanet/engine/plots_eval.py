"""Precision-recall curves of an evaluation as one PNG: a grid with one panel per class (Agg)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend


def plot_pr_curves(curves: dict[str, Any], path: str | os.PathLike, per_class_ap: dict[str, float] | None = None) -> Path:
    """Write the per-class PR curves to ``path`` (PNG, matplotlib's Agg backend).

    Args:
        curves: ``CocoEvaluation.pr_curves()``: ``{"iou", "recall": [R], "precision":
            {class: [R]}}`` (COCO's interpolated precision at R = 101 recall points).
        path: output PNG file.
        per_class_ap: optional ``{class: AP}`` shown in each panel's title.
    Returns:
        ``path`` as a Path. With no class to show, the figure says so instead of staying blank.
    """
    names = list(curves["precision"])
    cols = min(5, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig = Figure(figsize=(3.0 * cols, 2.7 * rows))
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        ax.set_visible(True)
        ax.plot(curves["recall"], curves["precision"][name], lw=1.5)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ap = (per_class_ap or {}).get(name)
        ax.set_title(name if ap is None else f"{name} (AP50 {100 * ap:.1f})", fontsize=9)
    if not names:
        axes[0, 0].set_visible(True)
        axes[0, 0].text(0.5, 0.5, "no class with ground truth", ha="center", va="center")
    for ax in axes[-1]:
        ax.set_xlabel("recall")
    for ax in axes[:, 0]:
        ax.set_ylabel("precision")
    fig.suptitle(f"Precision-recall at IoU {curves['iou']:.2f} (COCO interpolation, area all, 100 dets)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
