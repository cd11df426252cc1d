"""The evaluation report, as the two pages a person opens: Markdown and HTML built from the same facts.

The Markdown page is what the Kubeflow UI's Markdown viewer shows: it renders no raw HTML and truncates long
content, so it holds text and tables only. The HTML page (shown in the UI's sandboxed frame and opened from
the run folder) adds the pictures: the confusion matrix and the misclassified test images, inlined, so the
page needs no network, no scripts and no other file.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from datetime import UTC, datetime

from components.evaluation.evaluate import EvalResult, MistakeSample
from components.evaluation.pictures import COUNTS_UP_TO, MAX_MATRIX_CLASSES, confusion_svg
from components.evaluation.step import Evaluation
from components.training.report import TRAINING_PAGE, shown_settings

NOT_SCORED = "not scored"
SHOWN_SIDE = 84  # CSS pixels a small test image is enlarged to (whole multiples: pixels stay square)


@dataclass(frozen=True)
class RunInfo:
    """Where the evaluation comes from: the pipeline run, the code and when."""

    run_id: str
    code_version: str  # git commit, "" when not known
    date: datetime

    @classmethod
    def now(cls, run_id: str, code_version: str) -> RunInfo:
        return cls(run_id, code_version, datetime.now(UTC))


Table = list[list[str]]  # the first row is the header


def comparison_table(e: Evaluation) -> Table:
    """The challenger next to the champion on the same test images."""
    champion_header = None if e.champion_version is None else f"champion (production version {e.champion_version})"
    header = ["", "challenger (this run)"] + ([champion_header] if champion_header else [])
    rows = [header]
    for label, figure in (("accuracy", _accuracy), ("95% interval (Wilson)", _interval), ("correct", _correct),
                          ("misclassified", _wrong)):
        row = [label, figure(e.candidate)]
        if champion_header:
            row.append(figure(e.champion) if e.champion else "not compared")
        rows.append(row)
    return rows


def _scored(result: EvalResult | None) -> bool:
    return result is not None and result.count > 0


def _accuracy(r: EvalResult) -> str:
    return f"{r.accuracy:.4f}" if _scored(r) else NOT_SCORED


def _interval(r: EvalResult) -> str:
    low, high = r.interval
    return f"{low:.4f} – {high:.4f}" if _scored(r) else NOT_SCORED


def _correct(r: EvalResult) -> str:
    return f"{r.correct} of {r.count}" if _scored(r) else NOT_SCORED


def _wrong(r: EvalResult) -> str:
    return str(r.count - r.correct) if _scored(r) else NOT_SCORED


def class_table(e: Evaluation) -> Table:
    """Precision and recall per class, the champion's beside the challenger's."""
    header = ["class", "challenger precision", "challenger recall"]
    header += ["champion precision", "champion recall"] if e.champion else []
    rows = [header]
    for name in e.candidate.class_names:
        row = [name, f"{e.candidate.precision[name]:.3f}", f"{e.candidate.recall[name]:.3f}"]
        if e.champion:
            row += [f"{e.champion.precision.get(name, 0):.3f}", f"{e.champion.recall.get(name, 0):.3f}"]
        rows.append(row)
    return rows


def run_table(e: Evaluation, run: RunInfo) -> Table:
    """Provenance: which run, when, on which data, from which code, under which gate."""
    return [["", ""],
            ["run id", run.run_id or "not recorded"],
            ["date", run.date.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")],
            ["data set (content hash)", e.data_hash or "not recorded"],
            ["code version", run.code_version or "not recorded"],
            ["gate", f"accuracy at least {e.threshold:.4f}, and at most {e.tolerance:.4f} below production"],
            ["test images", str(e.candidate.count)]]


def confusion_table(result: EvalResult) -> Table:
    """The confusion matrix as numbers (rows: true class, columns: predicted class)."""
    header = ["true \\ predicted", *result.class_names]
    return [header] + [[name, *map(str, row)] for name, row in zip(result.class_names, result.confusion)]


def champion_line(e: Evaluation) -> str:
    if e.champion_version is None:
        return "No production model yet: the challenger is judged by the threshold alone."
    if e.champion is None:
        return f"Production version {e.champion_version} was not scored on these images (see the verdict)."
    return (f"The challenger and the champion, production version {e.champion_version}, were scored on the same "
            f"{e.champion.count} test images.")


# --- Markdown ---------------------------------------------------------------------------------------------

def _md_table(table: Table) -> list[str]:
    def cells(row: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"

    return [cells(table[0]), "|" + "---|" * len(table[0]), *map(cells, table[1:])]


def markdown_report(e: Evaluation, run: RunInfo) -> str:
    """The report the Kubeflow UI's Markdown viewer shows: verdict, challenger and champion, per-class table,
    the confusion matrix as numbers, provenance and training parameters."""
    lines = [f"# Evaluation: **{e.verdict.decision}**", "", e.verdict.reason, "", champion_line(e), "",
             *_md_table(comparison_table(e)), "",
             "The interval is where the accuracy on more images like these would lie, with 95% confidence.", ""]
    if _scored(e.candidate):
        lines += ["## Per class", "", *_md_table(class_table(e)), ""]
        if len(e.candidate.class_names) <= COUNTS_UP_TO:
            lines += ["## Confusion matrix of the challenger", "", *_md_table(confusion_table(e.candidate)), ""]
    lines += ["## Run", "", *_md_table(run_table(e, run)), "", "## Training parameters", "", _md_settings(e), "",
              "The confusion matrix as a picture and the misclassified test images are in this step's HTML report; "
              f"the training curves in the training report ({TRAINING_PAGE} in the run folder).", ""]
    return "\n".join(lines)


def _md_settings(e: Evaluation) -> str:
    settings = shown_settings(e.training)
    return ", ".join(f"`{k}={v}`" for k, v in settings) if settings else "not recorded (the model folder has no training history)"


# --- HTML -------------------------------------------------------------------------------------------------

STYLE = (
    "body{font-family:sans-serif;margin:16px;color:#222}"
    "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "td:first-child,th:first-child{text-align:left}"
    ".verdict{padding:8px 12px;border-radius:4px;font-size:18px}.accepted{background:#e6f4ea}.rejected{background:#fce8e6}"
    ".mistakes{display:flex;flex-wrap:wrap;gap:10px}.mistakes figure{margin:0;text-align:center;font-size:12px}"
    ".mistakes img{image-rendering:pixelated;border:1px solid #ccc;display:block;margin:0 auto 2px}"
    ".run td{text-align:left}.settings{columns:3;max-width:900px;font-size:13px;color:#444}"
)


def _html_table(table: Table, css_class: str) -> str:
    """A table; a header row of empty cells (the run table's, which Markdown needs) is left out."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table[1:])
    return f'<table class="{css_class}">{f"<tr>{head}</tr>" if any(table[0]) else ""}{body}</table>'


def html_report(e: Evaluation, run: RunInfo) -> str:
    """The whole evaluation page, pictures included."""
    decision = html.escape(e.verdict.decision)
    parts = [f'<div class="verdict {decision}">Evaluation: <b>{decision}</b> — {html.escape(e.verdict.reason)}</div>',
             f"<p>{html.escape(champion_line(e))}</p>", _html_table(comparison_table(e), "comparison"),
             "<p>The interval is where the accuracy on more images like these would lie, with 95% confidence.</p>"]
    if _scored(e.candidate):
        parts += [_confusion_section(e.candidate), _mistakes_section(e.mistakes, e.candidate.class_names),
                  "<h3>Per class</h3>", _html_table(class_table(e), "classes")]
    parts += ["<h3>Run</h3>", _html_table(run_table(e, run), "run"), "<h3>Training parameters</h3>", _html_settings(e),
              f"<p>Training curves: <a href='{TRAINING_PAGE}'>the training report</a> ({TRAINING_PAGE}, next to this page "
              "in the run folder).</p>"]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Evaluation {html.escape(run.run_id)}</title>"
            f"<style>{STYLE}</style></head><body><h2>Evaluation report</h2>{''.join(parts)}</body></html>")


def _confusion_section(result: EvalResult) -> str:
    title = "<h3>Confusion matrix of the challenger</h3>"
    if len(result.class_names) > MAX_MATRIX_CLASSES:
        return (f"{title}<p>Not drawn for {len(result.class_names)} classes (more than {MAX_MATRIX_CLASSES}); "
                "the numbers are in the step's confusion-matrix output.</p>")
    note = "<p>Rows: the true class; columns: the predicted class. Colour: the share of the row (blue right, red wrong).</p>"
    return f"{title}{note}{confusion_svg(result.confusion, result.class_names)}"


def _mistakes_section(mistakes: MistakeSample, class_names: list[str]) -> str:
    if not mistakes.total:
        return "<h3>Misclassified test images: none</h3>"
    figures = []
    for m in mistakes.kept:
        scale = max(1, SHOWN_SIDE // max(m.width, m.height))
        true, predicted = html.escape(class_names[m.true]), html.escape(class_names[m.predicted])
        source = "data:image/png;base64," + base64.b64encode(m.png).decode("ascii")
        figures.append(f'<figure><img src="{source}" width="{m.width * scale}" height="{m.height * scale}" '
                       f'alt="true {true}, predicted {predicted}"><figcaption>true <b>{true}</b><br>'
                       f"predicted <b>{predicted}</b></figcaption></figure>")
    shown = f"the first {len(mistakes.kept)} of {mistakes.total}" if mistakes.total > len(mistakes.kept) else f"all {mistakes.total}"
    return f'<h3>Misclassified test images: {shown}</h3><div class="mistakes">{"".join(figures)}</div>'


def _html_settings(e: Evaluation) -> str:
    settings = shown_settings(e.training)
    if not settings:
        return "<p>not recorded (the model folder has no training history)</p>"
    items = "".join(f"<li>{html.escape(k)} = {html.escape(v)}</li>" for k, v in settings)
    return f'<ul class="settings">{items}</ul>'
