"""Face detection plus 68-point landmarks behind one interface.

Every backend maps an RGB frame to the faces in it, each a box, 68 iBUG-ordered landmarks and a
confidence, all in the frame's pixel units with the convention used everywhere in fewshot_jax:
pixel ``(row i, column j)`` covers ``[j, j+1) x [i, i+1)``, so its centre is ``(j + 0.5, i + 0.5)``.
(dlib reports integer pixel indices; the backend adds the half pixel.)

Backends:
  * ``dlib``: dlib's HOG face detector and the 68-point shape predictor shipped in the
    ``face-recognition-models`` package. Works offline, CPU only; the default here.
  * ``fan``: face-alignment's S3FD detector and 2DFAN4 landmark network (the paper's detector), on
    CPU or CUDA, with weights from the torch hub cache (see ``fan_weights.py``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
from typing import Protocol

import numpy as np

NUM_LANDMARKS = 68


@dataclasses.dataclass(frozen=True)
class Face:
  """One detected face.

  Attributes:
    box: ``float32 [4]`` as ``(x0, y0, x1, y1)`` in pixels.
    landmarks: ``float32 [68, 2]`` as ``(x, y)`` in pixels, iBUG order.
    confidence: the detector's score; comparable within one backend only.
  """

  box: np.ndarray
  landmarks: np.ndarray
  confidence: float

  @property
  def size(self) -> float:
    """The larger side of the box, in pixels."""
    return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))


class LandmarkBackend(Protocol):
  """What data prep needs from a detector: faces per frame, and a name and version to record."""

  name: str
  version: str

  def detect(self, frame: np.ndarray) -> list[Face]:
    """Faces in a ``uint8 [H, W, 3]`` RGB frame, largest first (ties: highest confidence first)."""
    ...


def check_frame(frame: np.ndarray) -> np.ndarray:
  if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
    raise ValueError(f"expected a uint8 [H, W, 3] RGB frame, got {frame.dtype} {frame.shape}")
  return np.ascontiguousarray(frame)


def face_recognition_models_dir() -> pathlib.Path:
  """The folder of model files inside the ``face-recognition-models`` package.

  The package is located without importing it: its ``__init__`` imports ``pkg_resources``, which
  recent setuptools no longer ships.
  """
  spec = importlib.util.find_spec("face_recognition_models")
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(
        "the dlib backend needs the face-recognition-models package: "
        "pip install -e '.[landmarks]' (or face-recognition-models==0.3.0)"
    )
  return pathlib.Path(list(spec.submodule_search_locations)[0]) / "models"


class DlibBackend:
  """dlib HOG detector + 68-point shape predictor.

  Args:
    upsample: how many times the detector upsamples the frame first; each doubles the size, so
      faces down to about 40 px / 2**upsample are found, at about 4x the cost per step.
    predictor_path: the ``shape_predictor_68_face_landmarks.dat`` file; by default the one in
      ``face-recognition-models``.
    min_score: detections scoring below this are dropped (dlib's own threshold is 0).
  """

  name = "dlib"

  def __init__(
      self,
      upsample: int = 1,
      predictor_path: str | pathlib.Path | None = None,
      min_score: float = 0.0,
  ):
    try:
      import dlib  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ModuleNotFoundError(
          "the dlib backend needs dlib: pip install -e '.[landmarks]' (or dlib-bin==20.0.1.post1)"
      ) from e
    if upsample < 0:
      raise ValueError(f"upsample={upsample}: expected >= 0")
    path = pathlib.Path(predictor_path or face_recognition_models_dir() /
                        "shape_predictor_68_face_landmarks.dat")
    if not path.is_file():
      raise FileNotFoundError(f"dlib shape predictor not found: {path}")
    self.upsample, self.min_score = upsample, min_score
    self._detector = dlib.get_frontal_face_detector()
    self._predictor = dlib.shape_predictor(str(path))
    self._rect = dlib.rectangle
    self.version = f"dlib {dlib.__version__} hog+{path.name} upsample={upsample}"

  def detect(self, frame: np.ndarray) -> list[Face]:
    frame = check_frame(frame)
    rects, scores, _ = self._detector.run(frame, self.upsample, self.min_score)
    faces = []
    for rect, score in zip(rects, scores):
      shape = self._predictor(frame, rect)
      points = np.array([(p.x, p.y) for p in shape.parts()], np.float32) + 0.5
      box = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], np.float32)
      faces.append(Face(box=box, landmarks=points, confidence=float(score)))
    # HOG detects at discrete scales, so equal sizes are common: break ties by score.
    faces.sort(key=lambda f: (-f.size, -f.confidence))
    return faces


def _fan_backend(**options) -> LandmarkBackend:
  # Imported on demand: the fan backend pulls in torch, numba and OpenCV.
  from fewshot_jax.prep.fan import FanBackend  # pylint: disable=g-import-not-at-top
  return FanBackend(**options)


_BACKENDS = {"dlib": DlibBackend, "fan": _fan_backend}
BACKEND_NAMES = tuple(sorted(_BACKENDS))


def make_backend(name: str, **options) -> LandmarkBackend:
  """A backend by name (``dlib`` or ``fan``), with backend-specific options."""
  if name not in _BACKENDS:
    raise ValueError(f"unknown landmark backend {name!r}: expected one of {sorted(_BACKENDS)}")
  return _BACKENDS[name](**options)

