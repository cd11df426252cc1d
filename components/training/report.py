"""The training report: an HTML page with the loss and accuracy curves drawn as inline SVG.

The Kubeflow UI shows an ``HTML`` artifact in the run's visualizations; inline SVG needs no scripts,
no network and no plotting library.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

WIDTH, HEIGHT = 560, 250
LEFT, RIGHT, TOP, BOTTOM = 56, 120, 30, 44  # margins: y tick labels, the legend's column, the title, x ticks
COLOURS = ("#1f77b4", "#d62728")
MARKERS_UP_TO = 40  # epochs up to which each point gets a dot (a single epoch is a dot, not a line)
HIDDEN_SETTINGS = ("store_uri",)  # where the store is says nothing about the model, and may name an account
# The two pages' file names in a local run's folder (.work/runs/<run id>/), where each links to the other.
TRAINING_PAGE, EVALUATION_PAGE = "report.html", "evaluation.html"


def shown_settings(config: dict[str, Any]) -> list[tuple[str, str]]:
    """The training settings a report shows, sorted by name (the evaluation report shows the same)."""
    return [(k, str(v)) for k, v in sorted(config.items()) if k not in HIDDEN_SETTINGS]


def nice_step(span: float, ticks: int = 5) -> float:
    """A step of 1, 2 or 5 times a power of ten that divides ``span`` into about ``ticks`` intervals."""
    raw = (span or 1.0) / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def axis_ticks(low: float, high: float) -> list[float]:
    """Tick values from a multiple of a nice step at or below ``low`` to one at or above ``high``."""
    step = nice_step(high - low)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(k * step, 12) for k in range(first, max(last, first + 1) + 1)]


def accuracy_range(series: Iterable[Sequence[float]]) -> tuple[float, float]:
    """From just below the lowest accuracy of the later epochs (the last two thirds of each series) to 1: a run
    that climbs from 0.2 and then gains 0.95 → 0.99 shows those last points apart instead of as a flat line
    at the top. The first epochs' lower values fall below the axis and are cut off at the plot's edge."""
    later = [v for s in series for v in s[len(s) // 3 :] if math.isfinite(v)]
    lowest = min(later, default=0.0)
    return max(0.0, lowest - max(0.02, (1.0 - lowest) * 0.25)), 1.0


def _epoch_ticks(count: int) -> list[int]:
    step = max(1, math.ceil(nice_step(count - 1, 8))) if count > 1 else 1
    return sorted({1, *range(step, count + 1, step)})


def line_chart(title: str, series: dict[str, Sequence[float]], y_range: tuple[float, float] | None = None) -> str:
    """An SVG line chart of one or two series over epochs 1..N: ticks and labels on both axes, light grid
    lines, the legend in a column right of the plot so it never covers a curve."""
    values = [v for s in series.values() for v in s if math.isfinite(v)] or [0.0]
    ticks = axis_ticks(*(y_range or (min(values), max(values))))
    low, high = ticks[0], ticks[-1]
    count = max(len(s) for s in series.values())
    right, bottom = WIDTH - RIGHT, HEIGHT - BOTTOM

    def x_of(epoch: int) -> float:
        return LEFT + (right - LEFT) * ((epoch - 1) / (count - 1) if count > 1 else 0.5)

    def y_of(v: float) -> float:
        return bottom - (bottom - TOP) * ((v - low) / ((high - low) or 1.0))

    digits = max(0, -math.floor(math.log10(ticks[1] - ticks[0]) + 1e-9))
    clip = "plot-" + "".join(c if c.isalnum() else "-" for c in title)  # curves stay inside the plot when zoomed
    parts = [f'<clipPath id="{clip}"><rect x="{LEFT}" y="{TOP}" width="{right - LEFT}" height="{bottom - TOP}"/></clipPath>',
             f'<rect class="plot-area" x="{LEFT}" y="{TOP}" width="{right - LEFT}" height="{bottom - TOP}" fill="none" stroke="#888"/>',
             f'<text x="{LEFT}" y="{TOP - 10}" font-size="13" font-weight="bold">{html.escape(title)}'
             + (f'<tspan class="cut-note" font-size="11" font-weight="normal" fill="#666"> (values below {low:.{digits}f}, '
                'from the first epochs, are cut off)</tspan>' if min(values) < low else '') + '</text>',
             f'<text x="{(LEFT + right) / 2:.0f}" y="{HEIGHT - 6}" font-size="11" text-anchor="middle">epoch</text>']
    for v in ticks:
        parts.append(f'<line x1="{LEFT}" y1="{y_of(v):.1f}" x2="{right}" y2="{y_of(v):.1f}" stroke="#eee"/>'
                     f'<text class="y-tick" x="{LEFT - 6}" y="{y_of(v) + 4:.1f}" font-size="11" text-anchor="end">{v:.{digits}f}</text>')
    for epoch in _epoch_ticks(count):
        parts.append(f'<line x1="{x_of(epoch):.1f}" y1="{bottom}" x2="{x_of(epoch):.1f}" y2="{bottom + 4}" stroke="#888"/>'
                     f'<text class="x-tick" x="{x_of(epoch):.1f}" y="{bottom + 17}" font-size="11" text-anchor="middle">{epoch}</text>')
    legend = []
    for k, ((name, data), colour) in enumerate(zip(series.items(), COLOURS)):
        points = [(x_of(i + 1), y_of(v)) for i, v in enumerate(data) if math.isfinite(v)]
        parts.append(f'<polyline clip-path="url(#{clip})" fill="none" stroke="{colour}" stroke-width="2" '
                     f'points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in points)}"/>')
        if count <= MARKERS_UP_TO:
            parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"/>' for x, y in points if y <= bottom]
        y = TOP + 10 + 18 * k
        legend.append(f'<line x1="{right + 12}" y1="{y}" x2="{right + 32}" y2="{y}" stroke="{colour}" stroke-width="3"/>'
                      f'<text x="{right + 38}" y="{y + 4}" font-size="12">{html.escape(name)}</text>')
    parts.append(f'<g class="legend">{"".join(legend)}</g>')
    return f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{WIDTH}" height="{HEIGHT}">{"".join(parts)}</svg>'


def training_report(history: list[dict[str, Any]], config: dict[str, Any]) -> str:
    """The whole report: curves, the per-epoch table and the configuration."""
    loss = line_chart("loss", {"train": [e["loss"] for e in history], "validation": [e["val_loss"] for e in history]})
    accuracies = {"train": [e["train_accuracy"] for e in history], "validation": [e["val_accuracy"] for e in history]}
    accuracy = line_chart("accuracy", accuracies, accuracy_range(accuracies.values()))
    rows = "".join(
        f"<tr><td>{e['epoch']}</td><td>{e['loss']:.4f}</td><td>{e['train_accuracy']:.4f}</td><td>{e['val_loss']:.4f}</td>"
        f"<td>{e['val_accuracy']:.4f}</td><td>{e['comm_fraction']:.0%}</td><td>{e['seconds']:.1f}</td></tr>"
        for e in history
    )
    best = max(history, key=lambda e: (e["val_accuracy"], e["epoch"]))
    settings = ", ".join(f"{html.escape(k)}={html.escape(v)}" for k, v in shown_settings(config))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Training report</title></head>"
        "<body style='font-family:sans-serif'>"
        f"<h2>Training report</h2><p>best validation accuracy <b>{best['val_accuracy']:.4f}</b> at epoch {best['epoch']}</p>"
        f"{loss} {accuracy}"
        "<table border='1' cellpadding='4' style='border-collapse:collapse'><tr><th>epoch</th><th>loss</th><th>train acc</th>"
        f"<th>val loss</th><th>val acc</th><th>comm+wait</th><th>seconds</th></tr>{rows}</table>"
        f"<p style='color:#555;font-size:12px'>{settings}</p>"
        f"<p>The gate's verdict on this model: <a href='{EVALUATION_PAGE}'>the evaluation report</a> "
        f"({EVALUATION_PAGE}, next to this page in the run folder).</p></body></html>"
    )
