"""The report's charts, drawn with matplotlib and returned as PNG data URIs for embedding.

Figures are built with ``matplotlib.figure.Figure`` and saved through the Agg renderer, never
through pyplot: no window, no global backend switch in a process that also trains.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

DPI = 96
COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd")
GAIN_COLOUR, LOSS_COLOUR = "#55a868", "#c44e52"
# Lines with at most this many points get markers, so one logged point still shows.
MARKER_LIMIT = 30


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return png_data_uri(buffer.getvalue())


def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _style(axes) -> None:
    axes.spines[["top", "right"]].set_visible(False)
    axes.grid(axis="y", color="#e5e5e5", linewidth=0.8)
    axes.set_axisbelow(True)


def per_class_iou_chart(series: dict[str, dict[str, float | None]], delta: tuple[str, str] | None) -> str:
    """Grouped bars of per-class IoU (one group per class, one bar per series) and, with ``delta``
    = (before, after), a second panel of the per-class change ``after - before``."""
    classes = list(next(iter(series.values())))
    positions = np.arange(len(classes))
    width = 0.8 / len(series)
    figure = _new_figure(max(8.0, 0.6 * len(classes)), 5.5 if delta else 3.6)
    if delta:
        bars_axes, delta_axes = figure.subplots(2, 1, sharex=True, height_ratios=(2.2, 1))
    else:
        bars_axes, delta_axes = figure.subplots(1, 1), None
    for index, (label, ious) in enumerate(series.items()):
        values = [_nan(ious.get(name)) for name in classes]
        bars_axes.bar(
            positions - 0.4 + width * (index + 0.5), values, width, label=label, color=COLOURS[index % len(COLOURS)]
        )
    bars_axes.set_ylabel("IoU (%)")
    bars_axes.set_ylim(0, 100)
    bars_axes.legend(ncols=len(series), loc="upper left", frameon=False, fontsize="small")
    _style(bars_axes)
    last_axes = bars_axes
    if delta_axes is not None:
        before, after = delta
        change = np.array([_nan(series[after].get(name)) - _nan(series[before].get(name)) for name in classes])
        delta_axes.bar(positions, change, 0.6, color=[GAIN_COLOUR if c >= 0 else LOSS_COLOUR for c in change])
        delta_axes.axhline(0, color="#444444", linewidth=0.8)
        delta_axes.set_ylabel(f"Δ {after} − {before}")
        _style(delta_axes)
        last_axes = delta_axes
    last_axes.set_xticks(positions, classes, rotation=45, ha="right")
    return _figure_uri(figure)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def curve_keys(lines: Sequence[tuple[str, list[dict[str, Any]]]]) -> list[str]:
    """Every numeric key logged by any line, losses first, then learning rates, evaluation, the rest."""
    keys = {
        key
        for _, rows in lines
        for row in rows
        for key, value in row.items()
        if key != "iteration" and isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    order = ("loss/", "lr/", "eval/")
    return sorted(keys, key=lambda key: (next((i for i, p in enumerate(order) if key.startswith(p)), len(order)), key))


def training_curves_chart(lines: Sequence[tuple[str, list[dict[str, Any]]]]) -> str:
    """One small plot per logged key, every run's line in the same colour in each, on a shared
    iteration axis."""
    keys = curve_keys(lines)
    columns = min(3, len(keys))
    rows = -(-len(keys) // columns)
    figure = _new_figure(4.4 * columns, 2.7 * rows + 0.6)
    axes_grid = figure.subplots(rows, columns, sharex=True, squeeze=False).ravel()
    for axes, key in zip(axes_grid, keys):
        for index, (label, metric_rows) in enumerate(lines):
            points = [(row["iteration"], row[key]) for row in metric_rows if key in row]
            if not points:
                continue
            iterations, values = zip(*points)
            axes.plot(
                iterations,
                values,
                label=label,
                color=COLOURS[index % len(COLOURS)],
                linewidth=1.2,
                marker="o" if len(points) <= MARKER_LIMIT else None,
                markersize=3,
            )
        axes.set_title(key, fontsize="medium")
        _style(axes)
    for axes in axes_grid[len(keys) :]:
        axes.set_visible(False)
    for axes in axes_grid[-columns:]:
        axes.set_xlabel("iteration")
        axes.xaxis.set_tick_params(labelbottom=True)
    labels = [label for label, _ in lines]
    handles = [Line2D([], [], color=COLOURS[index % len(COLOURS)], linewidth=2) for index in range(len(lines))]
    figure.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 4), frameon=False)
    return _figure_uri(figure)


def entropy_histogram_chart(stats: dict[str, Any]) -> str:
    """The store's entropy histogram (share of pixels per log bin) with λ and λ/r marked."""
    edges = np.asarray(stats["entropy_histogram"]["edges"], dtype=np.float64)
    counts = np.asarray(stats["entropy_histogram"]["counts"], dtype=np.float64)
    shares = 100 * counts / max(counts.sum(), 1)
    # The first bin starts at 0, which a log axis cannot show: draw it one decade wide.
    lefts = edges[:-1].copy()
    lefts[0] = edges[1] / 10
    figure = _new_figure(6.4, 3.4)
    axes = figure.subplots()
    axes.bar(lefts, shares, width=edges[1:] - lefts, align="edge", color=COLOURS[0], edgecolor="white")
    axes.set_xscale("log")
    threshold, rare_factor = stats["threshold"], stats["rare_factor"]
    axes.axvline(threshold, color=LOSS_COLOUR, linewidth=1.5, label=f"λ = {threshold:g}")
    axes.axvline(
        threshold / rare_factor,
        color=COLOURS[1],
        linewidth=1.5,
        linestyle="--",
        label=f"λ/r = {threshold / rare_factor:g} (rare classes)",
    )
    axes.set_xlabel("normalised entropy (first bar: below 1e-6)")
    axes.set_ylabel("pixels (%)")
    axes.set_title(f"{stats['num_images']} images · trusted {stats['trusted_fraction']:.1%}", fontsize="medium")
    axes.legend(frameon=False, fontsize="small")
    _style(axes)
    return _figure_uri(figure)


def trusted_fraction_chart(stats: dict[str, Any], precision: float | None) -> str:
    """The trusted fraction of each class's pseudo-labelled pixels; rare classes (λ/r) stand out."""
    fractions = stats["trusted_fraction_per_class"]
    classes = list(fractions)
    rare = set(stats["rare_class_names"])
    figure = _new_figure(max(6.4, 0.45 * len(classes)), 3.4)
    axes = figure.subplots()
    values = [100 * _nan(fractions[name]) for name in classes]
    colours = [COLOURS[1] if name in rare else COLOURS[0] for name in classes]
    axes.bar(np.arange(len(classes)), values, 0.7, color=colours)
    axes.set_xticks(np.arange(len(classes)), classes, rotation=45, ha="right")
    axes.set_ylim(0, 100)
    axes.set_ylabel("trusted (%)")
    title = f"trusted {stats['trusted_fraction']:.1%} of pixels"
    if precision is not None:
        title += f" · precision {precision:.1%} (all classes, target-train ground truth)"
    axes.set_title(title, fontsize="medium")
    axes.legend(
        handles=[Patch(color=COLOURS[0], label="common (λ)"), Patch(color=COLOURS[1], label="rare (λ/r)")],
        frameon=False,
        fontsize="small",
        loc="upper right",
    )
    _style(axes)
    return _figure_uri(figure)
