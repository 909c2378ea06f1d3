"""Face tracks and crops: geometry that is exact, tracks that follow the right face, and crops of a
real clip on which the detector finds the same landmarks again."""

import dlib  # noqa: F401  (the dev extra pins it: missing is a failure, not a skip)
import numpy as np
import pytest

from fewshot_jax.prep import backends, crop


def _face(x0, y0, side, score=1.0):
  box = np.array([x0, y0, x0 + side, y0 + side], np.float32)
  pts = np.zeros((68, 2), np.float32) + [x0 + side / 2, y0 + side / 2]
  return backends.Face(box=box, landmarks=pts, confidence=score)


def _centroid(img: np.ndarray) -> np.ndarray:
  """Intensity-weighted centre in continuous pixel coordinates (pixel centres at j + 0.5)."""
  m = img.astype(np.float64).sum(-1)
  ys, xs = np.mgrid[: m.shape[0], : m.shape[1]]
  return np.array([((xs + 0.5) * m).sum(), ((ys + 0.5) * m).sum()]) / m.sum()


def test_crop_maps_pixels_and_landmarks_alike():
  frame = np.zeros((60, 80, 3), np.uint8)
  frame[20:24, 40:44] = 255  # a white square centred at (42, 22)
  landmark = np.array([[42.0, 22.0]])
  # Scale 1, integer offset: plain slicing.
  out, pts = crop.crop_frame(frame, np.array([30, 10, 62, 42]), landmark, 32)
  np.testing.assert_array_equal(out, frame[10:42, 30:62])
  np.testing.assert_allclose(pts, [[12.0, 12.0]])
  # Upscale 2x with a sub-pixel offset: the square's centre lands where its landmark does.
  box = np.array([30.25, 10.5, 62.25, 42.5])
  out, pts = crop.crop_frame(frame, box, landmark, 64)
  np.testing.assert_allclose(pts, [[(42 - 30.25) * 2, (22 - 10.5) * 2]], rtol=1e-6)
  np.testing.assert_allclose(_centroid(out), pts[0], atol=0.05)


def test_crop_overhanging_the_frame_is_black_outside():
  frame = np.full((40, 40, 3), 200, np.uint8)
  out, pts = crop.crop_frame(frame, np.array([-20.0, -20.0, 20.0, 20.0]), np.array([[0.0, 0.0]]), 40)
  assert out.shape == (40, 40, 3)
  assert out[:18, :18].max() == 0 and out[22:, 22:].min() == 200
  np.testing.assert_allclose(pts, [[20.0, 20.0]])
  with pytest.raises(ValueError, match="empty crop box"):
    crop.crop_frame(frame, np.array([5.0, 5.0, 5.0, 9.0]), pts, 8)


def test_crop_boxes_are_enlarged_squares_and_smoothing_removes_jitter():
  rng = np.random.default_rng(0)
  base = rng.uniform(0, 1, (68, 2)) * [60, 80] + [100, 50]  # box 60 wide, 80 tall
  boxes = crop.crop_boxes(base[None], enlarge=1.8, smooth_sigma=0)
  side = boxes[0, 2] - boxes[0, 0]
  assert side == pytest.approx(1.8 * np.ptp(base[:, 1]))
  assert boxes[0, 3] - boxes[0, 1] == pytest.approx(side)
  np.testing.assert_allclose(0.5 * (boxes[0, :2] + boxes[0, 2:]),
                             0.5 * (base.min(0) + base.max(0)))
  jitter = base[None] + rng.normal(0, 2.0, (50, 1, 2))  # the whole face shakes by ~2 px
  raw = crop.crop_boxes(jitter, smooth_sigma=0)
  smooth = crop.crop_boxes(jitter, smooth_sigma=2.0)
  assert np.diff(smooth[:, 0]).std() < 0.35 * np.diff(raw[:, 0]).std()
  # No drift at the ends: a still face keeps its box.
  still = crop.crop_boxes(np.repeat(base[None], 10, 0), smooth_sigma=3.0)
  np.testing.assert_allclose(still, np.repeat(boxes, 10, 0), atol=1e-9)


def test_main_track_is_the_large_face_present_throughout():
  detections = []
  for t in range(30):
    faces = [_face(100 + t, 50, 120)]  # the speaker, drifting right
    if t % 3:  # a small background face, seen two frames in three
      faces.append(_face(10, 10, 30))
    if t == 7:  # a one-frame false positive, larger than the speaker
      faces.append(_face(300, 200, 200))
    if t in (12, 13):  # the speaker is missed twice
      faces = faces[1:]
    detections.append(faces)
  tracks = crop.link_tracks(detections)
  best = crop.main_track(tracks)
  assert len(best.frames) == 28 and 12 not in best.frames and 14 in best.frames
  assert all(f.size == pytest.approx(120) for f in best.faces)
  assert len(tracks) == 3
  assert crop.main_track([]) is None


def test_real_clip_crops_are_found_again_by_the_detector():
  """Carphone (real, 176x144): track, crop at 256, and re-detect on the crops."""
  from test_prep_backends import carphone_path  # pylint: disable=g-import-not-at-top

  from fewshot_jax.prep.video import read_video  # pylint: disable=g-import-not-at-top

  frames, _ = read_video(carphone_path())
  frames = frames[::6]  # 20 frames spread over the clip
  det = backends.make_backend("dlib", upsample=1)
  track = crop.main_track(crop.link_tracks([det.detect(f) for f in frames]))
  assert len(track.frames) >= 18
  points = np.stack([f.landmarks for f in track.faces])
  boxes = crop.crop_boxes(points)
  errors = []
  for t, box, p in zip(track.frames, boxes, points):
    image, cropped = crop.crop_frame(frames[t], box, p, 256)
    assert image.shape == (256, 256, 3)
    assert (cropped > 0).all() and (cropped < 256).all()
    again = det.detect(image)
    assert again, f"no face in the crop of frame {t}"
    errors.append(np.linalg.norm(again[0].landmarks - cropped, axis=-1).mean())
  # The crop upsamples a ~60 px face about 2.4x; agreement within a few crop pixels.
  assert np.median(errors) < 6.0, errors
