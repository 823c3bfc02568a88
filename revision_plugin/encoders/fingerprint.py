"""What makes two encoders "the same": a hash of the model's files and its encoding settings.

``encoder_id`` names the embedding space by the model directory's *basename*, so two models
saved as ``a/clip`` and ``b/clip`` share it; a feature store records the **encoder
fingerprint** as well, and refuses rows from another one (one store holds one encoder).

The fingerprint hashes, for every model directory the encoder loads (a hub id is resolved to
its snapshot in the local cache):

* each file's path relative to the directory, its size and its content: the whole file when
  it is at most ``SAMPLES x SAMPLE_BYTES`` (1 MiB: configs, tokenizers, processors, code),
  else the safetensors header (tensor names, shapes, offsets) plus ``SAMPLES`` evenly spaced
  64 KiB samples. A few MiB read for a 16 GB model, and two trainings of one architecture
  differ in every sample. A change confined to bytes between samples of a large weight
  file is the one thing it does not see;
* nothing hidden (``.git``, ``.cache``), no ``*.md`` or images (documentation);
* the settings that change the vectors (``Encoder.fingerprint_inputs``), e.g. LLM2CLIP's
  text ``max_length`` and chat template.

Moving or copying a model directory keeps its fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

SAMPLE_BYTES = 64 * 1024
SAMPLES = 16
FINGERPRINT_CHARS = 32
IGNORED_SUFFIXES = (".md", ".png", ".jpg", ".jpeg", ".gif", ".lock")


def encoder_fingerprint(kind: str, models: dict[str, str | Path | None], settings: dict | None = None) -> str:
    """Hex digest of ``kind``, every model source in ``models`` (name -> directory or hub id) and
    ``settings`` (JSON-able)."""
    digest = hashlib.sha256(f"{kind}\0".encode())
    digest.update(json.dumps(settings or {}, sort_keys=True, default=str).encode())
    for name in sorted(models):
        source = models[name]
        digest.update(f"\0{name}\0{'' if source is None else model_files_digest(source)}".encode())
    return digest.hexdigest()[:FINGERPRINT_CHARS]


def model_files_digest(source: str | Path) -> str:
    """Digest of the files of a model directory (or of a hub id's cached snapshot)."""
    root = _resolve(source)
    if root is None:  # not a directory and not in the local hub cache: all we know is its name
        return "name:" + str(source)
    digest = hashlib.sha256()
    for path in _model_files(root):
        digest.update(f"\0{path.relative_to(root).as_posix()}\0{file_digest(path)}".encode())
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """Size + safetensors header + evenly spaced samples (the whole file when small)."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(str(size).encode())
    with path.open("rb") as f:
        if size <= SAMPLE_BYTES * SAMPLES:
            digest.update(f.read())
            return digest.hexdigest()
        if path.suffix == ".safetensors":
            (header,) = struct.unpack("<Q", f.read(8))
            if 0 < header <= size - 8:
                digest.update(f.read(header))
        step = (size - SAMPLE_BYTES) // (SAMPLES - 1)
        for k in range(SAMPLES):
            f.seek(k * step)
            digest.update(f.read(SAMPLE_BYTES))
    return digest.hexdigest()


def _model_files(root: Path) -> list[Path]:
    files = []
    for path in root.rglob("*"):
        parts = path.relative_to(root).parts
        if any(part.startswith(".") for part in parts) or path.suffix.lower() in IGNORED_SUFFIXES:
            continue
        if path.is_file():
            files.append(path)
    return sorted(files)


def _resolve(source: str | Path) -> Path | None:
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(source), local_files_only=True))
    except Exception:  # noqa: BLE001 - not a cached hub id (or no huggingface_hub): fall back to the name
        return None
