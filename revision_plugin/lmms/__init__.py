"""The plugin's lmms-eval integration (the only importer of ``lmms_eval``).

* :mod:`.model` - the ``revision_llava`` model (``RevisionLlava``), registered through
  :mod:`revision_plugin.lmms_manifest`; LLaVA's prompts, tokens and image processing come from
  :mod:`revision_plugin.hosts.llava.inference` (this package never imports ``llava``);
* :mod:`.args` - model-argument parsing (checkpoint, device, dtype);
* :mod:`.generation` - a task's generation settings as ``generate`` arguments;
* :mod:`.provenance` - package versions, checkpoint fingerprint, template (which one to prompt
  with), tower;
* :mod:`.datasets` - the suite's datasets at pinned revisions, prefetch and offline runs;
* :mod:`.runner` - ``revision eval``: the suite task by task over lmms-eval's own API;
* :mod:`.resume` - which results ``revision eval`` skips, and which folders it refuses.

Attributes are imported lazily, so ``revision compare`` (which needs only
:mod:`.provenance` / :mod:`.args`) does not import torch or lmms_eval.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "RevisionLlava": "model", "choose_conv_template": "provenance",
    "cut_at_stop": "args", "resolve_checkpoint": "args", "resolve_device": "args", "resolve_dtype": "args",
    "DTYPES": "args", "parse_model_args": "args",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DTYPES", "RevisionLlava", "choose_conv_template", "cut_at_stop", "parse_model_args",
           "resolve_checkpoint", "resolve_device", "resolve_dtype"]
