"""Paste-back: generated face crops -> the whole source picture, the face moving inside it.

The generator makes square crops framed as data prep frames them (``faces.crop_shot``: a box
``enlarge`` times the landmarks' extent, resized to ``S`` px). To show the whole picture, each
generated crop goes back through the inverse of that map: the box is axis-aligned and square, so
the inverse is separable, one resampling matrix per axis (Keys cubic taps, widened when the box is
smaller than the crop), applied to a batch of crops in one jitted program with the colour match
and the blend. The warped crop is blended into the picture with a feathered mask that is exactly
0 outside the box, so every pixel there is the source's own, and fades in over a band inside the
box's edge.

A small model's crop rarely has the source's exact colours: a hard or even a feathered edge then
shows as a coloured box. So each frame's crop is first matched to the picture at the seam: the
per-channel mean and spread of the warped crop over the feather band are mapped onto the
picture's mean and spread over the same band (the gain kept within ``GAIN_RANGE``, so a blurry
crop is not sharpened into noise), and the band then blends two pictures that agree.

Who has the source picture: ``--source`` has it, and an identity records the first source's path,
crop box and sha256 (``source_record``), so that an identity fitted earlier pastes back into the
same picture if it is still there, unchanged; otherwise ``load_target`` says why not.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from fewshot_jax.file_digest import file_sha256

DEFAULT_MAX_SIZE = 1024
# The feather: 0 within FEATHER_START of the crop's edge (a generator's borders are its worst
# pixels), rising smoothly to 1 at FEATHER_END, as fractions of the crop side.
FEATHER_START = 0.03
FEATHER_END = 0.18
GAIN_RANGE = (2 / 3, 1.5)


class PasteUnavailable(ValueError):
  """The source picture to paste into is not at hand (gone, changed, never recorded)."""


@dataclasses.dataclass(frozen=True)
class PasteTarget:
  """The picture generated crops are pasted into.

  Attributes:
    image: uint8 ``[H, W, 3]``, the source picture at output size (even sides, the longer one at
      most ``max_size``).
    box: f64 ``(x0, y0, x1, y1)``, the crop box of the shot in ``image``'s pixels.
    path: the picture's file.
  """

  image: np.ndarray
  box: np.ndarray
  path: str

  @property
  def size(self) -> tuple[int, int]:
    """``(width, height)`` of the output frames."""
    return int(self.image.shape[1]), int(self.image.shape[0])


def fit_picture(image: np.ndarray, box: np.ndarray, max_size: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """``image`` brought to even sides with the longer one at most ``max_size``, and ``box`` carried
  along.

  A picture that needs no downscaling keeps its pixels exactly (an odd last row or column is
  dropped: H.264's yuv420p needs even sides); a larger one is resized with Lanczos.
  """
  if max_size < 2:
    raise ValueError(f"--max-size {max_size}: expected at least 2")
  h, w = image.shape[:2]
  scale = min(1.0, max_size / max(h, w))
  if scale == 1.0:
    return image[: h - h % 2, : w - w % 2], np.asarray(box, np.float64)
  nw, nh = (max(2, min(max_size, round(n * scale)) // 2 * 2) for n in (w, h))
  resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.LANCZOS))
  return resized, np.asarray(box, np.float64) * np.array([nw / w, nh / h, nw / w, nh / h])


def _keys_cubic(x: np.ndarray) -> np.ndarray:
  """Keys' cubic convolution kernel (a = -0.5), as Pillow's bicubic uses."""
  a, x = -0.5, np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _resample_matrix(start: int, stop: int, lo: float, hi: float, size: int) -> np.ndarray:
  """``[stop - start, size]``: output pixels ``start..stop`` of one axis, where the box spans
  ``lo..hi``, from the ``size`` crop pixels along it (pixel centres at ``j + 0.5``)."""
  scale = size / (hi - lo)  # crop pixels per output pixel
  u = (np.arange(start, stop) + 0.5 - lo) * scale - 0.5
  stretch = max(1.0, scale)  # antialias a downscale: the kernel spans more crop pixels
  weights = _keys_cubic((np.arange(size)[None, :] - u[:, None]) / stretch)
  return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def _feather(start: int, stop: int, lo: float, hi: float) -> np.ndarray:
  """The mask's profile along one axis: 0 outside the box and near its edges, 1 inside."""
  p = np.arange(start, stop) + 0.5
  edge = np.minimum(p - lo, hi - p) / (hi - lo)  # distance to the nearer box edge, in sides
  t = np.clip((edge - FEATHER_START) / (FEATHER_END - FEATHER_START), 0.0, 1.0)
  return (t * t * (3 - 2 * t)).astype(np.float32)  # smoothstep: no kink where the band starts


class PasteBack:
  """Pastes batches of ``S`` px crops into a ``PasteTarget``; everything per-picture (resampling
  matrices, mask, the picture's colours at the seam) is computed once here.

  Attributes:
    target: the picture.
    mask: f32 ``[H, W]``, the weight of the generated crop per output pixel (0 outside the box).
    match_colours: whether each crop's colours are matched to the picture at the seam.
  """

  def __init__(self, target: PasteTarget, crop_size: int, match_colours: bool = True):
    self.target, self.crop_size, self.match_colours = target, crop_size, match_colours
    w, h = target.size
    x0, y0, x1, y1 = (float(v) for v in target.box)
    # The box's pixels inside the picture (a box can overhang a face near the picture's edge).
    self._cols = slice(max(0, int(np.floor(x0))), min(w, int(np.ceil(x1))))
    self._rows = slice(max(0, int(np.floor(y0))), min(h, int(np.ceil(y1))))
    if self._cols.start >= self._cols.stop or self._rows.start >= self._rows.stop:
      raise ValueError(f"{target.path}: the crop box {target.box.round(1).tolist()} lies outside "
                       f"the {w}x{h} picture")
    self._ry = _resample_matrix(self._rows.start, self._rows.stop, y0, y1, crop_size)
    self._rx = _resample_matrix(self._cols.start, self._cols.stop, x0, x1, crop_size)
    roi_mask = np.outer(_feather(self._rows.start, self._rows.stop, y0, y1),
                        _feather(self._cols.start, self._cols.stop, x0, x1))
    self.mask = np.zeros((h, w), np.float32)
    self.mask[self._rows, self._cols] = roi_mask
    self._alpha = roi_mask[:, :, None]
    self._source = target.image[self._rows, self._cols].astype(np.float32)
    band = (roi_mask > 0) & (roi_mask < 1)
    self._band = band.astype(np.float32)
    ring = self._source[band]
    self._mean, self._std = ring.mean(axis=0), ring.std(axis=0)

  def __call__(self, crops: np.ndarray) -> np.ndarray:
    """uint8 ``[n, H, W, 3]``: the picture with each crop pasted in; pixels where ``mask`` is 0
    are the picture's exactly."""
    if crops.shape[1:] != (self.crop_size, self.crop_size, 3):
      raise ValueError(f"crops of shape {crops.shape[1:]}, expected "
                       f"({self.crop_size}, {self.crop_size}, 3)")
    roi = _paste_box(crops, self._ry, self._rx, self._alpha, self._source, self._band,
                     self._mean, self._std, self.match_colours)
    frames = np.repeat(self.target.image[None], len(crops), axis=0)
    frames[:, self._rows, self._cols] = np.asarray(roi)
    return frames


@functools.partial(jax.jit, static_argnums=8)
def _paste_box(crops, ry, rx, alpha, source, band, source_mean, source_std, match_colours):
  """uint8 ``[n, h, w, 3]``: the box's pixels with the crops warped, colour-matched and blended
  in. One fused XLA program: numpy's separate passes (warp, statistics, blend) took three to ten
  times as long on a loaded CPU."""
  face = jnp.einsum("ys,nstc,xt->nyxc", ry, crops.astype(jnp.float32), rx)
  if match_colours:
    pixels = band.sum()
    mean = jnp.einsum("nyxc,yx->nc", face, band) / pixels
    var = jnp.einsum("nyxc,yx->nc", (face - mean[:, None, None]) ** 2, band) / pixels
    gain = jnp.clip(source_std / jnp.maximum(jnp.sqrt(var), 1e-3), *GAIN_RANGE)
    face = (face - mean[:, None, None]) * gain[:, None, None] + source_mean
  return jnp.clip(jnp.rint(source + alpha * (face - source)), 0, 255).astype(jnp.uint8)


def source_record(path: str | pathlib.Path, box: np.ndarray, image_shape: tuple[int, ...]
                  ) -> dict[str, Any]:
  """What an identity keeps of its first source to paste back into it later: the picture's
  absolute path, sha256 and size, and the shot's crop box in its pixels (JSON-able)."""
  path = pathlib.Path(path).absolute()
  return {"path": str(path), "sha256": file_sha256(path),
          "width": int(image_shape[1]), "height": int(image_shape[0]),
          "box": [float(v) for v in box]}


def load_target(record: dict[str, Any] | None, max_size: int = DEFAULT_MAX_SIZE) -> PasteTarget:
  """The picture a ``source_record`` names, at output size.

  Raises:
    PasteUnavailable: no record (an identity fitted from ``--shots``, ``--synthetic`` or by an
      older version), or the picture is gone or changed since (the message says which).
  """
  from fewshot_jax.inference.faces import read_image  # pylint: disable=g-import-not-at-top

  if not record:
    raise PasteUnavailable("the identity records no source picture (fitted from cropped shots, "
                           "synthetic ones or by an older version)")
  path = pathlib.Path(record["path"])
  if not path.is_file():
    raise PasteUnavailable(f"the source picture {path} is gone")
  if file_sha256(path) != record["sha256"]:
    raise PasteUnavailable(f"the source picture {path} changed since the identity was fitted "
                           "(its sha256 differs)")
  image = read_image(path)
  if image.shape[:2] != (record["height"], record["width"]):
    raise PasteUnavailable(f"the source picture {path} reads as {image.shape[1]}x"
                           f"{image.shape[0]}, not {record['width']}x{record['height']}")
  fitted, box = fit_picture(image, np.asarray(record["box"], np.float64), max_size)
  return PasteTarget(image=fitted, box=box, path=str(path))
