"""``python -m pipelines data put``: put a raw data set where a pipeline run's ``data_uri`` can name it.

    data put FOLDER   --to URI     validate a folder (MNIST IDX files or an ImageFolder tree), then upload it
    data put --sample --to URI     the bundled digits sample (what ``make run`` trains on)

Raw data in Azure Blob must be written through the project's store (every blob carries its SHA-256);
see :mod:`components.data.upload`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_put(args: argparse.Namespace) -> None:
    from components.data.upload import put_folder, put_sample

    result = put_sample(args.to) if args.sample else put_folder(args.folder, args.to)
    print(result.describe())
    print(f"train on it: python -m pipelines run --local --data-uri {args.to}   (on Kubeflow: the data_uri parameter)")


def add_data_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data put`` to a CLI; it sets ``func`` to its handler."""
    data = subparsers.add_parser("data", help="put a raw data set into a store (local folder or Azure Blob)")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    put = commands.add_parser("put", help="validate a raw data set and upload it to a store URI")
    source = put.add_mutually_exclusive_group(required=True)
    source.add_argument("folder", nargs="?", type=Path, help="folder with MNIST IDX files or an ImageFolder tree (<class>/<image>.png|jpg)")
    source.add_argument("--sample", action="store_true", help="put the bundled digits sample instead of a folder")
    put.add_argument("--to", required=True, metavar="URI", help="destination: a path, file://…, or https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX")
    put.set_defaults(func=cmd_put)
    return data
