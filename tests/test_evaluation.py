"""mIoU metric (against an independent NumPy confusion matrix), evaluate(), and the ``iwin-seg eval``
command on one and on two processes (torchrun, gloo): the same figures either way."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MINI, REPO
from test_data import make_ade20k, make_folder

from iwin_models.apps import cli
from iwin_models.data.datasets import ADE20KDataset, FolderSegmentationDataset
from iwin_models.engine.evaluation import IoUMetric, evaluate, format_results
from iwin_models.fast.twin import CpuTwin
from iwin_models.models.upernet import IwinUPerNet


def numpy_reference(preds, targets, num_classes: int, ignore: int = 255) -> dict:
    """mmseg's figures from a confusion matrix (rows: label, columns: prediction)."""
    c = num_classes
    cm = np.zeros((c, c), np.int64)
    for p, t in zip(preds, targets):
        p, t = np.asarray(p).ravel(), np.asarray(t).ravel()
        keep = t != ignore
        cm += np.bincount(c * t[keep] + p[keep], minlength=c * c).reshape(c, c)
    inter, label, pred = np.diag(cm), cm.sum(1), cm.sum(0)
    union = label + pred - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou, acc = inter / union, inter / label
    return dict(aAcc=inter.sum() / label.sum(), mIoU=np.nanmean(iou), mAcc=np.nanmean(acc), IoU=iou, Acc=acc,
                area_intersect=inter, area_union=union, area_pred=pred, area_label=label, confusion=cm)


# --- the metric -----------------------------------------------------------------------------------

def test_iou_metric_matches_numpy_confusion_matrix(capsys):
    rng = np.random.default_rng(0)
    c = 9
    preds, targets = [], []
    metric = IoUMetric(c)
    for shape in ((37, 50), (64, 64), (5, 17, 23), (1, 1)):
        target = rng.integers(0, c - 2, shape)  # the last two classes never labelled: Acc NaN, IoU 0 or NaN
        target[rng.random(shape) < 0.15] = 255
        pred = np.where(rng.random(shape) < 0.6, np.where(target == 255, 0, target), rng.integers(0, c - 1, shape))
        preds.append(pred)
        targets.append(target)
        metric.update(pred if len(preds) % 2 else torch.from_numpy(pred), target)  # numpy and tensors
    got, ref = metric.compute(), numpy_reference(preds, targets, c)
    for k in ("area_intersect", "area_union", "area_pred", "area_label", "confusion"):
        np.testing.assert_array_equal(got[k], ref[k])
    assert got["confusion"].dtype == np.int64 and got["confusion"].shape == (c, c)
    assert np.isnan(got["Acc"][-1]) and np.isnan(got["IoU"][-1]) and got["IoU"][-2] == 0  # predicted, never labelled
    diff = max(abs(got[k] - ref[k]) for k in ("aAcc", "mIoU", "mAcc"))
    diff = max(diff, np.nanmax(abs(got["IoU"] - ref["IoU"])), np.nanmax(abs(got["Acc"] - ref["Acc"])))
    np.testing.assert_array_equal(np.isnan(got["IoU"]), np.isnan(ref["IoU"]))
    assert diff < 1e-12
    with capsys.disabled():
        print(f"\n[test_evaluation] IoUMetric vs NumPy confusion matrix: max |difference| {diff:.3g} "
              f"(mIoU {got['mIoU']:.6f})")
    # sync without torch.distributed is the same; compute() leaves the metric unchanged
    again = metric.compute(sync=True)
    assert again["mIoU"] == got["mIoU"] and again["aAcc"] == got["aAcc"]


def test_iou_metric_hand_example_and_errors():
    m = IoUMetric(3)
    m.update(np.array([[0, 1], [1, 1]]), np.array([[0, 1], [255, 0]]))
    r = m.compute()
    assert r["IoU"][:2].tolist() == [0.5, 0.5] and math.isnan(r["IoU"][2])
    assert r["Acc"][:2].tolist() == [0.5, 1.0] and math.isnan(r["Acc"][2])
    assert r["mIoU"] == 0.5 and r["mAcc"] == 0.75 and r["aAcc"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="differ in size"):
        m.update(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(TypeError, match="integer class indices"):
        m.update(np.zeros((2, 2)), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="pred has values outside 0..2: \\[3\\]"):
        m.update(np.full((2, 2), 3), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="target has values"):
        m.update(np.zeros((2, 2), int), np.full((2, 2), 7))
    empty = IoUMetric(2).compute()
    assert math.isnan(empty["mIoU"]) and math.isnan(empty["aAcc"])


# --- evaluate -------------------------------------------------------------------------------------

CLASSES = ["bg", "square", "disc", "stripe", "blob"]


def folder_set(root, n: int) -> dict:
    """A folder data set of ``n`` images of the five CLASSES, and a random mini segmenter (seed 0) saved beside it."""
    images, labels = make_folder(root / "folder", n=n, num_classes=len(CLASSES))
    torch.manual_seed(0)
    small = IwinUPerNet("iwin_tiny", encoder_kwargs=MINI, decoder_channels=64, aux_channels=32, classes=len(CLASSES))
    small.save_pretrained(root / "tiny5")
    return dict(images=images, labels=labels, tiny5=root / "tiny5", model5=small)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("evaldata")
    folder = folder_set(root, 6)
    torch.manual_seed(1)
    ade = IwinUPerNet("iwin_tiny", encoder_kwargs=MINI, decoder_channels=64, aux_channels=32, classes=150)
    with torch.no_grad():  # a spread of classes in the predictions, so the figures say something
        ade.segmentation_head.conv_seg.weight.mul_(30)
    ade.save_pretrained(root / "tiny150")
    return dict(folder, ade=make_ade20k(root / "ade", n_val=7, n_train=1), tiny150=root / "tiny150")


def test_evaluate_with_oracle_and_wrong_predictions(data, monkeypatch):
    import iwin_models.engine.inference as inference

    ds = FolderSegmentationDataset(data["images"], data["labels"], CLASSES)
    model = data["model5"]
    labels = [ds.load(i)[1] for i in range(len(ds))]
    calls = []

    models = []

    def oracle(model, image, **kwargs):
        calls.append(kwargs)
        models.append(model)
        label = labels[len(calls) - 1]
        return np.where(label == 255, 0, label)

    monkeypatch.setattr(inference, "segment", oracle)
    model.train()
    r = evaluate(model, ds, progress=False, scale=(128, 128), slide=True)
    assert model.training  # put back
    assert r["aAcc"] == 1.0 and r["mIoU"] == 1.0 and r["mAcc"] == 1.0 and r["num_images"] == 6
    # converted once for the whole set (a copy sharing the weights), then segmented as it is
    assert calls[0] == dict(aug=False, slide=True, dtype=None, scale=(128, 128), fast=False)
    assert len({id(m) for m in models}) == 1 and models[0] is not model
    assert any(isinstance(m, CpuTwin) for m in models[0].modules())
    assert models[0].segmentation_head.conv_seg.weight is model.segmentation_head.conv_seg.weight
    calls.clear()
    models.clear()
    evaluate(model, ds, progress=False, limit=1, fast=False, dtype=torch.bfloat16)  # the CLI's: it converted itself
    assert calls == [dict(aug=False, slide=False, dtype=torch.bfloat16, scale=None, fast=False)] and models == [model]

    calls.clear()
    monkeypatch.setattr(inference, "segment", lambda model, image, **kw: (oracle(model, image, **kw) + 1) % 5)
    r = evaluate(model, ds, progress=False, limit=4)
    assert r["aAcc"] == 0.0 and r["mIoU"] == 0.0 and r["num_images"] == 4 and len(calls) == 4

    with pytest.raises(ValueError, match="predicts 5 classes but the data set has 150"):
        evaluate(model, ADE20KDataset(data["ade"]), progress=False)


def test_evaluate_real_model_equals_manual_loop(data):
    from iwin_models.engine.inference import segment

    ds = FolderSegmentationDataset(data["images"], data["labels"], CLASSES)
    model = data["model5"]
    r = evaluate(model, ds, progress=False, scale=(96, 96))
    m = IoUMetric(len(CLASSES))
    for i in range(len(ds)):
        image, label = ds.load(i)
        m.update(segment(model, image, scale=(96, 96)), label)
    ref = m.compute()
    np.testing.assert_array_equal(r["area_intersect"], ref["area_intersect"])
    np.testing.assert_array_equal(r["area_union"], ref["area_union"])
    assert r["mIoU"] == ref["mIoU"]
    table = format_results(r, CLASSES)
    assert table.splitlines()[2].startswith("| bg ") and table.splitlines()[-1].startswith("aAcc ")


# --- iwin-seg eval, 1 and 2 processes ------------------------------------------------------------

def _summary(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("aAcc ")]
    assert len(lines) == 1, out
    return lines[0]


def _eval_args(data, json_path: Path, report: Path) -> list[str]:
    return ["eval", "--model", str(data["tiny150"]), "--data-root", str(data["ade"].parent), "--scale", "128", "128",
            "--no-progress", "--json", str(json_path), "--report", str(report), "--report-worst", "3"]


def test_cli_eval_folder_dataset(data, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(CLASSES))
    rc = cli.main(["eval", "--model", str(data["tiny5"]), "--images", str(data["images"]), "--labels",
                   str(data["labels"]), "--class-names", str(names), "--scale", "96", "96", "--no-progress",
                   "--limit", "3", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "| square " in out and "(3 images)" in _summary(out)


def test_cli_eval_errors(data, tmp_path, capsys):
    rc = cli.main(["eval", "--model", str(data["tiny150"]), "--data-root", str(tmp_path / "none"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "no ADE20K folder" in err and len(err.strip().splitlines()) == 1
    rc = cli.main(["eval", "--model", str(data["tiny5"]), "--data-root", str(data["ade"]), "--no-progress",
                   "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "predicts 5 classes but the data set has 150" in err
    rc = cli.main(["eval", "--model", str(data["tiny5"]), "--images", str(data["images"]), "--device", "cpu"])
    assert rc == 2 and "--labels" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_eval_two_processes_match_one(data, tmp_path, capsys):
    one_json, two_json = tmp_path / "one.json", tmp_path / "two.json"
    rc = cli.main([*_eval_args(data, one_json, tmp_path / "one"), "--device", "cpu"])
    one = capsys.readouterr().out
    assert rc == 0, one

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["CUDA_VISIBLE_DEVICES"] = ""  # gloo on CPU, whatever the machine has
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "iwin_models.apps.cli", *_eval_args(data, two_json, tmp_path / "two")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 processes" in proc.stdout and proc.stdout.count("aAcc ") == 1  # rank 0 prints, once
    assert _summary(proc.stdout) == _summary(one)
    a, b = json.loads(one_json.read_text()), json.loads(two_json.read_text())
    assert a == b  # every per-class sum and figure, the confusion matrix and the worst images, exactly
    assert len(a["worst"]) == 3 and len(a["confusion"]) == 150
    assert proc.stdout.count("report: ") == 1 and (tmp_path / "two" / "index.html").is_file()  # written once
    assert _summary(proc.stdout) in (tmp_path / "two" / "index.html").read_text(encoding="utf-8")
    # 7 images in all: each process took its share (14 if both did all; 4 if nothing was summed)
    assert a["num_images"] == 7 and sum(a["area_label"]) > 0
    with capsys.disabled():
        print(f"\n[test_evaluation] 1 process: {_summary(one)}\n[test_evaluation] 2 processes: "
              f"{_summary(proc.stdout)} (mIoU {a['mIoU']!r} vs {b['mIoU']!r})")
