"""``revision store``: feature-store maintenance. ``revision store verify DIR [DIR ...]``
reads every byte of each store (checksums, rows, id index; see ``store/verify.py``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from revision_plugin.errors import RevisionError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    verify = sub.add_parser("verify", help="full content check against the sha256 recorded at write time",
                            description="full content check of feature stores: per-shard sha256, finite rows, id index")
    verify.add_argument("stores", nargs="+", type=Path, metavar="DIR", help="feature-store directory")
    verify.add_argument("--json", action="store_true", help="one JSON line per store instead of text")


def run(args: argparse.Namespace) -> int:
    from revision_plugin.store.verify import report_json, verify_store

    failed = []
    for store_dir in args.stores:
        report = verify_store(store_dir)
        if args.json:
            print(report_json(report))
        else:
            print(report.summary())
            for line in report.problems:
                print(f"  problem: {line}")
            for line in report.notes:
                print(f"  note: {line}")
        if not report.ok:
            failed.append(f"{store_dir} ({report.problems[0]})")
    if failed:
        raise RevisionError(f"{len(failed)} store(s) failed verification: {'; '.join(failed)}")
    return 0
