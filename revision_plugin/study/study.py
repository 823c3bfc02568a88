"""One seed of the miniature ReVision study, step by step (each step cached, see ``pipeline.py``).

world -> tiny CLIP -> tiny Llama -> ``revision embed`` -> ``revision fit`` (every method, on every
embedded row) -> ``revision report`` (every method refitted on its fit split, scored on the held-out
rows) -> local lmms-eval tasks -> per variant: stage 1, lmms-eval, stage 2,
lmms-eval -> Blind (w/ Image without images at evaluation).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from revision_plugin.study import data, models, stages, tasks
from revision_plugin.study.evaluate import run_revision_eval
from revision_plugin.study.pipeline import Runner, revision
from revision_plugin.study.settings import ALIGN_VARIANTS, BLIND, PAIRED, StudySettings, method_of, slug

logger = logging.getLogger(__name__)

STAGES = ("stage1", "stage2")
# the operators the geometry report refits (identity is its raw row)
REPORT_METHODS = tuple(method for _, method in ALIGN_VARIANTS if method != "identity")


def _progress(iterable, desc: str):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False, mininterval=2)


def run_seed(out: Path, settings: StudySettings, runner: Runner, *, ablation_tokens: bool = False) -> dict:
    """Every step of one seed under ``out``; returns ``{"clip": metrics, "results": {stage: {label: file}}}``."""
    s = settings
    world = runner.step("world", out / "world", [s.seed, asdict(s.world)],
                        lambda d: _world(d, s))
    files = data.WorldFiles(world.folder)
    # Trained weights depend on the thread count (how float sums are split), so it is part of the
    # models' keys, and through them of every later step's: another --threads never reuses them.
    clip = runner.step("tiny CLIP", out / "models" / "clip", [world.fingerprint, asdict(s.clip), s.threads],
                       lambda d: _clip(d, files, s))
    llm = runner.step("tiny Llama", out / "models" / "llm", [world.fingerprint, asdict(s.llm), s.threads],
                      lambda d: models.train_llm(d, data.read_role(files, "llm_text"), s.llm, s.seed, _progress))
    probe = runner.step("probe tiny Llama", out / "models" / "llm_probe", [llm.fingerprint, s.eval.probe_scenes],
                        lambda d: _probe(d, llm.folder, files, s))
    embed = runner.step("revision embed", out / "emb", [clip.fingerprint],
                        lambda d: _embed(d, clip.folder, files))
    ops = runner.step("revision fit", out / "ops", [embed.fingerprint], lambda d: _fit(d, embed.folder))
    report = runner.step("revision report", out / "report", [embed.fingerprint, REPORT_METHODS],
                         lambda d: _report(d, embed.folder / "text", embed.folder / "image"))
    task_step = runner.step("eval tasks", out / "eval_tasks", [world.fingerprint, asdict(s.eval)],
                            lambda d: _tasks(d, files, s))
    task_dirs = {"images": task_step.folder / "tasks", "blind": task_step.folder / "tasks_blind"}

    results: dict[str, dict[str, str]] = {stage: {} for stage in STAGES}
    base_key = [llm.fingerprint, clip.fingerprint, ops.fingerprint, asdict(s.train), s.seed]
    variants = [(label, s.train.num_tokens) for label in s.variants]
    if ablation_tokens:
        variants.append(("ReAlign (576 tokens)", 576))
    for label, num_tokens in variants:
        method = method_of(label.split(" (")[0])
        name = slug(label) if num_tokens == s.train.num_tokens else f"{slug(label.split(' (')[0])}_k{num_tokens}"
        run_dir = out / "runs" / name
        operator = ops.folder / method if method else None
        stage1_spec = stages.tower_spec(clip.folder, operator, embed.folder / "text" if method else None, num_tokens)
        stage1_data = files.stage1_json if method else files.paired_json
        key = [*base_key, label, num_tokens]
        s1 = runner.step(f"stage 1 {label}", run_dir / "stage1", key,
                         lambda d, data_=stage1_data, spec=stage1_spec, k=num_tokens: stages.run_llava(stages.stage1_args(
                             llm.folder, data_, files.images, spec, d, s.train, s.seed, k)))
        e1 = runner.step(f"eval stage 1 {label}", out / "eval" / "stage1" / name, [s1.fingerprint, task_step.fingerprint],
                         lambda d, ckpt=s1.folder: _eval(d, ckpt, task_dirs["images"], llm.folder, s, stage1=True))
        stage2_spec = stages.tower_spec(clip.folder, operator, None, num_tokens)
        s2 = runner.step(f"stage 2 {label}", run_dir / "stage2", [s1.fingerprint],
                         lambda d, spec=stage2_spec, proj=s1.folder / "mm_projector.bin", k=num_tokens: stages.run_llava(
                             stages.stage2_args(llm.folder, files.stage2_json, files.images, spec, proj, d, s.train, s.seed, k)))
        e2 = runner.step(f"eval stage 2 {label}", out / "eval" / "stage2" / name, [s2.fingerprint, task_step.fingerprint],
                         lambda d, ckpt=s2.folder: _eval(d, ckpt, task_dirs["images"], None, s, stage1=False))
        results["stage1"][label], results["stage2"][label] = e1.summary["run"], e2.summary["run"]
        if label == PAIRED:  # Blind: the w/ Image checkpoints, questions without their image
            for stage, ckpt, base in (("stage1", s1, llm.folder), ("stage2", s2, None)):
                blind = runner.step(f"eval {stage} {BLIND}", out / "eval" / stage / slug(BLIND),
                                    [ckpt.fingerprint, task_step.fingerprint],
                                    lambda d, c=ckpt, b=base, st=stage: _eval(d, c.folder, task_dirs["blind"], b, s,
                                                                               stage1=st == "stage1"))
                results[stage][BLIND] = blind.summary["run"]
    return {"clip": clip.summary, "probe": probe.summary, "geometry": _gaps(report.folder), "results": results}


# ----------------------------------------------------------------------------- step bodies


def _world(folder: Path, s: StudySettings) -> dict:
    data.build_world(folder, s)
    return {k: v for k, v in data.role_sizes(s).items()}


def _clip(folder: Path, files: data.WorldFiles, s: StudySettings) -> dict:
    def pairs(role):
        return [(files.images / r["image"], r["caption"]) for r in data.read_role(files, role)]

    train = models.train_clip(folder, pairs("clip_train"), s.clip, s.seed, _progress)
    metrics = models.clip_metrics(folder, pairs("clip_test"))
    (folder / "clip_metrics.json").write_text(json.dumps({**train, **metrics}, indent=1))
    return {"recall@1": metrics["recall_at_1_text_to_image"], "chance": metrics["chance"],
            "gap": metrics["centroid_gap"], "pairs": metrics["held_out_pairs"], "temperature": train["temperature"], "loss": train["loss_last"]}


def _embed(folder: Path, clip: Path, files: data.WorldFiles) -> dict:
    revision("embed", "--encoder", "hf_clip", "--model", clip, "--texts", files.stage1_texts,
         "--images", files.operator_images, "--out", folder, "--offline", "--workers", "1", "--device", "cpu")
    return {"text_rows": _count(files.stage1_texts), "image_rows": _count(files.operator_images)}


def _count(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def _fit(folder: Path, emb: Path) -> dict:
    for _, method in ALIGN_VARIANTS:
        revision("fit", "--method", method, "--text", emb / "text", "--image", emb / "image", "--out", folder / method,
             "--no-progress")
    return {"operators": len(ALIGN_VARIANTS)}


def _report(folder: Path, text: Path, image: Path) -> dict:
    """``revision report`` with every method refitted on the report's own fit split.

    The trained operators (``ops/``) were fitted on every embedded row, so the report's held-out
    rows are among their fit rows: measured as given, their "held-out" gap is in-sample and falls
    below the sampling floor (which assumes independent samples). Refitted here, each operator is
    scored only on rows it never saw; W/o Align is the report's raw row.
    """
    argv = ["report", "--text", text, "--image", image, "--out", folder, "--no-sample-complexity"]
    for method in REPORT_METHODS:
        argv += ["--method", method]
    revision(*argv)
    return {"report": "report.json"}


def _gaps(report_folder: Path) -> dict:
    """Held-out unpaired centroid gaps from the geometry report: raw text, the sampling floor
    (two independent samples of one population), and after ReAlign (refitted on the fit split),
    with the rows per side they were measured on and fitted on."""
    report = json.loads((report_folder / "report.json").read_text())
    operators = report["operators"]
    return {"gap_raw": operators["raw"]["gap"], "gap_floor": operators["raw"]["gap_sampling_floor"],
            "gap_realign": operators["realign"]["gap"], "eval_rows": report["data"]["eval_rows"]["text"],
            "fit_rows": report["data"]["fit_rows"]["text"]}


def _tasks(folder: Path, files: data.WorldFiles, s: StudySettings) -> dict:
    scenes = [r["scene"] for r in data.read_role(files, "eval")]
    tasks.build_tasks(folder, scenes, s.eval, s.world.image_size, s.seed)
    return {"tasks": len(tasks.TASKS), "scenes": len(scenes)}


def _probe(folder: Path, llm: Path, files: data.WorldFiles, s: StudySettings) -> dict:
    probe = models.probe_llm(llm, data.read_role(files, "eval")[: s.eval.probe_scenes], s.seed)
    (folder / "llm_probe.json").write_text(json.dumps(probe, indent=1) + "\n")
    return probe


def _eval(folder: Path, checkpoint: Path, task_folder: Path, model_base: Path | None, s: StudySettings, *,
          stage1: bool) -> dict:
    """``revision eval`` of one checkpoint; a stage-1 checkpoint (trained on ``plain`` captions) is
    asked its questions in the stage-2 template."""
    results = run_revision_eval(checkpoint, task_folder, folder, model_base=model_base,
                                conv_template=s.train.version if stage1 else None, batch_size=s.eval.batch_size)
    return {"run": str(folder.relative_to(folder.parents[2])),
            "pope": results["revision_pope"]["pope_accuracy,none"],
            "caption": results["revision_study_caption"]["caption_attribute_accuracy,none"]}
