"""A tiny LLaVA trained with the real ReVision pipeline, offline, in well under a minute on CPU.

Pieces (all built locally, saved with ``save_pretrained`` so the real loaders run):

* :func:`build_tiny_tokenizer` - a Llama tokenizer (transformers' ``LlamaTokenizer``: byte
  fallback BPE, ``legacy=False``, BOS added) whose merges are *trained* with the
  ``tokenizers`` library on a small corpus containing LLaVA's conversation templates, so
  LLaVA's per-round token counting behaves exactly as with real Llama-2/Vicuna tokenizers
  (no ``tokenization mismatch``);
* :func:`build_tiny_llama` - a 2-layer Llama built from a config;
* ``build_tiny_clip`` (``revision_plugin.testing.tiny_clip``) - the joint embedding model;
* :func:`build_tiny_llava_data` - coloured-shape PNGs, captions, a text feature store, a
  ReAlign operator fitted on unpaired text/image embeddings, stage-1 (pseudo text), paired
  baseline and stage-2 (image instruction) json files, and tower specs;
* :func:`build_tiny_llava_checkpoint` - LLaVA's own ``train()`` for stage 1 (projector on
  pseudo text) and stage 2 (full fine-tune on images), returning a checkpoint directory that
  ``llava.model.builder.load_pretrained_model(path, None, path.name)`` loads after
  ``revision_plugin.hosts.llava.register()``. Cached: a second call with the same
  ``workdir`` returns the finished checkpoint immediately.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (230, 200, 20)}
SHAPES = ("square", "circle", "triangle")
QUESTIONS = ("What colour is the shape?", "What shape is in the picture?", "Describe the image briefly.")
CHECKPOINT_NAME = "tiny-llava-revision"
STAGE1_NAME = "tiny-llava-revision-stage1"

_LOCK = threading.Lock()


@contextlib.contextmanager
def torch_threads(count: int | None = 1):
    """Run with ``count`` torch threads (tiny models gain nothing from more, and parallel
    test workers on few cores slow each other down badly when each takes every core)."""
    import torch

    if not count:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ----------------------------------------------------------------------------- tokenizer / LLM


def tiny_corpus() -> list[str]:
    """Training text for the tiny tokenizer: LLaVA's templates, captions, answers, ASCII."""
    lines = [VICUNA_SYSTEM]
    for colour in COLOURS:
        for shape in SHAPES:
            caption = caption_for(colour, shape)
            for question in QUESTIONS:
                lines.append(f"{VICUNA_SYSTEM} USER: <image>\n{question} ASSISTANT: {answer_for(question, colour, shape)}</s>")
            lines.append(caption)
    lines.append("USER: ASSISTANT: ### Human: Assistant: <image> <im_patch> <im_start> <im_end>")
    lines.append("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()[]{}<>/\\-_+=*&^%$#@~`|")
    return lines * 4


def pretraining_lines() -> list[str]:
    """Captions and answers, ended as LLaVA's ``plain`` and ``v1`` templates end them (a
    newline, ``</s>``): the tiny LLM's language-model pretraining."""
    lines = []
    for index, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        lines.append(caption_for(colour, shape) + "\n")
        lines.append(f"{hint_token(index)}{caption_for(colour, shape)}\n")
        lines.extend(f"{q} {answer_for(q, colour, shape)}</s>" for q in QUESTIONS)
    return lines


def hint_token(index: int) -> str:
    """One added token per picture. The tiny LLM is pretrained to continue ``<picN>`` with
    picture N's caption: the stand-in for what a real LLM brings to stage 1, the ability to
    be steered by a prefix. Stage 1 must then teach the projector to steer it from the
    pseudo-visual vector alone (LLaVA never feeds these tokens)."""
    return f"<pic{index}>"


def caption_for(colour: str, shape: str) -> str:
    return f"a {colour} {shape} on a white background."


def answer_for(question: str, colour: str, shape: str) -> str:
    if question == QUESTIONS[0]:
        return f"The shape is {colour}."
    if question == QUESTIONS[1]:
        return f"It is a {shape}."
    return f"A {colour} {shape} on a white background."


def _llama2_role_tokens(vocab: dict[str, int], merges: list[tuple[str, str]]):
    """Give the role word ``USER`` the split Llama-2's vocabulary gives it: one token after
    ``</s>`` (``USER``) but two at the start of a text (``▁`` + ``USER``).

    LLaVA's v1 label masking tokenises each round on its own and subtracts one token per
    later round when ``tokenizer.legacy`` is False: a correction that holds for exactly this
    property of the Llama-2/Vicuna vocabulary. With it, multi-round conversations count
    right, as with the real tokenizer; without it they are masked (``tokenization mismatch``).
    """
    merges = [m for m in merges if not (m[0] + m[1]).startswith("▁U")]
    for pair in (("U", "S"), ("E", "R"), ("US", "ER")):
        if pair not in merges:
            merges.append(pair)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if not t.startswith("▁U")]
    for token in ("▁", "U", "S", "E", "R", "US", "ER", "USER"):
        if token not in tokens:
            tokens.append(token)
    return {t: i for i, t in enumerate(tokens)}, merges


def build_tiny_tokenizer(directory: str | Path, vocab_size: int = 700):
    """Train a byte-fallback BPE on :func:`tiny_corpus` and save it as a ``LlamaTokenizer``."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Training-time splitting only decides which merges exist: never across spaces (like
    # SentencePiece), punctuation or newlines (a newline becomes the <0x0A> byte, as in Llama).
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s*\n\s*"), behavior="removed"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
        pre_tokenizers.Punctuation(behavior="isolated"),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    bpe.train_from_iterator(tiny_corpus(), trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    vocab, merges = _llama2_role_tokens(model["vocab"], merges)
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges, legacy=False, add_bos_token=True,
                               add_eos_token=False, model_max_length=2048)
    tokenizer.add_tokens([hint_token(i) for i in range(len(COLOURS) * len(SHAPES))], special_tokens=True)
    # Llama-3-Instruct's chat tokens, for the llama_3 conversation template.
    tokenizer.add_tokens(["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], special_tokens=True)
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def build_tiny_llama(directory: str | Path, *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                     seed: int = 0, pretrain_steps: int = 150) -> Path:
    """A tiny ``LlamaForCausalLM`` + the tiny tokenizer, saved to ``directory``.

    ``pretrain_steps`` of language modelling on :func:`tiny_corpus` give it the captions'
    vocabulary, as a real LLM knows language before projector pretraining: stage 1 then has
    to convey *which* caption (colour and shape) through the projector, a clear learning signal.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    tokenizer = build_tiny_tokenizer(directory)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if pretrain_steps:
        lines = pretraining_lines()
        batch = tokenizer(lines, return_tensors="pt", padding=True) if tokenizer.pad_token else None
        if batch is None:
            tokenizer.pad_token = tokenizer.unk_token
            batch = tokenizer(lines, return_tensors="pt", padding=True)
            tokenizer.pad_token = None
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
        model.train()
        with torch_threads(1):
            for _ in range(pretrain_steps):
                loss = model(**batch, labels=labels).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
        model.eval()
        logger.debug("tiny llama: pretraining loss %.3f after %d steps", float(loss.detach()), pretrain_steps)
    model.save_pretrained(directory)
    return directory


# ----------------------------------------------------------------------------- data


def draw_shape(colour: str, shape: str, size: int = 48):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    box = (size // 6, size // 6, size - size // 6, size - size // 6)
    if shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    elif shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    else:
        draw.polygon([(size // 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=COLOURS[colour])
    return img


@dataclass
class TinyLlavaData:
    """Paths of everything :func:`build_tiny_llava_data` wrote."""

    root: Path
    llm: Path
    encoder: Path
    encoder_id: str
    image_folder: Path
    text_store: Path
    operator: Path
    stage1_json: Path  # pseudo records (text_id) for stage 1
    stage1_online_json: Path  # pseudo records with raw text (online encoding)
    paired_json: Path  # image-caption pairs: the "w/ image" baseline's stage 1
    stage2_json: Path  # image instruction data (vicuna v1 conversations) + one text-only sample
    spec_cached: str  # revision: spec reading the text store (stage 1) and encoding images (stage 2)
    spec_online: str  # revision: spec encoding texts and images in the loop

    def to_json(self) -> dict:
        return {k: str(v) for k, v in asdict(self).items()}


def train_tiny_clip(directory: str | Path, pairs: list[tuple[Path, str]], *, steps: int = 60, seed: int = 0) -> Path:
    """A few steps of CLIP's contrastive loss on ``(image file, caption)`` pairs, saved back.

    A random CLIP maps every picture to nearly the same vector; a briefly trained one is a
    real joint embedding space (discriminative, with a modality gap), which is what the
    operator and the pseudo-visual pretraining are about.
    """
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    directory = Path(directory)
    model = CLIPModel.from_pretrained(str(directory))
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    processor = AutoImageProcessor.from_pretrained(str(directory))
    pixels = processor(images=[Image.open(p).convert("RGB") for p, _ in pairs], return_tensors="pt")["pixel_values"]
    tokens = tokenizer([c for _, c in pairs], padding=True, return_tensors="pt")
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    with torch_threads(1):
        for _ in range(steps):
            loss = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels,
                         return_loss=True).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()
    logger.debug("tiny clip: contrastive loss %.3f after %d steps", float(loss.detach()), steps)
    model.save_pretrained(str(directory))
    return directory


def build_tiny_llava_data(root: str | Path, *, repeats: int = 4, method: str = "realign", clip_steps: int = 60) -> TinyLlavaData:
    """Tiny LLM, tiny (briefly trained) CLIP, images, feature store, fitted operator and LLaVA json files."""
    import shutil

    import numpy as np

    import revision_plugin.align  # noqa: F401
    from revision_plugin.align.base import fit_operator
    from revision_plugin.encoders import load_encoder
    from revision_plugin.store import write_store
    from revision_plugin.testing.tiny_clip import build_tiny_clip

    root = Path(root)
    if root.exists():  # an interrupted earlier build: start clean
        shutil.rmtree(root)
    root.mkdir(parents=True)
    llm = build_tiny_llama(root / "tiny-llama")
    image_folder = root / "images"
    image_folder.mkdir(exist_ok=True)
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    image_files = {}
    for colour, shape in pairs:
        name = f"{colour}_{shape}.png"
        draw_shape(colour, shape).save(image_folder / name)
        image_files[(colour, shape)] = name
    encoder_dir = build_tiny_clip(root / "tiny-clip")
    if clip_steps:
        train_tiny_clip(encoder_dir, [(image_folder / image_files[p], caption_for(*p)) for p in pairs], steps=clip_steps)
    encoder = load_encoder("hf_clip", encoder_dir, offline=True)

    caption_ids = [f"cap-{colour}-{shape}" for colour, shape in pairs]
    captions = [caption_for(colour, shape) for colour, shape in pairs]
    text_emb = encoder.encode_texts(captions).numpy()
    text_store = write_store(root / "text_store", caption_ids, text_emb, encoder.encoder_id, fsync=False)
    from PIL import Image

    image_emb = encoder.encode_images([Image.open(image_folder / image_files[p]) for p in pairs]).numpy()
    operator = fit_operator(method, text_emb.astype(np.float64), image_emb.astype(np.float64), encoder_id=encoder.encoder_id)
    operator_dir = operator.save(root / f"operator-{method}")

    def plain(first: str, caption: str) -> list[dict]:
        return [{"from": "human", "value": first}, {"from": "gpt", "value": caption}]

    stage1 = [{"id": cid, "text_id": cid, "conversations": plain("<image>\n", cap)}
              for _ in range(repeats) for cid, cap in zip(caption_ids, captions)]
    stage1_online = [{"id": cid, "text": cap, "conversations": plain("<image>\n", cap)}
                     for _ in range(repeats) for cid, cap in zip(caption_ids, captions)]
    paired = [{"id": f"img-{c}-{s}", "image": image_files[(c, s)], "conversations": plain("<image>\n", caption_for(c, s))}
              for _ in range(repeats) for c, s in pairs]
    stage2 = []
    for i, (colour, shape) in enumerate(pairs):
        question = QUESTIONS[i % len(QUESTIONS)]
        stage2.append({
            "id": f"sft-{colour}-{shape}", "image": image_files[(colour, shape)],
            "conversations": [{"from": "human", "value": f"<image>\n{question}"},
                              {"from": "gpt", "value": answer_for(question, colour, shape)}],
        })
    stage2.append({"id": "sft-text-only", "conversations": [{"from": "human", "value": "What is a square?"},
                                                             {"from": "gpt", "value": "A shape."}]})
    paths = {}
    for name, records in (("stage1", stage1), ("stage1_online", stage1_online), ("paired", paired), ("stage2", stage2)):
        paths[name] = root / f"{name}.json"
        paths[name].write_text(json.dumps(records, indent=1))

    spec_cached = (f"revision:encoder=hf_clip,encoder_model={encoder_dir},operator={operator_dir},"
                   f"text_store={text_store},num_tokens=1,offline=true")
    spec_online = f"revision:encoder=hf_clip,encoder_model={encoder_dir},operator={operator_dir},num_tokens=1,offline=true"
    data = TinyLlavaData(root, llm, encoder_dir, encoder.encoder_id, image_folder, Path(text_store), Path(operator_dir),
                         paths["stage1"], paths["stage1_online"], paths["paired"], paths["stage2"], spec_cached, spec_online)
    (root / "tiny_llava_data.json").write_text(json.dumps(data.to_json(), indent=2))
    return data


# ----------------------------------------------------------------------------- training


def stage1_args(data: TinyLlavaData, output_dir: str | Path, *, spec: str | None = None, data_path: str | Path | None = None,
                epochs: float = 1, batch_size: int = 8, learning_rate: float = 5e-3, save_steps: int = 50000,
                extra: list[str] | None = None) -> list[str]:
    """LLaVA ``train()`` arguments of a tiny stage 1 (projector only, LLM frozen, ``plain``)."""
    return [
        "--model_name_or_path", str(data.llm), "--version", "plain",
        "--data_path", str(data_path or data.stage1_json), "--image_folder", str(data.image_folder),
        "--vision_tower", spec or data.spec_cached, "--mm_projector_type", "mlp2x_gelu",
        "--tune_mm_mlp_adapter", "True", "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False",
        "--output_dir", str(output_dir), "--num_train_epochs", str(epochs),
        "--per_device_train_batch_size", str(batch_size), "--gradient_accumulation_steps", "1",
        "--learning_rate", str(learning_rate), "--weight_decay", "0.", "--warmup_ratio", "0.03",
        "--lr_scheduler_type", "cosine", "--logging_steps", "1",
        # LLaVA's scripts' saving: step checkpoints (every save_steps, and always at the end) + the final save.
        "--save_strategy", "steps", "--save_steps", str(save_steps), "--save_total_limit", "1",
        "--model_max_length", "256", "--dataloader_num_workers", "0", "--lazy_preprocess", "True",
        "--report_to", "none", "--seed", "0", "--disable_tqdm", "True",
        *(extra or []),
    ]


def stage2_args(data: TinyLlavaData, output_dir: str | Path, projector: str | Path, *, spec: str | None = None,
                epochs: float = 1, batch_size: int = 4, learning_rate: float = 1e-3, save_steps: int = 50000,
                extra: list[str] | None = None) -> list[str]:
    """LLaVA ``train()`` arguments of a tiny stage 2 (full fine-tune, ``v1``, stage-1 projector)."""
    return [
        "--model_name_or_path", str(data.llm), "--version", "v1",
        "--data_path", str(data.stage2_json), "--image_folder", str(data.image_folder),
        "--vision_tower", spec or data.spec_cached, "--pretrain_mm_mlp_adapter", str(projector),
        "--mm_projector_type", "mlp2x_gelu", "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False",
        "--image_aspect_ratio", "pad", "--group_by_modality_length", "True",
        "--output_dir", str(output_dir), "--num_train_epochs", str(epochs),
        "--per_device_train_batch_size", str(batch_size), "--gradient_accumulation_steps", "1",
        "--learning_rate", str(learning_rate), "--weight_decay", "0.", "--warmup_ratio", "0.03",
        "--lr_scheduler_type", "cosine", "--logging_steps", "1",
        # LLaVA's scripts' saving: step checkpoints (every save_steps, and always at the end) + the final save.
        "--save_strategy", "steps", "--save_steps", str(save_steps), "--save_total_limit", "1",
        "--model_max_length", "256", "--dataloader_num_workers", "0", "--lazy_preprocess", "True",
        "--report_to", "none", "--seed", "0", "--disable_tqdm", "True",
        *(extra or []),
    ]


class TrainOutput:
    """What an in-process LLaVA ``train()`` run printed, and its logged losses."""

    def __init__(self, output_dir: Path, stdout: str) -> None:
        self.output_dir = output_dir
        self.stdout = stdout

    @property
    def log_history(self) -> list[dict]:
        path = self.output_dir / "trainer_state.json"
        return json.loads(path.read_text())["log_history"] if path.is_file() else []

    @property
    def losses(self) -> list[float]:
        return [entry["loss"] for entry in self.log_history if "loss" in entry]


def run_llava_train(args: list[str], *, attn_implementation: str | None = "eager", threads: int | None = 1) -> TrainOutput:
    """Run LLaVA's own ``llava.train.train.train()`` in this process with ``args`` as argv
    (:func:`revision_plugin.hosts.llava.train_llava`; the patched ``train()`` registers the plugin).

    LLaVA prints (it does not log) its data warnings, e.g. ``WARNING: tokenization mismatch``;
    stdout is captured (and echoed) so callers can assert on it.
    """
    from revision_plugin.hosts.llava import train_llava

    output_dir = Path(args[args.index("--output_dir") + 1])
    buffer = io.StringIO()
    with _LOCK, torch_threads(threads), contextlib.redirect_stdout(_Tee(buffer, sys.stdout)):
        train_llava(args, attn_implementation=attn_implementation)
    return TrainOutput(output_dir, buffer.getvalue())


class _Tee(io.TextIOBase):
    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def build_tiny_llava_checkpoint(workdir: str | Path, *, stage1_epochs: float = 8, stage2_epochs: float = 8) -> Path:
    """Stage 1 + stage 2 of the tiny ReVision LLaVA; returns the stage-2 checkpoint directory.

    ``<workdir>/tiny-llava-revision`` (the name contains "llava", which LLaVA's loader needs).
    A finished checkpoint in ``workdir`` is reused; concurrent callers (pytest-xdist workers
    sharing ``workdir``) wait for the first one instead of training twice. The stage-1
    directory (``tiny-llava-revision-stage1``: ``mm_projector.bin``, evaluable with
    ``model_base`` = :attr:`TinyLlavaData.llm`) and both runs' stdout
    (``stage1_stdout.txt``, ``stage2_stdout.txt``) are kept next to it.
    """
    workdir = Path(workdir)
    checkpoint = workdir / CHECKPOINT_NAME
    workdir.mkdir(parents=True, exist_ok=True)
    with _file_lock(workdir / ".tiny-llava.lock"):
        if (checkpoint / ".complete").is_file():
            return checkpoint
        data = tiny_llava_data(workdir)
        stage1 = workdir / STAGE1_NAME
        out1 = run_llava_train(stage1_args(data, stage1, epochs=stage1_epochs))
        (workdir / "stage1_stdout.txt").write_text(out1.stdout)
        out2 = run_llava_train(stage2_args(data, checkpoint, stage1 / "mm_projector.bin", epochs=stage2_epochs))
        (workdir / "stage2_stdout.txt").write_text(out2.stdout)
        (checkpoint / ".complete").write_text("ok\n")
    return checkpoint


@contextlib.contextmanager
def _file_lock(path: Path):
    import fcntl

    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


file_lock = _file_lock  # for callers caching their own runs next to the tiny checkpoint


def tiny_llava_data(workdir: str | Path) -> TinyLlavaData:
    """The data/encoder/operator behind :func:`build_tiny_llava_checkpoint` (built once per workdir)."""
    root = Path(workdir) / "data"
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root.parent / ".tiny-llava-data.lock"):
        marker = root / "tiny_llava_data.json"
        if marker.is_file():
            raw = json.loads(marker.read_text())
            return TinyLlavaData(**{k: (v if k in ("encoder_id", "spec_cached", "spec_online") else Path(v))
                                    for k, v in raw.items()})
        return build_tiny_llava_data(root)


def pytest_shared_dir(tmp_path_factory, name: str = "revision-tiny-llava") -> Path:
    """A directory shared by every pytest-xdist worker of one test session (and private to
    that session), for :func:`build_tiny_llava_checkpoint` to train once per session."""
    import os

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    return base / name


__all__ = [
    "TinyLlavaData",
    "TrainOutput",
    "build_tiny_llama",
    "build_tiny_llava_checkpoint",
    "build_tiny_llava_data",
    "build_tiny_tokenizer",
    "draw_shape",
    "file_lock",
    "pytest_shared_dir",
    "run_llava_train",
    "stage1_args",
    "stage2_args",
    "tiny_llava_data",
]
