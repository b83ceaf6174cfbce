"""What the commands share: the call to the one model resolver, the one data-set builder, precision, speed
and optional-dependency checks.

Every command that needs a segmenter resolves ``--model``/``--weights`` with :func:`resolve_model`, which
calls the library's resolver (:func:`iwin_models.models.segmenters.load_segmenter`: a registered name, a weights
file, a ``save_pretrained``/``convert`` folder or a hub repository, as in Python); a command that needs an
optional extra checks it first (:func:`check_dependencies`); every command that reads a data set
from its options builds it with :func:`build_dataset` (ADE20K, or a folder data set). ``predict``,
``eval`` and ``train`` take ``--precision`` (:func:`add_precision_option`, one table:
:data:`iwin_models.engine.precision.PRECISIONS`) and run the model :func:`fast_model` gives (CPU fast twins
as ``segment()`` does, unless ``--no-fast`` or ``IWIN_FAST_PATH=0``).
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ...engine.precision import PRECISIONS
from ...fast import with_cpu_twins
from ...models.segmenters import STARTS, load_segmenter, parse_device, starts_random
from ...models.weights import ADE20K_PROTOCOL, SEGMENTERS

__all__ = ["PRECISIONS", "STARTS", "add_model_arguments", "add_precision_option", "add_fast_option", "fast_model",
           "resolve_model", "build_dataset", "parse_device", "check_dependencies", "MissingExtraError",
           "add_detector_arguments", "resolve_detector"]

DEFAULT_MODEL = "iwin_tiny_upernet_ade20k"
_WEIGHTS_HELP = ("official mmseg .pth (a path, or the file name of a download in $TORCH_HOME/hub/checkpoints), "
                 "safetensors file, save_pretrained/convert folder, Hugging Face hub repo (owner/name) or URL "
                 "(default: the official checkpoint, from the torch.hub cache)")


def add_model_arguments(parser, default: str | None = DEFAULT_MODEL, weights_help: str = _WEIGHTS_HELP,
                        weights_metavar: str | None = None) -> None:
    """``--model`` (required when ``default`` is None) and ``--weights`` on ``parser`` (or an argument group)."""
    model_help = (f"segmenter name ({', '.join(SEGMENTERS)}), a folder written by save_pretrained or "
                  f"iwin-seg convert, or a Hugging Face hub repo (owner/name)")
    if default is None:
        parser.add_argument("--model", required=True, help=model_help)
    else:
        parser.add_argument("--model", default=default, help=model_help + " (default: %(default)s)")
    parser.add_argument("--weights", metavar=weights_metavar, help=weights_help)


def add_precision_option(parser, default: str = "fp32", help: str = "autocast precision") -> None:
    """``--precision`` (a key of PRECISIONS) on ``parser``."""
    parser.add_argument("--precision", choices=list(PRECISIONS), default=default,
                        help=f"{help} (default: %(default)s)")


def add_fast_option(parser) -> None:
    """``--no-fast``: the command runs the plain model (``args.fast`` False), as with ``IWIN_FAST_PATH=0``."""
    parser.add_argument("--no-fast", dest="fast", action="store_false",
                        help="run the plain model, without iwin_models.optimize_for_cpu's CPU fast twins "
                             "(also: IWIN_FAST_PATH=0)")


def add_batch_options(parser, outputs: str) -> None:
    """The options of a command that runs a model over many images (``predict`` of both tools): ``--no-fast``,
    ``--device``, ``--skip-existing`` (``outputs``: what an image's outputs are), ``--prefetch``, ``--no-progress``."""
    add_fast_option(parser)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK when available, else cpu)")
    parser.add_argument("--skip-existing", action="store_true",
                        help=f"leave images whose {outputs} are already there (continue a run)")
    parser.add_argument("--prefetch", type=int, default=2, metavar="N",
                        help="images decoded ahead of the model (default: %(default)s; 0: none)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def fast_model(model: torch.nn.Module, fast: bool = True) -> torch.nn.Module:
    """The model a command runs: the package's one CPU-twin policy (:func:`iwin_models.fast.with_cpu_twins`, as
    ``segment()`` and ``evaluate()`` apply it), or the model as it is with ``--no-fast`` (``fast`` False). Call it
    once the model is on its device; the commands then tell ``predict()`` not to convert again (``fast=False``)."""
    return with_cpu_twins(model, None if fast else False)


def resolve_model(name: str, weights: str | None = None, *, device: str | torch.device | None = "cpu",
                  start: str = "official", num_classes: int | None = None, warn: bool = True, **create_kwargs):
    """``--model`` and ``--weights`` -> the segmenter on ``device``, in eval mode: the library's one resolver,
    :func:`iwin_models.models.segmenters.load_segmenter` (see it for what ``name``, ``weights``, ``start``,
    ``num_classes`` and ``create_kwargs`` accept), called as Python users call it. The commands add one
    thing: the random-weights warning is an ``iwin-seg: warning:`` line on stderr (``warn``)."""
    if warn and starts_random(name, weights, start):
        print(f"iwin-seg: warning: no --weights given, {name} has RANDOM weights "
              f"(pass --weights with the official checkpoint for a useful model)", file=sys.stderr)
    return load_segmenter(name, weights, device=device, start=start, num_classes=num_classes, warn=False,
                          **create_kwargs)


def add_detector_arguments(parser) -> None:
    """``--model`` (a registered detector, required) and ``--weights`` on ``parser``, for ``iwin-det``."""
    from ...models.detection.weights import DETECTORS

    parser.add_argument("--model", required=True, metavar="NAME",
                        help=f"detector name ({', '.join(DETECTORS)})")
    parser.add_argument("--weights", help="the authors' mmdet .pth (a path, or the file name of a download in "
                                          "$TORCH_HOME/hub/checkpoints), safetensors file, save_pretrained / iwin-det "
                                          "convert folder, or URL (default: the authors' released checkpoint)")


def resolve_detector(name: str, weights: str | None = None, *, device: str | torch.device | None = "cpu"):
    """``--model`` and ``--weights`` -> the detector on ``device``, in eval mode, through the library's
    :func:`iwin_models.create_detector` (without ``weights``: the authors' released checkpoint, downloaded once
    into the torch.hub cache)."""
    from ...models.detectors import create_detector

    return create_detector(name, pretrained=weights is None, weights=weights).to(device).eval()


class MissingExtraError(ValueError):
    """An optional dependency a command needs is not installed (a ValueError: ``main()`` prints it as the
    command's one-line error, exit status 2)."""


def check_dependencies(*checks: Callable[[], None]) -> None:
    """Run the library's checks of the optional dependencies a command needs (e.g.
    :func:`iwin_models.interop.export.require_onnx`), before any slow work: a missing one is the command's one-line
    error with its install hint (``pip install 'iwin-models[onnx]'``), not a traceback after the model
    was loaded."""
    for check in checks:
        try:
            check()
        except ImportError as e:
            raise MissingExtraError(str(e)) from None


def build_dataset(*, data_root: str | Path | None = None, split: str = "validation",
                  images: str | Path | None = None, labels: str | Path | None = None,
                  class_names: str | Sequence[str] | None = None, num_classes: int | None = None,
                  ignore_index: int = 255, reduce_zero_label: bool = False, transform: Callable | None = None,
                  model=None):
    """The data set the options describe: ADE20K at ``data_root``, or a folder data set ``images`` + ``labels``.

    The one builder of every command (``eval``; ``train`` for its training and validation sets).

    Args:
        data_root: ``ADEChallengeData2016`` (or its parent); then ``split`` says which, and the folder
            options must not be given.
        images, labels: a folder data set (label PNGs with the images' stems).
        class_names: its classes: a file (one per line, or a JSON list), a comma list or a list; without
            them ``num_classes`` (default: the ``model``'s) classes named as the model names them, else
            ``class 0``, ``class 1``, ...
        ignore_index, reduce_zero_label: how the folder's label files mark ignored pixels.
        transform: ``transform(image, label)`` for each sample (e.g. the training pipeline).
        model: a segmenter whose class count, names and palette are the defaults.
    """
    from ...data.datasets import ADE20KDataset, FolderSegmentationDataset, read_class_names

    if data_root:
        if images or labels:
            raise ValueError("give either --data-root (ADE20K) or --images/--labels (a folder data set), not both")
        return ADE20KDataset(data_root, split, transform)
    if not (images and labels):
        raise ValueError("no data: give --data-root ADEChallengeData2016, or --images DIR --labels DIR")
    if class_names:
        names = read_class_names(class_names)
        if num_classes is not None and num_classes != len(names):
            raise ValueError(f"--num-classes {num_classes} but {len(names)} class names")
    else:
        names = _default_names(num_classes, model)
    palette = getattr(model, "palette", None)
    palette = palette if palette and len(palette) == len(names) else None
    return FolderSegmentationDataset(images, labels, names, ignore_index=ignore_index,
                                     reduce_zero_label=reduce_zero_label, transform=transform, palette=palette)


def _default_names(num_classes: int | None, model) -> list[str]:
    n = num_classes or getattr(model, "num_classes", None)
    if not n:
        raise ValueError("a folder data set needs --class-names (file or comma list) or --num-classes")
    model_names = getattr(model, "class_names", None)
    return list(model_names) if model_names and len(model_names) == n else [f"class {i}" for i in range(n)]


def add_protocol_arguments(parser, scale_hint: str = "") -> None:
    """--aug, --slide and --scale, described from the ADE20K test protocol (``weights.ADE20K_PROTOCOL``)."""
    protocol = ADE20K_PROTOCOL
    ratios = f"{min(protocol.aug_ratios)}..{max(protocol.aug_ratios)}"
    parser.add_argument("--aug", action="store_true", help=f"multi-scale ({ratios}) + flip test-time augmentation")
    parser.add_argument("--slide", action="store_true", help=f"sliding-window inference ({protocol.slide_crop} "
                                                             f"crops, stride {protocol.slide_stride})")
    parser.add_argument("--scale", type=int, nargs=2, default=protocol.scale, metavar=("LONG", "SHORT"),
                        help=f"test scale the image is fitted into (default: %(default)s, the protocol's{scale_hint})")
