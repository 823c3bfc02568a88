"""The study's step cache and training guard, without running the study: a step is skipped only
on a marker with its fingerprint; a damaged or stale marker means the step is redone from an
empty folder; a run that logged only zero losses stops the study."""

import json

import pytest

from revision_plugin.errors import RevisionError
from revision_plugin.study.pipeline import MARKER, Runner
from revision_plugin.study.stages import loss_summary


def _counting_step(calls: list):
    def fn(folder):
        calls.append(folder)
        (folder / "made.txt").write_text("work")
        return {"rows": 3}

    return fn


def test_a_step_is_cached_until_its_key_changes(tmp_path):
    calls = []
    first = Runner().step("embed", tmp_path / "embed", {"n": 1}, _counting_step(calls))
    again = Runner().step("embed", tmp_path / "embed", {"n": 1}, _counting_step(calls))
    assert (first.cached, again.cached, len(calls)) == (False, True, 1)
    assert again.summary == {"rows": 3} and again.seconds == pytest.approx(first.seconds)
    changed = Runner().step("embed", tmp_path / "embed", {"n": 2}, _counting_step(calls))
    assert not changed.cached and len(calls) == 2


@pytest.mark.parametrize("marker_text", ["{not json", '["a list"]', '{"fingerprint": "0", "summary": {}}', ""])
def test_a_damaged_or_stale_marker_redoes_the_step_from_an_empty_folder(tmp_path, marker_text):
    calls = []
    Runner().step("embed", tmp_path / "embed", {"n": 1}, _counting_step(calls))
    (tmp_path / "embed" / "leftover.txt").write_text("from an interrupted run")
    (tmp_path / "embed" / MARKER).write_text(marker_text)
    redone = Runner().step("embed", tmp_path / "embed", {"n": 1}, _counting_step(calls))
    assert not redone.cached and len(calls) == 2
    assert sorted(p.name for p in (tmp_path / "embed").iterdir()) == [MARKER, "made.txt"]
    assert json.loads((tmp_path / "embed" / MARKER).read_text())["summary"] == {"rows": 3}


def test_a_failed_step_leaves_no_marker_so_the_next_run_redoes_it(tmp_path):
    def broken(folder):
        raise RevisionError("boom")

    with pytest.raises(RevisionError, match="boom"):
        Runner().step("fit", tmp_path / "fit", {}, broken)
    assert not (tmp_path / "fit" / MARKER).exists()
    assert not Runner().step("fit", tmp_path / "fit", {}, _counting_step([])).cached


def test_the_loss_summary_reads_the_trainer_state_and_refuses_all_zero_losses(tmp_path):
    history = [{"loss": 2.5, "step": 1}, {"loss": 1.25, "step": 2}, {"train_runtime": 3.0, "step": 2}]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    assert loss_summary(tmp_path) == {"steps": 2, "loss_first": 2.5, "loss_last": 1.25}
    zero = [{"loss": 0.0, "step": 1}, {"loss": 0.0, "step": 2}]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": zero}))
    with pytest.raises(RevisionError, match="every logged loss is 0"):
        loss_summary(tmp_path)
