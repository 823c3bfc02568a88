"""lmms-eval model registration, kept import-light.

``setup.py`` declares the entry point ``lmms_eval.models: revision_llava =
revision_plugin.lmms_manifest:manifest``. lmms-eval 0.7.x loads that group while
``lmms_eval.models`` itself is being imported (``ModelRegistryV2.load_entrypoint_manifests``),
calls :func:`manifest` and registers the returned ``ModelManifest``. This module must
therefore import nothing heavy (no torch, no llava, no revision_plugin.lmms.model): the class
path is only imported when a user actually asks for ``--model revision_llava``.
A failure here makes lmms-eval drop *every* third-party entry point with a single
warning, so the function does nothing that can fail besides building the dataclass.
"""

from __future__ import annotations

MODEL_ID = "revision_llava"
SIMPLE_CLASS_PATH = "revision_plugin.lmms.model.RevisionLlava"
ALIASES: tuple[str, ...] = ("revision",)


def manifest():
    """Return the ``ModelManifest`` lmms-eval registers for ``--model revision_llava``.

    Only a *simple* class is exposed (lmms-eval prefers a chat class when one exists;
    LLaVA 1.2.2 builds its prompts from its own conversation templates, which is what
    the simple interface hands it).
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=SIMPLE_CLASS_PATH, aliases=ALIASES)
