"""lmms-eval hooks of the study's local tasks (referenced from the generated task YAMLs).

Scoring stays lmms-eval's own wherever a benchmark format exists (``mme``, ``mmstar``,
``pope`` functions); only the caption-attribute metric and the POPE split filing are here.
"""

from __future__ import annotations

import json

from revision_plugin.study.captions import CAPTION_QUESTION, mentioned_objects

POPE_SPLITS = ("adversarial", "popular", "random")


def no_visual(doc) -> list:
    """``doc_to_visual`` of the Blind tasks: the question without its image."""
    return []


def pope_split_process_results(doc, results):
    """lmms-eval's ``pope_process_results``, each answer also filed under its split
    (as ``eval/tasks/pope_splits`` does for the real POPE)."""
    from lmms_eval.tasks.pope.utils import pope_process_results

    out = pope_process_results(doc, results)
    split = str(doc["category"])
    out[f"pope_{split}_accuracy"] = out["pope_accuracy"]
    out[f"pope_{split}_f1_score"] = out["pope_accuracy"]
    return out


def caption_doc_to_visual(doc) -> list:
    return [doc["image"].convert("RGB")]


def caption_doc_to_text(doc, lmms_eval_specific_kwargs=None) -> str:
    return CAPTION_QUESTION


def caption_process_results(doc, results):
    """Objects named with the right colour and shape (recall) and named objects that exist (precision)."""
    truth = set(json.loads(doc["objects"]))
    named = mentioned_objects(results[0])
    recall = len(truth & named) / len(truth)
    precision = len(truth & named) / len(named) if named else 0.0
    return {"caption_attribute_accuracy": recall, "caption_precision": precision}
