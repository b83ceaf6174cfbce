"""Peak memory and time of ``iwin-seg predict`` from a phone photo to a 100-megapixel aerial tile (issue #13).

    .venv/bin/python benchmarks/bench_memory.py [--work DIR] [--cases 683x512,12MP,...] [--reps 5]

Run by hand, never in CI; it takes a while on 2 cores (the 10000x10000 sliding-window case runs 841
crops of 512x512: run it with nohup and poll).

Each case is one ``iwin-seg predict`` of a synthetic photo (smooth gradients and shapes, JPEG) with
Iwin-T UPerNet, fp32 on the CPU, its weights a random checkpoint in the authors' mmseg layout
(``tests/_official.py``; no network). The command runs in a worker process (``iwin_models.apps.cli.main``, as
the console script) under ``/usr/bin/time -f %M``: peak RSS of the whole command (decoding, model,
inference, PNG writing). The baseline is the code before issue #13 (``git show d92dce3:iwin_models/inference.py``
loaded as a module, and the decoder's concatenation it had) run in the same way, where its peak fits
(``--baseline-max-gb``; the issue measured 19.8 GB at 12 MP, more for the rest).

On the CPU the command runs the model converted by ``iwin_models.optimize_for_cpu`` (its default); the
baseline, whose models had their fast paths inside their forwards, is given the same converted model, so the two
differ only in their inference code. ``--no-fast`` (``IWIN_FAST_PATH=0`` in every worker) runs both plain.

The sliding-window case also reports the time of the inference against the sum of its crops'
forward passes (both measured inside the run: the encoder + decode head of every crop), and
``683x512`` the time of ``segment`` against the baseline's, timed in alternation in one process.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODEL = "iwin_tiny_upernet_ade20k"
BEFORE = "d92dce3"  # the last commit before issue #13's banded inference

# name: (width, height, extra options, the baseline's peak RSS in GB: as issue #13 measured it, or estimated)
CASES = {
    "683x512": (683, 512, [], 1.75),
    "683x512-aug": (683, 512, ["--aug"], 5.5),
    "3MP": (2000, 1500, [], 6.4),
    "12MP": (4000, 3000, [], 19.8),
    "24MP": (6000, 4000, [], 40.0),  # twice the 12 MP figure
    "12MP-aug": (4000, 3000, ["--aug"], 50.0),  # the issue's estimate
    "10000-slide": (10000, 10000, ["--slide", "--scale", "10000", "10000"], 60.0),  # 150 x 10^8 floats
}
MEASURED_IN_ISSUE = {"683x512", "683x512-aug", "3MP", "12MP"}
TARGETS_GB = {"12MP": 2.5, "24MP": 2.5, "12MP-aug": 4.0, "10000-slide": 4.0}


# --- inputs -----------------------------------------------------------------------------------------

def make_checkpoint(work: Path) -> Path:
    """A random Iwin-T UPerNet checkpoint in the authors' mmseg layout (the key manifest of the fixtures)."""
    import torch

    path = work / "iwin_tiny_upernet_random.pth"
    if not path.is_file():
        sys.path.insert(0, str(REPO / "tests"))
        from _official import official_upernet_checkpoint

        fixtures = Path(os.environ.get("IWIN_FIXTURES") or REPO.parent / "shared" / "fixtures")
        torch.save(official_upernet_checkpoint(fixtures / "keys" / f"{MODEL}.json"), path)
    return path


def make_photo(path: Path, width: int, height: int) -> Path:
    """A smooth synthetic photo (gradients, a few discs), written as a JPEG a band of rows at a time."""
    from PIL import Image

    if path.is_file():
        return path
    rgb = np.empty((height, width, 3), np.uint8)
    x = np.linspace(0, 1, width, dtype=np.float32)
    discs = np.random.default_rng(0).uniform(0, 1, (12, 3))
    for a in range(0, height, 512):
        y = np.linspace(a / height, min(a + 512, height) / height, min(512, height - a), dtype=np.float32)[:, None]
        shade = np.zeros((len(y), width), np.float32)
        for cx, cy, r in discs:
            shade += (np.hypot(x - cx, (y - cy) * height / width) < r * 0.2) * 0.3
        for c, (fx, fy) in enumerate([(1.0, 0.3), (0.4, 1.0), (0.7, 0.7)]):
            rgb[a:a + len(y), :, c] = np.clip(255 * (0.5 * (fx * x + fy * y) + shade), 0, 255)
    Image.fromarray(rgb).save(path, quality=90)
    return path


# --- the worker: one command, in this process ---------------------------------------------------------

def baseline_module(rev: str) -> types.ModuleType:
    """``iwin_models/inference.py`` as of ``rev``, importable (its relative imports made absolute)."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:iwin_models/inference.py"],
                            capture_output=True, text=True, check=True).stdout
    source = re.sub(r"^(\s*)from \.(\w*) import", lambda m: f"{m[1]}from iwin_models{'.' if m[2] else ''}{m[2]} import",
                    source, flags=re.M)
    module = types.ModuleType("iwin_inference_baseline")
    module.__file__ = str(REPO / "iwin_models" / "inference.py")
    exec(compile(source, f"{rev}:iwin_models/inference.py", "exec"), module.__dict__)
    return module


def fast() -> bool:
    from iwin_models.fast.config import use_fast_path

    return use_fast_path()


def as_run(model):
    """``model`` as the commands run it on the CPU: converted by ``optimize_for_cpu`` unless IWIN_FAST_PATH=0."""
    import iwin_models

    return iwin_models.optimize_for_cpu(model, inplace=False) if fast() else model


@contextlib.contextmanager
def baseline_decoder():
    """Within the block, the converted decoder fuses as before #13: its four maps resized to stride 4 and
    concatenated before the fusion conv (today's CPU twin convolves them a channel group at a time)."""
    import torch
    import torch.nn.functional as F

    from iwin_models.fast.upernet_cpu import CpuUPerNetDecoder

    def fuse_concatenated(self, maps):
        size = maps[0].shape[2:]
        resized = [m if m.shape[2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                   for m in maps]
        return self.fusion_block(torch.cat(resized, dim=1))

    grouped = CpuUPerNetDecoder._fuse_by_channel_groups
    CpuUPerNetDecoder._fuse_by_channel_groups = fuse_concatenated
    try:
        yield
    finally:
        CpuUPerNetDecoder._fuse_by_channel_groups = grouped


def timed_forwards() -> dict:
    """Seconds spent in the model's forward passes (encoder + decode head), summed, and their count."""
    from iwin_models.engine.bands import LowResForward

    spent = dict(seconds=0.0, passes=0)
    low_res_logits = LowResForward.__call__

    def timed(*args, **kwargs):
        t = time.perf_counter()
        out = low_res_logits(*args, **kwargs)
        spent["seconds"] += time.perf_counter() - t
        spent["passes"] += 1
        return out

    LowResForward.__call__ = timed
    return spent


def worker(which: str, rev: str, argv: list[str]) -> None:
    """Run ``iwin-seg predict argv`` (``which``: new, or the baseline at ``rev``); print what was timed."""
    import iwin_models.engine.inference as inference

    timings = dict(predict_seconds=0.0)
    spent = timed_forwards() if which == "new" else None
    module = inference if which == "new" else baseline_module(rev)
    name = "predict" if which == "new" else "segment"
    inner = getattr(module, name)

    def timed(*args, **kwargs):
        t = time.perf_counter()
        out = inner(*args, **kwargs)
        timings["predict_seconds"] += time.perf_counter() - t
        return out

    setattr(module, name, timed)
    t = time.perf_counter()
    if which == "new":
        from iwin_models.apps.cli import main
        rc = main(["predict", *argv])
    else:
        load_model = module.load_model
        module.load_model = lambda *args, **kwargs: as_run(load_model(*args, **kwargs))
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        with baseline_decoder():
            rc = module.run(parser.parse_args(argv))
    timings.update(rc=rc, command_seconds=time.perf_counter() - t, forwards=spent)
    print("BENCH " + json.dumps(timings), flush=True)


# --- the driver -----------------------------------------------------------------------------------------

def measure(which: str, name: str, work: Path, checkpoint: Path, rev: str) -> dict:
    width, height, extra, _ = CASES[name]
    photo = make_photo(work / f"photo_{width}x{height}.jpg", width, height)
    argv = [str(photo), "--model", MODEL, "--weights", str(checkpoint), "--out", str(work / f"out_{which}_{name}"),
            "--device", "cpu", *extra]
    cmd = ["/usr/bin/time", "-f", "PEAK_RSS_KB %M", sys.executable, str(Path(__file__).resolve()), "_worker",
           which, rev, *argv]
    print(f"[{time.strftime('%H:%M:%S')}] {which} {name}: {' '.join(cmd[4:])}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    rss = [line for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB")]
    bench = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    if proc.returncode != 0 or not rss or not bench:
        return dict(which=which, case=name, error=proc.stderr[-2000:])
    out = dict(which=which, case=name, peak_rss_gb=int(rss[-1].split()[1]) / 2 ** 20, **json.loads(bench[-1][6:]))
    print(f"    {json.dumps(out)}", flush=True)
    return out


def time_ade_size(work: Path, checkpoint: Path, rev: str, reps: int) -> dict:
    """Median seconds of ``segment`` on a 683x512 photo, new and baseline alternately (one process)."""
    import torch

    import iwin_models.engine.inference as inference
    from iwin_models.apps.cli.common import resolve_model

    baseline = baseline_module(rev)
    model = resolve_model(MODEL, str(checkpoint))
    image = inference.load_image(make_photo(work / "photo_683x512.jpg", 683, 512))
    converted = as_run(model)

    def old():
        with baseline_decoder():
            return baseline.segment(converted, image)

    runs = {"new": lambda: inference.segment(model, image), "baseline": old}  # segment() converts by itself
    times = {k: [] for k in runs}
    with torch.no_grad():
        agree = float((runs["new"]() == runs["baseline"]()).mean())  # also the warm-up; round-off of the decoder
        for _ in range(reps):
            for k, f in runs.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return dict(new_s=med["new"], baseline_s=med["baseline"], ratio=med["new"] / med["baseline"], reps=reps,
                same_labels=agree, all=times)


def table(results: list[dict], ade: dict | None) -> str:
    rows = ["| input | options | peak RSS before | peak RSS after | target | time before | time after |",
            "|---|---|---|---|---|---|---|"]
    by = {(r["which"], r["case"]): r for r in results}

    def rss(r):
        return f"{r['peak_rss_gb']:.2f} GB" if r and "peak_rss_gb" in r else "failed"

    def seconds(r):
        return f"{r['command_seconds']:.0f} s" if r and "command_seconds" in r else ""

    for name, (w, h, extra, issue_gb) in CASES.items():
        new, old = by.get(("new", name)), by.get(("baseline", name))
        if new is None:
            continue
        source = "issue #13" if name in MEASURED_IN_ISSUE else "estimate"
        before = rss(old) if old else f"not run ({source}: {issue_gb:g} GB)"
        target = f"<= {TARGETS_GB[name]:g} GB" if name in TARGETS_GB else ""
        rows.append(f"| {w}x{h} | {' '.join(extra) or 'whole'} | {before} | {rss(new)} | {target} | {seconds(old)} "
                    f"| {seconds(new)} |")
    slide = by.get(("new", "10000-slide"))
    if slide and slide.get("forwards"):
        f = slide["forwards"]
        rows.append(f"\n10000x10000 --slide: inference {slide['predict_seconds']:.0f} s, its {f['passes']} crops' "
                    f"forward passes {f['seconds']:.0f} s: {slide['predict_seconds'] / f['seconds']:.3f}x "
                    f"(target <= 1.1x)")
    if ade:
        rows.append(f"\n683x512 whole, segment(): {ade['new_s']:.2f} s vs {ade['baseline_s']:.2f} s before: "
                    f"{ade['ratio']:.3f}x (target <= 1.02x; medians of {ade['reps']}, alternating; "
                    f"{ade['same_labels']:.4%} of the pixels labelled alike)")
    return "\n".join(rows)


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "_worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/iwin_bench_memory", help="photos, checkpoint and outputs")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    p.add_argument("--baseline-rev", default=BEFORE, help="git revision of the code before (default: %(default)s)")
    p.add_argument("--baseline-max-gb", type=float, default=16.0, help="run the baseline where its peak fits")
    p.add_argument("--reps", type=int, default=5, help="alternating repetitions of the 683x512 timing (0: skip)")
    p.add_argument("--no-fast", action="store_true",
                   help="run the plain model in both, without optimize_for_cpu (sets IWIN_FAST_PATH=0)")
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args(argv)
    if args.no_fast:
        os.environ["IWIN_FAST_PATH"] = "0"  # the workers read it at import
        from iwin_models.fast.config import set_fast_path

        set_fast_path(False)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = make_checkpoint(work)
    ade = time_ade_size(work, checkpoint, args.baseline_rev, args.reps) if args.reps else None
    if ade:
        print(f"    683x512 timing: {json.dumps(ade)}", flush=True)
    results = []
    for name in args.cases.split(","):
        results.append(measure("new", name, work, checkpoint, args.baseline_rev))
        if CASES[name][3] <= args.baseline_max_gb:
            results.append(measure("baseline", name, work, checkpoint, args.baseline_rev))
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    text = table(results, ade)
    print(f"\nload average at the end: {' '.join(load)}\n{text}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(results=results, ade=ade, table=text), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
