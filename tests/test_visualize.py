"""Pictures of class maps (``iwin_models.apps.visualize``): colours, the blend, the legend, bounded temporaries."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from iwin_models.apps.visualize import (
    BLEND_ROWS,
    LEGEND_LINE,
    LEGEND_MIN_SHARE,
    LEGEND_PAD,
    classes_by_area,
    colorize,
    legend_entries,
    overlay,
)
from iwin_models.apps.visualize import colorize as colorize_from_inference
from iwin_models.apps.visualize import overlay as overlay_from_inference
from iwin_models.data import ade20k

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


def _synthetic_map() -> np.ndarray:
    """100x100 pixels: wall (0) 79.78%, road (3) 20%, sky (1) exactly 0.1% (10 px, listed), tree (2) 9 px and
    car (4) 1 px (together 0.1%: "other"), and 2 px of a label with no class (7: in no line)."""
    labels = np.zeros((100, 100), np.uint8)
    labels[:20] = 3  # 2000 px
    labels[50, :10] = 1  # 10 px: 0.1%, the threshold itself
    labels[60, :9] = 2  # 9 px: 0.09%
    labels[70, 0] = 4  # 1 px
    labels[80, :2] = 7  # no class (beyond the names): in no line
    return labels


NAMES5 = ["wall", "sky", "tree", "road", "car"]
PALETTE5 = [(120, 120, 120), (6, 230, 230), (4, 200, 3), (140, 140, 140), (0, 102, 200)]


def test_the_legend_lists_classes_at_0_1_percent_and_sums_the_rest():
    assert legend_entries(_synthetic_map(), NAMES5) == [
        (0, "wall 80%"), (3, "road 20%"), (1, "sky 0.1%"), (None, "other (2 classes) 0.1%")]
    assert LEGEND_MIN_SHARE == 0.001
    every = legend_entries(_synthetic_map(), NAMES5, min_share=0)
    assert [i for i, _ in every] == [0, 3, 1, 2, 4] and every[-1] == (4, "car <0.1%")


def test_no_other_line_without_small_classes_and_one_class_in_it():
    labels = np.zeros((10, 10), np.uint8)
    labels[:5] = 1
    assert legend_entries(labels, NAMES5) == [(0, "wall 50%"), (1, "sky 50%")]
    big = np.zeros((100, 100), np.uint8)
    big[0, 0] = 2
    assert legend_entries(big, NAMES5) == [(0, "wall 100%"), (None, "other (1 class) <0.1%")]


def test_the_overlay_draws_the_other_line_with_an_empty_swatch():
    labels = _synthetic_map()
    picture = np.asarray(overlay(np.zeros((100, 100, 3), np.uint8), labels, NAMES5, PALETTE5))
    w = labels.shape[1]
    swatches = [tuple(picture[LEGEND_PAD + n * LEGEND_LINE + 7, w + LEGEND_PAD + 5]) for n in range(4)]
    assert swatches == [PALETTE5[0], PALETTE5[3], PALETTE5[1], (255, 255, 255)]
    assert (picture[LEGEND_PAD + 3 * LEGEND_LINE + 2, w + LEGEND_PAD] == 0).all(), "the 'other' swatch is outlined"
    assert (picture[LEGEND_PAD + 4 * LEGEND_LINE + 7:, w:] == 255).all(), "four lines, not six"
