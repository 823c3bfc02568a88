"""The plugin's bad-input errors in LLaVA's command-line training: one ``revision: error:`` line
per process and a non-zero exit, not the host's traceback, through every launcher users take
(``python -m llava.train.train``, the stage-1 script under torchrun and deepspeed,
``train_mem``); ``$REVISION_TRACEBACK=1`` brings the traceback back, other exceptions keep
theirs, and the Python API (``train_llava``) still raises. Every run fails before step 1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from revision_plugin.errors import TRACEBACK_ENV, BadInputError, MissingFileError, RevisionError
from revision_plugin.hosts.llava import run_train_command, train_llava
from revision_plugin.testing.tiny_llava import pytest_shared_dir, stage1_args, tiny_llava_data

REPO = Path(__file__).resolve().parents[1]
TRACEBACK = "Traceback (most recent call last)"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_llava_data(pytest_shared_dir(tmp_path_factory))


def _typo_spec(data) -> str:
    return data.spec_cached.replace("operator=", "operater=")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != TRACEBACK_ENV}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's deepspeed/torchrun
    return {**env, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def _run(cmd: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=_env(**env), capture_output=True, text=True, timeout=300, check=False)


def _assert_one_line(result: subprocess.CompletedProcess, message: str) -> None:
    err = result.stderr
    assert result.returncode != 0, err[-3000:]
    lines = [line for line in err.splitlines() if "revision: error:" in line]
    assert len(lines) == 1 and lines[0].startswith("revision: error: ") and message in lines[0], err[-3000:]
    assert err.count(message) == 1, err[-3000:]
    # no traceback of ours (a launcher's own summary may follow, with its own traceback)
    assert "revision_plugin" not in err.replace(lines[0], "") and "llava/train/train.py" not in err, err[-3000:]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_python_m_bad_spec_is_one_line_and_the_opt_out_restores_the_traceback(data, tmp_path):
    args = stage1_args(data, tmp_path / "out", spec=_typo_spec(data))
    result = _run([sys.executable, "-m", "llava.train.train", *args])
    _assert_one_line(result, "unknown key(s) ['operater']")
    assert result.returncode == 2 and TRACEBACK not in result.stderr

    debug = _run([sys.executable, "-m", "llava.train.train", *args], **{TRACEBACK_ENV: "1"})
    assert debug.returncode != 0 and TRACEBACK in debug.stderr and "revision: error:" not in debug.stderr
    last = debug.stderr.strip().splitlines()[-1]
    assert last.startswith("revision_plugin.errors.BadInputError:") and "operater" in last


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_stage1_script_bad_records_file_is_one_line(data, tmp_path, launcher):
    """The shipped script as users run it (`deepspeed --module` / `torchrun -m`), a records file
    that is not JSON; one process, no DeepSpeed config (nothing to compile; same entry point)."""
    if launcher == "deepspeed" and shutil.which("deepspeed", path=_env()["PATH"]) is None:
        pytest.skip("no deepspeed launcher")
    bad = tmp_path / "stage1.json"
    bad.write_text('[{"id": "cap-1",')
    command = {"torchrun": f"{sys.executable} -m torch.distributed.run --nproc_per_node 1 --master_addr 127.0.0.1",
               "deepspeed": "deepspeed --num_gpus 1"}[launcher]
    flags = ["--llm", str(data.llm), "--encoder", "hf_clip", "--encoder-model", str(data.encoder),
             "--operator", str(data.operator), "--text-store", str(data.text_store), "--data", str(bad),
             "--output-dir", str(tmp_path / "out"), "--deepspeed", "none", "--tf32", "False", "--workers", "0",
             "--offline", "1", "--", "--bf16", "False", "--gradient_checkpointing", "False"]
    result = _run(["bash", str(REPO / "scripts" / "stage1_pretrain.sh"), *flags],
                  LAUNCHER=f"{command} --master_port {_free_port()}", TRAIN_MODULE="llava.train.train")
    _assert_one_line(result, f"{bad}: invalid JSON")
    summary = {"torchrun": "exitcode  : 2", "deepspeed": "exits with return code = 2"}[launcher]
    assert summary in result.stdout + result.stderr  # the launcher's own summary, after our line


def test_train_mem_goes_through_the_same_entry(tmp_path):
    """train_mem.py (what the scripts launch when flash_attn is installed) passes
    attn_implementation="flash_attention_2" through the same handler (train() replaced:
    flash attention needs CUDA)."""
    code = ("import runpy, llava.train.train as t\n"
            "from revision_plugin.errors import BadInputError\n"
            "def train(attn_implementation=None):\n"
            "    raise BadInputError(f'refused ({attn_implementation})')\n"
            "t.train = train\n"
            "runpy.run_module('llava.train.train_mem', run_name='__main__')\n")
    result = _run([sys.executable, "-c", code])
    _assert_one_line(result, "refused (flash_attention_2)")
    assert result.returncode == 2


def test_other_failures_keep_their_traceback(data, tmp_path):
    args = stage1_args(data, tmp_path / "out")
    args[args.index("--model_name_or_path") + 1] = str(tmp_path / "no-such-llm")
    result = _run([sys.executable, "-m", "llava.train.train", *args])
    assert result.returncode != 0 and TRACEBACK in result.stderr and "revision: error:" not in result.stderr


def test_the_python_api_still_raises(data, tmp_path):
    with pytest.raises(BadInputError, match="operater"):
        train_llava(stage1_args(data, tmp_path / "out", spec=_typo_spec(data)))


@pytest.mark.parametrize("missing", ["operator", "records"])
def test_a_missing_file_is_one_of_ours(data, tmp_path, missing):
    """A missing operator folder or records file is a MissingFileError: a RevisionError, so the
    command line prints it as one line (as above), and still a FileNotFoundError for callers."""
    gone = tmp_path / f"no-such-{missing}"
    if missing == "operator":
        spec = data.spec_cached.replace(str(data.operator), str(gone))
        assert spec != data.spec_cached
        args = stage1_args(data, tmp_path / "out", spec=spec)
    else:
        args = stage1_args(data, tmp_path / "out", data_path=gone)
    with pytest.raises(MissingFileError, match=str(gone)) as raised:
        train_llava(args)
    assert isinstance(raised.value, RevisionError) and isinstance(raised.value, FileNotFoundError)


def _raise(err: BaseException):
    def train(**kwargs):
        raise err

    return train


def test_run_train_command(monkeypatch, capsys):
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit) as exited:
        run_train_command(_raise(BadInputError("data.json: 3 of 9 records cannot be trained on\ndata.json: record 1: x\n")))
    assert exited.value.code == 2
    assert capsys.readouterr().err == "revision: error: data.json: 3 of 9 records cannot be trained on\ndata.json: record 1: x\n"

    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(SystemExit):
        run_train_command(_raise(RevisionError("node-local path missing")))
    assert capsys.readouterr().err == "[rank3]: revision: error: node-local path missing\n"
    with pytest.raises(SystemExit):  # every line is the rank's: ranks' output interleaves
        run_train_command(_raise(BadInputError("data.json: 1 of 9 records cannot be trained on\ndata.json: record 4: x")))
    assert capsys.readouterr().err == ("[rank3]: revision: error: data.json: 1 of 9 records cannot be trained on\n"
                                       "[rank3]: data.json: record 4: x\n")

    with pytest.raises(ZeroDivisionError):  # a bug keeps its exception (and so its traceback)
        run_train_command(_raise(ZeroDivisionError()))
    for on in ("1", "yes"):
        monkeypatch.setenv(TRACEBACK_ENV, on)
        with pytest.raises(BadInputError):
            run_train_command(_raise(BadInputError("x")))
        assert capsys.readouterr().err == ""
    monkeypatch.setenv(TRACEBACK_ENV, "false")
    with pytest.raises(SystemExit):
        run_train_command(_raise(BadInputError("x")))
    assert capsys.readouterr().err.endswith("revision: error: x\n")


def test_an_error_from_a_dataloader_worker_keeps_only_its_message(monkeypatch, capsys):
    from torch._utils import ExceptionWrapper

    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    try:
        raise BadInputError("store feats: row 7 is cut short")
    except BadInputError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")

    def train():
        wrapped.reraise()

    with pytest.raises(SystemExit):
        run_train_command(train)
    assert capsys.readouterr().err == "revision: error: store feats: row 7 is cut short\n"
