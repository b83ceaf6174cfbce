"""Pictures of class maps (``iwin_models.visualize``): colours, the blend, the legend, bounded temporaries."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from iwin_models import ade20k
from iwin_models.inference import colorize as colorize_from_inference
from iwin_models.inference import overlay as overlay_from_inference
from iwin_models.visualize import BLEND_ROWS, LEGEND_LINE, LEGEND_PAD, classes_by_area, colorize, overlay

PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30)]
NAMES = ["red ", "green", "blue", "dark"]


def test_old_imports_are_these_functions():
    assert colorize_from_inference is colorize and overlay_from_inference is overlay


def test_colorize_paints_the_palette_and_black_beyond_it():
    labels = np.array([[0, 149, 150, 255]])
    out = colorize(labels)
    assert out.shape == (1, 4, 3) and out.dtype == np.uint8
    assert out[0, :2].tolist() == [list(ade20k.PALETTE[0]), list(ade20k.PALETTE[149])]
    assert out[0, 2:].tolist() == [[0, 0, 0], [0, 0, 0]]  # no colour for an unknown class or 255 (ignored)


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float32])  # counted by bincount, or by np.unique
def test_classes_by_area_largest_first(dtype):
    labels = np.array([[2, 2, 2, 0], [2, 1, 1, 7], [2, 2, 1, 1]], dtype=dtype)  # 2: 6 px, 1: 4, 0: 1, 7: 1
    assert classes_by_area(labels, num_classes=4) == [(2, 0.5), (1, 4 / 12), (0, 1 / 12)]  # 7 is no class


def test_classes_by_area_leaves_out_negative_labels():
    assert classes_by_area(np.array([[-1, -1, 3]]), num_classes=4) == [(3, 1 / 3)]


def test_overlay_blends_and_draws_a_legend_by_area():
    rng = np.random.default_rng(0)
    h, w = BLEND_ROWS + 45, 70  # more than one band of blended rows
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    labels = np.zeros((h, w), np.int64)
    labels[:, 40:] = 2  # blue on 30 of 70 columns
    labels[:10, :5] = 3  # a little dark
    picture = np.asarray(overlay(image, labels, NAMES, PALETTE, alpha=0.25))
    assert picture.shape[0] == h and picture.shape[1] > w + 60  # the legend to the right
    expected = (image * 0.75 + colorize(labels, PALETTE) * 0.25).astype(np.uint8)
    assert np.array_equal(picture[:, :w], expected)
    swatch_colours = [tuple(picture[LEGEND_PAD + n * LEGEND_LINE + 7, w + LEGEND_PAD + 5]) for n in range(3)]
    assert swatch_colours == [PALETTE[0], PALETTE[2], PALETTE[3]]  # by area: red, blue, dark
    assert (picture[LEGEND_PAD + 3 * LEGEND_LINE + 7:, w:] == 255).all(), "three classes, three lines"


def test_a_short_image_gets_a_canvas_tall_enough_for_its_legend():
    labels = np.arange(4).repeat(3).reshape(2, 6)
    picture = overlay(np.zeros((2, 6, 3), np.uint8), labels, NAMES, PALETTE)
    assert picture.height == 2 * LEGEND_PAD + 4 * LEGEND_LINE


def test_overlay_blends_a_band_of_rows_at_a_time():
    """The blend's float64 temporaries (24 bytes a pixel) are those of BLEND_ROWS rows, not of the image."""
    h, w = 2000, 1000
    image = np.zeros((h, w, 3), np.uint8)
    labels = np.zeros((h, w), np.uint8)
    tracemalloc.start()
    try:
        overlay(image, labels, NAMES, PALETTE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    canvas = h * (w + 100) * 3  # the picture itself (and PIL's copy of it)
    assert peak < 2 * canvas + 2 * 24 * BLEND_ROWS * w < 24 * h * w, peak
