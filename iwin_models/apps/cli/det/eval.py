"""``iwin-det eval``: COCO box and mask mAP of a detector on a COCO-format data set; ``torchrun`` for many processes.

The figures are :func:`iwin_models.evaluate_detector`'s (pycocotools' COCOeval under mmdet's names), printed as a
table by rank 0 (``torchrun --nproc_per_node 2 --no-python iwin-det eval ...`` splits the images). Images that
cannot be read are reported and left out; the command then prints the figures of the rest and exits with
status 2, naming them.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..common import add_detector_arguments, add_fast_option, fast_model, resolve_detector


def add_arguments(parser) -> None:
    add_detector_arguments(parser.add_argument_group("model"))
    g = parser.add_argument_group("data (COCO format)")
    g.add_argument("--ann-file", required=True, metavar="FILE",
                   help="COCO annotations (e.g. instances_val2017.json); its categories sorted by id are the "
                        "model's classes")
    g.add_argument("--img-dir", required=True, metavar="DIR", help="the folder of the images (e.g. val2017)")
    g.add_argument("--limit", type=int, metavar="N", help="evaluate the first N images only")
    g = parser.add_argument_group("test")
    g.add_argument("--score-threshold", type=float, metavar="S",
                   help="keep the detections scoring S or more (default: the model's test_cfg, score > 0.05)")
    add_fast_option(g)
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK when available, else cpu)")
    g.add_argument("--results", metavar="FILE", help="also write the COCO results JSON (bbox + segm RLE)")
    g.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _report(args, figures: dict, world_size: int) -> None:
    from ....engine.detection_eval import format_detection_results
    from ....io.files import write_atomic

    print(f"{args.model} on {figures['num_images']} images of {args.ann_file} "
          f"({world_size} process{'es' if world_size > 1 else ''})")
    print(format_detection_results(figures))
    for iou_type in ("bbox", "segm"):
        print(f"{iou_type}_mAP_copypaste: {figures[f'{iou_type}_mAP_copypaste']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(figures, indent=1)
        write_atomic(args.json, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    sys.stdout.flush()


def run(args) -> int:
    import torch.distributed as dist

    from ....engine.detection_eval import evaluate_detector, load_coco
    from ....engine.distributed import init_distributed, world

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be positive, got {args.limit}")
    load_coco(args.ann_file)  # a bad file is the error, before the model is loaded
    if not Path(args.img_dir).is_dir():
        raise NotADirectoryError(f"--img-dir {args.img_dir} is not a folder")
    device, started = init_distributed(args.device)
    try:
        rank, world_size = world()
        model = fast_model(resolve_detector(args.model, args.weights, device=device), args.fast)
        figures = evaluate_detector(model, args.ann_file, args.img_dir, limit=args.limit, results_file=args.results,
                                    progress=not args.no_progress, score_threshold=args.score_threshold,
                                    fast=False)  # fast_model decided
        if rank == 0:
            _report(args, figures, world_size)
    finally:
        if started:
            dist.destroy_process_group()
    if figures["skipped"] and rank == 0:
        print(f"iwin-det eval: error: {len(figures['skipped'])} images could not be read (the figures are of the "
              f"rest): {', '.join(f'{f} (image {i})' for f, i, _ in figures['skipped'])}", file=sys.stderr)
    return 2 if figures["skipped"] else 0
