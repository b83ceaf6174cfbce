"""CPU time of an Iwin detector per 800x1333 image against torchvision's ``maskrcnn_resnet50_fpn_v2``, stage by stage
(run by hand, never in CI).

    .venv/bin/python benchmarks/bench_detection_cpu.py [--model iwin_tiny_mask_rcnn_coco_3x] [--runs 3] [--plain]

Both models get random weights (the time does not depend on the values) and the same photo, resized by each
model's own transform to 800 on the short side (the bundled sample, 640x427, becomes 1199x800). Each model is
timed in the same process, runs alternating, after one warm-up run; the score thresholds are set to 0 and both
keep 100 detections, so that the RoI heads and the mask paste do the work of a full image. The stages are the
preprocessing, the backbone body, the FPN, the RPN, the RoI heads (boxes and mask heads) and the postprocessing
(boxes back to the photo, masks pasted), timed by forward hooks; the median of ``--runs`` runs is printed with
each stage's share. The Iwin model runs with its CPU fast twins (``optimize_for_cpu``) unless ``--plain``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager

import numpy as np
import torch

STAGES = ("transform", "body", "fpn", "rpn", "roi_heads", "postprocess")


def _timed_parts(model) -> dict:
    """The modules (and the postprocess method) of each stage."""
    return dict(transform=model.transform, body=model.backbone.body, fpn=model.backbone.fpn, rpn=model.rpn,
                roi_heads=model.roi_heads)


@contextmanager
def stage_clock(model, seconds: dict):
    """Add each stage's time of the calls made inside to ``seconds``."""
    handles, started = [], {}
    for name, module in _timed_parts(model).items():
        handles.append(module.register_forward_pre_hook(
            lambda m, a, n=name: started.__setitem__(n, time.perf_counter())))
        handles.append(module.register_forward_hook(
            lambda m, a, o, n=name: seconds.__setitem__(n, seconds.get(n, 0.0) + time.perf_counter() - started[n])))
    post = model.transform.postprocess

    def timed_post(*args, **kwargs):
        begin = time.perf_counter()
        try:
            return post(*args, **kwargs)
        finally:
            seconds["postprocess"] = seconds.get("postprocess", 0.0) + time.perf_counter() - begin

    model.transform.postprocess = timed_post
    try:
        yield
    finally:
        del model.transform.postprocess
        for handle in handles:
            handle.remove()


def iwin_detector(name: str, plain: bool):
    import iwin_models
    from iwin_models.models.detection.model import TestConfig

    model = iwin_models.create_detector(name, test_cfg=TestConfig(score_thr=0.0)).eval()
    return model if plain else iwin_models.optimize_for_cpu(model)


def torchvision_detector():
    from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

    return maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, box_score_thresh=0.0).eval()


def photo() -> torch.Tensor:
    import iwin_models
    from iwin_models.io.images import load_image

    return torch.from_numpy(load_image(iwin_models.SAMPLE_IMAGE)).permute(2, 0, 1).float() / 255


@torch.no_grad()
def one_run(model, image: torch.Tensor) -> tuple[float, dict, int]:
    seconds: dict = {}
    with stage_clock(model, seconds):
        begin = time.perf_counter()
        out = model([image])
        total = time.perf_counter() - begin
    return total, seconds, len(out[0]["scores"])


def measure(models: dict, image: torch.Tensor, runs: int) -> dict:
    for model in models.values():
        one_run(model, image)  # warm-up: oneDNN primitives, allocator
    results = {name: [] for name in models}
    for _ in range(runs):
        for name, model in models.items():  # alternating, so that a busy moment hits both
            results[name].append(one_run(model, image))
    return results


def report(results: dict) -> None:
    base = None
    for name, runs in results.items():
        total = statistics.median(r[0] for r in runs)
        base = base or total
        stages = {s: statistics.median(r[1].get(s, 0.0) for r in runs) for s in STAGES}
        shares = ", ".join(f"{s} {stages[s]:.2f} s ({stages[s] / total:.0%})" for s in STAGES)
        print(f"{name}: {total:.2f} s per image (x{total / base:.2f}; {runs[0][2]} detections; "
              f"{[round(r[0], 2) for r in runs]})\n  {shares}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="iwin_tiny_mask_rcnn_coco_3x")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--plain", action="store_true", help="the Iwin model without its CPU fast twins")
    args = parser.parse_args()
    torch.manual_seed(0)
    np.random.seed(0)
    ours = f"{args.model}{' (plain)' if args.plain else ' (optimize_for_cpu)'}"
    models = {"torchvision maskrcnn_resnet50_fpn_v2": torchvision_detector(),
              ours: iwin_detector(args.model, args.plain)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    report(measure(models, photo(), args.runs))


if __name__ == "__main__":
    main()
