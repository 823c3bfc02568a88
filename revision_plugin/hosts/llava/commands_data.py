"""``revision llava-data``: turn a LLaVA-format caption dataset (e.g. Bunny-pretrain,
``blip_laion_cc_sbu_558k.json``) into ReVision's stage-1 inputs, without touching images:

* ``--out-texts captions.jsonl``: ``{"id", "text"}`` per record, the caption (the first
  ``gpt`` turn) to embed with ``revision embed --texts``;
* ``--out-json stage1.json``: the same records with ``"text_id": <id>`` instead of
  ``"image"``, for ``scripts/stage1_pretrain.sh --data`` (the tower looks the id up in the
  text feature store; the conversation, hence LLaVA's tokenisation, is unchanged).

Ids must be unique (records without an ``id`` get ``<prefix><index>``); a record without a
``gpt`` caption or without ``<image>`` in its first human turn is an error naming it.
No llava import: this is plain JSON.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from revision_plugin.atomic import atomic_write_bytes
from revision_plugin.errors import BadInputError, check_writable

logger = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"


def pseudo_records(records: list, source: str = "<records>", id_prefix: str = "rec-") -> tuple[list[dict], list[dict]]:
    """``(stage-1 records with text_id, caption texts)`` from LLaVA caption records."""
    out, texts, seen = [], [], {}
    for index, record in enumerate(records):
        where = f"{source}: record {index}"
        if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
            raise BadInputError(f"{where}: no 'conversations' list")
        rid = str(record["id"]) if record.get("id") is not None else f"{id_prefix}{index}"
        if rid in seen:
            raise BadInputError(f"{where}: duplicate id {rid!r} (also record {seen[rid]})")
        seen[rid] = index
        turns = record["conversations"]
        if not all(isinstance(t, dict) for t in turns):
            raise BadInputError(f"{where} (id {rid!r}): every conversation turn must be an object")
        human = next((t for t in turns if t.get("from") == "human"), None)
        caption = next((t.get("value", "") for t in turns if t.get("from") == "gpt"), "")
        if human is None or IMAGE_TOKEN not in str(human.get("value", "")):
            raise BadInputError(f"{where} (id {rid!r}): the first human turn has no {IMAGE_TOKEN} token")
        if not str(caption).strip():
            raise BadInputError(f"{where} (id {rid!r}): no caption (gpt turn) to embed")
        new = {k: v for k, v in record.items() if k not in ("image", "text", "text_id")}
        new["id"] = rid
        new["text_id"] = rid
        out.append(new)
        texts.append({"id": rid, "text": str(caption).strip()})
    return out, texts


def add_arguments(parser) -> None:
    parser.add_argument("--input", required=True, help="LLaVA-format json (list of records with conversations)")
    parser.add_argument("--out-json", required=True, help="stage-1 json with text_id records")
    parser.add_argument("--out-texts", required=True, help="captions .jsonl (id, text) for `revision embed --texts`")
    parser.add_argument("--id-prefix", default="rec-", help="id of records without one: PREFIX + index")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def run(args) -> int:
    source = Path(args.input)
    outputs = [Path(args.out_json), Path(args.out_texts)]
    if os.path.realpath(outputs[0]) == os.path.realpath(outputs[1]):
        raise BadInputError(f"--out-json and --out-texts are the same file ({outputs[0]}); give two paths")
    if any(os.path.realpath(p) == os.path.realpath(source) for p in outputs):
        raise BadInputError(f"{source}: an output path is the --input file; it would be overwritten")
    for path in outputs:
        if path.exists() and not args.overwrite:
            raise BadInputError(f"{path} exists (pass --overwrite to replace it)")
        check_writable(path)
    try:
        records = json.loads(source.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadInputError(f"{source}: invalid JSON ({err})") from err
    if not isinstance(records, list):
        raise BadInputError(f"{source}: expected a JSON list of records")
    out, texts = pseudo_records(records, str(source), args.id_prefix)
    # Each output appears whole or not at all (temp file + rename).
    atomic_write_bytes(outputs[0], json.dumps(out, ensure_ascii=False).encode("utf-8"))
    atomic_write_bytes(outputs[1], "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in texts).encode("utf-8"))
    print(f"{len(out)} records -> {args.out_json} (text_id) and {args.out_texts} (captions to embed)")
    return 0
