"""Names shared by the LLaVA adapter's modules: the supported host version, the files and
``config.json`` keys a checkpoint carries, and the environment variables the adapter reads."""

from __future__ import annotations

from revision_plugin.hosts.versions import LLAVA_VERSION

SUPPORTED_HOST_VERSION = LLAVA_VERSION
PROJECTOR_FILE = "mm_projector.bin"
PROJECTOR_METADATA_KEY = "revision.projector_metadata"
PROJECTOR_FORMAT = "revision-projector"
# Older checkpoints recorded their absolute save path here; read (as a last resort), never written.
SAVED_AT_KEY = "revision_tower_saved_at"
# config.json key of the conversation template (LLaVA's --version) a checkpoint was trained with.
CONV_TEMPLATE_KEY = "revision_conv_template"
NON_LORA_FILE = "non_lora_trainables.bin"
# Set to a file path: records that fail the start-up scan are left out (and listed there).
SKIP_BAD_RECORDS_ENV = "REVISION_SKIP_BAD_RECORDS"
# Overrides where a checkpoint's relative ``revision:revision_tower`` is looked up.
TOWER_DIR_ENV = "REVISION_TOWER_DIR"
OVERRIDES_ENV = "REVISION_TOWER_OVERRIDES"
