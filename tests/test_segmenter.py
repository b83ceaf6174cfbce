"""ADE20K UPerNet segmenters: parity with the authors' mmseg models, official checkpoints, hub, smp, CLI."""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from _official import official_upernet_checkpoint, random_state_dict_from_manifest
from conftest import MINI, REPO
from PIL import Image

from iwin_models import CheckpointError
from iwin_models.apps.cli import main as cli
from iwin_models.data import ade20k
from iwin_models.engine.inference import predict_probs, segment
from iwin_models.io.images import load_image
from iwin_models.models.segmenters import create_segmenter, load_segmenter_weights
from iwin_models.models.upernet import IwinUPerNet
from iwin_models.models.weights import SEGMENTERS, model_card_kwargs

TOL = {"logits": 5e-5, "aux": 5e-5, "window12": 1e-4}


def mini_segmenter(**kwargs) -> IwinUPerNet:
    """The golden mini UPerNet's architecture (embed 32, decoder 64, aux 32)."""
    kwargs.setdefault("classes", 150)
    return IwinUPerNet("iwin_tiny", encoder_kwargs=dict(MINI, **kwargs.pop("encoder_kwargs", {})),
                       decoder_channels=64, aux_channels=32, **kwargs)


@pytest.fixture(scope="module")
def mini(golden):
    model = load_segmenter_weights(mini_segmenter(), str(golden["upernet_ckpt"]))
    return model.eval()


def full_size(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """mmseg's final resize of head outputs to the input size, done in float64 (fixture README)."""
    return F.interpolate(t.double(), size=like.shape[-2:], mode="bilinear", align_corners=False)


# --- parity ------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["odd", "square"])
def test_upernet_parity_with_official(mini, golden, case):
    exp = golden["upernet"]
    x = exp[f"x_{case}"]
    with torch.no_grad():
        logits, aux = mini(x, return_aux=True)
        features = mini.encoder.model(x)
    for i, f in enumerate(features):
        err = (f - exp[f"features_{case}_{i}"]).abs().max().item()
        assert err < (5e-5 if i < 2 else 1e-4), (i, err)
    errs = {
        "logits": (logits - full_size(exp[f"logits_{case}_s4"], x)).abs().max().item(),
        "aux": (aux - full_size(exp[f"aux_logits_{case}_s16"], x)).abs().max().item(),
    }
    print(f"\nparity {case}: " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
    assert logits.shape == (x.shape[0], 150, *x.shape[-2:])
    for k, v in errs.items():
        assert v < TOL[k], (k, v)


def test_upernet_parity_window12_same_weights(golden):
    exp = golden["upernet"]
    model = load_segmenter_weights(mini_segmenter(encoder_kwargs=dict(window_size=12)), str(golden["upernet_ckpt"]))
    with torch.no_grad():
        logits = model.eval()(exp["x_odd"])
    err = (logits - full_size(exp["logits_odd_window12_s4"], exp["x_odd"])).abs().max().item()
    print(f"\nparity window 12: {err:.2e}")
    assert err < TOL["window12"]
    other = (logits - full_size(exp["logits_odd_s4"], exp["x_odd"])).abs().max().item()
    assert other > 1e-2  # window 7 and 12 really are different models


def test_float64_parity(golden):
    exp = golden["upernet"]
    model = load_segmenter_weights(mini_segmenter(), str(golden["upernet_ckpt"])).double().eval()
    with torch.no_grad():
        logits = model(exp["x_odd"].double())
    ref = F.interpolate(exp["logits_odd_s4_f64"], size=(97, 131), mode="bilinear", align_corners=False)
    # the stored s4 tensor is the float64 head output; the resize adds ~1e-16
    assert (logits - ref).abs().max().item() < 1e-10


def test_meta_names_and_palette_kept(golden):
    ckpt = torch.load(golden["upernet_ckpt"], weights_only=True)
    model = load_segmenter_weights(mini_segmenter(), ckpt)
    assert model.class_names == list(ckpt["meta"]["CLASSES"])
    assert model.palette == [list(c) for c in ckpt["meta"]["PALETTE"]]


# --- official full-size checkpoints (key manifests) ----------------------------------------------

# Iwin-S and -B (full size) in the slow tier
@pytest.mark.parametrize("name", [n if "tiny" in n else pytest.param(n, marks=pytest.mark.slow) for n in SEGMENTERS])
def test_manifests_load_strictly(fixtures_dir, name):
    variant = name.split("_")[1]
    manifest = fixtures_dir / "keys" / f"iwin_{variant}_upernet_ade20k.json"
    model = create_segmenter(name, pretrained=False)
    n = sum(p.numel() for p in model.parameters())
    print(f"\n{name}: {n / 1e6:.1f}M parameters")
    assert round(n / 1e6, 1) == SEGMENTERS[name].params_m
    assert n == json.loads(manifest.read_text())["num_params"]
    ckpt = official_upernet_checkpoint(manifest)
    load_segmenter_weights(model, ckpt)
    sd = model.state_dict()
    assert torch.equal(sd["encoder.model.model.stage_norms.3.weight"], ckpt["state_dict"]["backbone.norm3.weight"])
    assert torch.equal(sd["decoder.fpn_lateral_blocks.2.conv_norm_relu.0.weight"],
                       ckpt["state_dict"]["decode_head.lateral_convs.0.conv.weight"])


# --- the registry as the segmenters see it (the registry itself: test_weights.py) ----------------------

def test_docstrings_and_hub_help_are_written_from_the_registry(monkeypatch):
    import iwin_models.models.segmenters as segmenter

    # torch.hub.help takes GitHub repositories only: hand it this checkout instead of a download
    monkeypatch.setattr(torch.hub, "_get_cache_or_reload", lambda *args, **kwargs: str(REPO))
    for name, weights in SEGMENTERS.items():
        doc = weights.docstring()
        assert getattr(segmenter, name).__doc__ == doc
        assert torch.hub.help("owner/iwin", name) == doc
        for figure in (f"{weights.miou:.2f} mIoU", f"{weights.params_m}M params", f"{weights.flops_g}G FLOPs",
                       f"heads {','.join(map(str, weights.heads))}", weights.url, weights.terms.summary):
            assert figure in doc, (name, figure)


def test_model_card_is_written_from_the_registry(mini, tmp_path):
    from huggingface_hub import ModelCard

    weights = SEGMENTERS["iwin_small_upernet_ade20k"]
    mini.save_pretrained(tmp_path / "m", model_card_kwargs=model_card_kwargs(weights.name))
    card = ModelCard.load(tmp_path / "m" / "README.md")
    assert (card.data.license, card.data.license_link) == ("other", weights.terms.url)
    assert weights.card_section() in card.text
    for figure in ("47.5", "83.2", "1038", weights.url, weights.terms.summary, "3,6,12,24", weights.dataset):
        assert figure in card.text, figure
    # a model saved without naming registered weights makes no claim about them
    mini.save_pretrained(tmp_path / "plain")
    assert weights.terms.summary not in (tmp_path / "plain" / "README.md").read_text()
    with pytest.raises(ValueError, match="unknown segmenter"):
        model_card_kwargs("iwin_huge_upernet_ade20k")


def test_official_backbone_names_are_ours(fixtures_dir):
    """ImageNet and mmseg-backbone layouts map onto exactly the timm model's names."""
    from iwin_models.models.keymaps import convert_official_backbone

    with torch.device("meta"):
        classifier = timm.create_model("iwin_tiny").state_dict()
        features = create_segmenter("iwin_tiny_upernet_ade20k", pretrained=False).backbone.state_dict()
    imagenet = random_state_dict_from_manifest(fixtures_dir / "keys" / "iwin_tiny_224.json")
    mmseg = random_state_dict_from_manifest(fixtures_dir / "keys" / "iwin_tiny_upernet_ade20k.json")
    assert set(convert_official_backbone(imagenet)) == set(classifier)
    assert set(convert_official_backbone(mmseg)) == {k for k in features if not k.startswith(("norm.", "head."))}
    assert convert_official_backbone(classifier).keys() == classifier.keys()  # ours pass through


def test_wrong_variant_checkpoint_is_rejected(fixtures_dir):
    ckpt = official_upernet_checkpoint(fixtures_dir / "keys" / "iwin_small_upernet_ade20k.json")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_segmenter_weights(create_segmenter("iwin_tiny_upernet_ade20k", pretrained=False), ckpt)


def test_other_class_count_keeps_body_and_warns(golden):
    model = mini_segmenter(classes=7)
    with pytest.warns(UserWarning, match="re-initialised"):
        load_segmenter_weights(model, str(golden["upernet_ckpt"]))
    ref = load_segmenter_weights(mini_segmenter(), str(golden["upernet_ckpt"]))
    a, b = model.state_dict(), ref.state_dict()
    assert torch.equal(a["decoder.fusion_block.0.weight"], b["decoder.fusion_block.0.weight"])
    assert a["segmentation_head.conv_seg.weight"].shape[0] == 7
    assert model.class_names is None
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 40, 52)).shape == (1, 7, 40, 52)


def test_not_a_segmenter_checkpoint(golden, tmp_path):
    with pytest.raises(CheckpointError, match="not an Iwin UPerNet checkpoint"):
        load_segmenter_weights(mini_segmenter(), {"state_dict": {"foo.weight": torch.zeros(1)}})
    bad = tmp_path / "half.pth"
    bad.write_bytes(Path(golden["upernet_ckpt"]).read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_segmenter_weights(mini_segmenter(), str(bad))


# --- model behaviour -----------------------------------------------------------------------------

def test_any_size_any_classes_train_batch1():
    model = mini_segmenter(classes=3)
    model.train()
    for size in [(1, 1), (3, 3), (33, 47), (97, 131)]:
        logits, aux = model(torch.randn(1, 3, *size), return_aux=True)
        assert logits.shape == aux.shape == (1, 3, *size)
    loss = logits.mean() + aux.mean()
    loss.backward()  # batch 1 in training: the 1x1 PSP branch must not crash


def test_grad_checkpointing_is_exact_and_counts_batchnorm_once(monkeypatch):
    """Checkpointing the backbone and the decoder changes neither the outputs, the gradients
    nor the BatchNorm running statistics (the recomputation must not count the batch twice)."""
    import iwin_models.models.upernet.model as segmenter

    torch.manual_seed(0)
    plain = mini_segmenter(classes=5, encoder_kwargs=dict(drop_path_rate=0.2)).train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing()
    calls = []
    real = segmenter.checkpoint
    monkeypatch.setattr(segmenter, "checkpoint", lambda *a, **k: calls.append(a[0].__name__) or real(*a, **k))
    x = torch.randn(2, 3, 45, 61)
    results = []
    for model in (plain, ckpt):
        torch.manual_seed(1)  # the same dropout and stochastic-depth draws
        logits, aux = model(x, return_aux=True)
        (logits.square().mean() + aux.square().mean()).backward()
        results.append((logits, {k: p.grad for k, p in model.named_parameters()}, dict(model.named_buffers())))
    assert calls == ["decode"]
    assert torch.equal(results[0][0], results[1][0])
    for k, grad in results[0][1].items():
        assert torch.equal(grad, results[1][1][k]), k
    for k, buf in results[0][2].items():
        assert torch.equal(buf, results[1][2][k]), k
    ckpt.eval()
    with torch.no_grad():
        ckpt(x)
    assert calls == ["decode"], "no recomputation without gradients"


def test_plain_decoder_is_smps_with_export_friendly_pools():
    """The plain decoder is smp's (same state dict, same forward, bit for bit); only its PSP pools differ."""
    from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder

    from iwin_models.layers.pool import AdaptiveAvgPool2d
    from iwin_models.models.upernet.decoder import IwinUPerNetDecoder

    torch.manual_seed(0)
    channels = (3, 0, 32, 64, 128, 256)
    ours, smps = IwinUPerNetDecoder(channels, 5, 64).eval(), UPerNetDecoder(channels, 5, 64).eval()
    assert ours.state_dict().keys() == smps.state_dict().keys()
    ours.load_state_dict(smps.state_dict(), strict=True)
    assert [type(block[0]) for block in ours.psp.blocks] == [AdaptiveAvgPool2d] * 4
    features = [torch.randn(2, c, 67 // 2 ** i + 1, 45 // 2 ** i + 1) for i, c in enumerate(channels)]
    with torch.no_grad():
        assert torch.equal(ours(list(features)), smps(list(features)))


def test_low_res_logits_are_what_forward_resizes(mini, golden):
    """The public stride-4 logits: the golden head output (before mmseg's final resize), and forward's
    result is exactly their bilinear resize."""
    exp = golden["upernet"]
    x = exp["x_odd"]
    with torch.no_grad():
        low = mini.low_res_logits(x)
        logits = mini(x)
    assert low.shape == (x.shape[0], 150, -(-x.shape[2] // 4), -(-x.shape[3] // 4))
    assert (low - exp["logits_odd_s4"]).abs().max().item() < TOL["logits"]
    assert torch.equal(logits, F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False))
    with pytest.raises(ValueError, match="channels"):
        mini.low_res_logits(torch.randn(1, 4, 32, 32))


def test_low_res_logits_read_no_values():
    """What inference calls runs on fake tensors on a fake GPU: no NaN check, no host synchronisation."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(), torch.device("cuda"):
        model = mini_segmenter(classes=3).eval()
        low = model.low_res_logits(torch.randn(2, 3, 97, 131))
    assert tuple(low.shape) == (2, 3, 25, 33) and low.device.type == "cuda"


def test_bad_inputs_to_segmenter():
    model = mini_segmenter(classes=3).eval()
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="image batch"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match="float"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown segmenter"):
        create_segmenter("iwin_huge_upernet_ade20k")
    with pytest.raises(ValueError, match="class names"):
        mini_segmenter(classes=3, class_names=["a", "b"])


def test_forward_reads_no_values_nan_goes_through():
    """No data-dependent check in the model (a device sync per call): NaN inputs give NaN logits; segment()
    and the training loss are where they are refused."""
    model = mini_segmenter(classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    x[0, :, 5, 7] = float("nan")
    with torch.no_grad():
        assert model(x).isnan().any()


def test_fx_traces_the_segmenter_with_its_shape_check():
    """Under torch.fx the input check is one recorded call, run by the traced module on real inputs."""
    model = mini_segmenter(classes=3).eval()
    graph = torch.fx.symbolic_trace(model, concrete_args={"return_aux": False})
    assert any(n.op == "call_function" and n.target.__name__ == "check_image_batch" for n in graph.graph.nodes)
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="float"):
        graph(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_save_and_from_pretrained_round_trip(mini, tmp_path):
    mini.save_pretrained(tmp_path / "m")
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in (tmp_path / "m").iterdir()}
    loaded = IwinUPerNet.from_pretrained(tmp_path / "m").eval()
    for k, v in mini.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert loaded.class_names == mini.class_names
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        assert torch.equal(mini(x), loaded(x))
    assert isinstance(smp.from_pretrained(str(tmp_path / "m")), IwinUPerNet)


@pytest.mark.parametrize("arch", [smp.UPerNet, smp.Unet, smp.FPN, smp.DeepLabV3Plus, smp.Segformer])
def test_tu_iwin_encoders_in_smp(arch):
    model = arch("tu-iwin_tiny", encoder_weights=None, classes=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 4, 64, 96)


# --- offline loading: torch.hub cache, hubconf, hub folders ---------------------------------------

def _fill_cache(fixtures_dir, name="iwin_tiny_upernet_ade20k") -> dict:
    ckpt = official_upernet_checkpoint(fixtures_dir / "keys" / f"iwin_{name.split('_')[1]}_upernet_ade20k.json")
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, cache / os.path.basename(SEGMENTERS[name].url))
    return ckpt


def test_pretrained_from_torch_hub_cache_and_hubconf(fixtures_dir):
    ckpt = _fill_cache(fixtures_dir)
    model = torch.hub.load(str(REPO), "iwin_tiny_upernet_ade20k", source="local")
    assert torch.equal(model.state_dict()["segmentation_head.conv_seg.weight"],
                       ckpt["state_dict"]["decode_head.conv_seg.weight"])
    backbone = torch.hub.load(str(REPO), "iwin_tiny", source="local", pretrained=False, features_only=True)
    assert backbone.feature_info.reduction() == [4, 8, 16, 32]
    sys.path.insert(0, str(REPO))
    import hubconf
    # what torch.hub.list shows: public callables of hubconf
    entries = {k for k, v in vars(hubconf).items() if callable(v) and not k.startswith("_")}
    from iwin_models import DETECTORS

    released = {name for name, spec in DETECTORS.items() if spec.url}
    assert {"iwin_tiny_upernet_ade20k", "iwin_small_upernet_ade20k", "iwin_base_upernet_ade20k",
            "iwin_tiny", "iwin_small", "iwin_base", "iwin_large"} | released == entries
    assert len(released) == 7
    assert hubconf.dependencies == ["torch", "torchvision", "timm", "segmentation_models_pytorch"]
    for name in entries:
        assert getattr(hubconf, name).__doc__, name  # what torch.hub.help shows


def test_missing_download_fails_fast_and_clearly():
    with pytest.raises(CheckpointError, match="not cached and could not be downloaded") as e:
        create_segmenter("iwin_tiny_upernet_ade20k", pretrained=True)
    assert "iwin_tiny_patch4_window7_512_ade20k_1k.pth" in str(e.value)


def test_corrupt_cached_download_names_the_file():
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "iwin_tiny_patch4_window7_512_ade20k_1k.pth").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="delete it"):
        create_segmenter("iwin_tiny_upernet_ade20k", pretrained=True)


def test_weights_argument_accepts_path_url_and_safetensors(mini, golden, tmp_path):
    url = Path(golden["upernet_ckpt"]).resolve().as_uri()  # file:// URL
    a = load_segmenter_weights(mini_segmenter(), url)
    from safetensors.torch import save_file
    save_file(mini.state_dict(), tmp_path / "w.safetensors")
    b = load_segmenter_weights(mini_segmenter(), str(tmp_path / "w.safetensors"))
    for k, v in mini.state_dict().items():
        assert torch.equal(v, a.state_dict()[k]) and torch.equal(v, b.state_dict()[k])


def _hf_cache_repo(folder: Path, repo_id: str, hub_cache: Path) -> None:
    """Lay ``folder`` out as a downloaded Hugging Face repository (what a real download leaves)."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / ("0" * 40)
    shutil.copytree(folder, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)


def test_convert_official_to_hub_folder_and_load_offline(fixtures_dir, tmp_path, monkeypatch):
    ckpt = official_upernet_checkpoint(fixtures_dir / "keys" / "iwin_tiny_upernet_ade20k.json")
    torch.save(ckpt, tmp_path / "official.pth")
    assert cli(["convert", str(tmp_path / "official.pth"), "--model", "iwin_tiny_upernet_ade20k",
                "--out", str(tmp_path / "hub")]) == 0
    card = (tmp_path / "hub" / "README.md").read_text()
    weights = SEGMENTERS["iwin_tiny_upernet_ade20k"]
    assert "IwinUPerNet" in card and weights.card_section() in card and weights.terms.summary in card
    direct = load_segmenter_weights(create_segmenter("iwin_tiny_upernet_ade20k", pretrained=False), ckpt)
    local = IwinUPerNet.from_pretrained(tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    _hf_cache_repo(tmp_path / "hub", "someone/iwin-tiny-ade", tmp_path / "hf")
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    remote = IwinUPerNet.from_pretrained("someone/iwin-tiny-ade")
    for k, v in direct.state_dict().items():
        assert torch.equal(v, local.state_dict()[k]) and torch.equal(v, remote.state_dict()[k]), k


def test_convert_backbone_loads_with_timm_prefixes(fixtures_dir, tmp_path, monkeypatch):
    sd = random_state_dict_from_manifest(fixtures_dir / "keys" / "iwin_tiny_224.json")
    torch.save({"model": sd}, tmp_path / "iwin_tiny_patch4_window7_224.pth")
    assert cli(["convert", str(tmp_path / "iwin_tiny_patch4_window7_224.pth"), "--model", "iwin_tiny",
                "--out", str(tmp_path / "bb")]) == 0
    assert (tmp_path / "bb" / "model.safetensors").exists()
    ref = timm.create_model("iwin_tiny", pretrained=True,
                            pretrained_cfg_overlay=dict(file=str(tmp_path / "iwin_tiny_patch4_window7_224.pth")))
    local = timm.create_model(f"local-dir:{tmp_path / 'bb'}", pretrained=True)
    import huggingface_hub.constants as hc
    _hf_cache_repo(tmp_path / "bb", "someone/iwin-tiny", tmp_path / "hf")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    hub = timm.create_model("hf-hub:someone/iwin-tiny", pretrained=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = ref.eval()(x)
        assert torch.equal(out, local.eval()(x)) and torch.equal(out, hub.eval()(x))


# --- inference and the CLI -------------------------------------------------------------------------

def test_segment_inputs_and_protocol(mini):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)
    labels = segment(mini, rgb, scale=(128, 64))
    assert labels.shape == (37, 53) and labels.dtype == np.int64
    assert np.array_equal(labels, segment(mini, Image.fromarray(rgb), scale=(128, 64)))
    probs = predict_probs(mini, rgb, scale=(128, 64))
    assert torch.allclose(probs.sum(0), torch.ones(37, 53), atol=1e-5)
    # the image fits one 512 crop: sliding-window inference is whole-image inference
    assert torch.allclose(predict_probs(mini, rgb, scale=(128, 64), slide=True), probs, atol=1e-6)
    aug = predict_probs(mini, rgb, scale=(128, 64), aug=True)
    assert aug.shape == probs.shape and torch.allclose(aug.sum(0), torch.ones(37, 53), atol=1e-5)


def test_slide_inference_covers_large_images(mini):
    rgb = np.random.default_rng(1).integers(0, 255, (300, 1400, 3), dtype=np.uint8)
    # fitted into 2048x512: 512 x 2389, nine 512 crops at stride 341
    probs = predict_probs(mini, rgb, slide=True)
    assert probs.shape == (150, 300, 1400)
    assert torch.allclose(probs.sum(0), torch.ones(300, 1400), atol=1e-5)


def test_image_conversions(tmp_path):
    gray = Image.fromarray(np.arange(64 * 48, dtype=np.uint8).reshape(48, 64) % 251)
    assert load_image(gray).shape == (48, 64, 3)
    rgba = Image.new("RGBA", (20, 10), (10, 20, 30, 40))
    assert load_image(rgba)[0, 0].tolist() == [10, 20, 30]
    pal = Image.new("P", (8, 8))
    assert load_image(pal).shape == (8, 8, 3)
    deep = Image.fromarray((np.arange(100, dtype=np.uint16) * 600).reshape(10, 10))
    assert load_image(deep).max() > 200  # 16-bit scaled, not clipped
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="channels-last"):
        load_image(np.zeros((3, 20, 20), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        load_image(np.zeros((20, 20, 3), np.float32))


def test_predict_cli_writes_overlay_and_labels(mini, tmp_path):
    mini.save_pretrained(tmp_path / "m")
    rgb = np.random.default_rng(2).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb[:30]).convert("L").save(tmp_path / "b.png")
    out = tmp_path / "out"
    assert cli(["predict", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--model", str(tmp_path / "m"),
                "--out", str(out)]) == 0
    labels = np.array(Image.open(out / "a_labels.png"))
    assert labels.shape == (40, 60) and labels.max() < 150
    assert np.array_equal(labels, segment(mini, rgb))
    overlay = Image.open(out / "a_overlay.png")
    assert overlay.height >= 40 and overlay.width > 60  # legend to the right
    assert np.array(Image.open(out / "b_labels.png")).shape == (30, 60)


@pytest.mark.slow
def test_cli_errors_exit_2_without_traceback(tmp_path):
    (tmp_path / "x.jpg").write_text("not an image")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for argv, needle in [
        (["predict", str(tmp_path / "missing.jpg")], "no such image"),
        (["predict", str(tmp_path / "x.jpg"), "--model", "iwin_nope"], "unknown model"),
        (["flops", "--model", "resnet_nope"], "unknown model"),
    ]:
        r = subprocess.run([sys.executable, "-m", "iwin_models.apps.cli", *argv], capture_output=True, text=True,
                           env=env)
        assert r.returncode == 2, r.stderr
        assert needle in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_flops_match_the_published_figures(capsys):
    for name, weights in SEGMENTERS.items():
        assert cli(["flops", "--model", name, "--shape", *map(str, weights.flops_input)]) == 0
        out = capsys.readouterr().out
        print(out)
        assert f"flops: {weights.flops_g}G" in out


def test_ade20k_metadata_matches_fixture(fixtures_dir):
    meta = json.loads((fixtures_dir / "ade20k_meta.json").read_text())
    assert list(ade20k.CLASSES) == meta["classes"] and ade20k.CLASSES[7] == "bed "
    assert [list(c) for c in ade20k.PALETTE] == meta["palette"]
    assert list(ade20k.MEAN) == meta["img_norm_cfg"]["mean"] and list(ade20k.STD) == meta["img_norm_cfg"]["std"]


def test_no_warnings_building_pretrained_mini(golden):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_segmenter_weights(mini_segmenter(), str(golden["upernet_ckpt"]))


def test_numpy_values_in_meta_load_safely(golden, tmp_path):
    """mmseg may leave numpy values in ``meta``: allow-listed data types, still weights-only."""
    ckpt = torch.load(golden["upernet_ckpt"], weights_only=True)
    ckpt["meta"]["PALETTE"] = np.array(ckpt["meta"]["PALETTE"], dtype=np.int64)
    ckpt["meta"]["best_score"] = np.float64(0.447)
    torch.save(ckpt, tmp_path / "numpy_meta.pth")
    model = load_segmenter_weights(mini_segmenter(), str(tmp_path / "numpy_meta.pth"))
    assert model.palette[0] == list(ckpt["meta"]["PALETTE"][0])
