"""GPU benchmark of the segmenters (run by hand where a GPU is lent, never in CI).

    .venv/bin/python benchmarks/bench_gpu.py [--batch 8] [--size 512] [--json out.json]

Iwin-T/S/B UPerNet against timm Swin-T/S/B features + smp UPerNet (512 channels), the pairs of
``bench_cpu.py`` section 2: bf16 autocast, eval, ``torch.inference_mode``, batch 8 at 512x512 by default.
Candidates alternate inside one loop; each timing is CUDA events around one forward pass, the median
of ``--reps`` after ``--warmup`` passes. Prints images/s, the Iwin/Swin time ratio and the peak memory
of each, with the card's name. ``--device cpu --batch 1 --size 128 --reps 1`` is a smoke run of the script
itself on a machine without a GPU (its figures mean nothing).

The models are plain: ``iwin_models.optimize_for_cpu`` installs CPU kernels only, so a GPU runs the definition.
On ``--device cpu`` the Iwin model is converted as in ``bench_cpu.py`` (``--no-fast`` or ``IWIN_FAST_PATH=0``:
plain).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cpu import SEGMENTER_PAIRS, machine, segmenter_pair, timed_alternating  # noqa: E402

import iwin_models  # noqa: E402
from iwin_models.fast.config import use_fast_path  # noqa: E402


def peak_memory_mib(f, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    f()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2 ** 20


def models_on(device: torch.device, size: str, swin_name: str, img_size: int, fast: bool) -> dict:
    """{'iwin': Iwin UPerNet, 'swin': Swin + smp UPerNet} on ``device``; on the CPU Iwin converted when ``fast``."""
    iwin, swin = (m.to(device) for m in segmenter_pair(size, swin_name, img_size))
    if device.type == "cpu" and fast:
        iwin = iwin_models.optimize_for_cpu(iwin)
    return dict(iwin=iwin, swin=swin)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke run")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--sizes", default="tiny,small,base", help="Iwin/Swin sizes to compare")
    parser.add_argument("--no-fast", action="store_true",
                        help="with --device cpu: the plain Iwin model, without optimize_for_cpu (as IWIN_FAST_PATH=0)")
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here (use --device cpu for a smoke run)", file=sys.stderr)
        return 2
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU smoke run)"
    res = dict(machine=machine(), device=card, batch=args.batch, size=args.size, dtype="bf16 autocast",
               segmenters={})
    print(json.dumps(res["machine"]))
    print(f"device: {card}; bf16 autocast, eval, inference_mode, batch {args.batch}, {args.size}x{args.size}")
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    wanted = args.sizes.split(",")
    for size, swin_name in (pair for pair in SEGMENTER_PAIRS if pair[0] in wanted):
        models = models_on(device, size, swin_name, args.size, fast=not args.no_fast and use_fast_path())

        def forward(model):
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
                return model(x)

        fns = {k: (lambda m=m: forward(m)) for k, m in models.items()}
        t = timed_alternating(fns, args.reps, args.warmup, device)
        entry = dict(seconds=t, images_per_s={k: args.batch / v for k, v in t.items()},
                     iwin_over_swin=t["iwin"] / t["swin"],
                     peak_mib={k: peak_memory_mib(f, device) for k, f in fns.items()})
        res["segmenters"][size] = entry
        ips, mem = entry["images_per_s"], entry["peak_mib"]
        memory = f"  peak {mem['iwin']:.0f} / {mem['swin']:.0f} MiB" if mem["iwin"] is not None else ""
        print(f"  Iwin-{size[0].upper()} UPerNet {ips['iwin']:.1f} img/s | {swin_name} + smp UPerNet "
              f"{ips['swin']:.1f} img/s | time ratio {entry['iwin_over_swin']:.3f}{memory}")
        del models, fns
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
