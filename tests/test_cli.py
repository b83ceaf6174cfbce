"""The ``iwin-seg`` command package: dispatch, the one model resolver, the one data-set builder, every
command's options (one precision option and table, the fast path by default), and the rule that argparse
lives in ``iwin_models/cli/`` only."""
from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MINI, REPO
from test_data import make_ade20k, make_folder

from iwin_models.apps import cli
from iwin_models.apps.cli.common import PRECISIONS, build_dataset, fast_model, resolve_model
from iwin_models.data.datasets import ADE20KDataset, FolderSegmentationDataset
from iwin_models.models.segmenters import load_segmenter
from iwin_models.models.upernet import IwinUPerNet

PACKAGE = REPO / "iwin_models"
TINY = "iwin_tiny_upernet_ade20k"


def _mini(classes: int, seed: int) -> IwinUPerNet:
    torch.manual_seed(seed)
    return IwinUPerNet("iwin_tiny", encoder_kwargs=MINI, decoder_channels=32, aux_channels=16, classes=classes)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("cli_ws")
    five = _mini(5, 0)
    five.set_class_info(["bg", "a", "b", "c", "d"], [(0, 0, 0), (1, 1, 1), (2, 2, 2), (3, 3, 3), (4, 4, 4)])
    five.save_pretrained(d / "five")
    _mini(5, 1).save_pretrained(d / "other")  # same architecture, other weights
    images, labels = make_folder(d / "folder", n=3, num_classes=5)
    return dict(root=d, five=d / "five", other=d / "other", images=images, labels=labels,
                ade=make_ade20k(d / "ade", n_val=2, n_train=1))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _one_line_error(err: str, command: str, fragment: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"iwin-seg {command}: error: ") and fragment in lines[0], err


# --- dispatch -------------------------------------------------------------------------------------

def test_commands_are_the_modules_of_the_package():
    assert list(cli.COMMANDS) == ["predict", "eval", "train", "flops", "convert", "export", "demo"]
    for name in cli.COMMANDS:
        module = importlib.import_module(f"iwin_models.apps.cli.{name}")
        assert callable(module.add_arguments) and callable(module.run), name


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(name in out for name in cli.COMMANDS)


# options the README's commands use, per command
README_OPTIONS = {
    "predict": ["--model", "--weights", "--aug", "--precision", "--out", "--slide", "--device", "--no-fast"],
    "eval": ["--model", "--weights", "--data-root", "--split", "--images", "--labels", "--class-names",
             "--num-classes", "--ignore-index", "--reduce-zero-label", "--limit", "--aug", "--slide", "--scale",
             "--precision", "--device", "--json", "--no-progress", "--no-fast", "--report", "--report-worst"],
    "train": ["--model", "--weights", "--pretrained", "--no-pretrained-backbone", "--data-root", "--work-dir",
              "--resume", "--iters", "--batch-size", "--precision", "--grad-checkpointing", "--no-fast"],
    "flops": ["--model", "--shape"],
    "convert": ["checkpoint", "--model", "--out", "--format"],
    "export": ["--model", "--weights", "--onnx", "--program", "--height", "--width", "--opset", "--dynamic"],
    "demo": ["--host", "--port", "--model", "--weights", "--precision", "--no-fast", "--device", "--max-pixels",
             "--max-file-size", "--download"],
}


@pytest.mark.parametrize("command", list(README_OPTIONS))
def test_every_command_has_help_with_its_options(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith(f"usage: iwin-seg {command}")
    missing = [o for o in README_OPTIONS[command] if o not in out]
    assert not missing, missing


def test_dispatch_imports_only_the_command_given():
    code = ("import sys; from iwin_models.apps.cli import build_parser; build_parser('flops'); "
            "print(sorted(m for m in sys.modules if m.startswith('iwin_models.apps.cli.')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = eval(proc.stdout.strip().splitlines()[-1])
    assert "iwin_models.apps.cli.flops" in loaded
    assert not {f"iwin_models.apps.cli.{c}" for c in ("predict", "eval", "train", "convert", "export")} & set(loaded)


def test_python_dash_m_and_console_entry_point():
    proc = subprocess.run([sys.executable, "-m", "iwin_models.apps.cli", "--help"], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0 and "COMMAND" in proc.stdout, proc.stderr
    setup = (REPO / "setup.cfg").read_text()
    entry = re.search(r"iwin-seg\s*=\s*([\w.]+):(\w+)", setup)
    assert entry and getattr(importlib.import_module(entry[1]), entry[2]) is cli.main


def test_user_errors_are_one_line_exit_2(monkeypatch, capsys):
    flops = importlib.import_module("iwin_models.apps.cli.flops")

    def fails(args):
        raise ValueError("first line\n   second line\n")

    monkeypatch.setattr(flops, "run", fails)
    assert cli.main(["flops"]) == 2
    _one_line_error(capsys.readouterr().err, "flops", "first line; second line")

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(flops, "run", interrupted)
    assert cli.main(["flops"]) == 130

    def bug(args):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(flops, "run", bug)
    with pytest.raises(KeyError):  # programming errors keep their traceback
        cli.main(["flops"])


def test_unknown_models_and_bad_devices_are_one_line_errors(ws, tmp_path, capsys):
    assert cli.main(["flops", "--model", "iwin_nope"]) == 2
    _one_line_error(capsys.readouterr().err, "flops", "unknown model 'iwin_nope'")
    assert cli.main(["export", "--model", str(tmp_path / "nothing"), "--onnx", str(tmp_path / "x.onnx")]) == 2
    _one_line_error(capsys.readouterr().err, "export", "unknown model")
    assert cli.main(["export", "--model", str(ws["five"])]) == 2
    _one_line_error(capsys.readouterr().err, "export", "nothing to do")
    assert cli.main(["eval", "--model", str(ws["five"]), "--images", str(ws["images"]), "--labels",
                     str(ws["labels"]), "--device", "bogus", "--no-progress"]) == 2
    _one_line_error(capsys.readouterr().err, "eval", "bogus")
    assert cli.main(["convert", str(tmp_path / "x.pth"), "--model", "resnet50", "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys.readouterr().err, "convert", "unknown model")


def test_one_precision_table():
    from iwin_models.engine import training
    from iwin_models.engine.precision import PRECISIONS as table

    assert PRECISIONS is table and not hasattr(training, "PRECISIONS")
    assert PRECISIONS == {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize("command", ["predict", "eval", "train"])
@pytest.mark.parametrize("argv, precision", [([], "fp32"), (["--precision", "bf16"], "bf16")])
def test_precision_option(capsys, command, argv, precision):
    args = cli.build_parser(command).parse_args([command, *argv])
    assert args.precision == precision
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("command", ["predict", "eval", "train"])
@pytest.mark.parametrize("old", ["--dtype", "--amp"])
def test_one_spelling_of_the_precision(capsys, command, old):
    """The package is unreleased: ``--precision`` is the one way to say it."""
    with pytest.raises(SystemExit):
        cli.build_parser(command).parse_args([command, old, "bf16"])
    assert "unrecognized arguments" in capsys.readouterr().err


# --- fast by default -------------------------------------------------------------------------------

def _has_twins(model) -> bool:
    from iwin_models.fast.twin import CpuTwin

    return any(isinstance(m, CpuTwin) for m in model.modules())


def test_fast_model_converts_on_the_cpu_unless_told_not_to(ws):
    from iwin_models.fast.config import fast_paths

    model = fast_model(resolve_model(str(ws["five"])))
    assert _has_twins(model) and fast_model(model) is model  # converted in place, once
    assert not _has_twins(fast_model(resolve_model(str(ws["five"])), fast=False))  # --no-fast
    with fast_paths(False):  # what IWIN_FAST_PATH=0 sets
        assert not _has_twins(fast_model(resolve_model(str(ws["five"]))))
    elsewhere = resolve_model(str(ws["five"])).to("meta")  # not the CPU: the plain model
    assert fast_model(elsewhere) is elsewhere and not _has_twins(elsewhere)


@pytest.fixture
def conversions(monkeypatch) -> list:
    """Every optimize_for_cpu call (its ``inplace``), the command's and any segment()/predict() would make."""
    import iwin_models.fast.optimize as optimize

    calls, real = [], optimize.optimize_for_cpu

    def spy(model, **kwargs):
        calls.append(kwargs.get("inplace", True))
        return real(model, **kwargs)

    monkeypatch.setattr(optimize, "optimize_for_cpu", spy)
    return calls


def _command_argv(command: str, ws: dict, out: Path) -> list[str]:
    five, images, labels = str(ws["five"]), str(ws["images"]), str(ws["labels"])
    return {
        "predict": ["predict", str(next(ws["images"].iterdir())), "--model", five, "--out", str(out), "--no-progress"],
        "eval": ["eval", "--model", five, "--images", images, "--labels", labels, "--no-progress",
                 "--scale", "64", "32"],
        "train": ["train", "--model", five, "--images", images, "--labels", labels, "--class-names", "bg,a,b,c,d",
                  "--iters", "1", "--crop-size", "32", "--scale", "32", "32", "--batch-size", "1", "--workers", "0",
                  "--val-interval", "0", "--checkpoint-interval", "0", "--no-progress", "--work-dir", str(out)],
        "flops": ["flops", "--model", "iwin_tiny", "--shape", "3", "32", "32"],
    }[command]


@pytest.mark.parametrize("command, converted", [("predict", [False]), ("eval", [False]), ("train", [False]),
                                                ("flops", [])])
def test_commands_run_the_fast_model_on_the_cpu_once(ws, tmp_path, conversions, capsys, command, converted):
    """predict, eval and train convert the model once, as segment() does (the one policy, with_cpu_twins: a copy
    sharing the weights; segment() is told not to convert again); --no-fast runs it plain; flops (and export)
    take the plain model."""
    assert cli.main(_command_argv(command, ws, tmp_path / "fast")) == 0, capsys.readouterr().err
    assert conversions == converted
    conversions.clear()
    if command != "flops":
        assert cli.main(_command_argv(command, ws, tmp_path / "plain") + ["--no-fast"]) == 0
        assert conversions == []


# --- the model resolver ---------------------------------------------------------------------------

def test_resolver_folder_and_folder_with_weights(ws):
    five = resolve_model(str(ws["five"]))
    assert isinstance(five, IwinUPerNet) and not five.training and five.num_classes == 5
    assert five.class_names == ["bg", "a", "b", "c", "d"]
    assert _same_weights(five, IwinUPerNet.from_pretrained(ws["five"]))
    # the folder gives the architecture, --weights the tensors (a file, or a folder for a registered name)
    mixed = resolve_model(str(ws["five"]), str(ws["other"] / "model.safetensors"))
    other = IwinUPerNet.from_pretrained(ws["other"])
    assert _same_weights(mixed, other) and not _same_weights(mixed, five)
    assert _same_weights(resolve_model(TINY, str(ws["other"])), other)


def test_resolver_num_classes_reinitialises_the_classifiers(ws):
    with pytest.warns(UserWarning, match="re-initialised"):
        model = resolve_model(str(ws["five"]), num_classes=3)
    five = IwinUPerNet.from_pretrained(ws["five"])
    assert model.num_classes == 3 and model.segmentation_head.conv_seg.out_channels == 3
    body = {k: v for k, v in five.state_dict().items() if "conv_seg" not in k}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in body.items())


def test_resolver_bad_names_devices_and_starts(ws, tmp_path):
    with pytest.raises(ValueError, match="unknown model 'iwin_huge'.*save_pretrained folder"):
        resolve_model("iwin_huge")
    with pytest.raises(ValueError, match="unknown model"):
        resolve_model(str(tmp_path / "missing_folder"))
    with pytest.raises(ValueError, match="bad device 'bogus'"):
        resolve_model(str(ws["five"]), device="bogus")
    with pytest.raises(ValueError, match="unknown start 'pretrained'"):
        resolve_model(TINY, start="pretrained")


@pytest.fixture
def create_calls(monkeypatch):
    """create_segmenter replaced by a recorder (the registered models are large; their loading is
    tested in test_segmenter.py): what the resolver asks for, per start."""
    import iwin_models.models.segmenters as segmenter

    calls = []

    def fake(name, **kwargs):
        calls.append(dict(name=name, **kwargs))
        return _mini(kwargs.get("num_classes", 150), 0)

    monkeypatch.setattr(segmenter, "create_segmenter", fake)
    return calls


def test_resolver_starts_of_a_registered_name(create_calls, capsys, tmp_path):
    """The segmenter factory is asked for the architecture only (``pretrained=False``, no weights): the resolver
    reads the weights itself (the official file from the torch.hub cache, or --weights) and loads them."""
    from iwin_models.io.checkpoint import torch_hub_checkpoints
    from iwin_models.models.weights import SEGMENTERS

    official, tuned = _mini(150, 3), _mini(7, 4)
    torch_hub_checkpoints().mkdir(parents=True)
    torch.save({"state_dict": official.state_dict()}, torch_hub_checkpoints() / SEGMENTERS[TINY].file_name)
    assert _same_weights(resolve_model(TINY), official)  # the authors' ADE20K weights, from the cache
    assert create_calls[-1] == dict(name=TINY, pretrained=False)
    torch.save(tuned.state_dict(), tmp_path / "ckpt.pth")
    model = resolve_model(TINY, str(tmp_path / "ckpt.pth"), start="imagenet", encoder_pretrained="in1k.pth",
                          num_classes=7)
    assert _same_weights(model, tuned) and create_calls[-1] == dict(name=TINY, pretrained=False, num_classes=7)
    resolve_model(TINY, start="imagenet", num_classes=7, drop_path_rate=0.3)
    assert create_calls[-1] == dict(name=TINY, pretrained=False, encoder_pretrained=True, num_classes=7,
                                    drop_path_rate=0.3)
    (torch_hub_checkpoints() / "in1k.pth").write_bytes(b"")  # a bare name: found where --weights are found
    resolve_model(TINY, start="imagenet", encoder_pretrained="in1k.pth")
    assert create_calls[-1] == dict(name=TINY, pretrained=False,
                                    encoder_pretrained=str(torch_hub_checkpoints() / "in1k.pth"))
    resolve_model(TINY, start="imagenet", encoder_pretrained=False)  # --no-pretrained-backbone
    assert create_calls[-1] == dict(name=TINY, pretrained=False, encoder_pretrained=False)
    assert capsys.readouterr().err == ""
    resolve_model(TINY, start="random")
    assert create_calls[-1] == dict(name=TINY, pretrained=False)
    assert "iwin-seg: warning: no --weights given" in capsys.readouterr().err
    resolve_model(TINY, start="random", warn=False)
    assert capsys.readouterr().err == ""
    with pytest.warns(UserWarning, match="RANDOM weights"):  # the library's own warning, for Python callers
        load_segmenter(TINY, start="random")


def test_resolver_random_and_imagenet_starts_build_real_models(tmp_path, capsys):
    import timm

    torch.manual_seed(0)
    classifier = timm.create_model("iwin_tiny")
    torch.save({"model": classifier.state_dict()}, tmp_path / "in1k.pth")
    model = resolve_model(TINY, start="imagenet", encoder_pretrained=str(tmp_path / "in1k.pth"), num_classes=4)
    assert model.num_classes == 4 and not model.training
    reference = classifier.state_dict()
    backbone = _backbone_tensors(model, reference)
    assert len(backbone) > 100 and all(torch.equal(v, reference[k]) for k, v in backbone.items())
    del model
    random_model = resolve_model(TINY, start="random")
    assert "RANDOM weights" in capsys.readouterr().err and random_model.num_classes == 150
    random_backbone = _backbone_tensors(random_model, reference)
    assert not any(torch.equal(v, reference[k]) for k, v in random_backbone.items() if reference[k].std() > 0)


def _backbone_tensors(model, reference: dict) -> dict:
    """The segmenter's encoder tensors under the classifier's names (the encoder wraps the timm model)."""
    out = {}
    for name, value in model.encoder.state_dict().items():
        key = next((k for k in reference if name == k or name.endswith("." + k)), None)
        if key is not None and value.shape == reference[key].shape:
            out[key] = value
    return out


# --- the data-set builder -------------------------------------------------------------------------

def test_build_dataset_ade20k(ws):
    ds = build_dataset(data_root=ws["ade"].parent)
    assert isinstance(ds, ADE20KDataset) and ds.split == "validation" and len(ds) == 2 and ds.num_classes == 150
    transform = lambda image, label: (image.shape, label.shape)
    train = build_dataset(data_root=ws["ade"], split="training", transform=transform)
    assert len(train) == 1 and train[0] == ((64, 80, 3), (64, 80))
    with pytest.raises(ValueError, match="not both"):
        build_dataset(data_root=ws["ade"], images=ws["images"], labels=ws["labels"])
    with pytest.raises(ValueError, match="unknown ADE20K split"):
        build_dataset(data_root=ws["ade"], split="test")


def test_build_dataset_folder_names_from_options_or_model(ws):
    model = IwinUPerNet.from_pretrained(ws["five"])
    ds = build_dataset(images=ws["images"], labels=ws["labels"], model=model)
    assert isinstance(ds, FolderSegmentationDataset) and len(ds) == 3
    assert ds.class_names == ["bg", "a", "b", "c", "d"] and ds.palette == model.palette  # the model's
    ds = build_dataset(images=ws["images"], labels=ws["labels"], class_names="w,x,y,z,q", model=model)
    assert ds.class_names == ["w", "x", "y", "z", "q"] and ds.palette == model.palette
    ds = build_dataset(images=ws["images"], labels=ws["labels"], num_classes=6, model=model)
    assert ds.class_names == [f"class {i}" for i in range(6)] and ds.palette is None  # other count
    ds = build_dataset(images=ws["images"], labels=ws["labels"], num_classes=5)
    assert ds.class_names[0] == "class 0" and ds.num_classes == 5
    image, label = ds.load(0)
    assert image.dtype == np.uint8 and label.dtype == np.int64 and set(np.unique(label)) <= {0, 1, 2, 3, 4, 255}


def test_build_dataset_folder_label_options(ws, tmp_path):
    labels = tmp_path / "shifted"
    labels.mkdir()
    from PIL import Image

    for p in sorted(ws["labels"].iterdir()):  # the same labels stored as 1..5, 0 = unlabelled, 9 = ignored
        raw = np.asarray(Image.open(p)).astype(np.int64)
        Image.fromarray(np.where(raw == 255, 9, raw + 1).astype(np.uint8)).save(labels / p.name)
    plain = build_dataset(images=ws["images"], labels=ws["labels"], num_classes=5)
    shifted = build_dataset(images=ws["images"], labels=labels, num_classes=5, reduce_zero_label=True,
                            ignore_index=9)
    for i in range(len(plain)):
        np.testing.assert_array_equal(plain.load(i)[1], shifted.load(i)[1])


def test_build_dataset_errors(ws):
    with pytest.raises(ValueError, match="no data: give --data-root"):
        build_dataset()
    with pytest.raises(ValueError, match="no data"):
        build_dataset(images=ws["images"])
    with pytest.raises(ValueError, match="--num-classes 4 but 5 class names"):
        build_dataset(images=ws["images"], labels=ws["labels"], class_names=["a", "b", "c", "d", "e"], num_classes=4)
    with pytest.raises(ValueError, match="needs --class-names"):
        build_dataset(images=ws["images"], labels=ws["labels"])
    with pytest.raises(FileNotFoundError, match="no ADE20K folder"):
        build_dataset(data_root=ws["root"] / "nowhere")


# --- layering -------------------------------------------------------------------------------------

def test_argparse_only_in_cli():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[:2] == ("apps", "cli"):
            continue
        text = path.read_text(encoding="utf-8")
        for pattern in ("add_argument", "import argparse", "ArgumentParser", "def run(args"):
            if pattern in text:
                offenders.append(f"{path.relative_to(REPO)}: {pattern}")
    assert not offenders, offenders


def test_one_definition_of_precisions_and_ignore_index():
    defined = {"_DTYPES =": [], "DTYPES =": [], "AMP_DTYPES =": [], "PRECISIONS": [], "IGNORE_INDEX =": []}
    for path in sorted(PACKAGE.rglob("*.py")):
        for line in path.read_text(encoding="utf-8").splitlines():
            for name in defined:
                if line.startswith(name) and not line.startswith(f"{name} ade20k."):
                    defined[name].append(str(path.relative_to(PACKAGE)))
    assert defined["_DTYPES ="] == defined["DTYPES ="] == defined["AMP_DTYPES ="] == [], defined
    assert defined["PRECISIONS"] == ["engine/precision.py"], defined
    assert defined["IGNORE_INDEX ="] == ["data/ade20k.py"], defined


def test_library_modules_keep_their_functions():
    from iwin_models.engine import evaluation
    from iwin_models.interop import export, flops, hub

    assert callable(evaluation.evaluate) and callable(evaluation.json_ready)
    assert callable(export.export_onnx) and callable(export.export_program)
    assert callable(flops.mmcv_flops) and callable(hub.convert_segmenter) and callable(hub.convert_backbone)
    for module in (evaluation, export, flops, hub):
        assert not hasattr(module, "add_arguments") and not hasattr(module, "run"), module.__name__
    assert not hasattr(evaluation, "init_distributed")  # in iwin_models.engine.distributed


def test_export_passes_its_options_to_the_library(ws, tmp_path, monkeypatch, capsys, conversions):
    """The command's part: options -> export_onnx / export_program arguments (the graphs themselves,
    fixed and dynamic, are tested in tests/test_export.py)."""
    import iwin_models.interop.export as export

    calls = []

    def fake_onnx(model, path, height, width, opset, dynamic=False):
        calls.append(("onnx", type(model).__name__, model.training, Path(path).name, height, width, opset, dynamic))
        return Path(path)

    class Program:  # what torch.export.save is handed
        pass

    def fake_program(model, height, width, dynamic=False):
        calls.append(("program", height, width, dynamic))
        return Program()

    monkeypatch.setattr(export, "export_onnx", fake_onnx)
    monkeypatch.setattr(export, "export_program", fake_program)
    monkeypatch.setattr(torch.export, "save", lambda program, path: Path(path).write_bytes(b"pt2"))
    assert cli.main(["export", "--model", str(ws["five"]), "--onnx", str(tmp_path / "m.onnx"), "--program",
                     str(tmp_path / "sub" / "m.pt2"), "--height", "97", "--width", "131", "--opset", "17",
                     "--dynamic"]) == 0
    assert calls == [("onnx", "IwinUPerNet", False, "m.onnx", 97, 131, 17, True), ("program", 97, 131, True)]
    out = capsys.readouterr().out
    assert "input 'image' Nx3xHxW" in out and (tmp_path / "sub" / "m.pt2").read_bytes() == b"pt2"
    calls.clear()
    assert cli.main(["export", "--model", str(ws["five"]), "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert calls == [("onnx", "IwinUPerNet", False, "m.onnx", 512, 512, 18, False)]
    assert "input 'image' 1x3x512x512" in capsys.readouterr().out
    assert conversions == []  # export records the plain model
