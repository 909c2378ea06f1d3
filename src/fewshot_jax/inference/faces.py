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
from fewshot_jax.prep.backends import LandmarkBackend


class NoFaceError(ValueError):
  """No face was found where one is needed; the message names the file (and frame)."""


@dataclasses.dataclass(frozen=True)
class Shot:
  """One source picture, cropped: ``frame`` uint8 ``[S, S, 3]``, ``landmarks`` f32 ``[68, 2]`` in
  crop pixels, and where it came from."""

  frame: np.ndarray
  landmarks: np.ndarray
  path: str


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


def crop_shot(
    image: np.ndarray,
    backend: LandmarkBackend,
    image_size: int,
    name: str,
    enlarge: float = 1.8,
) -> Shot:
  """Detects the largest face in ``image`` and crops it as data prep does.

  Raises:
    NoFaceError: the backend finds no face (the message names ``name`` and the backend).
  """
  faces = backend.detect(image)
  if not faces:
    h, w = image.shape[:2]
    raise NoFaceError(f"{name}: no face found in the {w}x{h} image by the {backend.name} "
                      "landmark backend; use a picture where the face is visible, frontal-ish "
                      "and at least about 80 px wide")
  face = faces[0]
  box = crop_lib.crop_boxes(face.landmarks[None], enlarge, smooth_sigma=0.0)[0]
  frame, points = crop_lib.crop_frame(image, box, face.landmarks, image_size)
  return Shot(frame=frame, landmarks=points, path=name)


def load_shots(
    paths: list[str | os.PathLike],
    backend: LandmarkBackend,
    image_size: int,
    enlarge: float = 1.8,
) -> list[Shot]:
  """Every source picture cropped; the first one without a face raises, naming its file."""
  return [crop_shot(read_image(p), backend, image_size, str(p), enlarge) for p in paths]
