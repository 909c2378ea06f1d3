"""Decoding real and broken videos: every failure names the file and the reason."""

import pytest

from fewshot_jax.prep.video import VideoError, iter_frames, read_video
from test_prep_backends import carphone_path


def test_real_clip_decodes_fully():
  frames, fps = read_video(carphone_path())
  assert frames.shape == (120, 144, 176, 3) and frames.dtype.name == "uint8"
  assert fps == pytest.approx(30.0, rel=0.05)


def test_broken_files_are_named_with_the_reason(tmp_path):
  empty = tmp_path / "empty.mp4"
  empty.write_bytes(b"")
  garbage = tmp_path / "notes.mp4"
  garbage.write_text("this is not a video\n" * 50)
  cut = tmp_path / "cut.mp4"
  data = open(carphone_path(), "rb").read()
  cut.write_bytes(data[: len(data) // 3])
  cases = {
      tmp_path / "missing.mp4": "no such file",
      empty: "empty file",
      garbage: "not a readable video",
  }
  for path, reason in cases.items():
    with pytest.raises(VideoError, match=reason) as info:
      read_video(path)
    assert str(path) in str(info.value)
  # A truncated mp4 either fails to open (its index is at the end) or stops part-way; either way
  # the error names the file, and frames decoded before the cut were handed out.
  seen = []
  with pytest.raises(VideoError) as info:
    for i, _, _ in iter_frames(cut):
      seen.append(i)
  assert str(cut) in str(info.value)

