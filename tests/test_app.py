"""The web app (``fewshot-jax app``) driven in a real headless Chromium, as a user would.

The app runs as its own process (the command a user types) on the carphone-trained run. The
browser picks the bundled examples (the astronaut, the carphone clip), runs a short fine-tune,
waits for the video, and downloads the mp4 the page serves; PyAV must play it with the driver's
frame count. Bad uploads must show the CLI's one-line error on the page.

Chromium is Debian's (``make test`` installs it); Playwright drives it through
``executable_path``, never a browser of its own.

``python tests/test_app.py docs/app.png`` takes the README's screenshot with the same steps.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import socket
import subprocess
import sys
import time
import urllib.request

import av
import pytest
from playwright.sync_api import sync_playwright

from carphone_run import carphone_run
from test_prep_backends import carphone_path
from fewshot_jax import cli

CHROMIUM = "/usr/bin/chromium"
# Headless, and nothing that would reach past this machine.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
STEPS = 2  # fine-tuning steps on the page: the test checks the path, not the quality
EXAMPLE = "the astronaut, driven by the carphone clip"
ROOT = pathlib.Path(__file__).parents[1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def serve_app(run_dir: pathlib.Path, out_dir: pathlib.Path, log: pathlib.Path):
  """``fewshot-jax app`` on a free port of 127.0.0.1 until the block ends; yields its URL."""
  port = _free_port()
  env = dict(os.environ, FEWSHOT_JAX_XLA_CACHE=str(ROOT / ".pytest_cache" / "xla"))
  with open(log, "w") as out:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fewshot_jax.cli", "app", "--checkpoint", str(run_dir),
         "--port", str(port), "--out-dir", str(out_dir)],
        stdout=out, stderr=subprocess.STDOUT, env=env)
  url = f"http://127.0.0.1:{port}/"
  try:
    deadline = time.monotonic() + 180
    while True:
      assert proc.poll() is None, f"the app exited ({proc.returncode}): {log.read_text()[-3000:]}"
      try:
        with urllib.request.urlopen(url, timeout=2) as r:
          if r.status == 200:
            break
      except OSError:
        pass
      assert time.monotonic() < deadline, f"the app did not serve {url}: {log.read_text()[-3000:]}"
      time.sleep(0.5)
    yield url
  finally:
    proc.terminate()
    proc.wait(timeout=30)


@contextlib.contextmanager
def chromium_page():
  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    try:
      yield browser.new_page(viewport={"width": 1280, "height": 900})
    finally:
      browser.close()


def animate_the_examples(page, url: str, steps: int = STEPS) -> str:
  """Picks the bundled examples, sets the fine-tuning steps, clicks Animate and waits for the
  result; returns the URL of the mp4 the page plays."""
  page.goto(url)
  page.get_by_text(EXAMPLE).click()
  page.wait_for_selector("#source-preview img")  # the photo is shown once it is in
  page.wait_for_selector("#driver video")
  box = page.locator("#steps input[type=number]")
  box.fill(str(steps))
  box.press("Enter")
  page.click("#animate")
  page.wait_for_selector("#result video[src]", timeout=240_000)
  return page.locator("#result video").get_attribute("src")


def error_shown(page, pattern: str) -> str:
  """The text of the error the page shows that matches ``pattern`` (the browser may show its own,
  such as "Video not playable" for a driver that is not a video)."""
  messages = page.locator(".toast-message-text.error").filter(has_text=re.compile(pattern))
  messages.first.wait_for(timeout=60_000)
  return " ".join(messages.first.inner_text().split())


def _frames(path: pathlib.Path) -> int:
  with av.open(str(path)) as container:
    return sum(1 for _ in container.decode(video=0))


def _size(path: pathlib.Path) -> tuple[int, int]:
  with av.open(str(path)) as container:
    stream = container.streams.video[0]
    return stream.codec_context.width, stream.codec_context.height


@pytest.fixture(scope="module")
def run_dir() -> pathlib.Path:
  return carphone_run()


@pytest.fixture(scope="module")
def app_url(run_dir, tmp_path_factory):
  folder = tmp_path_factory.mktemp("app")
  with serve_app(run_dir, folder / "results", folder / "app.log") as url:
    yield url, folder / "results"


def test_the_page_animates_the_examples_and_serves_a_playable_mp4(app_url, tmp_path):
  url, results = app_url
  with chromium_page() as page:
    src = animate_the_examples(page, url)
    summary = page.locator("#summary textarea").input_value()
  assert src.startswith(url) and src.endswith("/astronaut--carphone.mp4"), src
  served = tmp_path / "served.mp4"
  with urllib.request.urlopen(src, timeout=30) as r:
    served.write_bytes(r.read())
  driver_frames = _frames(pathlib.Path(carphone_path()))
  assert driver_frames == 120
  assert _frames(served) == driver_frames
  assert _size(served) == (512, 512)  # pasted back into the whole astronaut (the default)
  # The page served the file the job wrote in --out-dir (one new job-* folder per click), and
  # says so in the CLI's summary line.
  written = list(results.glob("job-*/astronaut--carphone.mp4"))
  assert len(written) == 1 and written[0].read_bytes() == served.read_bytes()
  assert summary.startswith(f"wrote {written[0]}: 120 frames of the whole picture at 512x512, "
                            "29.97 fps"), summary


def test_bad_uploads_show_the_clis_one_line_error(app_url, run_dir, tmp_path, capsys):
  url, _ = app_url
  not_an_image = tmp_path / "face.png"
  not_an_image.write_text("a text file, not a picture")
  not_a_video = tmp_path / "clip.mp4"
  not_a_video.write_text("a text file, not a video")
  astronaut = tmp_path / "astronaut.png"
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import skimage.data  # pylint: disable=g-import-not-at-top
  Image.fromarray(skimage.data.astronaut()).save(astronaut)
  # What the CLI prints for the same bad driver, with its path.
  assert cli.main(["animate", "--checkpoint", str(run_dir), "--source", str(astronaut),
                   "--driver", str(not_a_video), "--out", str(tmp_path / "out.mp4")]) == 2
  cli_line = capsys.readouterr().err.splitlines()[0]
  cli_message = cli_line.removeprefix("fewshot-jax animate: error: ")
  assert str(not_a_video) in cli_message and cli_message != cli_line, cli_line

  with chromium_page() as page:
    page.goto(url)
    page.locator("#source input[type=file]").set_input_files(str(not_an_image))
    shown = error_shown(page, "face.png")
    assert re.fullmatch(r"source image /\S*/face\.png: not a readable image \(.*\)", shown), shown
    page.reload()
    page.locator("#source input[type=file]").set_input_files(str(astronaut))
    page.wait_for_selector("#source-preview img")
    page.locator("#driver input[type=file]").set_input_files(str(not_a_video))
    page.click("#animate")
    shown = error_shown(page, "clip.mp4")
  # The page names its own copy of the upload; otherwise the line is the CLI's.
  uploaded = re.match(r"/\S*/clip\.mp4", shown).group(0)
  assert shown == cli_message.replace(str(not_a_video), uploaded), (shown, cli_message)


if __name__ == "__main__":
  # python tests/test_app.py docs/app.png: the page with a finished result, for the README.
  import tempfile  # pylint: disable=g-import-not-at-top

  target = pathlib.Path(sys.argv[1])
  with tempfile.TemporaryDirectory() as work:
    with serve_app(carphone_run(), pathlib.Path(work) / "results",
                   pathlib.Path(work) / "app.log") as app, chromium_page() as shot:
      animate_the_examples(shot, app, steps=100)
      shot.wait_for_timeout(1500)  # the video's first frame drawn
      shot.screenshot(path=str(target), full_page=True)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(target) as im:  # 256 colours: a third of the size, the page looks the same
    im = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
  im.save(target, optimize=True)
  print(f"wrote {target} ({target.stat().st_size // 1024} KiB)")
