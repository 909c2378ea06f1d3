"""The driver's sound in animate's output: its first audio track, in sync with the frames written.

Output frame ``i`` is the driver's frame ``i``, so output time 0 is the time of the driver's first
decoded video frame, whatever the container's start times or the offset between its audio and video
streams. The audio is cut to ``[0, T / fps)`` of that timeline (the frames written, not the
driver's length: a run cut short, or a driver whose sound outlasts its picture, stays in sync), and
a track that starts after the first frame keeps its delay.

AAC (what mp4 carries everywhere) is copied packet by packet, so the sound is not re-encoded; the
cut then falls on the codec's frame boundaries (1024 samples, about 21 ms at 48 kHz), and one
packet before the first frame is kept so the decoder has the overlap it needs, the mp4 edit list
hiding it. Any other codec (PCM, MP3, Opus, Vorbis...) is decoded, cut to the sample and encoded as
AAC.

The video is written first to a hidden sibling of the output; the two are then muxed into another
temporary sibling that replaces the output (``atomic_files.atomic_path``). A failure anywhere leaves
no half file and no temporary behind.
"""

from __future__ import annotations

import dataclasses
import fractions
import heapq
import os
import pathlib
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from fewshot_jax.atomic_files import atomic_path

COPIED_CODECS = ("aac",)  # mp4-compatible and played everywhere: copied without re-encoding
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)


@dataclasses.dataclass(frozen=True)
class DriverAudio:
  """The driver's first audio stream, as probed before any frame is generated."""

  path: str
  codec: str
  rate: int
  channels: int

  @property
  def copied(self) -> bool:
    return self.codec in COPIED_CODECS


def probe(path: str | os.PathLike) -> DriverAudio | None:
  """The first audio stream of the video ``path``, or None when it has none.

  Raises:
    ValueError: the file cannot be opened, or its audio codec has no decoder here (checked before
      minutes of generation, not after).
  """
  import av  # pylint: disable=g-import-not-at-top

  try:
    with av.open(os.fspath(path)) as container:
      if not container.streams.audio:
        return None
      stream = container.streams.audio[0]
      ctx = stream.codec_context
      if ctx is None or ctx.codec is None:
        raise ValueError(f"driver {path}: its audio track's codec cannot be decoded here "
                         "(pass --no-audio to write the video without it)")
      return DriverAudio(os.fspath(path), ctx.name, int(ctx.sample_rate or stream.rate or 0),
                         int(ctx.channels or 0))
  except av.error.FFmpegError as e:
    raise ValueError(f"driver {path}: cannot read its audio track ({e})") from e


def _first_frame_time(container: Any) -> fractions.Fraction:
  """The time of the first decoded video frame: the driver's frame 0, output time 0."""
  stream = container.streams.video[0]
  for frame in container.decode(stream):
    if frame.pts is not None:
      return frame.pts * frame.time_base
  raise ValueError(f"driver {container.name}: no decodable video frames")


def _video_span(video: Any) -> tuple[fractions.Fraction, fractions.Fraction]:
  """``(start, end)`` of the written video's frames: its first presentation time and the end of
  its last frame."""
  stream = video.streams.video[0]
  start = end = None
  for packet in video.demux(stream):
    if packet.pts is None:
      continue
    t0 = packet.pts * packet.time_base
    t1 = (packet.pts + (packet.duration or 0)) * packet.time_base
    start = t0 if start is None else min(start, t0)
    end = t1 if end is None else max(end, t1)
  if start is None:
    raise ValueError(f"{video.name}: the written video holds no frames")
  return start, end


def _timed(packets: Iterator[Any]) -> Iterator[tuple[fractions.Fraction, int, Any]]:
  for i, packet in enumerate(packets):
    dts = packet.dts if packet.dts is not None else packet.pts
    yield dts * packet.time_base, i, packet


@dataclasses.dataclass
class _Span:
  """Seconds of the driver's sound placed in the output (for the summary)."""
  first: float | None = None
  last: float = 0.0

  def add(self, t0: float, t1: float) -> None:
    self.first = t0 if self.first is None else min(self.first, t0)
    self.last = max(self.last, t1)

  @property
  def seconds(self) -> float:
    return 0.0 if self.first is None else max(0.0, self.last - max(0.0, self.first))


def _copied_packets(driver: Any, out_stream: Any, t0: fractions.Fraction,
                    v_start: fractions.Fraction, end: fractions.Fraction, span: _Span
                    ) -> Iterator[Any]:
  """The driver's AAC packets overlapping ``[0, end)`` after its first frame (``t0``), retimed to
  start with the output's video (``v_start``); one packet before 0 is kept as the decoder's
  priming (an edit list hides it)."""
  stream = driver.streams.audio[0]
  tb = stream.time_base
  offset = round((t0 - v_start) / tb)
  previous = None
  for packet in driver.demux(stream):
    if packet.pts is None or not packet.size:
      continue
    start = packet.pts * tb - t0
    stop = (packet.pts + (packet.duration or 0)) * tb - t0
    if start >= end:
      break
    if stop <= 0:
      previous = packet
      continue
    if previous is not None:  # the priming packet before the first one that is heard
      yield _retimed(previous, out_stream, offset)
      previous = None
    span.add(float(max(start, 0)), float(min(stop, end)))
    yield _retimed(packet, out_stream, offset)


def _retimed(packet: Any, out_stream: Any, offset: int) -> Any:
  packet.pts -= offset
  if packet.dts is not None:
    packet.dts -= offset
  packet.stream = out_stream
  return packet


def _encoded_packets(driver: Any, out_stream: Any, shift: fractions.Fraction,
                     end: fractions.Fraction, span: _Span) -> Iterator[Any]:
  """The driver's sound decoded, cut to ``[0, end)`` of the output to the sample (silence before a
  late start), and encoded as AAC. Driver time ``t`` is output time ``t - shift``."""
  import av  # pylint: disable=g-import-not-at-top

  stream = driver.streams.audio[0]
  ctx = out_stream.codec_context
  rate, layout, channels = ctx.sample_rate, ctx.layout.name, ctx.channels
  resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
  total = int(end * rate)  # output samples wanted
  written = 0

  def encode(samples: np.ndarray) -> list[Any]:
    nonlocal written
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, np.float32), format="fltp",
                                       layout=layout)
    frame.sample_rate, frame.pts, frame.time_base = rate, written, fractions.Fraction(1, rate)
    written += samples.shape[1]
    return out_stream.encode(frame)

  position = None  # the output sample of the next resampled sample

  def resampled() -> Iterator[np.ndarray]:
    nonlocal position
    for frame in driver.decode(stream):
      if position is None:  # the first decoded sample's time places the whole track
        t = frame.pts * frame.time_base if frame.pts is not None else fractions.Fraction(0)
        position = round((t - shift) * rate)
      for out in resampler.resample(frame):
        yield out.to_ndarray()
    for out in resampler.resample(None):
      yield out.to_ndarray()

  for samples in resampled():
    if written == 0 and position > 0:  # the sound starts after the first frame: silence until then
      gap = min(position, total)
      for s in range(0, gap, 4096):
        yield from encode(np.zeros((channels, min(4096, gap - s)), np.float32))
    lo = max(0, written - position)  # what lies before output time 0 is dropped
    hi = min(samples.shape[1], total - position)
    if hi > lo:
      span.add((position + lo) / rate, (position + hi) / rate)
      yield from encode(samples[:, lo:hi])
    position += samples.shape[1]
    if written >= total:
      break
  yield from out_stream.encode(None)


def mux(video_path: str | os.PathLike, audio: DriverAudio, out: str | os.PathLike) -> str:
  """Writes ``out`` (atomically): ``video_path``'s video with ``audio``'s track, in sync with the
  driver's frames and cut to the video's length. Returns what was done, for the summary.

  Raises:
    ValueError: the driver's audio could not be read (the message names it); ``out`` is then not
      written.
  """
  import av  # pylint: disable=g-import-not-at-top

  span = _Span()
  try:
    with av.open(os.fspath(video_path)) as video:
      v_start, v_end = _video_span(video)
    with av.open(audio.path) as driver:
      t0 = _first_frame_time(driver)
    end = v_end - v_start  # the cut, [0, end) after the driver's first frame
    with av.open(os.fspath(video_path)) as video, av.open(audio.path) as driver, \
        atomic_path(out) as tmp, av.open(tmp, mode="w", format="mp4") as output:
      v_in = video.streams.video[0]
      v_out = output.add_stream_from_template(v_in)
      if audio.copied:
        a_out = output.add_stream_from_template(driver.streams.audio[0])
        audio_packets = _copied_packets(driver, a_out, t0, v_start, end, span)
      else:
        a_out = output.add_stream("aac", rate=audio.rate if audio.rate in AAC_RATES else 48000)
        a_out.codec_context.layout = "mono" if audio.channels == 1 else "stereo"
        audio_packets = _encoded_packets(driver, a_out, t0, end, span)  # from 0 (= v_start)

      def video_packets() -> Iterator[Any]:
        for packet in video.demux(v_in):
          if packet.size:
            packet.stream = v_out
            yield packet

      # Interleaved by time, as players read them.
      for _, _, packet in heapq.merge(_timed(video_packets()), _timed(audio_packets),
                                      key=lambda x: (x[0], x[1])):
        output.mux(packet)
  except av.error.FFmpegError as e:
    raise ValueError(f"driver {audio.path}: its audio track could not be copied into {out} "
                     f"({e}); pass --no-audio to write the video without it") from e
  how = "copied" if audio.copied else f"re-encoded from {audio.codec}"
  rate = audio.rate if audio.copied or audio.rate in AAC_RATES else 48000
  return f"aac {rate} Hz, {span.seconds:.2f} s {how}"


class Soundtrack:
  """Where animate writes its video, and the driver's audio muxed in when the video is complete.

  ``with Soundtrack(out, driver_path, enabled) as track, Mp4Writer(track.video_path, ...):``
  writes the video; when both close without an error, the driver's audio is muxed in and ``out``
  written, and ``track.note`` says what happened to the sound. Without a track to add
  (``--no-audio``, a landmark-file driver, a silent driver) the video goes to ``out`` itself;
  otherwise to a hidden sibling, removed on the way out whatever happens.
  """

  def __init__(self, out: str | os.PathLike, driver_path: str | os.PathLike | None,
               enabled: bool = True):
    self.out = pathlib.Path(out)
    self.audio = None
    if not enabled:
      self.note = "off"
    elif driver_path is None:
      self.note = "none: the driver is a landmark file"
    else:
      self.audio = probe(driver_path)
      self.note = "none: the driver has no audio track" if self.audio is None else "pending"
    self.video_path = self.out

  def __enter__(self) -> "Soundtrack":
    if self.audio is not None:
      self.out.parent.mkdir(parents=True, exist_ok=True)
      fd, tmp = tempfile.mkstemp(dir=self.out.parent, prefix=f".{self.out.name}.video.",
                                 suffix=".mp4")
      os.close(fd)
      self.video_path = pathlib.Path(tmp)
    return self

  def __exit__(self, exc_type, exc, tb) -> bool:
    try:
      if exc_type is None and self.audio is not None:
        self.note = mux(self.video_path, self.audio, self.out)
    finally:
      if self.video_path != self.out:
        self.video_path.unlink(missing_ok=True)
    return False
