"""Tower specs - the text after ``--vision_tower revision:`` - parsed into a
:class:`~revision_plugin.tower.config.TowerConfig` (no artifact is opened here; see
:mod:`.resolve` for that), as open_clip's ``parse_model_name`` keeps prefixes apart from loading.

Three forms::

    encoder=llm2clip,encoder_model=/models/LLM2CLIP-Openai-L-14-336,operator=/runs/op,text_store=/feats/text
    /path/to/tower.json            (the same keys as JSON; relative paths are relative to the file)
    /path/to/dir                   (a directory holding revision_tower.json, e.g. a checkpoint's)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from revision_plugin.errors import BadInputError, MissingFileError
from revision_plugin.parsing import assignments, json_or_text, parse_bool, read_json_object
from revision_plugin.tower.config import SPEC_PREFIX, TOWER_CONFIG_NAME, TowerConfig

# Short spec keys -> TowerConfig fields.
SPEC_ALIASES = {"model": "encoder_model", "k": "num_tokens", "op": "operator", "store": "text_store"}
ENCODER_OPTION_PREFIX = "encoder_options."


def spec_field(key: str) -> str:
    """The :class:`TowerConfig` field a spec key sets (aliases resolved; ``encoder_options.NAME``
    sets ``encoder_options``)."""
    key = SPEC_ALIASES.get(key.strip(), key.strip())
    return "encoder_options" if key.startswith(ENCODER_OPTION_PREFIX) else key


def parse_tower_spec(spec: str, base_dir: str | Path | None = None) -> TowerConfig:
    """Parse a tower spec (with or without the ``revision:`` prefix).

    * ``key=value,key=value`` - :class:`TowerConfig` fields (aliases: ``model`` =
      encoder_model, ``op`` = operator, ``store`` = text_store, ``k`` = num_tokens;
      ``encoder_options.NAME=value`` sets one encoder option, e.g. llm2clip's text_model);
      relative paths are taken from the current directory (or ``base_dir``);
    * a path to a JSON file with the same keys; relative paths inside it are relative to it;
    * a directory containing ``revision_tower.json`` (what checkpoints carry).
    """
    text = spec.removeprefix(SPEC_PREFIX).strip()
    if not text:
        raise BadInputError(f"empty revision tower spec {spec!r}")
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if "=" not in text:
        return _config_file(spec, text, base)
    raw: dict[str, Any] = {}
    options: dict[str, Any] = {}
    trust_remote_code = False

    def not_key_value(item: str) -> BadInputError:
        return BadInputError(f"revision tower spec {spec!r}: {item!r} is not key=value (paths with ',' need the JSON form)")

    for key, value in assignments(text, not_key_value):
        key = SPEC_ALIASES.get(key, key)
        if key == "trust_remote_code":  # the user's consent, never saved into an artifact
            trust_remote_code = parse_bool(value, f"revision tower spec {spec!r}: trust_remote_code")
            continue
        target, name = (options, key[len(ENCODER_OPTION_PREFIX):]) if key.startswith(ENCODER_OPTION_PREFIX) else (raw, key)
        if not name or name in target:
            raise BadInputError(f"revision tower spec {spec!r}: {key!r} given twice or empty")
        # Numbers and booleans in encoder_options.NAME=value become JSON values, the rest strings.
        target[name] = json_or_text(value) if target is options else value
    if options:
        if "encoder_options" in raw:
            raise BadInputError(f"revision tower spec {spec!r}: give encoder_options as JSON or as encoder_options.NAME=..., not both")
        raw["encoder_options"] = options
    config = TowerConfig.from_dict(raw, base_dir=base, source=f"revision tower spec {spec!r}")
    if trust_remote_code and config.encoder_model:
        from revision_plugin.encoders.remote_code import consent_to_remote_code

        consent_to_remote_code(config.encoder_model)
    return config


def _config_file(spec: str, text: str, base: Path) -> TowerConfig:
    """The JSON form: a ``revision_tower.json`` file, or a directory holding one."""
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = base / path
    if path.is_dir():
        path = path / TOWER_CONFIG_NAME
    if not path.is_file():
        raise MissingFileError(f"revision tower spec {spec!r}: {path} not found")
    raw = read_json_object(path)
    return TowerConfig.from_dict(raw, base_dir=path.parent, source=str(path))
