"""The ``revision`` command.

Each subcommand lives next to the code it drives, in a module exposing
``add_arguments(parser)`` and ``run(args) -> int``; this file only lists them, so
``revision --help`` stays fast (modules are imported when their command runs).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from revision_plugin import __version__
from revision_plugin.errors import RevisionError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("revision_plugin.align.commands_fit", "fit an alignment operator on unpaired text/image embeddings"),
    "align": ("revision_plugin.align.commands_align", "apply a fitted operator to an embedding file, chunk by chunk"),
    "embed": ("revision_plugin.embed", "embed texts/images into resumable feature stores (hf_clip, llm2clip)"),
    "compare": ("revision_plugin.compare", "paper-style comparison table (md/csv/png) from lmms-eval result folders"),
    "report": ("revision_plugin.geometry.commands_report", "geometry report (gap, spectrum, JS, kNN, frame) of embeddings and operators on held-out data"),
    "demo": ("revision_plugin.demo", "the embedded default job: synthetic data, every operator, gap table + report"),
    "patch-host": ("revision_plugin.hosts.patch", "apply the LLaVA 1.2.2 compatibility patches to the installed llava (idempotent)"),
    "llava-data": ("revision_plugin.hosts.llava_data", "LLaVA caption json -> stage-1 text_id records + captions to embed"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="revision",
        description="ReVision/ReAlign: align text embeddings to the image distribution and "
        "pretrain an MLLM projector on unpaired text.",
    )
    parser.add_argument("--version", action="version", version=f"revision_plugin {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).add_arguments(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in COMMANDS), None)
    args = build_parser(command).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except (RevisionError, FileNotFoundError) as err:
        print(f"revision {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
