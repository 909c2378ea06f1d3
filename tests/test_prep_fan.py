"""The fan backend (face-alignment S3FD + 2DFAN4) with stand-in weights.

The real weights cannot be downloaded here, so the weight files are the right architectures with
random values, written where torch hub looks (``$TORCH_HOME/hub/checkpoints``). That exercises
everything but the weights' accuracy: file lookup, loading, the error paths, shapes and, with the
network swapped for one whose heatmap peaks on the brightest input pixel, the coordinate frames
from image to FAN crop to heatmap and back.
"""

import json
import pathlib
import shutil
import urllib.error

import face_alignment  # noqa: F401  (the dev extra pins it: missing is a failure, not a skip)
import numpy as np
import pytest
import torch

from fewshot_jax.prep import backends, fan


@pytest.fixture(scope="module")
def stand_in_weights(tmp_path_factory) -> pathlib.Path:
  """A torch hub checkpoints folder holding random-weight S3FD and 2DFAN4 files."""
  from face_alignment import models  # pylint: disable=g-import-not-at-top
  from face_alignment.detection.sfd import net_s3fd  # pylint: disable=g-import-not-at-top
  folder = tmp_path_factory.mktemp("torch_home") / "hub" / "checkpoints"
  folder.mkdir(parents=True)
  detector_file, fan_file = fan.weight_files()
  torch.manual_seed(0)
  torch.save(net_s3fd.s3fd().state_dict(), folder / detector_file.name)
  torch.save(models.FAN(4).state_dict(), folder / fan_file.name)
  return folder


@pytest.fixture
def torch_home(stand_in_weights, monkeypatch) -> pathlib.Path:
  """Points torch hub at the stand-in weights, the way a user's TORCH_HOME would."""
  monkeypatch.setenv("TORCH_HOME", str(stand_in_weights.parent.parent))
  return stand_in_weights


def _no_network(monkeypatch):
  calls = []

  def refuse(url, dst, *args, **kwargs):
    calls.append((url, dst))
    raise urllib.error.URLError("no network")

  monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
  return calls


def test_weights_are_found_in_the_torch_hub_cache(torch_home, monkeypatch):
  calls = _no_network(monkeypatch)
  backend = backends.make_backend("fan", device="cpu")
  assert calls == []
  assert backend.name == "fan" and backend.device == "cpu"
  # The version names the weights by digest, so caches record which weights made them.
  assert "s3fd:" in backend.version and "2dfan4:" in backend.version
  assert fan.checkpoints_dir() == torch_home


def test_missing_weights_offline_name_both_files_and_the_folder(tmp_path, monkeypatch):
  calls = _no_network(monkeypatch)
  with pytest.raises(FileNotFoundError) as e:
    fan.FanBackend(device="cpu", weights_dir=tmp_path)
  message = str(e.value)
  for f in fan.weight_files():
    assert f.name in message and f.url in message
  assert str(tmp_path) in message and "URLError" in message and "--backend dlib" in message
  assert sorted(pathlib.Path(dst).name for _, dst in calls) == sorted(
      f.name for f in fan.weight_files())
  assert list(tmp_path.iterdir()) == []  # a failed download leaves nothing behind

  with pytest.raises(FileNotFoundError, match="downloads are off"):
    fan.FanBackend(device="cpu", weights_dir=tmp_path, download=False)


def test_a_missing_file_is_downloaded_into_the_cache(stand_in_weights, tmp_path, monkeypatch):
  detector_file, fan_file = fan.weight_files()
  shutil.copy(stand_in_weights / detector_file.name, tmp_path / detector_file.name)
  fetched = []

  def fake_download(url, dst, *args, **kwargs):
    fetched.append(url)
    shutil.copy(stand_in_weights / pathlib.Path(dst).name, dst)

  monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
  fan.FanBackend(device="cpu", weights_dir=tmp_path)
  assert fetched == [fan_file.url]
  assert (tmp_path / fan_file.name).is_file()


def test_wrong_or_corrupt_weight_files_are_named(stand_in_weights, tmp_path):
  detector_file, fan_file = fan.weight_files()
  shutil.copy(stand_in_weights / detector_file.name, tmp_path / detector_file.name)
  # The detector's weights under the landmark network's name: the wrong architecture.
  shutil.copy(stand_in_weights / detector_file.name, tmp_path / fan_file.name)
  with pytest.raises(ValueError, match="2DFAN4 landmark network") as e:
    fan.FanBackend(device="cpu", weights_dir=tmp_path, download=False)
  assert str(tmp_path / fan_file.name) in str(e.value)

  (tmp_path / detector_file.name).write_bytes(b"<html>captive portal</html>")
  with pytest.raises(ValueError, match="not a readable PyTorch state dict") as e:
    fan.FanBackend(device="cpu", weights_dir=tmp_path, download=False)
  assert str(tmp_path / detector_file.name) in str(e.value)


def test_detect_returns_faces_in_the_backend_contract(torch_home):
  backend = fan.FanBackend(device="cpu", max_faces=3)
  frame = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
  faces = backend.detect(frame)
  # Untrained S3FD fires everywhere: max_faces bounds the landmark work.
  assert 1 <= len(faces) <= 3
  for face in faces:
    assert face.box.shape == (4,) and face.box.dtype == np.float32
    assert face.landmarks.shape == (68, 2) and face.landmarks.dtype == np.float32
    assert face.confidence >= backend.min_score
  sizes = [f.size for f in faces]
  assert sizes == sorted(sizes, reverse=True)
  with pytest.raises(ValueError, match="uint8"):
    backend.detect(frame.astype(np.float32))


class _BrightestPixel(torch.nn.Module):
  """A FAN stand-in whose 68 heatmaps all peak on the brightest 4x4 block of its input crop."""

  def forward(self, x):
    heat = torch.nn.functional.avg_pool2d(x.sum(dim=1, keepdim=True), 4)
    return [heat.expand(-1, 68, -1, -1)]


@pytest.mark.parametrize("flip", [False, True])
def test_landmarks_map_back_to_the_image_point(torch_home, flip):
  backend = fan.FanBackend(device="cpu", flip=flip)
  backend._fan = _BrightestPixel()  # pylint: disable=protected-access
  frame = np.zeros((120, 160, 3), np.uint8)
  frame[60:62, 90:92] = 255  # a 2x2 dot; its continuous centre is (x 91, y 61)
  boxes = np.array([
      [60, 40, 124, 104],  # the dot off-centre in the box
      [82, 52, 102, 72],  # a small box, so a fine heatmap grid
      [50, -20, 170, 100],  # a box running off the frame's top and right
  ], np.float32)
  points, peaks = backend.landmarks(frame, boxes)
  assert points.shape == (3, 68, 2) and peaks.shape == (3, 68)
  for box, p in zip(boxes, points):
    _, side = fan.crop_transform(box)
    cell = side / fan.HEATMAP
    # The peak cell's centre, moved a quarter cell by the refinement, is within 3/4 of a cell.
    assert np.abs(p - [91.0, 61.0]).max() <= 0.75 * cell + 1e-3, (box, p[0], cell)
  assert backend.landmarks(frame, np.zeros((0, 5), np.float32))[0].shape == (0, 68, 2)

  # No bias: over dot positions sweeping two cells, the signed error averages to about zero (a
  # half-pixel slip anywhere in the chain would shift it by a good part of a cell).
  box = boxes[:1]
  cell = fan.crop_transform(box[0])[1] / fan.HEATMAP
  errors = []
  for shift in range(8):
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[60 + shift:62 + shift, 86 + shift:88 + shift] = 255
    p, _ = backend.landmarks(frame, box)
    errors.append(p[0, 0] - [87.0 + shift, 61.0 + shift])
  assert np.abs(np.mean(errors, axis=0)).max() < 0.15 * cell, (np.mean(errors, axis=0), cell)


def test_crop_transform_follows_the_face_alignment_recipe():
  centre, side = fan.crop_transform(np.array([10, 20, 110, 140], np.float32))
  np.testing.assert_allclose(centre, [60.0, 80.0 - 0.12 * 120])
  np.testing.assert_allclose(side, 200 * 220 / 195, rtol=1e-6)
  # A constant image warps to a constant crop, and the crop covers exactly [c - s/2, c + s/2].
  frame = np.zeros((64, 64, 3), np.uint8)
  frame[:, 32:] = 200
  crop = fan.warp_crop(frame, np.array([32.0, 32.0]), 32.0)
  assert crop.shape == (256, 256, 3)
  # The edge at image x = 32 sits between crop pixels 127 and 128; bilinear sampling spreads it
  # over one source pixel, 8 crop pixels.
  assert (crop[:, :124] == 0).all() and (crop[:, 132:] == 200).all()
  assert (crop[:, 127] < 100).all() and (crop[:, 128] > 100).all()
  np.testing.assert_allclose(crop[:, 127].astype(float) + crop[:, 128], 200, atol=2)


def test_prepare_landmarks_cli_runs_the_fan_backend(torch_home, tmp_path):
  """The CLI passes fan's options through to the cache builder, which records the detector."""
  from fewshot_jax import cli  # pylint: disable=g-import-not-at-top
  from fewshot_jax.prep import landmark_cache  # pylint: disable=g-import-not-at-top
  from fewshot_jax.prep.video import read_video  # pylint: disable=g-import-not-at-top
  from fewshot_jax.visualize import save_mp4  # pylint: disable=g-import-not-at-top
  from test_prep_backends import carphone_path  # pylint: disable=g-import-not-at-top
  frames, fps = read_video(carphone_path())
  (tmp_path / "videos" / "person").mkdir(parents=True)
  save_mp4(tmp_path / "videos" / "person" / "clip.mp4", frames[:12], fps)
  cache = tmp_path / "cache"
  assert cli.main(["prepare", "landmarks", "--input", str(tmp_path / "videos"), "--cache",
                   str(cache), "--backend", "fan", "--device", "cpu", "--no-flip",
                   "--frames-per-video", "2", "--image-size", "64", "--min-face-size", "1"]) == 0
  # Untrained weights find "faces" anywhere, so the outcome may be an entry or a rejection; either
  # way the video is accounted for, and an entry records fan and its weights' digests.
  rejected = (cache / "rejected.jsonl").read_text().splitlines()
  entries = sorted(cache.rglob("*.npz"))
  assert len(rejected) + len(entries) == 1
  if entries:
    meta = landmark_cache.read_meta(entries[0])
    assert meta["detector"] == "fan" and "2dfan4:" in meta["detector_version"]
    assert "flip=0" in meta["detector_version"]
  else:
    assert json.loads(rejected[0])["kind"] in ("several faces", "face too small", "no face")
