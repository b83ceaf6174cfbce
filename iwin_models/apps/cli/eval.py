"""``iwin-seg eval``: mIoU of a segmenter on ADE20K or a folder data set; ``torchrun`` for many processes.

``--report DIR`` also writes ``DIR/index.html`` (:mod:`iwin_models.apps.report`: charts, the most confused classes,
the ``--report-worst`` images of lowest pixel accuracy, the table), once, on rank 0, from the summed figures.
It needs matplotlib (``pip install 'iwin-models[report]'``), checked before the model is loaded.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import (
    PRECISIONS,
    add_fast_option,
    add_model_arguments,
    add_precision_option,
    add_protocol_arguments,
    build_dataset,
    check_dependencies,
    fast_model,
    resolve_model,
)


def add_arguments(parser) -> None:
    add_model_arguments(parser.add_argument_group("model"))
    g = parser.add_argument_group("data (ADE20K, or a folder data set)")
    g.add_argument("--data-root", metavar="DIR", help="ADEChallengeData2016 folder (or its parent)")
    g.add_argument("--split", default="validation", choices=["validation", "training"],
                   help="ADE20K split (default: %(default)s)")
    g.add_argument("--images", metavar="DIR", help="folder data set: images (jpg/png)")
    g.add_argument("--labels", metavar="DIR", help="folder data set: label PNGs with the same stems")
    g.add_argument("--class-names", metavar="FILE",
                   help="folder data set: class names, a file (one per line, or a JSON list) or a comma list "
                        "(default: the model's)")
    g.add_argument("--num-classes", type=int,
                   help="folder data set without --class-names: number of classes (default: the model's)")
    g.add_argument("--ignore-index", type=int, default=255,
                   help="folder data set: label value of ignored pixels (default: %(default)s)")
    g.add_argument("--reduce-zero-label", action="store_true",
                   help="folder data set: label 0 is 'unlabelled' and 1..C the classes (as ADE20K)")
    g.add_argument("--limit", type=int, metavar="N", help="evaluate the first N images only")
    g = parser.add_argument_group("test protocol")
    add_protocol_arguments(g)
    add_precision_option(g)
    add_fast_option(g)
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK when available, else cpu)")
    g.add_argument("--json", metavar="FILE", help="also write the figures (and per-class sums) as JSON")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = parser.add_argument_group("report")
    g.add_argument("--report", metavar="DIR",
                   help="also write DIR/index.html: per-class chart, most confused classes, the images of lowest "
                        "pixel accuracy and the table, in one self-contained page (needs matplotlib: "
                        "pip install 'iwin-models[report]')")
    g.add_argument("--report-worst", type=int, default=8, metavar="N",
                   help="images of lowest pixel accuracy shown in the report (default: %(default)s)")


def _report(model, dataset, result: dict, args, world: int) -> None:
    from ...engine.evaluation import format_results, json_ready

    print(f"{getattr(model, 'name', type(model).__name__)} on {result['num_images']} images "
          f"({'aug' if args.aug else 'single scale'}{', slide' if args.slide else ''}, "
          f"{world} process{'es' if world > 1 else ''})")
    print(format_results(result, dataset.class_names))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(json_ready(result), indent=1), encoding="utf-8")
    if args.report:
        print(f"report: {_write_report(model, dataset, result, args, world)}")
    sys.stdout.flush()


def _write_report(model, dataset, result: dict, args, world: int) -> Path:
    from ...data import ade20k
    from ..report import write_report

    data = f"{args.data_root} ({args.split})" if args.data_root else f"images {args.images}, labels {args.labels}"
    test = ("aug" if args.aug else "single scale") + (", slide" if args.slide else "")
    settings = {"model": args.model, "weights": args.weights or "(the model's)", "data": data,
                "images": result["num_images"], "test": test, "scale": " x ".join(map(str, args.scale)),
                "precision": args.precision, "processes": world}
    palette = dataset.palette or getattr(model, "palette", None) or ade20k.PALETTE
    return write_report(result, dataset, args.report, class_names=dataset.class_names, palette=palette,
                        title=f"{getattr(model, 'name', type(model).__name__)}: evaluation", settings=settings)


def run(args) -> int:
    import torch.distributed as dist

    from ...engine.distributed import init_distributed, world
    from ...engine.evaluation import evaluate

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be positive, got {args.limit}")
    if args.report_worst < 0:
        raise ValueError(f"--report-worst must be 0 or more, got {args.report_worst}")
    if args.report:
        from ..report import require_report

        check_dependencies(require_report)  # before the model: a missing extra fails at once
    device, started = init_distributed(args.device)
    try:
        rank, world_size = world()
        model = fast_model(resolve_model(args.model, args.weights, device=device), args.fast)
        dataset = build_dataset(data_root=args.data_root, split=args.split, images=args.images, labels=args.labels,
                                class_names=args.class_names, num_classes=args.num_classes,
                                ignore_index=args.ignore_index, reduce_zero_label=args.reduce_zero_label, model=model)
        result = evaluate(model, dataset, aug=args.aug, slide=args.slide, dtype=PRECISIONS[args.precision],
                          progress=not args.no_progress, scale=tuple(args.scale), limit=args.limit,
                          fast=False,  # fast_model decided
                          report_worst=args.report_worst if args.report else 0)
        if rank == 0:
            _report(model, dataset, result, args, world_size)
    finally:
        if started:
            dist.destroy_process_group()
    return 0
