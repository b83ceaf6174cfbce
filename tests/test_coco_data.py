"""COCO-format training data (:class:`iwin_models.data.CocoDetection`): mmdet's semantics on the tiny synthetic
set of ``_coco.py``, each bad-data case reported by file and annotation id, and a sample through a mini detector."""
from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch
from _coco import SIZES, make_coco, rectangle_mask, write_annotations
from PIL import Image

from iwin_models.data import CocoDetection
from iwin_models.data.coco import collate

LABELS = {3: 1, 7: 2, 12: 3}  # category ids 3, 7, 12 sorted -> labels 1, 2, 3


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_coco(tmp_path_factory.mktemp("coco"))


def _variant(coco, tmp_path, edit) -> CocoDetection:
    """The set with ``edit(data)`` applied to a copy of its annotations, read quietly."""
    data = copy.deepcopy(coco["data"])
    edit(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CocoDetection(write_annotations(tmp_path, data), coco["img_dir"])


def test_boxes_labels_and_classes(coco):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean set warns about nothing
        ds = CocoDetection(coco["ann_file"], coco["img_dir"])
    assert (ds.num_classes, ds.category_ids, ds.class_names) == (3, [3, 7, 12], ["square", "disk", "bar"])
    assert ds.problems == [] and len(ds) == len(SIZES) - 1  # the image without annotations is skipped
    anns = [a for a in coco["data"]["annotations"] if not a["iscrowd"]]
    for image, target in ds:
        image_id = int(target["image_id"])
        info = next(i for i in coco["data"]["images"] if i["id"] == image_id)
        assert image.dtype == torch.uint8 and image.shape == (3, info["height"], info["width"])
        picture = np.array(Image.open(coco["img_dir"] / info["file_name"]).convert("RGB"))
        assert torch.equal(image, torch.from_numpy(picture).permute(2, 0, 1))
        mine = [a for a in anns if a["image_id"] == image_id]
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in mine)]
        assert target["boxes"].dtype == torch.float32
        assert torch.allclose(target["boxes"], torch.tensor(xyxy, dtype=torch.float32))
        assert target["labels"].dtype == torch.int64
        assert target["labels"].tolist() == [LABELS[a["category_id"]] for a in mine]
        assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (len(mine), *image.shape[1:])


def test_class_names_select_categories(coco, tmp_path):
    ds = CocoDetection(coco["ann_file"], coco["img_dir"], class_names=["bar", "square"])
    assert (ds.category_ids, ds.class_names) == ([3, 12], ["square", "bar"]) and ds.problems == []
    assert sorted({v for _, t in ds for v in t["labels"].tolist()}) == [1, 2]
    with pytest.raises(ValueError, match=r"annotations\.json has no categories named \['cat'\]"):
        CocoDetection(coco["ann_file"], coco["img_dir"], class_names=["cat"])


def test_polygon_masks_are_the_drawn_pixels(coco):
    ds = CocoDetection(coco["ann_file"], coco["img_dir"])
    image, target = ds[0]  # img0: the square polygon _rectangle(4, 6, 18, 16)
    assert target["labels"].tolist() == [1]
    assert np.array_equal(target["masks"][0].numpy(), rectangle_mask(SIZES[0], 4, 6, 18, 16))
    for box, mask in zip(target["boxes"], target["masks"]):  # the ellipses too: masks within their boxes
        ys, xs = mask.nonzero().unbind(1)
        assert box[0] <= xs.min() and xs.max() < box[2] + 1 and box[1] <= ys.min() and ys.max() < box[3] + 1


def test_rle_masks_compressed_and_uncompressed(coco, tmp_path):
    from pycocotools import mask as mask_util

    h, w = SIZES[4]
    drawn = rectangle_mask((h, w), 10, 12, 25, 20)
    drawn[20:24, 15:20] = 0  # a hole: not a box
    rle = mask_util.encode(np.asfortranarray(drawn))
    segms = [{"size": [h, w], "counts": rle["counts"].decode("ascii")}, {"size": [h, w], "counts": _runs(drawn)}]

    def edit(data):
        for k, segm in enumerate(segms):
            data["annotations"].append(dict(id=500 + k, image_id=140, category_id=7, iscrowd=0, area=float(drawn.sum()),
                                            bbox=[10, 12, 25, 20], segmentation=segm))

    ds = _variant(coco, tmp_path, edit)
    _, target = ds[[i.id for i in ds.images].index(140)]
    assert ds.problems == [] and target["labels"].tolist() == [2, 2]
    for mask in target["masks"]:
        assert np.array_equal(mask.numpy(), drawn)


def _runs(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts of ``mask`` (column-major runs, starting with a run of zeros)."""
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [len(flat)]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0, *runs]


def test_crowd_boxes_are_ignore_boxes(coco):
    ds = CocoDetection(coco["ann_file"], coco["img_dir"])
    crowd = next(a for a in coco["data"]["annotations"] if a["iscrowd"])
    _, target = ds[[i.id for i in ds.images].index(crowd["image_id"])]
    x, y, w, h = crowd["bbox"]
    assert torch.allclose(target["ignore_boxes"], torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32))
    assert len(target["boxes"]) == len(target["masks"]) == len(target["labels"]) == 2  # the crowd is no target
    _, other = ds[0]
    assert other["ignore_boxes"].shape == (0, 4)


def test_empty_and_small_images(coco, tmp_path):
    Image.new("RGB", (40, 20)).save(coco["img_dir"] / "small.png")

    def edit(data):  # a 20 px high image with an object: under min_size (32)
        data["images"].append(dict(id=900, file_name="small.png", height=20, width=40))
        data["annotations"].append(dict(id=900, image_id=900, category_id=3, iscrowd=0, area=50.0, bbox=[2, 2, 10, 5],
                                        segmentation=[[2, 2, 12, 2, 12, 7, 2, 7]]))
        data["annotations"].append(dict(id=901, image_id=100, category_id=3, iscrowd=0, area=0.0, bbox=[2, 2, 10, 5],
                                        segmentation=[[2, 2, 12, 2, 12, 7, 2, 7]]))  # area 0: dropped silently

    ds = _variant(coco, tmp_path, edit)
    assert [i.id for i in ds.images] == [100, 110, 120, 130] and ds.problems == []
    assert len(ds[0][1]["boxes"]) == 1
    data = json.loads((tmp_path / "annotations.json").read_text())
    everything = CocoDetection(write_annotations(tmp_path, data, "all.json"), coco["img_dir"], skip_empty=False)
    assert [i.id for i in everything.images] == [100, 110, 120, 130, 140]
    image, target = everything[4]
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, *image.shape[1:])
    assert target["labels"].shape == (0,)


@pytest.mark.parametrize("text, why", [("not json {", "not JSON"), ("[1, 2]", "no images"),
                                       ('{"images": [], "annotations": []}', "no categories"),
                                       (b"\xff\xfe\x00", "not JSON text")])
def test_not_coco_json_names_the_file(coco, tmp_path, text, why):
    path = tmp_path / "broken.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=rf"broken\.json is not a COCO annotation file \({why}"):
        CocoDetection(path, coco["img_dir"])


def _bad(data):
    polygon = [10, 10, 30, 10, 30, 30, 10, 30]
    extra = dict(image_id=100, category_id=3, iscrowd=0, area=400.0, segmentation=[polygon])
    data["annotations"] += [
        dict(extra, id=801, bbox=[90, 70, 20, 20]),  # outside img0 (80 x 64)
        dict(extra, id=802, bbox=[10, 10, 20, 20], segmentation=[[10, 10, 30, 30]]),  # a 2-point polygon
        dict(extra, id=803, bbox=[10, 10, 20, 20], category_id=99),  # unknown category
        dict(extra, id=804, bbox=[70, 50, 20, 20]),  # 10 px beyond img0's corner: clipped, kept
        dict(extra, id=805, bbox=[10, 10, 20, 20], segmentation=[polygon, [1, 1, 2, 2]]),  # one bad part of two
        dict(extra, id=806, bbox=[10, 10, 20, 20], image_id=12345),  # no such image
        dict(extra, id=807, bbox=[10, 10, 20, 20], segmentation=[]),  # no mask
        dict(extra, id=808, bbox=[10, 10, 20, 20], segmentation={"size": [8, 8], "counts": "0"}),  # RLE's size
    ]
    data["images"].append(dict(id=999, file_name="gone.png", height=64, width=64))
    data["annotations"].append(dict(extra, id=809, image_id=999, bbox=[10, 10, 20, 20]))  # not reported again


def test_bad_annotations_are_reported_by_file_and_id(coco, tmp_path):
    data = copy.deepcopy(coco["data"])
    _bad(data)
    ann_file = write_annotations(tmp_path, data, "bad.json")
    with pytest.warns(UserWarning, match=r"bad\.json: 9 problem\(s\)") as caught:
        ds = CocoDetection(ann_file, coco["img_dir"])
    assert len(caught) == 1  # one summary
    problems = dict(zip(["gone", "801", "802", "803", "804", "805", "806", "807", "808"], ds.problems))
    assert len(ds.problems) == 9 and all(p.startswith(f"{ann_file}: ") for p in ds.problems)
    assert "image gone.png (image id 999) not found" in problems["gone"]
    assert "annotation id 801 (image img0.png): bbox [90, 70, 20, 20] lies outside its 80x64 image" in problems["801"]
    assert "annotation id 802 (image img0.png): polygon(s) of 2 points" in problems["802"]
    assert "skipped" in problems["802"] and "annotation id 803" in problems["803"]
    assert "unknown category_id 99: skipped" in problems["803"]
    assert "annotation id 804" in problems["804"] and "clipped" in problems["804"]
    assert "annotation id 805" in problems["805"] and "of 2 points" in problems["805"] and "dropped" in problems["805"]
    assert "annotation id 806: image id 12345 is not in the set" in problems["806"]
    assert "annotation id 807 (image img0.png): no segmentation" in problems["807"]
    assert ("annotation id 808 (image img0.png): RLE size [8, 8] is not its image's [height, width] [64, 80]: "
            "skipped") in problems["808"]
    # the rest loads: img0 has its square, the clipped box and the polygon of 805 (its bad part dropped)
    assert [i.id for i in ds.images] == [100, 110, 120, 130]
    _, target = ds[0]
    assert target["boxes"].tolist() == [[4, 6, 22, 22], [70, 50, 80, 64], [10, 10, 30, 30]]
    assert np.array_equal(target["masks"][2].numpy(), rectangle_mask(SIZES[0], 10, 10, 20, 20))
    assert all(len(t["boxes"]) == len(t["masks"]) for _, t in ds)


def test_unreadable_or_resized_image_raises_naming_the_file(coco, tmp_path):
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for info in coco["data"]["images"]:
        (img_dir / info["file_name"]).write_bytes((coco["img_dir"] / info["file_name"]).read_bytes())
    ds = CocoDetection(coco["ann_file"], img_dir)
    (img_dir / "img1.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"img1\.png \(image id 110\) cannot be read"):
        ds[1]
    Image.new("RGB", (10, 40)).save(img_dir / "img2.png")
    with pytest.raises(ValueError, match=r"img2\.png \(image id 120\) is 10x40 but .*annotations\.json gives 90x60"):
        ds[2]
    (img_dir / "img3.png").unlink()
    with pytest.raises(ValueError, match=r"img3\.png \(image id 130\) cannot be read"):
        ds[3]
    assert ds[0][1]["labels"].tolist() == [1]  # the others still load


def test_a_batch_trains_a_mini_detector(coco):
    from iwin_models.data.detection import DetectionTrainAugment
    from iwin_models.models.detection import build_detector

    torch.manual_seed(0)
    ds = CocoDetection(coco["ann_file"], coco["img_dir"], transform=DetectionTrainAugment(crop_prob=0.0))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    images, targets = next(iter(loader))
    assert isinstance(images, list) and len(images) == len(targets) == 2
    model = build_detector("tiny", embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), fpn_channels=32,
                           fc_channels=64, conv_channels=32, num_classes=ds.num_classes)
    model.transform.train_scales = ((128, 96),)  # small images: CPU
    model.train()
    losses = model(images, targets)
    assert {"loss_mask", "loss_classifier", "loss_box_reg"} <= set(losses), sorted(losses)
    assert all(torch.isfinite(v).all() for v in losses.values())
    sum(losses.values()).backward()
