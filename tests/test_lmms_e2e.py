"""End to end, offline, on CPU: real lmms-eval runs the real ``mme`` and POPE tasks (lmms-eval's
own YAML prompts, ``process_results`` and aggregation) on tiny local datasets against the host's
tiny trained ReVision LLaVA checkpoint through ``--model revision_llava``; the results file is
written where the CLI writes it and ``revision compare`` reads it back. A known-correct answer
file scores 100% through the same task code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")
pytest.importorskip("llava")

from revision_plugin.errors import BadInputError, RevisionError
from revision_plugin.testing import tiny_eval_data as tiny

ROOT = Path(__file__).resolve().parents[1]


def _task_manager():
    import lmms_eval
    from lmms_eval.tasks import TaskManager

    builtin = Path(lmms_eval.__file__).parent / "tasks"
    return TaskManager("ERROR", include_path=[str(ROOT / "eval" / "tasks"), str(builtin / "mme"), str(builtin / "pope")],
                       include_defaults=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny.build_tiny_eval_data(tmp_path_factory.mktemp("tiny_eval_data"), n_per_split=2, pairs_per_category=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The host engineer's tiny trained checkpoint (built once per test session, shared by xdist workers)."""
    try:
        from revision_plugin.hosts.llava import register
        from revision_plugin.testing.tiny_llava import (
            build_tiny_llava_checkpoint,
            pytest_shared_dir,
        )
    except ImportError as err:  # pragma: no cover - only before the host integration exists
        pytest.skip(f"host integration not available: {err}")
    try:
        register()
    except RevisionError as err:  # pragma: no cover - e.g. LLaVA not patched for this transformers
        pytest.skip(f"LLaVA host not usable here: {err}")
    # the same directory as the host tests (tests/test_llava_cycle.py): trained once per session
    return build_tiny_llava_checkpoint(pytest_shared_dir(tmp_path_factory))


def test_revision_llava_through_lmms_eval_end_to_end(tmp_path, data, checkpoint):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.loggers import EvaluationTracker

    from revision_plugin.cli import main

    out = tmp_path / "eval_out" / "realign"
    tracker = EvaluationTracker(output_path=str(out))
    results = simple_evaluate(
        model="revision_llava",  # resolved through lmms-eval's registry, i.e. our entry point
        model_args=f"pretrained={checkpoint},device=cpu,dtype=float32,max_new_tokens=8",
        tasks=[tiny.task_override("revision_mme", data["mme"]), tiny.task_override("revision_pope", data["pope"])],
        task_manager=_task_manager(), batch_size=4, log_samples=True, evaluation_tracker=tracker,
        verbosity="ERROR", datetime_str="20260101_000000",
    )
    samples = results.pop("samples")
    assert results["config"]["model_backend"].startswith("revision_plugin.lmms.model.RevisionLlava")
    n = {task: len(s) for task, s in samples.items()}
    assert n == {"revision_mme": len(tiny.known_answers(data["mme"])), "revision_pope": len(tiny.known_answers(data["pope"]))}
    answers = [r for task in samples.values() for s in task for r in s["filtered_resps"]]
    assert answers and all(isinstance(a, str) and a.strip() for a in answers)  # the model answered every question

    tracker.save_results_aggregated(results=results, samples=samples, datetime_str="20260101_000000")  # as the CLI
    files = list(out.rglob("*_results.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    for task, key in (("revision_mme", "mme_perception_score,none"), ("revision_mme", "mme_cognition_score,none"),
                      ("revision_mme", "mme_acc,none"),
                      ("revision_pope", "pope_accuracy,none"), ("revision_pope", "pope_f1_score,none"),
                      *(("revision_pope", f"pope_{s}_accuracy,none") for s in tiny.POPE_SPLITS)):
        assert isinstance(saved["results"][task][key], (int, float)), (task, key)
    assert saved["lmms_eval_version"]

    # the table tool reads the real file: MME and POPE present, the rest missing (never 0)
    assert main(["compare", str(out), "--out", str(tmp_path / "t.json")]) == 0
    row = json.loads((tmp_path / "t.json").read_text())["rows"][0]
    assert row["method"] == "realign" and row["n_present"] == 2 and row["avg"] is None
    assert row["values"]["MME"] is not None and row["values"]["POPE"] is not None and row["values"]["MMStar"] is None


def test_batching_loglikelihood_and_empty_answers(data, checkpoint):
    from lmms_eval.api.instance import Instance

    from revision_plugin.lmms import RevisionLlava

    model = RevisionLlava(pretrained=str(checkpoint), device="cpu", dtype="float32", batch_size=3)
    docs = tiny.read_docs(data["pope"])
    model.task_dict = {"pope": {"test": docs}}

    def visual(doc):
        return [doc["image"]]

    questions = ["What colour is the shape?", "Describe the image briefly.",
                 "What shape is in the picture? Answer the question using a single word or phrase."]

    def request(i, question, until=None):
        gen = {"max_new_tokens": 10, "temperature": 0, "do_sample": False, **({"until": until} if until else {})}
        return Instance("generate_until", (question, gen, visual, i, "pope", "test"), idx=0,
                        metadata={"task": "pope", "doc_id": i, "repeats": 1})

    reqs = [request(i, q) for i, q in enumerate(questions)]
    batched = model.generate_until(reqs)  # one left-padded batch of 3 prompts of different lengths
    model.batch_size_per_gpu = 1
    assert model.generate_until(reqs) == batched
    assert all(batched)

    # a stop string that swallows every answer: counted, and fatal with empty_answers=error
    cut = [request(i, q, until=[a[:1]]) for i, (q, a) in enumerate(zip(questions, batched))]
    assert model.generate_until(cut) == ["", "", ""] and model.empty_count == 3
    model.empty_answers = "error"
    with pytest.raises(RevisionError, match="3/3 empty answers"):
        model.generate_until(cut)

    # loglikelihood: sum of continuation log-probs; the greedy answer is what generation produced
    def ll_request(continuation):
        return Instance("loglikelihood", (questions[0], continuation, visual, 0, "pope", "test"), idx=0,
                        metadata={"task": "pope", "doc_id": 0, "repeats": 1})

    (good, greedy), (bad, _) = model.loglikelihood([ll_request(batched[0]), ll_request("zebra zebra zebra")])
    assert good < 0 and bad < good
    # only the continuation is scored: not the end-of-turn separator (</s>) the template appends
    _, cont = model.continuation_ids(questions[0], "zebra", 1)
    assert model.tokenizer.eos_token_id not in cont.tolist() and model.tokenizer.decode(cont).strip() == "zebra"
    assert greedy  # the model's own greedy answer (cut at max_new_tokens, no </s>) is greedy under scoring
    # batched scoring (3 per forward) equals one at a time
    lls = [ll_request(c) for c in (batched[0], "zebra zebra zebra", "a blue one", batched[1])]
    model.batch_size_per_gpu = 3
    together = model.loglikelihood(lls)
    model.batch_size_per_gpu = 1
    alone = model.loglikelihood(lls)
    assert [g for _, g in together] == [g for _, g in alone]
    assert [v for v, _ in together] == pytest.approx([v for v, _ in alone], abs=1e-4)

    # <image> tokens are checked against the document's images
    with pytest.raises(BadInputError, match=r"task pope doc 0: the prompt has 2 <image> token\(s\) but the document has 1"):
        model.generate_until([request(0, "<image> <image>\nWhat colour is the shape?")])
    with pytest.raises(BadInputError, match="has 1 <image> token"):
        model.loglikelihood([Instance("loglikelihood", ("<image>\nhi", "yes", None, 0, "pope", "test"), idx=0,
                                      metadata={"task": "pope", "doc_id": 0, "repeats": 1})])


def test_known_correct_answers_score_100_percent_with_the_real_tasks(data):
    """The answer key, fed through lmms-eval's own mme/pope code (harness and bare functions)."""
    from lmms_eval.api.model import lmms
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks.mme.utils import mme_aggregate_results, mme_process_results
    from lmms_eval.tasks.pope.utils import (
        pope_aggregate_accuracy,
        pope_aggregate_f1_score,
        pope_process_results,
    )

    # 1) the bare metric functions on the answer file
    pope_docs, mme_docs = tiny.read_docs(data["pope"]), tiny.read_docs(data["mme"])
    pope_records = [pope_process_results(d, [a])["pope_accuracy"] for d, a in zip(pope_docs, tiny.known_answers(data["pope"]))]
    assert pope_aggregate_accuracy(pope_records) == 1.0 and pope_aggregate_f1_score(pope_records) == 1.0
    mme_records = [mme_process_results(d, [a]) for d, a in zip(mme_docs, tiny.known_answers(data["mme"]))]
    perception = [r["mme_perception_score"] for r in mme_records if "mme_perception_score" in r]
    cognition = [r["mme_cognition_score"] for r in mme_records if "mme_cognition_score" in r]
    n_p, n_c = len({r["category"] for r in perception}), len({r["category"] for r in cognition})
    assert n_p and n_c
    assert mme_aggregate_results(perception) == 200.0 * n_p and mme_aggregate_results(cognition) == 200.0 * n_c

    # 2) the same answers through the real harness (task YAMLs, filters, aggregation)
    class AnswerFile(lmms):
        is_simple = True

        def generate_until(self, requests):
            return [self.task_dict[t][s][i]["answer"] for _, _, _, i, t, s in (r.args for r in requests)]

        def loglikelihood(self, requests):
            raise NotImplementedError

        def generate_until_multi_round(self, requests):
            raise NotImplementedError

    results = simple_evaluate(model=AnswerFile(), tasks=[tiny.task_override("mme", data["mme"]),
                                                         tiny.task_override("pope", data["pope"])],
                              task_manager=_task_manager(), verbosity="ERROR")["results"]
    assert results["mme"]["mme_perception_score,none"] == 200.0 * n_p
    assert results["mme"]["mme_cognition_score,none"] == 200.0 * n_c
    assert results["pope"]["pope_accuracy,none"] == 1.0 and results["pope"]["pope_f1_score,none"] == 1.0
