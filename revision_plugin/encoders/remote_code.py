"""Loading LLM2CLIP's ``trust_remote_code`` model on transformers versions it predates.

The released ``configuration_clip.py`` (written for transformers 4.40) does
``from transformers.onnx import OnnxConfig``; ``transformers.onnx`` was removed in 5.x, so the
import fails before any weight is read. While the remote code is imported we put a stand-in
module in ``sys.modules`` whose classes accept anything; the ONNX export config it defines is
never used for embedding. The stand-in is removed again right after loading so it cannot
mislead other code that probes for ``transformers.onnx``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import types
from contextlib import contextmanager
from pathlib import Path

from revision_plugin.parsing import TRUE_WORDS

STUB_NAME = "transformers.onnx"
# The user's own opt-in for processes started by someone else's entry point (LLaVA's scripts).
TRUST_REMOTE_CODE_ENV = "REVISION_TRUST_REMOTE_CODE"
# Model sources the user consented to in this process (a ``revision:`` spec with
# ``trust_remote_code=true``); never filled from an artifact.
_CONSENTED: set[str] = set()


def consent_to_remote_code(model: str | Path) -> None:
    """Record the user's consent to run ``model``'s own Python code in this process."""
    _CONSENTED.add(os.path.realpath(model) if os.path.exists(model) else str(model))


def remote_code_allowed(model: str | Path, explicit: bool = False) -> bool:
    """Consent given on the command line (``explicit``), in the user's spec, or by the env var."""
    key = os.path.realpath(model) if os.path.exists(model) else str(model)
    return explicit or key in _CONSENTED or os.environ.get(TRUST_REMOTE_CODE_ENV, "").strip().lower() in TRUE_WORDS


def needs_remote_code(model: str | Path) -> bool:
    """A local model directory whose ``config.json`` maps classes to its own files (``auto_map``);
    a hub id is assumed to (we cannot look without downloading)."""
    config = Path(model) / "config.json"
    if not Path(model).is_dir():
        return True
    try:
        return "auto_map" in json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # transformers reports the unreadable config itself


def _placeholder_class(name: str) -> type:
    def __init__(self, *args, **kwargs):  # noqa: N807 - accepts any constructor call
        self.args, self.kwargs = args, kwargs

    return type(name, (), {"__init__": __init__, "__module__": STUB_NAME, "__doc__": "transformers.onnx stand-in"})


def _make_stub() -> types.ModuleType:
    module = types.ModuleType(STUB_NAME, "Stand-in for the removed transformers.onnx (revision_plugin)")
    for name in ("OnnxConfig", "OnnxConfigWithPast", "OnnxSeq2SeqConfigWithPast", "PatchingSpec"):
        setattr(module, name, _placeholder_class(name))

    def __getattr__(name: str):
        # Any other class-like name the remote file imports; lower-case names stay errors.
        if name[:1].isupper():
            value = _placeholder_class(name)
            setattr(module, name, value)
            return value
        raise AttributeError(name)

    module.__getattr__ = __getattr__
    module.__path__ = []  # lets "from transformers.onnx.utils import X" fail cleanly
    return module


@contextmanager
def transformers_onnx_available():
    """Make ``import transformers.onnx`` work inside the block (no-op where it exists)."""
    try:
        importlib.import_module(STUB_NAME)
        yield False
        return
    except ImportError:
        pass
    import transformers

    sys.modules[STUB_NAME] = _make_stub()
    transformers.__dict__["onnx"] = sys.modules[STUB_NAME]
    try:
        yield True
    finally:
        sys.modules.pop(STUB_NAME, None)
        transformers.__dict__.pop("onnx", None)
