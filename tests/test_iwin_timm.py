"""The Iwin backbones as timm models: parity with the authors' code, official checkpoint layouts,
pretrained cfgs, offline loading, bad inputs and timm's model conventions.

Full-size models are only built on the ``meta`` device, or once with cheap stand-in weights; every
forward pass uses the golden mini configuration (``MINI``) or a tiny input.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
import urllib.error
import warnings
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import MINI
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from iwin_models import CheckpointError

RELEASE = "https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/"
FEATURE_TOL = (5e-5, 5e-5, 1e-4, 1e-4)  # fixtures README, stages 0..3
MINI_CHANNELS = [32, 64, 128, 256]

# the ImageNet files of the official release (spec "Official checkpoint URLs"); the ADE20K ones are segmenters
SPEC_FILES = {
    "iwin_tiny_patch4_window7_224.pth",
    "iwin_small_patch4_window7_224.pth",
    "iwin_small_patch4_window12_384.pth",
    "iwin_small_patch4_window16_512.pth",
    "iwin_small_patch4_window16_1024.pth",
    "iwin_base_patch4_window7_224.pth",
    "iwin_base_patch4_window12_384.pth",
    "iwin_base_patch4_window16_512.pth",
    "iwin_base_patch4_window16_1024.pth",
    "iwin_base_patch4_window7_224_22k.pth",
    "iwin_base_patch4_window12_384_22k.pth",
    "iwin_base_patch4_window16_512_22k.pth",
    "iwin_base_patch4_window16_1024_22k.pth",
    "iwin_base_patch4_window7_224_22kto1k.pth",
    "iwin_base_patch4_window12_384_22kto1k.pth",
    "iwin_base_patch4_window16_512_22kto1k.pth",
    "iwin_base_patch4_window16_1024_22kto1k.pth",
    "iwin_large_patch4_window7_224_22k.pth",
    "iwin_large_patch4_window12_384_22k.pth",
    "iwin_large_patch4_window7_224_22kto1k.pth",
    "iwin_large_patch4_window12_384_22kto1k.pth",
}


# --- helpers -------------------------------------------------------------------------------------

def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


def mini(**kwargs) -> torch.nn.Module:
    kwargs = dict(MINI, **kwargs)
    kwargs.setdefault("drop_path_rate", 0.0)
    return timm.create_model("iwin_tiny", **kwargs).eval()


def mini_features(golden, **kwargs) -> torch.nn.Module:
    """The golden mini UPerNet's backbone through timm's features_only path."""
    return timm.create_model(
        "iwin_tiny", **MINI, features_only=True, pretrained=True,
        pretrained_cfg_overlay=dict(file=str(golden["upernet_ckpt"])), **kwargs).eval()


def to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our classifier state dict in the authors' names, written out independently of the package:
    our ``layers.{i}.downsample`` is their ``layers.{i-1}.downsample``, ``head.fc`` is ``head``."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", k)
        if m:
            k = f"layers.{int(m[1]) - 1}.downsample.{m[2]}"
        elif k.startswith("head.fc."):
            k = "head." + k[len("head.fc."):]
        out[k] = v.detach().clone()
    return out


def from_official(name: str) -> str:
    """The authors' key (classification, or an mmseg backbone key without ``backbone.``) in our names."""
    m = re.match(r"layers\.(\d+)\.downsample\.(.*)", name)
    if m:
        return f"layers.{int(m[1]) + 1}.downsample.{m[2]}"
    m = re.match(r"norm(\d)\.(.*)", name)
    if m:
        return f"stage_norms.{m[1]}.{m[2]}"
    if name.startswith("head."):
        return "head.fc." + name[len("head."):]
    return name


def manifest_state_dict(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of exactly the manifest's shapes and dtypes, in its order.

    Each tensor is one random row broadcast over its leading dims (a stride-0 view), so a 236M
    parameter checkpoint is a ~2 MB file and builds in milliseconds; every tensor still holds its own
    random values, so a key loaded into the wrong place is caught by the value checks.
    """
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, (shape, dtype) in json.loads(path.read_text())["keys"].items():
        if dtype == "int64":
            sd[name] = torch.full(shape, 160000, dtype=torch.int64)
            continue
        assert dtype == "float32", (name, dtype)
        row = torch.randn(shape[-1] if shape else 1, generator=g) * 0.02 + (1.0 if "norm" in name else 0.0)
        sd[name] = row.expand(shape) if shape else row.reshape(())
    return sd


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- 1. parity with the authors' code ----------------------------------------------------------

@pytest.fixture(scope="module")
def golden_classifier(golden):
    return timm.create_model(
        "iwin_tiny", **MINI, num_classes=10, pretrained=True,
        pretrained_cfg_overlay=dict(file=str(golden["classifier_ckpt"]), num_classes=10)).eval()


def test_classifier_parity_float32(golden_classifier, golden):
    exp = golden["classifier"]
    with torch.no_grad():
        logits = golden_classifier(exp["x"])
    err = max_err(logits, exp["logits"])
    print(f"\nclassifier logits float32: max abs error {err:.2e} (atol 2e-5)")
    assert logits.dtype == torch.float32
    assert err < 2e-5
    # the error is round-off, not a near miss: a wrong prediction would be far off
    assert torch.equal(logits.argmax(-1), exp["logits"].argmax(-1))


def test_classifier_parity_float64(golden):
    exp = golden["classifier"]
    model = timm.create_model(
        "iwin_tiny", **MINI, num_classes=10, pretrained=True,
        pretrained_cfg_overlay=dict(file=str(golden["classifier_ckpt"]), num_classes=10)).eval().double()
    with torch.no_grad():
        logits = model(exp["x"].double())
    err = max_err(logits, exp["logits_f64"])
    print(f"\nclassifier logits float64: max abs error {err:.2e} (atol 1e-10)")
    assert logits.dtype == torch.float64
    assert err < 1e-10


def test_classifier_checkpoint_values_land_in_the_right_modules(golden_classifier, golden):
    official = torch.load(golden["classifier_ckpt"], map_location="cpu", weights_only=True)["model"]
    sd = golden_classifier.state_dict()
    assert len(sd) == len(official)
    for k, v in official.items():
        assert torch.equal(sd[from_official(k)], v), k


@pytest.fixture(scope="module")
def golden_features(golden):
    return mini_features(golden)


@pytest.mark.parametrize("path", ["fast", "plain", "torch F.linear", "small chunks", "autograd"])
@pytest.mark.parametrize("case", ["odd", "square"])
def test_features_only_parity(golden_features, golden, case, path, monkeypatch):
    """Every way through the blocks gives the official features: the converted model's CPU twins (oneDNN linears, or
    torch's ``F.linear``; inference in chunks of a few tokens or windows, hundreds per block here), the
    autograd path (never chunked) and the model file's plain definitional path."""
    from iwin_models import optimize_for_cpu
    from iwin_models.fast import iwin_cpu

    if path == "small chunks":
        monkeypatch.setattr(iwin_cpu, "_CHUNK_BYTES", 4096)
    model = golden_features
    if path != "plain":
        exclude = ("onednn_linear",) if "F.linear" in path else ()
        model = optimize_for_cpu(golden_features, inplace=False, exclude=exclude)
        assert type(model.model.layers[0].blocks[0]) is iwin_cpu.CpuIwinBlock
    exp = golden["upernet"]
    with torch.set_grad_enabled(path == "autograd"):
        feats = model(exp[f"x_{case}"].requires_grad_(path == "autograd"))
    assert isinstance(feats, list) and len(feats) == 4
    errs = [max_err(f.detach(), exp[f"features_{case}_{i}"]) for i, f in enumerate(feats)]
    print(f"\nfeatures_{case} ({path}): max abs errors " + ", ".join(f"{e:.2e}" for e in errs))
    for i, (e, tol) in enumerate(zip(errs, FEATURE_TOL)):
        assert e < tol, (i, e)


def test_features_only_loads_the_mmseg_backbone_norms(golden_features, golden):
    ckpt = torch.load(golden["upernet_ckpt"], map_location="cpu", weights_only=True)["state_dict"]
    sd = golden_features.model.state_dict()  # FeatureGetterNet wraps the IwinTransformer as .model
    backbone = {k[len("backbone."):]: v for k, v in ckpt.items() if k.startswith("backbone.")}
    for k, v in backbone.items():
        assert torch.equal(sd[from_official(k)], v), k
    # heads are not part of the backbone, and nothing was left at its initial value
    assert not any(k.startswith(("head", "decode", "auxiliary")) for k in sd)
    assert set(sd) == {from_official(k) for k in backbone}


def test_a_checkpoint_without_a_classifier_says_the_head_is_random(golden):
    """The authors' segmentation backbone has no classifier: loaded into a classification model, the head and
    final norm keep random weights, and the load says so; a features_only model drops the head, so no word."""
    overlay = dict(pretrained_cfg_overlay=dict(file=str(golden["upernet_ckpt"])), **MINI)
    said = r"no classifier: the model's head.fc \(1000 classes\) and final norm keep RANDOM"
    with pytest.warns(UserWarning, match=said):
        timm.create_model("iwin_tiny", pretrained=True, **overlay)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        timm.create_model("iwin_tiny", pretrained=True, num_classes=0, **overlay)
        timm.create_model("iwin_tiny", pretrained=True, features_only=True, **overlay)


def test_features_only_feature_info(golden_features):
    assert golden_features.feature_info.channels() == MINI_CHANNELS
    assert golden_features.feature_info.reduction() == [4, 8, 16, 32]
    with torch.device("meta"):
        full = timm.create_model("iwin_base", features_only=True)
    assert full.feature_info.channels() == [128, 256, 512, 1024]
    assert full.feature_info.reduction() == [4, 8, 16, 32]


def test_features_only_out_indices(golden):
    model = mini_features(golden, out_indices=(1, 3))
    assert model.feature_info.channels() == [64, 256]
    assert model.feature_info.reduction() == [8, 32]
    exp = golden["upernet"]
    with torch.no_grad():
        feats = model(exp["x_odd"])
    assert len(feats) == 2
    assert max_err(feats[0], exp["features_odd_1"]) < FEATURE_TOL[1]
    assert max_err(feats[1], exp["features_odd_3"]) < FEATURE_TOL[3]


def test_window12_same_weights_gives_other_features(golden_features, golden):
    w12 = mini_features(golden, window_size=12)
    assert [s.blocks[0].window_size for s in w12.model.layers] == [12] * 4
    sd7, sd12 = golden_features.state_dict(), w12.state_dict()
    assert sd7.keys() == sd12.keys() and all(torch.equal(sd7[k], sd12[k]) for k in sd7)
    x = golden["upernet"]["x_odd"]
    with torch.no_grad():
        f7, f12 = golden_features(x), w12(x)
    diffs = [max_err(a, b) for a, b in zip(f7, f12)]
    print(f"\nwindow 12 vs 7 (same weights), max abs differences per stage: {diffs}")
    assert all(a.shape == b.shape for a, b in zip(f7, f12))
    assert all(d > 1e-2 for d in diffs), diffs


# --- 2. the official checkpoints' key manifests ------------------------------------------------

CLASSIFIER_MANIFESTS = [
    ("iwin_tiny_224", "iwin_tiny", {}),
    ("iwin_small_224", "iwin_small", {}),
    ("iwin_base_224", "iwin_base", {}),
    ("iwin_large_224", "iwin_large", {}),
    ("iwin_large_224_22k", "iwin_large.in22k", dict(num_classes=21841)),
    ("iwin_base_1024", "iwin_base_patch4_window16_1024", {}),
]


@pytest.fixture(scope="module")
def manifest_file(fixtures_dir, tmp_path_factory):
    """Write each manifest's stand-in checkpoint once per module: ``name -> (path, state dict)``."""
    cache: dict[str, tuple[Path, dict]] = {}
    root = tmp_path_factory.mktemp("manifests")

    def get(name: str) -> tuple[Path, dict]:
        if name not in cache:
            sd = manifest_state_dict(fixtures_dir / "keys" / f"{name}.json")
            path = root / f"{name}.pth"
            torch.save({"state_dict": sd} if "upernet" in name else {"model": sd}, path)
            cache[name] = path, sd
        return cache[name]

    return get


@pytest.mark.parametrize("manifest, arch, kwargs", CLASSIFIER_MANIFESTS, ids=[m[0] for m in CLASSIFIER_MANIFESTS])
def test_classifier_manifest_loads_strictly(fixtures_dir, manifest_file, manifest, arch, kwargs):
    path, sd = manifest_file(manifest)
    expected_params = json.loads((fixtures_dir / "keys" / f"{manifest}.json").read_text())["num_params"]
    # weight_init='skip' only saves the random init that the checkpoint overwrites anyway
    model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              weight_init="skip", **kwargs)
    assert n_params(model) == expected_params
    ours = model.state_dict()
    assert len(ours) == len(sd)
    for k, v in sd.items():
        assert torch.equal(ours[from_official(k)], v), k
    assert model.num_classes == sd["head.weight"].shape[0]
    if manifest == "iwin_large_224_22k":
        assert model.num_classes == 21841
        assert model.pretrained_cfg["tag"] == "in22k"
    if manifest == "iwin_base_1024":  # the 1024/window-16 model has depthwise convs in stage 3
        assert model.layers[3].blocks[0].dwconv is not None
        assert model.layers[3].blocks[0].window_size == 16
    else:
        assert model.layers[3].blocks[0].dwconv is None


@pytest.mark.parametrize("variant", ["tiny", "small", "base"])
def test_upernet_manifest_backbone_loads_features_only(manifest_file, variant):
    path, sd = manifest_file(f"iwin_{variant}_upernet_ade20k")
    model = timm.create_model(f"iwin_{variant}", features_only=True, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path)), weight_init="skip")
    ours = model.model.state_dict()
    backbone = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    assert set(ours) == {from_official(k) for k in backbone}
    for k, v in backbone.items():
        assert torch.equal(ours[from_official(k)], v), k
    dims = [96, 192, 384, 768] if variant != "base" else [128, 256, 512, 1024]
    assert model.feature_info.channels() == dims


@pytest.mark.parametrize("arch, millions", [
    ("iwin_tiny", 30.2), ("iwin_small", 51.6), ("iwin_base", 91.2), ("iwin_large", 204.3)])
def test_parameter_counts(arch, millions):
    model = timm.create_model(arch, device="meta")
    n = n_params(model)
    print(f"\n{arch}: {n:,} parameters ({n / 1e6:.1f}M)")
    assert model.num_classes == 1000
    assert round(n / 1e6, 1) == millions


# --- 3. pretrained cfgs --------------------------------------------------------------------------

def test_pretrained_tags_are_the_official_files():
    names = timm.list_models("iwin*", pretrained=True)
    assert len(names) == 22  # the 21 official tags, and iwin_small_ade20k.in1k: the ImageNet Iwin-S file again
    assert timm.models.get_pretrained_cfg("iwin_small_ade20k.in1k").url == timm.models.get_pretrained_cfg(
        "iwin_small.in1k").url
    files = {timm.models.get_pretrained_cfg(n).url.rsplit("/", 1)[-1] for n in names}
    assert files == SPEC_FILES


@pytest.mark.parametrize("name", timm.list_models("iwin*", pretrained=True))
def test_pretrained_cfg(name):
    cfg = timm.models.get_pretrained_cfg(name)
    arch, tag = name.split(".")
    assert cfg.url.startswith(RELEASE)
    file = cfg.url[len(RELEASE):]
    from iwin_models.models.weights import AUTHORS_TERMS

    assert cfg.license == AUTHORS_TERMS.hub_license == "other"  # research MIT, commercial by agreement
    assert cfg.paper_ids
    assert cfg.first_conv == "patch_embed.proj"
    assert cfg.classifier == "head.fc"
    assert tuple(cfg.mean) == IMAGENET_DEFAULT_MEAN and tuple(cfg.std) == IMAGENET_DEFAULT_STD
    assert not cfg.hf_hub_id
    m = re.search(r"_window(\d+)_(\d+)$", arch)
    window, res = (int(m[1]), int(m[2])) if m else (7, 224)
    assert cfg.input_size == (3, res, res)
    # the file is the variant's: same size, window and resolution, and the right ImageNet flavour
    size = arch.split("_")[1]
    assert file.startswith(f"iwin_{size}_patch4_window{window}_{res}")
    suffix = {"in1k": ".pth", "in22k": "_22k.pth", "in22k_ft_in1k": "_22kto1k.pth"}[tag]
    assert file == f"iwin_{size}_patch4_window{window}_{res}{suffix}"
    assert cfg.num_classes == (21841 if tag == "in22k" else 1000)


# --- 4. offline loading ---------------------------------------------------------------------------

def test_checkpoint_in_torch_hub_cache_is_used():
    source = timm.create_model("iwin_tiny").eval()
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    assert str(cache).startswith(os.environ["TORCH_HOME"])  # the per-test cache, never the user's
    cache.mkdir(parents=True)
    torch.save({"model": to_official(source.state_dict())}, cache / "iwin_tiny_patch4_window7_224.pth")
    model = timm.create_model("iwin_tiny", pretrained=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "bare"])
def test_pretrained_cfg_overlay_file(tmp_path, fmt):
    from safetensors.torch import save_file

    source = mini(num_classes=10)
    sd = to_official(source.state_dict())
    path = tmp_path / f"weights.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd if fmt == "bare" else {"model": sd}, path)
    model = mini(num_classes=10, pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=10))
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_missing_file_without_network_fails_fast(monkeypatch):
    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", "iwin_tiny_patch4_window7_224.pth")
    start = time.monotonic()
    with pytest.raises(CheckpointError) as e:
        timm.create_model("iwin_tiny", pretrained=True)
    assert time.monotonic() - start < 10
    assert calls == [RELEASE + "iwin_tiny_patch4_window7_224.pth"]
    assert cached in str(e.value)
    assert "pretrained_cfg_overlay" in str(e.value)  # says how to pass a local file


@pytest.mark.parametrize("name, file", [
    ("iwin_base.in1k", "iwin_base_patch4_window7_224.pth"),
    ("iwin_base", "iwin_base_patch4_window7_224_22kto1k.pth"),  # the default tag
    ("iwin_large.in22k", "iwin_large_patch4_window7_224_22k.pth"),
])
def test_missing_weights_message_names_the_tags_file(monkeypatch, name, file):
    """#12: the message names the file of the tag asked for, not of the architecture's default tag."""
    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with torch.device("meta"), pytest.raises(CheckpointError) as e:
        timm.create_model(name, pretrained=True)
    assert calls == [RELEASE + file]
    assert f"pretrained weights for {name.split('.')[0]}." in str(e.value)
    assert os.path.join(torch.hub.get_dir(), "checkpoints", file) in str(e.value)


def test_missing_overlay_file_names_it(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match=re.escape(str(missing))):
        mini(pretrained=True, pretrained_cfg_overlay=dict(file=str(missing)))


# --- 5. bad input ---------------------------------------------------------------------------------

def test_unknown_model_name():
    with pytest.raises(RuntimeError, match="Unknown model"):
        timm.create_model("iwin_tinyy")


def test_wrong_variant_checkpoint_is_rejected(manifest_file):
    path, _ = manifest_file("iwin_small_224")
    with pytest.raises(CheckpointError, match="does not fit") as e:
        timm.create_model("iwin_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    msg = str(e.value)
    assert re.search(r"other shapes|missing|not in the model", msg), msg
    assert "layers.2.blocks.6" in msg  # names a tensor of the deeper Iwin-S stage 2


def test_wrong_width_checkpoint_names_the_shapes(tmp_path):
    sd = to_official(mini(num_classes=10).state_dict())
    path = tmp_path / "mini.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match="other shapes") as e:
        timm.create_model("iwin_tiny", num_classes=10, pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(path), num_classes=10))
    assert "(32," in str(e.value) and "(96," in str(e.value)


def test_truncated_pth(golden, tmp_path):
    data = golden["classifier_ckpt"].read_bytes()
    path = tmp_path / "half.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="half.pth"):
        mini(num_classes=10, pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=10))


def test_text_file_named_pth(tmp_path):
    path = tmp_path / "x.pth"
    path.write_text("<html>404: Not Found</html>\n")
    with pytest.raises(CheckpointError, match="x.pth"):
        mini(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_truncated_safetensors(tmp_path):
    from safetensors.torch import save_file

    full = tmp_path / "full.safetensors"
    save_file(to_official(mini().state_dict()), str(full))
    data = full.read_bytes()
    path = tmp_path / "half.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="half.safetensors"):
        mini(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_wrong_channel_count_and_dtype():
    model = mini()
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(TypeError, match="floating"):
        model(torch.randint(0, 255, (1, 3, 64, 64)))
    with pytest.raises(ValueError, match="channels"):
        model.forward_features(torch.randn(1, 4, 64, 64))


# --- 6. timm conventions --------------------------------------------------------------------------

def test_forward_features_head_and_classifier_reset():
    model = mini(num_classes=10)
    x = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 3, 5, 256)  # NHWC at stride 32
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, model.num_features) == (2, 256)
        assert torch.allclose(pre, feats.mean((1, 2)))
        logits = model(x)
        assert logits.shape == (2, 10)
        assert torch.allclose(logits, model.get_classifier()(pre), atol=1e-6)
        model.reset_classifier(5)
        assert model.num_classes == 5 and model(x).shape == (2, 5)
        model.reset_classifier(0)
        assert model(x).shape == (2, 256)


def test_grad_checkpointing_same_output_and_gradients(monkeypatch):
    import torch.utils.checkpoint as tuc

    torch.manual_seed(0)
    model = mini(num_classes=10).train()
    x = torch.randn(2, 3, 64, 64)

    def run():
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}

    out_ref, grads_ref = run()
    calls = []
    real = tuc.checkpoint
    monkeypatch.setattr(tuc, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    model.set_grad_checkpointing()
    out_ckpt, grads_ckpt = run()
    assert calls, "set_grad_checkpointing() did not checkpoint anything"
    torch.testing.assert_close(out_ckpt, out_ref, rtol=0, atol=1e-6)
    assert grads_ref.keys() == grads_ckpt.keys()
    for k in grads_ref:
        torch.testing.assert_close(grads_ckpt[k], grads_ref[k], rtol=1e-5, atol=1e-6, msg=k)


def test_layer_decay_optimizer_groups():
    from timm.optim import create_optimizer_v2

    model = mini(num_classes=10)
    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.9)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(names.values())  # every parameter exactly once
    scale = {names[id(p)]: g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    decay = {names[id(p)]: g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert scale["head.fc.weight"] == 1.0
    order = ["patch_embed.proj.weight", "layers.0.blocks.0.attn.qkv.weight", "layers.0.blocks.1.attn.qkv.weight",
             "layers.1.blocks.0.attn.qkv.weight", "layers.2.blocks.1.mlp.fc1.weight",
             "layers.3.blocks.1.mlp.fc2.weight"]
    scales = [scale[n] for n in order]
    assert scales == sorted(scales) and len(set(scales)) == len(scales), scales
    assert scale["patch_embed.proj.weight"] < 0.9 ** 5
    assert decay["layers.0.blocks.0.attn.qkv.weight"] == 0.05
    assert decay["layers.0.blocks.0.norm1.weight"] == 0.0 and decay["layers.0.blocks.0.attn.qkv.bias"] == 0.0
    assert model.no_weight_decay() == set()  # no position tables to exempt
    coarse = timm.models.group_parameters(model, model.group_matcher(coarse=True))
    assert len(coarse) == 6  # stem, 4 stages, norm + head


def test_meta_device_construction():
    model = timm.create_model("iwin_base", device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert model.num_features == 1024
    with torch.device("meta"):
        model = timm.create_model("iwin_base")
    assert all(p.is_meta for p in model.parameters())
    with torch.device("meta"):
        out = model.forward_features(torch.empty(1, 3, 224, 224))
    assert out.shape == (1, 7, 7, 1024)


@pytest.mark.slow
def test_torch_compile_matches_eager():
    # one block per stage keeps inductor's (cold-cache) compile time down; every module type is still there
    model = mini(num_classes=10, depths=(1, 1, 1, 1))
    x = torch.randn(1, 3, 61, 75)  # odd size: the padding paths are compiled too
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)
    err = max_err(compiled, eager)
    print(f"\ntorch.compile vs eager: max abs difference {err:.2e}")
    assert err < 1e-5


@pytest.mark.parametrize("hw", [(97, 131), (500, 683), (1, 1), (3, 3), (64, 64)])
def test_features_any_input_size(hw):
    model = timm.create_model("iwin_tiny", **MINI, features_only=True).eval()
    H, W = hw
    with torch.no_grad():
        feats = model(torch.randn(1, 3, H, W))
    assert [f.shape for f in feats] == [
        (1, c, math.ceil(H / s), math.ceil(W / s)) for c, s in zip(MINI_CHANNELS, (4, 8, 16, 32))]
    assert all(torch.isfinite(f).all() for f in feats)


def test_odd_input_equals_zero_padding_at_the_patch_embedding():
    """An image padded right/bottom to a multiple of 4 with zeros gives the same first stage."""
    model = timm.create_model("iwin_tiny", **MINI, features_only=True, out_indices=(0,)).eval()
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        a = model(x)[0]
        b = model(F.pad(x, (0, 1, 0, 3)))[0]
    assert a.shape == b.shape == (1, 32, 25, 33)
    assert max_err(a, b) < 1e-5


# --- 7. window size override ---------------------------------------------------------------------

def test_window_size_16_keeps_the_weights_and_runs():
    with torch.device("meta"):
        w7 = timm.create_model("iwin_tiny").state_dict()
    model = timm.create_model("iwin_tiny", window_size=16).eval()
    assert [s.blocks[0].window_size for s in model.layers] == [16] * 4
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in w7.items()}


def test_window_size_12_keeps_the_weights():
    with torch.device("meta"):
        w7 = timm.create_model("iwin_tiny").state_dict()
        w12 = timm.create_model("iwin_tiny", window_size=12)
    assert [s.blocks[0].window_size for s in w12.layers] == [12] * 4
    assert {k: v.shape for k, v in w12.state_dict().items()} == {k: v.shape for k, v in w7.items()}


def _shapes(arch: str, **kwargs) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in timm.create_model(arch, **kwargs).state_dict().items()}


@pytest.mark.parametrize("override", [dict(window_size=7), dict(img_size=512)])
def test_overrides_on_high_resolution_variants(override):
    assert _shapes("iwin_base_patch4_window12_384", **override) == _shapes("iwin_base_patch4_window12_384")


def test_img_size_override_keeps_the_weights():
    assert _shapes("iwin_tiny", img_size=384) == _shapes("iwin_tiny")


def test_block_layers_are_timm_and_torch_layers():
    """The fast paths change no parameter: timm's Mlp and nn.Linear keys and shapes."""
    block = timm.create_model("iwin_tiny", **MINI).layers[0].blocks[0]
    assert all(type(m) is torch.nn.Linear for m in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2))
    assert type(block.mlp) is timm.layers.Mlp and type(block.mlp.act) is torch.nn.GELU
    assert {k: tuple(v.shape) for k, v in block.mlp.state_dict().items()} == {
        "fc1.weight": (128, 32), "fc1.bias": (128,), "fc2.weight": (32, 128), "fc2.bias": (32,)}


# --- 9. what peer tools expect (#12; timm's own tests/test_models.py runs in .ci/timm_suite.sh) --------

def test_output_fmt_is_nhwc_like_timms_swin():
    model = timm.create_model("iwin_tiny", **MINI).eval()
    assert model.output_fmt == "NHWC"
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 64, 96)).shape == (1, 2, 3, 256)


def test_reset_classifier_keeps_the_models_dtype():
    model = timm.create_model("iwin_tiny", **MINI).double()
    model.reset_classifier(0)
    model.reset_classifier(5)
    assert model.get_classifier().weight.dtype == torch.float64
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64, dtype=torch.float64)).shape == (1, 5)


def test_torchscript_of_the_classifier_and_the_features():
    x = torch.randn(2, 3, 61, 75)
    for kwargs in (dict(), dict(features_only=True)):
        model = timm.create_model("iwin_tiny", **MINI, **kwargs).eval()
        scripted = torch.jit.script(model)
        with torch.no_grad():
            expected, got = model(x), scripted(x)
        for e, g in zip(expected if isinstance(expected, list) else [expected],
                        got if isinstance(got, list) else [got], strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_fx_feature_extraction():
    """timm's FX route (``feature_cls='fx'``) returns the stage outputs (NHWC, before the stage norms)."""
    torch.manual_seed(0)
    fx = timm.create_model("iwin_tiny", **MINI, features_only=True, feature_cls="fx").eval()
    torch.manual_seed(0)
    model = timm.create_model("iwin_tiny", **MINI).eval()  # the same initial weights
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        feats = fx(x)
        expected = model.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
    assert [tuple(f.shape) for f in feats] == [(1, 25, 33, 32), (1, 13, 17, 64), (1, 7, 9, 128), (1, 4, 5, 256)]
    for f, e in zip(feats, expected, strict=True):
        torch.testing.assert_close(f, e, rtol=1e-5, atol=1e-5)


def test_set_input_size_changes_the_window_and_survives_a_hub_round_trip(tmp_path):
    """timm's window-model API, as timm's own test_windowed_model_resize_roundtrip runs it on Swin."""
    from timm.models._hub import save_for_hf
    from timm.models._input import get_model_input_config

    model = timm.create_model("iwin_tiny", img_size=64, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8),
                              num_classes=7).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        before = model(x)
        model.set_input_size(img_size=96, window_size=4)
        model.set_input_size(window_size=3)
        after = model(x)
    assert {b.window_size for stage in model.layers for b in stage.blocks} == {3} and model.window_size == 3
    assert not torch.allclose(before, after)  # the window changed what attention sees
    same_as_built = timm.create_model("iwin_tiny", img_size=64, embed_dim=16, depths=(1, 1, 1, 1),
                                      num_heads=(1, 2, 4, 8), num_classes=7, window_size=3).eval()
    same_as_built.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(same_as_built(x), after, rtol=0, atol=0)  # as the constructor argument does
    save_for_hf(model, tmp_path)
    restored = timm.create_model("local-dir:" + str(tmp_path), pretrained=True).eval()
    assert get_model_input_config(restored)["input_size"] == (3, 96, 96) and restored.window_size == 3
    with torch.no_grad():
        torch.testing.assert_close(restored(x), after, rtol=0, atol=0)


def test_set_input_size_window_ratio_and_refusals():
    model = timm.create_model("iwin_tiny", **MINI)
    model.set_input_size(img_size=(224, 320), window_ratio=8)  # patch grid 56 x 80: 56 // 8
    assert model.window_size == 7
    model.set_input_size(window_size=(12, 12, 12, 12))
    assert model.window_size == 12
    with pytest.raises(ValueError, match="one square window"):
        model.set_input_size(window_size=(7, 7, 14, 7))
    with pytest.raises(ValueError, match="patch_size is part of Iwin's weights"):
        model.set_input_size(patch_size=8)
    with pytest.raises(ValueError, match="always partitions"):
        model.set_input_size(always_partition=False)
    assert model.window_size == 12  # a refused call changed nothing
