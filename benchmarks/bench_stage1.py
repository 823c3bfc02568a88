"""Stage-1 step time: one pseudo-visual vector fed as 1 token vs replicated 576 times (issue 5).

The official ReVision code repeats each 1280-d pseudo-visual vector 576 times (the patch
count of a CLIP-L/336 tower). The vector is the same in every slot, so the LLM learns
nothing more from 576 copies than from one, but it pays for 576 extra positions in every
layer, forward and backward. This benchmark times one real stage-1 training step (LLaVA's
own ``LlavaLlamaForCausalLM`` forward with ``prepare_inputs_labels_for_multimodal``, the
plugin's tower reading cached features from a feature store through a ReAlign operator,
the mlp2x_gelu projector, backward through the frozen LLM, AdamW on the projector) for each
``num_tokens`` on a small Llama, in one run, and prints the ratio and tokens/s.

    python benchmarks/bench_stage1.py                          # CPU defaults, ~1 minute
    python benchmarks/bench_stage1.py --hidden-size 512 --layers 8 --steps 10
    python benchmarks/bench_stage1.py --device cuda --hidden-size 4096 --layers 4

Target: step(576) / step(1) >= 5x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

DIM = 1280  # LLM2CLIP-Openai-L-14-336's joint space


def build(args, root: Path, num_tokens: int):
    """A LLaVA-Llama with the revision tower (cached text features) and an mlp2x_gelu projector."""
    import revision_plugin.align  # noqa: F401
    from revision_plugin.align.base import fit_operator
    from revision_plugin.hosts.llava import build_llava_llama
    from revision_plugin.store import open_store, write_store

    store_dir, op_dir = root / "text_store", root / "operator"
    if not store_dir.exists():
        rng = np.random.default_rng(0)
        text = rng.normal(size=(args.corpus, DIM)).astype(np.float32) + 0.5
        image = rng.normal(size=(args.corpus, DIM)).astype(np.float32) - 0.5
        write_store(store_dir, [f"t{i}" for i in range(args.corpus)], text, "bench:llm2clip-like", fsync=False)
        fit_operator("realign", text.astype(np.float64), image.astype(np.float64), encoder_id="bench:llm2clip-like").save(op_dir)
    torch.manual_seed(0)
    model = build_llava_llama(
        f"revision:operator={op_dir},text_store={store_dir},num_tokens={num_tokens}",
        mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2, attn_implementation=args.attn,
        vocab_size=args.vocab, hidden_size=args.hidden_size, intermediate_size=args.hidden_size * 8 // 3,
        num_hidden_layers=args.layers, num_attention_heads=max(args.hidden_size // 64, 1),
        num_key_value_heads=max(args.hidden_size // 64, 1), max_position_embeddings=4096,
    )
    model.config.tokenizer_model_max_length = 4096
    # Stage 1: LLM frozen, projector trained.
    model.requires_grad_(False)
    for p in model.get_model().mm_projector.parameters():
        p.requires_grad_(True)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model.to(device=args.device, dtype=dtype).train()
    model.get_model().get_vision_tower().to(device=args.device, dtype=dtype)
    return model, open_store(store_dir)


def make_batch(args, store, step: int):
    """Plain-template stage-1 batch: BOS <image> caption; labels on the caption only."""
    from revision_plugin.hosts.llava import token_constants
    from revision_plugin.tower import (
        KIND_TEXT_FEATURE,
        TowerSample,
        collate_tower_inputs,
    )

    tokens = token_constants()
    g = torch.Generator().manual_seed(step)
    captions = torch.randint(3, args.vocab, (args.batch_size, args.caption_tokens), generator=g)
    head = torch.tensor([[1, tokens.image_token_index]]).expand(args.batch_size, -1)
    input_ids = torch.cat([head, captions], dim=1)
    labels = input_ids.clone()
    labels[:, :2] = tokens.ignore_index
    ids = [f"t{(step * args.batch_size + i) % args.corpus}" for i in range(args.batch_size)]
    samples = [TowerSample(KIND_TEXT_FEATURE, row) for row in store.lookup(ids)]
    images = collate_tower_inputs(samples).to(args.device, dtype=torch.float32 if args.dtype == "fp32" else torch.bfloat16)
    return input_ids.to(args.device), labels.to(args.device), torch.ones_like(input_ids, dtype=torch.bool).to(args.device), images


def time_steps(args, model, store) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    times = []
    for step in range(args.warmup + args.steps):
        input_ids, labels, mask, images = make_batch(args, store, step)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels, images=images).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-tokens", type=int, nargs="+", default=[1, 576])
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--caption-tokens", type=int, default=48, help="caption length (Bunny captions: ~30-60 tokens)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--corpus", type=int, default=512, help="rows in the synthetic feature store")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, eager, flash_attention_2)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_stage1_") as tmp:
        for k in args.num_tokens:
            model, store = build(args, Path(tmp), k)
            times = time_steps(args, model, store)
            seq = 2 - 1 + k + args.caption_tokens  # BOS + k visual tokens + caption
            step = statistics.median(times)
            results[k] = {
                "num_tokens": k,
                "sequence_length": seq,
                "step_s_median": step,
                "step_s_all": times,
                "llm_tokens_per_s": args.batch_size * seq / step,
                "caption_tokens_per_s": args.batch_size * args.caption_tokens / step,
                "samples_per_s": args.batch_size / step,
            }
            del model
    print(f"stage-1 step, small Llama (hidden {args.hidden_size}, {args.layers} layers, vocab {args.vocab}), "
          f"batch {args.batch_size} x {args.caption_tokens} caption tokens, {args.device} {args.dtype}, "
          f"{torch.get_num_threads()} threads, median of {args.steps} steps")
    print(f"{'num_tokens':>10} {'seq len':>8} {'step (s)':>9} {'samples/s':>10} {'caption tok/s':>14} {'LLM tok/s':>10}")
    for k, r in results.items():
        print(f"{k:>10} {r['sequence_length']:>8} {r['step_s_median']:>9.4f} {r['samples_per_s']:>10.2f} "
              f"{r['caption_tokens_per_s']:>14.1f} {r['llm_tokens_per_s']:>10.1f}")
    summary = {"config": {k: v for k, v in vars(args).items()}, "results": results}
    if len(args.num_tokens) >= 2:
        base, other = args.num_tokens[0], args.num_tokens[-1]
        ratio = results[other]["step_s_median"] / results[base]["step_s_median"]
        summary["ratio"] = ratio
        verdict = "meets" if ratio >= 5 else "MISSES"
        print(f"ratio step({other}) / step({base}) = {ratio:.1f}x  ({verdict} the >= 5x target): "
              f"num_tokens={base} trains on {ratio:.1f}x more captions per second")
    print(json.dumps({"bench_stage1": {k: v for k, v in summary.items() if k != "config"}}, default=float))
    return summary


if __name__ == "__main__":
    main()
