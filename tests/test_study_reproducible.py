"""The miniature study is a function of its settings and seed: two fresh processes (different
``PYTHONHASHSEED``, one torch thread each) write byte-identical worlds, tiny-CLIP tokenizers and
trained CLIP weights, and the same tiny-Llama tokenizer. The tiny CLIP's merges once came from
``tokenizers``' ``BpeTrainer``, which ranked tied merges differently on every call: every run
got its own vocabulary ids, hence its own weights and held-out recall@1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from revision_plugin.study import models
from revision_plugin.study.settings import ClipSettings

pytestmark = pytest.mark.usefixtures("one_thread")

# a caption vocabulary for the in-process checks (the subprocess test uses the world's own captions)
WORDS = sorted("a above an and background beige big black blue bottom box center circle diamond disc gray green in "
               "is large left little middle of on one orange picture purple red rhombus right shape shapes small "
               "square that the there three tiny to top triangle two white with yellow".split())

# a small world and a few CLIP steps, in a fresh interpreter: the world and tiny-CLIP steps of `revision demo`
_STEPS = """
import json, sys
from dataclasses import replace
from pathlib import Path
import torch
from revision_plugin.study import data, models
from revision_plugin.study.settings import WorldSettings, quick_settings

torch.set_num_threads(1)
out = Path(sys.argv[1])
s = quick_settings()
s = replace(s, world=WorldSettings(clip_pairs=64, clip_test=16, llm_text=8, stage1=8, operator_images=8, stage2=4,
                                   eval=4), clip=replace(s.clip, steps=4, batch_size=16))
files = data.build_world(out / "world", s)
def pairs(role):
    return [(files.images / r["image"], r["caption"]) for r in data.read_role(files, role)]
trained = models.train_clip(out / "clip", pairs("clip_train"), s.clip, s.seed, lambda it, desc: it)
metrics = models.clip_metrics(out / "clip", pairs("clip_test"))
(out / "clip" / "metrics.json").write_text(json.dumps({**trained, **metrics}, sort_keys=True))
corpus = models.llm_corpus(data.read_role(files, "llm_text"), s.seed)
models.build_llama_tokenizer(out / "llama_tokenizer", [t for t, _ in corpus], s.llm.vocab_size)
"""


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _different(a: Path, b: Path) -> list[str]:
    left, right = _files(a), _files(b)
    return sorted(name for name in left.keys() | right.keys() if left.get(name) != right.get(name))


def test_the_clip_merges_are_a_function_of_the_words_alone():
    merges = models.word_merges(WORDS)
    assert merges == models.word_merges(WORDS[::-1])  # not of their order
    assert merges[:3] == [("l", "e</w>"), ("t", "h"), ("a", "n")]  # most frequent pair first, ties by sort
    letters = set("abcdefghijklmnopqrstuvwxyz")
    made = letters | {c + "</w>" for c in letters}
    for a, b in merges:  # every merge joins tokens that exist before its rank (conflict-free)
        assert a in made and b in made, (a, b)
        made.add(a + b)
    assert {w + "</w>" for w in WORDS if len(w) > 1} <= made  # every word ends as one token


def test_building_the_tiny_clip_twice_gives_the_same_tokenizer_and_weights(tmp_path):
    s = ClipSettings(width=16, layers=1, heads=2, dim=8)
    texts = [" ".join(WORDS[i::3]) for i in range(3)]
    first = models.build_clip(tmp_path / "a", texts, s, seed=0)
    second = models.build_clip(tmp_path / "b", texts, s, seed=0)
    assert _different(first, second) == []
    vocab = json.loads((first / "tokenizer.json").read_text())["model"]["vocab"]
    assert all(w + "</w>" in vocab for w in WORDS)


def test_two_fresh_processes_write_the_same_world_and_train_the_same_clip(tmp_path):
    outputs = []
    for name, hash_seed in (("a", "1"), ("b", "2")):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-c", _STEPS, str(tmp_path / name)], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs.append(tmp_path / name)
    assert (outputs[0] / "world" / "images").is_dir() and (outputs[0] / "clip" / "model.safetensors").is_file()
    assert (outputs[0] / "llama_tokenizer" / "tokenizer.json").is_file()
    assert _different(*outputs) == []


def test_the_tiny_clip_reads_every_word_of_the_world_as_one_token(tmp_path):
    """What ``build_clip`` promises, on the study's own captions: <start> word <end> per word."""
    from dataclasses import replace

    from transformers import CLIPTokenizer

    from revision_plugin.study import data
    from revision_plugin.study.settings import WorldSettings, quick_settings

    s = replace(quick_settings(), world=WorldSettings(clip_pairs=64, clip_test=16, llm_text=8, stage1=8,
                                                      operator_images=8, stage2=4, eval=4))
    files = data.build_world(tmp_path / "world", s)
    captions = [r["caption"] for r in data.read_role(files, "clip_train")]
    words = models._words(captions)
    assert len(words) > 20
    tokenizer = CLIPTokenizer.from_pretrained(str(models.build_clip(tmp_path / "clip", captions, s.clip, seed=0)))
    assert {w: len(tokenizer(w)["input_ids"]) for w in words} == dict.fromkeys(words, 3)


class _Stop(Exception):
    """Ends a recorded study run at the step it was asked to stop at."""


class _KeyRecorder:
    """A study runner that records every step's fingerprint and runs nothing (stops at ``last``)."""

    def __init__(self, last: str) -> None:
        self.fingerprints: dict[str, str] = {}
        self.last = last

    def step(self, name, folder, key, fn):
        from revision_plugin.study.pipeline import StepResult, fingerprint

        self.fingerprints[name] = fingerprint(name, key)
        if name == self.last:
            raise _Stop
        return StepResult(name, Path(folder), self.fingerprints[name], {}, 0.0, True)


def test_another_thread_count_never_reuses_trained_models(tmp_path):
    """Trained weights depend on the thread count, so the models' cache keys (and so every later
    step's) include it; the world does not depend on it and is reused."""
    from dataclasses import replace

    from revision_plugin.study.settings import quick_settings
    from revision_plugin.study.study import run_seed

    runs = {}
    for threads in (1, 2):
        recorder = _KeyRecorder(last="revision fit")
        with pytest.raises(_Stop):
            run_seed(tmp_path, replace(quick_settings(), threads=threads), recorder)
        runs[threads] = recorder.fingerprints
    assert runs[1]["world"] == runs[2]["world"]
    for step in ("tiny CLIP", "tiny Llama", "revision embed", "revision fit"):
        assert runs[1][step] != runs[2][step], step
