"""Loading a saved operator: ``operator.json`` checked field by field (``read_operator_info``,
its metadata alone), then the safetensors buffers.

Saving is ``Operator.save`` (base); the file names are the constants in ``base``. No pickle.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from revision_plugin.align.base import (
    FORMAT_VERSION,
    OPERATOR_CONFIG_NAME,
    OPERATOR_WEIGHTS_NAME,
    Operator,
    OperatorInfo,
    get_operator_class,
)
from revision_plugin.errors import ArtifactMismatchError, MissingFileError, RevisionError
from revision_plugin.parsing import read_json_object


def read_operator_info(directory: str | Path) -> OperatorInfo:
    """The checked ``operator.json`` of a saved operator (its metadata; the weights are not read)."""
    directory = Path(directory)
    config_path = directory / OPERATOR_CONFIG_NAME
    if not config_path.is_file():
        raise MissingFileError(f"{directory}: not an operator directory ({config_path.name} missing)")
    raw = read_json_object(config_path, ArtifactMismatchError)
    if "method" not in raw:
        raise ArtifactMismatchError(f"{config_path}: no 'method' field")
    info = _info_from_json(raw, config_path)
    if info.format_version > FORMAT_VERSION:
        raise ArtifactMismatchError(
            f"{config_path}: format version {info.format_version} is newer than this package supports ({FORMAT_VERSION})"
        )
    return info


def load_operator(
    directory: str | Path, expected_dim: int | None = None, encoder_id: str | None = None
) -> Operator:
    """Rebuild a saved operator (in eval mode); refuse a mismatched dim or encoder."""
    directory = Path(directory)
    config_path, weights_path = directory / OPERATOR_CONFIG_NAME, directory / OPERATOR_WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise MissingFileError(f"{directory}: not an operator directory ({path.name} missing)")
    info = read_operator_info(directory)
    cls = get_operator_class(info.method)
    if expected_dim is not None and info.dim != expected_dim:
        raise ArtifactMismatchError(
            f"{directory}: operator was fitted for {info.dim}-dim embeddings, these are {expected_dim}-dim"
        )
    if encoder_id is not None and info.encoder_id is not None and info.encoder_id != encoder_id:
        raise ArtifactMismatchError(
            f"{directory}: operator was fitted for encoder {info.encoder_id!r}, not {encoder_id!r}"
        )
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactMismatchError(f"{weights_path}: not a readable safetensors file ({err})") from err
    try:
        return cls(info, **tensors).eval()
    except RevisionError as err:
        raise type(err)(f"{directory}: {err}") from err


# Field of operator.json -> (accepted types, description) for the typed check on load.
_INFO_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "method": ((str,), "a string"),
    "dim": ((int,), "a positive integer"),
    "counts": ((dict,), "an object of row counts"),
    "encoder_id": ((str, type(None)), "a string or null"),
    "fingerprint": ((str,), "a string"),
    "options": ((dict,), "an object"),
    "package_version": ((str,), "a string"),
    "format_version": ((int,), "an integer"),
}


def _info_from_json(raw: dict, config_path: Path) -> OperatorInfo:
    """``OperatorInfo`` from ``operator.json`` with every known field's type checked."""
    values = {}
    for key, (types, described) in _INFO_TYPES.items():
        if key not in raw:
            if key in ("method", "dim", "counts"):
                raise ArtifactMismatchError(f"{config_path}: no {key!r} field")
            continue
        value = raw[key]
        if not isinstance(value, types) or isinstance(value, bool) or (key == "dim" and value < 1):
            raise ArtifactMismatchError(f"{config_path}: field {key!r} must be {described}, got {value!r}")
        values[key] = value
    for name, count in values["counts"].items():
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ArtifactMismatchError(f"{config_path}: counts[{name!r}] must be a non-negative integer, got {count!r}")
    return OperatorInfo(**values)
