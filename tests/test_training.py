"""Training: learning on a synthetic data set, exact resume after SIGKILL, atomic checkpoints, the
fine-tuning example, AdamW groups and the lr schedule, torchrun (2 CPU processes) and its restarts."""
from __future__ import annotations

import contextlib
import errno
import io
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iwin_models.apps.cli import train as train_cli
from iwin_models.engine import training
from iwin_models.engine.training.runlog import read_history
from iwin_models.extras import missing
from iwin_models.models.upernet import IwinUPerNet

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["background", "square", "disc", "triangle"]
COLOURS = {1: (220, 40, 40), 2: (40, 200, 60), 3: (40, 60, 220)}
TINY = dict(encoder_name="iwin_tiny", encoder_kwargs=dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
                                                          drop_path_rate=0.1),
            decoder_channels=64, aux_channels=32, classes=len(CLASSES))


def _shapes_image(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A noisy two-tone background with up to three coloured shapes; the label map is exact."""
    yy, xx = np.mgrid[:size, :size]
    base = rng.integers(90, 170, size=3)
    image = base + (xx[..., None] / size * rng.integers(-40, 40, size=3))
    label = np.zeros((size, size), np.uint8)
    for cls in rng.permutation([1, 2, 3])[:rng.integers(1, 4)]:
        r = rng.integers(8, 16)
        cy, cx = rng.integers(r, size - r, size=2)
        if cls == 1:
            mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        elif cls == 2:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            mask = (yy >= cy - r) & (yy <= cy + r) & (abs(xx - cx) <= (yy - (cy - r)) / 2)
        image[mask] = COLOURS[cls]
        label[mask] = cls
    image = image + rng.normal(0, 12, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def _write_set(folder: Path, n: int, seed: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    images, labels = folder / "images", folder / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    for i in range(n):
        image, label = _shapes_image(rng)
        Image.fromarray(image).save(images / f"{i:03d}.png")
        Image.fromarray(label).save(labels / f"{i:03d}.png")
    return images, labels


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("shapes")
    train_images, train_labels = _write_set(root / "train", 16, seed=0)
    val_images, val_labels = _write_set(root / "val", 8, seed=1)
    return dict(images=train_images, labels=train_labels, val_images=val_images, val_labels=val_labels)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "model"
    IwinUPerNet(**TINY).save_pretrained(folder)
    return folder


def _train_args(shapes, model: Path, work_dir: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--images", str(shapes["images"]), "--labels", str(shapes["labels"]),
            "--class-names", ",".join(CLASSES), "--crop-size", "64", "--scale", "64", "64",
            "--batch-size", "2", "--workers", "0", "--val-interval", "0", "--no-progress",
            "--work-dir", str(work_dir), *extra]


def _miou(model, images: Path, labels: Path) -> tuple[float, float]:
    """(mIoU of the model, chance: the better of always-majority and uniform random guessing)."""
    from iwin_models.data.ade20k import MEAN, STD

    n = len(CLASSES)
    inter, union, counts = np.zeros(n), np.zeros(n), np.zeros(n)
    model.eval()
    for path in sorted(images.iterdir()):
        image = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).astype(np.float32))
        label = np.asarray(Image.open(labels / path.name)).astype(np.int64)
        x = ((image - torch.tensor(MEAN)) / torch.tensor(STD)).permute(2, 0, 1)[None]
        with torch.no_grad():
            pred = model(x).argmax(1)[0].numpy()
        for c in range(n):
            inter[c] += ((pred == c) & (label == c)).sum()
            union[c] += ((pred == c) | (label == c)).sum()
            counts[c] += (label == c).sum()
    p = counts / counts.sum()
    majority = p.max() / n
    uniform = np.mean(p / n / (p + 1 / n - p / n))
    return float(np.mean(inter / np.maximum(union, 1))), float(max(majority, uniform))


# (a) ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_training_learns_the_shapes(shapes, tiny_folder, tmp_path, capsys):
    steps = 200
    work = tmp_path / "run"
    rc = train_cli.main(_train_args(shapes, tiny_folder, work, "--iters", str(steps), "--lr", "1e-3",
                                   "--warmup-iters", "20", "--batch-size", "4", "--checkpoint-interval", "0",
                                   "--val-interval", str(steps), "--val-images", str(shapes["val_images"]),
                                   "--val-labels", str(shapes["val_labels"]), "--val-scale", "64", "64"))
    out = capsys.readouterr().out
    assert rc == 0, out
    model = IwinUPerNet.from_pretrained(work / "final")
    assert model.class_names == CLASSES
    miou, chance = _miou(model, shapes["val_images"], shapes["val_labels"])
    print(f"\nsynthetic shapes after {steps} CPU steps: val mIoU {miou:.3f} vs chance {chance:.3f}")
    with capsys.disabled():
        print(f"\n[test_training] mIoU {miou:.3f} after {steps} steps (chance {chance:.3f})")
    assert miou > 2 * chance, (miou, chance)
    assert "validation at iteration 200: mIoU" in out


# (b) ---------------------------------------------------------------------------------------------

def _command(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "examples" / "train_ade20k.py"), *args]


_RESUME_ITERS, _RESUME_EVERY = 12, 4
_RESUME_COMMON = ["--iters", str(_RESUME_ITERS), "--checkpoint-interval", str(_RESUME_EVERY), "--lr", "1e-3",
                  "--warmup-iters", "3", "--deterministic", "--seed", "3"]
_RESUME_ENV = dict(os.environ, OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="session")
def unbroken_run(shapes, tiny_folder, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("unbroken")
    subprocess.run(_command(*_train_args(shapes, tiny_folder, work, *_RESUME_COMMON)), check=True, env=_RESUME_ENV,
                   stdout=subprocess.DEVNULL, timeout=300)
    return work


@pytest.mark.slow
# killed on a checkpoint (8: one that replaced the previous) or between two (6: resumed from 4, the work since
# redone); a kill on the first checkpoint (4) took the same path as on 8 and is not a case of its own
@pytest.mark.parametrize("trigger", ["iter 6/12 ", "checkpoint: iteration 8 "],
                         ids=["between-checkpoints", "at-checkpoint-8"])
def test_resume_after_sigkill_is_bit_identical(shapes, tiny_folder, unbroken_run, tmp_path, trigger):
    """SIGKILL at several points (on a checkpoint, or between two: the work since is redone), resume:
    the same weights as a run never stopped."""
    iters, every = _RESUME_ITERS, _RESUME_EVERY
    broken = tmp_path / "broken"
    broken.mkdir()
    out_file = tmp_path / "stdout.txt"
    with open(out_file, "w") as out:
        proc = subprocess.Popen(
            _command(*_train_args(shapes, tiny_folder, broken, *_RESUME_COMMON, "--log-interval", "1")),
            env=_RESUME_ENV, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            log = broken / "train.log"
            seen = out_file.read_text() + (log.read_text() if log.exists() else "")
            if trigger in seen:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, out_file.read_text()
    killed_at = torch.load(broken / "latest.pth", weights_only=True)["iteration"]
    assert every <= killed_at < iters and not (broken / "final").exists()

    resumed = subprocess.run(_command(*_train_args(shapes, tiny_folder, broken, *_RESUME_COMMON, "--resume")),
                             env=_RESUME_ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed from {broken / 'latest.pth'} at iteration {killed_at}" in resumed.stdout
    # the killed run's rows after its checkpoint are gone; the resumed run logs at its own interval (50: the end)
    assert _steps(read_history(broken / "scalars.jsonl"), "train/loss") == [*range(1, killed_at + 1), iters]

    a = torch.load(unbroken_run / "latest.pth", weights_only=True)
    b = torch.load(broken / "latest.pth", weights_only=True)
    assert a["iteration"] == b["iteration"] == iters
    assert a["model"].keys() == b["model"].keys()
    different = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    final_a = IwinUPerNet.from_pretrained(unbroken_run / "final").state_dict()
    final_b = IwinUPerNet.from_pretrained(broken / "final").state_dict()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    print(f"\nresume after SIGKILL at iteration {killed_at} of {iters}: {len(a['model'])} tensors bit-identical")


# (c) ---------------------------------------------------------------------------------------------

_RUN_LOG = ("scalars.jsonl", "tf_logs", "curves.png")  # the run log's (tests/test_runlog.py)


@pytest.mark.slow
def test_full_disk_keeps_the_previous_checkpoint(shapes, tiny_folder, tmp_path, monkeypatch, capsys):
    work = tmp_path / "run"
    real_save = torch.save
    before = {}

    def failing_save(obj, f, *args, **kwargs):
        if "iteration" in obj and obj["iteration"] == 2:
            return real_save(obj, f, *args, **kwargs)
        before["bytes"] = (work / "latest.pth").read_bytes()
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])  # half written, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", failing_save)
    rc = train_cli.main(_train_args(shapes, tiny_folder, work, "--iters", "4", "--checkpoint-interval", "2"))
    err = capsys.readouterr().err
    assert rc == 2
    assert "could not write checkpoint" in err and "No space left on device" in err and "intact" in err
    assert (work / "latest.pth").read_bytes() == before["bytes"]
    checkpoint = training.load_checkpoint(work / "latest.pth")
    assert checkpoint["iteration"] == 2
    assert sorted(p.name for p in work.iterdir() if p.name not in _RUN_LOG) == ["latest.pth", "train.log"]  # no .tmp

    # a failure at fsync (delayed allocation) is handled the same way
    monkeypatch.setattr(torch, "save", real_save)

    def failing_fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="intact") as info:
        training.save_checkpoint({"x": torch.ones(3)}, work / "latest.pth")
    assert info.value.errno == errno.ENOSPC
    assert (work / "latest.pth").read_bytes() == before["bytes"]
    assert sorted(p.name for p in work.iterdir() if p.name not in _RUN_LOG) == ["latest.pth", "train.log"]


# (d) ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_finetune_example_runs(tmp_path):
    out = tmp_path / "finetuned"
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "finetune_own_loop.py"), "--tiny", "--no-pretrained",
         "--steps", "3", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    model = IwinUPerNet.from_pretrained(out).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 48, 40))
    assert logits.shape == (1, model.num_classes, 48, 40)


# (e) ---------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")
def test_param_groups_and_lr_schedule():
    model = IwinUPerNet(**TINY)
    optimizer = training.build_optimizer(model)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["lr"] == 6e-5
    free = {id(p) for p in no_decay["params"]}
    norms = (torch.nn.LayerNorm, torch.nn.BatchNorm2d)
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, norms) or name == "bias" or p.ndim <= 1:
                assert id(p) in free, f"{module_name}.{name} is decayed"
            else:
                assert id(p) not in free, f"{module_name}.{name} is not decayed"
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())

    iters, warmup, base = 160000, 1500, 6e-5
    scheduler = training.build_scheduler(optimizer, iters)
    lrs = {0: optimizer.param_groups[0]["lr"]}
    for t in range(1, warmup + 1):
        scheduler.step()
        if t in (750, warmup):
            lrs[t] = optimizer.param_groups[0]["lr"]
    assert math.isclose(lrs[0], base * 1e-6, rel_tol=1e-9)
    poly750 = 1 - 750 / iters
    assert math.isclose(lrs[750], base * poly750 * (1 - 0.5 * (1 - 1e-6)), rel_tol=1e-9)
    assert math.isclose(lrs[warmup], base * (1 - warmup / iters), rel_tol=1e-9)
    assert all(g["lr"] == lrs[warmup] for g in optimizer.param_groups)
    assert training.lr_factor(iters, iters) == 0.0
    assert math.isclose(training.lr_factor(iters - 1, iters), 1 / iters, rel_tol=1e-9)

    short = training.build_scheduler(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=base), 2000)
    for _ in range(2000):
        short.step()
    assert short.get_last_lr() == [0.0]


def _parser():
    import argparse

    parser = argparse.ArgumentParser(prog="iwin-seg train")
    train_cli.add_arguments(parser)
    return parser


def test_cli_options_are_the_fields_of_the_config_and_the_build_options(capsys):
    """``iwin-seg train``'s options are made from TrainConfig (the Trainer's) and BuildOptions (the
    command's) fields: each field is one option with the field's default, and nothing else is."""
    import dataclasses

    parser = _parser()
    args = parser.parse_args([])
    assert train_cli.config_from_args(args) == training.TrainConfig()
    assert train_cli.options_from_args(args) == train_cli.BuildOptions()
    config_fields = {f.name for f in dataclasses.fields(training.TrainConfig)}
    build_fields = {f.name for f in dataclasses.fields(train_cli.BuildOptions)}
    assert not config_fields & build_fields and {"model", "data_root", "crop_size"} <= build_fields
    assert {"iters", "lr", "precision", "work_dir", "batch_size"} <= config_fields
    options = {a.dest for a in parser._actions if a.dest != "help"}
    assert options == config_fields | build_fields | {"fast"}
    assert all(f.metadata["help"] for f in dataclasses.fields(training.TrainConfig))

    config = train_cli.config_from_args(parser.parse_args(["--val-scale", "64", "48", "--resume", "--precision",
                                                           "bf16", "--iters", "7", "--clip-grad", "1.5"]))
    assert (config.val_scale, config.resume, config.precision, config.iters, config.clip_grad) == (
        (64, 48), "auto", "bf16", 7, 1.5)
    options = train_cli.options_from_args(parser.parse_args(["--scale", "64", "48", "--no-pretrained-backbone"]))
    assert options.scale == (64, 48) and options.no_pretrained_backbone and options.crop_size == 512
    assert capsys.readouterr().err == ""


def test_the_command_s_recipe_defaults_are_the_library_s():
    """``iwin-seg train`` restates no default of the recipe: the drop path, the training resize ratio, crop and
    scale are the library's (one named home each), as the aux head's width is the model's."""
    import inspect

    from iwin_models.data import transforms
    from iwin_models.models import segmenters
    from iwin_models.models.upernet import AUX_CHANNELS, IwinUPerNet

    options = train_cli.BuildOptions()
    for function in (transforms.build_train_transform, transforms.TrainTransform):
        defaults = {k: v.default for k, v in inspect.signature(function).parameters.items()}
        assert (options.ratio_range, options.crop_size, options.scale) == (
            defaults["ratio_range"], defaults["crop_size"], defaults["scale"]), function
    assert options.ratio_range == transforms.RATIO_RANGE == (0.5, 2.0)
    assert options.crop_size == transforms.CROP_SIZE == 512
    assert options.drop_path == segmenters.DROP_PATH_RATE == 0.3
    assert inspect.signature(IwinUPerNet).parameters["aux_channels"].default == AUX_CHANNELS == 256
    source = (REPO / "iwin_models" / "apps" / "cli" / "train.py").read_text()
    assert not re.search(r"\b(0\.3|0\.5, 2\.0|512|256)\b", source), "the command writes a recipe value itself"


def test_config_validation_names_the_bad_field():
    for bad, message in [(dict(iters=0), "--iters must be positive"), (dict(log_interval=0), "--log-interval must"),
                         (dict(workers=-1), "--workers must not be negative"),
                         (dict(precision="fp8"), "--precision must be one of fp32, bf16, fp16")]:
        with pytest.raises(ValueError, match=message):
            training.TrainConfig(**bad).validate()
    with pytest.raises(ValueError, match="--crop-size must be positive"):
        train_cli.BuildOptions(crop_size=0).validate()
    with pytest.raises(TypeError, match="amp"):
        training.TrainConfig(amp="none")  # one spelling: precision=


class _Squares(torch.utils.data.Dataset):
    """Normalised noise with a class-coloured square: (3, 64, 64) float, (64, 64) int64."""

    def __len__(self):
        return 6

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        image, label = torch.randn(3, 64, 64, generator=g), torch.zeros(64, 64, dtype=torch.long)
        cls = 1 + i % 3
        image[:, 8:40, 16:48] += cls
        label[8:40, 16:48] = cls
        return image, label


@pytest.mark.slow
def test_trainer_on_plain_objects_resumes_exactly(tmp_path):
    """The library without the command: a built model and a data set; a Trainer resumed (in this process)
    from an intermediate iter_N.pth ends with the same weights as the run it came from."""
    config = dict(iters=3, batch_size=2, workers=0, lr=1e-3, warmup_iters=1, checkpoint_interval=1,
                  keep_checkpoints=3, val_interval=0, log_interval=1, no_progress=True, seed=3)
    torch.manual_seed(0)
    first = training.Trainer(IwinUPerNet(**TINY), _Squares(), training.TrainConfig(work_dir=str(tmp_path / "a"),
                                                                                  **config))
    result = first.fit()
    assert result["iterations"] == 3 and math.isfinite(result["loss"]) and result["rank"] == 0
    a = training.load_checkpoint(tmp_path / "a" / "latest.pth")
    assert a["format"] == "iwin-seg-train/1" and a["iteration"] == 3 and a["args"]["iters"] == 3
    assert sorted(p.name for p in (tmp_path / "a").glob("iter_*.pth")) == ["iter_1.pth", "iter_2.pth", "iter_3.pth"]

    torch.manual_seed(1)  # other initial weights: the checkpoint must replace them all
    resumed = training.Trainer(IwinUPerNet(**TINY), _Squares(), training.TrainConfig(
        work_dir=str(tmp_path / "b"), resume=str(tmp_path / "a" / "iter_1.pth"), **config))
    assert resumed.fit()["iterations"] == 3
    b = training.load_checkpoint(tmp_path / "b" / "latest.pth")
    different = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"

    images, labels = next(iter(torch.utils.data.DataLoader(_Squares(), batch_size=2)))
    before = {k: v.clone() for k, v in first.model.state_dict().items()}
    loss = training.train_step(first.model, images, labels, first.optimizer, aux_weight=0.0)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    assert any(not torch.equal(before[k], v) for k, v in first.model.state_dict().items())  # it stepped


def test_train_step_can_return_the_weighted_aux_term():
    """``return_aux=True``: the loss and its auxiliary term (weighted, detached), for the run log; the loss
    is the one ``segmentation_loss`` gives, to the bit."""
    g = torch.Generator().manual_seed(0)
    logits, aux_logits = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    labels = torch.randint(0, 4, (2, 8, 8), generator=g)
    decode, aux = training.segmentation_losses(logits, aux_logits, labels, aux_weight=0.4)
    assert torch.equal(decode + aux, training.segmentation_loss(logits, aux_logits, labels, aux_weight=0.4))
    assert torch.allclose(aux, 0.4 * torch.nn.functional.cross_entropy(aux_logits, labels))
    assert training.segmentation_losses(logits, None, labels, aux_weight=0.0)[1] is None

    torch.manual_seed(0)
    model = IwinUPerNet(**TINY)
    optimizer = training.build_optimizer(model, lr=0.0)  # lr 0: the second call sees the same weights
    images, labels = next(iter(torch.utils.data.DataLoader(_Squares(), batch_size=2)))
    torch.manual_seed(1)  # the same drop-path draws
    plain = training.train_step(model, images, labels, optimizer)
    torch.manual_seed(1)
    loss, aux = training.train_step(model, images, labels, optimizer, return_aux=True)
    assert torch.equal(loss, plain) and aux.ndim == 0 and not aux.requires_grad and 0 < aux.item() < loss.item()
    assert training.train_step(model, images, labels, optimizer, aux_weight=0.0, return_aux=True)[1] is None


class _ValSquares(_Squares):
    """_Squares as evaluate() reads a validation set: (uint8 (H, W, 3), int64 (H, W))."""

    def __getitem__(self, i):
        image, label = super().__getitem__(i)
        return (image.clamp(-2, 2) * 60 + 128).to(torch.uint8).permute(1, 2, 0).numpy(), label.numpy()


_RUN_LOG_CONFIG = dict(iters=4, batch_size=2, workers=0, lr=1e-3, warmup_iters=1, checkpoint_interval=2,
                       keep_checkpoints=2, val_interval=2, val_scale=(64, 64), log_interval=1, no_progress=True, seed=3)


def _steps(rows: list[dict], tag: str) -> list[int]:
    return [r["step"] for r in rows if tag in r]


def _events(work: Path, tag: str) -> list:
    """The scalar events of ``tag`` in ``work``'s TensorBoard files, as TensorBoard shows them (purges done)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(work / "tf_logs"))
    events.Reload()
    return events.Scalars(tag)


def _event_steps(work: Path, tag: str) -> list[int]:
    return [e.step for e in _events(work, tag)] if not missing("tensorboard") else _steps(
        read_history(work / "scalars.jsonl"), tag)  # without tensorboard: the history stands in


def _event_values(work: Path, tag: str) -> list[float]:
    return [e.value for e in _events(work, tag)]


def _next_second() -> None:
    """Wait for the clock's next second: TensorBoard reads event files in name order, which starts with the
    second a writer opened (a run resumed in the same second as its crash is a test's artefact)."""
    began = int(time.time())
    while int(time.time()) == began:
        time.sleep(0.02)


@pytest.mark.slow
def test_the_run_log_of_a_resumed_run_has_each_step_once(tmp_path):
    """A run to 4 (checkpoints at 2 and 4, log every step, validation at 2 and 4) resumed from its iteration-2
    checkpoint, as after a crash past it: the history, TensorBoard and curves.png show steps 1..4 once, with
    the values of the unbroken run (the resume is exact: test_trainer_on_plain_objects_resumes_exactly)."""
    work = tmp_path / "run"
    config = training.TrainConfig(work_dir=str(work), **_RUN_LOG_CONFIG)
    torch.manual_seed(0)
    training.Trainer(IwinUPerNet(**TINY), _Squares(), config, _ValSquares()).fit()
    unbroken = read_history(work / "scalars.jsonl")
    assert _steps(unbroken, "train/loss") == [1, 2, 3, 4] and _steps(unbroken, "val/mIoU") == [2, 4]
    assert (work / "curves.png").is_file()

    _next_second()
    torch.manual_seed(1)
    resumed = training.Trainer(IwinUPerNet(**TINY), _Squares(), training.TrainConfig(
        work_dir=str(work), resume=str(work / "iter_2.pth"), **_RUN_LOG_CONFIG), _ValSquares())
    resumed.fit()
    rows = read_history(work / "scalars.jsonl")
    for tag in ("train/loss", "train/decode_loss", "train/aux_loss", "train/lr", "train/throughput"):
        assert _steps(rows, tag) == [1, 2, 3, 4], tag
    assert _steps(rows, "val/mIoU") == _steps(rows, "val/aAcc") == [2, 4]
    without_time = [{k: v for k, v in r.items() if k != "train/throughput"} for r in rows]
    assert without_time == [{k: v for k, v in r.items() if k != "train/throughput"} for r in unbroken]
    last = [r for r in rows if "train/loss" in r][-1]
    assert last["train/aux_loss"] > 0 and last["train/loss"] == pytest.approx(
        last["train/decode_loss"] + last["train/aux_loss"])

    if not missing("tensorboard"):
        for tag in ("train/loss", "train/lr", "val/mIoU"):
            assert _event_steps(work, tag) == _steps(rows, tag), tag
            assert _event_values(work, tag) == pytest.approx([r[tag] for r in rows if tag in r], rel=1e-6)
    assert (work / "curves.png").stat().st_mtime >= (work / "iter_4.pth").stat().st_mtime - 1


@pytest.mark.slow
def test_a_run_without_the_report_extra_says_so_once_and_goes_on(tmp_path, monkeypatch):
    for module in ("tensorboard", "matplotlib"):
        monkeypatch.setitem(sys.modules, module, None)  # not importable, as where the extra is not installed
    config = training.TrainConfig(work_dir=str(tmp_path), **dict(_RUN_LOG_CONFIG, iters=2, checkpoint_interval=0,
                                                                 keep_checkpoints=0))
    torch.manual_seed(0)
    assert training.Trainer(IwinUPerNet(**TINY), _Squares(), config, _ValSquares()).fit()["iterations"] == 2
    log = (tmp_path / "train.log").read_text()
    assert log.count("pip install 'iwin-models[report]'") == 2  # tensorboard, matplotlib: once each
    assert log.count("tensorboard is not installed") == 1 and log.count("matplotlib is not installed") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final", "latest.pth", "scalars.jsonl", "train.log"]


@pytest.mark.slow
def test_only_rank_0_writes_the_run_log(tmp_path, monkeypatch):
    """A process of another rank writes no file of its own: no log, history, event file or curves."""
    # rank 1, alone: the loop runs, no collective
    monkeypatch.setattr("iwin_models.engine.training.trainer.world", lambda: (1, 1))
    config = training.TrainConfig(work_dir=str(tmp_path / "run"), **dict(_RUN_LOG_CONFIG, iters=2))
    torch.manual_seed(0)
    trainer = training.Trainer(IwinUPerNet(**TINY), _Squares(), config, _ValSquares())
    assert trainer.rank == 1 and trainer.fit()["iterations"] == 2
    assert not (tmp_path / "run").exists()


def test_nan_images_are_refused_before_the_step(tmp_path):
    """The model reads no values (no per-forward sync): the Trainer refuses a NaN/Inf batch on the host,
    before it reaches the weights."""
    class Poisoned(_Squares):
        def __getitem__(self, i):
            image, label = super().__getitem__(i)
            image[0, 3, 3] = float("nan") if i == 4 else image[0, 3, 3]
            return image, label

    torch.manual_seed(0)
    model = IwinUPerNet(**TINY)
    config = training.TrainConfig(iters=6, batch_size=2, workers=0, val_interval=0, checkpoint_interval=1,
                                  no_progress=True, work_dir=str(tmp_path), seed=0)
    trainer = training.Trainer(model, Poisoned(), config)
    with pytest.raises(ValueError, match=r"the input holds NaN or Inf values \(the batch of iteration \d\)"):
        trainer.fit()
    last = training.load_checkpoint(tmp_path / "latest.pth")
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _global_state() -> dict:
    """The process-wide state a Trainer must leave alone."""
    import random

    return dict(deterministic=torch.are_deterministic_algorithms_enabled(),
                cudnn=(torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic),
                torch_rng=torch.get_rng_state(), numpy_rng=np.random.get_state()[1].copy(),
                python_rng=random.getstate(), process_group=torch.distributed.is_initialized(),
                cublas=os.environ.get("CUBLAS_WORKSPACE_CONFIG"))


def _assert_same_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key in before:
        a, b = before[key], after[key]
        same = torch.equal(a, b) if isinstance(a, torch.Tensor) else np.array_equal(a, b) \
            if isinstance(a, np.ndarray) else a == b
        assert same, key


@pytest.mark.parametrize("deterministic", [False, True])
def test_constructing_a_trainer_has_no_global_side_effect(tmp_path, deterministic):
    """Process group, determinism flags and seeding are setup()'s; a Trainer changes none (nor makes its
    work_dir) until fit()."""
    model = IwinUPerNet(**TINY)
    torch.rand(5)  # some state of its own
    before = _global_state()
    config = training.TrainConfig(work_dir=str(tmp_path / "run"), deterministic=deterministic, seed=5, workers=0)
    warns = pytest.warns(UserWarning, match=r"call iwin_models.engine.training.setup\(config\) first") \
        if deterministic \
        else contextlib.nullcontext()
    with warns:
        trainer = training.Trainer(model, _Squares(), config)
    _assert_same_state(before, _global_state())
    assert trainer.device == torch.device("cpu") and (trainer.rank, trainer.world_size) == (0, 1)
    assert not (tmp_path / "run").exists()


def test_setup_sets_the_process_up():
    import random

    cudnn = torch.backends.cudnn
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             cudnn.benchmark, cudnn.deterministic, torch.get_rng_state(), np.random.get_state(), random.getstate())
    try:
        device = training.setup(training.TrainConfig(deterministic=True, seed=7, device="cpu"))
        assert device == torch.device("cpu") and not torch.distributed.is_initialized()  # one process: no group
        assert torch.are_deterministic_algorithms_enabled() and cudnn.deterministic and not cudnn.benchmark
        drawn = torch.rand(3), np.random.rand(3), random.random()
        training.seed_everything(7)
        assert torch.equal(drawn[0], torch.rand(3)) and np.array_equal(drawn[1], np.random.rand(3))
        assert drawn[2] == random.random()
        training.setup(training.TrainConfig(deterministic=False, device="cpu"))
        assert cudnn.benchmark  # the autotuner, when determinism is not asked for
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        cudnn.benchmark, cudnn.deterministic = saved[2], saved[3]
        torch.set_rng_state(saved[4])
        np.random.set_state(saved[5])
        random.setstate(saved[6])


def test_a_trainer_under_torchrun_without_setup_says_so(tmp_path, monkeypatch):
    model = IwinUPerNet(**TINY)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match=r"one of 2 \(torchrun\).*call iwin_models.engine.training.setup\(config\)"):
        training.Trainer(model, _Squares(), training.TrainConfig(work_dir=str(tmp_path)))


def test_the_trainer_device_is_chosen_without_side_effects(monkeypatch):
    from iwin_models.engine.distributed import local_device

    def refuse(device):
        raise AssertionError("torch.cuda.set_device is setup()'s")

    monkeypatch.setattr(torch.cuda, "set_device", refuse)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert local_device("cuda") == torch.device("cuda", 3) and local_device("cuda:1") == torch.device("cuda", 1)
    assert local_device("cpu") == torch.device("cpu")
    assert local_device(None) == (torch.device("cuda", 3) if torch.cuda.is_available() else torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert local_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="bad device 'bogus'"):
        local_device("bogus")


def test_checkpoints_go_through_the_one_atomic_writer(tmp_path, monkeypatch):
    """save_checkpoint and the kept iter_N.pth copies are write_atomic(durable=True): open()'s mode, the
    file and its folder fsynced (tests/test_files.py); iter_N.pth is a hard link where possible."""
    from iwin_models.engine.training.state import link_or_copy
    from iwin_models.io import files

    calls = []

    def recording(path, write, *, durable=False):
        calls.append((Path(path).name, durable))
        return files.write_atomic(path, write, durable=durable)

    monkeypatch.setattr("iwin_models.engine.training.state.write_atomic", recording)
    latest = training.save_checkpoint({"x": torch.arange(3)}, tmp_path / "new" / "latest.pth")
    link_or_copy(latest, tmp_path / "new" / "iter_1.pth")
    assert calls == [("latest.pth", True), ("iter_1.pth", True)]
    assert latest.stat().st_mode & 0o777 == files.new_file_mode()
    assert (tmp_path / "new" / "iter_1.pth").stat().st_ino == latest.stat().st_ino
    assert torch.equal(torch.load(tmp_path / "new" / "iter_1.pth", weights_only=True)["x"], torch.arange(3))
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["iter_1.pth", "latest.pth"]


def test_sampler_resumes_mid_epoch_and_shards():
    full = training.InfiniteSampler(10, seed=5, world_size=1)
    stream = [next(it) for it in [iter(full)] for _ in range(25)]
    again = iter(training.InfiniteSampler(10, seed=5, start=13))
    assert [next(again) for _ in range(12)] == stream[13:]
    assert sorted(i for i, _ in stream[:10]) == list(range(10))
    shards = [training.InfiniteSampler(5, seed=1, rank=r, world_size=2) for r in range(2)]
    first = [i for s in shards for i in s.epoch_order(0)]
    assert len(first) == 6 and set(first) == set(range(5))
    assert full.position(23) == dict(seed=5, epoch=2, position=3, consumed=23)


@pytest.mark.slow
def test_two_processes_with_torchrun(shapes, tiny_folder, tmp_path):
    work = tmp_path / "ddp"
    with _TorchrunJob(_torchrun(*_train_args(shapes, tiny_folder, work, "--iters", "4",
                                             "--checkpoint-interval", "2"))) as job:
        assert job.wait(time.monotonic() + 240) == 0, f"exit status (None: still running, killed):\n{job.output}"
    out = job.output
    assert "2 process(es) x batch 2" in out and out.count("done: 4 iterations") == 1
    checkpoint = training.load_checkpoint(work / "latest.pth")
    assert checkpoint["iteration"] == 4 and checkpoint["world_size"] == 2 and len(checkpoint["rng"]) == 2
    assert not torch.equal(checkpoint["rng"][0]["torch"], checkpoint["rng"][1]["torch"])
    final = IwinUPerNet.from_pretrained(work / "final").state_dict()
    assert all(torch.equal(final[k], checkpoint["model"][k]) for k in final)
    assert _steps(read_history(work / "scalars.jsonl"), "train/loss") == [4]  # rank 0 alone writes the run log
    assert (work / "curves.png").is_file()
    if not missing("tensorboard"):
        assert len(list((work / "tf_logs").iterdir())) == 1


def _torchrun(*args: str, max_restarts: int = 0) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            f"--max-restarts={max_restarts}", "--monitor-interval=0.1", str(REPO / "examples" / "train_ade20k.py"),
            *args]


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    return []


def _workers(launcher: int) -> dict[int, int]:
    """{RANK: pid} of the workers torchrun runs now (their environment says their rank)."""
    ranks = {}
    for pid in _children(launcher):
        with contextlib.suppress(OSError):
            env = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
            ranks[int(dict(e.split("=", 1) for e in env if "=" in e)["RANK"])] = pid
    return ranks


def _kill_torchrun(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers: torchrun starts each worker in a session of its own, so killing
    the launcher's process group alone would leave them running (and holding the output pipe)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGSTOP)  # it starts no new worker while they are killed
        for pid in _children(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class _TorchrunJob:
    """A torchrun command whose output (stdout and stderr) a thread collects as it comes; leaving the
    ``with`` block kills whatever is left of it."""

    def __init__(self, cmd: list[str]):
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True,
                                     env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def wait_for(self, text: str, deadline: float) -> bool:
        """Whether ``text`` shows in the output while the job runs, before ``deadline`` (monotonic)."""
        while self.proc.poll() is None and time.monotonic() < deadline:
            if text in self.output:
                return True
            time.sleep(0.01)
        return text in self.output and self.proc.poll() is None

    def wait(self, deadline: float) -> int | None:
        """The exit status, or None if the job is still running at ``deadline``."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=max(deadline - time.monotonic(), 0))
        self._reader.join(timeout=10)
        return self.proc.returncode

    def __enter__(self) -> _TorchrunJob:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            _kill_torchrun(self.proc)
        self._reader.join(timeout=10)
        self.proc.stdout.close()


@pytest.mark.slow
@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(),
                    reason="finds torchrun's workers in /proc/PID/task/TID/children (Linux)")
def test_torchrun_restarts_a_killed_worker_from_the_last_checkpoint(shapes, tiny_folder, tmp_path):
    """``torchrun --max-restarts=1`` with 2 CPU processes (gloo) and ``--resume auto``: SIGKILL the rank-0
    worker once a checkpoint is written; torchrun restarts both workers, they resume from latest.pth and
    finish once, with the same weights, bit for bit, as a 2-process run never stopped."""
    common = ["--iters", "8", "--checkpoint-interval", "2", "--resume", "auto", "--log-interval", "1",
              "--deterministic", "--seed", "3"]
    broken, unbroken = tmp_path / "broken", tmp_path / "unbroken"
    with _TorchrunJob(_torchrun(*_train_args(shapes, tiny_folder, broken, *common), max_restarts=1)) as job:
        assert job.wait_for("checkpoint: iteration 2 ", time.monotonic() + 240), job.output
        workers = _workers(job.proc.pid)
        assert sorted(workers) == [0, 1], (workers, job.output)
        os.kill(workers[0], signal.SIGKILL)
        assert job.wait(time.monotonic() + 240) == 0, f"exit status (None: still running, killed):\n{job.output}"
    out = job.output
    resumed = re.findall(r"resumed from (.+) at iteration (\d+)$", out, flags=re.M)
    assert [path for path, _ in resumed] == [str(broken / "latest.pth")], out
    resumed_at = int(resumed[0][1])
    assert 2 <= resumed_at < 8 and f"for 8 iterations from {resumed_at}:" in out, out
    assert out.count("for 8 iterations from 0:") == 1 and out.count("done: 8 iterations") == 1, out
    assert _event_steps(broken, "train/loss") == _steps(read_history(broken / "scalars.jsonl"), "train/loss") == [
        *range(1, 9)]  # what the killed worker logged after its checkpoint is redone, and shows once

    with _TorchrunJob(_torchrun(*_train_args(shapes, tiny_folder, unbroken, *common))) as job:
        assert job.wait(time.monotonic() + 240) == 0, f"exit status (None: still running, killed):\n{job.output}"
    a, b = (training.load_checkpoint(work / "latest.pth") for work in (unbroken, broken))
    assert a["iteration"] == b["iteration"] == 8 and a["world_size"] == b["world_size"] == 2
    different = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    final = IwinUPerNet.from_pretrained(broken / "final").state_dict()
    assert all(torch.equal(final[k], b["model"][k]) for k in final)
    print(f"\ntorchrun restarted after SIGKILL of rank 0 and resumed at iteration {resumed_at} of 8: "
          f"{len(a['model'])} tensors bit-identical to an unbroken run")
