"""Host adapters: the glue between :class:`revision_plugin.tower.PseudoVisionTower` and an
MLLM codebase. Each adapter is the only module that imports its host package.

* ``revision_plugin.hosts.llava`` - LLaVA 1.2.2 (``llava-torch==1.2.2.post1``):
  ``register()`` makes ``--vision_tower revision:<spec>`` work in LLaVA's own ``train()``,
  ``load_pretrained_model`` and evaluation code.
* ``revision_plugin.hosts.commands_patch`` - ``revision patch-host``: the compatibility patches of
  ``hosts/patches/llava-1.2.2/`` (package data) for current transformers, applied idempotently
  (import-light: no torch, numpy or llava needed);
* ``revision_plugin.hosts.versions`` - the supported host versions (one place).
"""
