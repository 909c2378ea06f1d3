"""Warp-augmented shots: the warp carries image content with the landmarks, leaves the crop's
border where it is, stays inside the crop, repeats by seed, its ranges are the training data's,
and fine-tuning with ``--augment`` runs through the CLI.

Synthetic frames are used where exact landmarks are needed (their pixels are drawn from the
landmarks). How much augmentation helps a real face (the astronaut, the carphone-trained run) is
measured by ``benchmarks/single_photo_augment.py``: minutes, not a test."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import dlib  # noqa: F401  (the dev extra pins it: missing is a failure, not a skip)
import numpy as np
import pytest
import skimage.data as skdata
from PIL import Image

from carphone_run import carphone_run
from test_prep_backends import carphone_path
from fewshot_jax import cli
from fewshot_jax.data import synthetic
from fewshot_jax.inference import augment
from fewshot_jax.inference.driver import load_driver
from fewshot_jax.inference.identity import finetune_targets, load_identity
from fewshot_jax.inference.run import load_run
from fewshot_jax.prep.backends import make_backend

MOUTH = slice(48, 68)


@pytest.fixture(scope="module")
def clip() -> synthetic.SyntheticClip:
  return synthetic.SyntheticClip(3, 60, 64)


def _box_error(a: np.ndarray, b: np.ndarray, points: np.ndarray) -> float:
  lo = np.floor(points.min(0)).astype(int) - 2
  hi = np.ceil(points.max(0)).astype(int) + 2
  box = (slice(lo[1], hi[1]), slice(lo[0], hi[0]))
  return float(np.abs(a[box].astype(float) - b[box].astype(float)).mean())


def test_the_warp_moves_the_mouth_with_its_landmarks(clip):
  lm = clip.landmarks
  mouth = augment.face_measures(lm)["mouth"]
  i, j = int(np.argmin(mouth)), int(np.argmax(mouth))  # closed (0.0) and open (0.21)
  assert mouth[j] - mouth[i] > 0.15
  fi, fj = clip.frame(i), clip.frame(j)
  warped = augment.warp_image(fi, lm[i], lm[j])
  before, after = _box_error(fi, fj, lm[j, MOUTH]), _box_error(warped, fj, lm[j, MOUTH])
  # Measured: 41.9 -> 21.4 grey levels (the open mouth's inside is not in the closed one to warp).
  assert after < 0.7 * before, (before, after)


def test_an_identity_warp_is_exact_and_the_border_stays_put(clip):
  frame, points = clip.frame(0), clip.landmarks[0]
  np.testing.assert_array_equal(augment.warp_image(frame, points, points), frame)
  big = synthetic.render_video(3, 1, 256)  # at 256 px the spline is read from a 64 x 64 lattice
  np.testing.assert_array_equal(augment.warp_image(big[0][0], big[1][0], big[1][0]), big[0][0])
  # A large warp (the face shifted 6 px and the mouth opened 5 px) keeps the four corner pixels
  # exactly and the outermost ring within a grey level of the original on average.
  moved = points + np.array([6.0, 0.0], np.float32)
  moved[MOUTH][6:12] += np.array([0.0, 5.0], np.float32)
  warped = augment.warp_image(frame, points, moved)
  corners = (slice(None, None, 63), slice(None, None, 63))
  np.testing.assert_array_equal(warped[corners], frame[corners])
  ring = np.ones((64, 64), bool)
  ring[1:-1, 1:-1] = False
  assert np.abs(warped[ring].astype(float) - frame[ring].astype(float)).mean() < 1.0
  inside = np.abs(warped[16:48, 16:48].astype(float) - frame[16:48, 16:48].astype(float)).mean()
  assert inside > 5.0  # the face itself did move


def test_augmented_pairs_stay_in_the_crop_and_repeat_by_seed(clip):
  frames = np.stack([clip.frame(0), clip.frame(30)])
  points = clip.landmarks[[0, 30]]
  f, p = augment.augment_shots(frames, points, 6, seed=4)
  assert f.shape == (6, 64, 64, 3) and f.dtype == np.uint8 and p.shape == (6, 68, 2)
  again = augment.augment_shots(frames, points, 6, seed=4)
  np.testing.assert_array_equal(f, again[0])
  np.testing.assert_array_equal(p, again[1])
  other = augment.augment_shots(frames, points, 6, seed=5)
  assert np.abs(other[1] - p).max() > 0.5
  # Every pair moved its landmarks, and its image with them: shot i % K is where each comes from.
  assert (np.abs(p - points[[0, 1, 0, 1, 0, 1]]).max(axis=(1, 2)) > 0.5).all()
  # Far wider ranges than the data's would push faces out: the motion is cut until they fit.
  wide = dataclasses.replace(augment.CARPHONE_RANGES, roll=1.5, scale=0.7, shift=0.4, yaw=1.0)
  _, far = augment.augment_shots(frames, points, 8, seed=0, ranges=wide)
  assert far.min() >= 1.0 and far.max() <= 63.0
  with pytest.raises(ValueError, match=r"augment: expected frames \[K, S, S, 3\]"):
    augment.augment_shots(frames, points[:1], 2)


def test_the_ranges_are_the_carphone_crops_spread():
  driver = load_driver(carphone_path(), make_backend("dlib"), 64, smooth_sigma=0.0,
                       show_progress=False)
  assert augment.ranges_from(driver.landmarks, 64) == augment.CARPHONE_RANGES


@pytest.fixture(scope="module")
def run_dir() -> pathlib.Path:
  """The carphone-trained run (``carphone_run``): cached across the suite, where a tiny run would
  be trained here (measured on this loaded machine: 143 s to train a tiny run, against one
  fine-tune step's compile for the new batch shape either way)."""
  return carphone_run()


def test_finetune_with_augment_through_the_cli(run_dir, tmp_path, capsys):
  source = tmp_path / "astronaut.png"
  Image.fromarray(skdata.astronaut()).save(source)
  common = ["finetune", "--checkpoint", str(run_dir), "--source", str(source), "--steps", "1"]
  assert cli.main([*common, "--augment", "2", "--out", str(tmp_path / "aug")]) == 0
  line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert line["augment"] == 2 and line["finetune_steps"] == 1
  aug = load_identity(tmp_path / "aug", load_run(run_dir))
  assert aug.info["augment"] == 2 and aug.shots.shape == (1, 64, 64, 3)  # it keeps its one shot
  assert np.isfinite(aug.info["content_first"])
  # Each step's targets: the shots, then that step's warped pairs of them (new ones each step).
  shot, points = aug.shots, aug.shot_landmarks
  frames0, points0 = finetune_targets(shot, points, 2, 0, 0)
  frames1, _ = finetune_targets(shot, points, 2, 0, 1)
  assert frames0.shape == (3, 64, 64, 3) and points0.shape == (3, 68, 2)
  np.testing.assert_array_equal(frames0[0], shot[0])
  np.testing.assert_array_equal(frames0[1:], augment.augment_shots(shot, points, 2, (0, 0))[0])
  assert np.abs(frames1[1:].astype(int) - frames0[1:]).max() > 0
  assert finetune_targets(shot, points, 0, 0, 0)[0] is shot
  # A bad count is refused in one line before the checkpoint is read or anything is written.
  assert cli.main([*common, "--augment", "-1", "--out", str(tmp_path / "bad")]) == 2
  assert "--augment -1: expected at least 0" in capsys.readouterr().err
  assert not (tmp_path / "bad").exists()
