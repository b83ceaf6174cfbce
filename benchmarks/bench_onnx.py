"""onnxruntime (CPU) latency of the dynamic ONNX graph vs PyTorch eager, Iwin-T UPerNet (run by hand).

    .venv/bin/python benchmarks/bench_onnx.py [--threads 2] [--sizes 512,1024] [--reps 5] [--static] [--no-fast]

One graph is exported from the plain model with free batch/height/width (``export_onnx(..., dynamic=True)``)
and serves every size. It is timed against the same model in PyTorch eager, converted by
``iwin_models.optimize_for_cpu`` (what ``segment()`` and the ``iwin-seg`` commands run on the CPU) and plain
(the definition the graph records), alternately in one loop of one process with the same thread count, after
a warm-up each. Reports the medians, onnxruntime / eager as ratios, and max |diff| / max |logit| between the
graph's output and the converted model's. ``--no-fast`` (or ``IWIN_FAST_PATH=0``) times the plain model only.
Random weights (the speed does not depend on them); input batch 1, 3 x size x size. About 4-6 minutes on 2
cores with the defaults (export ~30 s, then 6 passes of each candidate at 512 and at 1024).
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_cpu import timed_alternating  # noqa: E402

import iwin_models  # noqa: E402
from iwin_models.fast.config import use_fast_path  # noqa: E402
from iwin_models.interop.export import export_onnx  # noqa: E402
from iwin_models.models.segmenters import create_segmenter  # noqa: E402


def session_for(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def measure(eager: dict, session, size: int, reps: int) -> tuple[dict[str, float], float]:
    """({'onnxruntime': s, eager name: s, ...}, max |diff| / max |logit| against the first eager model) at
    batch 1, size x size."""
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
    feed = {"image": x.numpy()}
    expected = next(iter(eager.values()))(x)
    (got,) = session.run(["logits"], feed)
    err = ((torch.from_numpy(got) - expected).abs().max() / expected.abs().max()).item()
    fns = {"onnxruntime": lambda: session.run(["logits"], feed), **{k: (lambda m=m: m(x)) for k, m in eager.items()}}
    return timed_alternating(fns, reps=reps), err


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
    parser.add_argument("--no-fast", action="store_true",
                        help="eager is the plain model only, without optimize_for_cpu (as IWIN_FAST_PATH=0)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"# {datetime.datetime.now().isoformat(timespec='seconds')} torch {torch.__version__}, "
          f"python {platform.python_version()}, threads {args.threads}, loadavg {load}")

    torch.manual_seed(0)
    model = create_segmenter("iwin_tiny_upernet_ade20k", pretrained=False).eval()
    eager = eager_models(model, fast=not args.no_fast and use_fast_path())
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        by_size = sessions(model, sizes, args.static, args.threads, Path(tmp))  # the plain model's graph
        print(f"| size | onnxruntime ({'static' if args.static else 'dynamic'} graph) | "
              + " | ".join(f"eager {k}" for k in eager) + " | " + " | ".join(f"ort / eager {k}" for k in eager)
              + f" | max abs diff / max abs logit (vs eager {next(iter(eager))}) |")
        print("|---" * (2 + 2 * len(eager) + 1) + "|")
        for size in sizes:
            t, err = measure(eager, by_size[size], size, args.reps)
            print(f"| {size}x{size} | {t['onnxruntime']:.3f} s | " + " | ".join(f"{t[k]:.3f} s" for k in eager)
                  + " | " + " | ".join(f"{t['onnxruntime'] / t[k]:.2f}" for k in eager) + f" | {err:.1e} |",
                  flush=True)
    return 0


def eager_models(model, fast: bool) -> dict:
    """The PyTorch candidates: the converted model (sharing ``model``'s weights) when ``fast``, and the plain one."""
    converted = {"converted": iwin_models.optimize_for_cpu(model, inplace=False)} if fast else {}
    return {**converted, "plain": model}


if __name__ == "__main__":
    raise SystemExit(main())
