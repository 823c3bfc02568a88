"""The study's data, unpaired by construction: disjoint scene samples for every role.

Roles (sampled in this order from one exclusion set, so no scene key appears in two):

=================  =======  ========  =================================================
role               drawn    caption   used for
=================  =======  ========  =================================================
clip_train         yes      yes       training the tiny CLIP (paired)
clip_test          yes      yes       its held-out recall@1 and paired modality gap
llm_text           no       yes       pretraining the tiny Llama on the world's language
stage1_text        no       yes       the unpaired stage-1 corpus (``revision embed``)
operator_images    yes      no        the image statistics of every operator
paired             yes      yes       the "w/ Image" baseline's stage 1 (same count)
stage2             yes      QA        the small real-image instruction set
eval               yes      QA        the lmms-eval tasks (``tasks.py``)
=================  =======  ========  =================================================
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from revision_plugin.study import captions as lang
from revision_plugin.study.settings import StudySettings
from revision_plugin.study.world import Scene, draw, sample_scenes

logger = logging.getLogger(__name__)

ROLES = ("clip_train", "clip_test", "llm_text", "stage1_text", "operator_images", "paired", "stage2", "eval")
DRAWN = {"clip_train", "clip_test", "operator_images", "paired", "stage2", "eval"}


@dataclass(frozen=True)
class WorldFiles:
    """Paths inside the world folder (all relative names are fixed here)."""

    root: Path

    @property
    def images(self) -> Path:
        return self.root / "images"

    def role(self, role: str) -> Path:
        return self.root / f"{role}.jsonl"

    @property
    def stage1_texts(self) -> Path:  # revision embed --texts
        return self.root / "stage1_texts.jsonl"

    @property
    def operator_images(self) -> Path:  # revision embed --images
        return self.root / "operator_images_corpus.jsonl"

    @property
    def stage1_json(self) -> Path:
        return self.root / "stage1_text.json"

    @property
    def paired_json(self) -> Path:
        return self.root / "stage1_paired.json"

    @property
    def stage2_json(self) -> Path:
        return self.root / "stage2.json"


def role_sizes(settings: StudySettings) -> dict[str, int]:
    w = settings.world
    return {"clip_train": w.clip_pairs, "clip_test": w.clip_test, "llm_text": w.llm_text, "stage1_text": w.stage1,
            "operator_images": w.operator_images, "paired": w.stage1, "stage2": w.stage2, "eval": w.eval}


def read_role(files: WorldFiles, role: str) -> list[dict]:
    """Records ``{"id", "scene": Scene, "caption", "image"}`` of one role."""
    out = []
    for line in files.role(role).read_text().splitlines():
        raw = json.loads(line)
        raw["scene"] = Scene.from_json(raw["scene"])
        out.append(raw)
    return out


def build_world(root: Path, settings: StudySettings) -> WorldFiles:
    """Sample, caption and draw every role into ``root``; returns the file layout."""
    files = WorldFiles(Path(root))
    files.images.mkdir(parents=True, exist_ok=True)
    seen: set = set()
    size = settings.world.image_size
    for index, role in enumerate(ROLES):
        n = role_sizes(settings)[role]
        scenes = sample_scenes(n, seed=settings.seed * 1000 + index, max_objects=settings.world.max_objects, exclude=seen)
        rng = random.Random(f"{settings.seed}-{role}-captions")
        lines = []
        for i, scene in enumerate(scenes):
            record = {"id": f"{role}-{i:05d}", "scene": scene.to_json()}
            if role != "operator_images":  # its captions are never written, let alone used
                record["caption"] = lang.caption(scene, rng)
            if role in DRAWN:
                record["image"] = f"{role}/{record['id']}.png"
                path = files.images / record["image"]
                path.parent.mkdir(parents=True, exist_ok=True)
                draw(scene, size).save(path)
            lines.append(json.dumps(record))
        files.role(role).write_text("\n".join(lines) + "\n")
    _write_training_files(files, settings)
    logger.info("world: %s", ", ".join(f"{r} {n}" for r, n in role_sizes(settings).items()))
    return files


def _plain(caption: str) -> list[dict]:
    return [{"from": "human", "value": "<image>\n"}, {"from": "gpt", "value": caption}]


def _write_training_files(files: WorldFiles, settings: StudySettings) -> None:
    text = read_role(files, "stage1_text")
    files.stage1_texts.write_text("".join(json.dumps({"id": r["id"], "text": r["caption"]}) + "\n" for r in text))
    ops = read_role(files, "operator_images")
    files.operator_images.write_text(
        "".join(json.dumps({"id": r["id"], "image": f"images/{r['image']}"}) + "\n" for r in ops))
    files.stage1_json.write_text(json.dumps(
        [{"id": r["id"], "text_id": r["id"], "conversations": _plain(r["caption"])} for r in text], indent=0))
    paired = read_role(files, "paired")
    files.paired_json.write_text(json.dumps(
        [{"id": r["id"], "image": r["image"], "conversations": _plain(r["caption"])} for r in paired], indent=0))
    rng = random.Random(f"{settings.seed}-stage2")
    records = []
    for r in read_role(files, "stage2"):
        qa = lang.qa_pairs(r["scene"], rng) + lang.mcq_pairs(r["scene"], rng)
        chosen = rng.sample(qa, min(settings.world.stage2_rounds, len(qa)))
        turns = []
        for j, (question, answer) in enumerate(chosen):
            turns.append({"from": "human", "value": ("<image>\n" if j == 0 else "") + lang.with_suffix(question)})
            turns.append({"from": "gpt", "value": answer})
        records.append({"id": r["id"], "image": r["image"], "conversations": turns})
    files.stage2_json.write_text(json.dumps(records, indent=0))
