"""Peak memory of ``iwin_models.detect`` on a large photo (run by hand, never in CI).

    .venv/bin/python benchmarks/bench_detection_memory.py [--size 6000x4000] [--model mini_mask_rcnn]

A synthetic photo (smooth gradients and shapes, JPEG, default 24 MP) is detected with a mini detector of
``<fixtures>/detection`` (its random weights give dozens of detections: the worst case for the masks) in a
fresh worker process. The worker reports its resident memory after the model is built (``VmRSS``) and its
peak over the whole ``detect`` call (``VmHWM``), and the script prints the peak's growth against the image's
own bytes (H x W x 3) and against the returned masks' bytes (N x H x W, the floor of the API's ``(N, H, W)``
bool masks). The masks are pasted one box at a time (never a full-size float map per detection).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "detection"
MINI = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), fpn_channels=32, fc_channels=64,
            conv_channels=32)
NAMES = {"mini_mask_rcnn": "iwin_tiny_mask_rcnn_coco_3x",
         "mini_cascade_mask_rcnn": "iwin_tiny_cascade_mask_rcnn_coco_3x"}


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M)[1])


def synthetic_photo(path: Path, width: int, height: int) -> None:
    from PIL import Image, ImageDraw

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], -1).astype(np.uint8)
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(0)
    for _ in range(40):
        x0, y0 = int(rng.integers(0, width - 200)), int(rng.integers(0, height - 200))
        w, h = (int(v) for v in rng.integers(100, max(101, min(width, height) // 3), size=2))
        draw.ellipse([x0, y0, x0 + w, y0 + h], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    image.save(path, quality=90)


def worker(path: str, model_name: str) -> dict:
    import torch

    import iwin_models

    torch.set_num_threads(2)
    model = iwin_models.create_detector(NAMES[model_name], weights=FIXTURES / f"{model_name}.pth", **MINI)
    before = _status_kib("VmRSS")
    found = iwin_models.detect(model, path)
    peak = _status_kib("VmHWM")
    return dict(rss_before_kib=before, peak_kib=peak, detections=len(found), shape=list(found.masks.shape[1:]),
                masks_bytes=int(found.masks.nbytes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="6000x4000", help="W x H of the synthetic photo")
    parser.add_argument("--model", default="mini_mask_rcnn", choices=sorted(NAMES))
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "photo.jpg"
        synthetic_photo(photo, width, height)
        done = subprocess.run([sys.executable, __file__, "--worker", str(photo), args.model], capture_output=True,
                              text=True, cwd=REPO, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    image_bytes = width * height * 3
    growth = (result["peak_kib"] - result["rss_before_kib"]) * 1024
    print(f"{args.model} on {width}x{height} ({width * height / 1e6:.0f} MP): {result['detections']} detections; "
          f"RSS {result['rss_before_kib'] / 2**20:.2f} GiB after building the model, "
          f"peak {result['peak_kib'] / 2**20:.2f} GiB; growth {growth / 2**30:.2f} GiB = "
          f"{growth / image_bytes:.1f}x the image's {image_bytes / 2**20:.0f} MiB, of which the returned masks "
          f"{result['masks_bytes'] / 2**30:.2f} GiB "
          f"({(growth - result['masks_bytes']) / image_bytes:.1f}x the image besides them)")


if __name__ == "__main__":
    main()
