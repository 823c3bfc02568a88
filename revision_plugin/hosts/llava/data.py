"""LLaVA's ``make_supervised_data_module`` for revision towers: a dataset that also takes
*pseudo* records (``text_id`` / ``text`` instead of ``image``) and cached image features,
the start-up scan that reports every bad record before step 1 (:func:`scan_records`), and
the collator that adds the tower batch to LLaVA's text batch."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

from revision_plugin.errors import BadInputError, MissingFileError, RevisionError
from revision_plugin.hosts.llava.constants import SKIP_BAD_RECORDS_ENV
from revision_plugin.hosts.llava.tower import RevisionImageProcessor
from revision_plugin.parsing import json_file_error
from revision_plugin.tower import (
    KIND_IMAGE_FEATURE,
    KIND_PIXELS,
    KIND_TEXT,
    KIND_TEXT_FEATURE,
    TowerConfig,
    TowerSample,
    collate_tower_inputs,
)

logger = logging.getLogger(__name__)


def _ensure_pad_token(tokenizer) -> None:
    """LLaVA sets ``pad = unk``; tokenizers without unk (Llama-3) get a reserved token instead."""
    if tokenizer.pad_token_id is not None:
        return
    vocab = tokenizer.get_vocab()
    for candidate in ("<|finetune_right_pad_id|>", "<|reserved_special_token_0|>", "<pad>", "<unk>"):
        if candidate in vocab and candidate not in (tokenizer.eos_token, tokenizer.bos_token):
            tokenizer.pad_token = candidate
            logger.info("revision: tokenizer has no unk/pad token; padding with %s", candidate)
            return
    raise BadInputError(
        "the tokenizer has neither a pad nor an unk token, and none of the reserved pad tokens; "
        "add a pad token to the tokenizer before training"
    )


def _record_name(data_path: str, index: int, record: dict) -> str:
    rid = record.get("id") if isinstance(record, dict) else None
    return f"{data_path}: record {index}" + (f" (id {rid!r})" if rid is not None else "")


MAX_REPORTED_RECORDS = 50


def _bad_records_message(data_path: str, total: int, problems: list[dict]) -> str:
    shown = [f"{data_path}: record {p['index']}" + (f" (id {p['id']!r})" if p.get("id") is not None else "")
             + f": {p['reason']}" for p in problems[:MAX_REPORTED_RECORDS]]
    more = len(problems) - len(shown)
    return (f"{data_path}: {len(problems)} of {total} records cannot be trained on; training was not started. "
            f"Fix them, or set ${SKIP_BAD_RECORDS_ENV}=<file> to train on the rest and list those left out in <file>.\n"
            + "\n".join(shown) + (f"\n... and {more} more" if more > 0 else ""))


def scan_records(dataset) -> list[dict]:
    """Check every record of a :class:`RevisionSupervisedDataset` before step 1; returns one
    ``{"file", "index", "id", "reason"}`` per bad record (all of them, not the first).

    Checked: the record's shape (a ``conversations`` list, at most one visual key, a non-empty
    value), the ``<image>`` count (exactly one with a visual input, none without), ``text_id``s
    missing from the ``text_store`` (and image ids from the ``image_store``), image files
    that are missing or unreadable, and samples whose labels end up fully masked (LLaVA's
    silent ``WARNING: tokenization mismatch``: the sample would train on nothing; skipped
    with ``strict_labels=false``). Tokenisation is LLaVA's own, as in training."""
    from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX

    config = dataset.tower_config
    problems: list[dict] = []
    pending_ids: dict[str, list[tuple[int, str]]] = {"text_store": [], "image_store": []}
    tokenize: list[tuple[int, bool]] = []

    def bad(index: int, record, reason: str) -> None:
        rid = record.get("id") if isinstance(record, dict) else None
        problems.append({"file": dataset.data_path, "index": index, "id": rid, "reason": reason})

    for index, record in enumerate(dataset.list_data_dict):
        if not isinstance(record, dict) or not isinstance(record.get("conversations"), list) or not record["conversations"]:
            bad(index, record, "no 'conversations' list")
            continue
        try:
            key = dataset._visual_key(index, record)
        except BadInputError as err:
            bad(index, record, str(err).split(": ", 2)[-1])
            continue
        n_tokens = sum(str(turn.get("value", "")).count(DEFAULT_IMAGE_TOKEN) for turn in record["conversations"]
                       if isinstance(turn, dict))
        if key is None:
            if n_tokens:
                bad(index, record, f"{n_tokens} {DEFAULT_IMAGE_TOKEN} token(s) but no visual input (image, text_id or text)")
                continue
            tokenize.append((index, False))
            continue
        value = record[key]
        if not isinstance(value, str) or not value.strip():
            bad(index, record, f"{key!r} must be a non-empty string")
            continue
        if n_tokens != 1:
            bad(index, record, f"has a visual input ({key}) but {n_tokens} {DEFAULT_IMAGE_TOKEN} tokens in its "
                               "conversations; exactly one is needed")
            continue
        if key == "text_id":
            if not config.text_store:
                bad(index, record, "names a text_id, but the revision tower has no text_store (add text_store=... to the spec)")
                continue
            if config.check_ids:
                pending_ids["text_store"].append((index, value))
        elif key == "image" and config.image_store:
            if config.check_ids:
                pending_ids["image_store"].append((index, value))
        elif key == "image":
            folder = getattr(dataset.data_args, "image_folder", None) or ""
            path = os.path.join(folder, value)
            try:
                check_image(path)
            except FileNotFoundError:
                bad(index, record, f"image {path} not found")
                continue
            except OSError as err:
                bad(index, record, f"image {path} cannot be read ({type(err).__name__}: {err})")
                continue
        tokenize.append((index, True))

    missing: set[int] = set()
    for key, entries in pending_ids.items():
        if not entries:
            continue
        store = dataset._store(key)
        logger.info("revision: checking %d ids against %s", len(entries), getattr(config, key))
        try:
            store.rows_of([value for _, value in entries])
        except RevisionError:
            for index, value in entries:
                if value not in store:
                    bad(index, dataset.list_data_dict[index], f"{'text_id' if key == 'text_store' else 'image'} "
                                                              f"{value!r} is not in the {key} {getattr(config, key)}")
                    missing.add(index)

    if config.strict_labels:
        limit = dataset.tokenizer.model_max_length
        for index, has_visual in tokenize:
            if index in missing:
                continue
            record = dataset.list_data_dict[index]
            try:
                data = dataset._tokenize(record, has_visual)
            except Exception as err:  # noqa: BLE001  (LLaVA's preprocess on a malformed conversation)
                bad(index, record, f"cannot be tokenised ({type(err).__name__}: {err})")
                continue
            if not bool((data["labels"] != IGNORE_INDEX).any()) and len(data["input_ids"]) < limit:
                bad(index, record, "every label is masked, so this sample would train on nothing (LLaVA's "
                                   "'WARNING: tokenization mismatch': the --version conversation template does not "
                                   "match this tokenizer, or the answer is empty); strict_labels=false in the tower "
                                   "spec lets LLaVA skip such samples silently")
    problems.sort(key=lambda p: p["index"])
    return problems


def _make_dataset_class():
    import llava.train.train as llava_train
    from llava.constants import IGNORE_INDEX

    class RevisionSupervisedDataset(llava_train.LazySupervisedDataset):
        """LLaVA's lazy dataset + pseudo records (``text_id`` / ``text``) and cached images."""

        def __init__(self, data_path: str, tokenizer, data_args, tower_config: TowerConfig) -> None:
            try:  # LLaVA reads the file with a bare json.load: name it in one line instead
                super().__init__(data_path=data_path, tokenizer=tokenizer, data_args=data_args)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise json_file_error(data_path, err) from err
            except FileNotFoundError:
                raise MissingFileError(f"--data_path {data_path}: no such records file") from None
            if isinstance(self.list_data_dict, list) and not self.list_data_dict:
                raise BadInputError(f"{data_path}: no records (an empty list); nothing to train on")
            self.data_path = str(data_path)
            self.tower_config = tower_config
            self._stores: dict[str, Any] = {}
            self.left_out: list[dict] = []
            self._apply_scan(scan_records(self))

        # -- the start-up scan -------------------------------------------------------------
        def _visual_key(self, index: int, record: dict) -> str | None:
            keys = [k for k in ("image", "text_id", "text") if k in record]
            if len(keys) > 1:
                raise BadInputError(f"{_record_name(self.data_path, index, record)}: has {' and '.join(keys)}; "
                                    "a record names at most one visual input (image, text_id or text)")
            return keys[0] if keys else None

        def _apply_scan(self, problems: list[dict]) -> None:
            if not problems:
                return
            skip_to = os.environ.get(SKIP_BAD_RECORDS_ENV, "").strip()
            if not skip_to:
                raise BadInputError(_bad_records_message(self.data_path, len(self.list_data_dict), problems))
            bad = {p["index"] for p in problems}
            path = Path(skip_to)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(p, ensure_ascii=False, sort_keys=True) + "\n" for p in problems)
            self.left_out = problems
            self.list_data_dict = [r for i, r in enumerate(self.list_data_dict) if i not in bad]
            logger.warning("revision: %s: %d of %d records left out ($%s); the list is in %s",
                           self.data_path, len(bad), len(bad) + len(self.list_data_dict), SKIP_BAD_RECORDS_ENV, path)
            if not self.list_data_dict:
                raise BadInputError(f"{self.data_path}: every record is bad ({len(bad)}; listed in {path}); nothing to train on")

        def _store(self, key: str):
            if key not in self._stores:
                from revision_plugin.store import open_store

                self._stores[key] = open_store(getattr(self.tower_config, key))
            return self._stores[key]

        # -- LLaVA's length hints: pseudo samples are multimodal -----------------------
        @property
        def lengths(self):
            return [sum(len(c["value"].split()) for c in s["conversations"]) + (128 if self._has_visual(s) else 0)
                    for s in self.list_data_dict]

        @property
        def modality_lengths(self):
            out = []
            for s in self.list_data_dict:
                n = sum(len(c["value"].split()) for c in s["conversations"])
                out.append(n if self._has_visual(s) else -n)
            return out

        @staticmethod
        def _has_visual(record) -> bool:
            return any(k in record for k in ("image", "text_id", "text"))

        # -- items -----------------------------------------------------------------------
        def _tokenize(self, record: dict, has_visual: bool) -> dict:
            conversations = copy.deepcopy([record["conversations"]])
            if has_visual:
                conversations = llava_train.preprocess_multimodal(conversations, self.data_args)
            data = llava_train.preprocess(conversations, self.tokenizer, has_image=has_visual)
            return {"input_ids": data["input_ids"][0], "labels": data["labels"][0]}

        def __getitem__(self, i) -> dict:
            record = self.list_data_dict[i]
            key = self._visual_key(i, record)
            if key == "image" and not self.tower_config.image_store:
                data = super().__getitem__(i)  # LLaVA's own image loading and preprocessing
                data["revision"] = TowerSample(KIND_PIXELS, data.pop("image"))
            elif key is None:
                data = self._tokenize(record, has_visual=False)
                data["revision"] = TowerSample.none()
            else:
                data = self._tokenize(record, has_visual=True)
                if key == "text":
                    data["revision"] = TowerSample(KIND_TEXT, record["text"])
                elif key == "text_id":
                    data["revision"] = TowerSample(KIND_TEXT_FEATURE, self._store("text_store").lookup([record["text_id"]])[0])
                else:
                    data["revision"] = TowerSample(KIND_IMAGE_FEATURE, self._store("image_store").lookup([record["image"]])[0])
            data.pop("image", None)
            if self.tower_config.strict_labels:
                self._check_labels(i, record, data)
            return data

        def _check_labels(self, i: int, record: dict, data: dict) -> None:
            labels = data["labels"]
            if bool((labels != IGNORE_INDEX).any()):
                return
            if len(data["input_ids"]) >= self.tokenizer.model_max_length:
                return  # truncated: LLaVA masks those on purpose
            raise BadInputError(
                f"{_record_name(self.data_path, i, record)}: every label is masked, so this sample would train "
                "on nothing (LLaVA's 'WARNING: tokenization mismatch': the --version conversation template "
                "does not match this tokenizer, or the answer is empty). Fix the template/tokenizer, or set "
                "strict_labels=false in the tower spec to let LLaVA skip such samples silently."
            )

    return RevisionSupervisedDataset


class RevisionDataCollator:
    """LLaVA's collator for text/labels + the tower batch (``images``) built from the samples."""

    def __init__(self, base, pixel_shape=None) -> None:
        self.base = base
        self.pixel_shape = pixel_shape

    def __call__(self, instances):
        samples = []
        plain = []
        for inst in instances:
            inst = dict(inst)
            samples.append(inst.pop("revision"))
            plain.append(inst)
        batch = self.base(plain)
        batch["images"] = collate_tower_inputs(samples, self.pixel_shape)
        return batch


def make_supervised_data_module(tokenizer, data_args, _original=None) -> dict:
    processor = getattr(data_args, "image_processor", None)
    tower_config = getattr(processor, "tower_config", None) if isinstance(processor, RevisionImageProcessor) else None
    if tower_config is None:
        return _original(tokenizer=tokenizer, data_args=data_args)
    import llava.train.train as llava_train

    _ensure_pad_token(tokenizer)
    dataset_cls = _make_dataset_class()
    dataset = dataset_cls(data_args.data_path, tokenizer, data_args, tower_config)
    if not tower_config.image_store and any("image" in r for r in dataset.list_data_dict):
        # Pixels are made in the workers, encoded in the tower (main process, once per rank):
        # load the processor here, before workers start, so that no worker loads the encoder.
        processor.resolve()
    collator = RevisionDataCollator(llava_train.DataCollatorForSupervisedDataset(tokenizer=tokenizer))
    return {"train_dataset": dataset, "eval_dataset": None, "data_collator": collator}


# What a complete file of these formats ends with (JPEG's EOI marker, PNG's IEND chunk); a
# download cut short lacks it, and LLaVA would fail on it at whichever step first reads it.
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}
_TAIL_BYTES = 64  # encoders may pad a few bytes after the marker


def check_image(path: str) -> None:
    """Raise ``OSError`` for an image that is unreadable or cut short: its header is read, and a
    JPEG or PNG must end with its end marker (one extra small read). A file without it, or of
    another format, is decoded once, which tells trailing bytes after a complete image from
    truncation. A truncated image is refused even where ``ImageFile.LOAD_TRUNCATED_IMAGES`` is
    set (lmms-eval sets it on import): it would train on grey padding instead of the picture."""
    from PIL import Image, ImageFile

    with Image.open(path) as image:
        marker = _END_MARKERS.get(image.format)
        if marker is not None:
            with open(path, "rb") as fh:
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - _TAIL_BYTES))
                if marker in fh.read():
                    return
        lenient, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
        try:
            image.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = lenient
