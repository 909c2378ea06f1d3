"""The procedural talking heads: pure in the seed, varied, moving, drawn where the landmarks are.

Why: the synthetic videos are the only data the demo and the end-to-end tests train and evaluate
on, and their landmarks are the ground truth the generator learns to follow. A renderer whose pixels
drift from its landmarks, motion that never opens a mouth, or a data set that changes with the
number of worker processes would silently teach (or measure) the wrong thing, so these tests check
the pixels against the landmarks rather than against stored images.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fewshot_jax.data import synthetic

MOUTH_INTERIOR = np.array([70.0, 20.0, 30.0])  # the renderer's fill for the inner-lip polygon


@functools.lru_cache(maxsize=None)
def _video(seed: int, num_frames: int, size: int) -> tuple[np.ndarray, np.ndarray]:
  """``render_video`` shared by several tests (read-only), so each video is drawn once."""
  frames, points = synthetic.render_video(seed, num_frames, size)
  frames.flags.writeable = False
  points.flags.writeable = False
  return frames, points


def _polygon_mask(points: np.ndarray, size: int, grow: float = 0.0, ss: int = 4) -> np.ndarray:
  """Pixels of a ``size`` image covered by the polygon through ``points`` (pixel units).

  Drawn by PIL at ``ss`` x resolution. Without ``grow`` a pixel counts only when it is entirely
  inside (so edge pixels, blended by anti-aliasing, are left out); with ``grow`` the polygon is
  widened by ``grow`` pixels and any coverage counts, which makes an exclusion zone.
  """
  img = Image.new("L", (size * ss, size * ss), 0)
  draw = ImageDraw.Draw(img)
  poly = [(float(x) * ss, float(y) * ss) for x, y in points]
  draw.polygon(poly, fill=255)
  if grow:
    draw.line(poly + poly[:1], fill=255, width=max(1, round(2 * grow * ss)))
  cover = np.asarray(img.resize((size, size), Image.Resampling.BOX))
  return cover > 0 if grow else cover == 255


def _area_centroid(poly: np.ndarray) -> tuple[float, np.ndarray]:
  """Area and area centroid ``(x, y)`` of a simple polygon (shoelace formula)."""
  x, y = poly[:, 0].astype(np.float64), poly[:, 1].astype(np.float64)
  x2, y2 = np.roll(x, -1), np.roll(y, -1)
  cross = x * y2 - x2 * y
  area = cross.sum() / 2
  if abs(area) < 1e-9:
    return 0.0, poly.mean(0)
  centroid = np.array([((x + x2) * cross).sum(), ((y + y2) * cross).sum()]) / (6 * area)
  return abs(area), centroid


def _skin_gain(pixels: np.ndarray, skin: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
  """Fits every pixel as ``gain * skin``: returns the gain and the worst channel's residual.

  Why a gain: the renderer shades the half of the face turned away, so skin appears at more than
  one brightness; a gain near 1 is lit skin, a smaller one shaded skin, a large residual not skin.
  """
  s = np.asarray(skin, np.float64)
  px = pixels.astype(np.float64)
  gain = px @ s / (s @ s)
  return gain, np.abs(px - gain[..., None] * s).max(-1)


def _is_skin(pixels: np.ndarray, skin: tuple[int, ...]) -> np.ndarray:
  gain, resid = _skin_gain(pixels, skin)
  return (resid <= 6) & (gain >= 0.75) & (gain <= 1.03)


def _lower_face_mask(points: np.ndarray, size: int) -> np.ndarray:
  """Cheeks and chin: inside the jaw, below the nostrils, away from the lips.

  Hair (a fringe) can cover the upper face and the eyes, brows and nose lines are drawn over it, so
  this is the part of the face that must be bare skin.
  """
  rows = np.arange(size)[:, None] + 0.5
  below_nose = rows > points[31:36, 1].max() + 1.5
  return (_polygon_mask(points[0:17], size) & below_nose
          & ~_polygon_mask(points[48:60], size, grow=1.5))


def _background(ident: synthetic.Identity, size: int) -> np.ndarray:
  """The identity's background as the renderer draws it: a linear ramp between its two colours.

  Ramped over the 2x supersampled grid and box-filtered down, like the frames.
  """
  a, b = (np.asarray(c, np.float64) for c in ident.background)
  ramp = (np.arange(size) * 2 + 0.5) / (2 * size - 1)
  line = a + (b - a) * ramp[:, None]  # [size, 3]
  img = line[:, None, :] if ident.background_vertical else line[None, :, :]
  return np.broadcast_to(img, (size, size, 3))


# ------------------------------------------------------------------------------------------------
# Determinism and variety.


def test_same_seed_gives_bitwise_identical_video():
  a_frames, a_points = synthetic.render_video(5, 6, 32)
  b_frames, b_points = synthetic.render_video(5, 6, 32)
  assert a_frames.tobytes() == b_frames.tobytes()
  assert a_points.tobytes() == b_points.tobytes()
  assert synthetic.Identity.sample(5) == synthetic.Identity.sample(5)


def test_different_seeds_give_different_videos():
  frames = [synthetic.render_video(s, 2, 32)[0].tobytes() for s in range(20)]
  assert len(set(frames)) == 20


def test_motion_seed_changes_motion_but_not_identity():
  """Driving an identity with another motion (the demo's reenactment) keeps who it is."""
  ident = synthetic.Identity.sample(3)
  f_a, p_a = synthetic.render_video(3, 4, 64, motion_seed=100)
  f_b, p_b = synthetic.render_video(3, 4, 64, motion_seed=101)
  assert not np.allclose(p_a, p_b)
  for f in (f_a, f_b):  # the background gradient runs from background[0] to background[1]
    np.testing.assert_allclose(f[0, 0, 0], ident.background[0], atol=2)
    np.testing.assert_allclose(f[0, -1, -1], ident.background[1], atol=2)


def test_thousands_of_distinct_identities():
  """The few-shot claim needs thousands of distinct people, not a few with new seeds."""
  ids = [synthetic.Identity.sample(s) for s in range(2000)]
  # Exact appearance and shape, ignoring the seed field itself.
  assert len({dataclasses.replace(i, seed=0) for i in ids}) == 2000
  # Coarse, visible differences: hair style and quantised skin, background and hair colours.
  coarse = {(i.hair_style, tuple(c // 32 for c in i.skin),
             tuple(c // 32 for c in i.background[0]), tuple(c // 64 for c in i.hair)) for i in ids}
  assert len(coarse) >= 1900
  styles = [i.hair_style for i in ids]
  for style in set(styles):
    assert styles.count(style) >= 200, style
  assert len(set(styles)) >= 5
  luma = np.array([0.299 * i.skin[0] + 0.587 * i.skin[1] + 0.114 * i.skin[2] for i in ids])
  assert luma.min() < 100 and luma.max() > 200  # dark to light skin tones


def test_rendered_identities_have_many_background_and_skin_colours():
  bgs, skins = set(), set()
  for seed in range(200):
    frames, points = synthetic.render_video(seed, 1, 64)
    bgs.add(tuple(int(c) // 16 for c in frames[0, 0, 0]))
    face = frames[0][_lower_face_mask(points[0], 64)]
    assert len(face) >= 10, seed
    skins.add(tuple(int(c) // 8 for c in np.median(face, 0)))
  assert len(bgs) >= 170
  assert len(skins) >= 120


# ------------------------------------------------------------------------------------------------
# Shapes, ranges and pixel units.


@pytest.mark.parametrize("size", [32, 64, 100])
def test_shapes_dtypes_and_ranges(size):
  frames, points = synthetic.render_video(1, 3, size)
  assert frames.shape == (3, size, size, 3) and frames.dtype == np.uint8
  assert points.shape == (3, synthetic.NUM_LANDMARKS, 2) and points.dtype == np.float32
  assert np.isfinite(points).all()
  assert frames.std() > 10  # a picture, not a constant


def test_landmarks_stay_inside_the_frame():
  """Every landmark of every frame, over many identities and long motions, is in the image.

  Landmarks scale linearly with the image size (checked below), so a small size covers all sizes.
  """
  size = 16
  for seed in range(60):
    _, points = synthetic.render_video(seed, 32, size, frame_stride=4)
    assert points.min() >= 0.05 * size, seed
    assert points.max() <= 0.95 * size, seed


def test_landmarks_are_in_pixel_units_of_the_returned_frames():
  _, p32 = synthetic.render_video(7, 4, 32)
  _, p64 = synthetic.render_video(7, 4, 64)
  np.testing.assert_allclose(p64, 2 * p32, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# Pixels agree with landmarks.


def test_lower_face_is_skin_where_the_jaw_landmarks_say():
  fractions, shifted = [], []
  size = 64
  for seed in range(12):
    ident = synthetic.Identity.sample(seed)
    frames, points = _video(seed, 16, size)
    for t in (0, 5, 10, 15):
      mask = _lower_face_mask(points[t], size)
      assert mask.sum() >= 15, (seed, t)
      skin = _is_skin(frames[t][mask], ident.skin)
      fractions.append(skin.mean())
      gain, _ = _skin_gain(frames[t][mask][skin], ident.skin)
      assert 0.8 <= gain.mean() <= 1.02, (seed, t)  # mean colour is the skin (partly shaded)
      # Control: the same mask a third of a face to the side is mostly not skin, so the check
      # above measures registration and not just a skin-coloured picture.
      shift = int(0.3 * np.ptp(points[t, 0:17, 0]))
      moved = np.roll(mask, shift if points[t, 30, 0] < size / 2 else -shift, axis=1)
      shifted.append(_is_skin(frames[t][moved], ident.skin).mean())
  assert min(fractions) >= 0.9
  assert np.mean(shifted) < 0.75


def test_face_and_open_mouth_differ_from_the_background():
  size, opened = 64, 0
  for seed in range(12):
    ident = synthetic.Identity.sample(seed)
    frames, points = _video(seed, 16, size)
    bg = _background(ident, size)
    corners = (slice(0, 3), slice(-3, None))
    for rows in corners:  # far from the head the frame is the background
      for cols in corners:
        np.testing.assert_allclose(frames[:, rows, cols], np.broadcast_to(
            bg[rows, cols], frames[:, rows, cols].shape), atol=2)
    gap = np.linalg.norm(points[:, 66] - points[:, 62], axis=-1)
    for t in (0, 7, 15, int(np.argmax(gap))):
      mask = _lower_face_mask(points[t], size)
      diff = np.abs(frames[t].astype(np.float64) - bg).max(-1)
      assert (diff[mask] > 12).mean() > 0.9, (seed, t)
    t = int(np.argmax(gap))
    if gap[t] > 2.5:  # open wide enough for a whole pixel of mouth interior at 64 px
      opened += 1
      mouth = points[t, 60:68].mean(0)
      col, row = int(mouth[0]), int(mouth[1])
      assert diff[row, col] > 12, seed
      np.testing.assert_allclose(frames[t, row, col], MOUTH_INTERIOR, atol=25)
  assert opened >= 8


@pytest.mark.parametrize("seed", range(6))
def test_mouth_interior_matches_inner_lip_polygon(seed):
  """Area and centroid of the dark mouth match the polygon 60-67 to a fraction of a pixel.

  This pins the documented convention (pixel (i, j) is centred at (j + 0.5, i + 0.5)): an off-by-
  half-a-pixel renderer moves the centroid by 0.5 px.
  """
  size = 256
  ident = synthetic.Identity.sample(seed)
  frames, points = _video(seed, 24, size)
  gap = np.linalg.norm(points[:, 66] - points[:, 62], axis=-1)
  t = int(np.argmax(gap))
  assert gap[t] > 8
  lips = np.asarray(ident.lips, np.float64)
  d = MOUTH_INTERIOR - lips
  # How much of each pixel inside the outer lips is mouth interior (lips blend into it at edges).
  alpha = np.clip((frames[t].astype(np.float64) - lips) @ d / (d @ d), 0.0, 1.0)
  alpha *= _polygon_mask(points[t, 48:60], size)
  area, centroid = _area_centroid(points[t, 60:68])
  rows, cols = np.mgrid[0:size, 0:size] + 0.5
  drawn = np.array([(alpha * cols).sum(), (alpha * rows).sum()]) / alpha.sum()
  assert 0.9 <= alpha.sum() / area <= 1.15
  np.testing.assert_allclose(drawn, centroid, atol=0.3)


@pytest.mark.parametrize("seed", range(3))
def test_mouth_pixels_follow_the_mouth_landmarks(seed):
  """Where the landmarks open the mouth the image opens it, frame by frame."""
  size = 128
  ident = synthetic.Identity.sample(seed)
  frames, points = _video(seed, 48, size)
  lips = np.asarray(ident.lips, np.float64)
  d = MOUTH_INTERIOR - lips
  drawn, expected = [], []
  for t in range(frames.shape[0]):
    alpha = np.clip((frames[t].astype(np.float64) - lips) @ d / (d @ d), 0.0, 1.0)
    drawn.append((alpha * _polygon_mask(points[t, 48:60], size)).sum())
    expected.append(_area_centroid(points[t, 60:68])[0])
  assert np.ptp(expected) > 50  # the mouth does open and close in this video
  assert np.corrcoef(drawn, expected)[0, 1] > 0.97


@pytest.mark.parametrize("seed", range(6))
def test_eyes_close_in_the_image_when_the_landmarks_blink(seed):
  """Iris, pupil and sclera show while the eye landmarks are open and vanish while they meet."""
  size = 128
  ident = synthetic.Identity.sample(seed)
  frames, points = _video(seed, 48, size)
  for start, top, bottom in ((36, 37, 41), (42, 44, 46)):
    opening = np.linalg.norm(points[:, top] - points[:, bottom], axis=-1)
    closed, open_ = opening < 0.05 * opening.max(), opening > 0.9 * opening.max()
    assert closed.any() and open_.any()
    counts = []
    for t in range(frames.shape[0]):
      eye = points[t, start : start + 6]
      x0, x1 = int(eye[:, 0].min()), int(np.ceil(eye[:, 0].max()))
      yc = eye[:, 1].mean()
      crop = frames[t, int(yc - 3) : int(np.ceil(yc + 3)), x0:x1]
      # Not a shade of the skin (the closed lid is a dark skin-coloured line), or near black.
      gain, resid = _skin_gain(crop, ident.skin)
      counts.append(((resid > 20) | (gain < 0.3)).sum())
    counts = np.asarray(counts)
    assert counts[open_].min() >= 5, start
    assert counts[closed].mean() < 0.4 * counts[open_].mean(), start


@pytest.mark.parametrize("side", ["image_right", "image_left"])
def test_shading_covers_the_half_the_head_turns_to(side):
  """A turned head shades one whole half of the face, the same way for either direction.

  Why: mirrored frames (augmentation, left- vs right-turning drivers) should look alike; a shading
  that differs by turn direction is a cue the generator can latch on to.
  """
  size = 128
  for seed in range(6):
    ident = synthetic.Identity.sample(seed)
    frames, points = _video(seed, 96, size)
    width = np.linalg.norm(points[:, 16] - points[:, 0], axis=-1)
    turn = (points[:, 30, 0] - 0.5 * (points[:, 0, 0] + points[:, 16, 0])) / width
    t = int(np.argmax(turn) if side == "image_right" else np.argmin(turn))
    assert abs(turn[t]) > 0.1, (seed, turn[t])  # clearly turned
    p = points[t]
    halves = {"image_left": np.concatenate([p[0:9], p[[30, 29, 28, 27]]]),
              "image_right": np.concatenate([p[8:17], p[[27, 28, 29, 30]]])}
    keep = ~_polygon_mask(p[48:60], size, grow=1.5) & ~_polygon_mask(p[27:36], size, grow=1.5)
    for start in (36, 42):
      keep &= ~_polygon_mask(p[start : start + 6], size, grow=1.5)
    dark = {}
    for name, poly in halves.items():
      px = frames[t][_polygon_mask(poly, size) & keep]
      skin = _is_skin(px, ident.skin)
      gain, _ = _skin_gain(px[skin], ident.skin)
      dark[name] = (gain < 0.93).mean()
    other = "image_left" if side == "image_right" else "image_right"
    assert dark[side] > 0.95, (seed, dark)
    assert dark[other] < 0.2, (seed, dark)


# ------------------------------------------------------------------------------------------------
# Motion.


@pytest.mark.parametrize("seed", range(5))
def test_head_pose_moves(seed):
  _, points = _video(seed, 64, 64)
  nose = points[:, 30]
  assert nose[:, 0].std() > 1.0 and nose[:, 1].std() > 0.3  # translation / yaw / pitch
  eyes = points[:, 45] - points[:, 36]
  roll = np.degrees(np.arctan2(eyes[:, 1], eyes[:, 0]))
  assert np.ptp(roll) > 5.0
  iod = np.linalg.norm(eyes, axis=-1)
  assert np.ptp(iod) / iod.mean() > 0.05  # scale and yaw


def test_mouth_opens_and_closes():
  closes = 0
  for seed in range(10):
    _, points = _video(seed, 64, 64)
    gap = np.linalg.norm(points[:, 66] - points[:, 62], axis=-1)
    assert gap.max() > 2.5, seed  # talking: wide open at 64 px
    assert np.ptp(gap) > 2.0, seed
    closes += gap.min() < 0.5
  assert closes >= 8


@pytest.mark.parametrize("seed", range(10))
def test_blinks_in_a_long_enough_video(seed):
  """A blink starts within the first 25 frames, so every 64-frame video closes both eyes."""
  _, points = _video(seed, 64, 64)
  for top, bottom in ((37, 41), (38, 40), (43, 47), (44, 46)):
    opening = np.linalg.norm(points[:, top] - points[:, bottom], axis=-1)
    assert opening.min() <= 0.05 * opening.max(), (top, bottom)
    assert (opening < 0.5 * opening.max()).mean() < 0.35  # blinks are brief


# ------------------------------------------------------------------------------------------------
# frame_stride.


@pytest.mark.parametrize("stride", [2, 3])
def test_frame_stride_keeps_every_stride_th_frame_of_the_longer_clip(stride):
  t = 4
  frames, points = synthetic.render_video(9, t, 48, frame_stride=stride)
  long_frames, long_points = synthetic.render_video(9, t * stride, 48)
  np.testing.assert_array_equal(points, long_points[::stride])
  np.testing.assert_array_equal(frames, long_frames[::stride])
  assert frames.shape[0] == t


def test_frame_stride_one_is_the_default():
  a = synthetic.render_video(4, 3, 32)
  b = synthetic.render_video(4, 3, 32, frame_stride=1)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("stride", [0, -1])
def test_frame_stride_below_one_raises(stride):
  with pytest.raises(ValueError, match="frame_stride"):
    synthetic.render_video(0, 2, 32, frame_stride=stride)


# ------------------------------------------------------------------------------------------------
# make_dataset.

_SEEDS = [3, 11, 42]


@pytest.mark.parametrize("stride", [1, 2])
def test_make_dataset_is_render_video_per_seed(stride):
  data = synthetic.make_dataset(_SEEDS, 4, 32, workers=1, frame_stride=stride)
  assert data["frames"].shape == (3, 4, 32, 32, 3) and data["frames"].dtype == np.uint8
  assert data["landmarks"].shape == (3, 4, 68, 2) and data["landmarks"].dtype == np.float32
  assert data["identity"].dtype == np.int64
  np.testing.assert_array_equal(data["identity"], _SEEDS)
  for i, seed in enumerate(_SEEDS):
    frames, points = synthetic.render_video(seed, 4, 32, frame_stride=stride)
    np.testing.assert_array_equal(data["frames"][i], frames)
    np.testing.assert_array_equal(data["landmarks"][i], points)


def test_make_dataset_with_worker_processes_equals_serial():
  """Spawned workers give the same bytes in the same order (stride passed through to them)."""
  serial = synthetic.make_dataset(_SEEDS, 4, 32, workers=1, frame_stride=2)
  pooled = synthetic.make_dataset(_SEEDS, 4, 32, workers=2, frame_stride=2)
  for key in ("frames", "landmarks", "identity"):
    np.testing.assert_array_equal(pooled[key], serial[key], err_msg=key)


# ------------------------------------------------------------------------------------------------
# Contact sheet.


def test_contact_sheet_cli_writes_png_of_the_expected_size(tmp_path, capsys):
  out = tmp_path / "sheet.png"
  synthetic.main(["--contact-sheet", str(out), "--identities", "2", "--frames", "3",
                  "--size", "32"])
  pad, size = 2, 32
  with Image.open(out) as img:
    assert img.format == "PNG"
    assert img.size == (3 * (size + pad) + pad, 2 * (size + pad) + pad)
    sheet = np.asarray(img.convert("RGB"))
  assert str(out) in capsys.readouterr().out
  # Row r is identity r; columns are frames spread over a 64-frame video.
  video, _ = synthetic.render_video(1, 64, size)
  for c, t in enumerate((0, 32, 63)):
    y, x = pad + (size + pad), pad + c * (size + pad)
    np.testing.assert_array_equal(sheet[y : y + size, x : x + size], video[t])
  assert (sheet[:pad] == 255).all()


def test_contact_sheet_runs_as_a_module(tmp_path):
  """The README's command, ``python -m fewshot_jax.data.synthetic --contact-sheet ...``."""
  out = tmp_path / "sheet.png"
  proc = subprocess.run(
      [sys.executable, "-m", "fewshot_jax.data.synthetic", "--contact-sheet", str(out),
       "--identities", "1", "--frames", "2", "--size", "16"],
      capture_output=True, text=True, timeout=120, check=False,
      cwd=pathlib.Path(__file__).parents[1],
  )
  assert proc.returncode == 0, proc.stderr
  with Image.open(out) as img:
    assert img.size == (2 * 18 + 2, 18 + 2)
