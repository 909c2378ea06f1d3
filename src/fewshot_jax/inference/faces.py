"""Source pictures (photos, paintings) -> face crops and landmarks framed as the training data was.

A source can be any size and any framing; the model only knows faces cropped by data prep's recipe
(a square ``enlarge`` times the landmarks' bounding box, resized to ``image_size``). The same
backend and the same ``crop_boxes``/``crop_frame`` functions are used here, so a shot looks to E
like a training frame.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fewshot_jax.prep import crop as crop_lib
from fewshot_jax.prep.backends import Face, LandmarkBackend


class NoFaceError(ValueError):
  """No face was found where one is needed; the message names the file (and frame)."""


@dataclasses.dataclass(frozen=True)
class Shot:
  """One source picture, cropped: ``frame`` uint8 ``[S, S, 3]``, ``landmarks`` f32 ``[68, 2]`` in
  crop pixels, and where it came from: the file, which of its faces (``face``, 0 the largest) and
  that face's detector box ``(x0, y0, x1, y1)`` in the picture's pixels (``face_box``), so a
  summary can say which person of a group photo was animated; the crop ``box`` in the picture's
  pixels and the picture's ``source_shape`` (H, W), so paste-back can put a generated crop back."""

  frame: np.ndarray
  landmarks: np.ndarray
  path: str
  face: int = 0
  face_box: tuple[float, float, float, float] | None = None
  box: tuple[float, float, float, float] | None = None
  source_shape: tuple[int, int] | None = None


def read_image(path: str | os.PathLike) -> np.ndarray:
  """An image file as uint8 RGB ``[H, W, 3]``, upright (EXIF orientation applied).

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file is not an image Pillow can read (the message names it).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"source image {path}: no such file")
  try:
    with Image.open(path) as im:
      im = ImageOps.exif_transpose(im)
      return np.asarray(im.convert("RGB"))
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f"source image {path}: not a readable image ({e})") from e


def largest_first(faces: list[Face]) -> list[Face]:
  """Faces ordered by box size (``Face.size``), largest first; equal sizes by confidence, highest
  first.

  This is the order ``--face N`` counts in, so face 0 is the main subject and N names the same
  face of a picture on every call (a detector's own order follows its scan or its scores). Both
  backends already return this order (``DlibBackend.detect``, ``FanBackend.detect``); sorting
  again here keeps the numbering for any other ``LandmarkBackend``. HOG detects at discrete
  scales, so equal sizes are common, hence the confidence tie-break.
  """
  return sorted(faces, key=lambda f: (-f.size, -f.confidence))


def pick_face(faces: list[Face], index: int, name: str, backend_name: str,
              image_shape: tuple[int, ...]) -> Face:
  """Face ``index`` of ``faces`` in ``largest_first`` order (0: the largest).

  Raises:
    NoFaceError: no face, or fewer than ``index + 1`` (the message names ``name`` and how many
      faces were found).
  """
  h, w = image_shape[:2]
  if not faces:
    raise NoFaceError(f"{name}: no face found in the {w}x{h} image by the {backend_name} "
                      "landmark backend; use a picture where the face is visible, frontal-ish "
                      "and at least about 80 px wide")
  if not 0 <= index < len(faces):
    raise NoFaceError(f"{name}: --face {index} asks for face {index} (0 is the largest), but the "
                      f"{backend_name} landmark backend found {len(faces)} face"
                      f"{'s' if len(faces) > 1 else ''} in the {w}x{h} image (expected --face 0"
                      f"{f' to {len(faces) - 1}' if len(faces) > 1 else ''})")
  return largest_first(faces)[index]


def crop_shot(
    image: np.ndarray,
    backend: LandmarkBackend,
    image_size: int,
    name: str,
    enlarge: float = 1.8,
    face: int = 0,
) -> Shot:
  """Detects the faces in ``image`` and crops face ``face`` (0: the largest) as data prep does.

  Raises:
    NoFaceError: the backend finds no face, or fewer than ``face + 1`` (the message names
      ``name``, the backend and the faces found).
  """
  found = pick_face(backend.detect(image), face, name, backend.name, image.shape)
  box = crop_lib.crop_boxes(found.landmarks[None], enlarge, smooth_sigma=0.0)[0]
  frame, points = crop_lib.crop_frame(image, box, found.landmarks, image_size)
  return Shot(frame=frame, landmarks=points, path=name, face=face,
              face_box=tuple(float(x) for x in found.box), box=tuple(float(x) for x in box),
              source_shape=(int(image.shape[0]), int(image.shape[1])))


def load_shots(
    paths: list[str | os.PathLike],
    backend: LandmarkBackend,
    image_size: int,
    enlarge: float = 1.8,
    face: int = 0,
) -> list[Shot]:
  """Every source picture cropped at its face ``face`` (0: the largest); the first one without
  that face raises, naming its file."""
  return [crop_shot(read_image(p), backend, image_size, str(p), enlarge, face) for p in paths]
