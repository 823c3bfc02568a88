"""Issue 13, class 5: a resumed `revision embed` keys on content and on the model, not on ids.

Same id + same content: skipped. Same id + other content: one-line error naming the id and
``--update`` (which re-embeds it, keeping the store consistent). Another model in a directory
of the same name: refused (one store holds one encoder). Rejected inputs: retried. Stores
written before hashes and fingerprints: refused unless ``--update``. A shard file swapped on
disk: named when the store is opened.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from revision_plugin.cli import main
from revision_plugin.encoders import load_encoder
from revision_plugin.store import StoreWriter, open_store
from revision_plugin.store.verify import verify_store
from revision_plugin.testing.tiny_clip import build_tiny_clip

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTIONS = ["a red cat", "a dog on the man", "the cat with a dog", "a man in red", "a photo of a dog", "red and red"]


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir):
    return load_encoder("hf_clip", tiny_clip_dir)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def texts(tmp_path, captions=CAPTIONS):
    return write_jsonl(tmp_path / "texts.jsonl", [{"id": f"t{i}", "text": c} for i, c in enumerate(captions)])


def embed_texts(tmp_path, model, *extra):
    return main(["embed", "--no-progress", "--encoder", "hf_clip", "--model", str(model), "--texts",
                 str(tmp_path / "texts.jsonl"), "--out", str(tmp_path / "out"), "--shard-rows", "4", *map(str, extra)])


def snapshot(root):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("INFO", "WARNING", "DEBUG"))]
    assert len(lines) == 1, err
    return lines[0]


def test_unchanged_rerun_skips_and_edited_caption_needs_update(tmp_path, tiny_clip_dir, encoder, capsys):
    texts(tmp_path)
    assert embed_texts(tmp_path, tiny_clip_dir) == 0
    assert embed_texts(tmp_path, tiny_clip_dir) == 0  # same content: nothing to do
    assert "(0 embedded now by rank 0" in capsys.readouterr().out
    store_dir = tmp_path / "out" / "text"
    before = snapshot(store_dir)

    edited = [*CAPTIONS]
    edited[2] = "a completely different caption"
    texts(tmp_path, edited)
    assert embed_texts(tmp_path, tiny_clip_dir) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "texts.jsonl:3: id 't2' is stored with other text than it has now" in line and "--update" in line
    assert snapshot(store_dir) == before  # refused: nothing written, nothing lost

    assert embed_texts(tmp_path, tiny_clip_dir, "--update") == 0
    assert "1 changed and re-embedded" in capsys.readouterr().out
    store = open_store(store_dir)
    ids = [f"t{i}" for i in range(len(edited))]
    assert sorted(store.ids()) == sorted(ids) and store.count == len(ids)
    np.testing.assert_allclose(store.lookup(ids), encoder.encode_texts(edited).numpy(), atol=2e-5, rtol=0)
    assert verify_store(store_dir).ok
    # the rewritten shard's old files are gone; the rerun is a no-op again
    assert len(list((store_dir / "shards").glob("*.npy"))) == len(store.manifest["shards"])
    assert embed_texts(tmp_path, tiny_clip_dir) == 0


def test_another_model_with_the_same_directory_name_is_refused(tmp_path, tiny_clip_dir, capsys):
    other = build_tiny_clip(tmp_path / "elsewhere" / tiny_clip_dir.name, seed=1)
    assert other.name == tiny_clip_dir.name  # same encoder_id: hf_clip:tiny-clip
    texts(tmp_path)
    assert embed_texts(tmp_path, tiny_clip_dir, "--shard-rows", 100) == 0
    before = snapshot(tmp_path / "out")
    texts(tmp_path, [*CAPTIONS, "one more caption"])  # a new id would be embedded by the other model
    capsys.readouterr()  # what building the models and the first run printed (progress bars, if enabled)
    for extra in ((), ("--update",)):
        assert embed_texts(tmp_path, other, *extra) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "holds 'hf_clip:tiny-clip' embeddings of another model (encoder fingerprint" in line
        assert "one store holds one encoder" in line
    assert snapshot(tmp_path / "out") == before
    manifest = open_store(tmp_path / "out" / "text").manifest
    assert manifest["encoder_fingerprint"] == load_encoder("hf_clip", tiny_clip_dir).fingerprint("text")


def test_fingerprint_follows_files_not_names(tmp_path, tiny_clip_dir):
    import shutil

    same = tmp_path / "copy" / "renamed-clip"
    shutil.copytree(tiny_clip_dir, same)
    a, b = load_encoder("hf_clip", tiny_clip_dir), load_encoder("hf_clip", same)
    assert a.fingerprint("text") == b.fingerprint("text") != a.fingerprint("image")
    assert a.encoder_id != b.encoder_id


def test_rejected_images_are_retried_with_the_corrected_root(tmp_path, tiny_clip_dir, encoder, capsys):
    (tmp_path / "images").mkdir()
    pictures = []
    for i in range(5):
        Image.new("RGB", (32, 32), (50 * i, 20, 90)).save(tmp_path / "images" / f"{i}.png")
        pictures.append(Image.open(tmp_path / "images" / f"{i}.png"))
    write_jsonl(tmp_path / "images.jsonl", [{"id": f"i{i}", "image": f"{i}.png"} for i in range(5)])
    (tmp_path / "wrong").mkdir()

    def run(root):
        return main(["embed", "--no-progress", "--encoder", "hf_clip", "--model", str(tiny_clip_dir), "--images",
                     str(tmp_path / "images.jsonl"), "--image-root", str(root), "--out", str(tmp_path / "out")])

    assert run(tmp_path / "wrong") == 0
    first = open_store(tmp_path / "out" / "image")
    assert first.count == 0 and len(first.rejected()) == 5
    capsys.readouterr()
    assert run(tmp_path / "images") == 0
    assert "5 rejected before and retried" in capsys.readouterr().out
    store = open_store(tmp_path / "out" / "image")
    assert store.count == 5 and store.rejected() == []
    np.testing.assert_allclose(store.lookup([f"i{i}" for i in range(5)]), encoder.encode_images(pictures).numpy(),
                               atol=2e-5, rtol=0)


def test_changed_image_bytes_need_update(tmp_path, tiny_clip_dir, encoder, capsys):
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (80 * i, 10, 10)).save(tmp_path / "images" / f"{i}.png")
    write_jsonl(tmp_path / "images.jsonl", [{"id": f"i{i}", "image": f"images/{i}.png"} for i in range(3)])
    argv = ["embed", "--no-progress", "--encoder", "hf_clip", "--model", str(tiny_clip_dir), "--images",
            str(tmp_path / "images.jsonl"), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    Image.new("RGB", (32, 32), (0, 200, 0)).save(tmp_path / "images" / "1.png")  # same path, new picture
    before = snapshot(tmp_path / "out")
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "id 'i1' is stored with other image content than it has now" in line and "--update" in line
    assert snapshot(tmp_path / "out") == before
    assert main([*argv, "--update"]) == 0
    store = open_store(tmp_path / "out" / "image")
    assert store.count == 3
    np.testing.assert_allclose(store.lookup(["i1"]), encoder.encode_images([Image.open(tmp_path / "images" / "1.png")]).numpy(),
                               atol=2e-5, rtol=0)


def test_store_written_without_hashes_or_fingerprint(tmp_path, tiny_clip_dir, encoder, capsys):
    """What an older revision_plugin (or write_store) left: refused, then re-embedded under --update."""
    texts(tmp_path)
    with StoreWriter(tmp_path / "out" / "text", encoder.encoder_id, encoder.dim, shard_rows=4, modality="text",
                     fsync=False) as writer:
        writer.add([f"t{i}" for i in range(4)], np.eye(encoder.dim, dtype=np.float32)[:4])  # not what the model says
    before = snapshot(tmp_path / "out")
    assert embed_texts(tmp_path, tiny_clip_dir) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "4 stored row(s) (e.g. 't0') were written without an encoder fingerprint" in line and "--update" in line
    assert snapshot(tmp_path / "out") == before
    assert embed_texts(tmp_path, tiny_clip_dir, "--update") == 0
    store = open_store(tmp_path / "out" / "text")
    ids = [f"t{i}" for i in range(len(CAPTIONS))]
    np.testing.assert_allclose(store.lookup(ids), encoder.encode_texts(CAPTIONS).numpy(), atol=2e-5, rtol=0)
    assert store.manifest["encoder_fingerprint"] == encoder.fingerprint("text")
    assert embed_texts(tmp_path, tiny_clip_dir) == 0  # now an ordinary store


def test_update_refuses_old_rows_it_cannot_re_embed(tmp_path, tiny_clip_dir, encoder, capsys):
    texts(tmp_path)
    with StoreWriter(tmp_path / "out" / "text", encoder.encoder_id, encoder.dim, modality="text", fsync=False) as writer:
        writer.add(["t0", "gone"], np.eye(encoder.dim, dtype=np.float32)[:2])
    before = snapshot(tmp_path / "out")
    assert embed_texts(tmp_path, tiny_clip_dir, "--update") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "not in this input (e.g. 'gone'), so --update cannot re-embed them" in line
    assert snapshot(tmp_path / "out") == before


def test_drop_rewrites_shards_atomically(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((10, 4)).astype(np.float32)
    ids = [f"id{i}" for i in range(10)]
    with StoreWriter(tmp_path / "s", "enc", 4, shard_rows=4, fsync=False) as writer:
        writer.add(ids, vectors, hashes=[f"h{i}" for i in range(10)])
        writer.reject("bad", "empty text")
    with StoreWriter(tmp_path / "s", "enc", 4, shard_rows=4, fsync=False) as writer:
        assert writer.stored["id5"] == "h5" and writer.rejected == {"bad": "empty text"}
        writer.drop(["id1", "id5"])
        assert "id1" not in writer.done_ids and "id0" in writer.done_ids
        del writer  # "killed" before re-adding: the store holds every other row, once
    with StoreWriter(tmp_path / "s", "enc", 4, shard_rows=4, fsync=False) as writer:
        assert set(writer.stored) == set(ids) - {"id1", "id5"}
        writer.add(["id1", "id5", "bad"], -vectors[[1, 5, 0]])
    store = open_store(tmp_path / "s")
    expected = vectors.copy()
    expected[[1, 5]] = -vectors[[1, 5]]
    np.testing.assert_array_equal(store.lookup(ids), expected)
    assert store.lookup(["bad"]).shape == (1, 4) and store.rejected() == []  # retried and stored
    assert store.count == 11 and verify_store(tmp_path / "s").ok


def test_shard_files_swapped_on_disk_are_named_at_open(tmp_path, capsys):
    from revision_plugin.errors import RevisionError
    from revision_plugin.store import write_store

    rng = np.random.default_rng(1)
    write_store(tmp_path / "s", [f"id{i}" for i in range(8)], rng.standard_normal((8, 4)), "enc", shard_rows=4, fsync=False)
    a, b = tmp_path / "s/shards/r00000-000000.npy", tmp_path / "s/shards/r00000-000001.npy"
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    with pytest.raises(RevisionError, match="does not hold the rows the store recorded for shards/r00000-000000.npy"):
        open_store(tmp_path / "s")
    report = verify_store(tmp_path / "s")  # verify still reports (not refuses) every damaged shard
    assert len(report.problems) == 2


def test_two_processes_stop_together_on_a_changed_input(tmp_path, tiny_clip_dir):
    """Under torchrun the rank that finds an edited caption and the one that does not both stop
    (no rank waits forever at the final barrier), and the store is left as it was."""
    import os
    import socket
    import subprocess
    import sys

    def torchrun():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        env.pop("REVISION_EMBED_KILL_AFTER_BATCHES", None)
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                   "--master_port", str(port), "-m", "revision_plugin.cli", "embed", "--no-progress", "--encoder",
                   "hf_clip", "--model", str(tiny_clip_dir), "--texts", str(tmp_path / "texts.jsonl"),
                   "--out", str(tmp_path / "out"), "--shard-rows", "2"]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)

    texts(tmp_path)
    first = torchrun()
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(tmp_path / "out")
    edited = [*CAPTIONS]
    edited[0] = "rank zero's caption changed"  # t0: rank 0's share only
    texts(tmp_path, edited)
    second = torchrun()
    assert second.returncode != 0
    assert "id 't0' is stored with other text than it has now" in second.stderr
    assert "another process of this run found inputs changed" in second.stderr
    # each rank: one error line (torchrun's own launcher then prints its ChildFailedError)
    assert second.stderr.count("revision embed: error:") == 2
    assert snapshot(tmp_path / "out") == before
