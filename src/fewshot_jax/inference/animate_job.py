"""One animate job: a face (source pictures or a saved identity) driven by one driver into an mp4.

``fewshot-jax animate`` and the web app (``fewshot-jax app``) both run a job through these two
functions, so a setting means the same in both and a bad input is refused with the same line:
``check_job`` refuses what can be seen before a checkpoint is loaded, ``run_job`` reads the driver
(first: a bad driver fails before minutes of fine-tuning), fits or loads the identity, and writes
the video.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Sequence

import numpy as np

from fewshot_jax.inference import motion as motion_lib
from fewshot_jax.output_paths import check_input_file, check_output_file


@dataclasses.dataclass(frozen=True)
class AnimateJob:
  """What one animate call makes: the fields are the ``animate`` command's options."""

  driver: str
  out: str
  sources: Sequence[str] = ()  # photos or paintings of one face; or `identity`
  identity: str | None = None  # a folder written by `fewshot-jax finetune`
  save_identity: str | None = None
  finetune_steps: int | None = None  # None: the run's finetune.steps
  motion: str = "relative"
  reference: str = "first"  # first, auto or a frame index, as typed
  motion_scale: float = 1.0
  region: str = "all"  # --animate: all, pose or expression
  layout: str = "single"
  smooth: float = 1.0
  fps: float = 25.0  # a .npy driver's frame rate
  batch_size: int = 8
  enlarge: float = 1.8
  audio: bool = True  # copy a driver video's sound into the output


def check_job(job: AnimateJob) -> str | int:
  """Refuses a job's bad paths and values in one line each, before a checkpoint is loaded or a
  face fitted; returns the parsed reference (``first``, ``auto`` or a frame index)."""
  from fewshot_jax.inference.driver import count_driver_frames  # pylint: disable=g-import-not-at-top

  out = check_output_file(job.out, "--out", (".mp4",))
  driver = check_input_file(job.driver, "--driver")
  if out.exists() and out.samefile(driver):  # the driver is read again while the output is written
    raise ValueError(f"--out {out}: is the driver itself; choose another output file")
  if job.save_identity:
    from fewshot_jax.inference.identity import check_identity_folder  # pylint: disable=g-import-not-at-top
    check_identity_folder(job.save_identity)
  if job.identity and not pathlib.Path(job.identity).is_dir():
    raise FileNotFoundError(f"--identity {job.identity}: no such folder (expected one written "
                            "by `fewshot-jax finetune`)")
  if bool(job.identity) == bool(job.sources):
    raise ValueError("animate: expected source pictures (--source) or an --identity, not "
                     f"{'both' if job.identity else 'neither'}")
  for source in job.sources:
    check_input_file(source, "--source")
  if job.batch_size < 1:
    raise ValueError(f"--batch-size {job.batch_size}: expected at least 1")
  for flag, value in (("--finetune-steps", job.finetune_steps), ("--smooth", job.smooth)):
    if value is not None and value < 0:
      raise ValueError(f"{flag} {value}: expected at least 0")
  if not job.fps > 0:
    raise ValueError(f"--fps {job.fps}: expected a frame rate > 0")
  reference = motion_lib.parse_reference(job.reference, "--reference")
  motion_lib.check_controls(job.motion_scale, job.region, "--motion-scale", "--animate")
  if isinstance(reference, int):
    frames = count_driver_frames(driver)
    if frames is not None and reference >= frames:
      raise ValueError(f"--reference {reference}: beyond the driver's {frames} frames "
                       f"(expected auto, first or 0 to {frames - 1})")
  return reference


def run_job(run, job: AnimateJob, backend_factory: Callable[[], object],
            show_progress: bool = True):
  """Runs a job ``check_job`` passed on a loaded run; returns ``animate``'s ``AnimateSummary``.

  ``backend_factory`` makes the landmark backend, called only when a source picture or a driver
  video needs one (a saved identity driven by a ``.npy`` needs none).
  """
  from fewshot_jax.inference.animate import animate  # pylint: disable=g-import-not-at-top
  from fewshot_jax.inference.driver import load_driver  # pylint: disable=g-import-not-at-top
  from fewshot_jax.inference.faces import load_shots  # pylint: disable=g-import-not-at-top
  from fewshot_jax.inference.identity import (  # pylint: disable=g-import-not-at-top
      fit_identity, load_identity, save_identity)

  reference = motion_lib.parse_reference(job.reference, "--reference")
  size = run.config.model.image_size
  backend = None
  if not str(job.driver).endswith(".npy") or job.sources:
    backend = backend_factory()
  # The driver first: a bad driver file should fail before minutes of fine-tuning.
  driver = load_driver(job.driver, backend, size, fps=job.fps, smooth_sigma=job.smooth,
                       enlarge=job.enlarge, show_progress=show_progress)
  if job.identity:
    identity = load_identity(job.identity, run)
  else:
    shots = load_shots(list(job.sources), backend, size, job.enlarge)
    steps = run.config.finetune.steps if job.finetune_steps is None else job.finetune_steps
    identity = fit_identity(run, np.stack([s.frame for s in shots]),
                            np.stack([s.landmarks for s in shots]), steps,
                            show_progress=show_progress)
    identity.info["sources"] = [s.path for s in shots]
    if job.save_identity:
      save_identity(job.save_identity, identity, run)
  return animate(run, identity, driver, job.out, motion=job.motion, layout=job.layout,
                 batch_size=job.batch_size, show_progress=show_progress, reference=reference,
                 motion_scale=job.motion_scale, region=job.region, audio=job.audio)
