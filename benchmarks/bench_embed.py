"""`revision embed` throughput against a bare encoder forward on the same batches (issue 15).

The embedding job (``embed_corpus``: length-sorted batches, LLM2Vec tokenisation and pooling,
the LLM2CLIP adapter, content hashes, feature-store writes) is timed end to end into a fresh
store; the baseline runs only the text model's forward on the very same batches, tokenised and
moved to the device beforehand, untimed. Both count the same real (non-padding) tokens, so
the ratio embed/bare says how much of the job is the forward. Target: ≥ 0.8 on a GPU with a
real encoder, where the forward dominates; on a CPU with the tiny stand-in the fixed costs
per batch weigh far more, so expect less there. Median of 3, measured in one run.

    python benchmarks/bench_embed.py                                  # tiny LLM2CLIP, built here
    python benchmarks/bench_embed.py --device cuda --shape llama3-8b --texts 20000 --batch 128
        # random weights in Llama-3-8B's shape (no download); the tokenizer stays the tiny
        # byte-level one, so a caption is ~4x more tokens than with Llama-3's own
    python benchmarks/bench_embed.py --device cuda --texts 20000 --batch 128 \\
        --model microsoft/LLM2CLIP-Openai-L-14-336 \\
        --text-model microsoft/LLM2CLIP-Llama-3-8B-Instruct-CC-Finetuned --trust-remote-code
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from revision_plugin.encoders import load_encoder
from revision_plugin.encoders.corpus import CorpusItem
from revision_plugin.encoders.corpus_embedding import embed_corpus
from revision_plugin.encoders.llm2vec_text import bidirectional_mask
from revision_plugin.testing.tiny_llm2clip import (
    LLAMA3_8B_SHAPE,
    LLM2CLIP_OPENAI_L14_DIM,
    TINY_LLAMA_SHAPE,
    build_tiny_llm2clip,
)

SHAPES = {"tiny": (TINY_LLAMA_SHAPE, 24), "llama3-8b": (LLAMA3_8B_SHAPE, LLM2CLIP_OPENAI_L14_DIM)}

WORDS = "a photo of the cat dog on in with and man red small large wooden table near two people street".split()


def corpus(texts: int, seed: int = 2) -> list[CorpusItem]:
    """Caption lengths of a web corpus: mostly short, a long tail."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.geometric(1 / 12, texts), 70)
    return [CorpusItem(f"t{i}", " ".join(rng.choice(WORDS, n)), f"bench:{i}") for i, n in enumerate(lengths)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def embed_seconds(encoder, items: list[CorpusItem], batch: int, store_dir: Path) -> float:
    started = time.perf_counter()
    embed_corpus(encoder, items, store_dir, "text", batch_size=batch, sort_by_length=True)
    synchronize(encoder.device)
    return time.perf_counter() - started


def bare_batches(encoder, items: list[CorpusItem], batch: int) -> list[dict[str, torch.Tensor]]:
    """The batches ``embed_corpus`` forms (longest first), tokenised as LLM2Vec does, on the device."""
    texts = sorted((item.value for item in items), key=encoder.text_length, reverse=True)
    text_model = encoder.text
    return [{k: v.to(encoder.device) for k, v in text_model.tokenize(texts[lo : lo + batch]).items()}
            for lo in range(0, len(texts), batch)]


@torch.inference_mode()
def bare_seconds(encoder, batches: list[dict[str, torch.Tensor]]) -> float:
    model = encoder.text.model
    synchronize(encoder.device)
    started = time.perf_counter()
    for inputs in batches:
        attention = inputs["attention_mask"]
        model(input_ids=inputs["input_ids"], attention_mask=bidirectional_mask(attention, model.dtype),
              position_ids=(attention.cumsum(-1) - 1).clamp(min=0), use_cache=False)
    synchronize(encoder.device)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000, help="corpus size (default 2000)")
    parser.add_argument("--batch", type=int, default=64, help="texts per batch, for both (default 64)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--dtype", default=None, help="bf16 / fp32 (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny",
                        help="size of the stand-in built here when no --model is given (default tiny)")
    parser.add_argument("--model", help="LLM2CLIP model (default: a stand-in built here, see --shape)")
    parser.add_argument("--text-model", help="its LLM2Vec text model (with --model)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow --model's own code (real LLM2CLIP)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (the median is printed)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    args = parser.parse_args(argv)
    if args.model and not args.text_model:
        parser.error("--model needs --text-model")
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model, text_model, trust = args.model, args.text_model, args.trust_remote_code
        else:  # our own stand-in, built from a config here: its code is ours
            shape, dim = SHAPES[args.shape]
            large = args.shape != "tiny"
            model, text_model = build_tiny_llm2clip(Path(tmp) / "stand-in", dim=dim, shape=shape,
                                                    device=args.device if large else None,
                                                    dtype=torch.bfloat16 if large else None)
            trust = True
        encoder = load_encoder("llm2clip", model, device=args.device, dtype=args.dtype, text_model=text_model,
                               text_batch_size=args.batch, trust_remote_code=trust)
        items = corpus(args.texts)
        batches = bare_batches(encoder, items, args.batch)
        tokens = sum(int(b["attention_mask"].sum()) for b in batches)
        embed_seconds(encoder, items[: args.batch * 2], args.batch, Path(tmp) / "warm")  # kernels, allocator
        bare_seconds(encoder, batches[:2])
        embed_runs, bare_runs = [], []
        for k in range(args.repeats):  # interleaved, so a burst of load hits both alike
            embed_runs.append(embed_seconds(encoder, items, args.batch, Path(tmp) / f"store-{k}"))
            bare_runs.append(bare_seconds(encoder, batches))
    embed_s, bare_s = statistics.median(embed_runs), statistics.median(bare_runs)
    what = args.model or f"stand-in of shape {args.shape} (random weights)"
    print(f"{what}: {encoder.encoder_id} on {encoder.device} ({encoder.dtype}), {args.texts} texts, batch {args.batch}, "
          f"{tokens:,} tokens; median of {args.repeats}")
    print(f"  bare forward   {bare_s:8.3f} s  {tokens / bare_s:12,.0f} tokens/s  (runs "
          + " ".join(f"{s:.3f}" for s in bare_runs) + ")")
    print(f"  revision embed {embed_s:8.3f} s  {tokens / embed_s:12,.0f} tokens/s  (runs "
          + " ".join(f"{s:.3f}" for s in embed_runs) + ")")
    print(f"  embed / bare   {bare_s / embed_s:8.2f}   (target on a GPU with a real encoder: >= 0.80)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
