"""Data prep re-runs honour changed options: entries remember what built them, rejections for
transient causes or under other options are retried, two videos never share a key, and
`prepare shards` takes the crop size from the cache."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest

from fewshot_jax import cli
from fewshot_jax.prep import landmark_cache, layouts
from fewshot_jax.prep.video import read_video
from fewshot_jax.visualize import save_mp4
from test_prep_backends import carphone_path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> pathlib.Path:
  """The carphone clip, and a 12-frame cut of it."""
  root = tmp_path_factory.mktemp("videos")
  shutil.copy(carphone_path(), root / "carphone.mp4")
  frames, fps = read_video(carphone_path())
  save_mp4(root / "short.mp4", frames[:12], fps)
  return root


def _landmarks(videos: pathlib.Path, cache: pathlib.Path, *flags: str) -> int:
  return cli.main(["prepare", "landmarks", "--input", str(videos), "--cache", str(cache),
                   "--frames-per-video", "8", "--image-size", "64", *flags])


def _rejections(cache: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (cache / "rejected.jsonl").read_text().splitlines()]


def test_other_options_are_refused_by_name_then_rebuilt_on_request(videos, tmp_path, capsys):
  cache = tmp_path / "cache"
  assert _landmarks(videos, cache) == 0
  entry = cache / "carphone.npz"
  assert landmark_cache.read_meta(entry)["options"]["image_size"] == 64
  mtime = entry.stat().st_mtime_ns
  capsys.readouterr()
  assert _landmarks(videos, cache, "--image-size", "96", "--enlarge", "2.0") == 2
  err = capsys.readouterr().err.splitlines()[0]
  assert f"{entry}: built with other options: enlarge=1.8 (now 2.0), image_size=64 (now 96)" in err
  assert entry.stat().st_mtime_ns == mtime  # nothing was touched
  assert _landmarks(videos, cache, "--frames-per-video", "10", "--rebuild") == 0
  frames, points, meta = landmark_cache.load_entry(entry)
  assert len(frames) == len(points) == 10 and meta["options"]["frames_per_video"] == 10
  assert _landmarks(videos, cache, "--frames-per-video", "10") == 0  # now nothing to do


def test_rejections_are_retried_when_transient_or_made_under_other_options(videos, tmp_path,
                                                                         monkeypatch):
  cache = tmp_path / "cache"
  entries = layouts.list_videos(videos, "folder")
  opts = landmark_cache.PrepOptions(frames_per_video=16, image_size=64)
  real = landmark_cache.prepare_video

  def flaky(entry, backend, o):
    if entry.key == "carphone":
      raise MemoryError("cannot allocate 2 GiB")
    return real(entry, backend, o)

  monkeypatch.setattr(landmark_cache, "prepare_video", flaky)
  summary = landmark_cache.build_cache(entries, cache, opts)
  assert summary["rejected_by_reason"] == {"out of memory": 1, "too few frames": 1}
  monkeypatch.setattr(landmark_cache, "prepare_video", real)
  # The out-of-memory one is retried unasked; the short clip stays rejected at 16 frames.
  summary = landmark_cache.build_cache(entries, cache, opts)
  assert (summary["written"], summary["retried_rejected"], summary["rejected"]) == (1, 1, 0)
  assert (cache / "carphone.npz").exists() and not (cache / "short.npz").exists()
  # --retry-rejected retries it anyway (and it is rejected again, for the same reason).
  summary = landmark_cache.build_cache(entries, cache, opts, retry_rejected=True)
  assert (summary["retried_rejected"], summary["rejected"]) == (1, 1)
  # At 8 frames the 12-frame clip is usable: the rejection made at 16 is retried, and the entry
  # made at 16 is refused.
  eight = landmark_cache.PrepOptions(frames_per_video=8, image_size=64)
  with pytest.raises(ValueError, match=r"carphone.npz: built with other options: "
                     r"frames_per_video=16 \(now 8\)"):
    landmark_cache.build_cache(entries, cache, eight)
  short = [e for e in entries if e.key == "short"]
  summary = landmark_cache.build_cache(short, cache, eight)
  assert (summary["written"], summary["retried_rejected"]) == (1, 1)
  assert [r["kind"] for r in _rejections(cache)] == ["out of memory", "too few frames",
                                                     "too few frames"]
  assert _rejections(cache)[-1]["options"]["frames_per_video"] == 16


def test_two_videos_with_one_key_are_refused(videos, tmp_path, capsys):
  root = tmp_path / "videos"
  root.mkdir()
  shutil.copy(videos / "carphone.mp4", root / "clip.mp4")
  shutil.copy(videos / "short.mp4", root / "clip.mov")
  cache = tmp_path / "cache"
  assert _landmarks(root, cache) == 2
  err = capsys.readouterr().err.splitlines()[0]
  assert f"{root / 'clip.mov'} and {root / 'clip.mp4'} both map to cache key 'clip'" in err
  assert not cache.exists()  # refused before anything was written


def test_prepare_shards_takes_the_crop_size_from_the_cache(videos, tmp_path, capsys):
  cache = tmp_path / "cache"
  assert _landmarks(videos, cache) == 0  # 64 px crops; the config's default is 256
  data = tmp_path / "data"
  assert cli.main(["prepare", "shards", "--manual-dir", str(cache), "--data-dir", str(data)]) == 0
  from fewshot_jax.data import shards  # pylint: disable=g-import-not-at-top
  split = shards.open_split(shards.find_dataset_dir(data), "train")
  assert split.image_size == 64 and split.num_examples == 2
  assert split.directory.parent.name == "video_folder_64"
  (video,) = [v for v in map(split.parser(), shards.iter_records(split)) if v["key"] == "carphone"]
  crops, points, _ = landmark_cache.read_entry(cache / "carphone.npz")
  assert video["frames"] == crops
  np.testing.assert_array_equal(video["landmarks"], points)
  # A cache of two crop sizes is refused in one line naming both.
  assert _landmarks(videos, tmp_path / "other", "--image-size", "96") == 0
  shutil.copy(tmp_path / "other" / "carphone.npz", cache / "carphone_96.npz")
  capsys.readouterr()
  assert cli.main(["prepare", "shards", "--manual-dir", str(cache), "--data-dir",
                   str(tmp_path / "data2")]) == 2
  err = capsys.readouterr().err.splitlines()[0]
  assert "entries have different crop sizes (2 of 64 px, 1 of 96 px)" in err


def test_a_npz_the_cache_cannot_read_is_never_overwritten(videos, tmp_path, capsys):
  """A cache folder that also holds a user's own carphone.npz (here: next to a rejections file,
  so the folder is a cache): the run refuses by name instead of rebuilding over it."""
  cache = tmp_path / "cache"
  cache.mkdir()
  (cache / "rejected.jsonl").write_text("")
  np.savez(cache / "carphone.npz", mine=np.arange(3))
  assert _landmarks(videos, cache) == 2
  err = capsys.readouterr().err
  assert f"{cache / 'carphone.npz'}: not a cache entry this program can read" in err
  with np.load(cache / "carphone.npz") as z:
    np.testing.assert_array_equal(z["mine"], np.arange(3))
