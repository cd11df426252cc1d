"""``python -m pipelines registry …``: see and move a model registry by hand.

    registry list     --store URI --model NAME                  versions, metrics, lineage; * marks production
    registry show     --store URI --model NAME [--version N] [--json]   one version (default: production), its files checked
    registry history  --store URI --model NAME                  every change of the production pointer
    registry promote  --store URI --model NAME --version N [--reason TEXT] [--actor WHO] [--force]
    registry rollback --store URI --model NAME [--reason TEXT] [--actor WHO] [--force]
    registry gc       --store URI --model NAME [--older-than-hours H] [--dry-run]   files of pushes that died

Promote and rollback verify every file of the version against its hash first, and record the manifest's
SHA-256 in the pointer. They refuse a version the gate rejected unless ``--force`` and ``--reason`` are
given (the history records both). They are compare-and-swap writes on the pointer: when another run moves it
at the same moment, the command fails and says where the pointer went. A model name the store does not hold,
or a store with no registry in it, is refused naming what is there. :func:`add_registry_commands` plugs
these into the project's CLI; every handler raises a :class:`ProjectError` with a one-line reason on failure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from components.errors import ProjectError
from components.modelfile import MANIFEST_FILE
from components.registry import Registry, gate_verdict, validate_model_name, weights_sha256
from components.store import open_store

MISSING = "-"
FORGED = "manifest-changed-since-promotion(forged?)"


@dataclass(frozen=True)
class VersionRow:
    """One line of ``registry list``: a version's headline metrics and lineage."""

    version: int
    accuracy: str
    verdict: str
    created: str
    run_id: str
    git_commit: str
    dataset_hash: str
    weights: str


def summarize_manifest(manifest: dict[str, Any]) -> VersionRow:
    """The list row for a manifest; fields a manifest lacks show as ``-``."""
    lineage = manifest.get("lineage") or {}
    return VersionRow(
        version=int(manifest["version"]),
        accuracy=_figure(candidate_accuracy(manifest)),
        verdict=str(gate_verdict(manifest)[0] or MISSING),
        created=str(manifest.get("created_at", MISSING)),
        run_id=str(lineage.get("run_id") or MISSING),
        git_commit=str(lineage.get("git_commit") or lineage.get("code_version") or MISSING)[:12],
        dataset_hash=str(lineage.get("dataset_hash") or MISSING)[:19],
        weights=(weights_sha256(manifest) or MISSING)[:12],  # equal prefixes: a rerun that made the same weights
    )


def candidate_accuracy(manifest: dict[str, Any]) -> float | None:
    """The version's test accuracy: ``metrics.accuracy``, or the pipeline's ``metrics.candidate.accuracy``."""
    metrics = manifest.get("metrics") or {}
    accuracy = metrics.get("accuracy", (metrics.get("candidate") or {}).get("accuracy"))
    return accuracy if isinstance(accuracy, (int, float)) else None


def _setting(value: Any) -> Any:
    # KFP artifact metadata turns integers into floats (best_epoch 2 comes back as 2.0).
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _figure(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else MISSING


def format_versions(rows: list[VersionRow], production: int | None) -> str:
    """A fixed-width table of ``rows``, the production version marked with ``*``."""
    header = ("", "VERSION", "ACCURACY", "VERDICT", "CREATED", "RUN ID", "GIT COMMIT", "DATASET HASH", "WEIGHTS")
    lines = [header] + [
        ("*" if r.version == production else "", str(r.version), r.accuracy, r.verdict, r.created, r.run_id,
         r.git_commit, r.dataset_hash, r.weights)
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def format_change(record: dict[str, Any]) -> str:
    """One pointer change as a line: when, what, from which version to which, who and why; a move forced
    onto a version the gate rejected says so."""
    reason = f"  ({record['reason']})" if record.get("reason") else ""
    forced = "  FORCED over the gate's rejection" if record.get("forced") else ""
    return (f"{record.get('at', MISSING)}  {record.get('action', 'promote'):8}  "
            f"{record.get('previous') or 'none'} -> {record['version']}  by {record.get('by', MISSING)}{forced}{reason}")


KEY_TRAINING = ("arch", "epochs", "best_epoch", "batch_size", "optimizer", "lr", "num_ps", "num_workers", "mode", "seed")


def describe_version(manifest: dict[str, Any], production: int | None, identical_to: int | None) -> list[str]:
    """``registry show``'s summary of one manifest: what a person checks before promoting or rolling back."""
    # Here, not at the top: they import torch and KServe, which no other registry command (and not the CLI's start) needs.
    from components.export import summary as export_summary
    from components.profile import PROFILE_KEY, format_profile

    version = int(manifest["version"])
    metrics, lineage = manifest.get("metrics") or {}, manifest.get("lineage") or {}
    decision, reason = gate_verdict(manifest)
    champion = (metrics.get("champion") or {}).get("accuracy")
    versus = (f" (production version {metrics.get('champion_version')} scored {_figure(champion)} on the same split)"
              if champion is not None else "")
    weights = weights_sha256(manifest) or MISSING
    same = f" (identical to production version {identical_to})" if identical_to is not None else ""
    params = {**(lineage.get("parameters") or {}), **(lineage.get("training") or {})}
    training = ", ".join(f"{k}={_setting(params[k])}" for k in KEY_TRAINING if k in params)
    fields = [
        ("production", "yes" if version == production else f"no (production: {production or 'none'})"),
        ("created", str(manifest.get("created_at", MISSING))),
        ("accuracy", _figure(candidate_accuracy(manifest)) + versus),
        ("verdict", f"{decision or MISSING}" + (f": {reason}" if reason else "")),
        ("weights", f"sha256 {weights}{same}"),
        ("data", f"{lineage.get('dataset_hash') or MISSING} ({lineage.get('dataset_prefix') or 'prefix not recorded'})"),
        ("run", f"{lineage.get('run_id') or MISSING}, code {lineage.get('code_version') or lineage.get('git_commit') or MISSING}"),
        ("training", training or MISSING),
        ("onnx", export_summary(manifest.get("onnx"))),
    ]
    lines = [f"{manifest.get('model', '?')} version {version}"] + [f"  {label:<11} {value}" for label, value in fields]
    profile = manifest.get(PROFILE_KEY)
    return lines + [f"  {line}" for line in format_profile(profile)] if profile else lines + [f"  {'profile':<11} {MISSING}"]


def default_actor() -> str:
    """Who an unattributed change is recorded as: this user on this host, through this CLI."""
    user = os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"
    return f"{user}@{socket.gethostname()} (registry CLI)"


def open_registry(args: argparse.Namespace) -> Registry:
    """The registry that ``--store`` and ``--model`` name; refused when the store holds no such model."""
    registry = Registry(open_store(args.store), args.model)
    registry.check_exists()
    return registry


def cmd_list(args: argparse.Namespace) -> None:
    registry = open_registry(args)
    versions = registry.versions()
    if not versions:
        print(f"no complete versions of {registry.name} in {registry.store.uri} (only pushes that died before "
              f"their manifest: see registry gc)")
        return
    rows = [summarize_manifest(registry.manifest(v)) for v in versions]
    recorded = registry.promoted_digests()
    # A promoted version whose manifest changed since: its metrics and verdict cannot be believed.
    rows = [replace(r, verdict=FORGED) if r.version in recorded and registry.manifest_sha256(r.version) != recorded[r.version]
            else r for r in rows]
    print(format_versions(rows, registry.production().version))


def cmd_show(args: argparse.Namespace) -> None:
    registry = open_registry(args)
    version = args.version if args.version is not None else registry.production().version
    if version is None:
        raise ProjectError(f"expected --version N or a production version of {registry.name}, found neither "
                           f"(versions: {registry.versions()})")
    manifest = registry.manifest(version)
    if args.json:
        print(json.dumps(manifest, indent=2, sort_keys=True))
    else:
        production = registry.production().version
        print("\n".join(describe_version(manifest, production, registry.identical_production(version))))
    sys.stdout.flush()  # the manifest first, then what its files say about it
    # A manifest is only as good as the files it lists: check them, so a tampered version is noticed here.
    checked = f"{len(manifest['files'])} files verified against {MANIFEST_FILE} (its sha256: {registry.verify(version)})"
    print(checked, file=sys.stderr if args.json else sys.stdout)


def cmd_history(args: argparse.Namespace) -> None:
    registry = open_registry(args)
    records = registry.history()
    if not records:
        print(f"{registry.name} was never promoted")
        return
    print("\n".join(format_change(r) for r in records))
    print("\nin production:")  # the windows each version served (collected records carry the version too)
    for version, start, end in registry.served_windows():
        print(f"  {'none' if version is None else f'v{version}':>5}  from {start}  until {end or 'now'}")


def cmd_promote(args: argparse.Namespace) -> None:
    # Registry.promote verifies every file of the version against its hash before it moves the pointer.
    pointer = open_registry(args).promote(args.version, args.actor, reason=args.reason, force=args.force)
    print(f"production of {args.model}: {format_change(pointer.record)}")


def cmd_rollback(args: argparse.Namespace) -> None:
    pointer = open_registry(args).rollback(args.actor, reason=args.reason, force=args.force)
    print(f"rolled {args.model} back from version {pointer.record['previous']} to version {pointer.version}, the "
          f"version in production before it")
    print(f"production of {args.model}: {format_change(pointer.record)}")


def cmd_gc(args: argparse.Namespace) -> None:
    registry = open_registry(args)
    pushes = registry.abandoned(timedelta(hours=args.older_than_hours))
    for push in pushes:
        if not args.dry_run:
            registry.clear_abandoned(push)
        verb = "would delete" if args.dry_run else "deleted"
        print(f"version {push.version} (claimed {push.claimed_at} by run {push.run_id or MISSING}, no manifest): {verb} {len(push.files)} files")
    if not pushes:
        print(f"no abandoned pushes of {registry.name} older than {args.older_than_hours:g} hours")


def hours_arg(value: str) -> float:
    """argparse type for ``--older-than-hours``: a number of hours, at least 0."""
    try:
        hours = float(value)
    except ValueError:
        hours = math.nan  # refused below, with the same message
    if not (math.isfinite(hours) and hours >= 0):
        raise argparse.ArgumentTypeError(f"expected a number of hours (0 or more), got {value!r}")
    return hours


def model_name_arg(value: str) -> str:
    """argparse type for ``--model`` that keeps the validator's message."""
    try:
        return validate_model_name(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def version_arg(value: str) -> int:
    """argparse type for ``--version``: a positive integer."""
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a version number (1, 2, …), got {value!r}")
    return int(value)


def add_registry_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``registry list|show|history|promote|rollback`` to a CLI; each sets ``func`` to its handler."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", required=True, metavar="URI", help="store URI holding the registry (path, file://, https://…blob…)")
    common.add_argument("--model", required=True, type=model_name_arg, metavar="NAME", help="model name in the registry")
    registry = subparsers.add_parser("registry", help="see model versions and move the production pointer")
    commands = registry.add_subparsers(dest="registry_command", required=True, metavar="COMMAND")
    commands.add_parser("list", parents=[common], help="versions with metrics and lineage; * marks production").set_defaults(func=cmd_list)
    show = commands.add_parser("show", parents=[common], help="summarize one version (--json: its whole manifest)")
    show.add_argument("--version", type=version_arg, help="version number (default: the production version)")
    show.add_argument("--json", action="store_true", help="print the whole manifest as JSON (the check goes to stderr)")
    show.set_defaults(func=cmd_show)
    commands.add_parser("history", parents=[common], help="every change of the production pointer").set_defaults(func=cmd_history)
    moves = argparse.ArgumentParser(add_help=False)
    moves.add_argument("--reason", default="", help="why, recorded in the audit history")
    moves.add_argument("--actor", default=default_actor(), help="who, recorded in the audit history (default: user@host)")
    moves.add_argument("--force", action="store_true",
                       help="move production to a version the gate rejected (needs --reason; both are recorded)")
    promote = commands.add_parser("promote", parents=[common, moves], help="point production at a version")
    promote.add_argument("--version", type=version_arg, required=True, help="version number to promote")
    promote.set_defaults(func=cmd_promote)
    commands.add_parser("rollback", parents=[common, moves], help="point production back at the previous production version").set_defaults(func=cmd_rollback)
    gc = commands.add_parser("gc", parents=[common], help="delete the files of pushes that died before their manifest")
    gc.add_argument("--older-than-hours", type=hours_arg, default=24.0,
                    help="only claims at least this old (default 24: a younger one may still be uploading)")
    gc.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    gc.set_defaults(func=cmd_gc)
    return registry


def main(argv: list[str] | None = None) -> int:
    """Run one registry command (the same handlers ``python -m pipelines registry`` runs); return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m pipelines", description="Operate the model registry.")
    add_registry_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ProjectError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
