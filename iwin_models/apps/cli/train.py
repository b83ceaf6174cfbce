"""``iwin-seg train``: fine-tune a segmenter with the authors' ADE20K recipe (:mod:`iwin_models.engine.training`).

The options are made in one place from two dataclasses: :class:`BuildOptions` (what this command
builds the model and the data sets from) and :class:`~iwin_models.engine.training.TrainConfig` (what the
:class:`~iwin_models.engine.training.Trainer` reads), each field with its default and help; nothing here
restates a default. The command sets the process up (:func:`~iwin_models.engine.training.setup`), builds the
model (:func:`~iwin_models.apps.cli.common.resolve_model`, from the ImageNet backbone; CPU fast twins unless
``--no-fast``) and the data sets (:func:`~iwin_models.apps.cli.common.build_dataset`), and runs the Trainer.
``torchrun --nproc_per_node=N -m iwin_models.apps.cli train ...`` trains with N processes (DDP).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import typing

import torch

from ...data.transforms import CROP_SIZE, RATIO_RANGE, TRAIN_SCALE
from ...engine.training import TrainConfig, Trainer, setup
from ...models.segmenters import DROP_PATH_RATE
from .common import (
    DEFAULT_MODEL,
    add_fast_option,
    add_model_arguments,
    add_precision_option,
    build_dataset,
    fast_model,
    resolve_model,
)

__all__ = ["BuildOptions", "add_arguments", "run", "config_from_args", "options_from_args", "main"]


def _option(default, help: str, group: str):
    return dataclasses.field(default=default, metadata=dict(help=help, group=group))


@dataclasses.dataclass
class BuildOptions:
    """What ``iwin-seg train`` builds the model and the data sets from (the Trainer is given them built)."""

    model: str = _option(DEFAULT_MODEL, "segmenter name or save_pretrained folder", "model")  # see _add_field
    weights: str | None = _option(None, "segmenter checkpoint (official .pth, safetensors) to fine-tune instead "
                                        "of the ImageNet start", "model")
    pretrained: str | None = _option(None, "ImageNet classification checkpoint for the backbone (as the authors' "
                                           "model.pretrained=); default: the variant's official in1k weights via timm",
                                     "model")
    no_pretrained_backbone: bool = _option(False, "start the backbone from random init", "model")
    num_classes: int = _option(150, "classes (a folder data set with --class-names takes their count)", "model")
    drop_path: float = _option(DROP_PATH_RATE, "stochastic depth of a named model", "model")
    data_root: str | None = _option(None, "ADEChallengeData2016 folder (images/, annotations/)", "data")
    images: str | None = _option(None, "folder data set: images", "data")
    labels: str | None = _option(None, "folder data set: label PNGs (class index per pixel)", "data")
    class_names: str | None = _option(None, "file with one name a line (or JSON list), or a comma-separated list",
                                      "data")
    reduce_zero_label: bool = _option(False, "folder labels: 0 ignored, k -> k-1", "data")
    val_images: str | None = _option(None, "folder data set: validation images", "data")
    val_labels: str | None = _option(None, "folder data set: validation labels", "data")
    crop_size: int = _option(CROP_SIZE, "training crop", "data")
    scale: tuple[int, int] = _option(TRAIN_SCALE, "training resize scale before the random ratio", "data")
    ratio_range: tuple[float, float] = _option(RATIO_RANGE, "random resize ratio range", "data")

    def validate(self) -> BuildOptions:
        if self.crop_size < 1:
            raise ValueError("--crop-size must be positive")
        return self


# argparse details beyond a field's type, default and help
_METAVARS = {"scale": ("LONG", "SHORT"), "val_scale": ("LONG", "SHORT"), "ratio_range": ("LOW", "HIGH"),
             "betas": ("B1", "B2"), "clip_grad": "NORM", "checkpoint_interval": "N", "val_interval": "N",
             "log_interval": "N", "keep_checkpoints": "K", "resume": "PATH|auto", "pretrained": "PATH",
             "data_root": "DIR", "images": "DIR", "labels": "DIR", "val_images": "DIR", "val_labels": "DIR",
             "class_names": "FILE|LIST"}
_OPTIONAL_VALUE = {"resume": "auto"}  # --resume alone means --resume auto


def _help(field: dataclasses.Field) -> str:
    text = field.metadata["help"].replace("%", "%%")
    if field.default is None or isinstance(field.default, bool):
        return text
    shown = " ".join(map(str, field.default)) if isinstance(field.default, tuple) else field.default
    return f"{text} (default: {shown})"


def _argparse_keywords(field: dataclasses.Field, hint) -> dict:
    """``add_argument`` keywords of a dataclass field, from its type hint, default and help."""
    keywords = dict(default=field.default, help=_help(field))
    if field.name in _METAVARS:
        keywords["metavar"] = _METAVARS[field.name]
    if hint is bool:
        return dict(keywords, action="store_true")
    if field.name in _OPTIONAL_VALUE:
        keywords.update(nargs="?", const=_OPTIONAL_VALUE[field.name])
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return dict(keywords, type=args[0], nargs=len(args))
    if type(None) in args:  # X | None
        hint = next(a for a in args if a is not type(None))
    return dict(keywords, type=hint)


def _add_field(group, field: dataclasses.Field, hint) -> None:
    if field.name == "model":  # with --weights: the one model option of every command
        add_model_arguments(group, default=field.default, weights_metavar="PATH",
                            weights_help=BuildOptions.__dataclass_fields__["weights"].metadata["help"])
    elif field.name == "precision":  # with --amp, its old spelling
        add_precision_option(group, default=field.default, help=field.metadata["help"])
    elif field.name != "weights":
        group.add_argument(f"--{field.name.replace('_', '-')}", **_argparse_keywords(field, hint))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every field of :class:`BuildOptions` and :class:`~iwin_models.engine.training.TrainConfig` as an option,
    with its default and help, in the groups the fields name; and ``--no-fast``."""
    groups = {}
    for cls in (BuildOptions, TrainConfig):
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            name = field.metadata["group"]
            if name not in groups:
                groups[name] = parser.add_argument_group(name)
            _add_field(groups[name], field, hints[field.name])
    add_fast_option(groups["model"])


def _from_args(cls, args: argparse.Namespace):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`~iwin_models.engine.training.TrainConfig` of parsed options (lists as tuples)."""
    return _from_args(TrainConfig, args)


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    """The :class:`BuildOptions` of parsed options (lists as tuples)."""
    return _from_args(BuildOptions, args)


def build_datasets(options: BuildOptions, validate: bool = True):
    """(training set with the training transform, validation set or None; None too without ``validate``)."""
    from ...data.transforms import build_train_transform

    o = options
    transform = build_train_transform(crop_size=o.crop_size, scale=tuple(o.scale), ratio_range=tuple(o.ratio_range))
    folder = dict(num_classes=None if o.class_names else o.num_classes, reduce_zero_label=o.reduce_zero_label)
    train_set = build_dataset(data_root=o.data_root, split="training", images=o.images,
                              labels=o.labels, class_names=o.class_names, transform=transform, **folder)
    if not validate:
        return train_set, None
    if o.data_root:
        return train_set, build_dataset(data_root=o.data_root, split="validation")
    if not (o.val_images or o.val_labels):
        return train_set, None
    if not (o.val_images and o.val_labels):
        raise ValueError("give both --val-images and --val-labels")
    return train_set, build_dataset(images=o.val_images, labels=o.val_labels,
                                    class_names=list(train_set.class_names), reduce_zero_label=o.reduce_zero_label)


def build_model(options: BuildOptions, num_classes: int, class_names, device: torch.device):
    """The segmenter to train: a registered name (ImageNet backbone unless ``--weights``), or a folder."""
    o = options
    encoder_pretrained = False if o.no_pretrained_backbone else (o.pretrained or True)
    model = resolve_model(o.model, o.weights, device=device, start="imagenet", num_classes=num_classes,
                          encoder_pretrained=encoder_pretrained, drop_path_rate=o.drop_path)
    if class_names is not None:
        palette = model.palette if model.palette and len(model.palette) == num_classes else None
        model.set_class_info(list(class_names), palette)
    return model


def _train(options: BuildOptions, config: TrainConfig, fast: bool) -> dict:
    device = setup(config)  # process group, determinism, seeds: before the model, the same in every process
    train_set, val_set = build_datasets(options, validate=bool(config.val_interval))
    class_names = None if options.data_root else train_set.class_names
    num_classes = options.num_classes if class_names is None else len(class_names)
    model = fast_model(build_model(options, num_classes, class_names, device), fast)
    return Trainer(model, train_set, config, val_set, run_args=dataclasses.asdict(options)).fit()


def _summary(result: dict) -> str:
    summary = f"done: {result['iterations']} iterations"
    if math.isfinite(result["loss"]):
        summary += f", last loss {result['loss']:.4f}"
    if "mIoU" in result:
        summary += f", mIoU {result['mIoU']:.4f}"
    return summary


def run(args: argparse.Namespace) -> int:
    options, config = options_from_args(args).validate(), config_from_args(args).validate()
    try:
        result = _train(options, config, args.fast)
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
