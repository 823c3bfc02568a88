"""Exceptions shared by every part of the plugin.

All of them subclass ``ValueError`` so callers that only know the standard library can still
catch bad input, while the CLI maps them to a one-line message and exit code 2.
"""


class RevisionError(ValueError):
    """Bad input or a mismatched artifact; the message names the file/row/id at fault."""


class BadInputError(RevisionError):
    """Rows that cannot be used (NaN/Inf, zero norm, wrong dimension, truncated file)."""


class ArtifactMismatchError(RevisionError):
    """An artifact (operator, store, checkpoint) fitted for another encoder or dimension."""
