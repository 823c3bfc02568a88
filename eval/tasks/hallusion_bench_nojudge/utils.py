"""Judge-free HallusionBench: each reply is read as Yes, No or neither; neither is wrong.

lmms-eval's rule-based ``hb_aggregation_result_*_intern`` count every reply without the
substring "yes" as "no" (a refusal scores on every "no" question; "eyes" is a yes). Here the
first whole word "yes" or "no" (case-insensitive) decides; a reply with neither is wrong.
The groupings of qAcc (one question over the figures of a set) and fAcc (all questions of
one figure) are lmms-eval's.
"""

import re

_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def hb_extract(text):
    """"1" (yes), "0" (no) or None (neither) from a model reply."""
    match = _YES_NO.search(str(text or ""))
    if match is None:
        return None
    return "1" if match.group(1).lower() == "yes" else "0"


def _correct(result):
    return hb_extract(result["model_prediction"]) == str(result["gt_answer"])


def _grouped(results, fields):
    groups = {}
    for r in results:
        key = "_".join(str(r[f]) for f in fields)
        groups.setdefault(key, []).append(_correct(r))
    return sum(min(v) for v in groups.values()) / len(groups)


def hb_aacc(results):
    return sum(_correct(r) for r in results) / len(results)


def hb_qacc(results):
    return _grouped(results, ("category", "subcategory", "set_id", "question_id"))


def hb_facc(results):
    return _grouped(results, ("category", "subcategory", "set_id", "figure_id"))


def hb_neither_rate(results):
    """Fraction of replies that are neither yes nor no (all scored wrong)."""
    return sum(hb_extract(r["model_prediction"]) is None for r in results) / len(results)


def hb_process_results(doc, result):
    sample = {k: v for k, v in doc.items() if k != "image"}
    sample["model_prediction"] = result[0]
    return {k: sample for k in ("aAcc", "qAcc", "fAcc", "neither")}
