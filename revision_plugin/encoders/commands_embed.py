"""``revision embed``: texts and/or images -> feature stores ``OUT/text`` and ``OUT/image``.

Resumable (rerun the same command after a kill), multi-process under ``torchrun`` (each
rank writes its own shards; rank 0 finalizes), batches sorted by length, bf16 on GPU.
Unusable inputs are listed in ``OUT/<modality>/rejected.jsonl`` with a reason, or stop
the run under ``--strict``; a rerun tries them again. A rerun skips inputs stored with the
same content, refuses changed ones unless ``--update`` (re-embeds them), and refuses a
different model even in a same-named directory (``encoders/corpus_embedding.py``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import timedelta
from pathlib import Path

from revision_plugin import runtime
from revision_plugin.argtypes import positive_int
from revision_plugin.errors import RevisionError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", required=True, choices=["hf_clip", "llm2clip"], help="encoder kind")
    parser.add_argument(
        "--model", required=True,
        help="model directory or hub id: a CLIPModel (hf_clip), or the LLM2CLIP image+adapter "
        "model, e.g. microsoft/LLM2CLIP-Openai-L-14-336 (llm2clip)",
    )
    parser.add_argument(
        "--text-model",
        help="llm2clip only: the LLM2Vec text encoder, e.g. "
        "microsoft/LLM2CLIP-Llama-3-8B-Instruct-CC-Finetuned (needed when embedding texts)",
    )
    parser.add_argument("--texts", type=Path, help="texts: .jsonl / .parquet (id, text) or dataset.json")
    parser.add_argument("--images", type=Path, help="images: .jsonl / .parquet (id, image path) or dataset.json")
    parser.add_argument("--dataset", type=Path, help="official ReVision dataset.json: both its texts and images")
    parser.add_argument("--image-root", type=Path, help="directory image paths are relative to (default: the input file's)")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="open image paths that are absolute or lead outside --image-root ('..', symlinks)")
    parser.add_argument("--out", required=True, type=Path, help="output directory; stores go to OUT/text and OUT/image")
    parser.add_argument("--id-key", default="id", help="id field/column (default: id)")
    parser.add_argument("--text-key", default="text", help="text field/column (default: text)")
    parser.add_argument("--image-key", default="image", help="image path field/column (default: image)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="texts or images encoded per forward (default 64)")
    parser.add_argument("--shard-rows", type=positive_int, default=65536, help="rows per store shard (commit granularity)")
    parser.add_argument("--max-length", type=positive_int, default=512, help="llm2clip: max text tokens (LLM2Vec default 512)")
    parser.add_argument(
        "--chat-template", default="auto", choices=["auto", "llama3", "none"],
        help="llm2clip: Llama-3 chat wrapping of texts as LLM2Vec applies it (auto: when the tokenizer has its tokens)",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda:0 ...")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"], help="auto: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--offline", action="store_true", help="never use the network: local dirs / hub cache only")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="llm2clip: allow running the model directory's own Python code (its modeling files)")
    parser.add_argument("--strict", action="store_true", help="stop at the first unusable input instead of rejecting it")
    parser.add_argument("--update", action="store_true",
                        help="re-embed inputs whose text or image changed since they were stored (default: refuse "
                             "them); single process")
    parser.add_argument("--no-sort", action="store_true", help="keep input order instead of sorting texts by length")
    parser.add_argument("--workers", type=positive_int, default=4, help="image decoding threads per process")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (also none while loading the model)")


def run(args: argparse.Namespace) -> int:
    from revision_plugin.encoders import load_encoder
    from revision_plugin.encoders.corpus import read_corpus
    from revision_plugin.encoders.corpus_embedding import embed_corpus
    from revision_plugin.store import open_store

    inputs = _inputs(args)
    from revision_plugin.errors import check_writable

    check_writable(args.out, directory=True)
    if args.update and runtime.launched_world_size() > 1:
        raise RevisionError("--update re-embeds changed rows in one process; run it without torchrun")
    # Read and check every input before loading a multi-GB model.
    corpora = {
        modality: read_corpus(
            path, modality, id_key=args.id_key,
            value_key=args.text_key if modality == "text" else args.image_key,
            image_root=args.image_root, allow_outside_root=args.allow_outside_root,
        )
        for modality, path in inputs.items()
    }
    rank, world_size, local_rank = _init_distributed()
    device = _device(args.device, local_rank)
    options = {}
    if args.encoder == "llm2clip":
        if "text" in corpora and not args.text_model:
            raise RevisionError("--encoder llm2clip needs --text-model to embed texts")
        options = {"text_model": args.text_model, "max_length": args.max_length, "chat_template": args.chat_template,
                   "trust_remote_code": args.trust_remote_code}
    elif args.text_model:
        raise RevisionError("--text-model is only used with --encoder llm2clip")
    if args.no_progress:  # transformers' own "Loading weights" bars too
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    encoder = load_encoder(
        args.encoder, args.model, device=device, dtype=None if args.dtype == "auto" else args.dtype,
        offline=args.offline, **options,
    )
    logger.info("rank %d/%d: %s on %s", rank, world_size, encoder, device)
    summaries = []
    for modality, items in corpora.items():
        summaries.append(
            embed_corpus(
                encoder, items, args.out / modality, modality,
                batch_size=args.batch_size, shard_rows=args.shard_rows, sort_by_length=not args.no_sort,
                strict=args.strict, progress=not args.no_progress and rank == 0,
                rank=rank, world_size=world_size, image_workers=args.workers, update=args.update,
            )
        )
    if rank == 0:
        for summary in summaries:
            with open_store(summary.store_dir) as store:
                reasons = ", ".join(f"{k}: {v}" for k, v in sorted(summary.reasons.items()))
                print(
                    f"{summary.modality}: {store.count} rows in {summary.store_dir} "
                    f"({summary.embedded} embedded now by rank 0 at {summary.rows_per_second:.1f} rows/s, "
                    f"{summary.already_done} done before"
                    + (f", {summary.retried} rejected before and retried" if summary.retried else "")
                    + (f", {summary.updated} changed and re-embedded" if summary.updated else "")
                    + f"); {store.manifest['rejected']} rejected"
                    + (f" (this run, rank 0: {reasons})" if reasons else "")
                    + (f", see {summary.store_dir / 'rejected.jsonl'}" if store.manifest["rejected"] else "")
                )
    runtime.shutdown_distributed()
    return 0


def _inputs(args) -> dict[str, Path]:
    inputs: dict[str, Path] = {}
    if args.dataset:
        inputs = {"text": args.dataset, "image": args.dataset}
    for modality, path in (("text", args.texts), ("image", args.images)):
        if path is not None:
            if modality in inputs:
                raise RevisionError(f"--{modality}s given together with --dataset; use one of them")
            inputs[modality] = path
    if not inputs:
        raise RevisionError("nothing to embed: give --texts, --images or --dataset")
    return inputs


def _init_distributed() -> tuple[int, int, int]:
    """Rank, world size and local rank; joins the process group started by torchrun."""
    if runtime.launched_world_size() <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    # Ranks wait for each other only at the end; allow for unequal progress.
    runtime.init_distributed(timeout=timedelta(hours=6))
    return dist.get_rank(), dist.get_world_size(), runtime.local_rank()


def _device(requested: str, local_rank: int) -> str:
    return requested if requested != "auto" else runtime.default_device(local_rank)


if __name__ == "__main__":
    from revision_plugin.cli import main

    sys.exit(main(["embed", *sys.argv[1:]]))
