"""The evaluation report: the confusion matrix and the worst images evaluate() keeps (one process, and two
under gloo), the self-contained HTML page of iwin_models.apps.report, and ``iwin-seg eval --report``."""
from __future__ import annotations

import base64
import html
import io
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_evaluation import CLASSES, folder_set

from iwin_models.apps import cli
from iwin_models.apps.report import PAGE_EDGE, most_confused, worst_panels, write_report
from iwin_models.engine.evaluation import (
    IoUMetric,
    _WorstImages,
    evaluate,
    format_results,
    json_ready,
    merge_worst,
    summary_line,
)

C = 6
NAMES = ["road", "car", "tree", "sky", "person", "sign"]


class ToyDataset:
    """Images of varied sizes whose first pixel holds their index, random labels (some ignored), and for each
    image a prediction right on a chosen share of its labelled pixels (accuracies all different)."""

    num_classes, class_names, ignore_index = C, NAMES, 255

    def __init__(self, n: int = 9, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.sizes = [(int(rng.integers(20, 40)), int(rng.integers(20, 50))) for _ in range(n)]
        self.share_right = rng.permutation(np.linspace(0.05, 0.95, n))
        self.files = [(Path(f"/nowhere/toy{i}.png"), Path(f"/nowhere/toy{i}_label.png")) for i in range(n)]

    def __len__(self) -> int:
        return len(self.sizes)

    def load(self, i: int):
        rng = np.random.default_rng(100 + i)
        h, w = self.sizes[i]
        label = rng.integers(0, C - 1, (h, w))  # the last class is never labelled
        label[rng.random((h, w)) < 0.1] = 255
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image[0, 0, 0] = i
        return image, label

    def prediction(self, i: int) -> np.ndarray:
        label = self.load(i)[1]
        rng = np.random.default_rng(200 + i)
        right = rng.random(label.shape) < self.share_right[i]
        wrong = (label + 1 + rng.integers(0, 2, label.shape)) % (C - 1)  # another class, never the last
        return np.where(right, label, wrong) % C  # ignored pixels (255) predicted as class 3

    def accuracy(self, i: int) -> float:
        label, pred = self.load(i)[1], self.prediction(i)
        keep = label != 255
        return float((pred[keep] == label[keep]).sum() / keep.sum())


def _toy_model() -> torch.nn.Module:
    model = torch.nn.Identity()
    model.num_classes = C
    return model


def _evaluate_toy(monkeypatch, ds: ToyDataset, **kwargs) -> dict:
    import iwin_models.engine.inference as inference

    monkeypatch.setattr(inference, "segment", lambda model, image, **kw: ds.prediction(int(image[0, 0, 0])))
    return evaluate(_toy_model(), ds, progress=False, fast=False, **kwargs)


# --- the confusion matrix and the worst images --------------------------------------------------------

def test_confusion_matrix_sums_and_halves(monkeypatch):
    ds = ToyDataset()
    r = _evaluate_toy(monkeypatch, ds)
    reference = np.zeros((C, C), np.int64)
    halves = [IoUMetric(C), IoUMetric(C)]
    for i in range(len(ds)):
        label, pred = ds.load(i)[1], ds.prediction(i)
        keep = label != 255
        np.add.at(reference, (label[keep], pred[keep]), 1)  # an independent count, pixel by pixel
        halves[i % 2].update(pred, label)
    cm = r["confusion"]
    assert cm.dtype == np.int64 and cm.shape == (C, C)
    np.testing.assert_array_equal(cm, reference)
    np.testing.assert_array_equal(np.diag(cm), r["area_intersect"])
    np.testing.assert_array_equal(cm.sum(1), r["area_label"])
    np.testing.assert_array_equal(cm.sum(0), r["area_pred"])
    assert cm[-1].sum() == 0 and cm[:, -1].sum() == 0  # class 5 neither labelled nor predicted
    summed = halves[0].compute()["confusion"] + halves[1].compute()["confusion"]  # what the all-reduce adds
    np.testing.assert_array_equal(summed, cm)
    assert r["worst"] == [] and json.dumps(json_ready(r))  # no images kept unless asked; JSON-ready


def test_worst_images_are_the_lowest_accuracies(monkeypatch):
    ds = ToyDataset()
    accuracies = [ds.accuracy(i) for i in range(len(ds))]
    r = _evaluate_toy(monkeypatch, ds, report_worst=4)
    expected = sorted(range(len(ds)), key=lambda i: accuracies[i])[:4]
    assert [w.index for w in r["worst"]] == expected
    assert [w.accuracy for w in r["worst"]] == sorted(accuracies)[:4]
    for w in r["worst"]:
        assert w.name == f"toy{w.index}.png" and w.labelled == int((ds.load(w.index)[1] != 255).sum())
        np.testing.assert_array_equal(w.prediction_map(), ds.prediction(w.index))
    assert [d["index"] for d in json.loads(json.dumps(json_ready(r)))["worst"]] == expected
    assert len(_evaluate_toy(monkeypatch, ds, report_worst=50)["worst"]) == len(ds)  # more than there are: all


def test_worst_keeps_at_most_n_maps_and_merges_across_processes(monkeypatch):
    import iwin_models.engine.evaluation as evaluation

    encoded = []
    real = evaluation._png_bytes
    monkeypatch.setattr(evaluation, "_png_bytes", lambda a, n: encoded.append(1) or real(a, n))
    accuracies = [0.5, 0.9, 0.1, 0.7, 0.1, 0.95, 0.3, 0.0, 0.8, 0.2]
    parts = [_WorstImages(3, 300), _WorstImages(3, 300)]  # 300 classes: 16-bit maps
    pred = np.array([[299, 0], [7, 258]])
    for i, acc in enumerate(accuracies):
        parts[i % 2].offer(None, i, round(acc * 1000), 1000, pred)
        assert all(len(p.heap) <= 3 for p in parts)
    parts[0].offer(None, 99, 0, 0, pred)  # no labelled pixel: not ranked
    assert len(encoded) < len(accuracies)  # a map is encoded only when it enters
    lowest = sorted(range(len(accuracies)), key=lambda i: (accuracies[i], i))[:3]  # ties: lower index
    merged = merge_worst([[e for _, e in p.heap] for p in parts], 3)
    assert [w.index for w in merged] == lowest == [7, 2, 4]
    np.testing.assert_array_equal(merged[0].prediction_map(), pred)
    assert parts[0].gathered() == sorted([e for _, e in parts[0].heap], key=lambda w: (w.accuracy, w.index))


def _gloo_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    import pickle

    import torch.distributed as dist

    import iwin_models.engine.inference as inference

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        ds = ToyDataset()
        inference.segment = lambda model, image, **kw: ds.prediction(int(image[0, 0, 0]))
        r = evaluate(_toy_model(), ds, progress=False, fast=False, report_worst=3)
        Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps(r))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_sum_the_matrix_and_gather_the_worst(monkeypatch, tmp_path):
    import pickle

    import torch.multiprocessing as mp

    one = _evaluate_toy(monkeypatch, ToyDataset(), report_worst=3)
    ctx = mp.start_processes(_gloo_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the two gloo processes did not finish in 240 s")
    for rank in (0, 1):
        two = pickle.loads((tmp_path / f"rank{rank}.pkl").read_bytes())
        assert two["num_images"] == one["num_images"] == 9  # each process took its share, summed
        np.testing.assert_array_equal(two["confusion"], one["confusion"])
        np.testing.assert_array_equal(two["area_union"], one["area_union"])
        assert two["worst"] == one["worst"]  # the same three, from both halves, on every process
    assert {w.index % 2 for w in one["worst"]} == {0, 1}  # the worst come from both processes' shares


# --- the page ------------------------------------------------------------------------------------

def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_most_confused_by_off_diagonal_mass():
    cm = np.zeros((6, 6), np.int64)
    np.fill_diagonal(cm, 1000)  # right pixels never count
    cm[1, 2] = 50  # 1 and 2: 50 each
    cm[4, 0] = 30
    cm[0, 4] = 5  # 0 and 4: 35 each
    cm[3, 5] = 40  # 3 and 5: 40 each (5 predicted only)
    assert most_confused(cm, 4) == [1, 2, 3, 5]
    assert most_confused(cm, 20) == [1, 2, 3, 5, 0, 4]  # never-confused classes are left out
    assert most_confused(np.eye(3, dtype=np.int64) * 9, 5) == []


def test_report_page_is_self_contained_and_says_what_the_table_says(monkeypatch, tmp_path):
    ds = ToyDataset()
    r = _evaluate_toy(monkeypatch, ds, report_worst=3)
    backend = __import__("matplotlib").get_backend()
    had_pyplot = "matplotlib.pyplot" in sys.modules
    path = write_report(r, ds, tmp_path / "rep", title="Toy <eval>", settings={"model": "toy"}, confused=4)
    page = path.read_text(encoding="utf-8")
    assert path == tmp_path / "rep" / "index.html" and (tmp_path / "rep" / "confusion.png").is_file()
    # self-contained: every src/href a data: URI, no URL of any kind, no script
    assert all(v.startswith("data:image/png;base64,") for v in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page))
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)  # base64 may hold "//"
    assert not re.search(r"https?:|//|<script|<link|url\(|@import", text)
    assert "<title>Toy &lt;eval&gt;</title>" in page and all(name in page for name in NAMES)
    # the table: the figures format_results prints, row for row, and the summary line
    printed = [line.split("|")[1:4] for line in format_results(r, NAMES).splitlines()[2:-1]]
    rows = re.findall(r'<tr><td>([^<]*)</td><td class="num">([^<]*)</td><td class="num">([^<]*)</td></tr>', page)
    assert rows == [tuple(c.strip() for c in line) for line in printed] and len(rows) == C
    assert rows[-1] == ("sign", "nan", "nan") and html.escape(summary_line(r)) in page
    # the worst images: 3 sections of 3 panels, captioned with name and accuracy; the confusion classes
    sections = re.findall(r'<section class="worst">(.*?)</section>', page, re.S)
    assert len(sections) == 3 and all(s.count("<img") == 3 for s in sections)
    for w, s in zip(r["worst"], sections):
        assert f"{w.name} (#{w.index}): pixel accuracy {100 * w.accuracy:.2f}%" in s
    shown = re.search(r'<span class="classes">([^<]*)</span>', page).group(1).split(", ")
    assert shown == [NAMES[i] for i in most_confused(r["confusion"], 4)]
    assert len(_images(page)) == 2 + 3 * 3  # chart, matrix, and the panels
    assert all(Image.open(io.BytesIO(png)).format == "PNG" for png in _images(page))
    # matplotlib drew without pyplot and left the user's backend alone
    assert __import__("matplotlib").get_backend() == backend
    assert had_pyplot or "matplotlib.pyplot" not in sys.modules


def test_worst_panels_are_downscaled_and_paint_ignored_pixels_black():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (900, 1300, 3), dtype=np.uint8)
    label = rng.integers(0, 3, (900, 1300))
    label[:100] = 255
    palette = np.array([[200, 10, 10], [10, 200, 10], [10, 10, 200]], np.uint8)
    panels = [np.asarray(Image.open(io.BytesIO(png))) for png in worst_panels(image, label, label % 255, palette)]
    assert [p.shape for p in panels] == [(354, PAGE_EDGE, 3)] * 3  # long edge 512, aspect kept
    truth = panels[1]
    assert (truth[:30] == 0).all() and set(map(tuple, truth[60:].reshape(-1, 3))) <= set(map(tuple, palette))
    small = worst_panels(image[:40, :50], label[:40, :50], label[:40, :50] % 255, palette)
    assert Image.open(io.BytesIO(small[0])).size == (50, 40)  # small images are not enlarged


# --- iwin-seg eval --report ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("reportdata")
    made = folder_set(root, 5)
    (root / "names.txt").write_text("\n".join(CLASSES))
    return dict(images=made["images"], labels=made["labels"], model=made["tiny5"], names=root / "names.txt")


def _eval_argv(folder: dict, *extra: str) -> list[str]:
    return ["eval", "--model", str(folder["model"]), "--images", str(folder["images"]), "--labels",
            str(folder["labels"]), "--class-names", str(folder["names"]), "--scale", "96", "96", "--no-progress",
            "--device", "cpu", *extra]


def test_cli_eval_writes_the_report(folder, tmp_path, capsys):
    rc = cli.main(_eval_argv(folder, "--report", str(tmp_path / "report"), "--report-worst", "2",
                             "--json", str(tmp_path / "r.json")))
    out = capsys.readouterr().out
    assert rc == 0, out
    page_path = tmp_path / "report" / "index.html"
    assert f"report: {page_path}" in out.splitlines()
    page = page_path.read_text(encoding="utf-8")
    summary = next(line for line in out.splitlines() if line.startswith("aAcc "))
    assert html.escape(summary) in page and "(5 images)" in summary
    assert page.count('<section class="worst">') == 2 and "square" in page
    worst = json.loads((tmp_path / "r.json").read_text())["worst"]
    assert len(worst) == 2 and worst[0]["accuracy"] <= worst[1]["accuracy"]
    assert f"{worst[0]['name']} (#{worst[0]['index']})" in page


def test_cli_eval_report_needs_matplotlib_before_the_model(folder, tmp_path, capsys, monkeypatch):
    import iwin_models.apps.cli.eval as eval_command

    loaded = []
    monkeypatch.setattr(eval_command, "resolve_model", lambda *a, **k: loaded.append(a) or pytest.fail("loaded"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    rc = cli.main(_eval_argv(folder, "--report", str(tmp_path / "report")))
    err = capsys.readouterr().err
    assert rc == 2 and loaded == [] and not (tmp_path / "report").exists()
    assert len(err.strip().splitlines()) == 1 and "pip install 'iwin-models[report]'" in err, err
    assert "matplotlib" in err
    rc = cli.main(_eval_argv(folder, "--report-worst", "-1"))
    assert rc == 2 and "--report-worst must be 0 or more" in capsys.readouterr().err

