"""onnxruntime (CPU) latency of the dynamic ONNX graph vs PyTorch eager, Iwin-T UPerNet (run by hand).

    .venv/bin/python benchmarks/bench_onnx.py [--threads 2] [--sizes 512,1024] [--reps 5] [--static]

One graph is exported with free batch/height/width (``export_onnx(..., dynamic=True)``) and serves
every size; it is timed against the same model in PyTorch eager (its default CPU fast paths on),
alternately in one loop of one process with the same thread count, after a warm-up each. Reports
the medians, onnxruntime / eager as a ratio, and max |diff| / max |logit| between the two outputs.
Random weights (the speed does not depend on them); input batch 1, 3 x size x size.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from iwin_models.export import export_onnx  # noqa: E402
from iwin_models.segmenter import create_segmenter  # noqa: E402


def timed_alternating(fns: dict, reps: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved A B A B ... so that load from
    other processes hits both alike."""
    times = {k: [] for k in fns}
    for _ in range(warmup):
        for f in fns.values():
            f()
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def session_for(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def measure(model, session, size: int, reps: int) -> tuple[float, float, float]:
    """(onnxruntime s, eager s, max |diff| / max |logit|) at batch 1, size x size."""
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
    feed = {"image": x.numpy()}
    expected = model(x)
    (got,) = session.run(["logits"], feed)
    err = ((torch.from_numpy(got) - expected).abs().max() / expected.abs().max()).item()
    times = timed_alternating({"ort": lambda: session.run(["logits"], feed), "eager": lambda: model(x)}, reps=reps)
    return times["ort"], times["eager"], err


def sessions(model, sizes: list[int], static: bool, threads: int, tmp: Path) -> dict[int, object]:
    """size -> onnxruntime session: the one dynamic graph for all, or with ``static`` one graph per size."""
    graphs = {size: (size, size) for size in sizes} if static else {None: (512, 512)}
    out = {}
    for key, (height, width) in graphs.items():
        t = time.perf_counter()
        path = export_onnx(model, tmp / f"iwin_t_{key or 'dynamic'}.onnx", height, width, dynamic=not static)
        print(f"export ({f'{key}x{key}' if key else 'dynamic'}): {time.perf_counter() - t:.1f} s, "
              f"{path.stat().st_size / 2**20:.0f} MiB")
        out[key] = session_for(path, threads)
    return {size: out[size if static else None] for size in sizes}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--static", action="store_true",
                        help="one fixed-size graph per size instead of the dynamic graph (for comparison)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"# {datetime.datetime.now().isoformat(timespec='seconds')} torch {torch.__version__}, "
          f"python {platform.python_version()}, threads {args.threads}, loadavg {load}")

    torch.manual_seed(0)
    model = create_segmenter("iwin_tiny_upernet_ade20k", pretrained=False).eval()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        by_size = sessions(model, sizes, args.static, args.threads, Path(tmp))
        print(f"| size | onnxruntime ({'static' if args.static else 'dynamic'} graph) | PyTorch eager | "
              "ort / eager | max abs diff / max abs logit |")
        print("|---|---|---|---|---|")
        for size in sizes:
            ort_s, eager_s, err = measure(model, by_size[size], size, args.reps)
            print(f"| {size}x{size} | {ort_s:.3f} s | {eager_s:.3f} s | {ort_s / eager_s:.2f} | {err:.1e} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
