"""Files generated from code and kept in the repository (the eval run configs, the smoke
tasks): one ``main`` for their generator scripts that writes them, or with ``--check`` exits 1
when a file differs from what would be written (a test runs the check)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def generator_main(render: Callable[[], dict[str, str]], folder: Path, description: str, script: str,
                   argv: list[str] | None = None, announce: bool = False) -> int:
    """Write ``render()`` (file name -> text) into ``folder``, or check it (``--check``);
    ``script``: how to regenerate, named in the out-of-date message; ``announce``: print each write."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="exit 1 if a file differs from what would be written")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = folder / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            if announce:
                print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)} (run {script})", file=sys.stderr)
        return 1
    return 0
