"""``iwin-seg train``: fine-tune a segmenter with the authors' ADE20K recipe (:mod:`iwin_models.training`).

The options are the fields of :class:`~iwin_models.training.TrainConfig`; this module builds the model
(:func:`~iwin_models.cli.common.resolve_model`, starting from the ImageNet backbone) and the data sets
(:func:`~iwin_models.cli.common.build_dataset`) they name, and runs the
:class:`~iwin_models.training.Trainer`. ``torchrun --nproc_per_node=N -m iwin_models.cli train ...``
trains with N processes (DDP).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys

import torch

from ..distributed import init_distributed
from ..training import AMP_DTYPES, TrainConfig, Trainer, seed_everything
from .common import add_model_arguments, build_dataset, resolve_model

__all__ = ["add_arguments", "run", "config_from_args", "main"]


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    add_model_arguments(g, weights_metavar="PATH",
                        weights_help="segmenter checkpoint (official .pth, safetensors) to fine-tune instead of "
                                     "the ImageNet start")
    g.add_argument("--pretrained", metavar="PATH",
                   help="ImageNet classification checkpoint for the backbone (as the authors' model.pretrained=); "
                        "default: the variant's official in1k weights via timm")
    g.add_argument("--no-pretrained-backbone", action="store_true", help="start the backbone from random init")
    g.add_argument("--num-classes", type=int, default=150, help="classes (default: %(default)s; a folder data set "
                                                                "with --class-names takes their count)")
    g.add_argument("--drop-path", type=float, default=0.3, help="stochastic depth of a named model (%(default)s)")
    g.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute the backbone's and the decoder's activations in the backward pass "
                        "(half the activation memory, slower steps)")


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--data-root", metavar="DIR", help="ADEChallengeData2016 folder (images/, annotations/)")
    g.add_argument("--images", metavar="DIR", help="folder data set: images")
    g.add_argument("--labels", metavar="DIR", help="folder data set: label PNGs (class index per pixel)")
    g.add_argument("--class-names", metavar="FILE|LIST", help="file with one name a line (or JSON list), or a "
                                                              "comma-separated list")
    g.add_argument("--reduce-zero-label", action="store_true", help="folder labels: 0 ignored, k -> k-1")
    g.add_argument("--val-images", metavar="DIR", help="folder data set: validation images")
    g.add_argument("--val-labels", metavar="DIR", help="folder data set: validation labels")
    g.add_argument("--crop-size", type=int, default=512, help="training crop (default: %(default)s)")
    g.add_argument("--scale", type=int, nargs=2, default=(2048, 512), metavar=("LONG", "SHORT"),
                   help="training resize scale before the random ratio (default: 2048 512)")
    g.add_argument("--ratio-range", type=float, nargs=2, default=(0.5, 2.0), metavar=("LOW", "HIGH"),
                   help="random resize ratio range (default: 0.5 2.0)")
    g.add_argument("--batch-size", type=int, default=2, help="images per process (default: %(default)s)")
    g.add_argument("--workers", type=int, default=4, help="data loader processes per process (default: %(default)s)")


def _optimisation_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("optimisation")
    g.add_argument("--iters", type=int, default=160000, help="iterations (default: %(default)s)")
    g.add_argument("--lr", type=float, default=6e-5, help="AdamW learning rate (default: %(default)s)")
    g.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.999), metavar=("B1", "B2"))
    g.add_argument("--weight-decay", type=float, default=0.01, help="(none on norms, biases) (default: %(default)s)")
    g.add_argument("--warmup-iters", type=int, default=1500, help="linear warm-up iterations (default: %(default)s)")
    g.add_argument("--warmup-ratio", type=float, default=1e-6, help="warm-up start ratio (default: %(default)s)")
    g.add_argument("--power", type=float, default=1.0, help="poly decay power (default: %(default)s)")
    g.add_argument("--min-lr", type=float, default=0.0, help="poly decay end lr (default: %(default)s)")
    g.add_argument("--aux-weight", type=float, default=0.4, help="auxiliary loss weight (default: %(default)s)")
    g.add_argument("--clip-grad", type=float, default=None, metavar="NORM", help="clip the gradient norm (off)")
    g.add_argument("--amp", choices=sorted(AMP_DTYPES), default="none",
                   help="autocast precision (fp16 uses a GradScaler)")


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("run")
    g.add_argument("--work-dir", default="work_dirs/iwin_upernet", help="checkpoints, log, final model "
                                                                       "(default: %(default)s)")
    g.add_argument("--checkpoint-interval", type=int, default=16000, metavar="N",
                   help="write work-dir/latest.pth every N iterations, and at the end (default: %(default)s)")
    g.add_argument("--keep-checkpoints", type=int, default=0, metavar="K",
                   help="also keep the K most recent iter_N.pth (default: %(default)s)")
    g.add_argument("--resume", nargs="?", const="auto", metavar="PATH|auto",
                   help="continue from a checkpoint (auto, the default with no value: work-dir/latest.pth if any)")
    g.add_argument("--val-interval", type=int, default=16000, metavar="N",
                   help="validate every N iterations and at the end; 0 for never (default: %(default)s)")
    g.add_argument("--val-scale", type=int, nargs=2, default=(2048, 512), metavar=("LONG", "SHORT"),
                   help="validation: images fitted into this size, as the test protocol (default: 2048 512)")
    g.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms (bit-identical resumes; slower)")
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: this process's GPU if any)")
    g.add_argument("--log-interval", type=int, default=50, metavar="N", help="loss/lr log every N iterations")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every :class:`~iwin_models.training.TrainConfig` field as an option, with its default."""
    for add in (_model_arguments, _data_arguments, _optimisation_arguments, _run_arguments):
        add(parser)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`~iwin_models.training.TrainConfig` of parsed options (lists as tuples)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def build_datasets(config: TrainConfig):
    """(training set with the training transform, validation set or None)."""
    from ..data import build_train_transform

    transform = build_train_transform(crop_size=config.crop_size, scale=tuple(config.scale),
                                      ratio_range=tuple(config.ratio_range))
    folder = dict(num_classes=None if config.class_names else config.num_classes,
                  reduce_zero_label=config.reduce_zero_label)
    train_set = build_dataset(data_root=config.data_root, split="training", images=config.images,
                              labels=config.labels, class_names=config.class_names, transform=transform, **folder)
    if not config.val_interval:
        return train_set, None
    if config.data_root:
        return train_set, build_dataset(data_root=config.data_root, split="validation")
    if not (config.val_images or config.val_labels):
        return train_set, None
    if not (config.val_images and config.val_labels):
        raise ValueError("give both --val-images and --val-labels")
    return train_set, build_dataset(images=config.val_images, labels=config.val_labels,
                                    class_names=list(train_set.class_names), reduce_zero_label=config.reduce_zero_label)


def build_model(config: TrainConfig, num_classes: int, class_names, device: torch.device):
    """The segmenter to train: a registered name (ImageNet backbone unless ``--weights``), or a folder."""
    encoder_pretrained = False if config.no_pretrained_backbone else (config.pretrained or True)
    model = resolve_model(config.model, config.weights, device=device, start="imagenet", num_classes=num_classes,
                          encoder_pretrained=encoder_pretrained, drop_path_rate=config.drop_path)
    if class_names is not None:
        palette = model.palette if model.palette and len(model.palette) == num_classes else None
        model.set_class_info(list(class_names), palette)
    return model


def _train(config: TrainConfig) -> dict:
    device, _ = init_distributed(config.device)
    seed_everything(config.seed)  # the same initial weights in every process
    train_set, val_set = build_datasets(config)
    class_names = None if config.data_root else train_set.class_names
    num_classes = config.num_classes if class_names is None else len(class_names)
    model = build_model(config, num_classes, class_names, device)
    return Trainer(model, train_set, config, val_set).fit()


def _summary(result: dict) -> str:
    summary = f"done: {result['iterations']} iterations"
    if math.isfinite(result["loss"]):
        summary += f", last loss {result['loss']:.4f}"
    if "mIoU" in result:
        summary += f", mIoU {result['mIoU']:.4f}"
    return summary


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args).validate()
    try:
        result = _train(config)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if result["rank"] == 0:
        print(_summary(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``iwin-seg train`` with ``argv`` (default: the command line)."""
    from . import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])
