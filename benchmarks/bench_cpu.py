"""CPU benchmark of the Iwin backbone and segmenters (run by hand, never in CI).

    .venv/bin/python benchmarks/bench_cpu.py [--quick] [--threads 2] [--sections 1,2,4,5,6]

Everything runs in one process with the same thread count, except the training-memory and
torch.compile sections, which each use a fresh subprocess (peak RSS from /proc/self/status VmHWM;
a compile that hangs cannot stall the rest). Latencies are medians over several runs after one
warm-up; candidates are timed in alternation inside the same loop, so that load from other
processes hits them alike, and compared as ratios.

Sections: 1 backbone vs the reference implementation (512, 1024), 2 segmenters vs timm Swin + smp UPerNet and GFLOP/s
against a 2048^2 matmul, 3 time(1024)/time(512) (from 1), 4 bf16 autocast, 5 training step with and
without gradient checkpointing, 6 torch.compile of the backbone.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from reference_block import build_reference, check_reference  # noqa: E402

import iwin_models  # noqa: E402, F401
from iwin_models.iwin import linear, use_onednn_linears  # noqa: E402

FIXTURES = REPO.parent / "shared" / "fixtures" / "golden"
SAMPLE = REPO / "iwin_models" / "assets" / "sample.jpg"
MINI = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))


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
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return dict(cpu=model, cpus=cpus, torch=torch.__version__, python=platform.python_version(),
                threads=torch.get_num_threads(), loadavg=" ".join(load),
                date=datetime.datetime.now().isoformat(timespec="seconds"))


def seg_input(size: int) -> torch.Tensor:
    """The bundled sample image, normalised, resized to size x size (random noise without it)."""
    if not SAMPLE.is_file():
        return torch.randn(1, 3, size, size)
    from iwin_models import ade20k
    from iwin_models.inference import load_image

    img = torch.from_numpy(load_image(SAMPLE)).permute(2, 0, 1)[None].float()
    img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(ade20k.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(ade20k.STD).view(1, 3, 1, 1)
    return (img - mean) / std


def gflops_of(model, x) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 1e9


# Iwin UPerNet vs the same decoder (smp's UPerNet, 512 channels) on timm's Swin of the same size
SEGMENTER_PAIRS = [("tiny", "swin_tiny_patch4_window7_224"), ("small", "swin_small_patch4_window7_224"),
                   ("base", "swin_base_patch4_window7_224")]


def segmenter_pair(size: str, swin_name: str, img_size: int = 512):
    """(Iwin UPerNet, Swin + smp UPerNet), random weights, eval mode, 150 classes; Swin built for img_size."""
    import segmentation_models_pytorch as smp

    from iwin_models.segmenter import create_segmenter

    ours = create_segmenter(f"iwin_{size}_upernet_ade20k", pretrained=False).eval()
    swin = smp.UPerNet(f"tu-{swin_name}", encoder_weights=None, decoder_channels=512, classes=150,
                       img_size=img_size).eval()
    return ours, swin


# --- sections ------------------------------------------------------------------------------------

def section_backbone(args, res):
    import timm

    print("\n(1) Iwin-T backbone: ours vs the reference implementation (batch 1, fp32, eval, no_grad)")
    print("    'ours, torch F.linear' is ours with use_onednn_linears(False): the reference's GEMM kernel (MKL)")
    backbone = timm.create_model("iwin_tiny", features_only=True).eval().model
    ref = build_reference(backbone)

    def ours_with_torch_linear(x):
        previous = use_onednn_linears(False)
        try:
            return backbone.forward_intermediates(x, intermediates_only=True)
        finally:
            use_onednn_linears(previous)

    candidates = {"ours": lambda x: backbone.forward_intermediates(x, intermediates_only=True),
                  "ours, torch F.linear": ours_with_torch_linear, "reference": ref}
    res["backbone"] = {}
    for size, reps in ((512, args.reps), (1024, max(2, args.reps - 2))):
        x = torch.randn(1, 3, size, size)
        diff = check_reference(backbone, ref, x)
        t = timed_alternating({k: (lambda f=f, x=x: f(x)) for k, f in candidates.items()}, reps)
        entry = dict(seconds=t, ours_over_ref=t["ours"] / t["reference"],
                     ours_torch_linear_over_ref=t["ours, torch F.linear"] / t["reference"],
                     max_abs_diff_vs_ref=diff, reps=reps)
        print(f"  {size}x{size}: ours {t['ours']:.3f}s  ours, torch F.linear {t['ours, torch F.linear']:.3f}s  "
              f"reference {t['reference']:.3f}s  ratios {entry['ours_over_ref']:.3f} / "
              f"{entry['ours_torch_linear_over_ref']:.3f}  (max |diff| {diff:.2e})")
        res["backbone"][size] = entry
    b = res["backbone"]
    res["scaling"] = {k: b[1024]["seconds"][k] / b[512]["seconds"][k] for k in b[512]["seconds"]}
    print("\n(3) time(1024^2) / time(512^2) of the backbone: "
          + ", ".join(f"{k} {v:.2f}" for k, v in res["scaling"].items()) + "  (4.0 = linear in pixels)")


def section_segmenters(args, res):
    print("\n(2) segmenters at 512x512 (batch 1, fp32, eval): Iwin UPerNet vs timm Swin + smp UPerNet (512 ch)")
    a = torch.randn(2048, 2048)
    b = torch.randn(2048, 2048)
    t = timed_alternating({"mm": lambda: a @ b, "onednn": lambda: linear(a, b)}, reps=5)
    mm_gflops, onednn_gflops = (2 * 2048 ** 3 / t[k] / 1e9 for k in ("mm", "onednn"))
    print(f"  2048x2048 fp32 matmul: {t['mm'] * 1e3:.1f} ms = {mm_gflops:.1f} GFLOP/s (torch a @ b); "
          f"{t['onednn'] * 1e3:.1f} ms = {onednn_gflops:.1f} GFLOP/s (oneDNN, iwin_models.iwin.linear)")
    res["matmul_gflops"] = mm_gflops
    res["onednn_matmul_gflops"] = onednn_gflops
    res["segmenters"] = {}
    x = torch.randn(1, 3, 512, 512)
    for size, swin_name in SEGMENTER_PAIRS[:1] if args.quick else SEGMENTER_PAIRS:
        ours, swin = segmenter_pair(size, swin_name)
        t = timed_alternating({"iwin": lambda m=ours: m(x), "swin": lambda m=swin: m(x)}, args.seg_reps)
        fl = {"iwin": gflops_of(ours, x), "swin": gflops_of(swin, x)}
        entry = dict(seconds=t, gflop=fl, iwin_over_swin=t["iwin"] / t["swin"],
                     gflops_per_s={k: fl[k] / t[k] for k in t},
                     fraction_of_matmul={k: fl[k] / t[k] / mm_gflops for k in t},
                     fraction_of_onednn_matmul={k: fl[k] / t[k] / onednn_gflops for k in t})
        res["segmenters"][size] = entry
        print(f"  Iwin-{size[0].upper()} {t['iwin']:.3f}s ({fl['iwin']:.0f} GFLOP, {entry['gflops_per_s']['iwin']:.1f} "
              f"GFLOP/s = {entry['fraction_of_matmul']['iwin']:.0%} of matmul, "
              f"{entry['fraction_of_onednn_matmul']['iwin']:.0%} of oneDNN's)  |  {swin_name} + smp "
              f"{t['swin']:.3f}s ({fl['swin']:.0f} GFLOP, {entry['gflops_per_s']['swin']:.1f} GFLOP/s)  |  "
              f"ratio {entry['iwin_over_swin']:.3f}")
        del ours, swin


def section_bf16(args, res):
    from safetensors.torch import load_file

    from iwin_models.segmenter import IwinUPerNet, create_segmenter, load_segmenter_weights

    print("\n(4) bf16 autocast on CPU vs fp32")
    torch.manual_seed(0)
    model = create_segmenter("iwin_tiny_upernet_ade20k", pretrained=False).eval()
    x = seg_input(512)
    out = {}

    def fp32():
        out["fp32"] = model(x)

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out["bf16"] = model(x)

    t = timed_alternating({"fp32": fp32, "bf16": bf16}, args.seg_reps)
    entry = dict(seconds=t, bf16_over_fp32=t["bf16"] / t["fp32"], argmax_agreement={})
    print(f"  Iwin-T UPerNet 512x512: fp32 {t['fp32']:.3f}s  bf16 {t['bf16']:.3f}s  "
          f"ratio {entry['bf16_over_fp32']:.3f}")
    # no trained weights are reachable here, and random ones give near-tied logits whose argmax flips
    # easily: the agreement depends on the draw, so it is given for three seeded draws
    agreement = []
    for seed in range(3):
        if seed:
            torch.manual_seed(seed)
            model = create_segmenter("iwin_tiny_upernet_ade20k", pretrained=False).eval()
            with torch.no_grad():
                fp32(), bf16()
        agreement.append((out["fp32"].argmax(1) == out["bf16"].float().argmax(1)).float().mean().item())
    entry["argmax_agreement"]["full_random_iwin_t_sample_512_seeds_0_1_2"] = agreement
    print(f"  argmax agreement, random-weight Iwin-T on {'sample.jpg' if SAMPLE.is_file() else 'noise'}, "
          f"seeds 0/1/2: " + " / ".join(f"{a:.4f}" for a in agreement) + " (random weights: for reference only)")
    ckpt = FIXTURES / "mini_upernet.pth"
    if ckpt.is_file():
        mini = IwinUPerNet("iwin_tiny", encoder_kwargs=MINI, decoder_channels=64, aux_channels=32)
        mini = load_segmenter_weights(mini, str(ckpt)).eval()
        expected = load_file(FIXTURES / "mini_upernet_expected.safetensors")
        inputs = {"golden x_odd": expected["x_odd"], "golden x_square": expected["x_square"]}
        if SAMPLE.is_file():
            inputs["sample.jpg 512x512"] = seg_input(512)
        with torch.no_grad():
            for name, inp in inputs.items():
                a = mini(inp)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    b = mini(inp)
                agree = (a.argmax(1) == b.float().argmax(1)).float().mean().item()
                entry["argmax_agreement"][f"golden_mini {name}"] = agree
                print(f"  argmax agreement, golden mini UPerNet on {name}: {agree:.4f}")
    res["bf16"] = entry


TRAIN_CHILD = r"""
import json, sys, time, statistics, torch
torch.set_num_threads(int(sys.argv[1])); model_kind, mode, steps = sys.argv[2], sys.argv[3], int(sys.argv[4])
import torch.nn.functional as F
import timm
from iwin_models.segmenter import create_segmenter

def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) / 1024  # MiB
torch.manual_seed(0)
x = torch.randn(2, 3, 512, 512)
if model_kind == 'backbone':  # the timm classifier: cross-entropy on 1000 classes
    model = timm.create_model('iwin_tiny').train()
    y = torch.randint(0, 1000, (2,))
    loss_of = lambda: F.cross_entropy(model(x), y)
else:  # the segmenter: main + 0.4 x auxiliary loss on full-resolution logits, as mmseg trains it
    model = create_segmenter('iwin_tiny_upernet_ade20k', pretrained=False).train()
    y = torch.randint(0, 150, (2, 512, 512))
    def loss_of():
        logits, aux = model(x, return_aux=True)
        return F.cross_entropy(logits, y, ignore_index=255) + 0.4 * F.cross_entropy(aux, y, ignore_index=255)
if mode == 'backbone':
    model.backbone.set_grad_checkpointing(True)
elif mode == 'all':
    model.set_grad_checkpointing(True)
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
    "segmenter": ("Iwin-T UPerNet (main + aux loss on 512x512 logits)", {
        "none": "no checkpointing", "backbone": "model.backbone.set_grad_checkpointing()",
        "all": "model.set_grad_checkpointing() (backbone + decoder)"}),
}


def section_training(args, res):
    print("\n(5) training step (forward + backward, batch 2, 512x512, fp32), one fresh process per configuration")
    steps = 1 if args.quick else 2
    res["training"] = {}
    for kind, (title, modes) in TRAIN_CONFIGS.items():
        print(f"  {title}:")
        t = res["training"][kind] = {}
        for mode, label in modes.items():
            done = subprocess.run([sys.executable, "-c", TRAIN_CHILD, str(args.threads), kind, mode, str(steps)],
                                  capture_output=True, text=True, cwd=REPO)
            if done.returncode:
                print(f"    {label}: failed: {done.stderr.strip()[-400:]}")
                continue
            r = t[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"    {label}: step {r['step_s']:.2f}s  peak tensor memory {r['tensor_peak_mib']:.0f} MiB "
                  f"(activations {r['activation_peak_mib']:.0f}, parameters {r['param_mib']:.0f})  "
                  f"peak RSS growth {r['rss']['growth_mib']:.0f} MiB")
        for mode in modes:
            if mode != "none" and "none" in t and mode in t:
                a, b = t[mode], t["none"]
                ratios = t[f"{mode}_over_none"] = dict(
                    tensor_peak=a["tensor_peak_mib"] / b["tensor_peak_mib"],
                    activation_peak=a["activation_peak_mib"] / b["activation_peak_mib"],
                    rss_growth=a["rss"]["growth_mib"] / b["rss"]["growth_mib"], step_time=a["step_s"] / b["step_s"])
                print(f"    {modes[mode]} / no checkpointing: peak tensor memory {ratios['tensor_peak']:.3f} "
                      f"(activations {ratios['activation_peak']:.3f}), peak RSS growth {ratios['rss_growth']:.3f}, "
                      f"step time {ratios['step_time']:.3f}")


COMPILE_CHILD = r"""
import json, sys, time, statistics, torch
torch.set_num_threads(int(sys.argv[1])); reps = int(sys.argv[2])
import timm, iwin_models
backbone = timm.create_model('iwin_tiny', features_only=True).eval().model
x = torch.randn(1, 3, 512, 512)
eager = lambda: backbone.forward_intermediates(x, intermediates_only=True)
compiled_fn = torch.compile(eager)
with torch.no_grad():
    t = time.perf_counter(); got = compiled_fn(); first = time.perf_counter() - t
    ref = eager()
    diff = max((a - b).abs().max().item() for a, b in zip(got, ref))
    ts = {'eager': [], 'compiled': []}
    for _ in range(reps):
        for k, f in (('eager', eager), ('compiled', compiled_fn)):
            t = time.perf_counter(); f(); ts[k].append(time.perf_counter() - t)
print(json.dumps(dict(first_call_s=first, max_abs_diff=diff, **{k: statistics.median(v) for k, v in ts.items()})))
"""


def section_compile(args, res):
    print(f"\n(6) torch.compile of the Iwin-T backbone at 512x512 (fresh process, limit {args.compile_timeout}s)")
    try:
        done = subprocess.run([sys.executable, "-c", COMPILE_CHILD, str(args.threads), str(args.reps)],
                              capture_output=True, text=True, cwd=REPO, timeout=args.compile_timeout)
    except subprocess.TimeoutExpired:
        res["compile"] = dict(error=f"did not finish within {args.compile_timeout}s")
        print(f"  did not finish within {args.compile_timeout}s (compilation too slow on this machine)")
        return
    if done.returncode:
        res["compile"] = dict(error=done.stderr.strip()[-400:])
        print(f"  failed: {res['compile']['error']}")
        return
    r = json.loads(done.stdout.strip().splitlines()[-1])
    r["compiled_over_eager"] = r["compiled"] / r["eager"]
    res["compile"] = r
    print(f"  first call (compilation) {r['first_call_s']:.1f}s; eager {r['eager']:.3f}s compiled {r['compiled']:.3f}s "
          f"ratio {r['compiled_over_eager']:.3f} (max |diff| {r['max_abs_diff']:.1e})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, Iwin-T only, shorter compile limit")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument("--sections", default="1,2,4,5,6", help="comma-separated sections (3 comes with 1)")
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args(argv)
    args.reps = 5 if args.quick else 9
    args.seg_reps = 2 if args.quick else 3
    args.compile_timeout = 240 if args.quick else 420
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    res = dict(machine=machine(), command="python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:])))
    print(json.dumps(res["machine"]))
    print(f"torch threads: {torch.get_num_threads()}")
    sections = {s.strip() for s in args.sections.split(",")}
    for key, fn in (("1", section_backbone), ("2", section_segmenters), ("4", section_bf16),
                    ("5", section_training), ("6", section_compile)):
        if key in sections:
            fn(args, res)
    res["total_s"] = time.perf_counter() - start
    with open("/proc/loadavg") as f:
        res["machine"]["loadavg_end"] = " ".join(f.read().split()[:3])
    print(f"\ntotal {res['total_s']:.0f}s; load average at the end {res['machine']['loadavg_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
