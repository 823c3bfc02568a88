"""The host versions the adapters and their patches are written for: the one place to change
when a new host release is supported (import-light, so ``revision patch-host`` stays fast)."""

from __future__ import annotations

LLAVA_DISTRIBUTION = "llava-torch"
LLAVA_VERSION = "1.2.2.post1"
LLAVA_PATCH_SERIES = "llava-1.2.2"
