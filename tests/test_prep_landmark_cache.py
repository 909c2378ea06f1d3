"""Stage (a) of data prep on a VoxCeleb2-style tree of real and broken videos: good videos become
entries, every bad one is skipped with its reason, and a re-run redoes nothing."""

import json
import shutil

import dlib  # noqa: F401  (the dev extra pins it: missing is a failure, not a skip)
import numpy as np
import pytest

from fewshot_jax import cli
from fewshot_jax.prep import landmark_cache, layouts
from fewshot_jax.prep.video import read_video
from fewshot_jax.visualize import save_mp4
from test_prep_backends import carphone_path


def _utterance(root, ident, vid, name="00001.mp4"):
  d = root / "dev" / "mp4" / ident / vid
  d.mkdir(parents=True, exist_ok=True)
  return d / name


@pytest.fixture(scope="module")
def vox_tree(tmp_path_factory):
  root = tmp_path_factory.mktemp("vox")
  clip = carphone_path()
  frames, fps = read_video(clip)
  # Good: one video of two utterances, and another person's single-utterance video.
  shutil.copy(clip, _utterance(root, "id00001", "vidA", "00001.mp4"))
  save_mp4(_utterance(root, "id00001", "vidA", "00002.mp4"), frames[::-1], fps)
  save_mp4(_utterance(root, "id00002", "vidB"), frames[:, :, ::-1].copy(), fps)
  # Bad, one of each kind.
  _utterance(root, "id00003", "empty").write_bytes(b"")
  _utterance(root, "id00004", "text").write_text("not a video\n" * 100)
  data = open(clip, "rb").read()
  _utterance(root, "id00005", "cut").write_bytes(data[: len(data) // 3])
  save_mp4(_utterance(root, "id00006", "noface"), np.full((40, 144, 176, 3), 90, np.uint8), fps)
  save_mp4(_utterance(root, "id00007", "short"), frames[:10], fps)
  save_mp4(_utterance(root, "id00008", "two"), np.concatenate([frames, frames[:, :, ::-1]], 2), fps)
  return root


OPTS = landmark_cache.PrepOptions(frames_per_video=16, image_size=128)


def test_voxceleb2_layout_groups_utterances_by_video(vox_tree):
  entries = layouts.list_videos(vox_tree, "voxceleb2")
  by_key = {e.key: e for e in entries}
  assert len(entries) == 8
  assert [c.name for c in by_key["dev/id00001/vidA"].clips] == ["00001.mp4", "00002.mp4"]
  assert by_key["dev/id00001/vidA"].identity == "id00001"
  with pytest.raises(FileNotFoundError, match="VoxCeleb2 layout"):
    layouts.list_videos(vox_tree / "dev", "voxceleb2")


def test_build_skips_bad_videos_with_reasons_and_resumes(vox_tree, tmp_path):
  cache = tmp_path / "cache"
  entries = layouts.list_videos(vox_tree, "voxceleb2")
  summary = landmark_cache.build_cache(entries, cache, OPTS, workers=2)
  rejected = {r["key"]: r["reason"] for r in map(json.loads, (cache / "rejected.jsonl").open())}
  assert summary["written"] == 2, rejected
  assert summary["rejected"] == 6
  by_kind = summary["rejected_by_reason"]
  assert by_kind["empty file"] == by_kind["no face"] == by_kind["several faces"] == 1
  assert by_kind["too few frames"] == 1 and by_kind["not a readable video"] >= 1
  kinds = {r["key"]: r["kind"] for r in map(json.loads, (cache / "rejected.jsonl").open())}
  assert kinds["dev/id00008/two"] == "several faces"
  assert "empty file" in rejected["dev/id00003/empty"]
  assert "not a readable video" in rejected["dev/id00004/text"]
  assert "cut" in rejected["dev/id00005/cut"] or "too few" in rejected["dev/id00005/cut"]
  assert "no face" in rejected["dev/id00006/noface"]
  assert "too few frames" in rejected["dev/id00007/short"]
  assert "several faces" in rejected["dev/id00008/two"]
  for reason in rejected.values():
    assert str(vox_tree) in reason or "frames" in reason or "face" in reason

  frames, points, meta = landmark_cache.load_entry(cache / "dev/id00001/vidA.npz")
  assert len(frames) == 16 and frames[0].shape == (128, 128, 3)
  assert points.shape == (16, 68, 2) and (points > 0).all() and (points < 128).all()
  assert meta["identity"] == "id00001" and meta["detector"] == "dlib"
  assert meta["fps"] == pytest.approx(30.0, rel=0.05)
  assert {clip for clip, _ in meta["frames"]} == {0, 1}  # spread over both utterances
  # The face fills the crop as the recipe says: landmark box about 1/1.8 of the side.
  side = np.ptp(points, axis=1).max(-1)
  assert np.median(side) == pytest.approx(128 / 1.8, rel=0.1)

  # A re-run (through the CLI) redoes nothing and rewrites nothing.
  mtime = (cache / "dev/id00001/vidA.npz").stat().st_mtime_ns
  assert cli.main(["prepare", "landmarks", "--input", str(vox_tree), "--layout", "voxceleb2",
                   "--backend", "dlib", "--cache", str(cache), "--frames-per-video", "16",
                   "--image-size", "128"]) == 0
  assert (cache / "dev/id00001/vidA.npz").stat().st_mtime_ns == mtime
  assert len((cache / "rejected.jsonl").read_text().splitlines()) == 6


def test_face_too_small_is_rejected(vox_tree, tmp_path):
  entries = [e for e in layouts.list_videos(vox_tree, "voxceleb2") if e.key.endswith("vidB")]
  opts = landmark_cache.PrepOptions(frames_per_video=8, image_size=64, min_face_size=500)
  summary = landmark_cache.build_cache(entries, tmp_path, opts)
  assert summary["rejected_by_reason"] == {"face too small": 1}
