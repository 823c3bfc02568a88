"""Data-acquisition cost (paper app. H.4): C = P_in·T_in + P_out·T_out, normalised to a baseline.

Token counts come from ``--tokens LABEL=IN,OUT`` or are counted in the run's training json
with the model's tokenizer: human turns are input, assistant turns output, each ``<image>``
adds ``image_tokens`` input tokens.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from revision_plugin.errors import BadInputError, RevisionError

PAPER_PRICE_IN = 1.25  # USD per million input tokens (app. H.4, GPT-5)
PAPER_PRICE_OUT = 10.0  # USD per million output tokens


@dataclass(frozen=True)
class TokenCount:
    input_tokens: float
    output_tokens: float
    origin: str = ""

    def dollars(self, price_in: float, price_out: float) -> float:
        return (price_in * self.input_tokens + price_out * self.output_tokens) / 1e6


_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9}


def parse_token_amount(text: str) -> float:
    """``"11.64M"`` → 11_640_000; plain numbers are token counts."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kKmMbB]?)\s*", text)
    if not match:
        raise RevisionError(f"not a token count: {text!r} (use e.g. 11640000 or 11.64M)")
    return float(match.group(1)) * _SUFFIX[match.group(2).lower()]


def _iter_samples(path: Path) -> Iterable[dict]:
    try:
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as fh:
                for line_no, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            yield json.loads(line)
                        except json.JSONDecodeError as err:
                            raise BadInputError(f"{path}:{line_no}: invalid json ({err})") from err
            return
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BadInputError(f"{path}: invalid json ({err})") from err
    if not isinstance(data, list):
        raise BadInputError(f"{path}: expected a list of LLaVA samples")
    yield from data


def count_training_tokens(paths: list[Path], tokenizer, image_tokens: int = 0, batch: int = 1024) -> TokenCount:
    """Input/output tokens of LLaVA-format training json(s).

    Human turns are the input (each ``<image>`` placeholder is replaced by ``image_tokens``
    tokens), assistant turns the output — what an API would read and write to synthesise
    the data. ``tokenizer`` is a Hugging Face tokenizer (or any callable returning
    ``{"input_ids": [[...], ...]}`` for a list of strings).
    """
    counts = {"human": 0, "gpt": 0}
    images = 0
    pending: dict[str, list[str]] = {"human": [], "gpt": []}

    def flush(role: str) -> None:
        if pending[role]:
            ids = tokenizer(pending[role], add_special_tokens=False)["input_ids"]
            counts[role] += sum(len(x) for x in ids)
            pending[role].clear()

    for path in paths:
        for index, sample in enumerate(_iter_samples(path)):
            turns = sample.get("conversations") if isinstance(sample, dict) else None
            if not isinstance(turns, list):
                raise BadInputError(f"{path}: sample {index} (id {sample.get('id') if isinstance(sample, dict) else '?'}) "
                                    "has no 'conversations' list")
            for turn in turns:
                role = "human" if turn.get("from") in ("human", "user") else "gpt"
                text = str(turn.get("value", ""))
                images += text.count("<image>")
                pending[role].append(text.replace("<image>", "").strip())
                if len(pending[role]) >= batch:
                    flush(role)
    flush("human")
    flush("gpt")
    return TokenCount(counts["human"] + images * image_tokens, counts["gpt"],
                      origin=f"counted in {', '.join(str(p) for p in paths)}")
