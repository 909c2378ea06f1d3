"""Pictures of results: image grids (PNG) and videos (mp4 through PyAV, GIF through Pillow).

Writes are atomic (``fewshot_jax.atomic_files``), so an interrupted run never leaves a truncated
file under the final name.
"""

from __future__ import annotations

import fractions
import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from fewshot_jax.atomic_files import atomic_path


def grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2, fill: int = 255) -> np.ndarray:
  """Tiles uint8 ``[H, W, 3]`` images into one image; every row may have its own length."""
  h = max(img.shape[0] for row in rows for img in row)
  w = max(img.shape[1] for row in rows for img in row)
  ncols = max(len(row) for row in rows)
  out = np.full(
      (len(rows) * (h + pad) + pad, ncols * (w + pad) + pad, 3), fill, dtype=np.uint8
  )
  for i, row in enumerate(rows):
    for j, img in enumerate(row):
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      out[y : y + img.shape[0], x : x + img.shape[1]] = img
  return out


def save_png(path: str | pathlib.Path, image: np.ndarray) -> None:
  with atomic_path(path) as tmp:
    Image.fromarray(image).save(tmp, format="PNG")


class Mp4Writer:
  """Writes uint8 ``[H, W, 3]`` frames one at a time as H.264 (yuv420p, so every player opens it).

  The file appears under its name only when the writer closes without an error; a failed or
  interrupted write leaves no half-written video. Use as a context manager.
  """

  def __init__(self, path: str | pathlib.Path, fps: float, upscale: int = 1):
    self.path, self.fps, self.upscale = pathlib.Path(path), fps, upscale
    self.frames = 0
    self._atomic = atomic_path(self.path)
    self._container = None
    self._stream = None

  def __enter__(self) -> "Mp4Writer":
    import av  # pylint: disable=g-import-not-at-top

    tmp = self._atomic.__enter__()
    try:
      self._container = av.open(tmp, mode="w", format="mp4")
    except BaseException as e:
      self._atomic.__exit__(type(e), e, e.__traceback__)
      raise
    return self

  def write(self, frame: np.ndarray) -> None:
    import av  # pylint: disable=g-import-not-at-top

    if self.upscale > 1:  # bicubic: a small model's frames read better than as blocks
      h, w = frame.shape[:2]
      frame = np.asarray(Image.fromarray(frame).resize(
          (w * self.upscale, h * self.upscale), Image.Resampling.BICUBIC))
    h, w = frame.shape[:2]
    if h % 2 or w % 2:  # yuv420p needs even sizes
      frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)))
    if self._stream is None:
      # Rates as fractions keep 29.97 fps drivers in sync with their audio-less copies.
      rate = fractions.Fraction(self.fps).limit_denominator(1001)
      self._stream = self._container.add_stream("libx264", rate=rate)
      self._stream.width, self._stream.height = frame.shape[1], frame.shape[0]
      self._stream.pix_fmt = "yuv420p"
      self._stream.options = {"crf": "18"}
    for packet in self._stream.encode(av.VideoFrame.from_ndarray(
        np.ascontiguousarray(frame), format="rgb24")):
      self._container.mux(packet)
    self.frames += 1

  def __exit__(self, exc_type, exc, tb) -> bool:
    # A failure anywhere (the body, the final flush, closing the file) goes to the atomic write as
    # an exception, so a half-written video is deleted instead of renamed into place.
    error = exc
    try:
      if error is None and self._stream is not None:
        for packet in self._stream.encode():
          self._container.mux(packet)
    except BaseException as e:  # pylint: disable=broad-except
      error = e
    try:
      self._container.close()
    except BaseException as e:  # pylint: disable=broad-except
      error = error or e
    if error is None:
      self._atomic.__exit__(None, None, None)
      return False
    self._atomic.__exit__(type(error), error, error.__traceback__)  # removes the temporary file
    if error is not exc:
      raise error
    return False


def save_mp4(
    path: str | pathlib.Path, frames: np.ndarray, fps: float, upscale: int = 1
) -> None:
  """Writes uint8 ``[T, H, W, 3]`` frames as H.264."""
  with Mp4Writer(path, fps, upscale) as writer:
    for frame in frames:
      writer.write(frame)


def save_gif(path: str | pathlib.Path, frames: np.ndarray, fps: float, upscale: int = 1) -> None:
  path = pathlib.Path(path)
  if upscale > 1:
    frames = frames.repeat(upscale, axis=1).repeat(upscale, axis=2)
  images = [Image.fromarray(f) for f in frames]
  with atomic_path(path) as tmp:
    images[0].save(
        tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0
    )

