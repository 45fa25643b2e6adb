"""``pr_curves.png``: the title, panel titles and axis labels fit the figure for any class count."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.transforms import Bbox

from retinanet.engine.evaluate.plots import grid_shape, plot_pr_curves, pr_curves_figure


def curves_of(n: int) -> tuple[dict, dict]:
    recall = np.linspace(0, 1, 101)
    names = [f"class name {i}" if i % 3 else f"a rather long class name {i}" for i in range(n)]
    precision = {name: np.clip(1 - recall ** (1 + i % 4), 0, 1).tolist() for i, name in enumerate(names)}
    return {"iou": 0.5, "recall": recall.tolist(), "precision": precision}, {name: 0.5 for name in names}


def inside(inner: Bbox, outer: Bbox, tol: float = 1.0) -> bool:
    return (inner.x0 >= outer.x0 - tol and inner.y0 >= outer.y0 - tol
            and inner.x1 <= outer.x1 + tol and inner.y1 <= outer.y1 + tol)


@pytest.mark.parametrize("n", [0, 1, 2, 4, 20, 80])
def test_title_and_axes_fit_the_figure(n):
    curves, ap = curves_of(n)
    fig = pr_curves_figure(curves, ap)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # runs the constrained layout
    renderer = canvas.get_renderer()
    frame = fig.bbox
    assert inside(fig._suptitle.get_window_extent(renderer), frame)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == max(n, 1)
    titles = []
    for ax in visible:
        assert inside(ax.get_tightbbox(renderer), frame), ax.get_title()
        assert not ax.title.get_window_extent(renderer).overlaps(fig._suptitle.get_window_extent(renderer))
        titles.append(ax.title.get_window_extent(renderer))
    for i, a in enumerate(titles):  # panel titles do not run into each other
        assert not any(a.overlaps(b) for b in titles[i + 1:])
    labelled = [ax for ax in visible if ax.get_xlabel() == "recall"]
    assert len(labelled) == min(max(n, 1), grid_shape(max(n, 1))[1])  # every column has its x label


def test_grid_shape():
    assert [grid_shape(n) for n in (1, 2, 4, 5, 20, 80)] == [(1, 1), (1, 2), (2, 2), (2, 3), (4, 5), (10, 8)]


def test_plot_pr_curves_writes_png(tmp_path):
    from PIL import Image

    curves, ap = curves_of(1)
    path = plot_pr_curves(curves, tmp_path / "sub" / "pr_curves.png", ap)
    assert Image.open(path).size == (500, 330)


def test_panels_share_no_axes_and_only_outer_ones_carry_tick_labels():
    """Shared axes made each draw walk every sibling panel (80 classes: twice the time); the look is kept:
    x tick labels under the lowest panel of each column, y tick labels on the first column."""
    curves, ap = curves_of(7)  # 3 x 3 grid: the third column's lowest panel is in the second row
    fig = pr_curves_figure(curves, ap)
    FigureCanvasAgg(fig).draw()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert all(ax.get_shared_x_axes().get_siblings(ax) == [ax] and ax.get_shared_y_axes().get_siblings(ax) == [ax]
               for ax in axes)
    x_labelled = [i for i, ax in enumerate(axes) if any(t.get_visible() and t.get_text() for t in ax.get_xticklabels())]
    y_labelled = [i for i, ax in enumerate(axes) if any(t.get_visible() and t.get_text() for t in ax.get_yticklabels())]
    assert x_labelled == [4, 5, 6] and y_labelled == [0, 3, 6]
