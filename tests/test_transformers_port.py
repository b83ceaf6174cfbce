"""The segmenters in Hugging Face transformers: key map, strict loading, parity (main and auxiliary logits), the
timm names of the backbones, the processor, the pipeline in a fresh interpreter, the missing-extra message."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from _official import official_upernet_checkpoint
from conftest import MINI, REPO
from safetensors.torch import load_file
from test_segmenter import full_size, mini_segmenter

from iwin_models.apps.cli import main as cli
from iwin_models.data import ade20k
from iwin_models.interop.hf_transformers import (
    INSTALL_HINT,
    backbone_name,
    relative_error,
    save_transformers,
    transformers_state_dict,
)
from iwin_models.interop.hub import convert_segmenter
from iwin_models.models.segmenters import create_segmenter, load_segmenter_weights
from iwin_models.models.weights import SEGMENTERS

transformers = pytest.importorskip("transformers")
from transformers import UperNetForSemanticSegmentation  # noqa: E402

PARITY = 1e-5  # max |diff| / max |logit|
GOLDEN_ATOL = 5e-5  # against the authors' float64 logits (the fixtures' suggested atol)
# The golden mini backbone is no released architecture: transformers builds a backbone from its timm name alone, so
# the tests register one for it, here and in the fresh interpreters (released ones are registered by the package).
MINI_NAME = "iwin_golden_mini"
MINI_REGISTRATION = textwrap.dedent(f"""
    import timm
    from timm.models import register_model

    @register_model
    def {MINI_NAME}(pretrained=False, **kwargs):
        return timm.create_model("iwin_tiny", pretrained=pretrained, **dict({MINI!r}, **kwargs))
""")
exec(MINI_REGISTRATION, {"__name__": __name__})


@pytest.fixture(scope="module")
def mini(golden):
    return load_segmenter_weights(mini_segmenter(class_names=ade20k.CLASSES), str(golden["upernet_ckpt"])).eval()


@pytest.fixture(scope="module")
def mini_folder(mini, tmp_path_factory):
    return save_transformers(mini, tmp_path_factory.mktemp("hf") / "mini", backbone=MINI_NAME)


def load_strictly(folder) -> UperNetForSemanticSegmentation:
    model, info = UperNetForSemanticSegmentation.from_pretrained(folder, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}, info  # no missing / unexpected / mismatched keys
    return model.eval()


def hf_logits(hf, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' logits at the input size: the main head through its forward, the auxiliary head (computed by
    that forward only for the loss) called on the backbone's features and resized as the forward does."""
    with torch.no_grad():
        aux = hf.auxiliary_head(hf.backbone(x).feature_maps)
        return hf(pixel_values=x).logits, F.interpolate(aux, size=x.shape[-2:], mode="bilinear", align_corners=False)


def errors(hf, ours, x) -> dict[str, float]:
    with torch.no_grad():
        logits, aux = ours(x, return_aux=True)
    theirs, theirs_aux = hf_logits(hf, x)
    assert theirs.shape == logits.shape == (x.shape[0], ours.num_classes, *x.shape[-2:])
    assert logits.abs().max() > 0.5 and aux.abs().max() > 0.5  # real logits, not a degenerate all-zero case
    return {"main": relative_error(theirs, logits), "aux": relative_error(theirs_aux, aux)}


# --- the golden mini ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["odd", pytest.param("512", marks=pytest.mark.slow)])
def test_mini_logits_equal_ours_and_the_authors(mini, mini_folder, golden, case):
    hf = load_strictly(mini_folder)
    exp = golden["upernet"]
    x = exp["x_odd"] if case == "odd" else torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(5))
    errs = errors(hf, mini, x)
    print(f"\ntransformers vs IwinUPerNet, mini {tuple(x.shape[-2:])}: main {errs['main']:.1e}, aux {errs['aux']:.1e}")
    assert max(errs.values()) <= PARITY, errs
    if case == "odd":  # and against the authors' mmseg model (float64)
        theirs, theirs_aux = hf_logits(hf, x)
        assert (theirs - full_size(exp["logits_odd_s4"], x)).abs().max() < GOLDEN_ATOL
        assert (theirs_aux - full_size(exp["aux_logits_odd_s16"], x)).abs().max() < GOLDEN_ATOL


def test_key_map_is_one_to_one(mini, mini_folder):
    keys = list(load_strictly(mini_folder).state_dict())
    mapped = transformers_state_dict(mini, keys)
    assert sorted(mapped) == sorted(keys) and len(keys) == len(mini.state_dict())
    ours = mini.state_dict()
    pairs = [("decoder.fpn_lateral_blocks.0.conv_norm_relu.0.weight", "decode_head.lateral_convs.2.conv.weight"),
             ("decoder.psp.blocks.3.1.1.running_var", "decode_head.psp_modules.3.1.batch_norm.running_var"),
             ("segmentation_head.conv_seg.bias", "decode_head.classifier.bias"),
             ("auxiliary_head.convs.0.0.weight", "auxiliary_head.convs.0.conv.weight"),
             ("encoder.model.model.stage_norms.3.weight", "backbone._backbone.model.stage_norms.3.weight")]
    for our, their in pairs:
        assert torch.equal(mapped[their], ours[our]), (our, their)
    with pytest.raises(ValueError, match="1 of our weights have no transformers name"):
        transformers_state_dict(mini, [k for k in keys if k != "decode_head.classifier.bias"])


def test_folder_config_and_processor(mini_folder):
    config = json.loads((mini_folder / "config.json").read_text())
    assert config["backbone_config"]["backbone"] == MINI_NAME
    assert config["backbone_config"]["out_indices"] == [0, 1, 2, 3]
    assert [config["id2label"][str(i)] for i in range(150)] == list(ade20k.CLASSES)  # 'bed ' with its space
    assert config["label2id"] == {name: i for i, name in enumerate(ade20k.CLASSES)}
    assert (config["hidden_size"], config["auxiliary_channels"], config["pool_scales"]) == (64, 32, [1, 2, 3, 6])
    processor = json.loads((mini_folder / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "SegformerImageProcessor"
    assert processor["size"] == {"shortest_edge": 512, "longest_edge": 2048}
    np.testing.assert_allclose(np.array(processor["image_mean"]) * 255, ade20k.MEAN, rtol=1e-12)
    np.testing.assert_allclose(np.array(processor["image_std"]) * 255, ade20k.STD, rtol=1e-12)
    assert processor["resample"] == 2 and processor["do_reduce_labels"] is True  # bilinear


def test_a_backbone_name_must_build_the_same_network(mini):
    with pytest.raises(ValueError, match="register one"):
        backbone_name(mini)  # iwin_tiny's default sizes are not the mini's
    with pytest.raises(ValueError, match="register one"):
        backbone_name(mini, "iwin_tiny")
    assert backbone_name(mini, MINI_NAME) == MINI_NAME


# --- the pipeline, in a fresh interpreter -------------------------------------------------------------------------

PIPELINE_SCRIPT = """
import sys
import iwin_models  # first, as a user does
{registration}
import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AutoImageProcessor, pipeline
from transformers.image_utils import load_image

folder, out = sys.argv[1:]
path = str(iwin_models.data.SAMPLE_IMAGE)
segmenter = pipeline("image-segmentation", model=folder)
image = load_image(path)  # what the pipeline reads
labels = np.full((image.height, image.width), -1, dtype=np.int64)
for segment in segmenter(path):
    assert segment["mask"].size == image.size, (segment["mask"].size, image.size)
    mask = np.array(segment["mask"]) > 0
    assert (labels[mask] == -1).all(), "masks overlap"
    labels[mask] = segmenter.model.config.label2id[segment["label"]]
pixel_values = AutoImageProcessor.from_pretrained(folder)(images=image, return_tensors="pt")["pixel_values"]
save_file({{"labels": torch.from_numpy(labels), "pixel_values": pixel_values}}, out)
"""


@pytest.mark.slow
def test_pipeline_in_a_fresh_interpreter_matches_ours(mini, mini_folder, tmp_path):
    script = PIPELINE_SCRIPT.format(registration=MINI_REGISTRATION)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, "-c", script, str(mini_folder), str(tmp_path / "out.safetensors")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = load_file(tmp_path / "out.safetensors")
    labels, x = out["labels"], out["pixel_values"]
    assert labels.shape == (427, 640) and (labels >= 0).all()  # the photo's size, every pixel in one mask
    assert min(x.shape[-2:]) == 512 and abs(x.shape[-1] / x.shape[-2] - 640 / 427) < 2 / 512  # short side 512
    with torch.no_grad():
        ours = F.interpolate(mini(x), size=labels.shape, mode="bilinear", align_corners=False).argmax(1)[0]
    agreement = (ours == labels).double().mean().item()
    print(f"\npipeline vs IwinUPerNet argmax on the sample ({tuple(x.shape[-2:])} input): {agreement:.6f}, "
          f"{labels.unique().numel()} classes")
    assert agreement >= 0.999 and labels.unique().numel() > 3


# --- full-size models from the official key manifests -------------------------------------------------------------

@pytest.mark.slow
def test_cli_converts_the_official_iwin_t(fixtures_dir, tmp_path):
    ckpt = official_upernet_checkpoint(fixtures_dir / "keys" / "iwin_tiny_upernet_ade20k.json")
    torch.save(ckpt, tmp_path / "official.pth")
    assert cli(["convert", str(tmp_path / "official.pth"), "--model", "iwin_tiny_upernet_ade20k",
                "--format", "transformers", "--out", str(tmp_path / "hf")]) == 0
    hf = load_strictly(tmp_path / "hf")
    assert hf.config.backbone_config.backbone == "iwin_tiny" and hf.config.id2label[7] == "bed "
    assert len(hf.state_dict()) == len(ckpt["state_dict"])  # every official tensor, one to one
    ours = create_segmenter("iwin_tiny_upernet_ade20k", pretrained=False, weights=ckpt).eval()
    for size in [(97, 131), (512, 512)]:
        errs = errors(hf, ours, torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1)))
        print(f"\ntransformers vs IwinUPerNet, Iwin-T {size}: main {errs['main']:.1e}, aux {errs['aux']:.1e}")
        assert max(errs.values()) <= PARITY, (size, errs)


@pytest.mark.slow
def test_iwin_s_needs_its_own_timm_name(fixtures_dir, tmp_path):
    """The ADE20K Iwin-S has heads 3,6,12,24, timm's iwin_small 3,4,8,16: its weights load into both strictly,
    only the registered iwin_small_ade20k computes the segmenter."""
    ckpt = official_upernet_checkpoint(fixtures_dir / "keys" / "iwin_small_upernet_ade20k.json")
    ours = create_segmenter("iwin_small_upernet_ade20k", pretrained=False, weights=ckpt).eval()
    hf = load_strictly(save_transformers(ours, tmp_path / "hf", segmenter="iwin_small_upernet_ade20k"))
    assert hf.config.backbone_config.backbone == "iwin_small_ade20k"
    x = torch.randn(1, 3, 67, 93, generator=torch.Generator().manual_seed(2))
    errs = errors(hf, ours, x)
    print(f"\ntransformers vs IwinUPerNet, Iwin-S (67, 93): main {errs['main']:.1e}, aux {errs['aux']:.1e}")
    assert max(errs.values()) <= PARITY, errs
    imports = [line for line in (tmp_path / "hf" / "README.md").read_text().splitlines()
               if line.startswith("import iwin_models")]
    assert len(imports) == 2  # per snippet: the package (which registers iwin_small_ade20k)
    code = "\n".join([*imports[:2], "from transformers import UperNetForSemanticSegmentation",
                      f"UperNetForSemanticSegmentation.from_pretrained({str(tmp_path / 'hf')!r})"])
    run = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, HF_HUB_OFFLINE="1"),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]  # a fresh interpreter with the card's imports loads it
    config = hf.config
    config.backbone_config.backbone = "iwin_small"
    wrong = UperNetForSemanticSegmentation(config).eval()
    wrong.load_state_dict(hf.state_dict(), strict=True)
    assert errors(wrong, ours, x)["main"] > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("name, timm_name", [("iwin_tiny_upernet_ade20k", "iwin_tiny"),
                                             ("iwin_small_upernet_ade20k", "iwin_small_ade20k"),
                                             ("iwin_base_upernet_ade20k", "iwin_base")])
def test_every_segmenter_has_a_timm_name(name, timm_name):
    with torch.device("meta"):  # the structure is the question, not the values: no full-size init (B: 20 s -> 4 s)
        model = create_segmenter(name, pretrained=False, aux_head=False)
    assert backbone_name(model) == timm_name
    built = timm.create_model(timm_name, features_only=True, device="meta")
    heads = [stage.blocks[0].attn.num_heads for stage in built.model.layers]
    assert tuple(heads) == SEGMENTERS[name].heads


def test_format_must_fit_the_model(tmp_path, capsys):
    missing = str(tmp_path / "not-read.pth")
    for model, fmt, words in [("iwin_tiny", "transformers", "a backbone converts to timm only"),
                              ("iwin_tiny_upernet_ade20k", "timm", "a segmenter converts to smp or transformers")]:
        assert cli(["convert", missing, "--model", model, "--format", fmt, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
    with pytest.raises(ValueError, match="unknown format"):
        convert_segmenter(missing, "iwin_tiny_upernet_ade20k", tmp_path / "o", format="onnx")
    assert not (tmp_path / "o").exists()


# --- the optional dependency ----------------------------------------------------------------------------------------

def test_missing_transformers_is_one_line_before_any_work(monkeypatch, tmp_path, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else
                        find_spec(name, *a))
    missing = tmp_path / "not-read.pth"  # never opened: the check comes first
    assert cli(["convert", str(missing), "--model", "iwin_tiny_upernet_ade20k", "--format", "transformers",
                "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and INSTALL_HINT in err and "Traceback" not in err, err
    with pytest.raises(ImportError, match=r"iwin-models\[transformers\]"):
        convert_segmenter(str(missing), "iwin_tiny_upernet_ade20k", tmp_path / "out", format="transformers")
    assert not (tmp_path / "out").exists()
