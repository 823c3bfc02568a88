"""`revision fit`, `revision align` and `revision demo` through the real entry point."""

import subprocess
import sys

import numpy as np
import pytest
from align_data import clouds
from torch.testing import assert_close

from revision_plugin.align import fit_operator, load_operator, train_mode
from revision_plugin.cli import main


@pytest.fixture
def npy_pair(tmp_path):
    text, image = clouds()
    np.save(tmp_path / "text.npy", text.astype(np.float32))
    np.save(tmp_path / "image.npy", image.astype(np.float32))
    return tmp_path / "text.npy", tmp_path / "image.npy"


def test_fit_then_align(tmp_path, npy_pair, capsys):
    text, image = npy_pair
    op_dir = tmp_path / "op"
    assert main(["fit", "--method", "realign", "--text", str(text), "--image", str(image), "--out", str(op_dir),
                 "-o", "centroid_iters=3", "--encoder-id", "enc", "--no-progress"]) == 0
    operator = load_operator(op_dir)
    assert operator.info.options["centroid_iters"] == 3 and operator.info.encoder_id == "enc"
    expected = fit_operator("realign", text, image, centroid_iters=3)
    assert_close(operator.drifts, expected.drifts, rtol=0, atol=0)

    out = tmp_path / "aligned.npy"
    assert main(["align", "--operator", str(op_dir), "--in", str(text), "--out", str(out), "--chunk-rows", "64",
                 "--no-progress"]) == 0
    aligned = np.load(out)
    assert aligned.dtype == np.float32 and aligned.shape == (600, 12)
    assert_close(aligned, operator(np.load(text).astype(np.float64)).astype(np.float32), rtol=0, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aligned.npy", "image.npy", "op", "text.npy"]  # no temp file left
    assert "aligned 600 rows" in capsys.readouterr().out


def test_align_image_side_and_train_mode(tmp_path, npy_pair):
    text, image = npy_pair
    op_dir = tmp_path / "c3"
    assert main(["fit", "--method", "c3", "--text", str(text), "--image", str(image), "--out", str(op_dir),
                 "-o", "seed=5", "--no-progress"]) == 0
    operator = load_operator(op_dir)
    main(["align", "--operator", str(op_dir), "--in", str(image), "--out", str(tmp_path / "img.npy"), "--image", "--no-progress"])
    assert_close(np.load(tmp_path / "img.npy"), operator.align_image(np.load(image)), rtol=0, atol=1e-6)
    main(["align", "--operator", str(op_dir), "--in", str(text), "--out", str(tmp_path / "noisy.npy"), "--train-mode", "--no-progress"])
    with train_mode(operator):
        assert_close(np.load(tmp_path / "noisy.npy"), operator(np.load(text)), rtol=0, atol=1e-6)


def test_refuses_to_overwrite_and_reports_errors(tmp_path, npy_pair, capsys):
    text, image = npy_pair
    args = ["fit", "--method", "identity", "--text", str(text), "--image", str(image), "--out", str(tmp_path / "op"), "--no-progress"]
    assert main(args) == 0
    assert main(args) == 2
    assert "already holds an operator; pass --overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0

    bad = np.load(text)
    bad[42, 0] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    assert main(["align", "--operator", str(tmp_path / "op"), "--in", str(tmp_path / "bad.npy"),
                 "--out", str(tmp_path / "o.npy"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "bad.npy: row 42 has NaN or Inf values; fix or remove that row first" in err
    assert "--skip-bad" not in err  # align has no such flag, so it must not suggest one
    assert not (tmp_path / "o.npy").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    np.save(tmp_path / "wide.npy", np.ones((3, 16), dtype=np.float32))
    assert main(["align", "--operator", str(tmp_path / "op"), "--in", str(tmp_path / "wide.npy"),
                 "--out", str(tmp_path / "o.npy")]) == 2
    assert "wide.npy: " in (err := capsys.readouterr().err) and "fitted for 12-dim embeddings, these are 16-dim" in err


@pytest.mark.parametrize("out, message", [
    ("outdir/", "give a path ending in .npy"),
    ("aligned.txt", "give a path ending in .npy"),
    ("existing_dir.npy", "is a directory; give a file path"),
])
def test_align_refuses_an_output_that_is_not_an_npy_file(tmp_path, npy_pair, capsys, out, message):
    text, image = npy_pair
    assert main(["fit", "--method", "identity", "--text", str(text), "--image", str(image), "--out", str(tmp_path / "op"),
                 "--no-progress"]) == 0
    (tmp_path / "existing_dir.npy").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    for extra in ([], ["--overwrite"]):  # the same answer with --overwrite: nothing is replaced
        assert main(["align", "--operator", str(tmp_path / "op"), "--in", str(text), "--out", str(tmp_path / out),
                     "--no-progress", *extra]) == 2
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_align_refuses_an_empty_input(tmp_path, npy_pair, capsys):
    text, image = npy_pair
    assert main(["fit", "--method", "identity", "--text", str(text), "--image", str(image), "--out", str(tmp_path / "op"),
                 "--no-progress"]) == 0
    np.save(tmp_path / "empty.npy", np.zeros((0, 12), dtype=np.float32))
    assert main(["align", "--operator", str(tmp_path / "op"), "--in", str(tmp_path / "empty.npy"),
                 "--out", str(tmp_path / "o.npy")]) == 2
    assert "empty.npy: no rows to align" in capsys.readouterr().err
    assert not (tmp_path / "o.npy").exists()


def test_unknown_option_key_value_syntax(npy_pair, tmp_path, capsys):
    text, image = npy_pair
    with pytest.raises(SystemExit):
        main(["fit", "--method", "realign", "--text", str(text), "--image", str(image), "--out", str(tmp_path), "-o", "noequals"])
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_demo_prints_the_gap_table(tmp_path, capsys):
    assert main(["demo", "--geometry-only", "--rows", "3000", "--dim", "32", "--out", str(tmp_path), "--no-report"]) == 0
    out = capsys.readouterr().out
    for label in ("identity", "mean_shift", "c3", "realign", "blockwise", "realign(iters=4)"):
        assert f"\n{label} " in out
    assert (tmp_path / "operators" / "realign" / "operator.json").is_file()
    assert (tmp_path / "operators" / "realign_iters4" / "operator.safetensors").is_file()


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "revision_plugin.cli", "fit", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "realign: centroid_iters=1" in result.stdout and "torchrun" in result.stdout


def test_an_unknown_flag_is_reported_by_its_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["align", "--operator", "op", "--in", "x.npy", "--out", "y.npy", "--skip-bad"])
    assert exit_info.value.code == 2
    assert "revision align: error: unrecognized arguments: --skip-bad" in capsys.readouterr().err


_LOGGING_COMMAND = """
import logging, sys, types
from revision_plugin import cli

def run(args):
    logging.getLogger("accelerate.accelerator").info("a library's info")
    logging.getLogger("accelerate.accelerator").warning("a library's warning")
    logging.getLogger("revision_plugin.align").info("our progress")
    return 0

sys.modules["logging_command"] = types.SimpleNamespace(add_arguments=lambda parser: None, run=run)
cli.COMMANDS["logs"] = ("logging_command", "logs from us and from a library")
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_commands_log_our_progress_and_only_other_libraries_warnings(verbose):
    argv = ["-v", "logs"] if verbose else ["logs"]
    result = subprocess.run([sys.executable, "-c", _LOGGING_COMMAND, *argv], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "INFO revision_plugin.align: our progress" in result.stderr
    assert "WARNING accelerate.accelerator: a library's warning" in result.stderr
    assert ("a library's info" in result.stderr) == verbose
