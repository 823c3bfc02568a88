"""Tiny local datasets in the shapes of lmms-eval's tasks, for offline runs of the real harness.

The files have the columns lmms-eval 0.7.3's ``pope`` and ``mme`` tasks read
(``lmms-lab-encoder/POPE`` test split, ``lmms-lab-encoder/MME`` test split) -- plus
LogicVista, HallusionBench and ScienceQA-IMG shapes for the ``eval/tasks`` folders -- with
images drawn by PIL, so the real task YAMLs, prompts, ``process_results`` and aggregation
functions run on them. Saved as Hugging Face parquet (the ``image`` column keeps its
``datasets.Image`` feature), which lmms-eval loads with ``dataset_path: parquet``.

Two ways to run a real task on them (both used by the tests)::

    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager
    data = build_tiny_eval_data(tmp)
    simple_evaluate(model=..., tasks=[task_override("pope", data["pope"])], task_manager=TaskManager())

or ``build_tiny_eval_tasks(dir)``, which also writes ``--include_path`` task folders
(``revision_tiny_pope``, ``revision_tiny_mme``) that point the real functions at the
local files, for the ``lmms-eval`` command line.

Every question is answerable from the picture ("Is there a red square?"), and
:func:`known_answers` gives the exact reference answers, so a known-correct answer
file scores 100% through the real metric code.
"""

from __future__ import annotations

from pathlib import Path

# (colour name, RGB) and shapes the images are drawn with.
_COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60)}
_SHAPES = ("square", "circle")

POPE_SPLITS = ("adversarial", "popular", "random")
# MME: categories from both halves (perception and cognition), so both metrics exist.
MME_CATEGORIES = ("existence", "color", "count", "commonsense_reasoning", "numerical_calculation")


def _draw(colour: str, shape: str, count: int = 1, size: int = 64):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    step = size // max(count, 1)
    for i in range(count):
        x0, y0 = i * step + 4, size // 4
        x1, y1 = x0 + step - 8, y0 + step - 8 if count > 1 else size - size // 4
        box = (x0, y0, x1, max(y1, y0 + 4))
        (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=_COLOURS[colour])
    return img


def _pope_rows(n_per_split: int) -> list[dict]:
    rows, k = [], 0
    colours = list(_COLOURS)
    for split in POPE_SPLITS:
        for i in range(n_per_split):
            colour, shape = colours[(k + i) % len(colours)], _SHAPES[(k // 3 + i) % len(_SHAPES)]
            truth = i % 2 == 0
            asked = colour if truth else colours[(colours.index(colour) + 1) % len(colours)]
            k += 1
            rows.append(
                {
                    "id": str(k),
                    "question_id": str(k),
                    "question": f"Is there a {asked} {shape} in the image?",
                    "answer": "yes" if truth else "no",
                    "image_source": f"tiny_{k:04d}",
                    "image": _draw(colour, shape),
                    "category": split,
                }
            )
    return rows


def _mme_rows(pairs_per_category: int) -> list[dict]:
    rows = []
    colours = list(_COLOURS)
    for c_idx, category in enumerate(MME_CATEGORIES):
        for p in range(pairs_per_category):
            colour, shape = colours[(c_idx + p) % len(colours)], _SHAPES[p % len(_SHAPES)]
            count = 1 + (p % 3)
            image = _draw(colour, shape, count=count)
            wrong = colours[(colours.index(colour) + 1) % len(colours)]
            if category == "count" or category == "numerical_calculation":
                q_yes, q_no = f"Are there {count} shapes in the image?", f"Are there {count + 1} shapes in the image?"
            elif category == "color":
                q_yes, q_no = f"Is the {shape} {colour}?", f"Is the {shape} {wrong}?"
            else:
                q_yes, q_no = f"Is there a {colour} {shape} in this image?", f"Is there a {wrong} {shape} in this image?"
            qid = f"{category}/{p:04d}.png"
            # MME asks every image twice (one "Yes", one "No"); its aggregation asserts it.
            for question, answer in ((q_yes, "Yes"), (q_no, "No")):
                rows.append(
                    {
                        "question_id": qid,
                        "image": image,
                        "question": f"{question} Please answer yes or no.",
                        "answer": answer,
                        "category": category,
                    }
                )
    return rows


def _logicvista_rows(n: int) -> list[dict]:
    """lscpku/LogicVista (test) shape: options inside the question text, gold "B" or "A, C"."""
    rows, colours = [], list(_COLOURS)
    for i in range(n):
        colour = colours[i % len(colours)]
        options = [f"{c} {_SHAPES[i % 2]}" for c in colours] + ["nothing"]
        letters = "ABCD"
        gold = letters[colours.index(colour)]
        if i % 3 == 2:  # a multi-answer question
            gold = f"{gold}, D" if gold != "D" else "A, D"
        text = "Which of these are in the image? " + " ".join(f"({letter}) {o}" for letter, o in zip(letters, options))
        rows.append({"id": f"lv{i}", "question": text, "answer": gold, "skill": "inductive",
                     "image": _draw(colour, _SHAPES[i % 2])})
    return rows


def _hallusion_rows(n_sets: int) -> list[dict]:
    """lmms-lab-encoder/HallusionBench (image split) shape; gt_answer "1" = yes, "0" = no."""
    rows, colours = [], list(_COLOURS)
    for s in range(n_sets):
        colour = colours[s % len(colours)]
        for f in range(2):  # two figures per set, two questions per figure
            for q, (asked, truth) in enumerate(((colour, "1"), (colours[(s + 1) % len(colours)], "0"))):
                rows.append({
                    "category": "VS" if s % 2 else "VD", "subcategory": "chart", "set_id": str(s),
                    "figure_id": str(f), "question_id": str(q),
                    "question": f"Is the shape {asked}?", "gt_answer": truth,
                    "gt_answer_details": f"The shape is {colour}.", "image": _draw(colour, _SHAPES[f]),
                })
    return rows


def _scienceqa_rows(n: int) -> list[dict]:
    """lmms-lab-encoder/ScienceQA (ScienceQA-IMG) shape: choices list, integer answer index."""
    rows, colours = [], list(_COLOURS)
    for i in range(n):
        colour = colours[i % len(colours)]
        rows.append({"question": "Which colour is the shape?", "choices": colours, "answer": colours.index(colour),
                     "hint": "" if i % 2 else "Look at the picture.", "image": _draw(colour, "square")})
    return rows


def _save_parquet(rows: list[dict], path: Path) -> Path:
    import datasets

    def feature(value):
        if isinstance(value, bool) or not isinstance(value, (int, list)):
            return datasets.Value("string")
        return datasets.Value("int64") if isinstance(value, int) else datasets.Sequence(datasets.Value("string"))

    features = {k: feature(v) for k, v in rows[0].items() if k != "image"}
    features["image"] = datasets.Image()
    ds = datasets.Dataset.from_list(rows, features=datasets.Features(features))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))
    return path


def build_tiny_pope(out_dir: str | Path, n_per_split: int = 4) -> Path:
    """Write ``<out_dir>/test.parquet`` in ``lmms-lab-encoder/POPE`` (test split) shape."""
    return _save_parquet(_pope_rows(n_per_split), Path(out_dir) / "test.parquet")


def build_tiny_mme(out_dir: str | Path, pairs_per_category: int = 2) -> Path:
    """Write ``<out_dir>/test.parquet`` in ``lmms-lab-encoder/MME`` (test split) shape."""
    return _save_parquet(_mme_rows(pairs_per_category), Path(out_dir) / "test.parquet")


def build_tiny_logicvista(out_dir: str | Path, n: int = 6) -> Path:
    """Write ``<out_dir>/test.parquet`` in ``lscpku/LogicVista`` (test split) shape."""
    return _save_parquet(_logicvista_rows(n), Path(out_dir) / "test.parquet")


def build_tiny_hallusion(out_dir: str | Path, n_sets: int = 2) -> Path:
    """Write ``<out_dir>/test.parquet`` in ``lmms-lab-encoder/HallusionBench`` (image split) shape."""
    return _save_parquet(_hallusion_rows(n_sets), Path(out_dir) / "test.parquet")


def build_tiny_scienceqa(out_dir: str | Path, n: int = 4) -> Path:
    """Write ``<out_dir>/test.parquet`` in ``lmms-lab-encoder/ScienceQA`` (ScienceQA-IMG) shape."""
    return _save_parquet(_scienceqa_rows(n), Path(out_dir) / "test.parquet")


def build_tiny_eval_data(workdir: str | Path, n_per_split: int = 4, pairs_per_category: int = 2) -> dict[str, Path]:
    """Both datasets under ``workdir``; returns ``{"pope": parquet, "mme": parquet}``."""
    workdir = Path(workdir)
    return {
        "pope": build_tiny_pope(workdir / "pope", n_per_split),
        "mme": build_tiny_mme(workdir / "mme", pairs_per_category),
    }


def task_override(task: str, parquet: str | Path, split: str = "test") -> dict:
    """A ``simple_evaluate(tasks=[...])`` entry running the *real* task on a local file.

    Only the data source (and the split it is filed under) changes: prompts, generation
    settings, ``process_results`` and aggregation stay those of the installed task YAML.
    """
    return {
        "task": task,
        "dataset_path": "parquet",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(Path(parquet).resolve())}},
        "test_split": split,
    }


def known_answers(parquet: str | Path) -> list[str]:
    """The reference answers, in file order: a known-correct answer file."""
    import pyarrow.parquet as pq

    return [str(a) for a in pq.read_table(str(parquet), columns=["answer"]).column("answer").to_pylist()]


def read_docs(parquet: str | Path) -> list[dict]:
    """The rows as lmms-eval hands them to a task (``image`` decoded to PIL)."""
    import datasets

    return list(datasets.load_dataset("parquet", data_files={"test": str(parquet)}, split="test"))


def _tiny_task_yaml(benchmark: str, metrics: tuple[tuple[str, str], ...]) -> str:
    """A tiny offline task: lmms-eval's real ``benchmark`` task functions on a local parquet file;
    ``metrics``: (metric, aggregation function of that task's utils)."""
    utils = f"lmms_eval.tasks.{benchmark}.utils"
    metric_list = "".join(f"  - metric: {metric}\n    aggregation: !function {utils}.{aggregation}\n"
                          "    higher_is_better: true\n" for metric, aggregation in metrics)
    return f"""\
# Tiny offline {benchmark.upper()} (built by revision_plugin.testing.tiny_eval_data): the real {benchmark}
# task's functions on a local parquet file.
task: revision_tiny_{benchmark}
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {benchmark}/test.parquet
test_split: test
output_type: generate_until
doc_to_visual: !function {utils}.{benchmark}_doc_to_visual
doc_to_text: !function {utils}.{benchmark}_doc_to_text
doc_to_target: "answer"
generation_kwargs:
  max_new_tokens: 8
  temperature: 0
  do_sample: false
process_results: !function {utils}.{benchmark}_process_results
metric_list:
{metric_list}lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: "\\nAnswer the question using a single word or phrase."
metadata:
  - version: 0.0
"""


_TINY_TASK_YAML = {
    "revision_tiny_pope": _tiny_task_yaml("pope", (("pope_accuracy", "pope_aggregate_accuracy"),
                                                   ("pope_f1_score", "pope_aggregate_f1_score"))),
    "revision_tiny_mme": _tiny_task_yaml("mme", (("mme_perception_score", "mme_aggregate_results"),
                                                 ("mme_cognition_score", "mme_aggregate_results"))),
}


def build_tiny_eval_tasks(workdir: str | Path, n_per_split: int = 4, pairs_per_category: int = 2) -> Path:
    """Data plus an ``--include_path`` folder with ``revision_tiny_pope`` / ``revision_tiny_mme``.

    Returns the folder to pass as ``--include_path``.
    """
    workdir = Path(workdir)
    build_tiny_eval_data(workdir, n_per_split, pairs_per_category)
    for name, text in _TINY_TASK_YAML.items():
        (workdir / f"{name}.yaml").write_text(text)
    return workdir


# ----------------------------------------------------------------------------- revision eval fixtures


def checkpoint_with_template(checkpoint: str | Path, out_dir: str | Path, conv_template: str | None) -> Path:
    """A copy of ``checkpoint`` whose ``config.json`` names ``conv_template`` (or lacks the key).

    ``revision_plugin.hosts.llava.finalize_checkpoint`` writes ``revision_conv_template`` (LLaVA's
    ``--version``) itself; this copy rewrites it so one tiny checkpoint can stand for checkpoints
    trained with other templates (or older ones without the key). The original stays untouched.
    """
    import json
    import shutil

    from revision_plugin.lmms.provenance import CONV_TEMPLATE_KEY

    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(checkpoint, out, ignore=shutil.ignore_patterns("checkpoint-*", ".complete"))
    config = json.loads((out / "config.json").read_text())
    config.pop(CONV_TEMPLATE_KEY, None)
    if conv_template is not None:
        config[CONV_TEMPLATE_KEY] = conv_template
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


_FAILING_TASKS = {
    # two <image> tokens in the prompt, one image in the document
    "revision_tiny_badimage": ("lmms_eval.tasks.pope.utils.pope_process_results", "tiny_fail_utils.two_image_tokens"),
    # the task's module cannot be imported
    "revision_tiny_importerror": ("tiny_broken_utils.process", "lmms_eval.tasks.pope.utils.pope_doc_to_text"),
    # scores nothing: no metric in the results
    "revision_tiny_nometrics": ("tiny_fail_utils.no_metrics", "lmms_eval.tasks.pope.utils.pope_doc_to_text"),
}


def build_tiny_failure_tasks(workdir: str | Path, n_per_split: int = 1) -> Path:
    """``--include_path`` folder with one task per way a task can fail (for the runner tests)."""
    workdir = Path(workdir)
    build_tiny_pope(workdir / "pope", n_per_split)
    (workdir / "tiny_fail_utils.py").write_text(
        "def two_image_tokens(doc, lmms_eval_specific_kwargs=None):\n"
        "    return '<image> <image>\\n' + doc['question']\n\n\n"
        "def no_metrics(doc, results):\n    return {}\n")
    (workdir / "tiny_broken_utils.py").write_text("raise ImportError('tiny_broken_utils: broken on purpose')\n")
    for name, (process, to_text) in _FAILING_TASKS.items():
        (workdir / f"{name}.yaml").write_text(f"""\
task: {name}
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: pope/test.parquet
test_split: test
output_type: generate_until
doc_to_visual: !function lmms_eval.tasks.pope.utils.pope_doc_to_visual
doc_to_text: !function {to_text}
doc_to_target: "answer"
generation_kwargs:
  max_new_tokens: 4
process_results: !function {process}
metric_list:
  - metric: pope_accuracy
    aggregation: !function lmms_eval.tasks.pope.utils.pope_aggregate_accuracy
    higher_is_better: true
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: ""
metadata:
  - version: 0.0
""")
    return workdir


def build_fake_hub_dataset(cache_dir: str | Path, repo_id: str, files: dict[str, str | Path],
                           commit: str = "0" * 40) -> Path:
    """Lay ``files`` out as the HF hub cache does for a downloaded dataset repo (snapshot +
    ``refs/main``), so ``snapshot_download(..., local_files_only=True)`` finds it offline."""
    import shutil

    repo = Path(cache_dir) / f"datasets--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for rel, src in files.items():
        (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, snapshot / rel)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
