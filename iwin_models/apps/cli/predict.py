"""``iwin-seg predict``: segment images (files or folders) and write colour overlays and label PNGs.

Memory is bounded by the work, not the photo's size (see :func:`iwin_models.engine.inference.predict`).
Images are decoded by a thread ahead of the model. A file that cannot be read is reported (file and
reason) and skipped; every other image is written, and the command exits with status 2 at the end,
giving the number of failures. Outputs are written to a temporary file in the output folder and
renamed, so an interrupted run leaves no truncated PNG, and ``--skip-existing`` continues it. Under
``torchrun --nproc_per_node N`` the images are split across the processes (``rank::N``).

Where the results go (:func:`output_names`): images from one folder give ``OUT/<stem>_overlay.png`` and
``OUT/<stem>_labels.png``; images from several folders keep their folders under ``OUT``, relative to the
folder all of them are in (``a/x.jpg b/x.jpg --out o``: ``o/a/x_*.png``, ``o/b/x_*.png``); two images of
one folder with the same stem (``x.jpg``, ``x.png``) are named by their whole file name
(``x.jpg_overlay.png``). No two images ever write the same file, names compared without case (as macOS and
Windows do): a clash left over is refused, naming both, before any work.
"""
from __future__ import annotations

import os
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .common import (
    PRECISIONS,
    add_batch_options,
    add_model_arguments,
    add_precision_option,
    add_protocol_arguments,
    fast_model,
    resolve_model,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def add_arguments(parser) -> None:
    parser.add_argument("images", nargs="*", metavar="IMAGE",
                        help="image files or folders (default: the bundled sample photograph)")
    add_model_arguments(parser)
    parser.add_argument("--out", default="iwin_seg_out", help="output folder (default: %(default)s)")
    add_protocol_arguments(parser, scale_hint="; an aerial tile at its own resolution: its own size, "
                                              "e.g. --scale 10000 10000 --slide")
    add_precision_option(parser)
    add_batch_options(parser, outputs="overlay and label PNGs")


def expand_images(paths: Sequence[str | Path]) -> list[Path]:
    """The image files named, folders replaced by their images (sorted); errors for what is not there."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not found:
                raise FileNotFoundError(f"no images in folder {p}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no such image file or folder: {p}")
    return files


def unique_images(files: Sequence[Path]) -> list[Path]:
    """``files`` without repeats (one file named twice, or by a folder and by itself), in order."""
    seen, out = set(), []
    for f in files:
        key = os.path.normcase(os.path.abspath(f))
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def _folders(files: Sequence[Path]) -> list[Path]:
    """Each file's folder relative to the folder all of them are in (all ``.`` when they share one)."""
    parents = [Path(os.path.abspath(f)).parent for f in files]
    if len(set(parents)) <= 1:
        return [Path()] * len(files)
    try:
        common = Path(os.path.commonpath(parents))
    except ValueError as e:  # different drives: nothing to mirror from
        raise ValueError(f"cannot mirror the folders of {files[0]} and {files[-1]} under --out ({e}): "
                         f"run them separately") from None
    return [p.relative_to(common) for p in parents]


def output_names(files: Sequence[Path], endings: Sequence[str] = ("_overlay.png", "_labels.png")) -> dict[Path, Path]:
    """Each image -> where its results go under ``--out``, without the ``endings`` of its files (``iwin-det
    predict``: ``_overlay.png`` and ``.json``; see the module docstring); a ValueError naming both images if two
    would still write the same file."""
    folders = _folders(files)
    # compared without case: X.jpg and x.jpg would write one file on macOS and Windows (and on their shares)
    stems = Counter((folder, f.stem.casefold()) for folder, f in zip(folders, files))
    names, writer = {}, {}
    for folder, f in zip(folders, files):
        name = folder / (f.stem if stems[folder, f.stem.casefold()] == 1 else f.name)
        other = writer.setdefault(str(name).casefold(), f)
        if other != f:
            raise ValueError(f"{other} and {f} would both write {' and '.join(f'{name}{e}' for e in endings)}: "
                             f"rename one or run them separately")
        names[f] = name
    return names


def outputs(out: Path, target: Path) -> tuple[Path, Path]:
    """The overlay and label PNG written for the image whose results go to ``target`` (:func:`output_names`)."""
    return out / f"{target}_overlay.png", out / f"{target}_labels.png"


def save_atomic(picture, path: Path) -> None:
    """``picture.save(path)`` as a PNG, through a temporary file in the same folder and a rename."""
    from ...io.files import write_atomic

    write_atomic(path, lambda tmp: picture.save(tmp, format="PNG"))


def _read(path: Path) -> tuple[np.ndarray | None, str | None]:
    from ...io.images import load_image

    try:
        return load_image(path), None
    except (ValueError, TypeError, OSError) as e:  # unreadable, corrupt, too large, gone
        return None, str(e)


def decoded(files: Sequence[Path], ahead: int = 2) -> Iterator[tuple[Path, np.ndarray | None, str | None]]:
    """``(path, image, None)`` or ``(path, None, reason)`` for each file, decoded by a thread ``ahead``
    images in advance (PIL decodes without the GIL, so decoding overlaps the model)."""
    if ahead <= 0:
        yield from ((f, *_read(f)) for f in files)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="iwin-decode") as pool:
        queue, rest = deque(), iter(files)
        for f in rest:
            queue.append((f, pool.submit(_read, f)))
            if len(queue) > ahead:
                done, job = queue.popleft()
                yield (done, *job.result())
        while queue:
            done, job = queue.popleft()
            yield (done, *job.result())


def write_outputs(out: Path, target: Path, image: np.ndarray, labels: np.ndarray, names, palette) -> None:
    """The overlay and the label PNG of one image, to :func:`outputs` ``(out, target)`` (folders made)."""
    from PIL import Image

    from ..visualize import overlay

    overlay_path, labels_path = outputs(out, target)
    overlay_path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(overlay(image, labels, names, palette), overlay_path)
    save_atomic(Image.fromarray(labels), labels_path)  # class index per pixel (uint8, or uint16 over 256 classes)


def _check(args) -> None:
    if min(args.scale) < 1:
        raise ValueError(f"--scale must be positive, got {' '.join(map(str, args.scale))}")
    if args.prefetch < 0:
        raise ValueError(f"--prefetch must be 0 or more, got {args.prefetch}")


def segment_files(model, files: Sequence[Path], out: Path, args, progress: bool = True,
                  report_each: bool = True, targets: Mapping[Path, Path] | None = None) -> list[tuple[str, str]]:
    """Segment ``files`` into ``out`` (each to its ``targets`` entry, default :func:`output_names`); the (file,
    reason) of each one that could not be read (reported on stderr as it happens with ``report_each``)."""
    from tqdm import tqdm

    from ...data import ade20k
    from ...engine.inference import predict

    names = model.class_names or [f"class {i}" for i in range(model.num_classes)]
    palette = model.palette or ade20k.PALETTE
    labels_dtype = np.uint8 if model.num_classes <= 256 else np.uint16
    targets = output_names(files) if targets is None else targets
    failed = []
    bar = tqdm(decoded(files, args.prefetch), total=len(files), desc="segmenting", unit="img", dynamic_ncols=True,
               disable=not progress or len(files) < 2)
    for path, image, error in bar:
        if error is not None:
            failed.append((str(path), error))
            if report_each:
                tqdm.write(f"iwin-seg predict: skipped {path}: {error}", file=sys.stderr)
            continue
        labels = predict(model, image, aug=args.aug, slide=args.slide, dtype=PRECISIONS[args.precision],
                         scale=tuple(args.scale), labels_dtype=labels_dtype, fast=False)  # fast_model decided
        write_outputs(out, targets[path], image, labels, names, palette)
        del image, labels
        overlay_path, labels_path = outputs(out, targets[path])
        tqdm.write(f"{path} -> {overlay_path}, {labels_path}")
    return failed


def output_folder(out: str | Path) -> Path:
    """``--out`` as a folder path; made with the first result, so a run that fails to start leaves no empty
    folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a folder")
    return out


def predict_files(args, files: Sequence[Path], load: Callable, work: Callable, done: Callable[[Path], bool],
                  what: str) -> tuple[list, int]:
    """What every process of a predict command runs (one process, or each of torchrun's): start the process
    group, ``load(device)`` the model, take this process's share of ``files`` (less those ``done`` with
    ``--skip-existing``), ``work(model, mine, progress)`` -> the failed ``(file, reason)``; a failure in one
    process ends them all (``what`` names it); returns the failures of every process and this process's rank."""
    import torch.distributed as dist

    from ...engine.distributed import gather, init_distributed, raise_if_any_failed, world

    device, started = init_distributed(args.device)
    try:
        rank, world_size = world()
        model = load(device)
        mine = [f for f in files[rank::world_size] if not (args.skip_existing and done(f))]
        error, failed = None, []
        try:
            failed = work(model, mine, not args.no_progress and rank == 0)
        except Exception as e:  # the other processes must not wait for this one at the gather
            error = e
        raise_if_any_failed(error, what)
        return [f for part in gather(failed) for f in part], rank
    finally:
        if started:
            dist.destroy_process_group()


def run(args) -> int:
    from ...data import SAMPLE_IMAGE

    _check(args)
    files = unique_images(expand_images(args.images)) if args.images else [SAMPLE_IMAGE]
    targets = output_names(files)  # every process the same, before any work
    out = output_folder(args.out)
    failed, rank = predict_files(
        args, files, load=lambda device: fast_model(resolve_model(args.model, args.weights, device=device), args.fast),
        work=lambda model, mine, progress: segment_files(model, mine, out, args, progress=progress,
                                                         report_each=len(files) > 1, targets=targets),
        done=lambda f: all(p.is_file() for p in outputs(out, targets[f])), what="iwin-seg predict")
    if not failed:
        return 0
    if rank == 0:
        detail = f": {failed[0][1]}" if len(failed) == 1 else f" (see above); the others are in {out}"
        print(f"iwin-seg predict: error: {len(failed)} of {len(files)} images could not be read{detail}",
              file=sys.stderr)
    return 2
