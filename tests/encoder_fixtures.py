"""Fixtures shared by the encoder and embedding tests (import them into a test module)."""

import pytest
import torch

from revision_plugin.testing.tiny_clip import build_tiny_clip


@pytest.fixture(autouse=True)
def one_thread():
    # Two oversubscribed OpenMP threads per pytest worker make tiny models ~50x slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")
