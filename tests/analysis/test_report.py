"""The HTML run report: self-contained, escaped, and opened in a real headless Chromium.

The browser test fails (never skips) when Chromium is missing or cannot start: `make test` installs it
(scripts/get-chromium.sh), and a report nobody has seen render is not tested.
"""

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from cnnlab.cli.main import main

NUM_FIGURES = 5  # curves, confusion matrix, mistakes, kernels, feature maps
# A run folder name with every character HTML cares about, to prove the page escapes what it shows.
ODD_NAME = "run <b>&'\""
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("report") / ODD_NAME
    assert main(["train", "--model", "lenet-relu", "--epochs", "1", "--num-train", "1000", "--num-val", "300",
                 "--out", str(out), "--no-progress", "--data-dir", str(data_dir), "--report"]) == 0
    return out


@pytest.fixture(scope="module")
def report(run_dir):
    path = run_dir / "report.html"  # written by `cnnlab train --report`
    assert path.is_file()
    return path


@pytest.fixture(scope="module")
def evaluated_accuracy(run_dir, tmp_path_factory, data_dir):
    """The test accuracy exactly as `cnnlab evaluate` prints it."""
    import contextlib

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["evaluate", str(run_dir), "--data-dir", str(data_dir),
                     "--out", str(tmp_path_factory.mktemp("eval") / "confusion.png")]) == 0
    return re.search(r"^test accuracy (\S+) ", out.getvalue(), re.M).group(1)


class _Page(HTMLParser):
    """The parts of the page the tests look at: body attributes, img sources, #test-accuracy, all text."""

    def __init__(self):
        super().__init__()
        self.body, self.images, self.text, self.accuracy, self._in_accuracy = {}, [], [], None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.body = attrs
        elif tag == "img":
            self.images.append(attrs.get("src", ""))
        if attrs.get("id") == "test-accuracy":
            self._in_accuracy, self.accuracy = True, ""

    def handle_endtag(self, tag):
        self._in_accuracy = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_accuracy:
            self.accuracy += data


def _parse(markup: str) -> _Page:
    page = _Page()
    page.feed(markup)
    return page


# ---- the file itself -----------------------------------------------------------------------------

def test_report_is_self_contained(report):
    markup = report.read_text(encoding="utf-8")
    page = _parse(markup)
    assert len(page.images) == NUM_FIGURES
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as img:
            assert 400 <= img.width <= 2000 and 200 <= img.height <= 2000, img.size
    # Nothing fetched from anywhere: no external URLs, and a policy that forbids them anyway.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", markup, re.I)
    assert "Content-Security-Policy" in markup and "default-src 'none'" in markup


def test_report_escapes_run_text(report):
    markup = report.read_text(encoding="utf-8")
    assert "<b>" not in markup  # the folder name, shown in the title and the run line
    assert "run &lt;b&gt;&amp;&#39;&#34;" in markup  # Jinja2's (markupsafe's) escapes
    assert ODD_NAME in "".join(_parse(markup).text)


def test_report_holds_settings_metrics_and_tables(report, evaluated_accuracy):
    page = _parse(report.read_text(encoding="utf-8"))
    text = " ".join(page.text)
    assert page.accuracy == evaluated_accuracy
    for expected in ("lenet-relu", "onecycle", "Training curves", "per-class accuracy", "ankle boot", "t-shirt",
                     "Most confident mistakes", "kernels", "Feature maps", "net.0", "Conv2d", "MaxPool2d",
                     "61,706", "1x6x28x28", "Grad-CAM heat map", "one 1x28x28 input"):
        assert expected in text, expected


def test_report_command_with_out_and_test_index(run_dir, tmp_path, capsys, data_dir):
    out = tmp_path / "elsewhere" / "r.html"
    assert main(["report", str(run_dir), "--out", str(out), "--test-index", "9", "--data-dir", str(data_dir)]) == 0
    assert f"report: {out}" in capsys.readouterr().out
    assert "test image 9" in out.read_text(encoding="utf-8")


def test_report_errors_are_one_line(run_dir, tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert main(["report", str(run_dir), "--test-index", "10000", "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "no such run folder" in err and "out of range" in err and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


# ---- in a real browser ---------------------------------------------------------------------------

def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"no headless browser found (tried {', '.join(BROWSERS)}); install Debian's chromium "
                "(`make test` runs scripts/get-chromium.sh) — the report must be checked in a real browser")


def _chromium(tmp_path, *args) -> subprocess.CompletedProcess:
    command = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", *args]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"Chromium did not finish within 120 s: {' '.join(command)}")
    except OSError as exc:
        pytest.fail(f"Chromium could not start ({exc}): {' '.join(command)}")
    if proc.returncode != 0:
        pytest.fail(f"Chromium exited with {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def test_report_renders_in_chromium_with_every_image_loaded(report, evaluated_accuracy, tmp_path):
    proc = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", report.as_uri())
    page = _parse(proc.stdout)
    if not page.body:
        pytest.fail(f"Chromium printed no page: stdout {proc.stdout[:500]!r}, stderr {proc.stderr[-2000:]}")
    # Set by the page's own script once the window has loaded, so the script ran too.
    assert page.body.get("data-broken-images") == "0", page.body
    assert page.body.get("data-images-loaded") == str(NUM_FIGURES), page.body
    assert page.accuracy == evaluated_accuracy


def test_report_screenshot_is_a_real_page(report, tmp_path):
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri())
    if not shot.is_file():
        pytest.fail("Chromium wrote no screenshot")
    with Image.open(shot) as img:
        assert img.size == (1280, 2000)
        grey = np.asarray(img.convert("L"))
    # Not a blank or an error page: dark text and figure ink over a good part of the page, in many shades.
    assert (grey < 100).sum() > 20_000
    assert len(np.unique(grey)) > 50
