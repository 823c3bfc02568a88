"""The installed environment is the locked one: every distribution of ``requirements.lock``
(and the host's ``requirements/llava-torch.lock``) at its pinned version, nothing else.

A new release of an unpinned package once broke lmms-eval on fresh machines with an import
error deep inside an evaluation; with this test such an install fails here, naming the package.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
LOCKS = [REPO / "requirements.lock", REPO / "requirements" / "llava-torch.lock"]
# Installed by `make venv` from the working tree itself, not from the lock.
OWN_DISTRIBUTIONS = {"revision-plugin"}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def installed_distributions() -> dict[str, str]:
    return {canonical(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}


def lock_drift(locked: dict[str, str], installed: dict[str, str]) -> list[str]:
    """One line per difference between the lock and what is installed."""
    problems = []
    for name, version in sorted(locked.items()):
        if name not in installed:
            problems.append(f"{name}: missing (lock: {version})")
        elif Version(installed[name]) != Version(version):
            problems.append(f"{name}: {installed[name]} installed, lock has {version}")
    for name in sorted(set(installed) - set(locked) - OWN_DISTRIBUTIONS):
        problems.append(f"{name}: {installed[name]} installed, not in the lock")
    return problems


def locked_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for path in LOCKS:
        pins.update(read_lock(path))
    return pins


def test_installed_environment_is_the_lock():
    drift = lock_drift(locked_pins(), installed_distributions())
    assert not drift, (
        "the environment drifted from requirements.lock (rebuild it with `make clean venv`):\n  "
        + "\n  ".join(drift)
    )


def test_a_drifted_package_is_named():
    locked = locked_pins()
    installed = dict(locked, filelock="4.3.1", torchvision="0.29.1")
    del installed["datasets"]
    assert lock_drift(locked, installed) == [
        f"datasets: missing (lock: {locked['datasets']})",
        f"filelock: 4.3.1 installed, lock has {locked['filelock']}",
        "torchvision: 0.29.1 installed, not in the lock",
    ]


def test_the_lock_pins_the_bootstrap_and_the_known_breaks():
    pins = locked_pins()
    for name in ("pip", "setuptools", "wheel", "torch", "transformers", "lmms-eval", "llava-torch", "shortuuid"):
        assert name in pins, name
    assert Version(pins["filelock"]) < Version("4.3")  # lmms-eval imports filelock._api
    assert Version(pins["setuptools"]) < Version("81")  # deepspeed's build needs pkg_resources
    assert pins["torch"].endswith("+cpu") and not any(name.startswith("nvidia-") for name in pins)
    assert "torchvision" not in pins and "timm" not in pins  # they break imports beside CPU torch
