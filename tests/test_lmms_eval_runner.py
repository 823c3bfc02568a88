"""`revision eval` through the real lmms-eval on the tiny trained checkpoint, offline: the
checkpoint's own chat template, provenance in every results file, skip-if-finished by
fingerprint, a non-zero exit for each failure kind, compare refusing mixed checkpoints,
--pending checking fingerprints, and the smoke suite running from a (fake) HF cache offline.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")
pytest.importorskip("llava")

from revision_plugin.cli import main
from revision_plugin.errors import RevisionError
from revision_plugin.lmms.provenance import CONV_TEMPLATE_KEY, checkpoint_fingerprint
from revision_plugin.testing import tiny_eval_data as tiny

ROOT = Path(__file__).resolve().parents[1]
MODEL_ARGS = "device=cpu,dtype=float32,max_new_tokens=6"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from revision_plugin.hosts.llava import register
    from revision_plugin.testing.tiny_llava import (
        build_tiny_llava_checkpoint,
        pytest_shared_dir,
    )

    register()
    base = build_tiny_llava_checkpoint(pytest_shared_dir(tmp_path_factory))
    root = tmp_path_factory.mktemp("ckpts")
    # finalize_checkpoint records the training --version (the tiny stage 2 trains with v1); copies
    # with the key rewritten let one tiny checkpoint stand for a Llama-3 one and one without the key.
    assert json.loads((Path(base) / "config.json").read_text())["revision_conv_template"] == "v1"
    return {"llama3": tiny.checkpoint_with_template(base, root / "llama3-llava", "llama_3"),
            "vicuna": tiny.checkpoint_with_template(base, root / "vicuna-llava", "vicuna_v1"),
            "nokey": tiny.checkpoint_with_template(base, root / "nokey-llava", None)}


@pytest.fixture(scope="module")
def pope(tmp_path_factory):
    return tiny.build_tiny_pope(tmp_path_factory.mktemp("pope"), n_per_split=2)  # 6 docs


def _eval(ckpt, out, *extra, tasks="revision_pope", data=None):
    argv = ["eval", "--pretrained", str(ckpt), "--output-path", str(out), "--tasks", tasks,
            "--model-args", MODEL_ARGS, "--batch-size", "4", *extra]
    if data:
        argv += ["--data", f"revision_pope={data}"]
    return main(argv)


def _results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.rglob("*_results.json"))]


def test_template_from_checkpoint_provenance_and_skip(ckpts, pope, tmp_path, capsys):
    out = tmp_path / "out"
    assert _eval(ckpts["llama3"], out, data=pope) == 0
    [res] = _results(out)
    prov = res["revision"]
    # the Llama-3 checkpoint is prompted in its own format, by default
    assert prov["conv_template"] == {"used": "llama_3", "checkpoint": "llama_3", "requested": None}
    assert prov["tasks"]["revision_pope"]["prompt_example"].startswith("<|start_header_id|>system<|end_header_id|>")
    assert prov["notes"] == []
    # real versions, resolved checkpoint, fingerprint, tower, judge, empty-answer count
    import importlib.metadata as md

    assert prov["versions"]["lmms_eval"] == md.version("lmms_eval") == "0.7.3"
    assert prov["versions"]["transformers"] == md.version("transformers")
    assert prov["versions"]["torch"] == md.version("torch") and prov["versions"]["revision_plugin"]
    assert prov["checkpoint"] == {"path": str(ckpts["llama3"].resolve()), "fingerprint": checkpoint_fingerprint(ckpts["llama3"])}
    assert prov["tower"]["alignment_method"] == "realign" and prov["tower"]["num_tokens"] == 1
    assert prov["tower"]["encoder_id"]
    assert prov["tasks"]["revision_pope"]["judge"] == "none"
    assert prov["tasks"]["revision_pope"]["empty_answers"] == 0 and prov["tasks"]["revision_pope"]["answers"] == 6
    # same checkpoint again: skipped (nothing new written)
    capsys.readouterr()
    assert _eval(ckpts["llama3"], out, data=pope) == 0
    assert "| revision_pope | skipped |" in capsys.readouterr().out and len(_results(out)) == 1
    # an explicit other template is used, with a warning recorded in the results
    assert _eval(ckpts["llama3"], tmp_path / "forced", "--model-args", MODEL_ARGS + ",conv_template=vicuna_v1",
                 data=pope) == 0
    forced = _results(tmp_path / "forced")[0]["revision"]
    assert forced["conv_template"]["used"] == "vicuna_v1" and "overrides" in forced["notes"][0]
    assert forced["tasks"]["revision_pope"]["prompt_example"].startswith("A chat between")
    # no key in the checkpoint: vicuna_v1 fallback, logged and recorded
    assert _eval(ckpts["nokey"], tmp_path / "nokey", data=pope) == 0
    nokey = _results(tmp_path / "nokey")[0]["revision"]
    assert nokey["conv_template"]["used"] == "vicuna_v1" and CONV_TEMPLATE_KEY in nokey["notes"][0]

    # compare shows provenance, and refuses a folder holding two checkpoints under one label
    assert main(["compare", str(out), "--out", str(tmp_path / "t.json")]) == 0
    row = json.loads((tmp_path / "t.json").read_text())["rows"][0]
    assert row["provenance"]["revision_pope"]["checkpoint"]["fingerprint"] == prov["checkpoint"]["fingerprint"]
    assert row["lmms_eval_versions"] == ["0.7.3"]
    # another checkpoint into the same folder: refused before its model loads, nothing written
    capsys.readouterr()
    assert _eval(ckpts["vicuna"], out, data=pope) == 2
    assert "holds results of another checkpoint" in capsys.readouterr().err and len(_results(out)) == 1
    # results of two checkpoints copied into one folder anyway: compare refuses it
    assert _eval(ckpts["vicuna"], tmp_path / "vicuna", data=pope) == 0
    [vicuna_file] = (tmp_path / "vicuna").rglob("*_results.json")
    shutil.copy(vicuna_file, next(out.rglob("*_results.json")).parent / f"copied_{vicuna_file.name}")
    assert main(["compare", str(out)]) == 2
    assert "mixes results of 2 different checkpoints" in capsys.readouterr().err

    # --pending checks the fingerprint of the entry's checkpoint
    import yaml

    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump([{"model": "revision_llava", "model_args": f"pretrained={ckpts[name]}",
                                       "tasks": "revision_pope", "output_path": str(tmp_path / out_dir)}
                                      for name, out_dir in (("llama3", "forced"), ("vicuna", "forced"))]))
    assert main(["compare", "--pending", str(config)]) == 0
    assert "1 entries finished, 1 to run" in capsys.readouterr().out


def test_resume_skips_only_results_made_the_same_way(ckpts, pope, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    assert _eval(ckpts["llama3"], out, data=pope) == 0
    # the same checkpoint with another max_new_tokens: the old result is not this run's, so it runs again
    capsys.readouterr()
    shorter = MODEL_ARGS.replace("max_new_tokens=6", "max_new_tokens=4")
    assert _eval(ckpts["llama3"], out, "--model-args", shorter, data=pope) == 0
    assert "| revision_pope | ok |" in capsys.readouterr().out and len(_results(out)) == 2
    assert "made with other settings (max_new_tokens 6 -> 4): running it again" in caplog.text
    # now it is finished for these settings; naming the checkpoint's own template changes nothing
    assert _eval(ckpts["llama3"], out, "--model-args", shorter + ",conv_template=llama_3", data=pope) == 0
    assert "| revision_pope | skipped |" in capsys.readouterr().out and len(_results(out)) == 2
    # the same task on another --data file is another evaluation
    other = tiny.build_tiny_pope(tmp_path / "pope2", n_per_split=1)
    assert _eval(ckpts["llama3"], out, "--model-args", shorter, data=other) == 0
    assert "| revision_pope | ok |" in capsys.readouterr().out and len(_results(out)) == 3
    # a results file cut short (killed while saving): named, nothing re-run behind the user's back
    newest = sorted(out.rglob("*_results.json"))[-1]
    newest.write_text(newest.read_text()[:200])
    assert _eval(ckpts["llama3"], out, "--model-args", shorter, data=other) == 2
    err = capsys.readouterr().err
    assert f"{newest}: not a readable lmms-eval results json" in err and "delete or move it" in err
    assert len(list(out.rglob("*_results.json"))) == 3


def test_runner_exits_nonzero_on_each_failure_kind(ckpts, pope, tmp_path, capsys):
    folder = tiny.build_tiny_failure_tasks(tmp_path / "fail")
    # start-up failures: missing checkpoint, rejected model argument, misspelt task, a prefetch-only
    # option (exit 2, one line, nothing evaluated)
    assert main(["eval", "--pretrained", str(tmp_path / "missing"), "--output-path", str(tmp_path / "o")]) == 2
    assert "no such checkpoint folder" in capsys.readouterr().err
    assert _eval(ckpts["llama3"], tmp_path / "o", "--model-args", "temprature=0") == 2
    assert "unknown model_args ['temprature']" in capsys.readouterr().err
    assert _eval(ckpts["llama3"], tmp_path / "o", tasks="revision_pop") == 2
    assert "unknown task(s): revision_pop (did you mean revision_pope?)" in capsys.readouterr().err
    assert _eval(ckpts["llama3"], tmp_path / "o", "--dry-run", data=pope) == 2
    assert "--dry-run belongs to `revision eval prefetch`" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # task failures: each reported, the good task still written, exit 1
    tasks = "revision_tiny_badimage,revision_pope,revision_tiny_importerror,revision_tiny_nometrics"
    assert _eval(ckpts["llama3"], tmp_path / "o", "--include-path", str(ROOT / "eval" / "tasks"),
                 "--include-path", str(folder), tasks=tasks, data=pope) == 1
    table = capsys.readouterr().out
    assert "2 <image> token(s) but the document has 1 image(s)" in table
    assert "| revision_tiny_importerror | failed | ImportError: tiny_broken_utils" in table
    assert "| revision_tiny_nometrics | failed |" in table and "no numeric metric" in table
    assert "| revision_pope | ok |" in table and "1 ok, 0 skipped, 3 failed" in table
    assert [list(r["results"]) for r in _results(tmp_path / "o")] == [["revision_pope"]]


def test_smoke_suite_runs_offline_from_the_hf_cache(ckpts, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as hub_constants

    from revision_plugin.lmms import datasets as suite_data

    cache = tmp_path / "hub"
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    for name in suite_data.OFFLINE_ENV:
        monkeypatch.setenv(name, "0")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", hub_constants.HF_HUB_OFFLINE)
    # nothing cached yet: refused before the model loads, naming prefetch
    with pytest.raises(RevisionError, match="revision eval prefetch"):
        suite_data.offline_snapshots(["revision_smoke_mme"])
    mme = tiny.build_tiny_mme(tmp_path / "mme", pairs_per_category=3)  # 30 questions, 15 images
    pope = tiny.build_tiny_pope(tmp_path / "pope", n_per_split=10)  # 30 questions
    tiny.build_fake_hub_dataset(cache, suite_data.DATASETS["revision_mme"].repo_id, {"data/test-00000.parquet": mme})
    tiny.build_fake_hub_dataset(cache, suite_data.DATASETS["revision_pope"].repo_id, {"data/test-00000.parquet": pope})
    out = tmp_path / "smoke"
    assert main(["eval", "--pretrained", str(ckpts["llama3"]), "--output-path", str(out), "--suite", "smoke",
                 "--tasks", "revision_smoke_mme,revision_smoke_pope", "--offline", "--model-args", MODEL_ARGS]) == 0
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"
    results = {t: r for r in _results(out) for t in r["results"]}
    assert results["revision_smoke_pope"]["n-samples"]["revision_smoke_pope"]["effective"] == 24
    assert results["revision_smoke_mme"]["n-samples"]["revision_smoke_mme"]["effective"] == 24  # 12 whole pairs
    assert "mme_acc,none" in results["revision_smoke_mme"]["results"]["revision_smoke_mme"]


def test_prefetch_plan_covers_every_suite_dataset(capsys, caplog):
    from revision_plugin.compare import suite_tasks
    from revision_plugin.lmms import datasets as suite_data

    tasks = [*suite_tasks("standard"), *suite_tasks("single")]
    planned = suite_data.plan(tasks)
    assert {repo for repo, _ in planned} == {d.repo_id for d in suite_data.DATASETS.values()}
    assert all(rev is None for _, rev in planned)  # nothing pinned without a verified hash (see the module doc)
    assert main(["eval", "prefetch", "--dry-run"]) == 0
    assert "UNPINNED" in caplog.text
    assert "VisuLogic/VisuLogic@main" in capsys.readouterr().out
    # --suite is honoured (quick: 3 datasets, not VisuLogic's whole repository); run options are refused
    assert main(["eval", "prefetch", "--suite", "quick", "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "lmms-lab-encoder/POPE@main" in listed and "VisuLogic" not in listed
    assert main(["eval", "prefetch", "--pretrained", "/ckpt/llava-realign", "--limit", "5"]) == 2
    assert "--pretrained, --limit: options of `revision eval` (run)" in capsys.readouterr().err
