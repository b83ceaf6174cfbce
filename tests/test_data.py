"""Data sets (ADE20K layout, folder data sets, file formats, errors) and the training pipeline."""
from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iwin_models.data import ade20k
from iwin_models.data.datasets import (
    ADE20KDataset,
    FolderSegmentationDataset,
    read_class_names,
    read_image,
    read_label,
)
from iwin_models.data.transforms import TrainTransform, build_train_transform

H, W = 64, 80


def scene(rng: np.random.Generator, classes: tuple[int, ...], h: int = H, w: int = W) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image with rectangles and discs of ``classes`` (raw label values) on a background of
    label ``classes[0]``; returns (uint8 image, uint8 label)."""
    yy, xx = np.mgrid[:h, :w]
    label = np.full((h, w), classes[0], np.uint8)
    for k, cls in enumerate(classes[1:]):
        if k % 2:
            r = int(rng.integers(6, 14))
            cy, cx = int(rng.integers(r, h - r)), int(rng.integers(r, w - r))
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            y0, x0 = int(rng.integers(0, h - 16)), int(rng.integers(0, w - 16))
            dy, dx = int(rng.integers(10, 30)), int(rng.integers(10, 36))
            mask = (yy >= y0) & (yy < y0 + dy) & (xx >= x0) & (xx < x0 + dx)
        label[mask] = cls
    colours = {int(c): (np.array([37, 91, 173]) * (int(c) + 1)) % 256 for c in classes}
    image = np.zeros((h, w, 3), np.float64)
    for c, col in colours.items():
        image[label == c] = col
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def make_ade20k(root: Path, n_val: int = 7, n_train: int = 3, seed: int = 0) -> Path:
    """A tiny ADEChallengeData2016 folder: JPEG (quality 95) images, PNG labels with 0 = other, 1..150."""
    rng = np.random.default_rng(seed)
    base = root / "ADEChallengeData2016"
    for split, n, prefix in (("validation", n_val, "ADE_val"), ("training", n_train, "ADE_train")):
        (base / "images" / split).mkdir(parents=True)
        (base / "annotations" / split).mkdir(parents=True)
        for i in range(n):
            classes = tuple(int(c) for c in rng.choice(np.arange(0, 151), size=4, replace=False))
            image, label = scene(rng, classes)
            Image.fromarray(image).save(base / "images" / split / f"{prefix}_{i + 1:08d}.jpg", quality=95)
            Image.fromarray(label).save(base / "annotations" / split / f"{prefix}_{i + 1:08d}.png")
    return base


def make_folder(root: Path, n: int = 6, num_classes: int = 5, seed: int = 1) -> tuple[Path, Path]:
    """A folder data set (classes 0..num_classes-1, a few pixels 255 = ignored); jpg and png images."""
    rng = np.random.default_rng(seed)
    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for i in range(n):
        classes = tuple(int(c) for c in rng.permutation(num_classes)[:3])
        image, label = scene(rng, classes)
        label[:2, :5] = 255
        if i % 2:
            Image.fromarray(image).save(images / f"img{i}.png")
        else:
            Image.fromarray(image).save(images / f"img{i}.jpg", quality=95)
        Image.fromarray(label).save(labels / f"img{i}.png")
    return images, labels


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory) -> Path:
    return make_ade20k(tmp_path_factory.mktemp("ade"))


# --- ADE20K ---------------------------------------------------------------------------------------

def test_ade20k_reduce_zero_label_and_layout(ade_root):
    val = ADE20KDataset(ade_root)  # the ADEChallengeData2016 folder itself
    assert len(val) == 7 and val.num_classes == 150 and val.class_names == list(ade20k.CLASSES)
    assert len(ADE20KDataset(ade_root.parent, "training")) == 3  # its parent; split names
    assert len(ADE20KDataset(ade_root.parent, "val")) == 7
    seen = set()
    for i in range(len(val)):
        image, label = val[i]
        raw = np.asarray(Image.open(val.files[i][1])).astype(np.int64)
        assert image.dtype == np.uint8 and image.shape == (H, W, 3)
        assert label.dtype == np.int64 and label.shape == (H, W)
        expected = np.where(raw == 0, 255, raw - 1)
        np.testing.assert_array_equal(label, expected)
        seen |= set(np.unique(raw).tolist())
    assert 0 in seen or any(v > 0 for v in seen)
    assert val.files[0][0].name == "ADE_val_00000001.jpg" and val.files[0][1].name == "ADE_val_00000001.png"


def test_ade20k_value_mapping_edges(tmp_path):
    base = make_ade20k(tmp_path, n_val=1, n_train=1)
    lab_path = next((base / "annotations" / "validation").iterdir())
    raw = np.zeros((H, W), np.uint8)
    raw[0, :4] = [0, 1, 150, 255]
    Image.fromarray(raw).save(lab_path)
    _, label = ADE20KDataset(base).load(0)
    assert label[0, :4].tolist() == [255, 0, 149, 255]


def test_ade20k_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ADE20K folder"):
        ADE20KDataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not an ADE20K folder"):
        ADE20KDataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown ADE20K split"):
        ADE20KDataset(tmp_path, "test")

    base = make_ade20k(tmp_path / "a", n_val=2, n_train=1)
    for f in (base / "images" / "training").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match="no images"):
        ADE20KDataset(base, "training")

    missing = sorted((base / "annotations" / "validation").iterdir())[1]
    missing.unlink()
    with pytest.raises(ValueError, match="ADE_val_00000002.jpg"):
        ADE20KDataset(base)

    base = make_ade20k(tmp_path / "b", n_val=2, n_train=1)
    bad = sorted((base / "annotations" / "validation").iterdir())[1]
    raw = np.asarray(Image.open(bad)).copy()
    raw[5, 5] = 151
    Image.fromarray(raw).save(bad)
    ds = ADE20KDataset(base)
    ds.load(0)
    with pytest.raises(ValueError, match=r"ADE_val_00000002\.png.*151"):
        ds.load(1)


# --- folder data sets -----------------------------------------------------------------------------

def test_folder_dataset(tmp_path):
    images, labels = make_folder(tmp_path, n=6, num_classes=5)
    ds = FolderSegmentationDataset(images, labels, [f"c{i}" for i in range(5)])
    assert len(ds) == 6 and [p.suffix for p, _ in ds.files] == [".jpg", ".png"] * 3
    for i in range(6):
        image, label = ds[i]
        raw = np.asarray(Image.open(ds.files[i][1]))
        assert image.shape == (H, W, 3) and image.dtype == np.uint8 and label.dtype == np.int64
        np.testing.assert_array_equal(label, raw)  # no reduction, 255 stays ignored
    # png images are lossless: exactly the file's pixels
    np.testing.assert_array_equal(ds.load(1)[0], np.asarray(Image.open(ds.files[1][0])))

    # another ignore value in the files: mapped to 255; reduce_zero_label
    raw = np.asarray(Image.open(labels / "img0.png")).copy()
    raw[raw == 255] = 9
    Image.fromarray(raw).save(labels / "img0.png")
    ds = FolderSegmentationDataset(images, labels, [f"c{i}" for i in range(5)], ignore_index=9)
    assert (ds.load(0)[1][:2, :5] == 255).all() and ds.ignore_index == 255
    ds = FolderSegmentationDataset(images, labels, [f"c{i}" for i in range(4)], ignore_index=9, reduce_zero_label=True)
    np.testing.assert_array_equal(ds.load(0)[1], np.where((raw == 0) | (raw == 9), 255, raw.astype(np.int64) - 1))

    # values beyond the classes: the file is named
    with pytest.raises(ValueError, match=r"img1\.png.*outside 0\.\.2"):
        FolderSegmentationDataset(images, labels, ["a", "b", "c"]).load(1)


def test_folder_dataset_errors(tmp_path):
    images, labels = make_folder(tmp_path, n=3)
    names = [f"c{i}" for i in range(5)]
    with pytest.raises(FileNotFoundError, match="no labels folder"):
        FolderSegmentationDataset(images, tmp_path / "nope", names)
    (labels / "img2.png").unlink()
    with pytest.raises(ValueError, match=r"without a label PNG.*img2\.png"):
        FolderSegmentationDataset(images, labels, names)
    Image.new("RGB", (W, H)).save(images / "img0.png")
    (labels / "img0.png").rename(labels / "img2.png")
    with pytest.raises(ValueError, match="two images with the stem 'img0'"):
        FolderSegmentationDataset(images, labels, names)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        FolderSegmentationDataset(empty, labels, names)
    with pytest.raises(ValueError, match="between 1 and 255 classes"):
        FolderSegmentationDataset(images, labels, [])


def test_label_formats(tmp_path):
    values = np.array([[0, 1, 2], [3, 4, 255]], np.uint8)
    p = Image.fromarray(values, mode="L").convert("P")  # palette indices != colours
    p.putpalette([200, 10, 10] * 256)
    p.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_label(tmp_path / "p.png"), values)
    Image.fromarray(values.astype(np.uint16) * 7).save(tmp_path / "i16.png")
    assert Image.open(tmp_path / "i16.png").mode.startswith("I")
    np.testing.assert_array_equal(read_label(tmp_path / "i16.png"), values.astype(np.int64) * 7)
    Image.fromarray(np.repeat(values[..., None], 3, -1)).save(tmp_path / "grey_rgb.png")
    np.testing.assert_array_equal(read_label(tmp_path / "grey_rgb.png"), values)
    colour = np.zeros((2, 3, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    Image.fromarray(colour).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"rgb\.png.*single-channel"):
        read_label(tmp_path / "rgb.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="junk.png"):
        read_label(tmp_path / "junk.png")


def test_image_formats_and_exif(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    assert (read_image(tmp_path / "grey.png") == rgb[..., :1]).all()
    Image.fromarray(np.dstack([rgb, np.full((6, 9), 7, np.uint8)])).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.png")
    assert read_image(tmp_path / "pal.png").shape == (6, 9, 3)
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g16.png")[..., 0], rgb[..., 0])

    # EXIF orientation 6 (rotate 90 clockwise to view): the label drawn on the viewed image fits it
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6
    images, labels = tmp_path / "im", tmp_path / "lab"
    images.mkdir()
    labels.mkdir()
    img.save(images / "a.jpg", exif=exif, quality=95)
    img.save(images / "b.jpg", exif=exif, quality=95)
    Image.fromarray(np.zeros((9, 6), np.uint8)).save(labels / "a.png")  # viewed orientation
    Image.fromarray(np.zeros((6, 9), np.uint8)).save(labels / "b.png")  # stored orientation
    ds = FolderSegmentationDataset(images, labels, ["x"])
    assert ds.load(0)[0].shape == (9, 6, 3)
    assert ds.load(1)[0].shape == (6, 9, 3)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(labels / "b.png")
    with pytest.raises(ValueError, match=r"b\.jpg is 6x9 but its label .*b\.png is 5x5"):
        ds.load(1)


def test_read_class_names(tmp_path):
    (tmp_path / "names.txt").write_text("wall\nsky\n\n tree \n")
    assert read_class_names(tmp_path / "names.txt") == ["wall", "sky", "tree"]
    (tmp_path / "names.json").write_text(json.dumps(["a", "b"]))
    assert read_class_names(str(tmp_path / "names.json")) == ["a", "b"]
    assert read_class_names("a, b,c") == ["a", "b", "c"]
    with pytest.raises(FileNotFoundError):
        read_class_names(str(tmp_path / "missing.txt"))


# --- training pipeline ----------------------------------------------------------------------------

def _sample(seed: int = 0, h: int = H, w: int = W, values=(3, 17, 40, 99)):
    image, label = scene(np.random.default_rng(seed), tuple(values), h, w)
    label = label.astype(np.int64)
    label[:3, :3] = 255
    return image, label


def test_train_transform_shapes_and_normalisation():
    image, label = _sample()
    t = build_train_transform()
    torch.manual_seed(0)
    for _ in range(4):
        x, y = t(image, label)
        assert x.shape == (3, 512, 512) and x.dtype == torch.float32 and x.is_contiguous()
        assert y.shape == (512, 512) and y.dtype == torch.int64
        mean, std = torch.tensor(ade20k.MEAN).view(3, 1, 1), torch.tensor(ade20k.STD).view(3, 1, 1)
        inside = ~(x == 0).all(0)  # not padding
        assert inside.float().mean() > 0.2 and (y[~inside] == 255).all()
        pixels = (x * std + mean)[:, inside]  # back to 0-255: whole numbers after the uint8 steps, within range
        assert pixels.min() > -1e-3 and pixels.max() < 255 + 1e-3
        assert torch.allclose(pixels, pixels.round(), atol=1e-3)
    assert pickle.loads(pickle.dumps(t)).crop_size == (512, 512)


def test_train_transform_resize_rule_and_padding():
    t = build_train_transform()
    assert t.target_size(64, 80, 1.0) == (512, 640)  # min(2048/80, 512/64) = 8
    assert t.target_size(512, 683, 0.5) == (256, 342)  # min(1024/683, 256/512) = 0.5
    assert t.target_size(683, 512, 2.0) == (1366, 1024)  # portrait: min(4096/683, 1024/512) = 2
    assert t.target_size(683, 100, 0.5) == (1024, 150)  # the long edge binds: min(1024/683, 256/100)
    # 64x80 fitted into 32x32 (ratio 0.5 of 64x64) -> 26x32, padded to 64x64 at the bottom and right
    t = build_train_transform(crop_size=64, scale=(64, 64), ratio_range=(0.5, 0.5))
    image, label = _sample()
    for seed in range(6):
        torch.manual_seed(seed)
        x, y = t(image, label)
        assert x.shape == (3, 64, 64) and y.shape == (64, 64)
        assert (x[:, 26:] == 0).all() and (x[:, :, 32:] == 0).all()
        assert (y[26:] == 255).all() and (y[:, 32:] == 255).all()
        assert (y[:26, :32] != 255).float().mean() > 0.9 and x[:, :26, :32].abs().sum() > 0


def test_train_transform_labels_only_nearest():
    image, label = _sample()
    allowed = set(np.unique(label).tolist()) | {255}
    for ratio in ((0.3, 0.6), (1.5, 3.0)):  # shrink and enlarge (of the 64x80 fitted to 128x32.. boxes)
        t = build_train_transform(crop_size=48, scale=(128, 96), ratio_range=ratio)
        for seed in range(10):
            torch.manual_seed(seed)
            _, y = t(image, label)
            assert set(torch.unique(y).tolist()) <= allowed


def test_train_transform_flip_mirrors_image_and_label():
    image, label = _sample()
    kw = dict(crop_size=(40, 56), scale=(80, 64), ratio_range=(1.0, 1.0))
    plain, flipped = TrainTransform(flip_prob=0.0, **kw), TrainTransform(flip_prob=1.0, **kw)
    for seed in range(3):  # the same draws in both: only the flip differs
        torch.manual_seed(seed)
        x0, y0 = plain(image, label)
        torch.manual_seed(seed)
        x1, y1 = flipped(image, label)
        torch.testing.assert_close(x1, x0.flip(-1), atol=0, rtol=0)
        assert torch.equal(y1, y0.flip(-1))


def _crop_ok(y: torch.Tensor, ratio: float = 0.75) -> bool:
    values, counts = np.unique(y.numpy(), return_counts=True)
    counts = counts[values != 255]
    return len(counts) > 1 and counts.max() / counts.sum() < ratio


def test_train_transform_cat_max_ratio(monkeypatch):
    # class 2 in the first 32 of 256 columns: a 64-wide crop at x passes only when x < 16 (8% of offsets)
    image = np.zeros((64, 256, 3), np.uint8)
    label = np.ones((64, 256), np.int64)
    label[:, :32] = 2
    kw = dict(crop_size=64, scale=(256, 64), ratio_range=(1.0, 1.0))  # no resize
    draws = []
    original = TrainTransform._crop_box

    def counting(self, h, w):
        draws.append(1)
        return original(self, h, w)

    monkeypatch.setattr(TrainTransform, "_crop_box", counting)
    passed = {}
    for ratio in (0.75, 1.0):
        t = build_train_transform(cat_max_ratio=ratio, **kw)
        ok = 0
        for seed in range(100):
            torch.manual_seed(seed)
            draws.clear()
            _, y = t(image, label)
            good = _crop_ok(y)
            ok += good
            if ratio == 1.0:
                assert len(draws) == 1
            elif not good:
                assert len(draws) == 11  # 10 rejected boxes, then mmseg keeps an 11th unchecked
            else:
                assert len(draws) <= 11
        passed[ratio] = ok / 100
    assert passed[1.0] < 0.2 and passed[0.75] > 0.45, passed  # expected ~0.08 and ~0.6


def test_train_transform_is_deterministic_under_torch_seed():
    image, label = _sample()
    t = build_train_transform(crop_size=96, scale=(256, 128))
    torch.manual_seed(123)
    first = [t(image, label) for _ in range(3)]
    random.seed(999)  # python and numpy generators play no part
    np.random.seed(999)
    torch.manual_seed(123)
    again = [t(image, label) for _ in range(3)]
    for (x0, y0), (x1, y1) in zip(first, again):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert not torch.equal(first[0][0], first[1][0])  # successive samples differ


def test_train_transform_with_dataset(ade_root):
    ds = ADE20KDataset(ade_root, "training", build_train_transform(crop_size=64, scale=(128, 64)))
    torch.manual_seed(0)
    x, y = ds[0]
    assert x.shape == (3, 64, 64) and y.shape == (64, 64) and y.dtype == torch.int64
    assert int(y[y != 255].max()) < 150
    raw_image, raw_label = ds.load(0)  # load() skips the transform
    assert raw_image.dtype == np.uint8 and raw_label.shape == (H, W)


def test_train_transform_rejects_bad_input():
    t = build_train_transform()
    image, label = _sample()
    with pytest.raises(ValueError, match="RGB uint8"):
        t(image.astype(np.float32), label)
    with pytest.raises(ValueError, match="does not match"):
        t(image, label[:10])
    with pytest.raises(ValueError, match="cat_max_ratio"):
        build_train_transform(cat_max_ratio=0)


def _colorsys_saturation_hue(img: torch.Tensor, saturation, hue) -> torch.Tensor:
    """mmcv's steps pixel by pixel in float64 (Python's colorsys): S times the factor, clipped to 1;
    H plus hue/180 turns; unrounded, 0-255."""
    import colorsys

    out = []
    for r, g, b in img.permute(1, 2, 0).reshape(-1, 3).double().numpy() / 255:
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        if saturation is not None:
            s = min(s * saturation, 1.0)
        if hue is not None:
            h = (h + hue / 180) % 1
        out.append(colorsys.hsv_to_rgb(h, s, v))
    return torch.tensor(np.array(out) * 255).reshape(*img.shape[1:], 3).permute(2, 0, 1)


@pytest.mark.parametrize("saturation, hue", [(0.5, None), (1.5, None), (3.0, None), (0.0, None), (None, 17),
                                             (None, -18), (1.3, -5), (0.7, 11)])
def test_photometric_saturation_and_hue_are_mmcvs_hsv_steps(saturation, hue):
    from iwin_models.data.transforms import _saturation_and_hue

    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 48, 40), generator=g).float()
    img[:, :3] = img[:1, :3]  # grey pixels (no hue; saturation leaves them alone)
    img[:, 3, :8] = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255],
                                  [255, 0, 255], [255, 255, 255], [0, 0, 0]], dtype=torch.float).T
    got = _saturation_and_hue(img.clone(), saturation, hue)
    ref = _colorsys_saturation_hue(img, saturation, hue)
    assert got.dtype == torch.float32 and torch.equal(got, got.round()) and 0 <= got.min() and got.max() <= 255
    # float32 vs float64: the unrounded values agree to ~2e-4 (of 255); rounding may then differ only
    # where the exact value is a tie x.5 (e.g. saturation 0.5 halves the distance to the maximum)
    tie = ((ref - ref.floor()) - 0.5).abs() < 1e-3
    differ = got.double() != ref.round()
    assert not (differ & ~tie).any(), (got.double() - ref)[differ & ~tie][:5]
    assert ((got.double() - ref).abs() <= 0.5 + 1e-3).all()
    if saturation is not None and hue is None:
        assert torch.equal(got[:, :3], img[:, :3])  # grey stays grey
