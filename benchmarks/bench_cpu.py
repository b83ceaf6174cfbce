"""CPU benchmark of the Iwin backbone and segmenters (run by hand, never in CI).

    .venv/bin/python benchmarks/bench_cpu.py [--quick] [--threads 2] [--sections 1,2,4,5,6,7] [--loaded]
                                             [--no-fast] [--json out.json]

"converted" is the model with its CPU fast twins, ``iwin_models.optimize_for_cpu(model, inplace=False)``: what
``segment()`` and the ``iwin-seg`` commands run on the CPU. "plain" is the same model unconverted (the
definition; the two share their weights). Both are timed in every run, against the same baselines, so one
run gives both columns of the summary table at the end. ``--no-fast`` (or ``IWIN_FAST_PATH=0``) times the plain
model only; ``IWIN_<NAME>=0`` leaves one fast path out of the conversion (``iwin_models.fast.config``).

Everything runs in one process with the same thread count, except the training-memory and torch.compile
sections, which each use a fresh subprocess (peak RSS from /proc/self/status VmHWM; a compile that hangs cannot
stall the rest), and the background job of the loaded case. Latencies are medians over several runs after one
warm-up; candidates are timed in alternation inside the same loop, so that load from other processes hits them
alike, and compared as ratios.

Sections: 1 backbone vs the authors' code (``reference_block.py``) at 512 and 1024; 2 segmenters vs timm Swin +
smp UPerNet, and their achieved GFLOP/s against a 2048^2 oneDNN product measured in the same run; 3
time(1024)/time(512) (from 1); 4 bf16 autocast; 5 training step with and without gradient checkpointing; 6
torch.compile of the backbone; 7 section 1 again while another 2-thread PyTorch job runs (the loaded case).

Expected time on 2 quiet cores (the AMD EPYC host of RESULTS.md): ``--quick`` about 6 minutes (section 5, the
training steps, is half of it; section 7 about 1 minute), the full run about 10 minutes; up to twice that on the
host's slow days (when its 2048^2 oneDNN product is nearer 200 than 460 GFLOP/s). ``--sections 1,2,7`` (the
ratios of the summary table, bf16 aside) takes about 2 minutes with ``--quick``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from reference_block import build_reference  # noqa: E402

import iwin_models  # noqa: E402
from iwin_models.fast.config import enabled_fast_paths, use_fast_path  # noqa: E402
from iwin_models.fast.linear import linear  # noqa: E402

FIXTURES = REPO.parent / "shared" / "fixtures" / "golden"
SAMPLE = REPO / "iwin_models" / "assets" / "sample.jpg"
MINI = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
AIM_OF_ONEDNN_RATE = 0.9  # issue 17: the segmenter's achieved GFLOP/s against the 2048^2 oneDNN product


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes and repetitions of one run (``--quick``, the full run, or the hidden ``--smoke``)."""

    fast: bool  # time the converted model (else the plain one only)
    threads: int
    backbone_sizes: tuple[int, int] = (512, 1024)
    seg_size: int = 512
    reps: int = 9  # at the smaller backbone size; two fewer at the larger
    seg_reps: int = 3
    segmenter_sizes: tuple[str, ...] = ("tiny", "small", "base")
    bf16_seeds: int = 3
    train_size: int = 512
    train_steps: int = 2
    compile_timeout: int = 420
    load_threads: int = 2
    load_limit_s: float = 900.0  # the background job stops itself after this long whatever happens

    def reps_at(self, size: int) -> int:
        return self.reps if size == self.backbone_sizes[0] else max(1 if self.reps == 1 else 2, self.reps - 2)


def settings_from(args) -> Settings:
    fast = not args.no_fast and use_fast_path()
    common = dict(fast=fast, threads=args.threads, load_threads=args.load_threads)
    if args.smoke:  # proves the script runs: tiny inputs, one repetition, figures meaningless
        return Settings(**common, backbone_sizes=(64, 96), seg_size=64, reps=1, seg_reps=1, segmenter_sizes=("tiny",),
                        bf16_seeds=1, train_size=64, train_steps=1, compile_timeout=300, load_limit_s=120)
    if args.quick:
        return Settings(**common, reps=5, seg_reps=2, segmenter_sizes=("tiny",), train_steps=1, compile_timeout=240,
                        load_limit_s=600)
    return Settings(**common)


# --- helpers -------------------------------------------------------------------------------------

def seconds_of(f, device: torch.device | None = None) -> float:
    """Seconds one call of ``f`` takes: wall clock, or CUDA events around it on a CUDA device."""
    if device is None or device.type != "cuda":
        t = time.perf_counter()
        f()
        return time.perf_counter() - t
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    f()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def timed_alternating(fns: dict, reps: int, warmup: int = 1, device: torch.device | None = None) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved A B C A B C ..."""
    times = {k: [] for k in fns}
    with torch.no_grad():
        for _ in range(warmup):
            for f in fns.values():
                f()
        for _ in range(reps):
            for k, f in fns.items():
                times[k].append(seconds_of(f, device))
    return {k: statistics.median(v) for k, v in times.items()}


def machine() -> dict:
    model = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        model = fields.get("Model name", model).strip()
        cpus = fields.get("CPU(s)", "?").strip()
    except (OSError, subprocess.CalledProcessError):
        cpus = "?"
    return dict(cpu=model, cpus=cpus, torch=torch.__version__, python=platform.python_version(),
                threads=torch.get_num_threads(), loadavg=load_average(),
                date=datetime.datetime.now().isoformat(timespec="seconds"))


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def print_table(header: list[str], rows: list[list]) -> None:
    """A Markdown table with aligned columns (pastes into RESULTS.md as it is)."""
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print(line(row))


def summarise(res: dict, measurement: str, converted: float | None, plain: float | None) -> None:
    """One row of the closing table: a ratio of the converted model and of the plain one."""
    res.setdefault("summary", []).append(dict(measurement=measurement, converted=converted, plain=plain))


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ours_variants(model: torch.nn.Module, s: Settings, torch_linear: bool = False) -> dict[str, torch.nn.Module]:
    """The Iwin candidates for ``model`` (plain): converted (and, with ``torch_linear``, converted without the
    oneDNN linears: torch's F.linear, the reference's GEMM) when fast, and always the plain model itself."""
    out = {}
    if s.fast:
        out["converted"] = iwin_models.optimize_for_cpu(model, inplace=False)
        if torch_linear:
            out["converted, F.linear"] = iwin_models.optimize_for_cpu(model, inplace=False, exclude=("onednn_linear",))
    out["plain"] = model
    return out


def seg_input(size: int) -> torch.Tensor:
    """The bundled sample image, normalised, resized to size x size (random noise without it)."""
    if not SAMPLE.is_file():
        return torch.randn(1, 3, size, size)
    from iwin_models.data import ade20k
    from iwin_models.io.images import load_image

    img = torch.from_numpy(load_image(SAMPLE)).permute(2, 0, 1)[None].float()
    img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(ade20k.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(ade20k.STD).view(1, 3, 1, 1)
    return (img - mean) / std


def gflops_of(model, x) -> float:
    """FLOPs of one forward pass (every aten op, 2 per multiply-add), in G; count the plain model."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 1e9


# Iwin UPerNet vs the same decoder (smp's UPerNet, 512 channels) on timm's Swin of the same size
SEGMENTER_PAIRS = [("tiny", "swin_tiny_patch4_window7_224"), ("small", "swin_small_patch4_window7_224"),
                   ("base", "swin_base_patch4_window7_224")]


def segmenter_pair(size: str, swin_name: str, img_size: int = 512):
    """(Iwin UPerNet, Swin + smp UPerNet), plain, random weights, eval mode, 150 classes; Swin built for img_size."""
    import segmentation_models_pytorch as smp

    from iwin_models.models.segmenters import create_segmenter

    ours = create_segmenter(f"iwin_{size}_upernet_ade20k", pretrained=False).eval()
    swin = smp.UPerNet(f"tu-{swin_name}", encoder_weights=None, decoder_channels=512, classes=150,
                       img_size=img_size).eval()
    return ours, swin


# --- sections 1, 3 and 7: the backbone against the authors' code -----------------------------------

def backbone_candidates(s: Settings, torch_linear: bool) -> dict[str, Callable]:
    """name -> f(x) -> the four stage features: Iwin-T (converted and plain) and the reference, same weights."""
    import timm

    torch.manual_seed(0)
    backbone = timm.create_model("iwin_tiny", features_only=True).eval().model
    reference = build_reference(backbone)
    fns = {name: (lambda x, m=m: m.forward_intermediates(x, intermediates_only=True))
           for name, m in ours_variants(backbone, s, torch_linear).items()}
    return {**fns, "reference": reference}


def max_diff_to_reference(fns: dict[str, Callable], x: torch.Tensor, atol: float = 1e-4) -> float:
    """Assert every candidate's stage features equal the reference's (as reference_block.check_reference);
    returns the largest difference."""
    worst = 0.0
    with torch.no_grad():
        expected = fns["reference"](x)
        for name, f in fns.items():
            if name == "reference":
                continue
            for i, (a, b) in enumerate(zip(f(x), expected)):
                assert a.shape == b.shape, f"{name}, stage {i}: shape {tuple(a.shape)} != {tuple(b.shape)}"
                diff, scale = (a - b).abs().max().item(), max(b.abs().max().item(), 1.0)
                assert diff <= atol * scale, f"{name}, stage {i}: max |ours - reference| = {diff:.3g}"
                worst = max(worst, diff)
    return worst


def time_backbones(fns: dict[str, Callable], s: Settings, check: bool = True) -> dict[int, dict]:
    """Each candidate's median seconds at the two sizes, alternating, and its ratio to the reference."""
    out = {}
    for size in s.backbone_sizes:
        x = torch.randn(1, 3, size, size)
        diff = max_diff_to_reference(fns, x) if check else None
        t = timed_alternating({k: (lambda f=f, x=x: f(x)) for k, f in fns.items()}, s.reps_at(size))
        out[size] = dict(seconds=t, over_reference={k: v / t["reference"] for k, v in t.items() if k != "reference"},
                         max_abs_diff_vs_ref=diff, reps=s.reps_at(size))
    return out


def print_backbone_table(results: dict[int, dict]) -> None:
    names = list(next(iter(results.values()))["seconds"])
    ours = [n for n in names if n != "reference"]
    header = ["size", *(f"{n} s" for n in names), *(f"{n} / ref" for n in ours), "max diff", "reps"]
    rows = [[f"{size}x{size}", *(f"{r['seconds'][n]:.3f}" for n in names),
             *(fmt(r["over_reference"][n]) for n in ours),
             "-" if r["max_abs_diff_vs_ref"] is None else f"{r['max_abs_diff_vs_ref']:.1e}", r["reps"]]
            for size, r in results.items()]
    print_table(header, rows)


def summarise_backbone(res: dict, results: dict[int, dict], label: str) -> None:
    for size, r in results.items():
        ratio = r["over_reference"]
        summarise(res, f"{label}Iwin-T backbone / authors' code, {size}x{size}", ratio.get("converted"),
                  ratio["plain"])


def section_backbone(s: Settings, res: dict) -> None:
    print("\n(1) Iwin-T backbone vs the authors' code (reference_block.py): batch 1, fp32, eval, no_grad")
    if s.fast:
        print("    'converted, F.linear' leaves out the oneDNN linears (torch's F.linear: MKL, the reference's GEMM)")
    results = time_backbones(backbone_candidates(s, torch_linear=True), s)
    print_backbone_table(results)
    res["backbone"] = results
    summarise_backbone(res, results, "")
    small, large = s.backbone_sizes
    res["scaling"] = {k: results[large]["seconds"][k] / results[small]["seconds"][k] for k in results[small]["seconds"]}
    print(f"\n(3) time({large}^2) / time({small}^2) of the backbone ({(large / small) ** 2:.1f} = linear in pixels)")
    print_table(list(res["scaling"]), [[f"{v:.2f}" for v in res["scaling"].values()]])


# --- section 2: segmenters against Swin + smp, and their achieved rate -------------------------------

def matmul_rates() -> dict[str, float]:
    """GFLOP/s of a 2048x2048 float32 product: torch's ``a @ b`` (MKL) and oneDNN (``layers.linear.linear``)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    t = timed_alternating({"a @ b": lambda: a @ b, "oneDNN": lambda: linear(a, b)}, reps=7)
    return {k: 2 * 2048 ** 3 / v / 1e9 for k, v in t.items()}


def time_segmenter(ours, swin, s: Settings, onednn_gflops: float) -> dict:
    """Converted and plain Iwin UPerNet against Swin + smp: seconds, FLOPs, GFLOP/s and their ratios."""
    x = torch.randn(1, 3, s.seg_size, s.seg_size)
    models = {**{f"Iwin {k}": m for k, m in ours_variants(ours, s).items()}, "Swin + smp": swin}
    t = timed_alternating({k: (lambda m=m: m(x)) for k, m in models.items()}, s.seg_reps)
    gflop = {"iwin": gflops_of(ours, x), "swin": gflops_of(swin, x)}
    rows = {}
    for name, seconds in t.items():
        flops = gflop["swin" if name == "Swin + smp" else "iwin"]
        rows[name] = dict(seconds=seconds, gflop=flops, gflops_per_s=flops / seconds,
                          of_onednn_rate=flops / seconds / onednn_gflops, over_swin=seconds / t["Swin + smp"])
    return rows


def section_segmenters(s: Settings, res: dict) -> None:
    print(f"\n(2) segmenters at {s.seg_size}x{s.seg_size} (batch 1, fp32, eval): Iwin UPerNet vs timm Swin + smp "
          f"UPerNet (512 ch)")
    rates = res["matmul_gflops"] = matmul_rates()
    print(f"    2048x2048 fp32 product: {rates['a @ b']:.1f} GFLOP/s with torch's a @ b, {rates['oneDNN']:.1f} "
          f"GFLOP/s on oneDNN (the yardstick of the rates below; aim {AIM_OF_ONEDNN_RATE:.0%} of it)")
    res["segmenters"] = {}
    rows = []
    for size, swin_name in (pair for pair in SEGMENTER_PAIRS if pair[0] in s.segmenter_sizes):
        ours, swin = segmenter_pair(size, swin_name, s.seg_size)
        entry = res["segmenters"][size] = time_segmenter(ours, swin, s, rates["oneDNN"])
        for name, r in entry.items():
            label = f"{swin_name} + smp" if name == "Swin + smp" else name.replace("Iwin", f"Iwin-{size[0].upper()}")
            rows.append([label, f"{r['seconds']:.3f}", f"{r['gflop']:.0f}", f"{r['gflops_per_s']:.1f}",
                         fmt(r["of_onednn_rate"], 2), fmt(r["over_swin"])])
        tag = f"Iwin-{size[0].upper()}"
        summarise(res, f"{tag} UPerNet / Swin-{size[0].upper()} + smp UPerNet, {s.seg_size}x{s.seg_size}",
                  entry.get("Iwin converted", {}).get("over_swin"), entry["Iwin plain"]["over_swin"])
        summarise(res, f"{tag} UPerNet achieved GFLOP/s / oneDNN 2048^2 product (aim {AIM_OF_ONEDNN_RATE})",
                  entry.get("Iwin converted", {}).get("of_onednn_rate"), entry["Iwin plain"]["of_onednn_rate"])
        del ours, swin
    print_table(["model", "seconds", "GFLOP", "GFLOP/s", "/ oneDNN 2048^2", "/ Swin + smp"], rows)


# --- section 4: bf16 autocast --------------------------------------------------------------------

def run_in(model, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return model(x)


def agreement(model, x: torch.Tensor) -> float:
    """Share of pixels whose argmax class is the same in bf16 autocast and in fp32."""
    return (run_in(model, x, False).argmax(1) == run_in(model, x, True).float().argmax(1)).float().mean().item()


def bf16_agreement_random(s: Settings, prepare: Callable, x: torch.Tensor) -> list[float]:
    """Argmax agreement on random full-size Iwin-T UPerNet weights, one figure per seeded draw."""
    from iwin_models.models.segmenters import create_segmenter

    draws = []
    for seed in range(s.bf16_seeds):
        torch.manual_seed(seed)
        draws.append(agreement(prepare(create_segmenter("iwin_tiny_upernet_ade20k", pretrained=False).eval()), x))
    return draws


def bf16_agreement_golden(prepare: Callable) -> dict[str, float]:
    """Argmax agreement on the golden mini UPerNet (its fixtures' inputs and sample.jpg)."""
    from safetensors.torch import load_file

    from iwin_models.models.segmenters import load_segmenter_weights
    from iwin_models.models.upernet import IwinUPerNet

    ckpt = FIXTURES / "mini_upernet.pth"
    if not ckpt.is_file():
        return {}
    mini = IwinUPerNet("iwin_tiny", encoder_kwargs=MINI, decoder_channels=64, aux_channels=32)
    mini = prepare(load_segmenter_weights(mini, str(ckpt)).eval())
    expected = load_file(FIXTURES / "mini_upernet_expected.safetensors")
    inputs = {"x_odd": expected["x_odd"], "x_square": expected["x_square"]}
    if SAMPLE.is_file():
        inputs["sample.jpg 512x512"] = seg_input(512)
    return {f"golden mini UPerNet, {name}": agreement(mini, inp) for name, inp in inputs.items()}


def section_bf16(s: Settings, res: dict) -> None:
    from iwin_models.models.segmenters import create_segmenter

    which = "converted" if s.fast else "plain"
    print(f"\n(4) bf16 autocast on CPU vs fp32 (Iwin-T UPerNet, {which})")

    def prepare(model):
        return iwin_models.optimize_for_cpu(model, inplace=False) if s.fast else model

    torch.manual_seed(0)
    model = prepare(create_segmenter("iwin_tiny_upernet_ade20k", pretrained=False).eval())
    x = seg_input(s.seg_size)
    t = timed_alternating({"fp32": lambda: run_in(model, x, False), "bf16": lambda: run_in(model, x, True)},
                          s.seg_reps)
    # no trained weights are reachable here, and random ones give near-tied logits whose argmax flips
    # easily: the agreement depends on the draw, so it is given for seeded draws
    draws = bf16_agreement_random(s, prepare, x)
    golden = bf16_agreement_golden(prepare)
    entry = res["bf16"] = dict(seconds=t, bf16_over_fp32=t["bf16"] / t["fp32"],
                               argmax_agreement={"random Iwin-T, seeds": draws, **golden})
    image = "sample.jpg" if SAMPLE.is_file() else "noise"
    rows = [[f"Iwin-T UPerNet {s.seg_size}x{s.seg_size}: bf16 / fp32 time",
             f"{entry['bf16_over_fp32']:.3f} ({t['bf16']:.3f} s vs {t['fp32']:.3f} s)"],
            [f"argmax agreement, random-weight Iwin-T on {image}, seeds 0-{len(draws) - 1} (reference only)",
             " / ".join(f"{a:.4f}" for a in draws)]]
    rows += [[f"argmax agreement, {name}", f"{value:.4f}"] for name, value in golden.items()]
    print_table(["measurement", "result"], rows)
    summarise(res, f"bf16 autocast / fp32, Iwin-T UPerNet {s.seg_size}x{s.seg_size} ({which})",
              entry["bf16_over_fp32"] if s.fast else None, None if s.fast else entry["bf16_over_fp32"])


# --- section 5: training memory ------------------------------------------------------------------

TRAIN_CHILD = r"""
import json, sys, time, statistics, torch
threads, model_kind, mode, steps, size, fast = sys.argv[1:7]
torch.set_num_threads(int(threads)); steps, size = int(steps), int(size)
import torch.nn.functional as F
import timm
import iwin_models
from iwin_models.models.segmenters import create_segmenter

def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) / 1024  # MiB
torch.manual_seed(0)
x = torch.randn(2, 3, size, size)
if model_kind == 'backbone':  # the timm classifier: cross-entropy on 1000 classes
    model = timm.create_model('iwin_tiny').train()
    y = torch.randint(0, 1000, (2,))
    loss_of = lambda: F.cross_entropy(model(x), y)
else:  # the segmenter: main + 0.4 x auxiliary loss on full-resolution logits, as mmseg trains it
    model = create_segmenter('iwin_tiny_upernet_ade20k', pretrained=False).train()
    y = torch.randint(0, 150, (2, size, size))
    def loss_of():
        logits, aux = model(x, return_aux=True)
        return F.cross_entropy(logits, y, ignore_index=255) + 0.4 * F.cross_entropy(aux, y, ignore_index=255)
if mode == 'backbone':
    model.backbone.set_grad_checkpointing(True)
elif mode == 'all':
    model.set_grad_checkpointing(True)
if fast == '1':
    model = iwin_models.optimize_for_cpu(model)
try:
    open('/proc/self/clear_refs', 'w').write('5')  # reset VmHWM to the current RSS
    reset = True
except OSError:
    reset = False
base = status('VmRSS')
times = []
for i in range(steps + 1):
    t = time.perf_counter()
    loss_of().backward()
    model.zero_grad(set_to_none=True)
    if i:
        times.append(time.perf_counter() - t)
rss = dict(base_mib=base, hwm_mib=status('VmHWM'), growth_mib=status('VmHWM') - base, hwm_reset=reset)
# Peak of live tensor memory in one more step (CPU analogue of torch.cuda.max_memory_allocated):
# RSS also holds what the allocator keeps cached after frees.
from torch.distributed._tools.mem_tracker import MemTracker
tracker = MemTracker()
tracker.track_external(model, x, y)
with tracker:
    loss_of().backward()
    model.zero_grad(set_to_none=True)
peak = {str(k.value if hasattr(k, 'value') else k): v / 2 ** 20
        for k, v in tracker.get_tracker_snapshot('peak')[torch.device('cpu')].items()}
print(json.dumps(dict(step_s=statistics.median(times), rss=rss, tensor_peak_mib=peak['Total'],
                      activation_peak_mib=peak['Activation'], param_mib=peak['Parameter'])))
"""

TRAIN_CONFIGS = {
    "backbone": ("Iwin-T (timm classifier, cross-entropy)", {
        "none": "no checkpointing", "all": "model.set_grad_checkpointing()"}),
    "segmenter": ("Iwin-T UPerNet (main + aux loss on full-size logits)", {
        "none": "no checkpointing", "backbone": "model.backbone.set_grad_checkpointing()",
        "all": "model.set_grad_checkpointing() (backbone + decoder)"}),
}


def train_step(s: Settings, kind: str, mode: str) -> dict:
    """One configuration's step time and peak memory, measured in a fresh process."""
    done = subprocess.run([sys.executable, "-c", TRAIN_CHILD, str(s.threads), kind, mode, str(s.train_steps),
                           str(s.train_size), "1" if s.fast else "0"], capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        return dict(error=done.stderr.strip()[-400:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def section_training(s: Settings, res: dict) -> None:
    print(f"\n(5) training step (forward + backward, batch 2, {s.train_size}x{s.train_size}, fp32, "
          f"{'converted' if s.fast else 'plain'}), one fresh process per configuration")
    res["training"] = {}
    rows = []
    for kind, (title, modes) in TRAIN_CONFIGS.items():
        t = res["training"][kind] = {mode: train_step(s, kind, mode) for mode in modes}
        for mode, label in modes.items():
            r, none = t[mode], t["none"]
            if "error" in r:
                rows.append([title, label, f"failed: {r['error'][-200:]}", "", "", ""])
                continue
            against_none = mode != "none" and "error" not in none
            ratio = f"{r['tensor_peak_mib'] / none['tensor_peak_mib']:.3f}" if against_none else ""
            rss = f" ({r['rss']['growth_mib'] / none['rss']['growth_mib']:.3f})" if against_none else ""
            rows.append([title, label, f"{r['step_s']:.2f}",
                         f"{r['tensor_peak_mib']:.0f} ({r['activation_peak_mib']:.0f}, {r['param_mib']:.0f})",
                         ratio, f"{r['rss']['growth_mib']:.0f}{rss}"])
    print_table(["model", "checkpointing", "step s", "peak tensor MiB (activations, parameters)",
                 "/ none", "peak RSS growth MiB (/ none)"], rows)


# --- section 6: torch.compile --------------------------------------------------------------------

COMPILE_CHILD = r"""
import json, sys, time, statistics, torch
threads, reps, size, fast = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == '1'
torch.set_num_threads(threads)
import timm, iwin_models
plain = timm.create_model('iwin_tiny', features_only=True).eval().model
x = torch.randn(1, 3, size, size)
def run(model):
    return lambda: model.forward_intermediates(x, intermediates_only=True)
fns = {}
if fast:  # what a user gets without compiling; the converted model runs eagerly only
    fns['eager, converted'] = run(iwin_models.optimize_for_cpu(plain, inplace=False))
fns['eager, plain'] = run(plain)
compiled = torch.compile(run(plain))  # a compiler records the plain model
with torch.no_grad():
    t = time.perf_counter(); got = compiled(); first = time.perf_counter() - t
    diff = max((a - b).abs().max().item() for a, b in zip(got, fns['eager, plain']()))
    fns['compiled, plain'] = compiled
    ts = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter(); f(); ts[k].append(time.perf_counter() - t)
print(json.dumps(dict(first_call_s=first, max_abs_diff=diff, seconds={k: statistics.median(v) for k, v in ts.items()})))
"""


def section_compile(s: Settings, res: dict) -> None:
    size = s.backbone_sizes[0]
    print(f"\n(6) torch.compile of the plain Iwin-T backbone at {size}x{size} (fresh process, limit "
          f"{s.compile_timeout}s)")
    try:
        done = subprocess.run([sys.executable, "-c", COMPILE_CHILD, str(s.threads), str(s.reps), str(size),
                               "1" if s.fast else "0"],
                              capture_output=True, text=True, cwd=REPO, timeout=s.compile_timeout)
    except subprocess.TimeoutExpired:
        res["compile"] = dict(error=f"did not finish within {s.compile_timeout}s")
        print(f"  did not finish within {s.compile_timeout}s (compilation too slow on this machine)")
        return
    if done.returncode:
        res["compile"] = dict(error=done.stderr.strip()[-400:])
        print(f"  failed: {res['compile']['error']}")
        return
    r = res["compile"] = json.loads(done.stdout.strip().splitlines()[-1])
    t = r["seconds"]
    r["compiled_over"] = {k: t["compiled, plain"] / v for k, v in t.items() if k.startswith("eager")}
    print(f"    first call (compilation) {r['first_call_s']:.1f} s; max |compiled - eager plain| "
          f"{r['max_abs_diff']:.1e}")
    print_table([*(f"{k} s" for k in t), *(f"compiled / {k}" for k in r["compiled_over"])],
                [[*(f"{v:.3f}" for v in t.values()), *(f"{v:.3f}" for v in r["compiled_over"].values())]])


# --- section 7: the loaded case --------------------------------------------------------------------

LOAD_CHILD = r"""
import os, signal, sys, time, torch
threads, limit, n = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the benchmark stops this job
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
torch.set_num_threads(threads)
parent, deadline = os.getppid(), time.monotonic() + limit
a, b = torch.randn(n, n), torch.randn(n, n)
a @ b
print('ready', flush=True)
products, start = 0, time.perf_counter()
while not stop and time.monotonic() < deadline and os.getppid() == parent:  # bounded, and ends with its parent
    a @ b
    products += 1
print(products, time.perf_counter() - start, 'stopped' if stop else 'ended by itself', flush=True)
"""
LOAD_MATRIX = 1024


@contextlib.contextmanager
def background_load(threads: int, limit_s: float):
    """Another PyTorch job: ``threads``-thread float32 matmuls in a loop, from entering the block to leaving it
    (stopped on error and KeyboardInterrupt too; it also stops itself after ``limit_s`` or if this process
    dies). Yields a dict that, after the block, holds the job's own rate and whether it ran to the end."""
    job = subprocess.Popen([sys.executable, "-c", LOAD_CHILD, str(threads), str(limit_s), str(LOAD_MATRIX)],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    report = dict(threads=threads)
    try:
        if job.stdout.readline().strip() != "ready":
            raise RuntimeError("the background load job did not start")
        yield report
    finally:
        report["ran_to_the_end"] = job.poll() is None
        job.terminate()
        try:
            out, _ = job.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            job.kill()
            out, _ = job.communicate()
        fields = out.split()
        if len(fields) >= 2:
            products, seconds = int(fields[0]), float(fields[1])
            report.update(products=products, seconds=seconds,
                          gflops_per_s=2 * LOAD_MATRIX ** 3 * products / max(seconds, 1e-9) / 1e9)


def section_loaded(s: Settings, res: dict) -> None:
    print(f"\n(7) the loaded case: section 1 while another {s.load_threads}-thread PyTorch job runs "
          f"({LOAD_MATRIX}x{LOAD_MATRIX} matmuls in a loop, started before the warm-up, stopped after the timing)")
    fns = backbone_candidates(s, torch_linear=False)
    with background_load(s.load_threads, s.load_limit_s) as load:
        results = time_backbones(fns, s, check=False)
    print_backbone_table(results)
    rate = f"{load['gflops_per_s']:.0f} GFLOP/s" if "gflops_per_s" in load else "rate unknown"
    early = "" if load["ran_to_the_end"] else f"; WARNING: it ended before the timing (limit {s.load_limit_s:.0f} s)"
    print(f"    the background job got {rate} over the timing{early}")
    res["loaded"] = dict(backbone=results, load=load)
    summarise_backbone(res, results, "loaded: ")


# --- main ----------------------------------------------------------------------------------------

SECTIONS = {"1": section_backbone, "2": section_segmenters, "4": section_bf16, "5": section_training,
            "6": section_compile, "7": section_loaded}


def print_summary(res: dict, s: Settings) -> None:
    if not res.get("summary"):
        return
    print(f"\nSummary (ratios; lower is faster, except the achieved rate){'' if s.fast else ': plain model only'}")
    print_table(["measurement", "converted", "plain"],
                [[r["measurement"], fmt(r["converted"]), fmt(r["plain"])] for r in res.get("summary", [])])


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions, Iwin-T only, one training step, shorter compile limit "
                             "(about 6 minutes on 2 quiet cores)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument("--sections", default="1,2,4,5,6,7", help="comma-separated sections (3 comes with 1; "
                        "default: %(default)s)")
    parser.add_argument("--loaded", action="store_true",
                        help="add section 7 to --sections: the backbone vs the authors' code while another "
                             "2-thread PyTorch job runs (in the default sections and in --quick; about 1 minute "
                             "with --quick on 2 cores, 1.5-2 minutes in the full run)")
    parser.add_argument("--load-threads", type=int, default=2, help="threads of the background job (default: 2)")
    parser.add_argument("--no-fast", action="store_true",
                        help="time the plain model only, without optimize_for_cpu (as IWIN_FAST_PATH=0)")
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tiny sizes, 1 repetition
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    s = settings_from(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    res = dict(machine=machine(), command="python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:])),
               settings=dataclasses.asdict(s))
    print(json.dumps(res["machine"]))
    print(f"torch threads: {torch.get_num_threads()}; " + (
        f"converted: optimize_for_cpu with {', '.join(sorted(enabled_fast_paths()))}" if s.fast else
        "plain model only (--no-fast or IWIN_FAST_PATH=0)"))
    sections = {x.strip() for x in args.sections.split(",")} | ({"7"} if args.loaded else set())
    for key, section in SECTIONS.items():
        if key in sections:
            section(s, res)
    print_summary(res, s)
    res["total_s"] = time.perf_counter() - start
    res["machine"]["loadavg_end"] = load_average()
    print(f"\ntotal {res['total_s']:.0f}s; load average at the end {res['machine']['loadavg_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
