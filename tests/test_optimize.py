"""``iwin_models.optimize_for_cpu``: one explicit conversion to the CPU fast twins, and its undoing.

The converted model equals the plain one on the golden fixtures, keeps its ``state_dict`` keys (saves
and loads plain checkpoints), trains, is idempotent, refuses what it cannot convert with the reason, and
tracers get either a working graph or an error that names the plain model.
"""
from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn as nn
from conftest import MINI
from test_segmenter import TOL, full_size, mini_segmenter

from iwin_models import IwinUPerNet, optimize_for_cpu, restore_plain
from iwin_models.fast.config import fast_paths
from iwin_models.fast.iwin_cpu import CpuIwinBlock, CpuPatchEmbed
from iwin_models.fast.twin import CpuTwin
from iwin_models.models.segmenters import load_segmenter_weights


def _twins(model: nn.Module) -> dict[str, type]:
    return {name: type(m) for name, m in model.named_modules() if isinstance(m, CpuTwin)}


@pytest.fixture(scope="module")
def golden_mini(golden):
    return load_segmenter_weights(mini_segmenter(), str(golden["upernet_ckpt"])).eval()


@pytest.mark.parametrize("case", ["odd", "square"])
def test_converted_segmenter_matches_the_golden_fixtures(golden_mini, golden, case):
    exp = golden["upernet"]
    x = exp[f"x_{case}"]
    converted = optimize_for_cpu(golden_mini, inplace=False)
    assert not _twins(golden_mini), "inplace=False left the caller's model plain"
    assert set(_twins(converted).values()) >= {CpuIwinBlock, CpuPatchEmbed}
    with torch.no_grad():
        logits, aux = converted(x, return_aux=True)
        plain = golden_mini(x)
    errs = {"logits": (logits - full_size(exp[f"logits_{case}_s4"], x)).abs().max().item(),
            "aux": (aux - full_size(exp[f"aux_logits_{case}_s16"], x)).abs().max().item()}
    print(f"\nconverted parity {case}: " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
    for k, v in errs.items():
        assert v < TOL[k], (k, v)
    torch.testing.assert_close(logits, plain, rtol=1e-5, atol=1e-5)


def test_converted_then_saved_equals_plain_loaded(golden_mini, tmp_path):
    converted = optimize_for_cpu(golden_mini, inplace=False)
    assert converted.state_dict().keys() == golden_mini.state_dict().keys()
    converted.save_pretrained(tmp_path / "saved")
    reloaded = IwinUPerNet.from_pretrained(tmp_path / "saved").eval()
    assert not _twins(reloaded)
    x = torch.randn(1, 3, 61, 75)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), golden_mini(x), rtol=0, atol=0)
    # and a plain checkpoint loads strictly into a converted model
    converted.load_state_dict(golden_mini.state_dict(), strict=True)


@pytest.mark.parametrize("build", ["backbone", "features_only", "smp_unet"])
def test_converts_every_kind_of_model(build):
    torch.manual_seed(0)
    if build == "backbone":
        model = timm.create_model("iwin_tiny", **MINI)
    elif build == "features_only":
        model = timm.create_model("iwin_tiny", **MINI, features_only=True)
    else:
        model = smp.Unet("tu-iwin_tiny", encoder_weights=None, classes=3, decoder_channels=(64, 32, 16, 8, 4),
                         **MINI)
    model.eval()
    x = torch.randn(2, 3, 64, 96)
    converted = optimize_for_cpu(model, inplace=False)
    blocks = sum(1 for t in _twins(converted).values() if t is CpuIwinBlock)
    assert blocks == sum(1 for m in model.modules() if type(m).__name__ == "IwinBlock") > 0
    with torch.no_grad():
        expected, got = model(x), converted(x)
    for e, g in zip(expected if isinstance(expected, list) else [expected], got if isinstance(got, list) else [got],
                    strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_idempotent_in_place_and_undone_by_restore_plain():
    model = timm.create_model("iwin_tiny", **MINI).eval()
    keys = list(model.state_dict())
    converted = optimize_for_cpu(model)
    assert converted is model and _twins(model)
    first = _twins(model)
    assert optimize_for_cpu(model) is model and _twins(model) == first
    paths = {m.fast_paths for m in model.modules() if isinstance(m, CpuIwinBlock)}
    assert paths == {frozenset({"onednn_linear", "skip_padding", "chunked", "inplace"})}
    assert list(model.state_dict()) == keys
    optimize_for_cpu(model, exclude=("patch_matmul", "chunked"))  # a reconversion follows the new choice
    assert type(model.patch_embed).__name__ == "PatchEmbed"
    assert "chunked" not in model.layers[0].blocks[0].fast_paths
    assert restore_plain(model) is model and not _twins(model)
    with fast_paths(False):
        assert not _twins(optimize_for_cpu(model, inplace=False))  # IWIN_FAST_PATH=0: nothing to install


def test_converted_model_trains_like_the_plain_one():
    torch.manual_seed(0)
    plain = IwinUPerNet("iwin_tiny", encoder_kwargs=MINI, classes=4, decoder_channels=32, aux_channels=16).train()
    converted = optimize_for_cpu(plain, inplace=False)
    x, target = torch.randn(2, 3, 45, 61), torch.randint(0, 4, (2, 45, 61))
    grads = []
    for model in (plain, converted):
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks
        logits, aux = model(x, return_aux=True)
        (nn.functional.cross_entropy(logits, target) + 0.4 * nn.functional.cross_entropy(aux, target)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:  # float32 sums over every pixel, in another order: round-off scales with the gradient
        scale = grads[0][name].abs().max().item()  # (patch_embed's: 6e-5 of it on one CPU, under 1e-5 on another)
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=max(2e-4 * scale, 1e-6), msg=name)


def test_refuses_what_it_cannot_convert():
    model = timm.create_model("iwin_tiny", **MINI).eval()
    with pytest.raises(TypeError, match="holds no Iwin module"):
        optimize_for_cpu(nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(ValueError, match="meta"):
        optimize_for_cpu(timm.create_model("iwin_tiny", **MINI, pretrained=False).to("meta"))

    class LoraLinear(nn.Module):  # an adapter the twin would bypass
        def __init__(self, linear):
            super().__init__()
            self.linear = linear

        def forward(self, x):
            return self.linear(x) * 2

    model.layers[1].blocks[0].mlp.fc2 = LoraLinear(model.layers[1].blocks[0].mlp.fc2)
    handle = model.layers[2].blocks[1].attn.qkv.register_forward_hook(lambda *args: None)
    with pytest.raises(ValueError) as error:
        optimize_for_cpu(model)
    message = str(error.value)
    assert "layers.1.blocks.0.mlp.fc2 is a " in message and "LoraLinear" in message
    assert "layers.2.blocks.1.attn.qkv has forward hooks" in message
    assert not _twins(model), "nothing converted when anything is refused"
    handle.remove()


def test_tracers_of_a_converted_model_work_or_name_the_plain_model():
    model = timm.create_model("iwin_tiny", **MINI).eval()
    converted = optimize_for_cpu(model, inplace=False)
    x = torch.randn(1, 3, 61, 75)
    for record in (lambda: torch.fx.symbolic_trace(converted), lambda: torch.jit.script(converted),
                   lambda: torch.jit.trace(converted, x), lambda: torch.export.export(converted, (x,))):
        with pytest.raises(RuntimeError, match=r"restore_plain\(model\)"):
            record()
    torch.compiler.reset()
    with torch.no_grad():  # torch.compile runs the twins eagerly between its graphs
        torch.testing.assert_close(torch.compile(converted, backend="eager")(x), model(x), rtol=1e-5, atol=1e-5)
    restored = restore_plain(converted, inplace=False)
    with torch.no_grad():
        torch.testing.assert_close(torch.fx.symbolic_trace(restored)(x), model(x), rtol=1e-5, atol=1e-5)


def test_torch_compile_of_a_converted_segmenter_runs_its_twins_eagerly():
    torch.manual_seed(0)
    model = IwinUPerNet("iwin_tiny", encoder_kwargs=MINI, classes=4, decoder_channels=32, aux_channels=0).eval()
    converted = optimize_for_cpu(model, inplace=False)
    x = torch.randn(1, 3, 45, 61)
    torch.compiler.reset()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(converted, backend="eager")(x), model(x), rtol=1e-5, atol=1e-5)


def test_with_cpu_twins_is_the_one_policy_of_segment_the_commands_and_the_demo():
    from iwin_models.fast.optimize import with_cpu_twins

    def converted(m) -> bool:
        return any(isinstance(x, CpuTwin) for x in m.modules())

    model = timm.create_model("iwin_tiny", **MINI)
    fast = with_cpu_twins(model)
    assert converted(fast) and not converted(model)  # a copy sharing the weights; the model stays plain
    assert with_cpu_twins(fast) is fast and with_cpu_twins(model, False) is model
    with fast_paths(False):  # IWIN_FAST_PATH=0
        assert with_cpu_twins(model) is model
    meta = timm.create_model("iwin_tiny", **MINI).to("meta")
    assert with_cpu_twins(meta) is meta  # not on the CPU: the plain model runs there
    with pytest.raises(ValueError, match="meta"):
        with_cpu_twins(meta, True)
    not_iwin = torch.nn.Linear(3, 3)
    assert with_cpu_twins(not_iwin) is not_iwin
