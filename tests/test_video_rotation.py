"""Videos play the right way up: a phone video stored sideways with a display matrix decodes
upright, so data prep and drivers find the same face as in the original carphone clip."""

from __future__ import annotations

import pathlib

import av
import numpy as np
import pytest

from fewshot_jax.inference import driver as driver_lib
from fewshot_jax.prep import backends, landmark_cache, layouts
from fewshot_jax.prep.video import read_video
from test_prep_backends import carphone_path

FRAMES = 24


@pytest.fixture(scope="module")
def original() -> tuple[np.ndarray, float]:
  frames, fps = read_video(carphone_path())
  return frames[:FRAMES], fps


def _rotated_copy(path: pathlib.Path, frames: np.ndarray, fps: float, degrees: int) -> None:
  """The frames stored turned by -``degrees``, with a display matrix that turns them back
  (``degrees`` counter-clockwise), as a phone held sideways records them."""
  with av.open(str(path), "w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=round(fps))
    stored = [np.ascontiguousarray(np.rot90(f, -degrees // 90)) for f in frames]
    stream.height, stream.width = stored[0].shape[:2]
    stream.pix_fmt, stream.options = "yuv420p", {"crf": "12"}
    stream.set_display_rotation(degrees)
    for f in stored:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
    container.mux(stream.encode())


@pytest.fixture(scope="module", params=[90, -90])
def rotated(request, original, tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp(f"rotated{request.param}")
  (root / "phone").mkdir()
  path = root / "phone" / "carphone_rotated.mp4"
  _rotated_copy(path, *original, request.param)
  with av.open(str(path)) as container:  # the file really is stored sideways
    stream = container.streams.video[0]
    assert (stream.width, stream.height) == (144, 176)
  return path


def test_rotated_video_decodes_upright(rotated, original):
  frames, _ = read_video(rotated)
  want = original[0].astype(np.float32)
  assert frames.shape == want.shape
  error = np.abs(frames.astype(np.float32) - want).mean()
  upside_down = np.abs(frames[:, ::-1, ::-1].astype(np.float32) - want).mean()
  assert error < 4 < upside_down, (error, upside_down)


def test_data_prep_and_drivers_find_the_upright_face(rotated, original, tmp_path):
  backend = backends.make_backend("dlib")
  upright = tmp_path / "upright.mp4"
  _rotated_copy(upright, *original, 0)
  points = {}
  for name, path in (("rotated", rotated), ("upright", upright)):
    drv = driver_lib.load_driver(path, backend, image_size=64, show_progress=False)
    assert drv.held == 0, name
    points[name] = drv.boxes, drv.landmarks
  np.testing.assert_allclose(points["rotated"][0], points["upright"][0], atol=3)  # source px
  np.testing.assert_allclose(points["rotated"][1], points["upright"][1], atol=2)  # crop px
  opts = landmark_cache.PrepOptions(frames_per_video=8, image_size=64)
  summary = landmark_cache.build_cache(layouts.list_videos(rotated.parent.parent, "folder"),
                                       tmp_path / "cache", opts)
  assert summary["written"] == 1, summary
  _, _, meta = landmark_cache.load_entry(tmp_path / "cache" / "phone" / "carphone_rotated.npz")
  assert meta["identity"] == "phone"


def test_a_rotation_that_is_not_a_quarter_turn_is_refused_not_rounded():
  from fewshot_jax.prep import video  # pylint: disable=g-import-not-at-top

  image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
  np.testing.assert_array_equal(video.upright(image, -90.0), np.rot90(image, 3))
  np.testing.assert_array_equal(video.upright(image, 89.6), np.rot90(image, 1))
  with pytest.raises(video.VideoError, match=r"clip.mp4: unsupported display rotation \(45 "
                                             "degrees; only quarter turns are applied\\)"):
    video.upright(image, 45.0, "clip.mp4")


def test_cache_entries_decoded_before_rotations_were_applied_are_named_on_a_rerun():
  """An entry from before the decoder applied display rotations may hold a sideways crop: a
  re-run names the difference (--rebuild rebuilds) instead of reusing it silently."""
  from fewshot_jax.prep import landmark_cache  # pylint: disable=g-import-not-at-top

  opts = landmark_cache.PrepOptions(frames_per_video=8, image_size=64, enlarge=1.8,
                                    jpeg_quality=95, min_face_size=40.0, backend="dlib",
                                    backend_options=(("upsample", 1),))
  wanted = landmark_cache.options_record(opts)
  old = {k: v for k, v in wanted.items() if k != "decoder"}
  assert landmark_cache.option_differences(landmark_cache._built_with({"options": old}),
                                           wanted) == ["decoder=1 (now 2)"]
  assert landmark_cache.option_differences(
      landmark_cache._built_with({"options": wanted}), wanted) == []
