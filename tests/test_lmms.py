"""The lmms-eval model registration (entry point -> lmms-eval's model list) and the parts of
``revision_llava`` that need no checkpoint. The end-to-end run is in test_lmms_e2e.py."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from revision_plugin.errors import BadInputError, RevisionError


def test_entry_point_is_declared_and_resolves():
    eps = [ep for ep in importlib.metadata.entry_points(group="lmms_eval.models") if ep.name == "revision_llava"]
    assert len(eps) == 1 and eps[0].value == "revision_plugin.lmms_manifest:manifest"
    from lmms_eval.models.registry_v2 import ModelManifest

    manifest = eps[0].load()()
    assert isinstance(manifest, ModelManifest)
    assert manifest.model_id == "revision_llava"
    assert manifest.simple_class_path == "revision_plugin.lmms.model.RevisionLlava" and manifest.chat_class_path is None


def test_lmms_eval_lists_and_resolves_the_model_in_a_fresh_process():
    # lmms-eval reads entry points while `lmms_eval.models` is imported and only logs a warning
    # when one fails, so check a fresh interpreter: listed, no warning, class importable.
    code = (
        "import lmms_eval.models as m\n"
        "assert 'revision_llava' in m.list_available_models(), m.list_available_models()\n"
        "assert 'revision' in m.list_available_models(include_aliases=True)\n"
        "cls = m.get_model('revision_llava')\n"
        "print('RESOLVED', cls.__module__, cls.__name__, cls.is_simple)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "RESOLVED revision_plugin.lmms.model RevisionLlava True" in output
    assert "Failed to load model entry-point" not in output


def test_manifest_module_is_import_light():
    code = ("import sys, revision_plugin.lmms_manifest as m; m.manifest.__doc__\n"
            "heavy = [k for k in ('torch', 'lmms_eval', 'llava', 'transformers', 'numpy') if k in sys.modules]\n"
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr


def test_model_class_is_a_simple_lmms():
    from lmms_eval.api.model import lmms

    from revision_plugin.lmms import RevisionLlava

    assert issubclass(RevisionLlava, lmms) and RevisionLlava.is_simple


# ------------------------------------------------------------------ start-up checks (no checkpoint needed)


def test_checkpoint_path_is_checked_at_start_up(tmp_path, monkeypatch):
    from revision_plugin.lmms import RevisionLlava, resolve_checkpoint

    monkeypatch.delenv("REVISION_CKPT_DIR", raising=False)
    with pytest.raises(BadInputError, match=r"\$REVISION_CKPT_DIR not set"):
        resolve_checkpoint("${REVISION_CKPT_DIR}/realign")
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        resolve_checkpoint(tmp_path / "missing")
    with pytest.raises(BadInputError, match="pretrained= is required"):
        resolve_checkpoint(None)
    (tmp_path / "realign").mkdir()
    monkeypatch.setenv("REVISION_CKPT_DIR", str(tmp_path))
    assert resolve_checkpoint("${REVISION_CKPT_DIR}/realign") == tmp_path / "realign"
    assert resolve_checkpoint("$REVISION_CKPT_DIR/realign") == tmp_path / "realign"
    # unknown model_args are refused before anything is loaded (never silently ignored)
    with pytest.raises(BadInputError, match=r"unknown model_args \['temprature'\]"):
        RevisionLlava(pretrained=str(tmp_path / "realign"), temprature=0)
    with pytest.raises(BadInputError, match="batch_size"):
        RevisionLlava(pretrained=str(tmp_path / "realign"), batch_size="auto")
    with pytest.raises(BadInputError, match="empty_answers"):
        RevisionLlava(pretrained=str(tmp_path / "realign"), empty_answers="ignore")
    with pytest.raises(FileNotFoundError):
        RevisionLlava(pretrained=str(tmp_path / "nope"))


def test_an_incomplete_or_projector_only_checkpoint_is_named_before_loading(tmp_path):
    pytest.importorskip("llava")
    from revision_plugin.lmms import RevisionLlava

    checkpoint = tmp_path / "llava-stage1"
    checkpoint.mkdir()
    (checkpoint / "mm_projector.bin").write_bytes(b"")
    with pytest.raises(BadInputError, match="no config.json, so not a complete saved checkpoint"):
        RevisionLlava(pretrained=str(checkpoint))
    (checkpoint / "config.json").write_text("{}")
    with pytest.raises(BadInputError, match=r"holds no LLM weights \(a projector-only \(stage 1\) checkpoint\): "
                                            "pass model_base="):
        RevisionLlava(pretrained=str(checkpoint))


def test_a_folder_that_is_not_a_llava_checkpoint_is_named_before_loading(tmp_path):
    """`pretrained=` pointing at the base LLM (or the encoder) instead of the trained LLaVA folder:
    one line naming it, not LLaVA's `'NoneType' object has no attribute 'is_loaded'`."""
    pytest.importorskip("llava")
    import json

    from revision_plugin.lmms import RevisionLlava

    llm = tmp_path / "vicuna-7b"
    llm.mkdir()
    (llm / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    (llm / "model.safetensors").write_bytes(b"")
    with pytest.raises(BadInputError, match=r"pretrained=.*vicuna-7b: its config.json \(model_type 'llama'\) has no "
                                            r"mm_vision_tower, so it is not a LLaVA checkpoint"):
        RevisionLlava(pretrained=str(llm), device="cpu")


def test_conv_template_must_exist(tmp_path):
    pytest.importorskip("llava")
    from revision_plugin.lmms import RevisionLlava

    (tmp_path / "ckpt").mkdir()
    with pytest.raises(BadInputError, match="conv_template='vicuna_v9' is not one of LLaVA's templates"):
        RevisionLlava(pretrained=str(tmp_path / "ckpt"), conv_template="vicuna_v9")


def test_conv_template_choice():
    from revision_plugin.lmms import choose_conv_template

    known = {"vicuna_v1": 1, "llama_3": 2}
    assert choose_conv_template(None, "llama_3", known) == ("llama_3", [])
    assert choose_conv_template("llama_3", "llama_3", known) == ("llama_3", [])
    used, notes = choose_conv_template("vicuna_v1", "llama_3", known)
    assert used == "vicuna_v1" and "overrides" in notes[0]
    used, notes = choose_conv_template(None, None, known)
    assert used == "vicuna_v1" and "revision_conv_template" in notes[0]
    with pytest.raises(BadInputError, match="the checkpoint's revision_conv_template='chatml'"):
        choose_conv_template(None, "chatml", known)


def test_llama3_template_is_accepted_before_loading(tmp_path):
    """llama_3 is added by register(); the model registers before checking the name."""
    pytest.importorskip("llava")
    from revision_plugin.hosts.llava import register
    from revision_plugin.lmms import RevisionLlava

    undo = register()
    undo()  # as in a fresh lmms-eval process: llama_3 not in LLaVA's table yet
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(Exception) as info:  # gets past the template check, fails loading the empty folder
        RevisionLlava(pretrained=str(tmp_path / "ckpt"), conv_template="llama_3")
    assert "conv_template" not in str(info.value)


def test_device_dtype_and_generation_settings():
    import torch

    from revision_plugin.lmms import (
        RevisionLlava,
        cut_at_stop,
        resolve_device,
        resolve_dtype,
    )

    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("auto", "cuda") == torch.float16
    assert resolve_dtype("bf16", "cuda") == torch.bfloat16
    with pytest.raises(BadInputError, match="dtype='int8'"):
        resolve_dtype("int8", "cpu")
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device(None) == "cpu"
        with pytest.raises(RevisionError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(BadInputError, match="unknown device"):
        resolve_device("gpu0")
    assert cut_at_stop("Yes.\nUSER: more", ["\nUSER:", "</s>"]) == "Yes."

    model = object.__new__(RevisionLlava)  # settings only; nothing loaded
    model.max_new_tokens_cap, model.use_cache, model._warned_gen_kwargs = 8, True, set()
    until, settings = model._gen_settings({"until": "\n\n", "max_new_tokens": 128, "temperature": 0, "top_p": 1.0,
                                           "num_beams": 1, "do_sample": False, "image_aspect_ratio": "pad"})
    assert until == ["\n\n"]
    assert settings == {"max_new_tokens": 8, "do_sample": False, "num_beams": 1, "use_cache": True}
    _, sampled = model._gen_settings({"temperature": 0.7, "top_p": 0.9, "do_sample": True})
    assert sampled["do_sample"] and sampled["temperature"] == 0.7 and sampled["top_p"] == 0.9
    with pytest.raises(BadInputError, match="until"):
        model._gen_settings({"until": 5})


def test_docs_name_the_model_and_tasks():
    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "eval.md").read_text()
    for needle in ("revision_llava", "revision compare", "revision_suite", "--include_path eval/tasks"):
        assert needle in text


def test_offline_names_a_pinned_snapshot_the_task_module_would_not_read(monkeypatch):
    """A pinned dataset whose lmms-eval module reads `main` at import: the error says which
    snapshot it would read (not just the exception's type)."""
    from revision_plugin.lmms import datasets as suite_data

    pinned = suite_data.Dataset("VisuLogic/VisuLogic", revision="a" * 40, import_time_main=True)
    monkeypatch.setitem(suite_data.DATASETS, "visulogic", pinned)
    monkeypatch.setattr(suite_data, "_snapshot_download",
                        lambda repo_id, revision, local_only: Path("/hub/snapshots") / (revision or "b" * 40))
    with pytest.raises(RevisionError, match=r"visulogic: VisuLogic/VisuLogic: lmms-eval's visulogic module reads "
                                            r"the cached main snapshot b{40}, not the pinned a{40}"):
        suite_data.offline_snapshots(["visulogic"])
