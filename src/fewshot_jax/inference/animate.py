"""Animate: a fitted identity + a driving sequence -> an mp4, generated in fixed-size batches.

Generation is one jitted function of a fixed batch shape (the last batch is padded), so a video of
any length compiles once. Frames are written to the mp4 as they come out, so memory does not grow
with the driver's length. Given a ``PasteTarget``, each batch of crops is pasted back into the
source picture (``paste_back``) and the video shows the whole picture.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from fewshot_jax import landmarks as lmk
from fewshot_jax.images import to_uint8
from fewshot_jax.inference import audio as audio_lib
from fewshot_jax.inference import finetune as inf
from fewshot_jax.inference import motion as motion_lib
from fewshot_jax.inference.driver import Driver, iter_driver_crops
from fewshot_jax.inference.identity import Identity, check_finite
from fewshot_jax.inference.paste_back import PasteBack, PasteTarget
from fewshot_jax.inference.run import LoadedRun
from fewshot_jax.progress import Progress, format_seconds

LAYOUTS = ("single", "side-by-side")


@dataclasses.dataclass
class AnimateSummary:
  """What ``animate`` did; printed by the CLI as JSON."""

  out: str
  frames: int
  fps: float
  seconds: float
  generated_fps: float
  held_frames: int
  motion: str
  layout: str
  finetune_steps: int
  reference: int = 0
  motion_scale: float = 1.0
  animate: str = "all"
  audio: str = "off"  # what happened to the driver's sound (audio.Soundtrack.note)
  paste_back: bool = False  # the whole source picture (True) or the face crop
  width: int = 0
  height: int = 0
  paste_note: str = ""  # why the crop was written where paste-back was wanted

  def line(self) -> str:
    what = "the whole picture" if self.paste_back else "the face crop"
    note = f" ({self.paste_note})" if self.paste_note else ""
    return (f"wrote {self.out}: {self.frames} frames of {what}{note} at {self.width}x"
            f"{self.height}, {self.fps:g} fps, in {format_seconds(self.seconds)} "
            f"({self.generated_fps:.1f} frames/s), "
            f"{self.held_frames} driver frames without a face held the last landmarks; "
            f"audio: {self.audio}")


class NonFiniteFrames(ValueError):
  """The generator gave NaN or Inf: as uint8 those become black frames, never a video."""


def make_generator(run: LoadedRun, batch_size: int) -> Callable[..., np.ndarray]:
  """``gen(vars, psi, points[n, 68, 2]) -> uint8 [n, S, S, 3]`` for any ``n``, compiled once for
  ``batch_size`` (shorter batches are padded with their last frame).

  Raises ``NonFiniteFrames`` (naming the batch's first frame index) when a generated frame holds
  a NaN or Inf, instead of returning it clipped to black.
  """
  cfg = run.config

  @jax.jit
  def gen(v, psi, points):
    frames = inf.generate(run.graphdef, v, cfg.model, psi, points)
    finite = jnp.all(jnp.isfinite(frames), axis=(1, 2, 3))
    return jnp.clip(jnp.round((frames + 1.0) * 127.5), 0, 255).astype(jnp.uint8), finite

  def call(v, psi, points: np.ndarray) -> np.ndarray:
    n = len(points)
    if n < batch_size:
      points = np.concatenate([points, np.repeat(points[-1:], batch_size - n, 0)])
    frames, finite = gen(v, psi, points)
    bad = np.flatnonzero(~np.asarray(finite)[:n])
    if bad.size:
      raise NonFiniteFrames(f"generated frame {int(bad[0])} of this batch of {n} is NaN or Inf "
                            "(the identity's or the run's weights, or the driving landmarks)")
    return np.asarray(frames)[:n]

  return call


def _panels(identity: Identity, driver: Driver, targets: np.ndarray, size: int,
            height: int | None = None) -> Iterator[np.ndarray]:
  """The side-by-side layout's left columns per frame: the first shot, then the driver's crop
  (or, for a landmark-file driver, the driving landmarks drawn) and the retargeted landmarks;
  each panel scaled to ``height`` (a pasted-back frame's) when given."""
  shot = identity.shots[0]
  crops = iter_driver_crops(driver, size) if driver.boxes is not None else None
  draw = jax.jit(lambda p: lmk.rasterize(p, size))
  for i in range(len(driver)):
    left = next(crops) if crops is not None else to_uint8(draw(driver.landmarks[i:i + 1])[0] * 2 - 1)
    drawn = to_uint8(draw(targets[i:i + 1])[0] * 2 - 1)
    row = np.concatenate([shot, left, drawn], axis=1)
    if height is not None and height != size:
      row = np.asarray(Image.fromarray(row).resize((3 * height, height),
                                                   Image.Resampling.BICUBIC))
    yield row


def animate(
    run: LoadedRun,
    identity: Identity,
    driver: Driver,
    out: str | os.PathLike,
    motion: str = "relative",
    layout: str = "single",
    batch_size: int = 8,
    show_progress: bool = True,
    reference: str | int = "first",
    motion_scale: float = 1.0,
    region: str = "all",
    audio: bool = True,
    generator: Callable[..., np.ndarray] | None = None,
    paste: PasteTarget | None = None,
) -> AnimateSummary:
  """Writes ``out`` (mp4 at the driver's fps): the identity's face moved by the driver.

  Args:
    run: the loaded run (architecture, E/D weights).
    identity: the fitted face (``fit_identity`` or ``load_identity``).
    driver: the driving landmarks (``load_driver``).
    out: the mp4 to write (atomically).
    motion: ``relative`` (driver's motion on the source's face shape) or ``absolute``.
    reference: the driver frame motion is measured from: ``first``, ``auto`` (the frame closest
      to the source's pose and expression) or an index (``motion.retarget``).
    motion_scale: multiplies the expression relative to the reference (0: the reference's).
    region: ``all``, ``pose`` (head motion only) or ``expression`` (expression only).
    layout: ``single`` (generated frames) or ``side-by-side`` (shot | driver | landmarks |
      generated, the panels at the generated frame's height).
    batch_size: frames generated per call.
    show_progress: print a progress line.
    audio: copy the driver video's sound into ``out``, in sync and cut to the frames written
      (``audio.Soundtrack``).
    generator: ``make_generator(run, batch_size)`` built once for several videos (a batch), so
      they share one compiled program; a new one by default.
    paste: the source picture to paste each generated crop back into (``paste_back``); None
      writes the crops.

  Raises:
    ValueError: a bad layout, reference, motion scale or region, an identity holding NaN or Inf, or a generated frame
      that is not finite (``out`` is then not written: a NaN frame would be a black one), or a
      driver audio track that cannot be read.
  """
  from fewshot_jax.visualize import Mp4Writer  # pylint: disable=g-import-not-at-top

  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r}: expected one of {LAYOUTS}")
  check_finite(identity, "identity")
  size = run.config.model.image_size
  # Relative motion keeps the face shape of the first shot (the one shown side by side).
  source = identity.shot_landmarks[0]
  ref_index = motion_lib.resolve_reference(reference, source, driver.landmarks)
  targets = motion_lib.retarget(source, driver.landmarks, motion, ref_index, motion_scale, region)
  v = jax.tree.map(jnp.asarray, identity.model_vars(run))
  psi = jnp.asarray(identity.psi)
  gen = generator or make_generator(run, batch_size)
  paster = PasteBack(paste, size) if paste is not None else None
  height = paste.size[1] if paste is not None else None
  panels = (_panels(identity, driver, targets, size, height) if layout == "side-by-side"
            else None)
  progress = Progress(len(targets), "animate", "frames") if show_progress else None
  t0 = time.perf_counter()
  upscale = 1 if paste is not None else max(1, 256 // size)  # a picture keeps its own size
  # The driver's sound is probed now and muxed in when the video is complete (a landmark file has
  # none); the video goes to a temporary sibling until then.
  track = audio_lib.Soundtrack(out, driver.path if driver.boxes is not None else None, audio)
  with track, Mp4Writer(track.video_path, driver.fps, upscale) as writer:
    for start in range(0, len(targets), batch_size):
      try:
        frames = gen(v, psi, targets[start:start + batch_size])
      except NonFiniteFrames as e:
        raise NonFiniteFrames(f"{out}: not written: from frame {start}, {e}") from None
      if paster is not None:
        frames = paster(frames)
      for frame in frames:
        writer.write(frame if panels is None else np.concatenate([next(panels), frame], axis=1))
      if progress:
        progress.update(len(frames))
  seconds = time.perf_counter() - t0
  width, height = paste.size if paste is not None else (size * upscale, size * upscale)
  if panels is not None:
    width += 3 * height
  return AnimateSummary(
      out=str(pathlib.Path(out)), frames=writer.frames, fps=driver.fps, seconds=seconds,
      generated_fps=writer.frames / seconds if seconds > 0 else 0.0, held_frames=driver.held,
      motion=motion, layout=layout, finetune_steps=int(identity.info.get("finetune_steps", 0)),
      reference=ref_index, motion_scale=float(motion_scale), animate=region, audio=track.note,
      paste_back=paste is not None, width=width, height=height)
