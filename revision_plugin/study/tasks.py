"""Local lmms-eval tasks generated from the held-out ``eval`` scenes.

In the formats of the paper's benchmarks, scored by lmms-eval's own functions:

* ``revision_pope`` - POPE: "Is there a <object> in the image?", one present and one absent
  object per image, with absent objects drawn at random, from the most frequent objects
  (popular), or sharing the colour or shape of a present one (adversarial);
* ``mme`` - MME: per category (existence, count, position, color; numerical_calculation as
  the cognition half) every image asked twice, once "Yes" and once "No";
* ``mmstar`` - MMStar: four-option multiple choice (recognition, object counting, localization);
* ``revision_study_caption`` - "Describe the image briefly.": the share of objects named
  with the right colour and shape (:mod:`revision_plugin.study.metrics`).

:func:`build_tasks` writes the parquet files and two ``--include_path`` folders: ``tasks``
(with images) and ``tasks_blind`` (the same questions without their image).
"""

from __future__ import annotations

import collections
import json
import random
from pathlib import Path

from revision_plugin.study import captions as lang
from revision_plugin.study.settings import EvalSettings
from revision_plugin.study.world import COLOURS, SHAPES, Scene, draw

TASKS = ("revision_pope", "mme", "mmstar", "revision_study_caption")
MME_PERCEPTION = ("existence", "count", "position", "color")
MME_COGNITION = ("numerical_calculation",)


def _pope(scenes: list[Scene], n: int, rng: random.Random) -> list[dict]:
    frequency = collections.Counter(name for s in scenes for name in s.names())
    popular = [name for name, _ in frequency.most_common()]
    rows, k = [], 0
    for split_index, split in enumerate(("adversarial", "popular", "random")):
        for scene_index in range(n):
            scene = scenes[(split_index * n + scene_index) % len(scenes)]
            present = rng.choice(sorted(scene.names()))
            if split == "popular":
                absent = next(p for p in popular if p not in scene.names())
            else:
                absent = lang.absent_objects(scene, rng, 1, hard=split == "adversarial")[0]
            for name, answer in ((present, "yes"), (absent, "no")):
                k += 1
                question = f"Is there {lang.article(name)} {name} in the image?"
                rows.append({"id": str(k), "question_id": str(k), "question": question,
                             "answer": answer, "image_source": f"eval-{scene_index}", "scene": scene, "category": split})
    return rows


def _mme(scenes: list[Scene], n: int, rng: random.Random) -> list[dict]:
    rows = []
    for c_index, category in enumerate(MME_PERCEPTION + MME_COGNITION):
        for i in range(n):
            scene = scenes[(c_index * n + i) % len(scenes)]
            obj = rng.choice(scene.objects)
            count = len(scene.objects)
            if category == "existence":
                absent = lang.absent_objects(scene, rng, 1)[0]
                pair = (f"Is there {lang.article(obj.name)} {obj.name} in this image?",
                        f"Is there {lang.article(absent)} {absent} in this image?")
            elif category == "count":
                wrong = rng.choice([c for c in (1, 2, 3, 4) if c != count])
                pair = (f"Are there {lang.NUMBER_WORDS[count]} shapes in the image?",
                        f"Are there {lang.NUMBER_WORDS[wrong]} shapes in the image?")
            elif category == "position":
                wrong = rng.choice([c for c in ("left", "middle", "right") if c != obj.column_word])
                pair = (f"Is the {obj.name} on the {obj.column_word} side of the image?",
                        f"Is the {obj.name} on the {wrong} side of the image?")
            elif category == "color":
                target = next((o for o in scene.objects if scene.unique_shape(o.shape)), obj)
                wrong = rng.choice([c for c in COLOURS if c != target.colour])
                pair = (f"Is the {target.shape} {target.colour}?", f"Is the {target.shape} {wrong}?")
            else:  # numerical_calculation: compare the count with a threshold
                pair = (f"Are there more than {lang.NUMBER_WORDS[count - 1]} shapes in the image?",
                        f"Are there more than {lang.NUMBER_WORDS[count]} shapes in the image?")
            for question, answer in zip(pair, ("Yes", "No")):
                rows.append({"question_id": f"{category}/{i:04d}.png", "scene": scene,
                             "question": f"{question} Please answer yes or no.", "answer": answer, "category": category})
    return rows


def _mmstar(scenes: list[Scene], n: int, rng: random.Random) -> list[dict]:
    rows = []
    for i in range(n):
        scene = scenes[i % len(scenes)]
        items = lang.mcq_items(scene, rng)
        question, answer, category, l2 = items[i % len(items)]
        rows.append({"index": i, "question": question, "answer": answer, "category": category, "l2_category": l2,
                     "scene": scene})
    return rows


def _captions(scenes: list[Scene], n: int) -> list[dict]:
    return [{"question_id": str(i), "objects": json.dumps(sorted(scenes[i % len(scenes)].names())),
             "scene": scenes[i % len(scenes)]} for i in range(n)]


def _save(rows: list[dict], path: Path, image_size: int) -> Path:
    import datasets

    rows = [{**{k: v for k, v in r.items() if k != "scene"}, "image": draw(r["scene"], image_size)} for r in rows]
    features = {k: datasets.Value("int64" if isinstance(v, int) else "string") for k, v in rows[0].items() if k != "image"}
    features["image"] = datasets.Image()
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=datasets.Features(features)).to_parquet(str(path))
    return path


_COMMON = """dataset_path: parquet
dataset_kwargs:
  data_files:
    {split}: {parquet}
test_split: {split}
output_type: generate_until
doc_to_target: "answer"
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  do_sample: false
"""

_TASK_BODY = {
    "revision_pope": """doc_to_visual: {visual}
doc_to_text: !function lmms_eval.tasks.pope.utils.pope_doc_to_text
process_results: !function revision_plugin.study.metrics.pope_split_process_results
metric_list:
  - metric: pope_accuracy
    aggregation: !function lmms_eval.tasks.pope.utils.pope_aggregate_accuracy
    higher_is_better: true
  - metric: pope_f1_score
    aggregation: !function lmms_eval.tasks.pope.utils.pope_aggregate_f1_score
    higher_is_better: true
  - metric: pope_yes_ratio
    aggregation: !function lmms_eval.tasks.pope.utils.pope_aggregate_yes_ratio
    higher_is_better: true
""" + "".join(f"""  - metric: pope_{s}_{m}
    aggregation: !function lmms_eval.tasks.pope.utils.pope_aggregate_{m}
    higher_is_better: true
""" for s in ("adversarial", "popular", "random") for m in ("accuracy", "f1_score")),
    "mme": """doc_to_visual: {visual}
doc_to_text: !function lmms_eval.tasks.mme.utils.mme_doc_to_text
process_results: !function lmms_eval.tasks.mme.utils.mme_process_results
metric_list:
  - metric: mme_perception_score
    aggregation: !function lmms_eval.tasks.mme.utils.mme_aggregate_results
    higher_is_better: true
  - metric: mme_cognition_score
    aggregation: !function lmms_eval.tasks.mme.utils.mme_aggregate_results
    higher_is_better: true
""",
    "mmstar": """doc_to_visual: {visual}
doc_to_text: !function lmms_eval.tasks.mmstar.utils.mmstar_doc_to_text
process_results: !function lmms_eval.tasks.mmstar.utils.mmstar_process_results
metric_list:
  - metric: fine-grained perception
    aggregation: !function lmms_eval.tasks.mmstar.utils.mmstar_aggregate_results
    higher_is_better: true
  - metric: average
    aggregation: !function lmms_eval.tasks.mmstar.utils.mmstar_aggregate_results
    higher_is_better: true
""",
    "revision_study_caption": """doc_to_visual: {visual}
doc_to_text: !function revision_plugin.study.metrics.caption_doc_to_text
process_results: !function revision_plugin.study.metrics.caption_process_results
metric_list:
  - metric: caption_attribute_accuracy
    aggregation: mean
    higher_is_better: true
  - metric: caption_precision
    aggregation: mean
    higher_is_better: true
""",
}
_VISUAL = {"revision_pope": "!function lmms_eval.tasks.pope.utils.pope_doc_to_visual",
           "mme": "!function lmms_eval.tasks.mme.utils.mme_doc_to_visual",
           "mmstar": "!function lmms_eval.tasks.mmstar.utils.mmstar_doc_to_visual",
           "revision_study_caption": "!function revision_plugin.study.metrics.caption_doc_to_visual"}
_POST_PROMPT = {"revision_pope": lang.SHORT_SUFFIX, "mme": lang.SHORT_SUFFIX, "mmstar": lang.MCQ_SUFFIX}


def build_tasks(root: Path, scenes: list[Scene], s: EvalSettings, image_size: int, seed: int) -> dict[str, Path]:
    """Parquet files + ``tasks/`` and ``tasks_blind/`` include folders under ``root``."""
    rng = random.Random(f"{seed}-eval")
    rows = {"revision_pope": _pope(scenes, s.pope_per_split, rng), "mme": _mme(scenes, s.mme_per_category, rng),
            "mmstar": _mmstar(scenes, s.mcq, rng), "revision_study_caption": _captions(scenes, s.captions)}
    folders = {"tasks": root / "tasks", "tasks_blind": root / "tasks_blind"}
    for task, task_rows in rows.items():
        parquet = _save(task_rows, root / "data" / f"{task}.parquet", image_size)
        split = "val" if task == "mmstar" else "test"
        for name, folder in folders.items():
            visual = "!function revision_plugin.study.metrics.no_visual" if name == "tasks_blind" else _VISUAL[task]
            text = f"task: {task}\n" + _COMMON.format(split=split, parquet=json.dumps(str(parquet.resolve())),
                                                      max_new_tokens=40 if task == "revision_study_caption" else 6)
            text += _TASK_BODY[task].format(visual=visual)
            if task in _POST_PROMPT:
                text += ("lmms_eval_specific_kwargs:\n  default:\n    pre_prompt: \"\"\n"
                         f"    post_prompt: {json.dumps(_POST_PROMPT[task])}\n")
            text += "metadata:\n  - version: 0.0\n"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{task}.yaml").write_text(text)
    return folders


def shapes_note() -> str:
    return f"{len(COLOURS)} colours x {len(SHAPES)} shapes"
