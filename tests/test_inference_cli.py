"""``iwin-seg predict`` on folders: bad files reported and skipped, atomic writes, --skip-existing, torchrun."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MINI, REPO
from PIL import Image

import iwin_models.engine.inference as inference
import iwin_models.io.images as images
from iwin_models import SAMPLE_IMAGE
from iwin_models.apps.cli import main as cli
from iwin_models.models.upernet import IwinUPerNet


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    m = IwinUPerNet("iwin_tiny", encoder_kwargs=MINI, decoder_channels=32, aux_channels=0, classes=150)
    with torch.no_grad():
        m.segmentation_head.conv_seg.weight.mul_(30)
    path = tmp_path_factory.mktemp("model") / "tiny"
    m.eval().save_pretrained(path)
    return path


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path):
    """Four good images and three bad ones (not an image, a truncated PNG, an image over the size limit)."""
    d = tmp_path / "photos"
    d.mkdir()
    for i, (h, w) in enumerate([(40, 60), (33, 47), (64, 32), (20, 90)]):
        Image.fromarray(_rgb(h, w, i)).save(d / f"good{i}.png")
    (d / "notes.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (d / "cut.png").write_bytes((d / "good0.png").read_bytes()[:300])
    Image.fromarray(_rgb(200, 200, 9)).save(d / "huge.png")
    return d


def _predict(*argv, model_dir, out):
    return cli(["predict", *map(str, argv), "--model", str(model_dir), "--out", str(out), "--no-progress",
                "--scale", "96", "64"])


def test_bad_files_are_reported_skipped_and_counted(folder, model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 200 * 199)
    out = tmp_path / "out"
    assert _predict(folder, model_dir=model_dir, out=out) == 2
    err = capsys.readouterr().err
    assert "skipped" in err and "notes.jpg" in err and "cut.png" in err and "not a readable image" in err
    assert "huge.png" in err and "200x200" in err  # too large: refused from its header, size named
    assert "3 of 7 images could not be read" in err
    model = IwinUPerNet.from_pretrained(model_dir).eval()
    for i in range(4):
        labels = np.array(Image.open(out / f"good{i}_labels.png"))
        expected = inference.segment(model, folder / f"good{i}.png", scale=(96, 64))
        assert labels.dtype == np.uint8 and np.array_equal(labels, expected)
        assert (out / f"good{i}_overlay.png").is_file()
    assert sorted(p.name for p in out.iterdir()) == sorted(f"good{i}_{k}.png" for i in range(4)
                                                           for k in ("overlay", "labels"))


def test_an_interrupted_write_leaves_no_partial_png_and_skip_existing_continues(folder, model_dir, tmp_path,
                                                                                monkeypatch, capsys):
    for bad in ("notes.jpg", "cut.png", "huge.png"):
        (folder / bad).unlink()
    out = tmp_path / "out"
    real_save, saves = Image.Image.save, []

    def dying_save(self, fp, *args, **kwargs):  # the third PNG: half written, then the process is killed
        saves.append(fp)
        if len(saves) == 3:
            Path(fp).write_bytes(b"\x89PNG half")
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", dying_save)
    assert _predict(folder, model_dir=model_dir, out=out) == 130
    assert sorted(p.name for p in out.iterdir()) == ["good0_labels.png", "good0_overlay.png"]  # no temporary left
    monkeypatch.setattr(Image.Image, "save", real_save)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    calls = []
    real_predict = inference.predict
    monkeypatch.setattr(inference, "predict", lambda *a, **k: calls.append(a[1].shape) or real_predict(*a, **k))
    assert _predict(folder, "--skip-existing", model_dir=model_dir, out=out) == 0
    assert len(calls) == 3, "good0 is not segmented again"
    assert all(out.joinpath(name).stat().st_mtime_ns == t for name, t in before.items())
    assert len(list(out.iterdir())) == 8 and all(Image.open(p).size for p in out.iterdir())


def test_no_arguments_segments_the_sample(model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(["predict", "--model", str(model_dir), "--no-progress"]) == 0
    labels = np.array(Image.open("iwin_seg_out/sample_labels.png"))
    assert labels.shape == images.load_image(SAMPLE_IMAGE).shape[:2]
    assert Image.open("iwin_seg_out/sample_overlay.png").width > labels.shape[1]  # with its legend


def test_prefetch_and_options(folder, model_dir, tmp_path, capsys):
    for bad in ("notes.jpg", "cut.png", "huge.png"):
        (folder / bad).unlink()
    assert _predict(folder, "--prefetch", "0", model_dir=model_dir, out=tmp_path / "a") == 0
    assert _predict(folder, "--prefetch", "3", model_dir=model_dir, out=tmp_path / "b") == 0
    for p in (tmp_path / "a").iterdir():
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes()
    capsys.readouterr()
    assert cli(["predict", str(folder), "--model", str(model_dir), "--scale", "0", "64"]) == 2
    assert "--scale must be positive" in capsys.readouterr().err


def _tree(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def _labels_of(model_dir, image: Path) -> np.ndarray:
    return inference.segment(IwinUPerNet.from_pretrained(model_dir).eval(), image, scale=(96, 64))


def test_images_from_two_folders_with_one_name_keep_their_folders(model_dir, tmp_path, monkeypatch, capsys):
    """``a/x.png b/x.png``: each result under its folder (the first is not overwritten by the second)."""
    monkeypatch.chdir(tmp_path)
    for i, d in enumerate(("a", "b/deeper")):
        Path(d).mkdir(parents=True)
        Image.fromarray(_rgb(30 + 10 * i, 50, seed=i)).save(f"{d}/x.png")
    assert _predict("a/x.png", "b/deeper/x.png", model_dir=model_dir, out="o") == 0
    assert _tree(tmp_path / "o") == ["a/x_labels.png", "a/x_overlay.png", "b/deeper/x_labels.png",
                                     "b/deeper/x_overlay.png"]
    for d in ("a", "b/deeper"):
        assert np.array_equal(np.array(Image.open(f"o/{d}/x_labels.png")), _labels_of(model_dir, Path(f"{d}/x.png")))
    calls = []
    real_predict = inference.predict
    monkeypatch.setattr(inference, "predict", lambda *a, **k: calls.append(1) or real_predict(*a, **k))
    assert _predict("a/x.png", "b/deeper/x.png", "--skip-existing", model_dir=model_dir, out="o") == 0
    assert calls == [], "--skip-existing finds the mirrored outputs"


def test_one_stem_twice_in_a_folder_is_named_by_the_whole_file_name(model_dir, tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    Image.fromarray(_rgb(30, 50, seed=1)).save(d / "x.png")
    Image.fromarray(_rgb(40, 20, seed=2)).save(d / "x.jpg")
    Image.fromarray(_rgb(20, 20, seed=3)).save(d / "y.png")
    out = tmp_path / "o"
    assert _predict(d, d / "y.png", model_dir=model_dir, out=out) == 0  # y.png named twice: segmented once
    assert _tree(out) == ["x.jpg_labels.png", "x.jpg_overlay.png", "x.png_labels.png", "x.png_overlay.png",
                          "y_labels.png", "y_overlay.png"]
    assert np.array(Image.open(out / "x.jpg_labels.png")).shape == (40, 20)
    assert np.array(Image.open(out / "x.png_labels.png")).shape == (30, 50)


def test_a_clash_that_remains_is_refused_before_any_work(model_dir, tmp_path, monkeypatch, capsys):
    import iwin_models.apps.cli.predict as predict

    d = tmp_path / "photos"
    d.mkdir()
    for name in ("x.jpg.png", "x.jpg", "x.png"):  # x.jpg.png's stem is x.jpg's file name
        Image.fromarray(_rgb(8, 8)).save(d / name, format="PNG")
    monkeypatch.setattr(predict, "resolve_model", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "o"
    assert _predict(d / "x.jpg.png", d / "x.jpg", d / "x.png", model_dir=model_dir, out=out) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("iwin-seg predict: error: ")
    assert str(d / "x.jpg.png") in err and str(d / "x.jpg") + " " in err and "x.jpg_overlay.png" in err
    assert not out.exists()


@pytest.mark.slow
def test_torchrun_splits_the_images_and_writes_what_one_process_writes(folder, model_dir, tmp_path):
    for bad in ("cut.png", "huge.png"):
        (folder / bad).unlink()  # notes.jpg stays: a failure in one process fails the job
    (tmp_path / "more").mkdir()
    Image.fromarray(_rgb(30, 30, 7)).save(tmp_path / "more" / "good0.png")  # a second folder, a name again
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    common = ["predict", str(folder), str(tmp_path / "more"), "--model", str(model_dir), "--device", "cpu",
              "--scale", "96", "64"]
    one = subprocess.run([sys.executable, "-m", "iwin_models.apps.cli", *common, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "iwin_models.apps.cli", *common, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env)
    assert one.returncode == 2 and "1 of 6 images could not be read" in one.stderr, one.stderr
    assert two.returncode != 0 and "1 of 6 images could not be read" in two.stderr, two.stderr
    names = _tree(tmp_path / "one")
    assert len(names) == 10 and names == _tree(tmp_path / "two")
    assert {"photos/good0_labels.png", "more/good0_labels.png"} <= set(names)  # the folders mirrored
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    lines = [line for line in two.stdout.splitlines() if " -> " in line]
    assert len(lines) == 5, "each image segmented by one process"


def test_atomic_outputs_get_the_mode_open_would_give(tmp_path):
    """mkstemp makes 0o600 files; a renamed PNG or checkpoint must be readable as a plain write's is."""
    from PIL import Image

    from iwin_models.apps.cli.predict import save_atomic
    from iwin_models.engine.training import save_checkpoint

    umask = os.umask(0o022)
    os.umask(umask)
    save_atomic(Image.new("L", (2, 2)), tmp_path / "labels.png")
    save_checkpoint({"step": 1}, tmp_path / "last.pth")
    for name in ("labels.png", "last.pth"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_names_differing_only_in_case_do_not_share_an_output():
    from iwin_models.apps.cli.predict import output_names

    d = Path("/photos")
    names = output_names([d / "X.jpg", d / "x.png"])  # one file, X_overlay.png, on macOS and Windows
    assert names == {d / "X.jpg": Path("X.jpg"), d / "x.png": Path("x.png")}
    with pytest.raises(ValueError, match="X.jpg and /photos/x.jpg would both write"):
        output_names([d / "X.jpg", d / "x.jpg"])


def test_a_model_that_does_not_load_leaves_no_output_folder(tmp_path, capsys):
    out = tmp_path / "o"
    assert cli(["predict", "--weights", str(tmp_path / "missing.pth"), "--out", str(out)]) == 2
    assert "missing.pth" in capsys.readouterr().err and not out.exists()
    (tmp_path / "file").write_text("")
    assert cli(["predict", "--out", str(tmp_path / "file")]) == 2
    assert "--out " + str(tmp_path / "file") + " is a file" in capsys.readouterr().err
