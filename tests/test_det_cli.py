"""``iwin-det predict | eval | convert`` in this process, with the fixtures' mini Mask R-CNN (saved as a
``save_pretrained`` folder) on a small test scale: outputs, COCO JSON, bad files, one-line errors, round trips."""
from __future__ import annotations

import functools
import json
import warnings

import numpy as np
import pytest
from _coco import make_coco
from _detectors import MINI, MINIS, mini_detector
from PIL import Image

import iwin_models.models.detection.transform as transform
import iwin_models.models.detectors as detectors
from iwin_models import create_detector, detect
from iwin_models.apps.cli.det import COMMANDS, main

NAME = MINIS["mini_mask_rcnn"]


@pytest.fixture(autouse=True)
def _small_scale(monkeypatch):
    """Every image resized into 160x128 instead of 1333x800: the same code, a fraction of the CPU time."""
    original = transform.rescale_size
    monkeypatch.setattr(transform, "rescale_size", lambda h, w, scale=None: original(h, w, (160, 128)))


@pytest.fixture(scope="module")
def det_fx(fixtures_dir):
    path = fixtures_dir / "detection"
    if not (path / "mini_mask_rcnn.pth").is_file():
        pytest.skip(f"detection fixtures not found under {path}")
    return path


@pytest.fixture(scope="module")
def mini_dir(det_fx, tmp_path_factory):
    """The mini Mask R-CNN (80 COCO classes) as a save_pretrained folder."""
    return mini_detector(det_fx).save_pretrained(tmp_path_factory.mktemp("models") / "mini")


@pytest.fixture(scope="module")
def mini3_dir(det_fx, tmp_path_factory):
    """The mini Mask R-CNN with 3 re-initialised classes (for the synthetic COCO set's 3 categories)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mini_detector(det_fx, num_classes=3).save_pretrained(tmp_path_factory.mktemp("models") / "mini3")


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_coco(tmp_path_factory.mktemp("coco"))


def _error_line(err: str, command: str, fragment: str) -> None:
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"iwin-det {command}: error: ") and fragment in lines[-1], err


def test_commands_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage: iwin-det") and all(c in out for c in COMMANDS)
    assert list(COMMANDS) == ["predict", "eval", "convert"]


def test_predict_writes_overlays_and_coco_json_and_reports_bad_files(mini_dir, coco, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("img0.png", "img2.png"):
        (photos / name).write_bytes((coco["img_dir"] / name).read_bytes())
    (photos / "img0.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")  # a second img0, and unreadable
    out = tmp_path / "out"
    rc = main(["predict", str(photos), "--model", NAME, "--weights", str(mini_dir), "--score-threshold", "0.2",
               "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "skipped" in err and "img0.jpg" in err
    _error_line(err, "predict", "1 of 3 images could not be read: " + str(photos / "img0.jpg"))
    assert sorted(p.name for p in out.iterdir()) == ["img0.png.json", "img0.png_overlay.png", "img2.json",
                                                     "img2_overlay.png"]  # img0.* share a stem: whole names
    record = json.loads((out / "img2.json").read_text())
    assert (record["height"], record["width"]) == (60, 90) and Image.open(out / "img2_overlay.png").size == (90, 60)
    found = detect(create_detector(NAME, weights=mini_dir), photos / "img2.png", score_threshold=0.2)
    assert len(record["detections"]) == len(found) > 0
    first = record["detections"][0]
    assert first["score"] >= 0.2 and first["category_name"] == found.names[0] and first["label"] == found.labels[0]
    assert first["category_id"] == found.category_ids[found.labels[0]]  # the COCO id of the class
    from pycocotools import mask as mask_util

    assert np.array_equal(mask_util.decode(first["segmentation"]).astype(bool), found.masks[0])
    x1, y1, x2, y2 = found.boxes[0]
    np.testing.assert_allclose(first["bbox"], [x1, y1, x2 - x1, y2 - y1], atol=1e-4)


def test_predict_defaults_to_the_sample_and_refuses_a_file_as_out(mini_dir, tmp_path, capsys):
    assert main(["predict", "--model", NAME, "--weights", str(mini_dir), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 0
    assert {p.name for p in (tmp_path / "o").iterdir()} == {"sample_overlay.png", "sample.json"}
    (tmp_path / "f").write_text("x")
    assert main(["predict", "--model", NAME, "--out", str(tmp_path / "f")]) == 2
    _error_line(capsys.readouterr().err, "predict", "is a file, not a folder")
    assert main(["predict", "--model", "no_such_detector", "--out", str(tmp_path / "n")]) == 2
    _error_line(capsys.readouterr().err, "predict", "unknown detector 'no_such_detector'")


def test_eval_prints_the_table_and_writes_results(mini3_dir, coco, tmp_path, capsys):
    results, figures = tmp_path / "r" / "results.json", tmp_path / "figures.json"
    rc = main(["eval", "--model", NAME, "--weights", str(mini3_dir), "--ann-file", str(coco["ann_file"]),
               "--img-dir", str(coco["img_dir"]), "--limit", "2", "--results", str(results), "--json", str(figures),
               "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "on 2 images" in out and "| bbox   |" in out and "| segm   |" in out and "segm_mAP_copypaste: " in out
    written = json.loads(results.read_text())
    assert {r["image_id"] for r in written} <= {100, 110} and {r["category_id"] for r in written} <= {3, 7, 12}
    assert json.loads(figures.read_text())["num_detections"] == len(written) > 0


def test_eval_errors(mini_dir, mini3_dir, coco, tmp_path, capsys):
    base = ["eval", "--model", NAME, "--img-dir", str(coco["img_dir"]), "--no-progress"]
    assert main([*base, "--weights", str(mini_dir), "--ann-file", str(coco["ann_file"])]) == 2
    _error_line(capsys.readouterr().err, "eval", "has 3 categories but the model predicts 80 classes")
    (tmp_path / "bad.json").write_text("{")
    assert main([*base, "--weights", str(mini3_dir), "--ann-file", str(tmp_path / "bad.json")]) == 2
    _error_line(capsys.readouterr().err, "eval", "bad.json is not a COCO annotation file")
    data = json.loads(coco["ann_file"].read_text())
    data["images"] = data["images"][-1:] + [dict(data["images"][0], file_name="gone.png")]
    (tmp_path / "gone.json").write_text(json.dumps(data))
    assert main([*base, "--weights", str(mini3_dir), "--ann-file", str(tmp_path / "gone.json")]) == 2
    captured = capsys.readouterr()
    assert "on 1 images" in captured.out and "| bbox   |" in captured.out  # the rest evaluated
    _error_line(captured.err, "eval", "1 images could not be read (the figures are of the rest)")
    assert "gone.png (image 100)" in captured.err


def test_convert_writes_a_folder_create_detector_reads(det_fx, tmp_path, capsys, monkeypatch):
    # an mmdet .pth carries no architecture: the mini's widths are given to create_detector as Python users would
    monkeypatch.setattr(detectors, "create_detector", functools.partial(detectors.create_detector, **MINI))
    rc = main(["convert", str(det_fx / "mini_mask_rcnn.pth"), "--model", NAME, "--out", str(tmp_path / "hub")])
    assert rc == 0 and "config.json, model.safetensors" in capsys.readouterr().out
    monkeypatch.undo()
    back = create_detector(NAME, weights=tmp_path / "hub")  # the folder gives the architecture
    original = mini_detector(det_fx)
    assert back.state_dict().keys() == original.state_dict().keys()
    assert all(v.equal(original.state_dict()[k]) for k, v in back.state_dict().items())
    assert back.class_names == original.class_names and "Mask R-CNN" in (tmp_path / "hub" / "README.md").read_text()
    assert main(["convert", str(tmp_path / "hub" / "config.json"), "--model", NAME, "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("iwin-det convert: error: ")
