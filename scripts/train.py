#!/usr/bin/env python
"""ReVision training launcher: LLaVA's own ``train()`` with the pseudo-vision tower registered.

The counterpart of LLaVA's ``llava/train/train_mem.py``; takes exactly LLaVA's flags
(``--vision_tower revision:<spec>`` selects the tower, see docs/llava.md) plus
``--attn_implementation`` (default: flash_attention_2 when CUDA and flash_attn are there,
else sdpa). Launch with ``deepspeed scripts/train.py --deepspeed scripts/zero2.json ...`` or
``torchrun``; see scripts/stage1_pretrain.sh and scripts/stage2_finetune.sh.
"""

from revision_plugin.hosts.llava import train_main

if __name__ == "__main__":
    train_main()
