"""LLaVA 1.2.2 adapter: ``--vision_tower revision:<spec>`` in LLaVA's own entry points
(``llava/train/train_mem.py``, ``python -m llava.train.train``, ``deepspeed --module
llava.train.train``, ``llava.eval.*``, ``llava.serve.cli``, ``scripts/merge_lora_weights.py``).

This package is the only part of the plugin that imports ``llava`` (besides the lmms-eval
adapter, ``revision_plugin.lmms``). After ``revision patch-host``, LLaVA's tower builder
hands ``revision:`` specs to :func:`build_vision_tower` here, LLaVA's ``train()`` calls
:func:`register` before it parses its flags, and its command-line entry points run ``train()``
through :func:`run_train_command`, so nothing else has to change in a LLaVA
user's scripts. ``register()`` rebinds (all reversible with the returned ``undo``; calling
it again is a no-op):

* ``llava.train.train.make_supervised_data_module``: when the model's tower is a revision
  tower, the dataset also accepts *pseudo* records that name a text instead of an image::

      {"id": "cap-1", "text_id": "cap-1", "conversations": [{"from": "human", "value": "<image>\\n"},
                                                           {"from": "gpt", "value": "A red square."}]}
      {"id": "cap-2", "text": "A red square.", "conversations": [...]}     (online encoding)

  ``text_id`` is looked up in the tower's ``text_store``; ``text`` is encoded by the
  encoder's text side in the training loop; ``image`` records go through LLaVA's own image
  loading (or the ``image_store``). Every record is checked before step 1 (see
  :func:`scan_records`): bad records are reported all at once and training does not start,
  unless ``$REVISION_SKIP_BAD_RECORDS`` names a file for the list of records left out.
* ``llava.train.train.preprocess``: the ``llama_3`` template (added to ``conv_templates``).
* ``llava.train.train.LLaVATrainer`` and ``safe_save_model_for_hf_trainer``, and
  ``save_pretrained`` of LLaVA's model classes: every saved checkpoint (stage 1, stage 2,
  every ``checkpoint-N``, LoRA, merged LoRA) carries ``revision_tower/`` (tower config + a
  copy of the operator), its ``config.json`` points at it and records the conversation
  template (``revision_conv_template``); ``mm_projector.bin`` carries its metadata; LoRA
  step checkpoints also hold ``non_lora_trainables.bin`` and ``config.json`` (resumable,
  loadable with ``--model-base``).
* ``LlavaMetaModel.initialize_vision_modules``: the projector metadata check, and the
  conversation template (``--version``) recorded in the model config.

Modules (one concept each; everything public is re-exported here, and the patched LLaVA
imports :func:`register` and :func:`build_vision_tower` from this package):

* :mod:`.constants` - supported host version, checkpoint file names and keys, environment variables;
* :mod:`.tower` - :class:`LlavaRevisionTower`, :class:`RevisionImageProcessor`, :func:`build_vision_tower`;
* :mod:`.data` - the dataset hook, the start-up record scan, the collator;
* :mod:`.templates` - the ``llama_3`` conversation template and its label masking;
* :mod:`.projector` - projector metadata (write, read, check);
* :mod:`.checkpoints` - self-contained checkpoints and the save hooks;
* :mod:`.trainer` - LLaVA's trainer with resumable, self-contained step checkpoints;
* :mod:`.registration` - :func:`register` (the rebind table) and its ``undo``;
* :mod:`.launch` - :func:`train_llava` and :func:`load_pretrained_model`, and :func:`run_train_command`
  (LLaVA's command-line training: the plugin's bad-input errors as one ``revision: error:`` line);
* :mod:`.models` - LLaVA models built in code, LLaVA's token constants (benchmarks);
* :mod:`.inference` - prompts, ``<image>``-aware tokenisation and image preprocessing as LLaVA's
  eval does them (for the lmms-eval model and the study, which do not import ``llava``);
* :mod:`.commands_data` - ``revision llava-data`` (caption json -> stage-1 records; plain JSON).
"""

from __future__ import annotations

from revision_plugin.hosts.llava.checkpoints import (
    checkpoint_config_entries,
    conv_template_of,
    finalize_checkpoint,
    initialize_vision_modules,
    safe_save_model_for_hf_trainer,
    save_pretrained,
)
from revision_plugin.hosts.llava.constants import (
    CONV_TEMPLATE_KEY,
    NON_LORA_FILE,
    OVERRIDES_ENV,
    PROJECTOR_FILE,
    PROJECTOR_FORMAT,
    PROJECTOR_METADATA_KEY,
    SAVED_AT_KEY,
    SKIP_BAD_RECORDS_ENV,
    SUPPORTED_HOST_VERSION,
    TOWER_DIR_ENV,
)
from revision_plugin.hosts.llava.data import (
    MAX_REPORTED_RECORDS,
    RevisionDataCollator,
    make_supervised_data_module,
    scan_records,
)
from revision_plugin.hosts.llava.inference import (
    build_prompt,
    conversation_templates,
    ignore_index,
    process_images,
    tokenize_prompt,
)
from revision_plugin.hosts.llava.launch import load_pretrained_model, run_train_command, train_llava
from revision_plugin.hosts.llava.models import TokenConstants, build_llava_llama, token_constants
from revision_plugin.hosts.llava.projector import (
    add_projector_metadata,
    check_projector_metadata,
    projector_metadata,
    read_projector_metadata,
)
from revision_plugin.hosts.llava.registration import register
from revision_plugin.hosts.llava.templates import (
    LLAMA3_SYSTEM,
    LLAMA3_VERSION,
    llama3_conversation,
    preprocess,
    preprocess_llama_3,
)
from revision_plugin.hosts.llava.tower import (
    LlavaRevisionTower,
    RevisionImageProcessor,
    apply_overrides,
    build_vision_tower,
    is_revision_spec,
    tower_of,
)

__all__ = [
    "CONV_TEMPLATE_KEY",
    "LLAMA3_SYSTEM",
    "LLAMA3_VERSION",
    "LlavaRevisionTower",
    "MAX_REPORTED_RECORDS",
    "NON_LORA_FILE",
    "OVERRIDES_ENV",
    "PROJECTOR_FILE",
    "PROJECTOR_FORMAT",
    "PROJECTOR_METADATA_KEY",
    "RevisionDataCollator",
    "RevisionImageProcessor",
    "SAVED_AT_KEY",
    "SKIP_BAD_RECORDS_ENV",
    "SUPPORTED_HOST_VERSION",
    "TOWER_DIR_ENV",
    "TokenConstants",
    "add_projector_metadata",
    "apply_overrides",
    "build_llava_llama",
    "build_prompt",
    "build_vision_tower",
    "check_projector_metadata",
    "checkpoint_config_entries",
    "conv_template_of",
    "conversation_templates",
    "finalize_checkpoint",
    "ignore_index",
    "initialize_vision_modules",
    "is_revision_spec",
    "llama3_conversation",
    "load_pretrained_model",
    "make_supervised_data_module",
    "preprocess",
    "preprocess_llama_3",
    "process_images",
    "projector_metadata",
    "read_projector_metadata",
    "register",
    "run_train_command",
    "safe_save_model_for_hf_trainer",
    "save_pretrained",
    "scan_records",
    "token_constants",
    "tokenize_prompt",
    "tower_of",
    "train_llava",
]
