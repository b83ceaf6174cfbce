"""The Iwin UPerNet segmenters in Hugging Face transformers (``UperNetForSemanticSegmentation`` on a timm backbone).

:func:`save_transformers` writes the folder ``iwin-seg convert --format transformers`` makes: ``config.json`` (an
``UperNetConfig`` whose backbone is a ``TimmBackboneConfig``, the ADE20K names in ``id2label``),
``model.safetensors`` (the weights in transformers' names), ``preprocessor_config.json`` (a
``SegformerImageProcessor`` set as close to the test protocol as it can be) and ``README.md`` (the model card).
After ``import iwin_models``, ``UperNetForSemanticSegmentation.from_pretrained(folder)`` and
``pipeline("image-segmentation", model=folder)`` load it offline; the converter reloads what it wrote and checks
its logits against :class:`~iwin_models.models.upernet.IwinUPerNet`'s before it returns.

The backbone is named, not described: transformers builds it with ``timm.create_model(name, features_only=True,
out_indices=...)`` and no other argument (transformers 5.24: ``TimmBackbone`` passes no model arguments from its
config, and ``UperNetConfig(backbone=..., backbone_kwargs=...)`` looks the name up on the hub). So the config names
a timm model that builds this very network: the plain timm name where it does (``iwin_tiny``, ``iwin_base``, with
the segmentation backbone's ``stage_norms``, which ``features_only`` turns on), else a name registered with the family
(``iwin_small_ade20k`` in :mod:`iwin_models.models.iwin`: the ADE20K Iwin-S has heads 3,6,12,24, the ImageNet one
3,4,8,16, and head counts are in no weight shape). Another network (a different window, a custom size) needs its
own timm name, registered with ``timm.models.register_model`` in every process that loads the folder, passed as
``backbone=``.

transformers is the optional extra ``iwin-models[transformers]``, imported inside the functions that need it.
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import timm
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCardData

from ..extras import install_hint, require
from ..io.files import write_atomic
from ..models.keymaps import convert_mmseg_upernet
from ..models.upernet.model import AUX_CHANNELS
from ..models.weights import ADE20K_PROTOCOL, EvalProtocol, SegmenterWeights, registered
from ..version import __version__

if TYPE_CHECKING:
    from ..models.upernet import IwinUPerNet

__all__ = ["INSTALL_HINT", "BACKBONES", "require_transformers", "backbone_name", "transformers_state_dict",
           "upernet_config", "image_processor", "model_card", "save_transformers", "relative_error"]

INSTALL_HINT = install_hint("transformers")
HF_BACKBONE = "backbone._backbone."  # transformers' TimmBackbone keeps the timm features model as ``_backbone``
OUT_INDICES = (0, 1, 2, 3)
VERIFY_SIZE = (75, 101)  # the random input the converter checks the written folder on (odd, > window at stride 4)
VERIFY_TOLERANCE = 1e-4  # max |diff| / max |logit| (float32 runs differ by ~1e-6, wrong head counts by > 1e-2)


def require_transformers() -> None:
    """Raise a one-line ImportError with the install hint when transformers is missing (no import: fast)."""
    require("transformers", purpose="the transformers format")


# timm names of backbones that differ from their variant's ImageNet model (registered in models/iwin.py)
BACKBONES = ("iwin_small_ade20k",)

# what, besides the weight shapes, makes two backbones compute different things
_HYPERPARAMETERS = ("num_heads", "head_dim", "window_size", "stride", "padding", "dilation", "groups", "eps",
                    "approximate", "output_fmt")


def _architecture(features: torch.nn.Module) -> list:
    modules = [(name, {a: repr(getattr(m, a)) for a in _HYPERPARAMETERS if hasattr(m, a)})
               for name, m in features.named_modules()]
    return modules + [(k, tuple(v.shape), v.dtype) for k, v in features.state_dict().items()]


def _builds(name: str, features: torch.nn.Module) -> bool:
    """Whether timm model ``name`` (as transformers creates it) is the network ``features``."""
    candidate = timm.create_model(name, features_only=True, out_indices=OUT_INDICES, device="meta")
    return _architecture(candidate) == _architecture(features)


def backbone_name(model: IwinUPerNet, backbone: str | None = None) -> str:
    """The timm name that builds ``model``'s backbone exactly (checked on the meta device): ``backbone`` if
    given, else the encoder's own architecture or one of :data:`BACKBONES`."""
    features = model.encoder.model
    candidates = [backbone] if backbone else [model.backbone.pretrained_cfg["architecture"], *BACKBONES]
    for name in candidates:
        if timm.is_model(name) and _builds(name, features):
            return name
    raise ValueError(
        f"no timm model among {candidates} builds this backbone (heads, window, sizes): transformers creates the "
        "backbone from its timm name alone, so register one (timm.models.register_model) and pass backbone=<name>")


# --- weights and config ------------------------------------------------------------------------------------------

def _mmseg_name(hf_key: str) -> str:
    """transformers' UperNet head names are mmseg's, with ``batch_norm`` for ``bn`` and ``classifier`` for
    ``conv_seg``."""
    return re.sub(r"\.batch_norm\.", ".bn.", hf_key).replace(".classifier.", ".conv_seg.")


def _names(hf_keys: Sequence[str]) -> dict[str, str]:
    """Our key -> transformers' key; the heads go through mmseg's names and :func:`convert_mmseg_upernet`, the
    one map of the decoder (our backbone is timm's on both sides)."""
    names = {"encoder.model." + k[len(HF_BACKBONE):]: k for k in hf_keys if k.startswith(HF_BACKBONE)}
    heads = {_mmseg_name(k): k for k in hf_keys if not k.startswith(HF_BACKBONE)}
    return {**names, **convert_mmseg_upernet(heads)}


def transformers_state_dict(model: IwinUPerNet, hf_keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """``model``'s weights under transformers' names ``hf_keys`` (every key of both sides used, or ValueError)."""
    ours = model.state_dict()
    names = _names(hf_keys)
    unused, missing = sorted(set(ours) - set(names)), sorted(set(names) - set(ours))
    if unused or missing:
        raise ValueError(f"the models do not match: {len(unused)} of our weights have no transformers name (e.g. "
                         f"{unused[:3]}), {len(missing)} transformers weights have no source (e.g. {missing[:3]})")
    return {hf: ours[k].detach().clone() for k, hf in names.items()}


def _labels(model: IwinUPerNet) -> dict:
    names = model.class_names or [f"LABEL_{i}" for i in range(model.num_classes)]
    return dict(id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})


def upernet_config(model: IwinUPerNet, backbone: str):
    """transformers' ``UperNetConfig`` of ``model``, its backbone the timm model ``backbone``."""
    from transformers import TimmBackboneConfig, UperNetConfig

    aux = model.auxiliary_head
    timm_backbone = TimmBackboneConfig(backbone=backbone, out_indices=OUT_INDICES, num_channels=model.backbone.in_chans)
    return UperNetConfig(
        backbone_config=timm_backbone,
        hidden_size=model.segmentation_head.conv_seg.in_channels,
        pool_scales=[block[0].output_size for block in model.decoder.psp.blocks],
        use_auxiliary_head=aux is not None, auxiliary_in_channels=None,  # stage 2's width, as our FCN head
        auxiliary_channels=aux.conv_seg.in_channels if aux is not None else AUX_CHANNELS, auxiliary_num_convs=1,
        auxiliary_concat_input=False, auxiliary_loss_weight=0.4, loss_ignore_index=255, **_labels(model))


def image_processor(protocol: EvalProtocol = ADE20K_PROTOCOL):
    """The closest transformers processor to ``protocol``: short side to 512, long side at most 2048 (aspect kept),
    bilinear, mean/std of the protocol (0-255) as rescale 1/255 + normalise; ADE20K labels reduced (0 = other)."""
    from transformers import SegformerImageProcessor
    from transformers.image_utils import PILImageResampling

    return SegformerImageProcessor(
        do_resize=True, size={"shortest_edge": min(protocol.scale), "longest_edge": max(protocol.scale)},
        resample=PILImageResampling.BILINEAR, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[m / 255 for m in protocol.mean], image_std=[s / 255 for s in protocol.std], do_reduce_labels=True)


# --- the model card -------------------------------------------------------------------------------------------

def _imports(backbone: str) -> str:
    return "import iwin_models  # noqa: F401  (registers the Iwin backbones with timm: transformers builds it by name)"


def _usage(backbone: str) -> str:
    imports = _imports(backbone)
    return f"""## Usage

Run the snippets in this folder, or replace `"."` by the folder's path or, once uploaded
(`huggingface-cli upload <org>/<repo> .`), by the repository id `"<org>/<repo>"`.

```python
import torch
from transformers import AutoImageProcessor, UperNetForSemanticSegmentation
from transformers.image_utils import load_image

{imports}
from iwin_models.data import SAMPLE_IMAGE

processor = AutoImageProcessor.from_pretrained(".")
model = UperNetForSemanticSegmentation.from_pretrained(".").eval()
image = load_image(str(SAMPLE_IMAGE))  # RGB, EXIF orientation applied (as the pipeline reads images)
with torch.no_grad():
    outputs = model(**processor(images=image, return_tensors="pt"))
labels = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
print(tuple(labels.shape), sorted({{model.config.id2label[int(i)] for i in labels.unique()}})[:5])
```

```python
from transformers import pipeline

{imports}
from iwin_models.data import SAMPLE_IMAGE

segmenter = pipeline("image-segmentation", model=".")
for segment in segmenter(str(SAMPLE_IMAGE))[:5]:
    print(segment["label"], segment["mask"].size)
```
"""


def _preprocessing(protocol: EvalProtocol) -> str:
    long, short = max(protocol.scale), min(protocol.scale)
    return f"""## Preprocessing: the processor and the authors' test protocol

The authors' protocol: {protocol.describe()}; mean {list(protocol.mean)}, std {list(protocol.std)} (RGB, 0-255).
`preprocessor_config.json` (`SegformerImageProcessor`) does the same whole-image test as far as transformers'
processors can: the short side to {short} and the long side at most {long}, aspect ratio kept (the protocol's "fitted
into {long}x{short}"), bilinear, rescale 1/255 then the protocol's mean and std divided by 255. Where it differs:

* the resized image is rounded to 8 bits, and torchvision's bilinear filter antialiases when it shrinks, where the
  protocol resizes the float image with plain bilinear interpolation (photos with a short side above {short} are
  shrunk: their inputs differ most; enlarged ones by the 8-bit rounding only);
* the side fitted second is truncated to whole pixels where the protocol rounds (it can be 1 pixel shorter);
* no sliding window and no multi-scale + flip test (the protocol's `slide` and `aug` options: use
  `iwin_models.segment` or `iwin-seg predict` for them);
* labels for training: ADE20K's maps (0 = other) are reduced as mmseg does (`do_reduce_labels`: 0 -> 255 ignored,
  k -> k - 1).

The pipeline and `post_process_semantic_segmentation` resize the logits to the photo's size (bilinear,
align_corners False) and take the argmax, as the protocol does.
"""


def _weights_section(spec: SegmenterWeights, source: str | None) -> str:
    source = f" (converted from `{Path(source).name}`)" if source else ""
    return f"""## Weights: {spec.title} on ADE20K

The authors' checkpoint [{spec.file_name}]({spec.url}){source}: {spec.figures()}.
Encoder `{spec.encoder}`, heads {",".join(map(str, spec.heads))}; classes: {spec.dataset}, their names in
`config.json` (`id2label`). Paper: [arXiv 2507.18405](https://arxiv.org/abs/2507.18405); authors' code:
[Cominder/Iwin-Transformer](https://github.com/Cominder/Iwin-Transformer).

## Terms of the weights

{spec.terms.summary}, as stated in [{spec.terms.source}]({spec.terms.url}).
"""


def _front_matter(spec: SegmenterWeights | None) -> str:
    data = ModelCardData(library_name="transformers", pipeline_tag="image-segmentation",
                         tags=["iwin", "upernet", "timm", "semantic-segmentation"])
    if spec is not None:
        data.license, data.license_name, data.license_link = (spec.terms.hub_license, spec.terms.hub_license_name,
                                                              spec.terms.url)
        data.datasets = ["scene_parse_150"]
    return f"---\n{data.to_yaml()}\n---\n"


def model_card(backbone: str, spec: SegmenterWeights | None = None, source: str | None = None,
               error: float | None = None, protocol: EvalProtocol = ADE20K_PROTOCOL) -> str:
    """The folder's README.md: usage (snippets that run as written in the folder), how the processor differs from
    the test protocol, and, for registered weights, the authors' figures and the terms of the weights."""
    title = spec.title if spec is not None else "Iwin UPerNet"
    check = "" if error is None else (
        f" Its logits equal `IwinUPerNet`'s to {error:.1e} (max difference / max logit, checked at conversion).")
    intro = (f"# {title} for transformers\n\n`UperNetForSemanticSegmentation` on the timm backbone `{backbone}`, "
             f"written by iwin-models {__version__} (`iwin_models.interop.hf_transformers`).{check}\n")
    weights = _weights_section(spec, source) if spec is not None else (
        "## Terms of the weights\n\nThose of the checkpoint this folder was converted from.\n")
    return "\n".join([_front_matter(spec) + intro, _usage(backbone), _preprocessing(protocol), weights])


# --- the folder -------------------------------------------------------------------------------------------------

def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: the measure the parity checks use."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@contextlib.contextmanager
def _no_progress_bars():
    """transformers' progress bars off (its one switch), as they were afterwards."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def _logits(model: IwinUPerNet, hf, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(transformers', ours) logits at the input size: the main head through transformers' forward, the
    auxiliary head (which that forward computes only for the loss) called on the backbone's features."""
    pairs = [(hf(pixel_values=x).logits, model(x))]
    if model.auxiliary_head is not None:
        aux = hf.auxiliary_head(hf.backbone(x).feature_maps)
        aux = F.interpolate(aux, size=x.shape[-2:], mode="bilinear", align_corners=False)
        pairs.append((aux, model(x, return_aux=True)[1]))
    return pairs


def _check_folder(model: IwinUPerNet, out_dir: Path) -> float:
    """Reload ``out_dir`` as a user does; its largest relative logit error against ``model`` (main and auxiliary)."""
    from transformers import UperNetForSemanticSegmentation

    hf, info = UperNetForSemanticSegmentation.from_pretrained(out_dir, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise RuntimeError(f"{out_dir}: transformers does not load the written weights strictly: {problems}")
    x = torch.randn(1, model.backbone.in_chans, *VERIFY_SIZE, generator=torch.Generator().manual_seed(0))
    training = model.training
    try:
        with torch.no_grad():
            error = max(relative_error(theirs, ours) for theirs, ours in _logits(model.eval(), hf.eval(), x))
    finally:
        model.train(training)
    if error > VERIFY_TOLERANCE:
        raise RuntimeError(f"{out_dir}: transformers' logits differ from IwinUPerNet's by {error:.2e} "
                           f"(max difference / max logit; tolerance {VERIFY_TOLERANCE:g}): do not use this folder")
    return error


def save_transformers(model: IwinUPerNet, out_dir: str | Path, *, segmenter: str | None = None,
                      backbone: str | None = None, source: str | None = None,
                      protocol: EvalProtocol | None = None) -> Path:
    """Write ``model`` as a transformers UperNet folder and check it (see the module docstring).

    Args:
        model: the segmenter (any :class:`~iwin_models.models.upernet.IwinUPerNet`; its weights are copied).
        out_dir: the folder (created; files of the same names are replaced).
        segmenter: the registered weights ``model`` holds (``iwin_tiny_upernet_ade20k``, ...): the card then gives
            their figures, source and terms.
        backbone: the timm name of the backbone, when neither the encoder's name nor :data:`BACKBONES` builds it.
        source: the checkpoint converted (named in the card).
        protocol: the test protocol the processor follows (the registered weights', else ADE20K's).
    """
    require_transformers()
    from transformers import UperNetForSemanticSegmentation

    spec = registered(segmenter) if segmenter is not None else None
    protocol = protocol or (spec.protocol if spec is not None else ADE20K_PROTOCOL)
    name = backbone_name(model, backbone)
    hf = UperNetForSemanticSegmentation(upernet_config(model, name))
    hf.load_state_dict(transformers_state_dict(model, list(hf.state_dict())), strict=True)
    out = Path(out_dir)
    with _no_progress_bars():
        hf.save_pretrained(out)
        image_processor(protocol).save_pretrained(out)
        error = _check_folder(model, out)
    card = model_card(name, spec, source, error, protocol)
    write_atomic(out / "README.md", lambda tmp: Path(tmp).write_text(card))
    return out
