"""The ``revision`` command.

Each subcommand lives next to the code it drives, in a module exposing
``add_arguments(parser)`` and ``run(args) -> int``; this file only lists them, so
``revision --help`` stays fast (modules are imported when their command runs).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import traceback

from revision_plugin import __version__
from revision_plugin.errors import RevisionError, wants_traceback

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("revision_plugin.align.commands_fit", "fit an alignment operator on unpaired text/image embeddings"),
    "align": ("revision_plugin.align.commands_align", "apply a fitted operator to an embedding file, chunk by chunk"),
    "embed": ("revision_plugin.encoders.commands_embed", "embed texts/images into resumable feature stores (hf_clip, llm2clip)"),
    "compare": ("revision_plugin.compare", "paper-style comparison table (md/csv/json/png) from lmms-eval result folders"),
    "eval": ("revision_plugin.lmms.runner", "run the lmms-eval suite task by task (resumable, fails loudly); `eval prefetch` for offline use"),
    "report": ("revision_plugin.geometry.commands_report", "geometry report (gap, spectrum, JS, kNN, frame) of embeddings and operators on held-out data"),
    "demo": ("revision_plugin.study.commands", "the main job: a miniature ReVision study on a laptop, pixels to comparison table"),
    "patch-host": ("revision_plugin.hosts.commands_patch", "apply the LLaVA 1.2.2 compatibility patches to the installed llava (idempotent)"),
    "llava-data": ("revision_plugin.hosts.llava.commands_data", "LLaVA caption json -> stage-1 text_id records + captions to embed"),
    "store": ("revision_plugin.store.commands", "feature-store maintenance: `store verify DIR` checks every shard, row and id"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="revision",
        description="ReVision/ReAlign: align text embeddings to the image distribution and "
        "pretrain an MLLM projector on unpaired text.",
    )
    parser.add_argument("--version", action="version", version=f"revision_plugin {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and the traceback above an error (also: REVISION_TRACEBACK=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).add_arguments(sub_parser)
    parser.command_parsers = sub.choices  # so an unknown flag is reported by its command's parser
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser(command)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # "revision align: error: unrecognized arguments: …", with align's usage line
        parser.command_parsers[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    # Our progress at INFO; other libraries' from WARNING (accelerate logs lines per training run
    # at INFO: 168 in one demo), everything with --verbose.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("revision_plugin").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except KeyboardInterrupt:
        print(f"revision {args.command}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if args.verbose or wants_traceback():
            traceback.print_exc()
        print(f"revision {args.command}: error: {describe_error(err)}", file=sys.stderr)
        return 2


# What bad input (a file, a value, a permission, a malformed artifact) raises: one line, exit 2;
# ``--verbose`` (or ``$REVISION_TRACEBACK=1``) prints the traceback above it. Anything else is a
# bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (RevisionError, OSError, ValueError, TypeError, KeyError, RuntimeError)


def describe_error(err: BaseException) -> str:
    """One line for ``err``: our own errors as written, others prefixed with what they are."""
    if isinstance(err, RevisionError):
        text = str(err)
    elif isinstance(err, OSError) and err.filename is not None:
        target = f"{err.filename} -> {err.filename2}" if err.filename2 else str(err.filename)
        text = f"{target}: {err.strerror or type(err).__name__}"
        if isinstance(err, PermissionError):
            text += " (check the path's permissions or choose another output)"
    elif isinstance(err, FileNotFoundError):
        text = str(err)  # a library's, without a filename: its message is all there is
    elif isinstance(err, json.JSONDecodeError):
        text = f"invalid JSON ({err.msg} at line {err.lineno} column {err.colno})"
    elif isinstance(err, KeyError):
        text = f"missing key {err.args[0]!r}" if err.args else "missing key"
        text += " (rerun with --verbose for where)"
    else:
        text = f"{type(err).__name__}: {err} (rerun with --verbose for where)"
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(err).__name__]
    return "; ".join(lines)


if __name__ == "__main__":
    sys.exit(main())
