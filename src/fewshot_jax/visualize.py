"""Pictures of results: image grids (PNG) and videos (mp4 through PyAV, GIF through Pillow).

Writes are atomic (``fewshot_jax.atomic_files``), so an interrupted run never leaves a truncated
file under the final name.
"""

from __future__ import annotations

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


def save_mp4(
    path: str | pathlib.Path, frames: np.ndarray, fps: float, upscale: int = 1
) -> None:
  """Writes uint8 ``[T, H, W, 3]`` frames as H.264 (yuv420p, so every player can open it)."""
  import av  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(path)
  if upscale > 1:
    frames = frames.repeat(upscale, axis=1).repeat(upscale, axis=2)
  t, h, w, _ = frames.shape
  if h % 2 or w % 2:  # yuv420p needs even sizes
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
  with atomic_path(path) as tmp, av.open(tmp, mode="w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=round(fps))
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = "yuv420p"
    stream.options = {"crf": "18"}
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def save_gif(path: str | pathlib.Path, frames: np.ndarray, fps: float, upscale: int = 1) -> None:
  path = pathlib.Path(path)
  if upscale > 1:
    frames = frames.repeat(upscale, axis=1).repeat(upscale, axis=2)
  images = [Image.fromarray(f) for f in frames]
  with atomic_path(path) as tmp:
    images[0].save(
        tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0
    )

