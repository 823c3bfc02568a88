"""Direct-answer LogicVista: the option letters in the reply must equal the gold letters."""

import re

# An option letter standing alone ("B", "(B)", "B.", "A, C"), not the first letter of a word.
_LETTER = re.compile(r"(?<![A-Za-z])([A-H])(?![A-Za-z])")


def option_letters(text):
    """The set of option letters in ``text``: "A, C" -> {"A", "C"}; "(b)" -> {"B"} only if upper-case."""
    return frozenset(_LETTER.findall(str(text)))


def logicvista_doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def logicvista_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{str(doc['question']).strip()}{kwargs.get('post_prompt', '')}"


def logicvista_process_results(doc, results):
    gold = option_letters(doc["answer"])
    if not gold:
        raise ValueError(f"LogicVista question {doc.get('id')!r}: no option letter in the gold answer {doc['answer']!r}")
    pred = option_letters(results[0] if results else "")
    return {"accuracy": 1.0 if pred == gold else 0.0}
