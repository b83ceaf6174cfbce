"""The demo page without a browser: its pure parts (the same inference as ``segment()``, the pictures, the messages
for bad photos, EXIF applied once, bounded memory), the page's handlers, ``iwin-seg demo``'s missing-extra line,
and the Hugging Face Space in ``examples/space/`` (imported and built, not served).

The page in a real browser: ``tests/test_demo_browser.py``.
"""
from __future__ import annotations

import html
import importlib.util
import json
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from _detectors import MINIS, mini_detector
from conftest import MINI, REPO
from PIL import Image

from iwin_models import create_detector, detect
from iwin_models.apps import demo, visualize
from iwin_models.apps.cli import main as cli
from iwin_models.apps.demo import app as demo_app
from iwin_models.apps.demo import detect_tab, detections, photos, pictures, segment_tab
from iwin_models.apps.demo import session as demo_session
from iwin_models.data import SAMPLE_IMAGE, ade20k
from iwin_models.engine import inference
from iwin_models.engine.detection import Detections
from iwin_models.engine.detection_eval import detections_json
from iwin_models.engine.inference import segment
from iwin_models.io import images
from iwin_models.io.images import load_image
from iwin_models.models import weights
from iwin_models.models.detection.weights import DETECTORS
from iwin_models.models.segmenters import load_segmenter
from iwin_models.models.upernet import IwinUPerNet
from iwin_models.models.weights import EvalProtocol

SPACE = REPO / "examples" / "space"
NAMES, PALETTE = list(ade20k.CLASSES[:8]), [tuple(p) for p in ade20k.PALETTE[:8]]


def make_mini_folder(path: Path, seed: int = 1) -> Path:
    """A save_pretrained folder of a tiny 8-class segmenter (the first ADE20K names and colours) whose classifier
    is centred on the sample photo's features, so that its class map of the sample has several classes (a random
    head gives nearly one class everywhere). An inference of the sample takes about a second on a CPU core."""
    torch.manual_seed(seed)
    model = IwinUPerNet("iwin_tiny", encoder_kwargs=MINI, decoder_channels=16, aux_channels=0, classes=8).eval()
    model.set_class_info(NAMES, PALETTE)
    conv = model.segmentation_head.conv_seg
    seen = []
    hook = conv.register_forward_hook(lambda module, args, out: seen.append(args[0].mean(dim=(0, 2, 3))))
    segment(model, SAMPLE_IMAGE, fast=False)
    hook.remove()
    with torch.no_grad():
        conv.weight.mul_(30)
        conv.bias.copy_(-(conv.weight[:, :, 0, 0] @ seen[0]))
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Path:
    return make_mini_folder(tmp_path_factory.mktemp("demo") / "mini")


@pytest.fixture(scope="module")
def session(mini, tmp_path_factory) -> demo.DemoSession:
    choices, default = demo.default_choices(str(mini))
    return demo.DemoSession(choices, default=default, workdir=tmp_path_factory.mktemp("downloads"))


@pytest.fixture(scope="module")
def reference(mini):
    """The same model loaded in this process, as a user of segment() would."""
    return load_segmenter(str(mini))


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG whose header says w x h (no pixel data): refused from the header, before any decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))
    return path


# --- the same inference as segment() -------------------------------------------------------------

def test_importing_the_demo_does_not_import_gradio():
    code = ("import sys, iwin_models.apps.demo.app, iwin_models.apps.demo.segment_tab, iwin_models.apps.cli.demo; "
            "print('gradio' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_the_result_is_segment_s_class_map_legend_and_sizes(session, reference):
    result = session.run_segmentation(SAMPLE_IMAGE)
    expected = segment(reference, SAMPLE_IMAGE)
    assert result.labels.dtype == np.uint8 and np.array_equal(result.labels, expected)
    assert result.legend == visualize.legend_entries(expected, NAMES)
    assert len([i for i, _ in result.legend if i is not None]) >= 3, "the mini model should find several classes"
    assert result.size == (640, 427) and result.shown_labels is result.labels  # small: shown as it is
    assert result.confidence.shape == (427, 640, 3) and 0 < result.mean_confidence <= 1
    assert result.input_sizes == inference.input_sizes(427, 640, False, None, weights.ADE20K_PROTOCOL)
    info = demo.info_markdown(result)
    assert "640 x 427 pixels" in info and "model input 767 x 512" in info and " s**" in info


@pytest.mark.parametrize("protocol, aug, slide", [("slide", False, True), ("multi-scale + flip", True, False)])
def test_each_protocol_is_predict_s_with_the_model_s_protocol(mini, reference, tmp_path, protocol, aug, slide):
    small = EvalProtocol(scale=(192, 96), slide_crop=96, slide_stride=64, aug_ratios=(0.5, 1.0))  # quick
    session = demo.DemoSession([demo.ModelChoice("mini", str(mini), protocol=small)], workdir=tmp_path)
    image = _rgb(48, 80, 3)
    Image.fromarray(image).save(tmp_path / "noise.png")
    result = session.run_segmentation(tmp_path / "noise.png", protocol=protocol)
    assert np.array_equal(result.labels, segment(reference, image, aug=aug, slide=slide, protocol=small))
    assert result.input_sizes == inference.input_sizes(48, 80, aug, None, small)


def test_exif_orientation_is_applied_once(session, reference, tmp_path):
    """A photo whose EXIF says 'rotate 90' is segmented upright, as segment() reads the file (not rotated twice:
    Gradio's own EXIF handling is bypassed)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(_rgb(40, 72, 5)).save(path, exif=exif, quality=95)
    result = session.run_segmentation(path)
    upright = images.load_image(path)
    assert upright.shape[:2] == (72, 40) and np.array_equal(result.image, upright)
    assert np.array_equal(result.labels, segment(reference, path))


@pytest.mark.parametrize("kind, fragment", [
    ("not an image", "broken.jpg is not a readable image (cannot identify image file 'broken.jpg')"),
    ("truncated", "broken.jpg is not a readable image ("),
    ("over the limit", "broken.jpg has 30000 x 30000 pixels (900 MP), over the limit"),
    ("empty", "broken.jpg is not a readable image ("),
])
def test_a_bad_photo_is_a_message_naming_it(session, tmp_path, kind, fragment):
    upload = tmp_path / "gradio-upload-1234"
    upload.mkdir()
    path = upload / "broken.jpg"
    if kind == "not an image":
        path.write_bytes(b"not an image")
    elif kind == "truncated":
        Image.fromarray(_rgb(200, 300)).save(tmp_path / "whole.jpg")
        path.write_bytes((tmp_path / "whole.jpg").read_bytes()[:2000])
    elif kind == "over the limit":
        _png_header_only(path, 30000, 30000)
    else:
        path.write_bytes(b"")
    with pytest.raises(demo.PhotoError) as e:
        session.run_segmentation(path, name="broken.jpg")
    assert fragment in str(e.value) and str(upload) not in str(e.value), str(e.value)


def test_the_package_s_own_size_limit_names_the_photo(session, tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100)
    Image.fromarray(_rgb(20, 20)).save(tmp_path / "big.png")
    with pytest.raises(demo.PhotoError, match=r"^big.png: image of 20x20 pixels .* over the limit of 100 pixels"):
        demo.read_photo(tmp_path / "big.png", max_pixels=None)
    with pytest.raises(demo.PhotoError, match="no photo"):
        photos.photo_file(None, session.new_folder)


# --- the pictures --------------------------------------------------------------------------------

def test_the_overlay_is_visualize_s_blend_and_a_highlight_dims_the_rest():
    image, labels = _rgb(300, 70, 1), np.random.default_rng(2).integers(0, 8, (300, 70)).astype(np.uint8)
    for opacity in (0.0, 0.35, 0.6, 1.0):
        expected = (image * (1 - opacity) + np.asarray(PALETTE, np.uint8)[labels] * opacity).astype(np.uint8)
        picture = demo.overlay_picture(image, labels, PALETTE, opacity)
        assert picture.dtype == np.uint8 and np.array_equal(picture, expected)
        with_legend = np.asarray(visualize.overlay(image, labels, NAMES, PALETTE, alpha=opacity))
        assert np.array_equal(with_legend[:300, :70], picture)  # the blend of iwin-seg predict's overlays
    lit = demo.overlay_picture(image, labels, PALETTE, 0.6, highlight=3)
    blend = demo.overlay_picture(image, labels, PALETTE, 0.6)
    assert np.array_equal(lit[labels == 3], blend[labels == 3])
    assert np.array_equal(lit[labels != 3], (image[labels != 3] * pictures.DIM).astype(np.uint8))
    assert np.array_equal(demo.class_map_picture(labels, PALETTE), np.asarray(PALETTE, np.uint8)[labels])


def test_the_confidence_picture_runs_from_the_first_colour_to_the_last():
    confidence = np.linspace(0, 1, 101, dtype=np.float32).reshape(1, 101)
    picture = demo.confidence_picture(confidence)
    assert picture.shape == (1, 101, 3) and picture.dtype == np.uint8
    stops = pictures.CONFIDENCE_STOPS
    assert tuple(picture[0, 0]) == stops[0] and tuple(picture[0, -1]) == stops[-1]
    assert tuple(demo.confidence_picture(np.array([[np.nan]]))[0, 0]) == pictures.CONFIDENCE_STOPS[0]
    scale = pictures.confidence_scale_html()
    assert "linear-gradient" in scale and all(f"rgb{tuple(c)}" in scale for c in pictures.CONFIDENCE_STOPS)


def test_the_legend_has_the_lines_of_legend_entries_with_their_colours():
    labels = np.zeros((100, 100), np.uint8)
    labels[:30] = 2
    labels[50, :5] = 4  # 0.05%: "other"
    entries = visualize.legend_entries(labels, NAMES)
    page = demo.legend_html(entries, PALETTE)
    assert page.count("<li>") == len(entries) == 3
    assert [text for _, text in entries] == ["wall 70%", "sky 30%", "other (1 class) <0.1%"]
    for i, text in entries:
        colour = (255, 255, 255) if i is None else PALETTE[i]
        assert f'rgb{colour}"></span>{html.escape(text)}</li>' in page


def test_large_photos_are_shown_downscaled_and_downloaded_full_size(session):
    image, labels = _rgb(60, 5000, 4), (np.arange(5000) // 700 % 8).astype(np.uint8)[None].repeat(60, 0)
    confidence = np.full((60, 5000), 0.25, np.float32)
    shown_image, shown_labels, shown_conf = pictures.preview(image, labels, confidence, edge=2048)
    assert shown_image.shape == (25, 2048, 3) and shown_labels.shape == shown_conf.shape == (25, 2048)
    assert set(np.unique(shown_labels)) == set(np.unique(labels)) and np.allclose(shown_conf, 0.25)
    result = demo.DemoResult(
        name="wide.jpg", image=image, labels=labels, shown_image=shown_image, shown_labels=shown_labels,
        confidence=demo.confidence_picture(shown_conf), mean_confidence=0.25, legend=[], class_names=NAMES,
        palette=PALETTE, model="m", protocol="whole", precision="fp32", input_sizes=[(8, 512)],
        seconds=dict(read=0, model=0, total=0))
    labels_path, overlay_path = session.downloads(result, 0.4, highlight=2)
    assert labels_path.name == "wide_labels.png" and overlay_path.name == "wide_overlay.png"
    assert np.array_equal(np.asarray(Image.open(labels_path)), labels)
    assert np.array_equal(np.asarray(Image.open(overlay_path)), demo.overlay_picture(image, labels, PALETTE, 0.4, 2))
    assert "(shown at 2048 x 25; downloads full size)" in demo.info_markdown(result)


# --- the page's handlers (no browser) ------------------------------------------------------------

class _FakeGradio:
    """What the handlers use of Gradio: gr.update and gr.Warning (recorded)."""

    def __init__(self):
        self.warnings = []

    def update(self, **kwargs):
        return kwargs

    def Warning(self, message, **kwargs):  # noqa: N802 (Gradio's name)
        self.warnings.append(message)


def test_the_page_says_what_is_wrong_with_a_photo_and_goes_on(session, tmp_path):
    gr = _FakeGradio()
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    out = segment_tab.handle_run(gr, session, {"path": str(tmp_path / "broken.jpg"), "orig_name": "broken.jpg"},
                          session.default, "whole", "fp32", 0.5)
    status = out[8]
    assert "broken.jpg is not a readable image" in status and out[0] is None and out[-1] is None
    assert gr.warnings and "broken.jpg is not a readable image" in gr.warnings[0]
    out = segment_tab.handle_run(gr, session, {"path": str(SAMPLE_IMAGE), "orig_name": "sample.jpg"}, session.default,
                          "whole", "fp32", 0.6)
    overlay, class_map, confidence, legend, highlight, files, info, note, status, key = out
    result = session.result(key)
    assert status == note == "" and "sample.jpg" in info and overlay.shape == (427, 640, 3)
    assert np.array_equal(overlay, demo.overlay_picture(result.image, result.labels, PALETTE, 0.6))
    assert [Path(f).name for f in files] == ["sample_labels.png", "sample_overlay.png"]
    assert highlight["choices"][1:] == [(text, i) for i, text in result.legend if i is not None]
    again, files = segment_tab.handle_render(gr, session, key, 0.3, highlight["choices"][1][1])
    assert np.array_equal(again, demo.overlay_picture(result.image, result.labels, PALETTE, 0.3,
                                                      highlight["choices"][1][1]))


def test_the_server_keeps_the_last_results_only(session, monkeypatch):
    monkeypatch.setattr(demo_session, "KEEP_RESULTS", 2)
    results = [object(), object(), object()]
    keys = [session.keep(r) for r in results]
    assert session.result(keys[0]) is None and [session.result(k) for k in keys[1:]] == results[1:]
    gr = _FakeGradio()
    assert segment_tab.handle_render(gr, session, keys[0], 0.5, -1) == ({}, {})  # unchanged, and said
    assert "no longer kept" in gr.warnings[0] and "Segment again" in gr.warnings[0]
    assert segment_tab.handle_render(gr, session, None, 0.5, -1) == ({}, {}) and len(gr.warnings) == 1


def test_random_weights_are_said_next_to_the_result(mini, tmp_path):
    choices = demo.registered_choices()  # the test's torch.hub cache is empty
    released = [name for name, spec in DETECTORS.items() if spec.released]
    assert [c.kind for c in choices] == ["segmenter"] * 3 + ["detector"] * len(released)
    assert [c.model for c in choices[3:]] == released
    assert {c.start for c in choices} == {"random"} and all("RANDOM weights" in c.note for c in choices)
    assert "iwin_small_patch4_window7_512_ade20k_1k.pth is not in the torch.hub cache" in choices[1].note
    assert "its detections mean nothing" in choices[3].note
    assert all(c.start == "official" and not c.note for c in demo.registered_choices(download=True))
    choices, default = demo.default_choices("iwin_small_upernet_ade20k")
    assert default == "Iwin-S UPerNet (random weights)" and len(choices) == 3 + len(released)
    session = demo.DemoSession([demo.ModelChoice("mini", str(mini), note="mini has RANDOM weights")],
                               workdir=tmp_path)
    out = segment_tab.handle_run(_FakeGradio(), session, {"path": str(SAMPLE_IMAGE), "orig_name": "sample.jpg"}, "mini",
                          "whole", "fp32", 0.5)
    assert out[7] == "**Warning:** mini has RANDOM weights" and out[8] == ""


# --- the detection tab -----------------------------------------------------------------------------

DET_NAME = MINIS["mini_mask_rcnn"]


@pytest.fixture(scope="module")
def det_folder(fixtures_dir, tmp_path_factory) -> Path:
    """The fixtures' mini Mask R-CNN (80 COCO classes) as a save_pretrained folder."""
    path = fixtures_dir / "detection"
    if not (path / "mini_mask_rcnn.pth").is_file():
        pytest.skip(f"detection fixtures not found under {path}")
    return mini_detector(path).save_pretrained(tmp_path_factory.mktemp("det") / "mini_det")


@pytest.fixture(scope="module")
def det_session(det_folder, tmp_path_factory) -> demo.DemoSession:
    choices, default = demo.default_choices(DET_NAME, str(det_folder))
    return demo.DemoSession(choices, default=default, workdir=tmp_path_factory.mktemp("det_downloads"))


@pytest.fixture(scope="module")
def det_run(det_session, det_folder):
    """The sample through the tab's Detect (threshold 0.3), and detect() here on the same model."""
    out = detect_tab.handle_run(_FakeGradio(), det_session, {"path": str(SAMPLE_IMAGE), "orig_name": "sample.jpg"},
                                det_session.default, detect_tab.THRESHOLD)
    return out, detect(create_detector(DET_NAME, weights=det_folder), SAMPLE_IMAGE)


def _found(scores, labels, h=20, w=30) -> Detections:
    n = len(scores)
    boxes = np.tile(np.array([2, 3, 12, 15], np.float32), (n, 1)) + np.arange(n, dtype=np.float32)[:, None]
    masks = np.zeros((n, h, w), bool)
    masks[:, 5:10, 5:20] = True
    return Detections(boxes=boxes, scores=np.asarray(scores, np.float32), labels=np.asarray(labels, np.int64),
                      masks=masks, class_names=["cat", "dog", "bird"], category_ids=[17, 18, 16])


def test_the_menus_carry_their_kind_and_the_command_line_s_detector_comes_first(det_session, det_folder):
    label = f"{DETECTORS[DET_NAME].title} + {det_folder.name}"
    assert det_session.default == label == det_session.default_for("detector")
    assert det_session.labels("detector")[0] == label and det_session.choices[label].weights == str(det_folder)
    assert det_session.labels("segmenter") == [c.label for c in demo.registered_choices()[:3]]
    assert det_session.default_for("segmenter") == det_session.labels("segmenter")[0]
    assert demo.default_choices(DET_NAME)[1] == f"{DETECTORS[DET_NAME].title} (random weights)"  # a registered one
    assert [tab.LABEL for tab in demo_app.shown_tabs(det_session)] == ["Segmentation", "Detection"]
    only_segmenters = demo.DemoSession([demo.ModelChoice("m", "m")])
    assert [tab.LABEL for tab in demo_app.shown_tabs(only_segmenters)] == ["Segmentation"]  # no tab bar


def test_detect_runs_once_and_the_threshold_only_filters(det_session, det_run, monkeypatch):
    (overlay, counts, files, info, note, status, key), found = det_run
    result = det_session.result(key)
    assert status == note == "" and "sample.jpg" in info and "640 x 427 pixels" in info
    assert np.array_equal(result.found.scores, found.scores) and np.array_equal(result.found.labels, found.labels)
    assert np.allclose(result.found.boxes, found.boxes, atol=1e-3) and len(found) > 0
    assert np.array_equal(overlay, np.asarray(visualize.detection_overlay(load_image(SAMPLE_IMAGE), found, 0.3)))
    kept = found.names[:int((found.scores >= 0.3).sum())]
    assert demo.class_counts(found, 0.3) == sorted(
        [(found.class_names.index(n), n, kept.count(n)) for n in dict.fromkeys(kept)], key=lambda c: -c[2])
    assert f"{len(kept)} detections scoring 0.30 or more (of {len(found)})" in counts
    monkeypatch.setattr(detections, "run_detection", lambda *a, **k: pytest.fail("the model ran again"))
    high = float(np.sort(found.scores)[len(found) // 2])
    again, high_counts, files = detect_tab.handle_render(_FakeGradio(), det_session, key, high)
    assert np.array_equal(again, np.asarray(visualize.detection_overlay(load_image(SAMPLE_IMAGE), found, high)))
    assert sum(n for *_, n in demo.class_counts(found, high)) == int((found.scores >= high).sum()) < len(kept)
    assert f"{int((found.scores >= high).sum())} detections scoring {high:.2f} or more" in high_counts
    assert [Path(f).name for f in files] == ["sample_overlay.png", "sample_detections.json"]


def test_counts_are_by_class_most_first_with_their_colours():
    found = _found([0.9, 0.8, 0.7, 0.6, 0.2], [1, 0, 0, 2, 2])
    assert demo.class_counts(found, 0.5) == [(0, "cat", 2), (1, "dog", 1), (2, "bird", 1)]
    assert demo.class_counts(found, 0.1)[0] == (0, "cat", 2) and demo.class_counts(found, 0.95) == []
    page = demo.counts_html(found, 0.5)
    assert page.count("<li>") == 3 and "4 detections scoring 0.50 or more (of 5)" in page
    assert f'rgb{visualize.class_colour(0)}"></span>cat <b>2</b></li>' in page
    assert "1 detection scoring 0.90 or more" in demo.counts_html(found, 0.9)


def test_the_downloads_are_the_overlay_and_coco_json_at_the_threshold(det_session, tmp_path):
    image, found = _rgb(20, 30), _found([0.9, 0.4, 0.2], [1, 0, 2])
    shown_image, shown = pictures.preview_detections(image, found)
    assert shown_image is image and shown is found
    result = demo.DetectionResult("a b.png", image, found, image, found, "mini", dict(read=0, model=0, total=0))
    overlay_path, json_path = demo.detection_downloads(det_session, result, 0.3)
    assert overlay_path.name == "a b_overlay.png" and json_path.name == "a b_detections.json"
    expected_overlay = np.asarray(visualize.detection_overlay(image, found, 0.3))
    assert np.array_equal(np.asarray(Image.open(overlay_path)), expected_overlay)
    record = json.loads(json_path.read_text())
    expected = detections_json(detections.above(found, 0.3), "a b.png", image.shape)
    assert {k: record[k] for k in expected} == json.loads(json.dumps(expected))
    assert [d["category_id"] for d in record["detections"]] == [18, 17] and record["score_threshold"] == 0.3
    assert record["detections"][0]["bbox"] == [2.0, 3.0, 10.0, 12.0] and record["height"] == 20
    assert sorted(p.name for p in json_path.parent.iterdir()) == ["a b_detections.json", "a b_overlay.png"]


def test_large_photos_show_their_detections_downscaled():
    image = _rgb(40, 4096)
    found = _found([0.9], [0], 40, 4096)
    shown_image, shown = pictures.preview_detections(image, found, edge=2048)
    assert shown_image.shape == (20, 2048, 3) and shown.masks.shape == (1, 20, 2048)
    assert np.allclose(shown.boxes[0], found.boxes[0] / 2) and np.array_equal(shown.masks, found.masks[:, ::2, ::2])


def test_the_detection_tab_says_what_is_wrong_and_goes_on(det_session, det_run, tmp_path, monkeypatch):
    gr = _FakeGradio()
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    out = detect_tab.handle_run(gr, det_session, {"path": str(tmp_path / "broken.jpg"), "orig_name": "broken.jpg"},
                                det_session.default, 0.3)
    assert "broken.jpg is not a readable image" in out[5] and out[0] is None and out[-1] is None
    assert "broken.jpg is not a readable image" in gr.warnings[0]
    out = detect_tab.handle_run(gr, det_session, None, det_session.default, 0.3)
    assert "no photo" in out[5]
    out = detect_tab.handle_run(gr, det_session, str(SAMPLE_IMAGE), det_session.labels("segmenter")[0], 0.3)
    assert "no detector" in out[5]
    monkeypatch.setattr(det_session, "max_pixels", 1000)
    out = detect_tab.handle_run(gr, det_session, str(SAMPLE_IMAGE), det_session.default, 0.3)
    assert "sample.jpg has 640 x 427 pixels" in out[5] and "over the limit" in out[5]
    assert detect_tab.handle_render(gr, det_session, "gone", 0.5) == ({}, {}, {})
    assert "press Detect again" in gr.warnings[-1]
    monkeypatch.setattr(det_session, "max_pixels", None)
    out = detect_tab.handle_run(gr, det_session, str(SAMPLE_IMAGE), det_session.default, 0.3)
    assert out[5] == "" and out[0].shape == (427, 640, 3) and out[1] == det_run[0][1]


# --- the command ---------------------------------------------------------------------------------

def test_the_command_without_gradio_is_one_line_naming_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)
    loaded = []
    monkeypatch.setattr(demo.DemoSession, "model", lambda self, label: loaded.append(label))
    assert cli(["demo", "--port", "7999"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("iwin-seg demo: error: iwin-seg demo needs gradio"), err
    assert "pip install 'iwin-models[demo]'" in err[0] and not loaded


def test_the_command_s_bad_options_are_one_line_errors(capsys, tmp_path):
    assert cli(["demo", "--port", "70000"]) == 2
    assert "--port must be 1..65535" in capsys.readouterr().err
    assert cli(["demo", "--model", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model" in err[0], err


def test_a_port_in_use_is_a_one_line_error(mini, capsys):
    pytest.importorskip("gradio", reason="the demo extra: pip install 'iwin-models[demo]'")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli(["demo", "--model", str(mini), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"iwin-seg demo: error: cannot serve on 127.0.0.1:{port} (in use, or not this machine's "
                       f"address): choose another --port or --host"), err


# --- the Hugging Face Space ----------------------------------------------------------------------

def test_the_space_builds_the_same_app_without_serving(monkeypatch):
    gr = pytest.importorskip("gradio", reason="the demo extra: pip install 'iwin-models[demo]'")
    front = (SPACE / "README.md").read_text().split("---")[1]
    fields = dict(line.split(":", 1) for line in front.strip().splitlines())
    assert fields["sdk"].strip() == "gradio" and fields["app_file"].strip() == "app.py"
    assert int(fields["sdk_version"].strip().split(".")[0]) >= 5
    assert "iwin-models[demo]" in (SPACE / "requirements.txt").read_text()
    terms = weights.AUTHORS_TERMS  # the Space serves the authors' weights: their terms, as the model cards say
    assert (fields["license"].strip(), fields["license_name"].strip(), fields["license_link"].strip()) == (
        terms.hub_license, terms.hub_license_name, terms.url)
    launched = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, *a, **k: launched.append(k))
    spec = importlib.util.spec_from_file_location("iwin_space_app", SPACE / "app.py")
    app_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app_module)
    app = app_module.demo
    assert isinstance(app, gr.Blocks) and not launched
    ui = app.iwin_ui
    assert [c.label for c in app.iwin_session.choices.values()][:3] == [
        f"{title} (random weights)" for title in ("Iwin-T UPerNet", "Iwin-S UPerNet", "Iwin-B UPerNet")]
    assert [choice[1] for choice in ui["model"].choices] == app.iwin_session.labels("segmenter")
    assert [choice[1] for choice in ui["det_model"].choices] == app.iwin_session.labels("detector")
    assert [choice[1] for choice in ui["protocol"].choices] == list(demo.PROTOCOLS)
    assert [choice[1] for choice in ui["precision"].choices] == ["fp32", "bf16", "fp16"]
    for name in ("photo", "run", "overlay", "opacity", "highlight", "legend", "class_map", "confidence", "downloads",
                 "info", "note", "status"):
        assert ui[name].elem_id == name
    for name in ("det_photo", "det_model", "det_run", "det_threshold", "det_overlay", "det_counts", "det_downloads",
                 "det_info", "det_note", "det_status"):
        assert ui[name].elem_id == name
    assert app.analytics_enabled is False


def test_the_built_app_fetches_nothing_from_outside(session):
    gr = pytest.importorskip("gradio", reason="the demo extra: pip install 'iwin-models[demo]'")
    app = demo.build_app(session)
    theme = app.iwin_launch.get("theme") or app.theme
    assert theme._stylesheets == [] and theme._font_css == [], "the theme loads fonts"
    assert "fonts.googleapis" not in theme._get_theme_css() and "url(" not in demo_app.CSS
    assert isinstance(app, gr.Blocks) and app.analytics_enabled is False


@pytest.mark.slow
def test_a_24_megapixel_photo_stays_within_predict_s_budget(mini, tmp_path):
    """6000 x 4000: the page's whole work (read, predict with confidences, legend, pictures, both downloads, a
    re-render) peaks where predict(return_confidence=True) alone does, within 4 bytes a pixel (about 30 bytes a
    pixel in all, most of it predict's fixed band buffers; holding the scores would take 600 a pixel)."""
    code = f"""
import resource
import numpy as np
from PIL import Image
from iwin_models.apps import demo
from iwin_models.apps.demo import segment_tab
from iwin_models.data import SAMPLE_IMAGE
from iwin_models.io.images import load_image
from iwin_models.engine.inference import predict
def grown(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
tile = np.random.default_rng(0).integers(0, 256, (500, 500, 3), dtype=np.uint8)
Image.fromarray(np.tile(tile, (8, 12, 1))).save({str(tmp_path / 'big.jpg')!r}, quality=80)
choices, default = demo.default_choices({str(mini)!r})
session = demo.DemoSession(choices, default=default, workdir={str(tmp_path / 'out')!r})
session.run_segmentation(SAMPLE_IMAGE)  # the model built and warm
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
labels, confidence = predict(session.model(default), load_image({str(tmp_path / 'big.jpg')!r}), fast=False,
                             labels_dtype=np.uint8, return_confidence=True)
del labels, confidence
alone = grown()
result = session.run_segmentation({str(tmp_path / 'big.jpg')!r})
segment_tab.handle_render(None, session, session.keep(result), 0.6, None)
print(result.size, result.shown_labels.shape, alone / 24e6, grown() / 24e6)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("(6000, 4000) (1365, 2048)"), line
    alone, demo_peak = map(float, line.split()[-2:])
    assert demo_peak <= alone + 4, line
