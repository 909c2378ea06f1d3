"""Decoding videos with PyAV, with errors that name the file and what is wrong with it.

Data prep reads thousands of files of unknown health; each failure here becomes one line in a
rejection log, so the message must say which file and why (empty, not a video, no video stream,
corrupt at frame N) rather than surface a codec library's exception.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np


class VideoError(ValueError):
  """A video that cannot be used; the message names the file and the reason."""


def iter_frames(path: str | os.PathLike) -> Iterator[tuple[int, np.ndarray, float]]:
  """Yields ``(index, uint8 [H, W, 3] RGB frame, fps)`` for every frame of ``path``.

  Raises:
    VideoError: the file is missing, empty, not a video, has no video stream, or fails to decode
      part-way (the message gives the index of the first frame that could not be read).
  """
  import av  # pylint: disable=g-import-not-at-top

  path = os.fspath(path)
  if not os.path.isfile(path):
    raise VideoError(f"{path}: no such file")
  if os.path.getsize(path) == 0:
    raise VideoError(f"{path}: empty file (0 bytes)")
  try:
    container = av.open(path)
  except (av.error.FFmpegError, UnicodeDecodeError) as e:
    raise VideoError(f"{path}: not a readable video ({e})") from e
  with container:
    if not container.streams.video:
      raise VideoError(f"{path}: no video stream")
    stream = container.streams.video[0]
    fps = float(stream.average_rate) if stream.average_rate else 0.0
    index = 0
    try:
      for frame in container.decode(stream):
        yield index, frame.to_ndarray(format="rgb24"), fps
        index += 1
    except av.error.FFmpegError as e:
      raise VideoError(f"{path}: corrupt or truncated at frame {index} ({e})") from e
  if index == 0:
    raise VideoError(f"{path}: no decodable frames")


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
  """All frames of ``path`` as uint8 ``[T, H, W, 3]``, and its frame rate."""
  frames, fps = [], 0.0
  for _, frame, fps in iter_frames(path):
    frames.append(frame)
  return np.stack(frames), fps


def count_frames(path: str | os.PathLike) -> int:
  """The number of video frames in ``path``, by demuxing packets (no decoding).

  Raises:
    VideoError: as ``iter_frames``.
  """
  import av  # pylint: disable=g-import-not-at-top

  path = os.fspath(path)
  if not os.path.isfile(path):
    raise VideoError(f"{path}: no such file")
  if os.path.getsize(path) == 0:
    raise VideoError(f"{path}: empty file (0 bytes)")
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise VideoError(f"{path}: no video stream")
      stream = container.streams.video[0]
      return sum(1 for packet in container.demux(stream) if packet.size)
  except (av.error.FFmpegError, UnicodeDecodeError) as e:
    raise VideoError(f"{path}: not a readable video ({e})") from e
