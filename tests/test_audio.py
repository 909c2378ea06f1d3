"""The driver's sound in animate's output: copied (AAC) or re-encoded, in sync and cut to the frames.

Drivers are the carphone clip's first frames re-muxed with a generated track: silence, then a
440 Hz tone from a known frame's time on. The tone's onset in the output must fall at that frame's
time, whatever the driver's stream start times, and the track must end with the frames written.
"""

from __future__ import annotations

import fractions
import json
import pathlib

import av
import numpy as np
import pytest
import skimage.data as skdata
from PIL import Image

from carphone_run import carphone_run
from test_prep_backends import carphone_path
from fewshot_jax import cli
from fewshot_jax.inference import audio as audio_lib
from fewshot_jax.prep.video import read_video
from fewshot_jax.visualize import Mp4Writer, save_mp4

FRAMES = 10  # driver frames: a short driver keeps the test to seconds
ONSET = 4  # the tone starts at this driver frame's time
RATE = fractions.Fraction(30000, 1001)  # the carphone clip's
TONE = 440.0


@pytest.fixture(scope="module")
def run_dir() -> pathlib.Path:
  return carphone_run()


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
  frames, fps = read_video(carphone_path())
  assert fps == pytest.approx(float(RATE))
  return frames[:FRAMES]


@pytest.fixture(scope="module")
def identity(run_dir, tmp_path_factory) -> pathlib.Path:
  """The astronaut, fitted feed-forward (0 steps: the sound is under test, not the face)."""
  folder = tmp_path_factory.mktemp("identity")
  Image.fromarray(skdata.astronaut()).save(folder / "astronaut.png")
  assert cli.main(["finetune", "--checkpoint", str(run_dir), "--source",
                   str(folder / "astronaut.png"), "--steps", "0", "--out",
                   str(folder / "id")]) == 0
  return folder / "id"


def make_driver(path: pathlib.Path, frames: np.ndarray, container: str, codec: str, rate: int,
                video_start: fractions.Fraction = fractions.Fraction(0),
                audio_start: fractions.Fraction = fractions.Fraction(0)) -> None:
  """``frames`` as H.264 from ``video_start`` and a mono track from ``audio_start`` (seconds, on
  the container's clock): silent until frame ``ONSET``'s time, then the tone, for a second past
  the last frame."""
  with av.open(str(path), "w", format=container) as out:
    v = out.add_stream("libx264", rate=RATE)
    v.width, v.height, v.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    v.codec_context.time_base = 1 / RATE
    a = out.add_stream(codec, rate=rate)
    a.codec_context.layout = "mono"
    onset = float(video_start + ONSET / RATE)
    n = int((float(video_start - audio_start) + len(frames) / RATE + 1) * rate)
    t = float(audio_start) + np.arange(n) / rate
    tone = np.where(t >= onset, 0.5 * np.sin(2 * np.pi * TONE * t), 0).astype(np.float32)
    packets = []
    for i, frame in enumerate(frames):
      vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
      vf.pts, vf.time_base = i + round(video_start * RATE), 1 / RATE
      packets += v.encode(vf)
    packets += v.encode(None)
    fmt = a.codec_context.format.name
    for s in range(0, n, 1024):
      chunk = tone[None, s:s + 1024]
      chunk = (chunk * 32767).astype(np.int16) if fmt == "s16" else chunk
      af = av.AudioFrame.from_ndarray(chunk, format=fmt, layout="mono")
      af.sample_rate, af.pts = rate, s + round(audio_start * rate)
      af.time_base = fractions.Fraction(1, rate)
      packets += a.encode(af)
    packets += a.encode(None)
    for p in sorted(packets, key=lambda p: p.dts * p.time_base):
      out.mux(p)


def sound(path: pathlib.Path) -> dict:
  """The output's streams, and its first audio track decoded: codec, rate, where it ends, the
  tone's onset and dominant frequency."""
  with av.open(str(path)) as c:
    kinds = [s.type for s in c.streams]
    if not c.streams.audio:
      return {"streams": kinds}
    a = c.streams.audio[0]
    chunks, start = [], None
    for f in c.decode(a):
      start = float(f.pts * f.time_base) if start is None else start
      chunks.append(f.to_ndarray().reshape(f.layout.nb_channels if f.format.is_planar else 1,
                                           -1)[0])
    x, rate = np.concatenate(chunks), a.codec_context.sample_rate
    first = int(np.argmax(np.abs(x) > 0.1))
    spectrum = np.abs(np.fft.rfft(x[first:]))
    return {"streams": kinds, "codec": a.codec_context.name, "rate": rate,
            "frame_size": a.codec_context.frame_size or 1024,
            "end": float((a.start_time + a.duration) * a.time_base),
            # AAC smears an onset over a few ms (pre-echo): 10 ms before it, silence.
            "quiet_before": np.abs(x[:max(1, first - rate // 100)]).max(),
            "onset": start + first / rate,
            "pitch": np.fft.rfftfreq(len(x) - first, 1 / rate)[np.argmax(spectrum)]}


def check_in_sync(s: dict, frames: int, rate: int) -> None:
  assert s["streams"] == ["video", "audio"] and s["codec"] == "aac" and s["rate"] == rate
  assert abs(s["end"] - frames / RATE) <= s["frame_size"] / rate, s  # cut to the frames
  assert abs(s["onset"] - ONSET / RATE) < 1 / RATE, s  # within a frame of frame ONSET's time
  assert s["pitch"] == pytest.approx(TONE, abs=5), s
  assert s["quiet_before"] < 0.05, s  # silence before: nothing from later was pulled forward


def test_animate_copies_the_drivers_aac_track_in_sync(run_dir, identity, clip, tmp_path, capsys):
  driver = tmp_path / "talk.mp4"
  make_driver(driver, clip, "mp4", "aac", 48000)
  out = tmp_path / "out.mp4"
  assert cli.main(["animate", "--checkpoint", str(run_dir), "--identity", str(identity),
                   "--driver", str(driver), "--out", str(out)]) == 0
  line, summary = capsys.readouterr().out.strip().splitlines()[-2:]
  frames, fps = read_video(out)
  assert len(frames) == FRAMES and fps == pytest.approx(float(RATE))
  check_in_sync(sound(out), FRAMES, 48000)
  assert json.loads(summary)["audio"] == "aac 48000 Hz, 0.33 s copied"
  assert line.endswith("audio: aac 48000 Hz, 0.33 s copied")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "talk.mp4"]  # no temporaries

  # --no-audio: the same driver gives a video without sound.
  assert cli.main(["animate", "--checkpoint", str(run_dir), "--identity", str(identity),
                   "--driver", str(driver), "--out", str(tmp_path / "mute.mp4"),
                   "--no-audio"]) == 0
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["audio"] == "off"
  assert sound(tmp_path / "mute.mp4") == {"streams": ["video"]}


def test_a_silent_driver_gives_a_silent_video_and_says_so(run_dir, identity, clip, tmp_path,
                                                         capsys):
  driver = tmp_path / "silent.mp4"
  save_mp4(driver, clip, float(RATE))
  assert cli.main(["animate", "--checkpoint", str(run_dir), "--identity", str(identity),
                   "--driver", str(driver), "--out", str(tmp_path / "out.mp4")]) == 0
  line = capsys.readouterr().out.strip().splitlines()[-2]
  assert line.endswith("audio: none: the driver has no audio track")
  assert sound(tmp_path / "out.mp4") == {"streams": ["video"]}


@pytest.mark.parametrize("container, codec, rate, video_start, audio_start, how", [
    # PCM in Matroska, the sound starting 0.2 s before the picture: re-encoded, cut to the sample.
    ("matroska", "pcm_s16le", 44100, fractions.Fraction(1, 2), fractions.Fraction(3, 10),
     "re-encoded from pcm_s16le"),
    # AAC starting 0.1 s after the picture: copied, and kept 0.1 s late.
    ("matroska", "aac", 48000, fractions.Fraction(1, 5), fractions.Fraction(3, 10), "copied"),
])
def test_stream_start_times_keep_the_sound_on_its_frames(clip, tmp_path, container, codec, rate,
                                                         video_start, audio_start, how):
  driver = tmp_path / "driver.mkv"
  make_driver(driver, clip, container, codec, rate, video_start, audio_start)
  video = tmp_path / "video.mp4"
  save_mp4(video, clip[:8], float(RATE))  # as if generation stopped two frames early
  found = audio_lib.probe(driver)
  assert (found.codec, found.rate, found.channels) == (codec, rate, 1)
  note = audio_lib.mux(video, found, tmp_path / "out.mp4")
  s = sound(tmp_path / "out.mp4")
  check_in_sync(s, 8, rate)
  heard = 8 / RATE - max(0, audio_start - video_start)
  prefix, seconds, suffix = note.partition(" Hz, ")[0], *note.partition(" Hz, ")[2].split(" s ")
  assert (prefix, suffix) == (f"aac {rate}", how), note
  # Copied packets are counted whole (the encoder's priming included): within one audio frame.
  assert abs(float(seconds) - heard) <= s["frame_size"] / rate + 0.005, note
  if audio_start > video_start:  # nothing is heard before the driver's sound starts
    assert s["onset"] > float(audio_start - video_start)


def test_a_failed_write_leaves_no_file(clip, tmp_path):
  driver = tmp_path / "talk.mp4"
  make_driver(driver, clip, "mp4", "aac", 48000)
  out = tmp_path / "out.mp4"
  with pytest.raises(RuntimeError, match="interrupted"):
    with audio_lib.Soundtrack(out, driver) as track, Mp4Writer(track.video_path, 30) as writer:
      assert track.video_path != out and track.video_path.parent == tmp_path
      writer.write(clip[0])
      raise RuntimeError("interrupted")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.mp4"]
  # A landmark file has no sound, and --no-audio asks for none: the video goes straight to out.
  assert audio_lib.Soundtrack(out, None).note == "none: the driver is a landmark file"
  assert audio_lib.Soundtrack(out, driver, enabled=False).video_path == out
