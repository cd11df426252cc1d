"""The drift report as the two pages a person opens: Markdown (text and tables, for the Kubeflow UI's viewer)
and HTML with every distribution drawn, training next to served, as inline SVG (no scripts, no other file).

Both start with the verdict, the version judged and the window, so a page read on its own says what it is about.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path

from components.evaluation.report import STYLE, Table, _html_table, _md_table
from components.monitoring.drift import DRIFT, NO_DRIFT, DriftReport, StatisticDrift

TRAINING_COLOUR, SERVED_COLOUR = "#4c72b0", "#dd8452"
CHART_HEIGHT = 120  # pixels of the tallest bar
LABEL_WIDTH = 30  # pixels a bin label of 6 characters needs at font size 9
MAX_BAR_GROUPS = 60  # classes (or hours) drawn; past that a chart stops being readable and the table has the numbers
DRIFT_STYLE = ".drift{background:#fce8e6}.no-drift{background:#e6f4ea}.not-enough-data{background:#fff4d6}" \
              ".charts{display:flex;flex-wrap:wrap;gap:18px}.charts figure{margin:0;font-size:12px}" \
              ".scores td:last-child{text-align:left}.key span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}"
REPORT_FILES = ("report.md", "report.html", "metrics.json", "drift.json")


def status(report: DriftReport, value: float, threshold: float) -> str:
    if report.verdict not in (DRIFT, NO_DRIFT):
        return "not judged"  # too few records: a high PSI there is sampling noise
    return "moved" if value > threshold else "ok"


def headline(report: DriftReport) -> str:
    """The one line the CLI prints and both pages start with."""
    return (f"drift report for {report.model} version {report.version} (production), {report.since} to {report.until}: "
            f"{report.verdict.upper()} ({report.reason})")


def statistics_table(report: DriftReport) -> Table:
    rows = [["statistic", "PSI", "status", "what it measures"]]
    for s in report.statistics:
        rows.append([s.name, f"{s.psi:.3f}", status(report, s.psi, report.thresholds.psi), s.description])
    c = report.classes
    rows.append(["predicted class", f"{c.psi:.3f}", status(report, c.psi, report.thresholds.class_psi),
                 f"predicted classes against training labels (total variation {c.total_variation:.3f})"])
    return rows


def records_table(report: DriftReport) -> Table:
    others = ", ".join(f"version {v}: {n}" for v, n in sorted(report.other_versions.items())) or "none"
    confidence = ", ".join(f"{k} {v:.3f}" for k, v in report.confidence.items()) or "no records"
    return [["", ""], [f"records judged (version {report.version})", str(report.records)],
            ["records of other versions (not judged)", others], ["unusable lines skipped", str(report.skipped)],
            ["training images in the reference", str(report.reference_count)],
            ["training data set (content hash)", report.dataset_hash[:19]], ["served confidence", confidence],
            ["thresholds", f"PSI > {report.thresholds.psi:g} on an input statistic, > {report.thresholds.class_psi:g} on "
                           f"the predicted class; at least {report.thresholds.min_records} records"]]


def classes_table(report: DriftReport) -> Table:
    c = report.classes
    return [["class", "training share", "served share"],
            *([name, f"{t:.3f}", f"{s:.3f}"] for name, t, s in zip(c.class_names, c.training, c.served))]


def moves_lines(report: DriftReport) -> list[str]:
    return [f"{m['at']}: {m['action']} from version {m['previous']} to version {m['version']} by {m['by']}"
            + (f" ({m['reason']})" if m.get("reason") else "") for m in report.moves]


# --- Markdown ------------------------------------------------------------------------------------------

def markdown_report(report: DriftReport) -> str:
    moved = report.drifted() if report.verdict == DRIFT else []
    lines = [f"# Drift: **{report.verdict}**", "", headline(report), ""]
    if moved:
        lines += [f"Moved: {', '.join(moved)}.", ""]
    lines += ["## Statistics (training split against served)", "", *_md_table(statistics_table(report)), "",
              "PSI: below 0.1 no real change, 0.1–0.2 moderate, above 0.2 significant.", "",
              "## Records", "", *_md_table(records_table(report)), "",
              "## Predicted classes", "", *_md_table(classes_table(report)), "",
              "## Collected per hour (every version)", "",
              *_md_table([["hour (UTC)", "records"], *([h, str(n)] for h, n in report.volume.items())]), ""]
    lines += ["## Production moves in the window", "", *(f"- {m}" for m in moves_lines(report) or ["none"]), "",
              "The distributions are drawn side by side in this step's HTML report.", ""]
    return "\n".join(lines)


# --- HTML ----------------------------------------------------------------------------------------------

def bars_svg(labels: Sequence[str], training: Sequence[float] | None, served: Sequence[float], unit: str = "share") -> str:
    """Grouped bars, one group per label: training (blue) beside served (orange); one series when no training."""
    series = [(TRAINING_COLOUR, "training", training), (SERVED_COLOUR, "served", served)] if training is not None \
        else [(SERVED_COLOUR, "served", served)]
    top = max([max(values, default=0) for _, _, values in series] + [1e-9])
    bar = 12 if len(labels) <= 12 else 8 if len(labels) <= 20 else 4
    group = bar * len(series) + 4
    every = math.ceil(LABEL_WIDTH / group)  # label every bin only where the labels fit
    width, height = 30 + group * len(labels), CHART_HEIGHT + 34
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<line x1="28" y1="{CHART_HEIGHT + 4}" x2="{width}" y2="{CHART_HEIGHT + 4}" stroke="#999"/>',
             f'<text x="0" y="12" font-size="10">{_number(top)}</text>']
    for g, label in enumerate(labels):
        x0 = 30 + g * group
        for k, (colour, name, values) in enumerate(series):
            h = CHART_HEIGHT * values[g] / top
            tip = html.escape(f"{label}: {name} {unit} {_number(values[g])}")
            parts.append(f'<rect x="{x0 + k * bar}" y="{CHART_HEIGHT + 4 - h:.1f}" width="{bar - 1}" height="{h:.1f}" '
                         f'fill="{colour}"><title>{tip}</title></rect>')
        if g % every == 0:
            parts.append(f'<text x="{x0}" y="{CHART_HEIGHT + 18}" font-size="9">{html.escape(label[:6])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _number(value: float) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def bin_labels(edges: Sequence[float]) -> list[str]:
    """A bin's label: its lower edge ("<e" for the first, open-ended one)."""
    return [f"<{edges[0]:g}" if edges else "all"] + [f"{e:g}" for e in edges]


def _statistic_figure(s: StatisticDrift, report: DriftReport) -> str:
    caption = (f"<b>{html.escape(s.name)}</b> PSI {s.psi:.3f} ({status(report, s.psi, report.thresholds.psi)})<br>"
               f"{html.escape(s.description)}")
    return f"<figure>{bars_svg(bin_labels(s.edges), s.training, s.served)}<figcaption>{caption}</figcaption></figure>"


def _key() -> str:
    return (f'<p class="key">bars:<span style="background:{TRAINING_COLOUR}"></span>training split'
            f'<span style="background:{SERVED_COLOUR}"></span>served in the window</p>')


def html_report(report: DriftReport) -> str:
    css = {DRIFT: "drift", NO_DRIFT: "no-drift"}.get(report.verdict, "not-enough-data")
    moved = report.drifted() if report.verdict == DRIFT else []
    c = report.classes
    parts = [f'<div class="verdict {css}">Drift: <b>{html.escape(report.verdict)}</b> — {html.escape(report.model)} '
             f"version {report.version} (production), {html.escape(report.since)} to {html.escape(report.until)}</div>",
             f"<p>{html.escape(report.reason)}</p>",
             f"<p>Moved: <b>{html.escape(', '.join(moved))}</b></p>" if moved else "",
             "<h3>Scores</h3>", _html_table(statistics_table(report), "scores"),
             "<p>PSI (population stability index): below 0.1 no real change, 0.1–0.2 moderate, above 0.2 significant.</p>",
             "<h3>Input statistics: training split against served</h3>", _key(),
             "<p>Bins are the training split's deciles of each statistic, so every blue bar is about 0.1; "
             "the pooled intensity histogram uses 16 equal bands of 0–1.</p>",
             '<div class="charts">' + "".join(_statistic_figure(s, report) for s in report.statistics) + "</div>",
             f"<h3>Predicted classes against training labels: PSI {c.psi:.3f}, total variation {c.total_variation:.3f}</h3>",
             _classes_section(report), "<h3>Records</h3>", _html_table(records_table(report), "records"),
             "<h3>Collected per hour (every version)</h3>", _volume_section(report),
             "<h3>Production moves in the window</h3>",
             "<ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in moves_lines(report) or ["none"]) + "</ul>"]
    title = f"Drift {html.escape(report.model)} v{report.version}"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{STYLE}{DRIFT_STYLE}</style>"
            f"</head><body><h2>Drift report</h2>{''.join(parts)}</body></html>")


def _classes_section(report: DriftReport) -> str:
    c = report.classes
    if len(c.class_names) > MAX_BAR_GROUPS:
        return f"<p>Not drawn for {len(c.class_names)} classes; the shares are in drift.json.</p>"
    return _key() + bars_svg(c.class_names, c.training, c.served) + _html_table(classes_table(report), "classes")


def _volume_section(report: DriftReport) -> str:
    if not report.volume:
        return "<p>no records in the window</p>"
    hours, counts = list(report.volume), list(report.volume.values())
    chart = bars_svg([h[11:13] for h in hours], None, counts, "records") if len(hours) <= 24 * 7 else ""
    return chart + f"<p>{len(hours)} hours with records, {sum(counts)} records; the first {hours[0]}, the last {hours[-1]}.</p>"


def write_reports(report: DriftReport, out: Path) -> list[Path]:
    """report.md, report.html, metrics.json (the flat numbers) and drift.json (everything) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    contents = (markdown_report(report), html_report(report), json.dumps(report.metrics(), indent=2),
                json.dumps(report.to_dict(), indent=2))
    paths = [out / name for name in REPORT_FILES]
    for path, text in zip(paths, contents):
        path.write_text(text)
    return paths
