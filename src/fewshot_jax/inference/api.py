"""``TalkingHead``: the Python face of inference, one object per loaded run.

    from fewshot_jax.inference import TalkingHead
    head = TalkingHead.load("runs/demo/run")            # EMA weights by default
    shots = head.crop_sources(["mona_lisa.jpg"])         # photos or paintings of any size
    face = head.finetune(shots.frames, shots.landmarks, steps=40)   # or head.fit(...) for FF
    frames = head.generate(landmarks, face)             # uint8 [T, S, S, 3], batched and jitted
    head.animate(face, "drive.mp4", "out.mp4")

The functions underneath (``inference.finetune``, ``identity``, ``driver``, ``animate``) stay
usable on their own; this class keeps the run, the landmark backend and the generator and
embedder programs, and the fine-tune step, together, so those are loaded and compiled once for
every face and video it makes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import jax
import numpy as np

from fewshot_jax.inference import animate as animate_lib
from fewshot_jax.inference import driver as driver_lib
from fewshot_jax.inference import faces
from fewshot_jax.inference.augment import DEFAULT_AUGMENT
from fewshot_jax.inference.identity import Identity, IdentityFitter, fit_identity
from fewshot_jax.inference.run import LoadedRun, load_run


@dataclasses.dataclass
class Shots:
  """Cropped source pictures: ``frames`` uint8 ``[K, S, S, 3]``, ``landmarks`` f32
  ``[K, 68, 2]`` in crop pixels, and their files."""

  frames: np.ndarray
  landmarks: np.ndarray
  paths: list[str]


class TalkingHead:
  """A trained run ready for inference."""

  def __init__(self, run: LoadedRun, landmarks: str = "dlib", batch_size: int = 8):
    self.run = run
    self.config = run.config
    self.image_size = int(run.config.model.image_size)
    self.batch_size = batch_size
    self._backend_name = landmarks
    self._backend = None
    self._generator = animate_lib.make_generator(run, batch_size)
    self._fitter = IdentityFitter(run)

  @classmethod
  def load(cls, checkpoint: str | os.PathLike, use_ema: bool = True,
           overrides: Sequence[str] = (), **kwargs) -> "TalkingHead":
    """Loads a run directory's latest checkpoint (see ``inference.run.load_run``)."""
    return cls(load_run(checkpoint, use_ema=use_ema, overrides=overrides), **kwargs)

  @property
  def backend(self):
    """The landmark backend, created on first use (dlib or fan)."""
    if self._backend is None:
      from fewshot_jax.prep.backends import make_backend  # pylint: disable=g-import-not-at-top
      self._backend = make_backend(self._backend_name)
    return self._backend

  def crop_sources(self, paths: Sequence[str | os.PathLike], face: int = 0) -> Shots:
    """Detects and crops face ``face`` (0: the largest) in each picture as the training data
    was cropped."""
    shots = faces.load_shots(list(paths), self.backend, self.image_size, face=face)
    return Shots(np.stack([s.frame for s in shots]), np.stack([s.landmarks for s in shots]),
                 [s.path for s in shots])

  def embed(self, frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """ê ``[N]`` from K shots (uint8 ``[K, S, S, 3]``, ``[K, 68, 2]``): E's mean over them."""
    return np.asarray(self._fitter.embed(self.run.vars, frames[None], landmarks[None])[0])

  def fit(self, frames: np.ndarray, landmarks: np.ndarray) -> Identity:
    """The feed-forward identity: ψ = P·ê with the meta-learned generator."""
    return fit_identity(self.run, frames, landmarks, 0, show_progress=False,
                        fitter=self._fitter)

  def finetune(self, frames: np.ndarray, landmarks: np.ndarray, steps: int | None = None,
               show_progress: bool = True, augment: int = DEFAULT_AUGMENT) -> Identity:
    """Fine-tunes G and ψ' = P·ê (D's projection w' = w0 + ê) on the shots for ``steps``
    (default: the run's ``finetune.steps``), with ``augment`` warp-augmented pairs of them added
    to each step's targets (``inference.augment``)."""
    steps = self.config.finetune.steps if steps is None else steps
    return fit_identity(self.run, frames, landmarks, steps, show_progress=show_progress,
                        fitter=self._fitter, augment=augment)

  def generate(self, landmarks: np.ndarray, identity: Identity) -> np.ndarray:
    """uint8 frames ``[T, S, S, 3]`` for landmarks ``[T, 68, 2]`` (crop pixels), in batches of
    ``batch_size`` with one compiled program."""
    v = jax.tree.map(jax.numpy.asarray, identity.model_vars(self.run))
    psi = jax.numpy.asarray(identity.psi)
    landmarks = np.asarray(landmarks, np.float32)
    return np.concatenate([self._generator(v, psi, landmarks[i:i + self.batch_size])
                           for i in range(0, len(landmarks), self.batch_size)])

  def animate(self, identity: Identity, driver: str | os.PathLike, out: str | os.PathLike,
              motion: str = "relative", layout: str = "single", fps: float = 25.0,
              show_progress: bool = True, audio: bool = True) -> animate_lib.AnimateSummary:
    """Writes ``out``: the identity driven by a video or a landmark ``.npy`` (with a video's
    sound unless ``audio`` is False)."""
    needs_backend = not str(driver).endswith(".npy")
    d = driver_lib.load_driver(driver, self.backend if needs_backend else None, self.image_size,
                               fps=fps, show_progress=show_progress)
    return animate_lib.animate(self.run, identity, d, out, motion=motion, layout=layout,
                               batch_size=self.batch_size, show_progress=show_progress,
                               audio=audio, generator=self._generator)
