"""The geometry report: build_report / format_table and the `revision report` command."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from revision_plugin.align import fit_operator
from revision_plugin.cli import main
from revision_plugin.geometry.report import (
    PLOT_NAMES,
    build_report,
    format_table,
    load_report,
    parse_method,
    split_rows,
)
from revision_plugin.synthetic import synthetic_embeddings


@pytest.fixture(autouse=True)
def _one_blas_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def paired():
    return synthetic_embeddings(1500, 1500, 32, seed=3, paired=True)


def _all_finite_or_none(obj, path="report"):
    if isinstance(obj, dict):
        for k, v in obj.items():
            _all_finite_or_none(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _all_finite_or_none(v, f"{path}[{i}]")
    elif isinstance(obj, float):
        assert math.isfinite(obj), path


def _check_pngs(out, names):
    for name in names:
        with Image.open(out / name) as img:
            img.verify()
        with Image.open(out / name) as img:
            img.load()
            assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100


def test_build_report_with_methods_and_pairs(tmp_path, paired):
    out = tmp_path / "rep"
    report = build_report(
        paired.text, paired.image, methods=["realign", "realign:centroid_iters=4", "c3", "blockwise"],
        out_dir=out, holdout=0.25, seed=0, max_points=800, sample_sizes=(100, 300, 5000), sample_seeds=2,
        pairs="rows", split="random",
    )
    on_disk = json.loads((out / "report.json").read_text())  # strict JSON: no NaN/Infinity
    assert on_disk["operators"].keys() == report["operators"].keys()
    _all_finite_or_none(on_disk)
    _check_pngs(out, PLOT_NAMES.values())
    assert report["plots"] == PLOT_NAMES

    ops = report["operators"]
    assert list(ops) == ["raw", "realign", "realign:centroid_iters=4", "c3", "blockwise"]
    assert report["data"]["eval_rows"] == {"text": 375, "image": 375}
    assert report["data"]["fit_rows"] == {"text": 1125, "image": 1125}
    assert ops["raw"]["knn_overlap"]["overlap"] == 1.0
    assert ops["raw"]["knn_overlap"]["n"] == 375
    assert ops["raw"]["mixing"]["n_per_side"] == 375
    # ReAlign: near-zero in-sample gap, held-out gap at the sampling floor, keeps the text spectrum
    assert ops["realign"]["gap_fit_split"] < 5e-3
    assert ops["realign:centroid_iters=4"]["gap_fit_split"] < ops["realign"]["gap_fit_split"]
    assert ops["realign"]["gap"] < 2 * ops["realign"]["gap_sampling_floor"]
    assert ops["realign"]["text_spectrum"]["alpha"] == pytest.approx(ops["raw"]["text_spectrum"]["alpha"], abs=0.05)
    # C3 measured in training mode: its isotropic noise flattens the spectrum
    assert ops["c3"]["mode"] == "train"
    assert ops["c3"]["text_spectrum"]["alpha"] < ops["raw"]["text_spectrum"]["alpha"] - 0.3
    assert ops["c3"]["knn_overlap"]["overlap"] < ops["realign"]["knn_overlap"]["overlap"]
    assert ops["realign"]["source"] == "fitted on the fit split"

    frame = report["frame"]
    assert frame["pairs_held_out"] == 375
    assert frame["raw"]["rank_u"] >= 1 and "leakage" in frame["raw"]
    assert ops["realign"]["frame"]["mean_gap_norm"] >= 0

    sc = report["sample_complexity"]
    assert sc["sizes"] == [100, 300, 1125]  # 5000 > fit split: the whole split is the last point
    assert set(sc["methods"]) == {"realign", "realign:centroid_iters=4", "c3", "blockwise"}
    assert len(sc["methods"]["realign"]["gaps"]) == 3 and len(sc["methods"]["realign"]["gaps"][0]) == 2

    table = format_table(report)
    for label in ops:
        assert label in table
    assert "frame" in table and "gap vs fit size" in table
    assert load_report(out)["schema_version"] == 1


def test_build_report_with_given_operators_tail_split_and_caps(tmp_path, paired):
    n_fit = 1200
    ops = {"ra": fit_operator("realign", paired.text[:n_fit], paired.image[:n_fit])}
    report = build_report(paired.text, paired.image, operators=ops, out_dir=None, holdout=0.2, seed=1,
                          max_points=300, max_rows=1000, sample_complexity=False)
    assert list(report["operators"]) == ["raw", "ra"]
    assert report["data"]["rows"] == {"text": 1000, "image": 1000}
    assert any("max_rows" in note for note in report["notes"])
    assert report["operators"]["ra"]["source"] == "given"
    assert report["operators"]["ra"]["mixing"]["n_per_side"] == 150
    assert report["operators"]["ra"]["knn_overlap"]["n"] == 200
    assert "sample_complexity" not in report and "plots" not in report


def test_in_sample_report_and_bad_inputs(paired):
    report = build_report(paired.text[:400], paired.image[:400], methods=["realign"], holdout=0.0,
                          sample_complexity=True, plots=False)
    assert report["data"]["in_sample"] and report["operators"]["realign"]["gap_fit_split"] is None
    assert "skipped" in report["sample_complexity"]
    with pytest.raises(ValueError, match="unknown operator method"):
        build_report(paired.text[:100], paired.image[:100], methods=["nope"], sample_complexity=False)
    with pytest.raises(ValueError, match="dim"):
        build_report(paired.text[:100], paired.image[:100, :16], sample_complexity=False)
    with pytest.raises(ValueError, match="pairs"):
        build_report(paired.text[:100], paired.image[:90], methods=[], pairs="rows", sample_complexity=False)
    with pytest.raises(ValueError, match="pair 1 refers to image row 500"):
        build_report(paired.text[:100], paired.image[:100], methods=[], pairs=np.array([[0, 0], [1, 500]]),
                     sample_complexity=False)


def test_split_rows():
    tf, te, imf, ime = split_rows(10, 20, 0.2, 0, "tail")
    assert te.tolist() == [8, 9] and ime.tolist() == [16, 17, 18, 19] and len(tf) == 8 and len(imf) == 16
    pairs = np.array([[i, 19 - i] for i in range(10)])
    tf, te, imf, ime = split_rows(10, 20, 0.3, 5, "random", pairs)
    assert len(te) == 3 and len(ime) == 6
    held = [p for p in pairs if p[0] in te and p[1] in ime]
    assert len(held) == 3  # whole pairs are held out
    assert not set(tf) & set(te) and not set(imf) & set(ime)
    rows = np.stack([np.arange(10), np.arange(10)], 1)
    tf, te, imf, ime = split_rows(10, 10, 0.3, 1, "random", rows)
    assert te.tolist() == ime.tolist()
    with pytest.raises(ValueError):
        split_rows(10, 10, 1.0, 0)


def test_parse_method():
    assert parse_method("realign") == ("realign", {})
    assert parse_method("realign:centroid_iters=4") == ("realign", {"centroid_iters": 4})
    assert parse_method("c3:noise_variance=0.01,renormalize=false") == ("c3", {"noise_variance": 0.01, "renormalize": False})
    with pytest.raises(ValueError):
        parse_method("c3:oops")


# --- CLI ---------------------------------------------------------------------------------------
@pytest.fixture
def npy_files(tmp_path, paired):
    np.save(tmp_path / "text.npy", paired.text[:800])
    np.save(tmp_path / "image.npy", paired.image[:800])
    return tmp_path / "text.npy", tmp_path / "image.npy"


def test_cli_report_with_operator_and_pairs(tmp_path, npy_files, capsys):
    text, image = npy_files
    op_dir = tmp_path / "ops" / "my_realign"
    fit_operator("realign", np.load(text), np.load(image)).save(op_dir)
    out = tmp_path / "out"
    rc = main(["report", "--text", str(text), "--image", str(image), "--operator", str(op_dir),
               "--method", "c3", "--pairs", "rows", "--out", str(out), "--max-points", "400",
               "--sample-seeds", "2"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "my_realign" in printed and "c3" in printed and "report.json" in printed
    report = load_report(out)
    assert list(report["operators"]) == ["raw", "my_realign", "c3"]
    assert report["data"]["split"] == "random" and report["frame"]["pairs_held_out"] == 160
    _check_pngs(out, report["plots"].values())


def test_cli_report_store_inputs_with_id_pairs(tmp_path, paired, capsys):
    from revision_plugin.store import write_store

    n = 300
    t_ids = [f"t{i}" for i in range(n)]
    i_ids = [f"img{i}" for i in range(n)]
    write_store(tmp_path / "ts", t_ids, paired.text[:n], "enc", fsync=False)
    write_store(tmp_path / "is", i_ids[::-1], paired.image[:n][::-1], "enc", fsync=False)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("text_id\timage_id\n" + "".join(f"t{i}\timg{i}\n" for i in range(n)))
    out = tmp_path / "out"
    rc = main(["report", "--text", str(tmp_path / "ts"), "--image", str(tmp_path / "is"), "--method", "realign",
               "--pairs", str(pairs), "--out", str(out), "--no-sample-complexity", "--no-plots"])
    assert rc == 0
    report = load_report(out)
    assert report["data"]["encoder_id"] == "enc" and report["frame"]["pairs_held_out"] == 60
    direct = build_report(paired.text[:n], paired.image[:n], methods=[], holdout=0.0, pairs="rows",
                          sample_complexity=False, plots=False)
    in_sample = main(["report", "--text", str(tmp_path / "ts"), "--image", str(tmp_path / "is"), "--holdout", "0",
                      "--method", "realign", "--pairs", str(pairs), "--out", str(tmp_path / "o2"),
                      "--no-sample-complexity", "--no-plots"])
    assert in_sample == 0
    # pairing by id through a reversed store gives the same paired statistics as row pairing
    assert load_report(tmp_path / "o2")["frame"]["raw"]["beta_norm"] == pytest.approx(direct["frame"]["raw"]["beta_norm"])


def test_cli_report_errors(tmp_path, npy_files, capsys):
    text, image = npy_files
    bad = tmp_path / "pairs.tsv"
    bad.write_text("a\tb\tc\n")
    assert main(["report", "--text", str(text), "--image", str(image), "--pairs", str(bad), "--out",
                 str(tmp_path / "o")]) == 2
    assert "pairs.tsv:1: expected 2 columns" in capsys.readouterr().err
    ids = tmp_path / "ids.tsv"
    ids.write_text("x\ty\n")
    assert main(["report", "--text", str(text), "--image", str(image), "--pairs", str(ids), "--out",
                 str(tmp_path / "o")]) == 2
    assert "not a feature store" in capsys.readouterr().err
    assert main(["report", "--text", str(text), "--image", str(tmp_path / "missing.npy"), "--out",
                 str(tmp_path / "o")]) == 2
    np.save(tmp_path / "small.npy", np.ones((5, 7), dtype=np.float32))
    assert main(["report", "--text", str(text), "--image", str(tmp_path / "small.npy"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "dim" in capsys.readouterr().err
