"""``tgcnet serve``: the handler behind the button, the launch settings, and the page in a real browser.

The browser tests drive Debian's headless Chromium against ``python -m tgcnet.cli serve`` in a
subprocess, as a user would run it. The documentation's screenshot is the page after a
segmentation: ``TGCNET_SCREENSHOT=docs/images/serve.png`` saves it there, and
``TGCNET_SCREENSHOT_CHECKPOINT=runs/demo/run`` serves a trained run (``tgcnet demo`` writes one)
instead of the tiny untrained model, so its mask means something::

    TGCNET_SCREENSHOT=docs/images/serve.png TGCNET_SCREENSHOT_CHECKPOINT=runs/demo/run pytest tests/test_serve.py
"""
from __future__ import annotations

import io
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import urllib.request
import zlib
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from helpers import make_run_dir
from PIL import Image

import tgcnet
from tgcnet.serve import DEFAULT_HOST, sample_examples, segment_upload

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
WAIT_S = 60
#: the sample whose mask the nudged tiny model leaves partial (about a fifth of the image)
SAMPLE = 4


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("serve-run"))


@pytest.fixture(scope="module")
def sample() -> list[str]:
    return sample_examples()[SAMPLE]


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height, with no pixel data: refused before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    both = a.sum() + b.sum()
    return 1.0 if both == 0 else float(2 * (a & b).sum() / both)


# --------------------------------------------------------------------------- the handler

def test_handler_gives_segment_s_overlay_mask_and_report(run_dir, sample):
    image, caption, truth = sample
    overlay, mask, report = segment_upload(run_dir, image, caption, truth, device="cpu")
    expected = tgcnet.segment(run_dir, image, caption, device="cpu")
    np.testing.assert_array_equal(overlay, expected.overlay)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask > 0, expected.mask)
    assert 0 < expected.foreground < 1, "the nudged decoder should give a partial mask"
    dice = _dice(expected.mask, np.asarray(Image.open(truth)) > 0)
    assert report.splitlines() == [f"Foreground: {100 * expected.foreground:.1f}% of the image",
                                   f"Location words: {expected.describe_location()}",
                                   f"Dice against the ground truth: {dice:.4f}"]
    assert "Dice" not in segment_upload(run_dir, image, caption, device="cpu")[2]


@pytest.mark.parametrize("case, message", [
    ("empty caption", r"^Error: the caption of {name} is empty; describe what to segment"),
    ("long caption", r"^Error: the caption of {name} has \d+ tokens, more than the \d+ the text context holds"),
    ("not an image", r"^Error: cannot read image notes\.png"),
    ("mask not an image", r"^Error: cannot read mask notes\.png"),
    ("huge image", r"^Error: image huge\.png is .*megapixels.*downsample it first"),
    ("small mask", r"^Error: ground-truth mask small\.png is 5x4 but image {name} is 224x224$"),
    ("no image", r"^Error: no image: upload one"),
])
def test_handler_shows_the_library_error_and_clears_the_result(run_dir, sample, tmp_path, case, message):
    image, caption, truth = sample
    if case == "empty caption":
        caption = "   "
    elif case == "long caption":
        caption = "left lung " * 80
    elif case in ("not an image", "mask not an image"):
        notes = tmp_path / "notes.png"
        notes.write_text("not pixels")
        image, truth = (notes, truth) if case == "not an image" else (image, notes)
    elif case == "huge image":
        image = _png_header_only(tmp_path / "huge.png", 20000, 20000)
    elif case == "small mask":
        truth = tmp_path / "small.png"
        Image.fromarray(np.zeros((4, 5), np.uint8)).save(truth)
    elif case == "no image":
        image = None
    overlay, mask, text = segment_upload(run_dir, image and str(image), caption, truth and str(truth), device="cpu")
    assert overlay is None and mask is None
    assert re.search(message.format(name=re.escape(Path(sample[0]).name)), text), text
    assert str(tmp_path) not in text, "the upload folder is noise to the user: the file name is enough"


@pytest.fixture
def dicom_sample(sample, tmp_path) -> Path:
    """The sample image's pixels as a DICOM file (what a PACS export looks like)."""
    pytest.importorskip("pydicom", reason='DICOM needs pip install "tgcnet[dicom]"')
    from helpers import dicom_xray

    from tgcnet.data.dataset import load_image

    path = tmp_path / "chest.dcm"
    dicom_xray(load_image(sample[0])).save_as(path, enforce_file_format=True)
    return path


def test_handler_reads_a_dicom_upload_as_its_png(run_dir, sample, dicom_sample):
    _, png_mask, _ = segment_upload(run_dir, sample[0], sample[1], device="cpu")
    overlay, mask, report = segment_upload(run_dir, str(dicom_sample), sample[1], sample[2], device="cpu")
    assert (mask > 0).any()
    np.testing.assert_array_equal(mask, png_mask)
    assert report.startswith("Foreground: ") and "Dice against the ground truth" in report


def test_an_unexpected_failure_is_one_generic_line_and_a_logged_traceback(run_dir, sample, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("internal detail")
    monkeypatch.setattr(tgcnet, "segment", broken)
    overlay, mask, text = segment_upload(run_dir, sample[0], sample[1], device="cpu")
    assert overlay is None and mask is None
    assert text == "Error: segmentation failed with an internal error; the server's log has the details"
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: internal detail" in err


# --------------------------------------------------------------------------- launch settings

@pytest.fixture
def launches(monkeypatch, tmp_path) -> list[dict]:
    """Every Blocks.launch call's keywords, with nothing started."""
    gr = pytest.importorskip("gradio", reason='the web page needs gradio: pip install "tgcnet[serve]"')
    monkeypatch.delenv("GRADIO_ANALYTICS_ENABLED", raising=False)   # restored afterwards
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    calls: list[dict] = []

    def launch(self, **kwargs):
        calls.append(kwargs)
        return None, f"http://{kwargs['server_name']}:{kwargs.get('server_port') or 7860}/", None
    monkeypatch.setattr(gr.Blocks, "launch", launch)
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: None)
    return calls


def _no_outside_fonts(theme) -> None:
    import gradio as gr

    assert not any(isinstance(f, gr.themes.GoogleFont) for f in theme._font + theme._font_mono)
    assert all(sheet.get("url") is None for sheet in (f.stylesheet() for f in theme._font + theme._font_mono))


def test_serve_binds_loopback_never_shares_and_caps_uploads(run_dir, launches, capsys):
    from tgcnet.serve import serve

    serve(run_dir, port=7999, max_upload_mb=2, device="cpu")
    (kwargs,) = launches
    assert kwargs["server_name"] == DEFAULT_HOST == "127.0.0.1" and kwargs["server_port"] == 7999
    assert kwargs["share"] is False and kwargs["max_file_size"] == 2 * 1024 * 1024
    assert kwargs["ssr_mode"] is False
    _no_outside_fonts(kwargs["theme"])
    out = capsys.readouterr().out
    assert out.startswith("tgcnet serve: http://127.0.0.1:7999/") and "reachable from other" not in out
    serve(run_dir, host="0.0.0.0", port=7999, device="cpu")
    assert launches[1]["server_name"] == "0.0.0.0" and launches[1]["share"] is False
    assert "reachable from other machines" in capsys.readouterr().out


def test_a_built_app_launched_by_hand_keeps_the_closed_defaults(run_dir, launches):
    from tgcnet.serve import build_app

    app = build_app(run_dir, max_upload_mb=0.5, device="cpu")
    assert app.analytics_enabled is False and os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    app.launch()
    assert launches[0]["server_name"] == "127.0.0.1" and launches[0]["share"] is False
    assert launches[0]["max_file_size"] == 512 * 1024


def test_build_app_refuses_a_missing_checkpoint_and_a_zero_cap(tmp_path, launches):
    from tgcnet.serve import build_app

    with pytest.raises(FileNotFoundError, match="missing not found"):
        build_app(tmp_path / "missing")
    with pytest.raises(ValueError, match="max-upload-mb must be a positive number"):
        build_app(tmp_path / "missing", max_upload_mb=0)
    assert launches == []


def test_samples_offer_image_caption_and_ground_truth():
    from tgcnet.data import sample_root

    examples = sample_examples()
    assert len(examples) == len(list((sample_root() / "test" / "images").iterdir())) == 8
    for image, caption, truth in examples:
        assert Path(image).is_file() and Path(truth).is_file() and caption.endswith(".")
        assert Path(truth).name == f"mask_{Path(image).name}"


# --------------------------------------------------------------------------- the page in a browser

class Server:
    """``python -m tgcnet.cli serve`` in a subprocess; :meth:`url` waits for the address it prints."""

    def __init__(self, run: Path, home: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "GRADIO_TEMP_DIR": str(home / "gradio-tmp"), "PYTHONUNBUFFERED": "1"}
        self.log = home / "server.log"
        self._stderr = self.log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tgcnet.cli", "serve", "--checkpoint", str(run), "--port", str(port),
             "--device", "cpu", "--threads", "1"],
            cwd=home, env=env, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self._url: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            found = re.search(r"tgcnet serve: (http://\S+?)/?[;\s]", line)
            if found:
                self._url.append(found.group(1))
                self._ready.set()
        self._ready.set()   # the process ended: url() reports its log

    def url(self) -> str:
        self._ready.wait(WAIT_S)
        if not self._url:
            raise AssertionError(f"tgcnet serve did not start (exit {self.process.poll()}):\n{self.log.read_text()}")
        return self._url[0]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._stderr.close()


@pytest.fixture(scope="module")
def served_run(run_dir) -> Path:
    """The run the browser tests serve: the nudged tiny one, or $TGCNET_SCREENSHOT_CHECKPOINT (a trained
    run, so that the documentation's screenshot shows a mask that means something)."""
    return Path(os.environ.get("TGCNET_SCREENSHOT_CHECKPOINT") or run_dir)


def _skip_without_browser() -> None:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(f"the browser test needs {CHROMIUM} and {CHROMEDRIVER}: install Debian's chromium and "
                    "chromium-driver")
    pytest.importorskip("selenium", reason="the browser test needs selenium (tgcnet[test])")


@pytest.fixture(scope="module")
def server(served_run, tmp_path_factory):
    _skip_without_browser()   # before starting a server no browser will visit
    server = Server(served_run, tmp_path_factory.mktemp("serve-home"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    _skip_without_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1280,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})   # every request the page makes
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The served page in the browser, by the elem_ids the app gives its components."""

    def __init__(self, driver, url: str) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.url = driver, url
        self.wait = WebDriverWait(driver, WAIT_S, poll_frequency=0.1)
        driver.get(url)
        self.wait.until(lambda d: d.find_elements("css selector", "#tgcnet-submit"))

    def find(self, css: str):
        return self.driver.find_element("css selector", css)

    def upload(self, component: str, path: str | Path) -> None:
        self.find(f"#{component} input[type=file]").send_keys(str(path))
        self.holds(component, path)

    def holds(self, component: str, path: str | Path) -> None:
        """Wait until a file component lists ``path``'s name: the file is then on the server."""
        css = f'#{component} td.filename[aria-label="{Path(path).name}"]'
        self.wait.until(lambda d: d.find_elements("css selector", css), f"{component} never listed {path}")

    def caption(self, text: str) -> None:
        from selenium.webdriver.common.keys import Keys

        box = self.find("#tgcnet-caption textarea")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        if text:
            box.send_keys(text)

    def submit(self, expect: str) -> str:
        """Press Segment and wait until the result box shows ``expect`` (a regex); returns its text."""
        self.find("#tgcnet-submit").click()
        self.wait.until(lambda d: re.search(expect, self.result(), re.S), f"no {expect!r} in the result box")
        return self.result()

    def result(self) -> str:
        return self.find("#tgcnet-result textarea").get_attribute("value") or ""

    def image(self, component: str) -> np.ndarray:
        """The picture an output component shows, as the browser fetched it (a URL on the server)."""
        src = self.wait.until(lambda d: self.find(f"#{component} img").get_attribute("src"))
        with urllib.request.urlopen(src, timeout=WAIT_S) as response:
            return np.asarray(Image.open(io.BytesIO(response.read())))


def _requests(driver) -> list[str]:
    """Every http(s)/ws(s) URL the page requested since the last call (Chromium's network log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return [u for u in urls if urlparse(u).scheme in ("http", "https", "ws", "wss")]


def test_the_page_segments_an_upload_as_segment_does(server, browser, served_run, sample):
    image, caption, truth = sample
    expected = tgcnet.segment(served_run, image, caption, device="cpu")   # while the server starts
    assert urlparse(server.url()).hostname == "127.0.0.1", "loopback unless --host says otherwise"
    page = Page(browser, server.url())
    page.upload("tgcnet-image", image)
    page.upload("tgcnet-truth", truth)
    page.caption(caption)
    report = page.submit(r"^Foreground: .*Dice")
    shown = page.image("tgcnet-mask")
    assert shown.shape == expected.mask.shape and set(np.unique(shown)) <= {0, 255}
    np.testing.assert_array_equal(shown > 127, expected.mask)
    np.testing.assert_array_equal(page.image("tgcnet-overlay"), expected.overlay)
    assert f"Foreground: {100 * expected.foreground:.1f}%" in report
    assert expected.describe_location() in report
    assert f"Dice against the ground truth: {_dice(expected.mask, np.asarray(Image.open(truth)) > 0):.4f}" in report
    screenshot = browser.get_screenshot_as_png()
    assert Image.open(io.BytesIO(screenshot)).size[0] >= 1000
    if os.environ.get("TGCNET_SCREENSHOT"):
        Path(os.environ["TGCNET_SCREENSHOT"]).write_bytes(screenshot)
    requests = _requests(browser)
    assert any(urlparse(u).path.endswith(".js") for u in requests), "the network log saw the page load"
    outside = [u for u in requests if urlparse(u).hostname != "127.0.0.1"]
    assert outside == [], "an offline network's page must load nothing from outside (fonts, analytics, CDNs)"

    page.caption("")
    text = page.submit(r"^Error: ")
    assert re.match(rf"Error: the caption of {re.escape(Path(image).name)} is empty;", text), text
    assert not browser.find_elements("css selector", "#tgcnet-mask img"), "a stale mask beside an error misleads"


def test_the_page_refuses_a_huge_image_in_one_line(server, browser, tmp_path):
    huge = _png_header_only(tmp_path / "huge.png", 20000, 20000)
    page = Page(browser, server.url())
    page.upload("tgcnet-image", huge)
    page.caption("pulmonary infection.")
    text = page.submit(r"^Error: ")
    assert re.match(r"Error: image huge\.png is .*megapixels.*downsample it first", text), text
    assert "\n" not in text and "Traceback" not in server.log.read_text()


def test_the_page_takes_a_dicom_upload(server, browser, served_run, sample, dicom_sample):
    expected = tgcnet.segment(served_run, sample[0], sample[1], device="cpu")
    page = Page(browser, server.url())
    page.upload("tgcnet-image", dicom_sample)
    page.caption(sample[1])
    page.submit(r"^Foreground: ")
    np.testing.assert_array_equal(page.image("tgcnet-mask") > 127, expected.mask)


def test_a_sample_fills_image_caption_and_truth_in_one_click(server, browser):
    image, caption, _ = sample_examples()[0]
    page = Page(browser, server.url())
    page.find("#tgcnet-samples tbody tr").click()
    page.wait.until(lambda d: page.find("#tgcnet-caption textarea").get_attribute("value") == caption)
    page.holds("tgcnet-image", image)
    assert page.submit(r"^Foreground: .*\n.*\nDice against the ground truth: ")
