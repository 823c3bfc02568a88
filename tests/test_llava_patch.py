"""`revision patch-host`: the LLaVA 1.2.2 compatibility patches, applied idempotently to a
copy of the installed package (never to the shared venv from a test)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from revision_plugin.cli import main
from revision_plugin.hosts import commands_patch as host_patch


@pytest.fixture()
def site(tmp_path) -> Path:
    """A copy of the installed llava package and its dist-info (RECORD: released hashes)."""
    install = host_patch.find_host()
    dist = next(install.root.glob("llava_torch-*.dist-info"))
    shutil.copytree(install.package_dir, tmp_path / "llava", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(dist, tmp_path / dist.name)
    return tmp_path


def _released_files_match_record(site: Path) -> bool:
    install = host_patch.find_host(site / "llava")
    for rel in host_patch._group(host_patch.load_series()):
        if host_patch._sha((site / rel).read_bytes()) != install.record_hashes[rel]:
            return False
    return True


def test_apply_is_idempotent_and_reversible(site, capsys):
    llava_dir = str(site / "llava")
    # Bring the copy to the released state whatever the venv's state is, and prove it by RECORD.
    assert main(["patch-host", "--llava-dir", llava_dir, "--reverse"]) == 0
    assert _released_files_match_record(site)
    assert host_patch.host_status(llava_dir).pristine
    assert main(["patch-host", "--llava-dir", llava_dir, "--check"]) == 1

    assert main(["patch-host", "--llava-dir", llava_dir, "--dry-run"]) == 0
    assert host_patch.host_status(llava_dir).pristine  # dry run wrote nothing

    assert main(["patch-host", "--llava-dir", llava_dir]) == 0
    first = {p: p.read_bytes() for p in site.joinpath("llava").rglob("*.py")}
    assert host_patch.host_status(llava_dir).applied
    assert main(["patch-host", "--llava-dir", llava_dir]) == 0  # second run: no change
    assert {p: p.read_bytes() for p in site.joinpath("llava").rglob("*.py")} == first
    assert main(["patch-host", "--llava-dir", llava_dir, "--check"]) == 0
    assert "patched" in capsys.readouterr().out

    assert main(["patch-host", "--llava-dir", llava_dir, "--reverse"]) == 0
    assert _released_files_match_record(site)


def test_patch_files_are_plain_unified_diffs(site):
    """Users without this package can apply the same files with `patch -p1`."""
    if shutil.which("patch") is None:
        pytest.skip("no patch program")
    assert main(["patch-host", "--llava-dir", str(site / "llava"), "--reverse"]) == 0
    for path in sorted(host_patch.default_patch_dir().glob("*.patch")):
        subprocess.run(["patch", "-p1", "--quiet", "-i", str(path)], cwd=site, check=True)
    assert host_patch.host_status(site / "llava").applied


def test_refuses_another_host_version(site, capsys):
    metadata = next(site.glob("llava_torch-*.dist-info")) / "METADATA"
    metadata.write_text(metadata.read_text().replace("Version: 1.2.2.post1", "Version: 1.1.3"))
    assert main(["patch-host", "--llava-dir", str(site / "llava")]) == 2
    err = capsys.readouterr().err
    assert "1.1.3" in err and "1.2.2.post1" in err


def test_refuses_locally_edited_files_and_writes_nothing(site, capsys):
    llava_dir = str(site / "llava")
    assert main(["patch-host", "--llava-dir", llava_dir, "--reverse"]) == 0
    arch = site / "llava" / "model" / "llava_arch.py"
    arch.write_text(arch.read_text() + "\n# local edit\n")
    before = (site / "llava" / "train" / "train.py").read_bytes()
    assert main(["patch-host", "--llava-dir", llava_dir]) == 2
    assert "llava_arch.py" in capsys.readouterr().err
    assert (site / "llava" / "train" / "train.py").read_bytes() == before


def test_the_shared_environment_is_patched():
    """`make venv` runs `revision patch-host`; the host tests below rely on it."""
    status = host_patch.host_status()
    assert status.install.version == host_patch.SUPPORTED_VERSION
    assert status.applied, status.summary()
