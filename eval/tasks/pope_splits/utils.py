"""POPE process_results that also files each answer under its split (adversarial/popular/random).

Scoring is lmms-eval's own ``pope_process_results``; aggregation is lmms-eval's own
``pope_aggregate_*`` applied to each split's records.
"""

from lmms_eval.tasks.pope.utils import pope_process_results

POPE_SPLITS = ("adversarial", "popular", "random")


def pope_split_process_results(doc, results):
    out = pope_process_results(doc, results)
    split = str(doc.get("category", "")).strip().lower()
    if split not in POPE_SPLITS:
        raise ValueError(
            f"POPE question {doc.get('question_id')!r}: category {doc.get('category')!r} is not one of {POPE_SPLITS}"
        )
    record = out["pope_accuracy"]
    out[f"pope_{split}_accuracy"] = record
    out[f"pope_{split}_f1_score"] = record
    return out
