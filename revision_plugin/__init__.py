"""ReVision/ReAlign as a plugin for LLaVA-style MLLM codebases."""

__version__ = "0.1.0"
