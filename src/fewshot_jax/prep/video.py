"""Decoding videos with PyAV, with errors that name the file and what is wrong with it.

Data prep reads thousands of files of unknown health; each failure here becomes one line in a
rejection log, so the error says which file and why (empty, not a video, no video stream, corrupt
at frame N) rather than surfacing a codec library's exception, and carries a short ``kind`` that
summaries count by.

Frames come out the way a player shows them: phone videos are often stored sideways with a
display matrix saying how to turn them, which FFmpeg's command line applies but PyAV's decoder
does not. ``iter_frames`` turns each frame by its display rotation (a multiple of 90 degrees), so
drivers and data prep see an upright face.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np


class VideoError(ValueError):
  """A video that cannot be used: ``kind`` (e.g. "empty file") and a message naming the file."""

  def __init__(self, path: str, kind: str, detail: str = ""):
    super().__init__(f"{path}: {kind}" + (f" ({detail})" if detail else ""))
    self.path, self.kind = path, kind


@contextlib.contextmanager
def _open_video(path: str | os.PathLike) -> Iterator[tuple[Any, Any]]:
  """``(container, first video stream)``, or a ``VideoError`` saying why not."""
  import av  # pylint: disable=g-import-not-at-top

  path = os.fspath(path)
  if not os.path.isfile(path):
    raise VideoError(path, "no such file")
  if os.path.getsize(path) == 0:
    raise VideoError(path, "empty file", "0 bytes")
  try:
    container = av.open(path)
  except (av.error.FFmpegError, UnicodeDecodeError) as e:
    raise VideoError(path, "not a readable video", str(e)) from e
  with container:
    if not container.streams.video:
      raise VideoError(path, "no video stream")
    yield container, container.streams.video[0]


# What the decoder does to frames, recorded with every data-prep cache entry: entries decoded
# before display rotations were applied (version 1) may hold sideways crops of phone videos.
DECODER_VERSION = 2


def upright(image: np.ndarray, rotation: float, path: str = "") -> np.ndarray:
  """``image`` turned counter-clockwise by ``rotation`` degrees (a display matrix's rotation, as
  PyAV's ``VideoFrame.rotation`` gives it). Only quarter turns are applied: any other angle is
  refused rather than rounded, since a face turned by 45 degrees would be cropped wrongly."""
  quarter_turns = int(round(rotation / 90.0)) % 4
  if abs(rotation - 90.0 * round(rotation / 90.0)) > 1.0:
    raise VideoError(path, "unsupported display rotation",
                     f"{rotation:g} degrees; only quarter turns are applied")
  if not quarter_turns:
    return image
  return np.ascontiguousarray(np.rot90(image, quarter_turns))


def iter_frames(path: str | os.PathLike) -> Iterator[tuple[int, np.ndarray, float]]:
  """Yields ``(index, uint8 [H, W, 3] RGB frame, fps)`` for every frame of ``path``, upright
  (turned by the video's display rotation).

  Raises:
    VideoError: the file is missing, empty, not a video, has no video stream, or fails to decode
      part-way (the message gives the index of the first frame that could not be read).
  """
  import av  # pylint: disable=g-import-not-at-top

  with _open_video(path) as (container, stream):
    fps = float(stream.average_rate) if stream.average_rate else 0.0
    index = 0
    try:
      for frame in container.decode(stream):
        yield index, upright(frame.to_ndarray(format="rgb24"), frame.rotation, os.fspath(path)), fps
        index += 1
    except av.error.FFmpegError as e:
      raise VideoError(os.fspath(path), "corrupt or truncated", f"at frame {index}: {e}") from e
  if index == 0:
    raise VideoError(os.fspath(path), "no decodable frames")


def count_frames(path: str | os.PathLike) -> int:
  """The number of video frames in ``path``, by demuxing packets (no decoding).

  Raises:
    VideoError: as ``iter_frames``.
  """
  import av  # pylint: disable=g-import-not-at-top

  with _open_video(path) as (container, stream):
    try:
      return sum(1 for packet in container.demux(stream) if packet.size)
    except av.error.FFmpegError as e:
      raise VideoError(os.fspath(path), "corrupt or truncated", str(e)) from e


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
  """All frames of ``path`` as uint8 ``[T, H, W, 3]``, and its frame rate."""
  frames, fps = [], 0.0
  for _, frame, fps in iter_frames(path):
    frames.append(frame)
  return np.stack(frames), fps
