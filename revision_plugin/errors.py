"""Exceptions shared by every part of the plugin.

All of them subclass ``ValueError`` so callers that only know the standard library can still
catch bad input, while the CLI maps them to a one-line message and exit code 2.
"""


# Set to 1 to see the full traceback of the plugin's bad-input errors, which otherwise print as
# one line (the ``revision`` command's ``--verbose`` does the same; LLaVA's training prints
# ``revision: error: …``).
TRACEBACK_ENV = "REVISION_TRACEBACK"


def wants_traceback() -> bool:
    """Whether ``$REVISION_TRACEBACK`` asks for tracebacks (set, and not 0/false/no/off)."""
    import os

    return os.environ.get(TRACEBACK_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


class RevisionError(ValueError):
    """Bad input or a mismatched artifact; the message names the file/row/id at fault."""


class BadInputError(RevisionError):
    """Rows that cannot be used (NaN/Inf, zero norm, wrong dimension, truncated file)."""


class ArtifactMismatchError(RevisionError):
    """An artifact (operator, store, checkpoint) fitted for another encoder or dimension."""


class MissingFileError(RevisionError, FileNotFoundError):
    """A file or folder the input names does not exist (the message says which and what it is
    for). Still a ``FileNotFoundError``, so callers that catch that keep working."""


def check_writable(path, directory: bool = False) -> None:
    """Refuse, before any work starts, an output that cannot be written: its nearest existing
    ancestor must be a writable directory (and the path itself, if it exists, of the right kind)."""
    import os
    from pathlib import Path

    path = Path(path)
    if path.exists():
        if directory and not path.is_dir():
            raise RevisionError(f"{path}: exists and is not a directory; choose another output")
        if not directory and path.is_dir():
            raise RevisionError(f"{path}: is a directory; give a file path")
        target = path if directory else path.parent
    else:
        target = path.parent
        while not target.exists() and target != target.parent:
            target = target.parent
        if not target.is_dir():
            raise RevisionError(f"{path}: cannot be created ({target} is not a directory)")
    if not os.access(target, os.W_OK | os.X_OK):
        raise RevisionError(f"{path}: cannot write in {target} (permission denied); choose another output")
