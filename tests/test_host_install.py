"""How users install the plugin and the host: a wheel (not editable) that carries the LLaVA
patches, and LLaVA from a git checkout (`git clone` + `pip install -e .`, as LLaVA's README and
research forks do), identified by content rather than by a llava-torch dist-info."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from revision_plugin.hosts import commands_patch as host_patch

REPO = Path(__file__).resolve().parents[1]
# LLaVA's own pyproject.toml (upstream repository), the parts that `pip install -e .` reads.
LLAVA_PYPROJECT = """\
[build-system]
requires = ["setuptools>=61.0"]
build-backend = "setuptools.build_meta"

[project]
name = "llava"
version = "1.2.2.post1"
requires-python = ">=3.8"

[tool.setuptools.packages.find]
exclude = ["assets*", "benchmark*", "docs", "dist*", "playground*", "scripts*", "tests*"]
"""
GIT = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test", "-c", "init.defaultBranch=main"]


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kwargs)


def original_llava(target: Path) -> Path:
    """A copy of the installed llava package brought back to the released sources."""
    shutil.copytree(host_patch.find_host().package_dir, target, ignore=shutil.ignore_patterns("__pycache__"))
    host_patch.patch_host(target, reverse=True)
    return target


def plugin_cli(python, *args, pythonpath: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return run([python, "-m", "revision_plugin.cli", *args], env=env, cwd=cwd)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel .` of a clean copy of the source tree (the tree itself stays untouched)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    tracked = run(["git", "ls-files", "-co", "--exclude-standard", "setup.py", "README.md", "revision_plugin"], cwd=REPO)
    for rel in tracked.stdout.split():
        if (REPO / rel).is_file():
            (source / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, source / rel)
    built = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", root / "dist", source])
    assert built.returncode == 0, built.stderr
    return next((root / "dist").glob("revision_plugin-*.whl"))


def test_the_wheel_carries_the_patches_and_patches_from_a_non_editable_install(wheel, tmp_path):
    shipped = sorted(p.name for p in host_patch.default_patch_dir().glob("*.patch"))
    with zipfile.ZipFile(wheel) as archive:
        inside = sorted(Path(n).name for n in archive.namelist() if n.startswith("revision_plugin/hosts/patches/"))
    assert shipped and inside == shipped

    site = tmp_path / "site"
    installed = run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, wheel])
    assert installed.returncode == 0, installed.stderr
    llava_dir = original_llava(tmp_path / "host" / "llava")

    where = run([sys.executable, "-c", "import revision_plugin.hosts.commands_patch as p; print(p.default_patch_dir())"],
                env={**os.environ, "PYTHONPATH": str(site)}, cwd=tmp_path)
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr  # not the source tree
    applied = plugin_cli(sys.executable, "patch-host", "--llava-dir", llava_dir, pythonpath=site, cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    assert host_patch.host_status(llava_dir).applied
    check = plugin_cli(sys.executable, "patch-host", "--llava-dir", llava_dir, "--check", pythonpath=site, cwd=tmp_path)
    assert check.returncode == 0 and "patched" in check.stdout


@pytest.fixture()
def llava_checkout(tmp_path) -> Path:
    """The released llava sources as a git repository, installed editable in a fresh venv."""
    checkout = tmp_path / "LLaVA"
    original_llava(checkout / "llava")
    (checkout / "pyproject.toml").write_text(LLAVA_PYPROJECT)
    for step in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "LLaVA 1.2.2.post1"]):
        assert run([*GIT, *step], cwd=checkout).returncode == 0
    return checkout


@pytest.fixture()
def fork_python(llava_checkout, tmp_path) -> Path:
    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", venv]).returncode == 0
    python = venv / "bin" / "python"
    # Built offline with the locked pip/setuptools (ensurepip's setuptools has no bdist_wheel).
    build_env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    installed = run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", llava_checkout],
                    env=build_env)
    assert installed.returncode == 0, installed.stderr
    return python


def git_changes(checkout: Path) -> list[str]:
    return sorted(line[3:] for line in run([*GIT, "status", "--porcelain"], cwd=checkout).stdout.splitlines())


def test_patch_host_patches_an_editable_git_checkout(llava_checkout, fork_python, tmp_path):
    # The default discovery (no --llava-dir): the importable llava is the editable checkout.
    applied = plugin_cli(fork_python, "patch-host", pythonpath=REPO, cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    assert "llava source checkout at " + str(llava_checkout / "llava") in applied.stdout
    expected = sorted(host_patch._group(host_patch.load_series()))
    assert git_changes(llava_checkout) == expected
    again = plugin_cli(fork_python, "patch-host", pythonpath=REPO, cwd=tmp_path)
    assert again.returncode == 0 and git_changes(llava_checkout) == expected  # idempotent
    check = plugin_cli(fork_python, "patch-host", "--check", pythonpath=REPO, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr

    reverse = plugin_cli(fork_python, "patch-host", "--reverse", pythonpath=REPO, cwd=tmp_path)
    assert reverse.returncode == 0, reverse.stderr
    assert git_changes(llava_checkout) == []  # byte for byte the committed sources
    check = plugin_cli(fork_python, "patch-host", "--check", pythonpath=REPO, cwd=tmp_path)
    assert check.returncode == 1


def test_the_shipped_patches_apply_with_git_apply(llava_checkout):
    """The documented route for forks that prefer git's own tools."""
    patches = sorted(host_patch.default_patch_dir().glob("*.patch"))
    applied = run([*GIT, "apply", *patches], cwd=llava_checkout)
    assert applied.returncode == 0, applied.stderr
    assert host_patch.host_status(llava_checkout / "llava").applied


def test_a_diverging_fork_gets_a_per_hunk_report_and_nothing_is_written(llava_checkout, fork_python, tmp_path):
    trainer = llava_checkout / "llava" / "train" / "llava_trainer.py"
    text = trainer.read_text()
    # A fork that rewrote the lines one hunk changes.
    hunk_lines = [line for h in host_patch._group(host_patch.load_series())["llava/train/llava_trainer.py"][:1]
                  for line in h.old_lines if line.strip()]
    target = next(line for line in hunk_lines if line in text)
    trainer.write_text(text.replace(target, target.rstrip("\n") + "  # fork edit\n", 1))
    assert run([*GIT, "commit", "-qam", "fork edit"], cwd=llava_checkout).returncode == 0

    refused = plugin_cli(fork_python, "patch-host", pythonpath=REPO, cwd=tmp_path)
    assert refused.returncode == 2
    message = refused.stderr
    assert "llava/train/llava_trainer.py" in message and "hunk 1: conflict" in message
    assert "port each hunk" in message
    assert git_changes(llava_checkout) == []  # no file of any patch was written
