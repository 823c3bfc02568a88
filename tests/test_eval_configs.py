"""eval/: the suite's task names, dataset ids, metric keys and run configs, checked against the
installed lmms-eval 0.7.3; the custom task folders run through the real harness on tiny data.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from revision_plugin import compare
from revision_plugin.lmms import datasets as suite_data
from revision_plugin.testing import tiny_eval_data as tiny

lmms_eval = pytest.importorskip("lmms_eval")

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "eval"
TASKS_DIR = EVAL / "tasks"
LMMS_TASKS = Path(lmms_eval.__file__).parent / "tasks"
BUILTIN_FOLDERS = ("mme", "mmstar", "scienceqa", "realworldqa", "mmmu", "mmmu_pro", "visulogic", "logicvista",
                   "crpe_relation", "pope", "hallusion_bench")

# task -> (dataset_path, dataset_name, split) as written in eval/README.md
SUITE_DATASETS = {
    "revision_mme": ("lmms-lab-encoder/MME", None, "test"),
    "mmstar": ("Lin-Chen/MMStar", None, "val"),
    "scienceqa_img": ("lmms-lab-encoder/ScienceQA", "ScienceQA-IMG", "test"),
    "revision_scienceqa_img_dev": ("lmms-lab-encoder/ScienceQA", "ScienceQA-IMG", "validation"),
    "realworldqa": ("lmms-lab-encoder/RealWorldQA", None, "test"),
    "mmmu_val": ("lmms-lab-encoder/MMMU", None, "validation"),
    "mmmu_pro_standard": ("MMMU/MMMU_Pro", "standard (10 options)", "test"),
    "visulogic": ("VisuLogic/VisuLogic", None, "train"),
    "revision_logicvista": ("lscpku/LogicVista", None, "test"),
    "crpe_relation": ("nv-njb/CRPE", None, "test"),
    "revision_pope": ("lmms-lab-encoder/POPE", None, "test"),
    "revision_hallusion_bench_image": ("lmms-lab-encoder/HallusionBench", None, "image"),
}


@pytest.fixture(scope="module")
def task_index():
    from lmms_eval.tasks import TaskManager

    paths = [str(TASKS_DIR)] + [str(LMMS_TASKS / f) for f in BUILTIN_FOLDERS]
    return TaskManager("ERROR", include_path=paths, include_defaults=False).task_index


def _config(task_index, task: str) -> dict:
    from lmms_eval.utils import load_yaml_config

    return load_yaml_config(task_index[task]["yaml_path"], mode="simple")


def _flatten_group(task_index, name: str) -> list[str]:
    cfg = _config(task_index, name)
    out = []
    for member in cfg["task"]:
        out += _flatten_group(task_index, member) if task_index[member]["type"] == "group" else [member]
    return out


def test_suite_groups_list_the_paper_benchmarks(task_index):
    assert _flatten_group(task_index, "revision_suite") == list(compare.SUITE_TASKS)
    assert _flatten_group(task_index, "revision_quick") == list(compare.QUICK_TASKS)
    assert set(SUITE_DATASETS) == set(compare.SUITE_TASKS)
    # custom task names never shadow a built-in (lmms-eval silently ignores such a task)
    custom = {p.stem for p in TASKS_DIR.rglob("*.yaml")}
    builtin = {p.stem for p in LMMS_TASKS.rglob("*.yaml")}
    assert not custom & builtin


@pytest.mark.parametrize("task", sorted(SUITE_DATASETS))
def test_task_dataset_ids_and_splits(task_index, task):
    assert task_index[task]["type"] == "task"
    cfg = _config(task_index, task)
    assert (cfg["dataset_path"], cfg.get("dataset_name"), cfg["test_split"]) == SUITE_DATASETS[task]
    assert suite_data.DATASETS[task].repo_id == cfg["dataset_path"]  # the prefetch table matches the YAML
    assert cfg["output_type"] == "generate_until"
    readme = (EVAL / "README.md").read_text()
    assert f"`{task}`" in readme and SUITE_DATASETS[task][0] in readme


def test_compare_reads_metric_keys_the_tasks_really_report(task_index):
    """Every (task, "metric,filter") revision compare reads, under every MME/MMMU choice, exists in that task's YAML."""
    pairs = set(compare.ALL_SOURCE_METRICS) | set(compare.DETAIL_METRICS)
    assert {t for t, _ in pairs} >= set(compare.SUITE_TASKS)
    for task, key in sorted(pairs):
        cfg = _config(task_index, task)
        metrics = {m["metric"] for m in cfg["metric_list"]}
        filters = {"none"} | {f["name"] for f in cfg.get("filter_list", [])}
        metric, flt = key.split(",")
        assert metric in metrics and flt in filters, (task, key, metrics, filters)


def test_hallusion_default_needs_a_judge_ours_does_not(task_index):
    builtin = _config(task_index, "hallusion_bench_image")
    ours = _config(task_index, "revision_hallusion_bench_image")
    def name(node):  # mode="simple" leaves `!function x.y` as a YAML node
        return getattr(node, "value", str(node))

    assert not any(name(m["aggregation"]).endswith("_intern") for m in builtin["metric_list"])  # GPT judge upstream
    assert all(name(m["aggregation"]).startswith("utils.hb_") for m in ours["metric_list"])
    assert compare.JUDGES["hallusion_bench_image"].startswith("gpt") and "revision_hallusion_bench_image" not in compare.JUDGES


def test_hallusion_yes_no_neither():
    utils = _load_script(TASKS_DIR / "hallusion_bench_nojudge" / "utils.py")
    assert [utils.hb_extract(s) for s in ("Yes.", "yes, it is", "No", "NO!", "Nope, yes it is")] == ["1", "1", "0", "0", "1"]
    assert utils.hb_extract("The eyes are blue.") is None  # "eyes" is not yes
    assert utils.hb_extract("I cannot tell from the image.") is None and utils.hb_extract("") is None
    rows = [{"category": "VD", "subcategory": "c", "set_id": "0", "figure_id": "0", "question_id": str(i),
             "gt_answer": gt, "model_prediction": pred} for i, (gt, pred) in enumerate(
                 [("0", "I cannot tell."), ("1", "Their eyes are open"), ("1", "Yes"), ("0", "no")])]
    assert utils.hb_aacc(rows) == 0.5  # a refusal is wrong, even on a "no" question; "eyes" is no yes
    assert utils.hb_neither_rate(rows) == 0.5 and utils.hb_facc(rows) == 0.0 and utils.hb_qacc(rows) == 0.5


def test_mmmu_variants_and_smoke_tasks_exist(task_index):
    for variant in compare.MMMU_VARIANTS.values():
        assert all(task_index[t]["type"] == "task" for t in variant)
    assert _flatten_group(task_index, "revision_smoke") == list(compare.SMOKE_TASKS)
    for task in compare.SMOKE_TASKS:
        cfg = _config(task_index, task)
        assert getattr(cfg["process_docs"], "value", str(cfg["process_docs"])).startswith("smoke_utils.smoke_docs")
    make_smoke = _load_script(TASKS_DIR / "smoke" / "make_smoke.py")
    assert make_smoke.main(["--check"]) == 0
    smoke_utils = _load_script(TASKS_DIR / "smoke" / "smoke_utils.py")
    assert smoke_utils.SMOKE_DOCS == compare.suite.SMOKE_DOCS
    assert smoke_utils._spaced(100, 24) == smoke_utils._spaced(100, 24) and len(set(smoke_utils._spaced(100, 24))) == 24


# ------------------------------------------------------------------ run configs (--config)


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_configs_are_generated_and_up_to_date():
    make_runs = _load_script(EVAL / "runs" / "make_runs.py")
    assert make_runs.main(["--check"]) == 0
    assert sorted(p.name for p in (EVAL / "runs").glob("*.yaml")) == sorted(make_runs.render())


def test_run_configs_are_valid_lmms_eval_configs(monkeypatch):
    from lmms_eval.__main__ import parse_eval_args

    monkeypatch.setattr(sys, "argv", ["lmms-eval"])
    parser, _ = parse_eval_args()
    valid = {action.dest for action in parser._actions}
    expected_tasks = {"full.yaml": list(compare.SUITE_TASKS), "quick.yaml": list(compare.QUICK_TASKS)}
    for path in sorted((EVAL / "runs").glob("*.yaml")):
        entries = yaml.safe_load(path.read_text())
        assert isinstance(entries, list) and entries, path
        for entry in entries:
            assert set(entry) <= valid, (path, set(entry) - valid)
            assert entry["model"] == "revision_llava" and (ROOT / entry["include_path"]).is_dir()
            assert entry["tasks"] in compare.SUITE_TASKS
            assert entry["model_args"].startswith("pretrained=${REVISION_CKPT")
            assert "batch_size" not in entry["model_args"]  # lmms-eval passes --batch_size itself
        if path.name in expected_tasks:
            assert [e["tasks"] for e in entries] == expected_tasks[path.name]
        else:  # a paper table: the full suite for every method it evaluates
            per_method: dict[str, list[str]] = {}
            for e in entries:
                per_method.setdefault(e["output_path"], []).append(e["tasks"])
            assert all(tasks == list(compare.SUITE_TASKS) for tasks in per_method.values()), path
            assert len({e["model_args"] for e in entries}) == len(per_method)


# ------------------------------------------------------------------ custom tasks through the real harness


def _oracle_answer(task: str, doc: dict) -> str:
    if task == "revision_mme":
        return doc["answer"]
    if task == "revision_hallusion_bench_image":
        return "Yes" if doc["gt_answer"] == "1" else "No"
    if task == "revision_scienceqa_img_dev":
        return "ABCDEFG"[doc["answer"]]
    return str(doc["answer"])


def _make_model(answer_fn):
    from lmms_eval.api.model import lmms

    class Scripted(lmms):
        """Answers every request with ``answer_fn(task, doc)``: a known answer file, model-free."""

        is_simple = True

        def generate_until(self, requests):
            out = []
            for req in requests:
                _, _, doc_to_visual, doc_id, task, split = req.args
                doc = self.task_dict[task][split][doc_id]
                assert doc_to_visual(doc), "the task must hand the model its image"
                out.append(answer_fn(task, doc))
            return out

        def loglikelihood(self, requests):
            raise NotImplementedError

        def generate_until_multi_round(self, requests):
            raise NotImplementedError

    return Scripted()


def _evaluate(model, tasks: dict[str, Path]) -> dict:
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    manager = TaskManager("ERROR", include_path=[str(TASKS_DIR), str(LMMS_TASKS / "pope")], include_defaults=False)
    out = simple_evaluate(model=model, tasks=[tiny.task_override(t, p) for t, p in tasks.items()],
                          task_manager=manager, log_samples=False, verbosity="ERROR")
    return out["results"]


@pytest.fixture(scope="module")
def tiny_tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_eval")
    return {
        "revision_logicvista": tiny.build_tiny_logicvista(root / "lv"),
        "revision_hallusion_bench_image": tiny.build_tiny_hallusion(root / "hb"),
        "revision_scienceqa_img_dev": tiny.build_tiny_scienceqa(root / "sqa"),
        "revision_pope": tiny.build_tiny_pope(root / "pope", n_per_split=2),
        "revision_mme": tiny.build_tiny_mme(root / "mme", pairs_per_category=1),
    }


def test_custom_tasks_score_a_known_answer_file_100_percent(tiny_tasks):
    results = _evaluate(_make_model(_oracle_answer), tiny_tasks)
    assert results["revision_logicvista"]["accuracy,none"] == 1.0
    for key in ("aAcc", "qAcc", "fAcc"):
        assert results["revision_hallusion_bench_image"][f"{key},none"] == 1.0
    assert results["revision_scienceqa_img_dev"]["exact_match,none"] == 1.0
    pope = results["revision_pope"]
    for split in tiny.POPE_SPLITS:
        assert pope[f"pope_{split}_accuracy,none"] == 1.0 and pope[f"pope_{split}_f1_score,none"] == 1.0
    assert pope["pope_accuracy,none"] == 1.0
    mme = results["revision_mme"]
    assert mme["mme_acc,none"] == mme["mme_perception_acc,none"] == mme["mme_cognition_acc,none"] == 1.0


def test_custom_tasks_score_wrong_answers_below_100(tiny_tasks):
    def wrong(task, doc):
        if task == "revision_logicvista":  # a single letter: right on single-answer items only
            return min(tiny_docs_letters(doc["answer"]))
        if task == "revision_pope":
            return "yes"
        if task == "revision_mme":
            return "Yes"
        return "No" if task == "revision_hallusion_bench_image" else "Z"

    results = _evaluate(_make_model(wrong), tiny_tasks)
    assert results["revision_logicvista"]["accuracy,none"] == pytest.approx(4 / 6)  # 2 of 6 are multi-answer
    assert results["revision_hallusion_bench_image"]["aAcc,none"] == 0.5
    # "No" everywhere: the "no" question of each pair is right on both figures (qAcc groups a
    # question across figures), and no figure has all its questions right (fAcc)
    assert results["revision_hallusion_bench_image"]["qAcc,none"] == 0.5
    assert results["revision_hallusion_bench_image"]["fAcc,none"] == 0.0
    assert results["revision_scienceqa_img_dev"]["exact_match,none"] == 0.0
    assert results["revision_pope"]["pope_accuracy,none"] == 0.5
    assert results["revision_pope"]["pope_random_accuracy,none"] == 0.5
    # "Yes" everywhere: half the questions right, no image has both right (acc+ = 0)
    assert results["revision_mme"]["mme_acc,none"] == 0.5
    assert results["revision_mme"]["mme_perception_score,none"] == 50.0 * 3  # 3 perception categories, acc 50 + acc+ 0


def tiny_docs_letters(answer: str) -> set[str]:
    utils = _load_script(TASKS_DIR / "logicvista_direct" / "utils.py")
    return set(utils.option_letters(answer))


def test_logicvista_letter_parsing():
    utils = _load_script(TASKS_DIR / "logicvista_direct" / "utils.py")
    score = utils.logicvista_process_results
    assert score({"answer": "A, C"}, ["A, C"]) == {"accuracy": 1.0}
    assert score({"answer": "A, C"}, ["C and A."]) == {"accuracy": 1.0}
    assert score({"answer": "A, C"}, ["A"]) == {"accuracy": 0.0}
    assert score({"answer": "B"}, ["(B) the blue one"]) == {"accuracy": 1.0}
    assert score({"answer": "B"}, ["Because"]) == {"accuracy": 0.0}  # a word's initial is no answer
    with pytest.raises(ValueError, match="no option letter"):
        score({"id": "x", "answer": "blue"}, ["B"])


def test_pope_split_process_results_refuses_unknown_split():
    utils = _load_script(TASKS_DIR / "pope_splits" / "utils.py")
    doc = {"question_id": "7", "answer": "yes", "category": "adversarial"}
    out = utils.pope_split_process_results(doc, ["yes"])
    assert out["pope_adversarial_accuracy"]["score"] == 1.0 and "pope_random_accuracy" not in out
    with pytest.raises(ValueError, match="'7'"):
        utils.pope_split_process_results({**doc, "category": "coco"}, ["yes"])


def test_tiny_include_path_tasks_for_the_command_line(tmp_path):
    """build_tiny_eval_tasks: task folders (relative data_files) usable with --include_path."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    folder = tiny.build_tiny_eval_tasks(tmp_path / "tiny_tasks", n_per_split=1, pairs_per_category=1)
    manager = TaskManager("ERROR", include_path=str(folder), include_defaults=False)
    assert {"revision_tiny_pope", "revision_tiny_mme"} <= set(manager.all_tasks)
    results = simple_evaluate(model=_make_model(_oracle_answer), tasks=["revision_tiny_pope", "revision_tiny_mme"],
                              task_manager=manager, verbosity="ERROR")["results"]
    assert results["revision_tiny_pope"]["pope_accuracy,none"] == 1.0
    n_perception = len([c for c in tiny.MME_CATEGORIES if c in ("existence", "color", "count")])
    assert results["revision_tiny_mme"]["mme_perception_score,none"] == 200.0 * n_perception
