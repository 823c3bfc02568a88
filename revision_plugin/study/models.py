"""The two tiny models, trained from scratch on CPU and saved with ``save_pretrained``.

* :func:`train_clip` - a transformers ``CLIPModel`` (so ``revision embed --encoder hf_clip``
  and the ``revision:`` tower read it) with a word-level CLIP BPE over the world's words,
  trained with CLIP's own symmetric InfoNCE loss and its learned temperature
  (``logit_scale``) on paired scenes; :func:`clip_metrics` measures held-out recall@1 and
  the modality gap through the same encoder class the pipeline uses.
* :func:`train_llm` - a ``LlamaForCausalLM`` + ``LlamaTokenizer`` (BPE trained on the
  world's language, Llama-3 chat tokens added) pretrained on captions and on
  caption-grounded questions/answers in LLaVA's ``llama_3`` conversation template, so
  stage 1 only has to teach the projector, as in the paper.
"""

from __future__ import annotations

import collections
import logging
import random
import re
from pathlib import Path

from revision_plugin.study import captions as lang
from revision_plugin.study.settings import ClipSettings, LlmSettings
from revision_plugin.study.world import COLOURS, SHAPES

logger = logging.getLogger(__name__)

LLAMA3_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


def _schedule(optimizer, steps: int):
    """Linear warm-up over 5% of the steps, then cosine decay to zero."""
    import math

    import torch

    warmup = max(1, steps // 20)
    def factor(i: int) -> float:
        return (i + 1) / warmup if i < warmup else 0.5 * (1 + math.cos(math.pi * (i - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _words(texts: list[str]) -> list[str]:
    return sorted({w for t in texts for w in re.findall(r"[a-z]+", t.lower())})


def word_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges over ``words`` in CLIP's ``</w>`` convention, until every word is one token.

    The most frequent adjacent pair is merged first, a tie going to the pair that sorts first,
    so the ranks (and with them the vocabulary ids) are a function of ``words`` alone.
    ``tokenizers``' ``BpeTrainer`` (with ``end_of_word_suffix``) was used here before: it learnt
    the same merges but ranked equally frequent ones differently on every call, even in one
    process with a fixed ``PYTHONHASHSEED`` (randomly seeded Rust hash maps), so two runs of one
    seed got different vocabulary ids, CLIP weights and held-out recall@1.
    """
    symbols = [[*word[:-1], word[-1] + "</w>"] for word in words]
    merges: list[tuple[str, str]] = []
    while True:
        counts = collections.Counter(pair for s in symbols for pair in zip(s, s[1:]))
        if not counts:
            return merges
        pair = min(counts, key=lambda p: (-counts[p], p))
        merges.append(pair)
        symbols = [_merge_pair(s, pair) for s in symbols]


def _merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def build_clip(directory: Path, texts: list[str], s: ClipSettings, seed: int) -> Path:
    """An untrained CLIPModel whose tokenizer has one token per word of ``texts``."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from revision_plugin.testing.tiny_clip import clip_bpe_vocab, clip_image_processor

    vocab, merges = clip_bpe_vocab(word_merges(_words(texts)))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=s.width, intermediate_size=2 * s.width,
                         num_hidden_layers=s.layers, num_attention_heads=s.heads, max_position_embeddings=77,
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=s.width, intermediate_size=2 * s.width, num_hidden_layers=s.layers,
                           num_attention_heads=s.heads, image_size=s.image_size, patch_size=s.patch_size),
        projection_dim=s.dim,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    clip_image_processor(s.image_size).save_pretrained(directory)
    return directory


def train_clip(directory: Path, pairs: list[tuple[Path, str]], s: ClipSettings, seed: int, progress) -> dict:
    """InfoNCE (CLIP's loss, learned temperature) on ``(image file, caption)`` pairs; saved in place."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    build_clip(directory, [c for _, c in pairs], s, seed)
    model = CLIPModel.from_pretrained(str(directory))
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    processor = AutoImageProcessor.from_pretrained(str(directory))
    pixels = processor(images=[Image.open(p).convert("RGB") for p, _ in pairs], return_tensors="pt")["pixel_values"]
    tokens = tokenizer([c for _, c in pairs], padding=True, truncation=True, return_tensors="pt")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.1)
    schedule = _schedule(optimizer, s.steps)
    model.train()
    losses = []
    for _ in progress(range(s.steps), desc="tiny CLIP (InfoNCE)"):
        idx = torch.randperm(len(pairs), generator=generator)[: s.batch_size]
        loss = model(input_ids=tokens["input_ids"][idx], attention_mask=tokens["attention_mask"][idx],
                     pixel_values=pixels[idx], return_loss=True).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)  # CLIP's cap: temperature >= 0.01
        losses.append(float(loss.detach()))
    model.eval().save_pretrained(str(directory))
    return {"loss_first": sum(losses[:10]) / 10, "loss_last": sum(losses[-10:]) / 10,
            "temperature": float(1 / model.logit_scale.detach().exp())}


def clip_metrics(directory: Path, pairs: list[tuple[Path, str]]) -> dict:
    """Held-out recall@1 (both directions) vs chance, and the paired modality gap, via ``hf_clip``."""
    import torch
    from PIL import Image

    from revision_plugin.encoders import load_encoder

    encoder = load_encoder("hf_clip", directory, offline=True)
    text = encoder.encode_texts([c for _, c in pairs]).double()
    image = encoder.encode_images([Image.open(p).convert("RGB") for p, _ in pairs]).double()
    sims = text @ image.T
    target = torch.arange(len(pairs))
    return {
        "held_out_pairs": len(pairs),
        "recall_at_1_text_to_image": float((sims.argmax(1) == target).double().mean()),
        "recall_at_1_image_to_text": float((sims.argmax(0) == target).double().mean()),
        "chance": 1.0 / len(pairs),
        "centroid_gap": float((text.mean(0) - image.mean(0)).norm()),
        "paired_cosine": float(sims.diag().mean()),
        "mean_text_text_cosine": float((text @ text.T).mean()),
        "mean_image_image_cosine": float((image @ image.T).mean()),
    }


# ----------------------------------------------------------------------------- the tiny Llama


def object_token(name: str) -> str:
    """The added token of one object name (``<red_circle>``): in the vocabulary, never fed since
    the soft vector is built from word embeddings (kept so the tokenizer stays as recorded)."""
    return "<" + name.replace(" ", "_") + ">"


def prefix_token_ids(tokenizer, names: list[str]):
    """``(objects, 2)`` ids of each object's colour and shape word, then the count word (row of 2 equal ids).

    The soft vector of a scene (:func:`soft_vector`) is built from these, in the LLM's own
    input-embedding space, so it is linear in the scene's colour/shape/count statistics -
    what a projector can read off an image embedding - rather than a bag of arbitrary ids.
    """
    import torch

    def word(w: str) -> int:  # the word as it appears inside a caption ("▁red")
        ids = tokenizer(" " + w, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ValueError(f"{w!r} is not one token of the tiny Llama's vocabulary: {ids}")
        return ids[0]

    rows = [[word(n.split()[0]), word(n.split()[1])] for n in names]
    count = word(lang.NUMBER_WORDS[len(names)])
    return torch.tensor(rows + [[count, count]])


def soft_vector(embed, ids):
    """mean over objects of (colour + shape word embedding) + the count word's embedding."""
    vectors = embed(ids)  # (objects + 1, 2, hidden)
    return vectors[:-1].sum(1).mean(0) + vectors[-1, 0]


def llm_corpus(records: list[dict], seed: int) -> list[tuple[str, list[str] | None]]:
    """Pretraining texts ``(text, prefix objects)``.

    Captions as stage 1 ends them and caption-grounded QA in ``llama_3``; plus the same with
    the ``<image>`` slot filled by a *soft vector* (:func:`soft_vector`: the mean over objects
    of the colour + shape word embeddings, plus the count word's, all in the LLM's own
    input-embedding space): the stand-in for what a real LLM brings to stage 1, the ability
    to be steered by one input vector. Stage 1 must then teach the projector to produce such
    vectors from the aligned embedding alone (LLaVA never feeds them).
    """
    from revision_plugin.hosts.llava import llama3_conversation

    rng = random.Random(seed)
    texts: list[tuple[str, list[str] | None]] = []

    def chat(user: str, answer: str) -> str:
        conv = llama3_conversation()
        conv.append_message(conv.roles[0], user)
        conv.append_message(conv.roles[1], answer)
        return conv.get_prompt()

    for r in records:
        scene = r["scene"]
        names = sorted(o.name for o in scene.objects)
        texts.append((r["caption"] + "\n", None))
        texts.append(("<image>" + r["caption"] + "\n", names))
        qa = lang.qa_pairs(scene, rng) + lang.mcq_pairs(scene, rng)
        for question, answer in rng.sample(qa, min(2, len(qa))):
            texts.append((chat(f"{r['caption']}\n{lang.with_suffix(question)}", answer), None))
        for question, answer in rng.sample(qa, min(2, len(qa))):
            texts.append((chat(f"<image>\n{lang.with_suffix(question)}", answer), names))
    return texts


def build_llama_tokenizer(directory: Path, corpus: list[str], vocab_size: int):
    from transformers import LlamaTokenizer

    from revision_plugin.testing.tiny_llama import LLAMA_SPECIALS, train_llama_bpe

    extra = ["abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()[]{}<>/\\-_+=*&^%$#@~`|"]
    texts = [re.sub(r"<\|[a-z_]+\|>|<image>", " ", t) for t in corpus] + extra
    vocab, merges = train_llama_bpe(texts, len(LLAMA_SPECIALS) + vocab_size)
    # add_prefix_space=False: like Llama-3's byte-level BPE, a segment tokenises the same alone as
    # inside a prompt, so LLaVA's per-segment llama_3 labels (stage 2) match the whole-prompt
    # tokenisation of pretraining and evaluation (with a Llama-2-style leading "▁" they did not:
    # "Yes<|eot_id|>" became "▁ Yes" in stage 2 but "Yes" at evaluation; stage-2 loss began at 5.6)
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges, legacy=False, add_bos_token=True,
                               add_eos_token=False, model_max_length=512, add_prefix_space=False)
    tokenizer.add_tokens(list(LLAMA3_TOKENS), special_tokens=True)
    tokenizer.add_tokens([object_token(f"{c} {sh}") for c in COLOURS for sh in SHAPES], special_tokens=True)
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def train_llm(directory: Path, records: list[dict], s: LlmSettings, seed: int, progress) -> dict:
    """Build and pretrain the tiny Llama on :func:`llm_corpus` of ``records``; saved to ``directory``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from revision_plugin.hosts.llava import token_constants
    from revision_plugin.hosts.llava.inference import tokenize_prompt

    corpus = llm_corpus(records, seed)
    tokenizer = build_llama_tokenizer(directory, [t for t, _ in corpus], s.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=s.hidden_size, intermediate_size=s.hidden_size * 3,
        num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.heads,
        max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # tokenised as LLaVA tokenises (tokenizer_image_token: the <image> slot becomes IMAGE_TOKEN_INDEX)
    image_slot = token_constants().image_token_index
    encoded = [(torch.tensor(tokenize_prompt(t, tokenizer) if names else tokenizer(t).input_ids),
                prefix_token_ids(tokenizer, names) if names else None)
               for t, names in corpus]
    pad = tokenizer.unk_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.0)
    schedule = _schedule(optimizer, s.steps)
    rng = random.Random(seed)
    embed = model.get_input_embeddings()
    model.train()
    losses = []
    for _ in progress(range(s.steps), desc="tiny Llama (LM)"):
        batch = rng.sample(encoded, min(s.batch_size, len(encoded)))
        length = max(len(x) for x, _ in batch)
        ids = torch.full((len(batch), length), pad)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for i, (x, _) in enumerate(batch):
            ids[i, : len(x)], mask[i, : len(x)] = x, 1
        slots = ids == image_slot
        inputs = embed(ids.masked_fill(slots, pad))
        rows = [i for i, (_, objs) in enumerate(batch) if objs is not None]
        if rows:
            prefix = torch.stack([soft_vector(embed, batch[i][1]) for i in rows])
            inputs = inputs.clone()
            inputs[torch.tensor(rows), slots[rows].float().argmax(1)] = prefix
        labels = ids.masked_fill((mask == 0) | slots, -100)
        loss = model(inputs_embeds=inputs, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    # as Llama-3-Instruct's generation_config: a chat turn ends at <|eot_id|>
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|eot_id|>")]
    model.generation_config.pad_token_id = pad
    model.eval().save_pretrained(str(directory))
    return {"corpus_texts": len(corpus), "loss_first": sum(losses[:10]) / 10, "loss_last": sum(losses[-10:]) / 10,
            "parameters": sum(p.numel() for p in model.parameters())}


def probe_llm(directory: Path, records: list[dict], seed: int) -> dict:
    """What the pretrained tiny Llama can read from its input, before any projector exists.

    On held-out scenes: caption attribute recall with the scene's own soft vector (the input
    it was pretrained to read) in the ``<image>`` slot, and with the mean soft vector of all
    scenes (no scene information); POPE-style existence yes/no accuracy (chance 0.5) with the
    scene's caption written in the prompt, and with its soft vector in the slot. Read beside
    the tables: a question the LLM cannot answer even from the caption text cannot separate
    the alignment methods (stage 1 may still find vectors it reads better than the soft one).
    """
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from revision_plugin.hosts.llava import llama3_conversation, token_constants
    from revision_plugin.hosts.llava.inference import tokenize_prompt

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    model = LlamaForCausalLM.from_pretrained(str(directory)).eval()
    embed = model.get_input_embeddings()
    rng = random.Random(f"{seed}-probe")
    vectors = [soft_vector(embed, prefix_token_ids(tokenizer, sorted(r["scene"].names()))) for r in records]
    mean_vector = torch.stack(vectors).mean(0)

    @torch.no_grad()
    def answer(prompt: str, vector, max_new_tokens: int) -> str:
        ids = torch.tensor(tokenize_prompt(prompt, tokenizer) if "<image>" in prompt else tokenizer(prompt).input_ids)
        slots = ids == token_constants().image_token_index
        inputs = embed(ids.masked_fill(slots, tokenizer.unk_token_id)).clone()
        if slots.any():
            inputs[slots] = vector
        out = model.generate(inputs_embeds=inputs[None], attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False)
        return tokenizer.decode(out[0], skip_special_tokens=True).strip()

    def chat(user: str) -> str:
        conv = llama3_conversation()
        conv.append_message(conv.roles[0], user)
        conv.append_message(conv.roles[1], None)
        return conv.get_prompt()

    def recall(text: str, names: set[str]) -> float:
        return len(names & lang.mentioned_objects(text.split(".")[0])) / len(names)

    sums = dict.fromkeys(("caption_from_scene_vector", "caption_from_mean_vector", "existence_from_caption_text",
                          "existence_from_scene_vector"), 0.0)
    questions = 0
    for record, vector in zip(records, vectors, strict=True):
        names = set(record["scene"].names())
        sums["caption_from_scene_vector"] += recall(answer("<image>", vector, 40), names)
        sums["caption_from_mean_vector"] += recall(answer("<image>", mean_vector, 40), names)
        absent = lang.absent_objects(record["scene"], rng, 1)[0]
        for name, truth in ((rng.choice(sorted(names)), "yes"), (absent, "no")):
            question = lang.with_suffix(f"Is there {lang.article(name)} {name} in the image?")
            questions += 1
            sums["existence_from_caption_text"] += answer(chat(f"{record['caption']}\n{question}"), None, 3).lower().startswith(truth)
            sums["existence_from_scene_vector"] += answer(chat(f"<image>\n{question}"), vector, 3).lower().startswith(truth)
    n = len(records)
    return {"scenes": n, **{k: round(v / (n if k.startswith("caption") else questions), 4) for k, v in sums.items()}}
