"""The training report: an HTML page with the loss and accuracy curves drawn as inline SVG.

The Kubeflow UI shows an ``HTML`` artifact in the run's visualizations; inline SVG needs no scripts,
no network and no plotting library.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

WIDTH, HEIGHT, PAD = 420, 220, 36
COLOURS = ("#1f77b4", "#d62728")


def line_chart(title: str, series: dict[str, Sequence[float]], y_range: tuple[float, float] | None = None) -> str:
    """An SVG line chart of one or two series over epochs 1..N."""
    values = [v for s in series.values() for v in s]
    low, high = y_range or (min(values), max(values))
    span = (high - low) or 1.0
    count = max(len(s) for s in series.values())

    def point(i: int, v: float) -> str:
        x = PAD + (WIDTH - 2 * PAD) * (i / max(1, count - 1))
        y = HEIGHT - PAD - (HEIGHT - 2 * PAD) * ((v - low) / span)
        return f"{x:.1f},{y:.1f}"

    lines, legend = [], []
    for k, ((name, data), colour) in enumerate(zip(series.items(), COLOURS)):
        pts = " ".join(point(i, v) for i, v in enumerate(data))
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{pts}"/>')
        legend.append(f'<text x="{WIDTH - PAD - 90}" y="{PAD + 14 * k}" fill="{colour}" font-size="11">{html.escape(name)}</text>')
    axes = (
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#888"/>'
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{HEIGHT - PAD}" stroke="#888"/>'
        f'<text x="{PAD}" y="{PAD - 12}" font-size="12" font-weight="bold">{html.escape(title)}</text>'
        f'<text x="4" y="{PAD + 4}" font-size="10">{high:.3g}</text><text x="4" y="{HEIGHT - PAD}" font-size="10">{low:.3g}</text>'
        f'<text x="{WIDTH / 2 - 20}" y="{HEIGHT - 8}" font-size="10">epoch 1–{count}</text>'
    )
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}">{axes}{"".join(lines)}{"".join(legend)}</svg>'


def training_report(history: list[dict[str, Any]], config: dict[str, Any]) -> str:
    """The whole report: curves, the per-epoch table and the configuration."""
    loss = line_chart("loss", {"train": [e["loss"] for e in history], "validation": [e["val_loss"] for e in history]})
    accuracy = line_chart("accuracy", {"train": [e["train_accuracy"] for e in history],
                                       "validation": [e["val_accuracy"] for e in history]}, (0.0, 1.0))
    rows = "".join(
        f"<tr><td>{e['epoch']}</td><td>{e['loss']:.4f}</td><td>{e['train_accuracy']:.4f}</td><td>{e['val_loss']:.4f}</td>"
        f"<td>{e['val_accuracy']:.4f}</td><td>{e['comm_fraction']:.0%}</td><td>{e['seconds']:.1f}</td></tr>"
        for e in history
    )
    best = max(history, key=lambda e: (e["val_accuracy"], e["epoch"]))
    settings = ", ".join(f"{html.escape(k)}={html.escape(str(v))}" for k, v in sorted(config.items()) if k not in ("store_uri",))
    return (
        "<!doctype html><html><body style='font-family:sans-serif'>"
        f"<h2>Training report</h2><p>best validation accuracy <b>{best['val_accuracy']:.4f}</b> at epoch {best['epoch']}</p>"
        f"{loss} {accuracy}"
        "<table border='1' cellpadding='4' style='border-collapse:collapse'><tr><th>epoch</th><th>loss</th><th>train acc</th>"
        f"<th>val loss</th><th>val acc</th><th>comm+wait</th><th>seconds</th></tr>{rows}</table>"
        f"<p style='color:#555;font-size:12px'>{settings}</p></body></html>"
    )
