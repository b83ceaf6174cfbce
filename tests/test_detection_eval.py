"""evaluate_detector: the COCO metric plumbing with fake models whose detections are the ground truth (AP 1) or
shifted from it (AP lower), a real mini detector, bad inputs, and one vs two processes (torchrun, gloo)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from _coco import CATEGORIES, make_coco
from conftest import REPO

import iwin_models
import iwin_models.engine.detection_eval as detection_eval
from iwin_models import Detections, evaluate_detector
from iwin_models.engine.detection_eval import format_detection_results

NAMES = [c["name"] for c in sorted(CATEGORIES, key=lambda c: c["id"])]  # the model's class i: the i-th id


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_coco(tmp_path_factory.mktemp("coco"))


def _oracle(coco_set, shift: int = 0, score_of=lambda k: 1.0 - 0.01 * k):
    """A fake detect(): each image's non-crowd ground truth (moved ``shift`` pixels right and down)."""
    from pycocotools.coco import COCO

    gt = COCO(str(coco_set["ann_file"]))
    by_size = {(i["height"], i["width"]): i["id"] for i in coco_set["data"]["images"]}
    order = sorted(gt.getCatIds())

    def fake_detect(model, rgb, **options):
        image_id = by_size[rgb.shape[:2]]
        anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=[image_id])) if not a["iscrowd"]]
        h, w = rgb.shape[:2]
        masks = np.zeros((len(anns), h, w), bool)
        boxes = np.zeros((len(anns), 4), np.float32)
        for k, a in enumerate(anns):
            masks[k] = np.roll(gt.annToMask(a).astype(bool), (shift, shift), axis=(0, 1))
            x, y, bw, bh = a["bbox"]
            boxes[k] = [x + shift, y + shift, x + bw + shift, y + bh + shift]
        return Detections(boxes=boxes, scores=np.array([score_of(k) for k in range(len(anns))], np.float32),
                          labels=np.array([order.index(a["category_id"]) for a in anns], np.int64), masks=masks,
                          class_names=NAMES)
    return fake_detect


FAKE = types.SimpleNamespace(class_names=NAMES)


def test_ground_truth_detections_score_one(coco, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(detection_eval, "detect", _oracle(coco))
    results = tmp_path / "out" / "results.json"
    figures = evaluate_detector(FAKE, coco["ann_file"], coco["img_dir"], progress=False, results_file=results)
    for iou_type in ("bbox", "segm"):
        assert figures[f"{iou_type}_mAP"] == figures[f"{iou_type}_mAP_50"] == figures[f"{iou_type}_mAP_75"] == 1.0
        assert figures[f"{iou_type}_mAP_s"] == 1.0  # every shape is small (< 32^2 px)
        assert figures[f"{iou_type}_mAP_m"] == figures[f"{iou_type}_mAP_l"] == -1.0  # no medium / large truth
    assert figures["bbox_mAP_copypaste"] == "1.000 1.000 1.000 1.000 -1.000 -1.000"
    assert figures["num_images"] == 5 and figures["skipped"] == []
    written = json.loads(results.read_text())
    assert len(written) == figures["num_detections"] == sum(not a["iscrowd"] for a in coco["data"]["annotations"])
    assert {r["category_id"] for r in written} == {3, 7, 12}  # the file's ids, not the class indices
    assert all(isinstance(r["segmentation"]["counts"], str) and len(r["bbox"]) == 4 for r in written)
    table = format_detection_results(figures)
    assert "| bbox   |  100.0 |  100.0 |  100.0 |  100.0 |    n/a |    n/a |" in table
    with capsys.disabled():
        print(f"\n[test_detection_eval] ground truth: {figures['bbox_mAP_copypaste']} (bbox), "
              f"{figures['segm_mAP_copypaste']} (segm)")


def test_shifted_detections_score_lower(coco, monkeypatch, capsys):
    monkeypatch.setattr(detection_eval, "detect", _oracle(coco, shift=3))
    figures = evaluate_detector(FAKE, coco["ann_file"], coco["img_dir"], progress=False)
    for iou_type in ("bbox", "segm"):
        assert 0 < figures[f"{iou_type}_mAP"] < 0.9 and figures[f"{iou_type}_mAP_75"] < 1.0
    with capsys.disabled():
        print(f"\n[test_detection_eval] shifted 3 px: {figures['bbox_mAP_copypaste']} (bbox), "
              f"{figures['segm_mAP_copypaste']} (segm)")


def test_limit_missing_images_and_bad_files(coco, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(detection_eval, "detect", _oracle(coco))
    figures = evaluate_detector(FAKE, coco["ann_file"], coco["img_dir"], progress=False, limit=2)
    assert figures["num_images"] == 2 and figures["bbox_mAP"] == 1.0  # only those images' truth counts
    data = json.loads(coco["ann_file"].read_text())
    data["images"][1]["file_name"] = "gone.png"
    ann = tmp_path / "gone.json"
    ann.write_text(json.dumps(data))
    figures = evaluate_detector(FAKE, ann, coco["img_dir"], progress=False)
    assert "skipped image 110" in capsys.readouterr().err and "gone.png" in str(figures["skipped"])
    assert figures["num_images"] == 4 and figures["skipped"][0][1] == 110 and figures["segm_mAP"] == 1.0
    (tmp_path / "bad.json").write_text("not json")
    with pytest.raises(ValueError, match="bad.json is not a COCO annotation file"):
        evaluate_detector(FAKE, tmp_path / "bad.json", coco["img_dir"])
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="list.json is not a COCO annotation file"):
        evaluate_detector(FAKE, tmp_path / "list.json", coco["img_dir"])
    with pytest.raises(ValueError, match="has 3 categories but the model predicts 80 classes"):
        evaluate_detector(types.SimpleNamespace(class_names=["x"] * 80), coco["ann_file"], coco["img_dir"])


def _mini3(fixtures_dir):
    """The fixtures' mini Mask R-CNN with 3 (re-initialised) classes, on a small test scale (fast on a CPU)."""
    from _detectors import mini_detector

    if not (fixtures_dir / "detection" / "mini_mask_rcnn.pth").is_file():
        pytest.skip("detection fixtures not found")
    with pytest.warns(UserWarning, match="re-initialised"):
        model = mini_detector(fixtures_dir / "detection", num_classes=3)
    model.transform.scale = (160, 128)
    return model


@pytest.mark.slow
def test_real_mini_detector_runs_and_agrees_with_detect(coco, fixtures_dir, tmp_path):
    import torch

    torch.manual_seed(0)
    model = _mini3(fixtures_dir)
    results = tmp_path / "r.json"
    figures = evaluate_detector(model, coco["ann_file"], coco["img_dir"], progress=False, results_file=results,
                                limit=2)
    found = iwin_models.detect(model, coco["img_dir"] / "img0.png")
    written = [r for r in json.loads(results.read_text()) if r["image_id"] == 100]
    assert len(written) == len(found) > 0 and figures["num_detections"] == len(json.loads(results.read_text()))
    np.testing.assert_allclose(written[0]["bbox"][:2], found.boxes[0][:2], rtol=0, atol=1e-4)
    assert all(0 <= figures[k] <= 1 for k in ("bbox_mAP", "segm_mAP"))


_TWO = """
import json, sys, torch, warnings
import iwin_models.engine.detection_eval as detection_eval
from _coco import make_coco
from test_detection_eval import FAKE, _oracle
from iwin_models import create_detector, evaluate_detector
from iwin_models.engine.distributed import init_distributed, world
warnings.simplefilter("ignore")
init_distributed("cpu")
torch.manual_seed(0)
model = create_detector("iwin_tiny_mask_rcnn_coco_3x", weights=sys.argv[1])
model.transform.scale = (160, 128)
ann, img, out = sys.argv[2:5]
figures = evaluate_detector(model, ann, img, progress=False, results_file=out)
detection_eval.detect = _oracle(dict(ann_file=ann, data=json.load(open(ann))), shift=2)
shifted = evaluate_detector(FAKE, ann, img, progress=False)
json.dump([figures, shifted], open(out + f".rank{world()[0]}", "w"))
"""


@pytest.mark.slow
def test_two_processes_give_one_process_figures(coco, fixtures_dir, tmp_path, monkeypatch, capsys):
    """The mini detector (random classes: AP 0) and a fake shifted by 2 px (AP between 0 and 1, where the order
    of the gathered results matters) give every figure of one process, on both processes."""
    model = _mini3(fixtures_dir)
    model.save_pretrained(tmp_path / "mini3")
    one = evaluate_detector(model, coco["ann_file"], coco["img_dir"], progress=False, results_file=tmp_path / "1.json")
    monkeypatch.setattr(detection_eval, "detect", _oracle(coco, shift=2))
    one_shifted = evaluate_detector(FAKE, coco["ann_file"], coco["img_dir"], progress=False)
    script = tmp_path / "two.py"
    script.write_text(_TWO)
    tests = str(REPO / "tests")
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([str(REPO), tests, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path / "mini3"), str(coco["ann_file"]), str(coco["img_dir"]),
                           str(tmp_path / "2.json")], capture_output=True, text=True, timeout=400, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks = [json.loads((tmp_path / f"2.json.rank{r}").read_text()) for r in (0, 1)]
    one = json.loads(json.dumps([one, one_shifted]))  # tuples as lists, as the processes wrote them
    assert ranks[0] == ranks[1] == one  # every figure, exactly, on both processes
    assert json.loads((tmp_path / "2.json").read_text()) == json.loads((tmp_path / "1.json").read_text())
    assert one[0]["num_images"] == 5 and one[0]["num_detections"] > 0 and 0 < one[1]["segm_mAP"] < 1
    with capsys.disabled():
        for what, a, b in [("mini detector", one[0], ranks[0][0]), ("shifted 2 px", one[1], ranks[0][1])]:
            print(f"\n[test_detection_eval] {what}: 1 process bbox {a['bbox_mAP_copypaste']} segm "
                  f"{a['segm_mAP_copypaste']}; 2 processes bbox {b['bbox_mAP_copypaste']} segm "
                  f"{b['segm_mAP_copypaste']} (segm_mAP {a['segm_mAP']!r} vs {b['segm_mAP']!r})")
