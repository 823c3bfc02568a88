"""MME with per-question accuracy besides lmms-eval's official scores.

Scoring is lmms-eval's own ``mme_process_results`` (its yes/no parser); the official
perception/cognition *scores* aggregate with lmms-eval's ``mme_aggregate_results``. Added:
``mme_acc`` (every question), ``mme_perception_acc`` and ``mme_cognition_acc``: the fraction
of questions answered correctly (MME's own "acc"; its "acc+" needs both questions of an image).
"""

from lmms_eval.tasks.mme.utils import mme_process_results


def mme_accuracy_process_results(doc, results):
    out = mme_process_results(doc, results)
    key = next(iter(out))
    score = float(out[key]["score"])
    half = "mme_perception_acc" if key == "mme_perception_score" else "mme_cognition_acc"
    out["mme_acc"] = score
    out[half] = score
    return out
