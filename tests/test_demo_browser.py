"""The demo page in a real browser: ``iwin-seg demo`` served on a free loopback port, driven in headless Chromium
(Debian's ``chromium``, through ``playwright`` from PyPI with the system browser's executable).

What a person sees is checked against ``segment()`` run here on the same model: the legend names its top classes,
the overlay's pixels are the blend of the photo with the palette colours of its labels at the chosen opacity (and
with a class highlighted, the others dimmed), the confidence picture has the photo's size, the downloaded label PNG
is its class map; a corrupt photo and a truncated one give a message saying what is wrong, and the next photo
still works. No request leaves the machine: the page's requests to any host but the server are recorded (and
aborted), and the server runs with a ``sitecustomize`` that records every connection or name look-up to a host
that is not this one.

The detection tab, on a second server serving the fixtures' mini Mask R-CNN as ``--model``/``--weights``: the
counts of the classes are those of ``detect()`` here at the page's threshold, and at another after the slider moves
(no model run), with the overlay and the JSON download to match; a bad photo gives a message, and the next works.

Without Chromium or playwright the tests skip, saying how to install them (with ``IWIN_REQUIRE_BROWSER=1``, as
``.ci/run`` sets, they fail instead). Screenshots (``demo_result.png``, ``demo_error.png``,
``demo_detection.png``) go to ``$IWIN_SCREENSHOT_DIR`` (the README's pictures:
``IWIN_SCREENSHOT_DIR=examples/space/screenshots``) or the test's temporary folder.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from io import BytesIO
from pathlib import Path
from urllib.parse import urljoin, urlparse

import numpy as np
import pytest
from _detectors import MINIS, mini_detector
from conftest import REPO
from PIL import Image
from test_demo import make_mini_folder

from iwin_models import create_detector, detect
from iwin_models.apps.demo.detections import class_counts
from iwin_models.apps.demo.pictures import DIM
from iwin_models.apps.visualize import detection_overlay, legend_entries
from iwin_models.data import SAMPLE_IMAGE
from iwin_models.engine.inference import segment
from iwin_models.io.images import load_image
from iwin_models.models.segmenters import load_segmenter

pytestmark = pytest.mark.slow  # headless Chromium: the slow tier (.ci/run runs it, with IWIN_REQUIRE_BROWSER=1)

INSTALL = "apt-get install chromium && pip install playwright"


def _unavailable(what: str) -> None:
    """Skip, saying how to install ``what``; with IWIN_REQUIRE_BROWSER=1 (.ci/run) fail instead."""
    reason = f"no {what} (the demo page's browser tests): {INSTALL}"
    if os.environ.get("IWIN_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (IWIN_REQUIRE_BROWSER=1: required)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
if CHROMIUM is None:
    _unavailable("Chromium")
try:
    from playwright import sync_api
except ImportError:
    _unavailable("playwright")
pytest.importorskip("gradio", reason="the demo extra: pip install 'iwin-models[demo]'")

BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--disable-sync", "--disable-quic"]
OPACITY = 0.6  # not the page's default (0.5)
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
RESULT_TIMEOUT_MS = 120_000

# Loaded by the server's interpreter (PYTHONPATH): every connection or look-up of a host that is not this machine
# is written to $IWIN_OUTBOUND_LOG; $IWIN_OUTBOUND_LOG.active says the guard ran.
GUARD = textwrap.dedent('''
    import os, socket
    _LOG = os.environ["IWIN_OUTBOUND_LOG"]
    open(_LOG + ".active", "w").close()

    def _local(host):
        host = host.decode() if isinstance(host, bytes) else host
        return host in (None, "", "localhost", "0.0.0.0", "::", "::1") or str(host).startswith("127.")

    def _record(what):
        with open(_LOG, "a") as f:
            f.write(what + "\\n")

    def _guarded(original, what):
        def call(self, address, *args):
            if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
                _record(f"{what} {address!r}")
            return original(self, address, *args)
        return call

    socket.socket.connect = _guarded(socket.socket.connect, "connect")
    socket.socket.connect_ex = _guarded(socket.socket.connect_ex, "connect_ex")
    _getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if not _local(host):
            _record(f"getaddrinfo {host!r}")
        return _getaddrinfo(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 30) -> bytes:
    assert urlparse(url).hostname in LOOPBACK, url
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _wait_until_serving(url: str, proc: subprocess.Popen, log: Path, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"iwin-seg demo exited with {proc.returncode}:\n{log.read_text()}")
        try:
            _get(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"iwin-seg demo did not answer at {url} within {seconds} s:\n{log.read_text()}")


def _guard_env(folder: Path) -> dict:
    guard = folder / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(guard), str(REPO)]),
               IWIN_OUTBOUND_LOG=str(folder / "outbound.log"), TORCH_HOME=str(folder / "torch_home"),
               GRADIO_TEMP_DIR=str(folder / "gradio"))
    env.pop("GRADIO_ANALYTICS_ENABLED", None)  # the command must turn it off itself
    return env


def _serve(folder: Path, model_args: list[str]):
    """``iwin-seg demo <model_args>`` on a free loopback port, with the outbound guard (a generator: the server's
    facts, then it is stopped)."""
    env = _guard_env(folder)
    probe = "import socket; s = socket.socket(); s.settimeout(0.01); s.connect_ex(('192.0.2.1', 9))"
    subprocess.run([sys.executable, "-c", probe], env=dict(env, IWIN_OUTBOUND_LOG=str(folder / "probe.log")),
                   check=True, timeout=120)
    assert "192.0.2.1" in (folder / "probe.log").read_text(), "the outbound guard does not see connections"
    port, log = _free_port(), folder / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "iwin_models.apps.cli", "demo", *model_args, "--host",
                                 "127.0.0.1", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=folder)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_serving(url, proc, log)
        assert (folder / "outbound.log.active").is_file(), "the server ran without the outbound guard"
        yield dict(url=url, proc=proc, folder=folder, log=log, outbound=folder / "outbound.log")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``iwin-seg demo --model <mini folder>`` on a free loopback port, with the outbound guard."""
    folder = tmp_path_factory.mktemp("demo_browser")
    mini = make_mini_folder(folder / "mini")
    for facts in _serve(folder, ["--model", str(mini)]):
        yield dict(facts, mini=mini)


@pytest.fixture(scope="module")
def expected(server):
    """The sample's class map by segment(), here, with the model the server serves."""
    model = load_segmenter(str(server["mini"]))
    return dict(labels=segment(model, SAMPLE_IMAGE), names=list(model.class_names), palette=np.asarray(model.palette,
                                                                                                      np.uint8))


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (one for the module: playwright's sync API runs one at a time in a thread)."""
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        yield chromium
        chromium.close()


def _browse(browser, url: str):
    """One page on ``url`` (a generator); every request to another host is recorded in ``page.outside`` and
    aborted."""
    tab = browser.new_page(viewport={"width": 1400, "height": 1000})
    tab.outside = []

    def route(r):
        request_url = r.request.url
        if request_url.startswith(("data:", "blob:")) or urlparse(request_url).hostname in LOOPBACK:
            r.continue_()
        else:
            tab.outside.append(request_url)
            r.abort()

    tab.route("**/*", route)
    tab.goto(url)
    tab.wait_for_selector("#run", timeout=RESULT_TIMEOUT_MS)
    yield tab
    tab.close()


@pytest.fixture(scope="module")
def page(browser, server):
    yield from _browse(browser, server["url"])


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = os.environ.get("IWIN_SCREENSHOT_DIR")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _upload(page, path: Path) -> None:
    page.locator("#photo input[type=file]").set_input_files(str(path))
    page.wait_for_function(f"() => document.querySelector('#photo img')?.src.includes({path.name!r})")


def _segment(page, path: Path, expect: str) -> None:
    """Upload ``path``, press Segment, wait until ``expect`` is in the info or status line."""
    _upload(page, path)
    page.click("#run")
    page.wait_for_function(
        f"() => (document.querySelector('#info')?.innerText + document.querySelector('#status')?.innerText)"
        f".includes({expect!r})", timeout=RESULT_TIMEOUT_MS)


def _picture(page, selector: str, base: str) -> np.ndarray:
    src = page.locator(f"{selector} img").get_attribute("src")
    return np.asarray(Image.open(BytesIO(_get(urljoin(base, src)))).convert("RGB"))


def _download(page, name: str, base: str) -> np.ndarray:
    href = page.locator(f"#downloads a[download={name!r}]").get_attribute("href")
    return np.asarray(Image.open(BytesIO(_get(urljoin(base, href)))))


def test_the_sample_s_result_is_what_segment_finds(page, server, expected, screenshots):
    opacity = page.locator("#opacity input[type=number]")
    opacity.fill(str(OPACITY))
    opacity.press("Enter")
    _segment(page, SAMPLE_IMAGE, "sample.jpg: 640 x 427 pixels")
    labels, names, palette = expected["labels"], expected["names"], expected["palette"]
    assert page.locator("#status").inner_text().strip() == ""

    shown = [line.strip() for line in page.locator("#legend li").all_inner_texts()]
    lines = [text for _, text in legend_entries(labels, names)]
    assert [s.rsplit(" ", 1)[0] for s in shown[:3]] == [t.rsplit(" ", 1)[0] for t in lines[:3]], (shown, lines)
    assert len(shown) == len(lines)

    image = load_image(SAMPLE_IMAGE)
    blend = (image * (1 - OPACITY) + palette[labels] * OPACITY).astype(np.uint8)
    overlay = _picture(page, "#overlay", server["url"])
    assert overlay.shape == image.shape, "the overlay is shown at the photo's size (no scaling involved)"
    close = (np.abs(overlay.astype(int) - blend).max(axis=-1) <= 1).mean()
    assert close >= 0.995, f"only {close:.2%} of the overlay's pixels are the blend at {OPACITY}"

    confidence = _picture(page, "#confidence", server["url"])
    assert confidence.shape == image.shape and confidence.std() > 0
    assert (_download(page, "sample_labels.png", server["url"]) == labels).mean() >= 0.995
    assert _download(page, "sample_overlay.png", server["url"]).shape == image.shape
    page.screenshot(path=str(screenshots / "demo_result.png"), full_page=True)

    top = legend_entries(labels, names)[0]  # highlight the largest class: the rest dims, no model run
    before = page.locator("#overlay img").get_attribute("src")
    page.locator("#highlight input").click()
    page.get_by_role("option", name=top[1]).click()
    page.wait_for_function(f"() => document.querySelector('#overlay img')?.src !== {before!r}",
                           timeout=RESULT_TIMEOUT_MS)
    lit = _picture(page, "#overlay", server["url"])
    mine = labels == top[0]
    assert (np.abs(lit[mine].astype(int) - blend[mine]).max(axis=-1) <= 1).mean() >= 0.99
    assert (np.abs(lit[~mine].astype(int) - (image[~mine] * DIM).astype(np.uint8)).max(axis=-1) <= 1).mean() >= 0.99


def test_a_bad_photo_is_a_message_on_the_page_and_the_next_photo_works(page, server, expected, screenshots,
                                                                      tmp_path):
    broken, truncated = tmp_path / "broken.jpg", tmp_path / "truncated.jpg"
    broken.write_bytes(b"not an image")
    truncated.write_bytes(SAMPLE_IMAGE.read_bytes()[:5000])
    _segment(page, truncated, "truncated.jpg is not a readable image (")
    _segment(page, broken, "broken.jpg is not a readable image (cannot identify image file 'broken.jpg')")
    assert page.locator("#overlay img").count() == 0 and page.locator("#legend li").count() == 0
    assert "Error" in page.locator("#status").inner_text()
    page.wait_for_timeout(300)  # the toast in place
    page.screenshot(path=str(screenshots / "demo_error.png"), full_page=True)

    photo = tmp_path / "again.jpg"
    shutil.copy(SAMPLE_IMAGE, photo)
    _segment(page, photo, "again.jpg: 640 x 427 pixels")
    assert page.locator("#status").inner_text().strip() == ""
    assert page.locator("#legend li").count() > 0 and page.locator("#overlay img").count() == 1
    assert server["proc"].poll() is None


# --- the detection tab -------------------------------------------------------------------------------

DET_THRESHOLD = 0.9  # where the slider is moved to (the page's default: 0.3)


@pytest.fixture(scope="module")
def det_server(tmp_path_factory, fixtures_dir):
    """``iwin-seg demo --model <registered detector> --weights <the fixtures' mini Mask R-CNN as a folder>``."""
    source = fixtures_dir / "detection" / "mini_mask_rcnn.pth"
    if not source.is_file():
        pytest.skip(f"detection fixtures not found: {source}")
    folder = tmp_path_factory.mktemp("demo_det_browser")
    weights = mini_detector(source.parent).save_pretrained(folder / "mini_det")
    for facts in _serve(folder, ["--model", MINIS["mini_mask_rcnn"], "--weights", str(weights)]):
        yield dict(facts, weights=weights)


@pytest.fixture(scope="module")
def det_page(browser, det_server):
    yield from _browse(browser, det_server["url"])


@pytest.fixture(scope="module")
def det_expected(det_server):
    """The sample's detections by detect(), here, with the model the server serves."""
    return detect(create_detector(MINIS["mini_mask_rcnn"], weights=det_server["weights"]), SAMPLE_IMAGE)


def _detect(page, path: Path, expect: str) -> None:
    """Upload ``path`` in the detection tab, press Detect, wait until ``expect`` is in its info or status line."""
    page.locator("#det_photo input[type=file]").set_input_files(str(path))
    page.wait_for_function(f"() => document.querySelector('#det_photo img')?.src.includes({path.name!r})")
    page.click("#det_run")
    page.wait_for_function(
        f"() => (document.querySelector('#det_info')?.innerText + document.querySelector('#det_status')?.innerText)"
        f".includes({expect!r})", timeout=RESULT_TIMEOUT_MS)


def _counts(page) -> list[tuple[str, int]]:
    lines = [line.strip().rsplit(" ", 1) for line in page.locator("#det_counts li").all_inner_texts()]
    return [(name, int(n)) for name, n in lines]


def test_the_detection_tab_finds_what_detect_finds_and_the_threshold_filters(det_page, det_server, det_expected,
                                                                               screenshots):
    page, found = det_page, det_expected
    assert page.get_by_role("tab").all_inner_texts() == ["Segmentation", "Detection"]
    page.get_by_role("tab", name="Detection").click()
    page.wait_for_selector("#det_run", state="visible")
    _detect(page, SAMPLE_IMAGE, "sample.jpg: 640 x 427 pixels")
    assert page.locator("#det_status").inner_text().strip() == ""
    assert _counts(page) == [(name, n) for _, name, n in class_counts(found, 0.3)]
    image = load_image(SAMPLE_IMAGE)
    overlay = _picture(page, "#det_overlay", det_server["url"])
    close = (np.abs(overlay.astype(int) - np.asarray(detection_overlay(image, found, 0.3))).max(-1) <= 1).mean()
    assert overlay.shape == image.shape and close >= 0.99, f"only {close:.2%} of the overlay is detect()'s"

    before = page.locator("#det_overlay img").get_attribute("src")
    threshold = page.locator("#det_threshold input[type=number]")
    threshold.fill(str(DET_THRESHOLD))
    threshold.press("Tab")  # the slider's release: the kept detections filtered, no model run
    page.wait_for_function(f"() => document.querySelector('#det_counts')?.innerText.includes("
                           f"'scoring {DET_THRESHOLD:.2f} or more')", timeout=RESULT_TIMEOUT_MS)
    page.wait_for_function(f"() => document.querySelector('#det_overlay img')?.src !== {before!r}",
                           timeout=RESULT_TIMEOUT_MS)
    high = [(name, n) for _, name, n in class_counts(found, DET_THRESHOLD)]
    assert _counts(page) == high and sum(n for _, n in high) < sum(n for *_, n in class_counts(found, 0.3))
    href = page.locator("#det_downloads a[download='sample_detections.json']").get_attribute("href")
    record = json.loads(_get(urljoin(det_server["url"], href)))
    assert len(record["detections"]) == sum(n for _, n in high) and record["score_threshold"] == DET_THRESHOLD
    assert all(d["score"] >= DET_THRESHOLD for d in record["detections"])
    page.screenshot(path=str(screenshots / "demo_detection.png"), full_page=True)


def test_a_bad_photo_in_the_detection_tab_is_a_message_and_the_next_works(det_page, det_server, tmp_path):
    page = det_page
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    _detect(page, broken, "broken.jpg is not a readable image")
    assert "Error" in page.locator("#det_status").inner_text() and page.locator("#det_counts li").count() == 0
    photo = tmp_path / "again.jpg"
    shutil.copy(SAMPLE_IMAGE, photo)
    _detect(page, photo, "again.jpg: 640 x 427 pixels")
    assert page.locator("#det_status").inner_text().strip() == "" and page.locator("#det_counts li").count() > 0
    assert det_server["proc"].poll() is None
    assert page.outside == [], f"the page asked other hosts for {page.outside}"
    outbound = det_server["outbound"].read_text() if det_server["outbound"].is_file() else ""
    assert outbound == "", f"the server reached out: {outbound}"


def test_nothing_left_the_machine(page, server):
    """Run last: the page's requests and the server's connections of the tests above."""
    assert page.outside == [], f"the page asked other hosts for {page.outside}"
    outbound = server["outbound"].read_text() if server["outbound"].is_file() else ""
    assert outbound == "", f"the server reached out: {outbound}"
