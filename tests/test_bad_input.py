"""Issue 13: every subcommand fed bad input ends in one line naming what is wrong (exit 2),
never a traceback, and leaves every file it was given or pointed at untouched.

One table (``CASES``) of ``(id, build, expected)``: ``build(tmp_path)`` writes the inputs and
returns the argv; ``expected`` must appear in the single ``error:`` line (argparse refusals,
which happen before any work, print ``usage:`` + one ``error:`` line).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from revision_plugin.align import fit_operator
from revision_plugin.cli import main
from revision_plugin.store import write_store
from revision_plugin.testing.common import torch_threads


def unit(n: int, d: int = 6, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def npys(tmp: Path, text=None, image=None) -> tuple[str, str]:
    np.save(tmp / "t.npy", unit(40) if text is None else text)
    np.save(tmp / "i.npy", unit(40, seed=1) + 0.0 if image is None else image)
    return str(tmp / "t.npy"), str(tmp / "i.npy")


def fit_args(tmp: Path, *extra: str, method: str = "realign", out: str | None = None, **arrays) -> list[str]:
    t, i = npys(tmp, **arrays)
    return ["fit", "--method", method, "--text", t, "--image", i, "--out", out or str(tmp / "op"), "--no-progress", *extra]


def operator_dir(tmp: Path, method: str = "realign", edit_json=None, edit_tensors=None, **options) -> Path:
    text, image = unit(40), unit(40, seed=1)
    op = tmp / "op"
    fit_operator(method, text, image, **options).save(op)
    if edit_json:
        meta = json.loads((op / "operator.json").read_text())
        edit_json(meta)
        (op / "operator.json").write_text(json.dumps(meta))
    if edit_tensors:
        tensors = load_file(str(op / "operator.safetensors"))
        edit_tensors(tensors)
        save_file(tensors, str(op / "operator.safetensors"))
    np.save(tmp / "in.npy", text)
    return op


def align_args(tmp: Path, *extra: str, **kw) -> list[str]:
    op = operator_dir(tmp, **kw)
    return ["align", "--operator", str(op), "--in", str(tmp / "in.npy"), "--out", str(tmp / "out.npy"), "--no-progress", *extra]


def store(tmp: Path, edit=None, n: int = 20) -> str:
    path = tmp / "store"
    write_store(path, [f"id{k}" for k in range(n)], unit(n), "enc", shard_rows=8, fsync=False)
    if edit:
        manifest = json.loads((path / "manifest.json").read_text())
        edit(manifest, path)
        (path / "manifest.json").write_text(json.dumps(manifest))
    return str(path)


def fit_on_store(tmp: Path, edit) -> list[str]:
    s = store(tmp, edit)
    np.save(tmp / "i.npy", unit(20, seed=1))
    return ["fit", "--method", "identity", "--text", s, "--image", str(tmp / "i.npy"), "--out", str(tmp / "op"), "--no-progress"]


def swap_files_on_disk(tmp: Path) -> list[str]:
    s = Path(store(tmp))
    a, b = s / "shards/r00000-000000.npy", s / "shards/r00000-000001.npy"
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    return ["store", "verify", str(s)]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def embed_images(tmp: Path, image: str, *extra: str) -> list[str]:
    root = tmp / "root"
    root.mkdir()
    write_jsonl(tmp / "images.jsonl", [{"id": "a", "image": image}])
    return ["embed", "--encoder", "hf_clip", "--model", str(tmp / "nomodel"), "--images", str(tmp / "images.jsonl"),
            "--image-root", str(root), "--out", str(tmp / "emb"), "--no-progress", *extra]


def symlink_out(tmp: Path) -> list[str]:
    argv = embed_images(tmp, "link.png")
    (tmp / "outside.png").write_bytes(b"not read")
    os.symlink(tmp / "outside.png", tmp / "root" / "link.png")
    return argv


def llm2clip_remote(tmp: Path) -> list[str]:
    model = tmp / "remote-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "modeling_evil.Model"}}))
    (tmp / "a.png").write_bytes(b"")
    write_jsonl(tmp / "images.jsonl", [{"id": "a", "image": "a.png"}])
    return ["embed", "--encoder", "llm2clip", "--model", str(model), "--images", str(tmp / "images.jsonl"),
            "--out", str(tmp / "emb"), "--offline", "--no-progress"]


def report_args(tmp: Path, *extra: str) -> list[str]:
    t, i = npys(tmp)
    return ["report", "--text", t, "--image", i, "--out", str(tmp / "rep"), "--no-plots", "--no-sample-complexity", *extra]


def existing_report(tmp: Path) -> list[str]:
    (tmp / "rep").mkdir()
    (tmp / "rep" / "report.json").write_text('{"earlier": true}')
    return report_args(tmp)


LLAVA_RECORD = {"id": "r1", "conversations": [{"from": "human", "value": "<image>\nsay"}, {"from": "gpt", "value": "a cat"}]}


def llava(tmp: Path, records=None, out_json: str = "s1.json", out_texts: str = "caps.jsonl", raw: str | None = None,
          *extra: str) -> list[str]:
    source = tmp / "llava.json"
    source.write_text(raw if raw is not None else json.dumps([LLAVA_RECORD] if records is None else records))
    return ["llava-data", "--input", str(source), "--out-json", str(tmp / out_json), "--out-texts", str(tmp / out_texts), *extra]


def set_key(key, value):
    def edit(meta):
        meta[key] = value
    return edit


def set_tensor(name, value):
    def edit(tensors):
        tensors[name] = value(tensors[name])
    return edit


def manifest_edit(fn):
    def edit(manifest, path):
        fn(manifest)
    return edit


# --- resumed embed (class 5): a store made by a first, successful run, then something changed
_MODELS: dict[int, Path] = {}


def tiny_clip(seed: int = 0) -> Path:
    """A tiny CLIP saved once per seed, every one in a directory called ``tiny-clip``."""
    if seed not in _MODELS:
        import tempfile

        from revision_plugin.testing.tiny_clip import build_tiny_clip

        _MODELS[seed] = build_tiny_clip(Path(tempfile.mkdtemp(prefix=f"bad-input-clip{seed}-")) / "tiny-clip", seed=seed)
    return _MODELS[seed]


def embedded(tmp: Path, *, images: bool = False, model: int = 0) -> list[str]:
    """argv of a `revision embed` that has already run once, successfully, into tmp/emb."""
    if images:
        (tmp / "img").mkdir()
        for i in range(3):
            Image.new("RGB", (32, 32), (60 * i, 5, 5)).save(tmp / "img" / f"{i}.png")
        write_jsonl(tmp / "in.jsonl", [{"id": f"i{i}", "image": f"img/{i}.png"} for i in range(3)])
        kind = "--images"
    else:
        write_jsonl(tmp / "in.jsonl", [{"id": f"t{i}", "text": f"a red cat {i}"} for i in range(3)])
        kind = "--texts"
    argv = ["embed", "--encoder", "hf_clip", "--model", str(tiny_clip(model)), kind, str(tmp / "in.jsonl"),
            "--out", str(tmp / "emb"), "--no-progress"]
    with torch_threads(1):
        assert main(argv) == 0
    return argv


def caption_edited(tmp: Path) -> list[str]:
    argv = embedded(tmp)
    write_jsonl(tmp / "in.jsonl", [{"id": f"t{i}", "text": "edited" if i == 1 else f"a red cat {i}"} for i in range(3)])
    return argv


def image_replaced(tmp: Path) -> list[str]:
    argv = embedded(tmp, images=True)
    Image.new("RGB", (32, 32), (0, 250, 0)).save(tmp / "img" / "2.png")
    return argv


def image_gone(tmp: Path) -> list[str]:
    argv = embedded(tmp, images=True)
    (tmp / "img" / "0.png").unlink()
    return argv


def other_model(tmp: Path, *extra: str) -> list[str]:
    argv = embedded(tmp)
    argv[argv.index("--model") + 1] = str(tiny_clip(1))
    return [*argv, *extra]


def legacy_store(tmp: Path, *extra: str, ids=("t0", "t1")) -> list[str]:
    """A store as an older revision_plugin wrote it: no content hashes, no encoder fingerprint."""
    from revision_plugin.encoders import load_encoder

    encoder = load_encoder("hf_clip", tiny_clip(0))
    write_store(tmp / "emb" / "text", list(ids), unit(len(ids), d=encoder.dim), encoder.encoder_id, modality="text",
                fsync=False)
    write_jsonl(tmp / "in.jsonl", [{"id": f"t{i}", "text": f"a red cat {i}"} for i in range(3)])
    return ["embed", "--encoder", "hf_clip", "--model", str(tiny_clip(0)), "--texts", str(tmp / "in.jsonl"),
            "--out", str(tmp / "emb"), "--no-progress", *extra]


def swapped_then_fit(tmp: Path) -> list[str]:
    swap_files_on_disk(tmp)
    np.save(tmp / "i.npy", unit(20, seed=1))
    return ["fit", "--method", "identity", "--text", str(tmp / "store"), "--image", str(tmp / "i.npy"),
            "--out", str(tmp / "op"), "--no-progress"]


# --- compare (class 9): a results file with one metric present but unusable
def results(tmp: Path, task: str, metrics: dict, raw: str | None = None) -> list[str]:
    folder = tmp / "run" / "ckpt"
    folder.mkdir(parents=True)
    payload = {"results": {task: {"alias": task, **metrics}}, "n-samples": {task: {"original": 10, "effective": 10}},
               "config": {"model": "revision_llava", "model_args": "pretrained=ckpt", "limit": None},
               "date": "20260101_120000"}
    (folder / "20260101_120000_results.json").write_text(raw if raw is not None else json.dumps(payload))
    return ["compare", str(tmp / "run"), "--out", str(tmp / "table.md")]


CASES = [
    # --- fit: options (class 1 + 3)
    ("fit-fractional-iters", lambda t: fit_args(t, "-o", "centroid_iters=2.5"), "centroid_iters must be an integer in [0, 64], got 2.5"),
    ("fit-huge-iters", lambda t: fit_args(t, "-o", "centroid_iters=1000000000"), "centroid_iters must be an integer in [0, 64]"),
    ("fit-bool-iters", lambda t: fit_args(t, "-o", "centroid_iters=true"), "centroid_iters must be an integer"),
    ("fit-negative-eps", lambda t: fit_args(t, "-o", "eps=-1"), "option eps must be a number in [0.0, 0.001]"),
    ("fit-nan-eps", lambda t: fit_args(t, "-o", "eps=NaN"), "option eps must be a number"),
    ("fit-unknown-option", lambda t: fit_args(t, "-o", "centroid_iter=2"), "unknown options ['centroid_iter']"),
    ("fit-option-not-kv", lambda t: fit_args(t, "-o", "centroid_iters"), "expected KEY=VALUE"),
    ("fit-option-twice", lambda t: fit_args(t, "-o", "centroid_iters=1", "-o", "centroid_iters=2"), "given more than once"),
    ("fit-c3-string-noise", lambda t: fit_args(t, "-o", "noise_variance=loud", method="c3"), "noise_variance must be a number"),
    ("fit-c3-fractional-seed", lambda t: fit_args(t, "-o", "seed=1.5", method="c3"), "seed must be an integer"),
    ("fit-meanshift-int-bool", lambda t: fit_args(t, "-o", "renormalize=1", method="mean_shift"), "renormalize must be true or false"),
    ("fit-blockwise-energy", lambda t: fit_args(t, "-o", "energy=0", method="blockwise"), "energy must be a number in (0.0, 1.0]"),
    ("fit-blockwise-shrinkage", lambda t: fit_args(t, "-o", "shrinkage=2", method="blockwise"), "shrinkage must be a number in [0.0, 1.0]"),
    ("fit-chunk-rows-zero", lambda t: fit_args(t, "--chunk-rows", "0"), "expected an integer ≥ 1, got 0"),
    ("fit-chunk-rows-text", lambda t: fit_args(t, "--chunk-rows", "many"), "expected an integer ≥ 1, got 'many'"),
    # --- fit: degenerate statistics (class 3)
    ("fit-one-text-row", lambda t: fit_args(t, text=unit(1)), "1 usable row(s); ReAlign's trace scale (eq. 21) needs at least 2"),
    ("fit-one-image-row", lambda t: fit_args(t, image=unit(1)), "needs at least 2"),
    ("fit-identical-text", lambda t: fit_args(t, text=np.repeat(unit(1), 30, 0)), "the embeddings have no spread"),
    ("fit-identical-image", lambda t: fit_args(t, image=np.repeat(unit(1), 30, 0)), "no spread"),
    ("fit-blockwise-one-row", lambda t: fit_args(t, method="blockwise", text=unit(1)), "needs at least 2"),
    # --- fit: outputs (class 8)
    ("fit-out-is-file", lambda t: fit_args(t, out=str(t / "t.npy")), "exists and is not a directory"),
    ("fit-out-under-file", lambda t: fit_args(t, out=str(t / "t.npy" / "op")), "is not a directory"),
    # --- fit on damaged stores (class 2)
    ("store-manifest-garbage", lambda t: fit_on_store(t, None) and _garbage_manifest(t), "unreadable manifest"),
    ("store-gap", lambda t: fit_on_store(t, manifest_edit(lambda m: m["shards"][1].update(first_row=9))), "rows overlap or leave a gap"),
    ("store-overlap", lambda t: fit_on_store(t, manifest_edit(lambda m: m["shards"][1].update(first_row=4))), "rows overlap or leave a gap"),
    ("store-swapped-entries", lambda t: fit_on_store(t, manifest_edit(_swap_entries)), "out of commit order"),
    ("store-file-twice", lambda t: fit_on_store(t, manifest_edit(lambda m: m["shards"][1].update(file=m["shards"][0]["file"]))),
     "listed twice"),
    ("store-file-escapes", lambda t: fit_on_store(t, manifest_edit(lambda m: m["shards"][0].update(file="shards/../../t.npy"))),
     "inside the store"),
    ("store-count-string", lambda t: fit_on_store(t, manifest_edit(lambda m: m.update(count="20"))), "'count' must be a non-negative integer"),
    ("store-count-wrong", lambda t: fit_on_store(t, manifest_edit(lambda m: m.update(count=25))), "shards hold 20 rows, but 'count' says 25"),
    ("store-dim-bool", lambda t: fit_on_store(t, manifest_edit(lambda m: m.update(dim=True))), "'dim' must be a positive integer"),
    ("store-shards-not-list", lambda t: fit_on_store(t, manifest_edit(lambda m: m.update(shards={}))), "'shards' must be a list"),
    ("store-index-path", lambda t: fit_on_store(t, manifest_edit(lambda m: m.update(index="../elsewhere"))), "'index' must be"),
    ("store-bad-sha", lambda t: fit_on_store(t, manifest_edit(lambda m: m["shards"][0].update(sha256=5))), "not a sha256 hex digest"),
    # --- align: operator artifacts (class 2)
    ("op-nan-buffer", lambda t: align_args(t, edit_tensors=set_tensor("mu_text", lambda x: x * float("nan"))), "'mu_text' has NaN or Inf"),
    ("op-inf-buffer", lambda t: align_args(t, edit_tensors=set_tensor("scale", lambda x: x * float("inf"))), "'scale' has NaN or Inf"),
    ("op-zero-scale", lambda t: align_args(t, edit_tensors=set_tensor("scale", lambda x: x * 0)), "'scale' is 0.0, must be > 0"),
    ("op-wrong-rank", lambda t: align_args(t, edit_tensors=set_tensor("mu_text", lambda x: x[None])), "has shape (1, 6), expected (6,)"),
    ("op-drifts-vs-iters", lambda t: align_args(t, edit_json=set_key("options", {"centroid_iters": 3, "eps": 1e-8})),
     "'drifts' has shape (1, 6), expected (3, 6)"),
    ("op-norm-above-one", lambda t: align_args(t, edit_tensors=set_tensor("mu_image", lambda x: x * 50)), "norm > 1"),
    ("op-blockwise-zero-matrix", lambda t: align_args(t, method="blockwise", edit_tensors=set_tensor("matrix", lambda x: x * 0)),
     "'matrix' is all zeros"),
    ("op-dim-string", lambda t: align_args(t, edit_json=set_key("dim", "6")), "field 'dim' must be a positive integer, got '6'"),
    ("op-counts-list", lambda t: align_args(t, edit_json=set_key("counts", [1, 2])), "field 'counts' must be an object"),
    ("op-counts-negative", lambda t: align_args(t, edit_json=set_key("counts", {"text": -1})), "counts['text'] must be a non-negative"),
    ("op-options-list", lambda t: align_args(t, edit_json=set_key("options", [])), "field 'options' must be an object"),
    ("op-option-fractional", lambda t: align_args(t, edit_json=set_key("options", {"centroid_iters": 1.5})), "centroid_iters must be an integer"),
    ("op-encoder-id-int", lambda t: align_args(t, edit_json=set_key("encoder_id", 7)), "field 'encoder_id' must be a string or null"),
    ("op-format-version-string", lambda t: align_args(t, edit_json=set_key("format_version", "1")), "field 'format_version' must be an integer"),
    ("op-json-array", lambda t: after(align_args(t), t / "op" / "operator.json", "[1, 2]"), "expected a JSON object, got list"),
    ("op-json-binary", lambda t: after(align_args(t), t / "op" / "operator.json", b"\xff\xfe{"), "not a UTF-8 JSON file"),
    ("op-weights-garbage", lambda t: after(align_args(t), t / "op" / "operator.safetensors", b"garbage!"), "not a readable safetensors file"),
    ("op-c3-negative-noise", lambda t: align_args(t, method="c3", edit_json=set_key("options", {"noise_variance": -1.0})),
     "noise_variance must be a number in [0.0, 100.0]"),
    ("align-chunk-rows-negative", lambda t: align_args(t, "--chunk-rows", "-5"), "expected an integer ≥ 1, got -5"),
    ("align-out-is-in", lambda t: [*align_args(t)[:4], str(t / "in.npy"), "--out", str(t / "in.npy"), "--overwrite"],
     "is the --in file"),
    ("align-out-under-file", lambda t: [*align_args(t)[:6], str(t / "in.npy" / "x.npy")], "is not a directory"),
    ("align-mean-shift-nan-output", lambda t: _mean_shift_on_own_mean(t), "produced NaN/Inf for row 0"),
    # --- embed (classes 1, 6, 7, 8): refused before any model is loaded
    ("embed-batch-zero", lambda t: embed_images(t, "a.png", "--batch-size", "0"), "expected an integer ≥ 1, got 0"),
    ("embed-shard-rows-text", lambda t: embed_images(t, "a.png", "--shard-rows", "x"), "expected an integer ≥ 1"),
    ("embed-dotdot", lambda t: embed_images(t, "../outside.png"), "contains '..'"),
    ("embed-absolute", lambda t: embed_images(t, "/etc/hostname"), "is absolute"),
    ("embed-symlink", symlink_out, "leads outside through a symlink"),
    ("embed-out-is-file", lambda t: [*embed_images(t, "a.png")[:-2], str(t / "images.jsonl"), "--no-progress"], "not a directory"),
    ("embed-bad-jsonl", lambda t: after(embed_images(t, "a.png"), t / "images.jsonl", "{oops\n"), "images.jsonl:1: not valid JSON"),
    ("embed-missing-model", lambda t: embed_images(t, "a.png"), "model directory not found"),
    ("embed-remote-code-without-consent", llm2clip_remote, "ships its own Python code"),
    # --- report (classes 1, 8)
    ("report-holdout", lambda t: report_args(t, "--holdout", "1.5"), "expected a number in [0, 1), got '1.5'"),
    ("report-energy", lambda t: report_args(t, "--energy", "0"), "expected a number in (0, 1]"),
    ("report-temperature", lambda t: report_args(t, "--temperature", "-1"), "expected a number > 0"),
    ("report-max-rows", lambda t: report_args(t, "--max-rows", "0"), "expected an integer ≥ 1"),
    ("report-max-points", lambda t: report_args(t, "--max-points", "5"), "--max-points must be ≥ 20"),
    ("report-existing", existing_report, "report.json exists; pass --overwrite"),
    ("report-out-is-file", lambda t: [*report_args(t)[:6], str(t / "t.npy"), "--no-plots"], "exists and is not a directory"),
    ("report-bad-pairs", lambda t: report_args(t, "--pairs", str(_write(t / "p.jsonl", "{x\n"))), "p.jsonl:1"),
    # --- llava-data (classes 1, 8)
    ("llava-same-output", lambda t: llava(t, out_json="same.jsonl", out_texts="same.jsonl"), "are the same file"),
    ("llava-output-is-input", lambda t: llava(t, out_json="llava.json"), "is the --input file"),
    ("llava-existing-output", lambda t: after(llava(t), t / "caps.jsonl", "keep me"), "caps.jsonl exists (pass --overwrite"),
    ("llava-invalid-json", lambda t: llava(t, raw="[{"), "invalid JSON"),
    ("llava-turn-not-object", lambda t: llava(t, records=[{"id": "x", "conversations": ["hi"]}]), "every conversation turn must be an object"),
    ("llava-missing-input", lambda t: [*llava(t)[:2], str(t / "nope.json"), *llava(t)[3:]], "nope.json"),
    # --- store verify (class 2)
    ("verify-missing", lambda t: ["store", "verify", str(t / "nope")], "no such feature store"),
    ("verify-not-a-store", lambda t: ["store", "verify", str(t)], "not a feature store"),
    ("verify-swapped-files", swap_files_on_disk, "does not match the recorded"),
    ("verify-no-action", lambda t: ["store"], "required"),
    # --- resumed embed (class 5): content and model, not ids alone; nothing written when refused
    ("embed-caption-edited", caption_edited, "in.jsonl:2: id 't1' is stored with other text than it has now"),
    ("embed-caption-edited-says-update", caption_edited, "pass --update to re-embed changed inputs"),
    ("embed-image-replaced", image_replaced, "id 'i2' is stored with other image content than it has now"),
    ("embed-image-gone", image_gone, "id 'i0' is stored, but its image file"),
    ("embed-other-model-same-name", other_model, "embeddings of another model (encoder fingerprint"),
    ("embed-other-model-with-update", lambda t: other_model(t, "--update"), "one store holds one encoder"),
    ("embed-legacy-store", legacy_store, "were written without an encoder fingerprint"),
    ("embed-legacy-update-incomplete-input", lambda t: legacy_store(t, "--update", ids=("t0", "old")),
     "not in this input (e.g. 'old'), so --update cannot re-embed them"),
    ("embed-update-under-torchrun", lambda t: _world_size_2(embedded(t) + ["--update"]), "run it without torchrun"),
    # --- opening a store (class 5): a swapped shard is named, never read as another id's rows
    ("store-swapped-files-fit", swapped_then_fit, "does not hold the rows the store recorded for shards/r00000-000000.npy"),
    ("store-bad-probe", lambda t: fit_on_store(t, manifest_edit(lambda m: m["shards"][0].update(probe="xyz"))),
     "probe is not a 32-digit hex digest"),
    ("store-fingerprint-int", lambda t: fit_on_store(t, manifest_edit(lambda m: m.update(encoder_fingerprint=7))),
     "'encoder_fingerprint' must be a string or null"),
    # --- compare (class 9): present but unusable metrics are errors naming file and key
    ("compare-percent-as-fraction", lambda t: results(t, "mmstar", {"average,none": 95.0}),
     "results['mmstar']['average,none'] is 95.0, outside its range: this metric is a fraction in [0, 1]"),
    ("compare-nan", lambda t: results(t, "mmstar", {"average,none": float("nan")}), "is nan, not a number"),
    ("compare-string", lambda t: results(t, "realworldqa", {"exact_match,none": "0.5"}), "is '0.5', not a number"),
    ("compare-object", lambda t: results(t, "visulogic", {"visulogic_acc,none": {}}), "is {}, not a number"),
    ("compare-null", lambda t: results(t, "revision_pope", {"pope_accuracy,none": None}), "is None, not a number"),
    ("compare-bool", lambda t: results(t, "revision_pope", {"pope_accuracy,none": True}), "is True, not a number"),
    ("compare-negative", lambda t: results(t, "crpe_relation", {"exact_match,flexible-extract": -0.1}), "outside its range"),
    ("compare-mme-score-above-max", lambda t: results(t, "revision_mme", {"mme_acc,none": 0.5, "mme_perception_score,none": 2500.0}),
     "'mme_perception_score,none'] is 2500.0, outside its range: this metric is on a 0-2000 scale"),
    ("compare-gpt-hallbench-above-100", lambda t: results(t, "hallusion_bench_image", {"aAcc,none": 150.0}),
     "is 150.0, outside its range: this metric is on a 0-100 scale"),
    ("compare-pope-split-detail", lambda t: results(t, "revision_pope", {"pope_accuracy,none": 0.8,
                                                                      "pope_random_f1_score,none": 80.0}),
     "'pope_random_f1_score,none'] is 80.0, outside its range"),
    ("compare-sqa-dev-inf", lambda t: results(t, "revision_scienceqa_img_dev", {"exact_match,none": float("inf")}),
     "is inf, not a number"),
    # --- compare (another engineer's command; checked only for "no traceback")
    ("compare-missing-run", lambda t: ["compare", str(t / "no-such-run")], "no-such-run"),
]


def _world_size_2(argv: list[str]) -> list[str]:
    """``argv`` as a torchrun rank would see it (the env var is dropped again by the test's monkeypatch)."""
    os.environ["WORLD_SIZE"] = "2"
    return argv


def after(argv: list[str], path: Path, content) -> list[str]:
    """``argv``, once ``path`` has been (over)written with ``content``."""
    _write(path, content)
    return argv


def _write(path: Path, content) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _garbage_manifest(tmp: Path) -> list[str]:
    (tmp / "store" / "manifest.json").write_text("{not json")
    return ["fit", "--method", "identity", "--text", str(tmp / "store"), "--image", str(tmp / "i.npy"),
            "--out", str(tmp / "op"), "--no-progress"]


def _swap_entries(manifest: dict) -> None:
    a, b = manifest["shards"][0], manifest["shards"][1]
    a["file"], b["file"] = b["file"], a["file"]


def _mean_shift_on_own_mean(tmp: Path) -> list[str]:
    """renormalize on, and an input row equal to the text mean: the output would be 0/0."""
    assert main(fit_args(tmp, "-o", "renormalize=true", method="mean_shift")) == 0
    row = unit(1, seed=5)
    np.save(tmp / "in.npy", row)
    tensors = load_file(str(tmp / "op" / "operator.safetensors"))
    x = torch.from_numpy(row.astype(np.float64))
    # exactly the unit row `align` computes, so u − μ is exactly 0 (a legal mean: norm 1)
    tensors["mu_text"] = (x * torch.linalg.vector_norm(x, dim=1).reciprocal()[:, None])[0]
    save_file(tensors, str(tmp / "op" / "operator.safetensors"))
    return ["align", "--operator", str(tmp / "op"), "--in", str(tmp / "in.npy"), "--out", str(tmp / "out.npy"), "--no-progress"]


def snapshot(root: Path) -> dict[str, str]:
    """Every file and link under ``root`` with a hash of its content: what a refusal must not change."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            files[str(path)] = "link:" + os.readlink(path)
        elif path.is_file():
            files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            files[str(path)] = "dir"
    return files


@pytest.mark.parametrize("case_id,build,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(tmp_path, capsys, monkeypatch, case_id, build, expected):
    monkeypatch.setenv("WORLD_SIZE", "1")  # restored afterwards, whatever a build sets
    argv = [str(a) for a in build(tmp_path)]
    capsys.readouterr()
    before = snapshot(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse: refused while parsing, before any work
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("WARNING", "INFO", "DEBUG"))]
    error_lines = [line for line in lines if "error:" in line]
    assert len(error_lines) == 1, err
    assert all(line.startswith(("usage:", " ")) for line in lines if line not in error_lines), err
    assert expected in error_lines[0], err
    assert snapshot(tmp_path) == before, "a refused command changed files"


def test_the_table_covers_every_command_it_names():
    prefixes = {case_id.split("-")[0] for case_id, _, _ in CASES}
    assert {"fit", "store", "op", "align", "embed", "report", "llava", "verify", "compare"} <= prefixes
    assert len({case_id for case_id, _, _ in CASES}) == len(CASES) >= 80


def test_verbose_keeps_the_traceback(tmp_path, capsys, monkeypatch):
    argv = fit_args(tmp_path, text=unit(1))
    monkeypatch.delenv("REVISION_TRACEBACK", raising=False)
    assert main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert main(["--verbose", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("revision fit: error:")
    monkeypatch.setenv("REVISION_TRACEBACK", "1")  # as for LLaVA's training (docs/llava.md)
    assert main(argv) == 2
    assert "Traceback" in capsys.readouterr().err


def test_oserror_from_user_input_is_one_line(tmp_path, capsys, monkeypatch):
    """An OSError nobody anticipated (here: the output cannot be created) still reads as one line."""
    from revision_plugin.align import base

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "op" / "operator.safetensors"))

    monkeypatch.setattr(base, "save_file", refuse)
    assert main(fit_args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip() == (f"revision fit: error: {tmp_path / 'op' / 'operator.safetensors'}: Permission denied "
                           "(check the path's permissions or choose another output)")


def test_outside_root_is_allowed_only_when_asked(tmp_path):
    from revision_plugin.encoders.corpus import read_corpus

    (tmp_path / "root").mkdir()
    write_jsonl(tmp_path / "images.jsonl", [{"id": "a", "image": "/data/a.png"}, {"id": "b", "image": "../b.png"}])
    items = read_corpus(tmp_path / "images.jsonl", "image", image_root=tmp_path / "root", allow_outside_root=True)
    assert [i.value for i in items] == ["/data/a.png", str(tmp_path / "root" / "../b.png")]
    write_jsonl(tmp_path / "inside.jsonl", [{"id": "a", "image": "sub/a.png"}])
    assert read_corpus(tmp_path / "inside.jsonl", "image", image_root=tmp_path / "root")[0].value == str(tmp_path / "root/sub/a.png")


def test_remote_code_consent_comes_from_the_user_never_from_an_artifact(tmp_path, monkeypatch):
    from revision_plugin.encoders import remote_code
    from revision_plugin.errors import BadInputError
    from revision_plugin.tower import parse_tower_spec

    monkeypatch.delenv(remote_code.TRUST_REMOTE_CODE_ENV, raising=False)
    monkeypatch.setattr(remote_code, "_CONSENTED", set())
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "x.Y"}}))
    assert remote_code.needs_remote_code(model) and not remote_code.remote_code_allowed(model)
    artifact = tmp_path / "revision_tower.json"
    artifact.write_text(json.dumps({"encoder": "llm2clip", "encoder_model": str(model),
                                    "encoder_options": {"trust_remote_code": True}}))
    with pytest.raises(BadInputError, match="trust_remote_code cannot come from a tower config"):
        parse_tower_spec(str(artifact))
    artifact.write_text(json.dumps({"encoder": "llm2clip", "encoder_model": str(model), "trust_remote_code": True}))
    with pytest.raises(BadInputError, match="unknown key"):
        parse_tower_spec(str(artifact))
    assert not remote_code.remote_code_allowed(model)
    config = parse_tower_spec(f"revision:encoder=llm2clip,encoder_model={model},trust_remote_code=true")
    assert remote_code.remote_code_allowed(model)
    assert "trust_remote_code" not in json.dumps(config.to_dict())  # never saved into a checkpoint
    monkeypatch.setattr(remote_code, "_CONSENTED", set())
    monkeypatch.setenv(remote_code.TRUST_REMOTE_CODE_ENV, "1")
    assert remote_code.remote_code_allowed(model)


def test_llava_data_writes_both_outputs_and_replaces_only_with_overwrite(tmp_path, capsys):
    argv = llava(tmp_path)
    assert main(argv) == 0
    assert json.loads((tmp_path / "s1.json").read_text())[0]["text_id"] == "r1"
    assert (tmp_path / "caps.jsonl").read_text() == '{"id": "r1", "text": "a cat"}\n'
    assert main(argv) == 2 and "exists (pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


@pytest.mark.parametrize(("content", "message"), [
    (b"{\"encoder\": ", "invalid JSON"),
    (b"\xff\xfe{", "not a UTF-8 JSON file"),
    (b"[1, 2]", "expected a JSON object, got list"),
])
def test_a_damaged_tower_config_is_a_one_line_error(tmp_path, content, message):
    from revision_plugin.errors import BadInputError
    from revision_plugin.tower import parse_tower_spec

    (tmp_path / "revision_tower.json").write_bytes(content)
    with pytest.raises(BadInputError, match=message):
        parse_tower_spec(str(tmp_path))
