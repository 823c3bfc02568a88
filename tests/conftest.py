"""Fixtures shared across test modules (pytest finds them here; no imports needed)."""

import pytest
import torch

from revision_plugin.testing.tiny_clip import build_tiny_clip


@pytest.fixture()
def one_thread():
    """Tiny-model tests: two oversubscribed OpenMP threads per pytest worker make them ~50x slower.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A tiny HF CLIPModel saved with save_pretrained (the real from_pretrained path loads it)."""
    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")
