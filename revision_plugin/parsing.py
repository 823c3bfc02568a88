"""Small text parsers shared by specs, model arguments and command options: booleans,
``KEY=VALUE`` items and their values. No torch, no third-party imports."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from revision_plugin.errors import BadInputError

# Every word any option of the plugin accepts (case-insensitive, surrounding blanks ignored).
TRUE_WORDS = frozenset({"1", "true", "yes", "y", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "n", "off"})


def parse_bool(value: Any, what: str, empty: bool | None = None) -> bool:
    """``value`` as a bool: non-strings by truth value, strings from :data:`TRUE_WORDS` /
    :data:`FALSE_WORDS` (``""`` is ``empty`` when given); anything else is refused naming ``what``."""
    if not isinstance(value, str):
        return bool(value)
    lowered = value.strip().lower()
    if lowered == "" and empty is not None:
        return empty
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise BadInputError(f"{what}: expected true/false, got {value!r}")


def json_file_error(path, err: ValueError) -> BadInputError:
    """The one-line error for a JSON file that does not parse (``JSONDecodeError``) or is not
    UTF-8 (``UnicodeDecodeError``)."""
    if isinstance(err, UnicodeDecodeError):
        return BadInputError(f"{path}: not a UTF-8 JSON file ({err.reason})")
    return BadInputError(f"{path}: invalid JSON ({err})")


def read_json_object(path: Path, error: Callable[[str], Exception] = BadInputError) -> dict:
    """A UTF-8 JSON file holding an object; anything else is a one-line ``BadInputError``
    (``error`` for a valid file that holds something other than an object)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise json_file_error(path, err) from err
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def json_or_text(value: str) -> Any:
    """Numbers, booleans, ``null`` and JSON objects become values; anything else stays a string."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def split_assignment(text: str, error: Callable[[str], Exception]) -> tuple[str, str]:
    """``"KEY=VALUE"`` -> ``(KEY, VALUE)``, both stripped; ``error(text)`` is raised when there
    is no ``=`` or no key."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise error(text)
    return key.strip(), value.strip()


def assignments(text: str, error: Callable[[str], Exception], sep: str = ",") -> Iterator[tuple[str, str]]:
    """The ``KEY=VALUE`` items of ``"k=v,k=v"`` (blank items skipped), see :func:`split_assignment`."""
    for item in text.split(sep):
        if item.strip():
            yield split_assignment(item.strip(), error)
