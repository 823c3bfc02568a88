"""`revision embed`: inputs, rejections, strictness, resume after a real kill, 2 processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from revision_plugin.cli import main
from revision_plugin.encoders import load_encoder
from revision_plugin.store import open_store

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "a photo of the cat dog on in with and man red".split()


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir):
    return load_encoder("hf_clip", tiny_clip_dir)


def make_texts(n, seed=0, empty_every=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 25))))
        if empty_every and i % empty_every == 3:
            text = "   "
        rows.append({"id": f"t{i}", "text": text})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def embed(*args):
    return main(["embed", "--no-progress", *map(str, args)])


def assert_matches_encoder(store, rows, encoder, key="text"):
    """Stored vectors equal a direct encoding of the same inputs, looked up by id."""
    ids = [r["id"] for r in rows]
    expected = encoder.encode_texts([r[key] for r in rows]).numpy()
    np.testing.assert_allclose(store.lookup(ids), expected, atol=2e-5, rtol=0)


def test_texts_jsonl_and_official_dataset_json(tmp_path, tiny_clip_dir, encoder, capsys):
    texts = make_texts(60, empty_every=20)
    write_jsonl(tmp_path / "texts.jsonl", texts)
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    images = []
    for i in range(6):
        Image.new("RGB", (30 + 5 * i, 40), (40 * i, 10, 200)).save(tmp_path / "imgs" / "sub" / f"{i}.png")
        images.append({"id": f"img_{i}", "image": f"sub/{i}.png"})
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"not an image at all")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "imgs" / "cut.jpg")
    data = (tmp_path / "imgs" / "cut.jpg").read_bytes()
    (tmp_path / "imgs" / "cut.jpg").write_bytes(data[: len(data) // 2])
    images += [{"id": "broken", "image": "broken.jpg"}, {"id": "gone", "image": "nowhere.png"}, {"id": "cut", "image": "cut.jpg"}]
    (tmp_path / "dataset.json").write_text(json.dumps({"images": images, "texts": texts[:5]}))

    assert embed("--encoder", "hf_clip", "--model", tiny_clip_dir, "--texts", tmp_path / "texts.jsonl",
                 "--images", tmp_path / "dataset.json", "--image-root", tmp_path / "imgs",
                 "--out", tmp_path / "out", "--batch-size", 8, "--shard-rows", 16) == 0
    out = capsys.readouterr().out
    assert "text: 57 rows" in out and "3 rejected" in out and "empty text: 3" in out

    text_store = open_store(tmp_path / "out" / "text")
    kept = [r for r in texts if r["text"].strip()]
    assert sorted(text_store.ids()) == sorted(r["id"] for r in kept)
    assert {r["id"]: r["reason"] for r in text_store.rejected()} == {"t3": "empty text", "t23": "empty text", "t43": "empty text"}
    assert_matches_encoder(text_store, kept, encoder)
    assert text_store.manifest["modality"] == "text" and text_store.encoder_id == "hf_clip:tiny-clip"

    image_store = open_store(tmp_path / "out" / "image")
    assert image_store.count == 6
    reasons = {r["id"]: r["reason"] for r in image_store.rejected()}
    assert set(reasons) == {"broken", "gone", "cut"}  # never zero-filled, never silently dropped
    assert reasons["gone"].startswith("image file not found") and reasons["broken"].startswith("unreadable image")
    pictures = [Image.open(tmp_path / "imgs" / "sub" / f"{i}.png") for i in range(6)]
    np.testing.assert_allclose(
        image_store.lookup([f"img_{i}" for i in range(6)]), encoder.encode_images(pictures).numpy(), atol=2e-5, rtol=0
    )


def test_dataset_flag_and_parquet(tmp_path, tiny_clip_dir, encoder):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = make_texts(20, seed=1)
    pq.write_table(pa.table({"key": [int(r["id"][1:]) for r in texts], "caption": [r["text"] for r in texts]}),
                   tmp_path / "texts.parquet")
    assert embed("--encoder", "hf_clip", "--model", tiny_clip_dir, "--texts", tmp_path / "texts.parquet",
                 "--id-key", "key", "--text-key", "caption", "--out", tmp_path / "out") == 0
    store = open_store(tmp_path / "out" / "text")
    assert_matches_encoder(store, [{"id": r["id"][1:], "text": r["text"]} for r in texts], encoder)

    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    (tmp_path / "dataset.json").write_text(json.dumps({"images": [{"id": "x", "image": "x.png"}], "texts": texts[:3]}))
    assert embed("--encoder", "hf_clip", "--model", tiny_clip_dir, "--dataset", tmp_path / "dataset.json", "--out", tmp_path / "ds") == 0
    assert open_store(tmp_path / "ds" / "text").count == 3 and open_store(tmp_path / "ds" / "image").count == 1


def test_sorted_and_unsorted_batches_store_the_same_vectors(tmp_path, tiny_clip_dir):
    write_jsonl(tmp_path / "texts.jsonl", make_texts(40, seed=2))
    common = ["--encoder", "hf_clip", "--model", tiny_clip_dir, "--texts", tmp_path / "texts.jsonl", "--batch-size", 6]
    assert embed(*common, "--out", tmp_path / "sorted") == 0
    assert embed(*common, "--no-sort", "--out", tmp_path / "unsorted") == 0
    a, b = open_store(tmp_path / "sorted" / "text"), open_store(tmp_path / "unsorted" / "text")
    ids = b.ids()
    assert a.ids() != ids and sorted(a.ids()) == sorted(ids)
    np.testing.assert_allclose(a.lookup(ids), b.lookup(ids), atol=2e-5, rtol=0)


def test_strict_duplicates_and_bad_rows_are_errors(tmp_path, tiny_clip_dir, capsys):
    common = ["--encoder", "hf_clip", "--model", tiny_clip_dir, "--out", tmp_path / "out"]
    write_jsonl(tmp_path / "empty.jsonl", [{"id": "a", "text": "cat"}, {"id": "b", "text": ""}])
    assert embed(*common, "--texts", tmp_path / "empty.jsonl", "--strict") == 2
    assert "empty.jsonl:2: id 'b': empty text (rejected under --strict)" in capsys.readouterr().err

    write_jsonl(tmp_path / "dupes.jsonl", [{"id": "a", "text": "cat"}, {"id": "b", "text": "dog"}, {"id": "a", "text": "x"}])
    assert embed(*common, "--texts", tmp_path / "dupes.jsonl") == 2
    assert "dupes.jsonl:3: duplicate id 'a' (first at " in capsys.readouterr().err

    (tmp_path / "broken.jsonl").write_text('{"id": "a", "text": "cat"}\n{"id": "b", "text": \n')
    assert embed(*common, "--texts", tmp_path / "broken.jsonl") == 2
    assert "broken.jsonl:2: not valid JSON" in capsys.readouterr().err

    write_jsonl(tmp_path / "noid.jsonl", [{"text": "cat"}])
    assert embed(*common, "--texts", tmp_path / "noid.jsonl") == 2
    assert "noid.jsonl:1: record has no 'id'" in capsys.readouterr().err

    assert embed(*common) == 2
    assert "nothing to embed" in capsys.readouterr().err


def _subprocess_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("REVISION_EMBED_KILL_AFTER_BATCHES", None)
    return env


def test_killed_run_resumes_without_duplicates_or_gaps(tmp_path, tiny_clip_dir, encoder):
    texts = make_texts(64, seed=3, empty_every=16)
    write_jsonl(tmp_path / "texts.jsonl", texts)
    args = ["embed", "--no-progress", "--encoder", "hf_clip", "--model", str(tiny_clip_dir),
            "--texts", str(tmp_path / "texts.jsonl"), "--out", str(tmp_path / "out"), "--batch-size", "4", "--shard-rows", "8"]
    env = _subprocess_env()
    env["REVISION_EMBED_KILL_AFTER_BATCHES"] = "7"  # SIGKILL mid-shard: 2 batches pending are lost
    killed = subprocess.run([sys.executable, "-m", "revision_plugin.cli", *args], env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    journal = json.loads((tmp_path / "out" / "text" / "parts" / "rank-00000.json").read_text())
    committed = sum(c["rows"] for c in journal["commits"])
    assert 0 < committed < 60 and not (tmp_path / "out" / "text" / "manifest.json").exists()

    assert main(args) == 0  # the same command again
    store = open_store(tmp_path / "out" / "text")
    kept = [r for r in texts if r["text"].strip()]
    assert len(store.ids()) == len(set(store.ids())) == len(kept)
    assert sorted(store.ids()) == sorted(r["id"] for r in kept)
    assert sorted(r["id"] for r in store.rejected()) == ["t19", "t3", "t35", "t51"]
    assert_matches_encoder(store, kept, encoder)
    assert main(args) == 0 and open_store(tmp_path / "out" / "text").count == len(kept)  # complete: no-op


def test_two_processes_write_one_store(tmp_path, tiny_clip_dir, encoder):
    texts = make_texts(50, seed=4, empty_every=25)
    write_jsonl(tmp_path / "texts.jsonl", texts)
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "a.png")
    write_jsonl(tmp_path / "images.jsonl", [{"id": f"i{i}", "image": "a.png" if i % 4 else "missing.png"} for i in range(9)])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), "-m", "revision_plugin.cli", "embed", "--no-progress",
               "--encoder", "hf_clip", "--model", str(tiny_clip_dir), "--texts", str(tmp_path / "texts.jsonl"),
               "--images", str(tmp_path / "images.jsonl"), "--out", str(tmp_path / "out"), "--batch-size", "4", "--shard-rows", "8"]
    done = subprocess.run(command, env=_subprocess_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "text: 48 rows" in done.stdout
    store = open_store(tmp_path / "out" / "text")
    assert store.manifest["writers"] == [0, 1]
    kept = [r for r in texts if r["text"].strip()]
    assert sorted(store.ids()) == sorted(r["id"] for r in kept)
    assert_matches_encoder(store, kept, encoder)
    images = open_store(tmp_path / "out" / "image")
    assert images.manifest["writers"] == [0, 1] and images.count == 6
    assert sorted(r["id"] for r in images.rejected()) == ["i0", "i4", "i8"]
