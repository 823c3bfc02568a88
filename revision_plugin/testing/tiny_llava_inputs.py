"""The data behind the tiny LLaVA (:func:`build_tiny_llava_data`): coloured-shape PNGs,
captions, a briefly trained tiny CLIP, a text feature store, an operator fitted on
unpaired text/image embeddings, stage-1 (pseudo text), paired baseline and stage-2 (image
instruction) json files, and tower specs. :func:`tiny_llava_data` builds it once per
working directory."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from revision_plugin.testing.common import file_lock, torch_threads
from revision_plugin.testing.shapes import COLOURS, QUESTIONS, SHAPES, answer_for, caption_for, draw_shape
from revision_plugin.testing.tiny_llama import build_tiny_llama

logger = logging.getLogger(__name__)


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
              for _ in range(repeats) for cid, cap in zip(caption_ids, captions, strict=True)]
    stage1_online = [{"id": cid, "text": cap, "conversations": plain("<image>\n", cap)}
                     for _ in range(repeats) for cid, cap in zip(caption_ids, captions, strict=True)]
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


def tiny_llava_data(workdir: str | Path) -> TinyLlavaData:
    """The data/encoder/operator behind ``tiny_llava.build_tiny_llava_checkpoint`` (built once per workdir)."""
    root = Path(workdir) / "data"
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root.parent / ".tiny-llava-data.lock"):
        marker = root / "tiny_llava_data.json"
        if marker.is_file():
            raw = json.loads(marker.read_text())
            return TinyLlavaData(**{k: (v if k in ("encoder_id", "spec_cached", "spec_online") else Path(v))
                                    for k, v in raw.items()})
        return build_tiny_llava_data(root)
