"""``python -m pipelines monitor``: the drift report of a model's production version over a window.

    monitor --store URI [--collected URI] --model NAME [--since 24h|ISO] [--until ISO|duration] [--out DIR]
            [--psi-threshold 0.2] [--class-psi-threshold 0.2] [--min-records 100]

Prints the verdict line and the scores table, and writes report.md, report.html, metrics.json and drift.json
to ``--out``. The exit code is 0 whatever the verdict (drift is a finding, not a failure); bad input (an
unknown model, no production version, a bad time) is a one-line error.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from pipelines.registry_cli import model_name_arg


def cmd_monitor(args: argparse.Namespace) -> int:
    from components.monitoring.drift import Thresholds, drift_report, window
    from components.monitoring.report import headline, statistics_table, write_reports
    from components.store import open_store

    since, until = window(args.since, args.until)  # ValueError: one line, before the store is touched
    thresholds = Thresholds(args.psi_threshold, args.class_psi_threshold, args.min_records)
    store = open_store(args.store)
    collected = open_store(args.collected) if args.collected else store
    report = drift_report(store, args.model, since, until, thresholds, collected)
    print(headline(report))
    table = statistics_table(report)
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)).rstrip())
    for path in write_reports(report, args.out):
        print(f"wrote {path}")
    return 0


def _non_negative(kind: type) -> Callable[[str], float | int]:
    def parse(value: str) -> float | int:
        try:
            number = kind(value)
        except ValueError:
            number = -1
        if number < 0:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__} of 0 or more, got {value!r}")
        return number

    return parse


def add_monitor_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("monitor", help="drift report: collected requests against the production version's training data")
    p.add_argument("--store", required=True, metavar="URI", help="store URI holding the registry (path, https://…blob…)")
    p.add_argument("--collected", metavar="URI", help="store URI holding collected/ (the predictor's collect_uri); default: --store")
    p.add_argument("--model", required=True, type=model_name_arg, metavar="NAME", help="model name in the registry")
    p.add_argument("--since", metavar="TIME", help="window start: ISO 8601 (UTC if no zone) or a duration before --until "
                   "(30m, 24h, 7d); default 24h")
    p.add_argument("--until", metavar="TIME", help="window end (excluded): ISO 8601 or a duration before now; default now")
    p.add_argument("--out", type=Path, default=Path("drift-report"), help="folder for report.md/.html and the JSON (default ./drift-report)")
    p.add_argument("--psi-threshold", type=_non_negative(float), default=0.2, help="drift when an input statistic's PSI is above this")
    p.add_argument("--class-psi-threshold", type=_non_negative(float), default=0.2,
                   help="drift when the predicted-class PSI against the training labels is above this")
    p.add_argument("--min-records", type=_non_negative(int), default=100, help="fewer records: 'not enough data'")
    p.set_defaults(func=cmd_monitor)
    return p
