"""The CPU twin of the UPerNet decoder (layers/upernet_cpu.py) equals the plain decoder (segmenter.py).

Random decoders at odd sizes (the features of a 97x131 input, batch 2, channels-last views as Iwin gives
them), inference and training with gradients; the twin shares the plain decoder's state and gives it back;
it refuses what it would bypass. The converted segmenter on the golden fixtures is at the end.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import MINI

from iwin_models.fast.upernet_cpu import CpuUPerNetDecoder
from iwin_models.models.segmenters import load_segmenter_weights
from iwin_models.models.upernet import IwinUPerNet
from iwin_models.models.upernet.decoder import IwinUPerNetDecoder

CHANNELS = (3, 0, 32, 64, 128, 256)  # smp's encoder channels: input, the empty 1/2 level, the four stages
PATHS = frozenset({"channels_last_decoder"})


def _plain(seed: int = 0, identity_norms: bool = True) -> IwinUPerNetDecoder:
    """A plain decoder with every parameter and BatchNorm statistic off its initial value."""
    torch.manual_seed(seed)
    decoder = IwinUPerNetDecoder(CHANNELS, 5, 48)
    if identity_norms:  # as in IwinUPerNet: the backbone normalised the features already
        decoder.feature_norms = nn.ModuleList([nn.Identity() for _ in range(4)])
    with torch.no_grad():
        for p in decoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for m in decoder.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2)
    return decoder


def _features(batch: int = 2, height: int = 97, width: int = 131, seed: int = 1) -> list[torch.Tensor]:
    """smp's six feature maps for a height x width input; Iwin's four are channels-last views."""
    g = torch.Generator().manual_seed(seed)
    features = []
    for i, c in enumerate(CHANNELS):
        h, w = -(-height // 2 ** i), -(-width // 2 ** i)
        f = torch.randn(batch, h, w, c, generator=g).permute(0, 3, 1, 2)
        features.append(f if i >= 2 else f.contiguous())
    return features


def _twin(plain: nn.Module) -> CpuUPerNetDecoder:
    return CpuUPerNetDecoder.from_plain(plain, PATHS)


def _assert_close(got: torch.Tensor, expected: torch.Tensor, rel: float = 2e-6, what: str = "") -> None:
    """Equal to float32 round-off, measured against the tensor's scale (the perturbed decoders' outputs reach
    ~60, their 2048-term sums round at ~1e-6 of that)."""
    assert got.shape == expected.shape, what
    err, scale = (got - expected).abs().max().item(), expected.abs().max().item()
    assert err <= rel * scale, f"{what}: {err:.2e} > {rel:.0e} x {scale:.2e}"


def _assert_round_off(got: torch.Tensor, plain: nn.Module, features: list[torch.Tensor]) -> None:
    """The twin is as close to the float64 definition as the plain float32 decoder is (within 2x)."""
    reference = copy.deepcopy(plain).double()([f.double() for f in features])
    plain_err = (plain(list(features)).double() - reference).abs().max().item()
    twin_err = (got.double() - reference).abs().max().item()
    assert twin_err <= 2 * plain_err + 1e-7 * reference.abs().max().item(), (twin_err, plain_err)


@pytest.mark.parametrize("identity_norms", [True, False])
@pytest.mark.parametrize("size", [(97, 131), (1, 1), (33, 64)])
def test_twin_equals_plain_at_inference(size, identity_norms, monkeypatch):
    plain = _plain(identity_norms=identity_norms).eval()
    twin = _twin(plain)
    grouped = []
    fuse = CpuUPerNetDecoder._fuse_by_channel_groups
    monkeypatch.setattr(CpuUPerNetDecoder, "_fuse_by_channel_groups", lambda s, m: grouped.append(1) or fuse(s, m))
    features = _features(2, *size)
    with torch.no_grad():
        got = twin(list(features))
        assert grouped == [1], "no gradients: the channel-group fusion"
        assert got.is_contiguous(memory_format=torch.channels_last)
        _assert_round_off(got, plain, features)
    with torch.no_grad():
        assert not torch.equal(twin(_features(2, *size, seed=2)), got)  # the inputs matter


def test_twin_equals_plain_in_training_with_gradients():
    """Training: the concatenation route; same outputs, input and parameter gradients, BatchNorm statistics."""
    results = {}
    for name in ("plain", "twin"):
        plain = _plain().train()
        module = plain if name == "plain" else _twin(plain)
        features = [f.detach().requires_grad_() for f in _features()]
        out = module(list(features))
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results[name] = (out.detach(), [f.grad for f in features[2:]],
                         {k: p.grad for k, p in plain.named_parameters()}, dict(plain.named_buffers()))
    (out_p, gx_p, gp_p, buf_p), (out_f, gx_f, gp_f, buf_f) = results["plain"], results["twin"]
    _assert_close(out_f, out_p, rel=1e-5, what="output")  # BatchNorm on batch statistics amplifies round-off
    for i, (a, b) in enumerate(zip(gx_f, gx_p, strict=True)):
        assert a.abs().sum() > 0
        _assert_close(a, b, rel=1e-5, what=f"gradient of feature {i}")
    for k, grad in gp_p.items():
        _assert_close(gp_f[k], grad, rel=5e-5, what=k)
    for k, buf in buf_p.items():
        _assert_close(buf_f[k].double(), buf.double(), rel=1e-6, what=k)


def test_eval_with_gradients_takes_the_concatenation_route(monkeypatch):
    plain = _plain().eval()
    twin = _twin(plain)
    monkeypatch.setattr(CpuUPerNetDecoder, "_fuse_by_channel_groups", lambda *a: pytest.fail("grouped fusion"))
    features = _features()
    out = twin(list(features))
    assert out.requires_grad
    _assert_close(out, plain(list(features)), what="output")


def test_twin_shares_the_state_and_gives_the_plain_decoder_back():
    plain = _plain().eval()
    twin = _twin(plain)
    assert list(twin.state_dict()) == list(plain.state_dict())
    for (k, a), b in zip(twin.state_dict().items(), plain.state_dict().values()):
        assert a.data_ptr() == b.data_ptr(), k
    back = twin.to_plain()
    assert type(back) is IwinUPerNetDecoder and not isinstance(back, CpuUPerNetDecoder)
    assert back.fusion_block is plain.fusion_block
    features = _features()
    with torch.no_grad():
        assert torch.equal(back(list(features)), plain(list(features)))
    assert "cpu twin of IwinUPerNetDecoder (channels_last_decoder)" in repr(twin)


def test_training_mode_without_gradients_normalises_with_the_batch_and_counts_it():
    """BatchNorm in training mode (e.g. statistics refreshed under no_grad) is not folded: the twin updates
    the running statistics as the plain decoder does."""
    results = []
    for make in (lambda d: d, _twin):
        plain = _plain().train()
        with torch.no_grad():
            out = make(plain)(_features())
        results.append((out, dict(plain.named_buffers())))
    (out_p, buf_p), (out_f, buf_f) = results
    _assert_close(out_f, out_p, rel=1e-5, what="output")
    for k, buf in buf_p.items():
        _assert_close(buf_f[k].double(), buf.double(), rel=1e-6, what=k)
    assert buf_f["fusion_block.1.num_batches_tracked"].item() == 1


def test_hooks_on_the_modules_the_twin_calls_still_fire():
    plain = _plain().eval()
    seen = []
    for name in ("psp", "fpn_lateral_blocks.2", "fpn_conv_blocks.2", "fusion_block.1", "fusion_block.2"):
        plain.get_submodule(name).register_forward_hook(lambda *a, name=name: seen.append(name))
    assert CpuUPerNetDecoder.problems(plain, "decoder") == []
    with torch.no_grad():
        _twin(plain)(_features())
    assert seen == ["psp", "fpn_lateral_blocks.2", "fpn_conv_blocks.2", "fusion_block.1", "fusion_block.2"]


class _LoraConv2d(nn.Conv2d):
    """A user's adapter in place of the fusion conv (its forward is not what the twin computes)."""


def test_problems_name_what_the_twin_would_bypass():
    assert CpuUPerNetDecoder.problems(_plain(), "decoder") == []

    foreign = _plain()
    old = foreign.fusion_block[0]
    foreign.fusion_block[0] = _LoraConv2d(old.in_channels, old.out_channels, 3, padding=1, bias=False)
    [problem] = CpuUPerNetDecoder.problems(foreign, "decoder")
    assert "decoder.fusion_block.0 is a" in problem and "_LoraConv2d" in problem
    assert problem.endswith("not torch.nn.modules.conv.Conv2d")

    hooked = _plain()
    hooked.fusion_block[0].register_forward_hook(lambda *a: None)
    assert CpuUPerNetDecoder.problems(hooked, "decoder") == [
        "decoder.fusion_block.0 has forward hooks, which the fast twin would not call"]

    hooked_block = _plain()
    hooked_block.fusion_block.register_forward_pre_hook(lambda *a: None)
    assert CpuUPerNetDecoder.problems(hooked_block, "") == ["fusion_block has forward hooks, which the fast twin "
                                                            "would not call"]
    grouped = _plain()
    grouped.fusion_block[0] = nn.Conv2d(4 * 48, 48, 3, padding=1, groups=4, bias=False)
    assert "grouped" in CpuUPerNetDecoder.problems(grouped, "decoder")[0]

    rebuilt = _plain()
    rebuilt.fusion_block = nn.Sequential(rebuilt.fusion_block[0], rebuilt.fusion_block[2])
    assert "Sequential" in CpuUPerNetDecoder.problems(rebuilt, "decoder")[0]


def test_the_twin_refuses_tracers_and_names_the_plain_model():
    twin = _twin(_plain().eval())
    with pytest.raises(RuntimeError, match="restore_plain"):
        torch.fx.symbolic_trace(twin, concrete_args={"features": [torch.fx.PH] * 6})


def test_the_converted_segmenter_on_the_golden_fixtures(golden):
    mini = IwinUPerNet("iwin_tiny", encoder_kwargs=MINI, decoder_channels=64, aux_channels=32)
    model = load_segmenter_weights(mini, str(golden["upernet_ckpt"])).eval()
    model.decoder = _twin(model.decoder)
    exp = golden["upernet"]
    for case in ("odd", "square"):
        x = exp[f"x_{case}"]
        with torch.no_grad():
            low = model.low_res_logits(x)
            logits = model(x)
        assert (low - exp[f"logits_{case}_s4"]).abs().max().item() < 5e-5
        expected = F.interpolate(exp[f"logits_{case}_s4"].double(), size=x.shape[-2:], mode="bilinear",
                                 align_corners=False)
        assert (logits - expected).abs().max().item() < 5e-5
