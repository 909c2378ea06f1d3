"""The on-device rasteriser against a reference drawing made with PIL, and its conventions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageDraw

from fewshot_jax import landmarks as lmk
from fewshot_jax.prep import backends


def _face_like_points(rng: np.random.Generator, size: int) -> np.ndarray:
  """68 points laid out part by part like a face (jaw arc, brows, eyes, nose, mouth)."""
  c, r = size / 2, size * 0.32
  t = np.linspace(np.pi * 0.95, np.pi * 0.05, 17)
  jaw = np.stack([c + r * np.cos(t), c + 0.1 * r + r * np.sin(t)], -1)
  brow_r = np.stack([np.linspace(c - 0.8 * r, c - 0.15 * r, 5), np.full(5, c - 0.45 * r)], -1)
  brow_l = brow_r * [-1, 1] + [2 * c, 0]
  bridge = np.stack([np.full(4, c), np.linspace(c - 0.3 * r, c + 0.15 * r, 4)], -1)
  nost = np.stack([np.linspace(c - 0.2 * r, c + 0.2 * r, 5), np.full(5, c + 0.25 * r)], -1)
  a = np.linspace(0, 2 * np.pi, 7)[:-1]
  eye_r = np.stack([c - 0.45 * r + 0.2 * r * np.cos(a), c - 0.25 * r + 0.08 * r * np.sin(a)], -1)
  eye_l = eye_r + [0.9 * r, 0]
  a12 = np.linspace(0, 2 * np.pi, 13)[:-1]
  mouth_o = np.stack([c + 0.4 * r * np.cos(a12), c + 0.55 * r + 0.15 * r * np.sin(a12)], -1)
  a8 = np.linspace(0, 2 * np.pi, 9)[:-1]
  mouth_i = np.stack([c + 0.3 * r * np.cos(a8), c + 0.55 * r + 0.07 * r * np.sin(a8)], -1)
  pts = np.concatenate([jaw, brow_r, brow_l, bridge, nost, eye_r, eye_l, mouth_o, mouth_i])
  return (pts + rng.normal(0, size / 100, pts.shape)).astype(np.float32)


def _pil_reference(points: np.ndarray, size: int, thickness: float, ss: int = 8) -> np.ndarray:
  """Mask of the same polylines drawn by PIL at ``ss``x resolution, box-downsampled."""
  img = Image.new("L", (size * ss, size * ss), 0)
  draw = ImageDraw.Draw(img)
  for part in lmk.FACE_PARTS:
    for a, b in lmk.part_segments(part):
      p, q = points[a] * ss, points[b] * ss
      draw.line([tuple(p), tuple(q)], fill=255, width=max(1, round(thickness * ss)))
      for end in (p, q):  # round joints, like a distance field
        rad = thickness * ss / 2
        draw.ellipse([end[0] - rad, end[1] - rad, end[0] + rad, end[1] + rad], fill=255)
  small = img.resize((size, size), Image.Resampling.BOX)
  return np.asarray(small, np.float32) / 255.0


@pytest.mark.parametrize("size", [64, 256])
def test_matches_pil_reference_drawing(size):
  rng = np.random.default_rng(size)
  points = _face_like_points(rng, size)
  thickness = lmk.default_thickness(size)
  ours = np.asarray(lmk.rasterize(jnp.asarray(points), size)).max(-1) > 0.25
  ref = _pil_reference(points, size, thickness) > 0.25
  iou = (ours & ref).sum() / (ours | ref).sum()
  assert iou >= 0.8, iou


def test_anti_aliased_and_coloured_by_part():
  size = 64
  pts = _face_like_points(np.random.default_rng(0), size)
  img = np.asarray(lmk.rasterize(jnp.asarray(pts), size))
  assert img.min() >= 0 and img.max() <= 1
  levels = np.unique(np.round(img.max(-1), 2))
  assert ((levels > 0.05) & (levels < 0.95)).sum() >= 5  # soft edges, not a binary mask
  # The pixel under the first jaw point carries the jaw colour; under an eye point, the eye's.
  for name, idx in (("jaw", 8), ("right_eye", 36), ("outer_lips", 51)):
    x, y = pts[idx]
    colour = img[int(y), int(x)]
    part = next(p for p in lmk.FACE_PARTS if p.name == name)
    np.testing.assert_allclose(colour, part.colour, atol=0.35)
  colours = {p.colour for p in lmk.FACE_PARTS}
  assert len(colours) == len(lmk.FACE_PARTS)


def test_batched_and_jitted_equals_single():
  size = 32
  rng = np.random.default_rng(3)
  pts = np.stack([_face_like_points(rng, size) for _ in range(6)]).reshape(2, 3, 68, 2)
  batched = jax.jit(lmk.rasterize, static_argnums=1)(jnp.asarray(pts), size)
  assert batched.shape == (2, 3, size, size, 3)
  single = lmk.rasterize(jnp.asarray(pts[1, 2]), size)
  np.testing.assert_allclose(np.asarray(batched[1, 2]), np.asarray(single), atol=1e-6)


def test_mirror_is_an_involution_and_swaps_sides():
  size = 64
  pts = _face_like_points(np.random.default_rng(1), size)
  m = np.asarray(lmk.mirror(jnp.asarray(pts), size))
  np.testing.assert_allclose(np.asarray(lmk.mirror(jnp.asarray(m), size)), pts, atol=1e-5)
  # The subject's right eye (image left) becomes the right eye again after the flip: still left.
  assert m[36:42, 0].mean() < m[42:48, 0].mean()
  np.testing.assert_allclose(m[36], [size - pts[45, 0], pts[45, 1]], atol=1e-5)
  # Drawing the mirrored points equals flipping the drawing, up to colours of swapped parts.
  a = np.asarray(lmk.rasterize(jnp.asarray(m), size)).max(-1)
  b = np.asarray(lmk.rasterize(jnp.asarray(pts), size)).max(-1)[:, ::-1]
  assert np.abs(a - b).mean() < 0.01


def test_rejects_wrong_shape():
  with pytest.raises(ValueError, match="68, 2"):
    lmk.rasterize(jnp.zeros((5, 2)), 32)


@pytest.fixture(scope="module")
def carphone_crop_points() -> np.ndarray:
  """dlib's landmarks of every 8th carphone frame, in 256 px crops made with data prep's recipe."""
  dlib_backend = backends.make_backend("dlib")
  from fewshot_jax.prep import crop as crop_lib  # pylint: disable=g-import-not-at-top
  from fewshot_jax.prep.video import read_video  # pylint: disable=g-import-not-at-top
  from test_prep_backends import carphone_path  # pylint: disable=g-import-not-at-top

  frames = read_video(carphone_path())[0][::8]
  points = np.stack([dlib_backend.detect(f)[0].landmarks for f in frames])
  boxes = crop_lib.crop_boxes(points)
  return np.stack([crop_lib.crop_frame(f, b, p, 256)[1] for f, b, p in zip(frames, boxes, points)])


# The tiled path's pieces are private; these tests reach them to check each path on its own.
# pylint: disable=protected-access


@pytest.mark.parametrize("size", [64, 256])
def test_tiled_path_draws_real_faces_exactly_as_the_dense_one(carphone_crop_points, size):
  points = jnp.asarray(carphone_crop_points * (size / 256))
  thickness = lmk.default_thickness(size)
  tile = lmk._tile_size(size)
  plan = jax.jit(lmk._plan_tiles, static_argnums=(1, 2, 3))(points, size, thickness, tile)
  assert not bool(plan.overflow)  # real faces take the fast path
  tiled = jax.jit(lmk._tiled_image, static_argnums=(1, 2, 3))(points, size, thickness, tile, plan)
  dense = jax.jit(lmk._dense_image, static_argnums=(1, 2))(points, size, thickness)
  np.testing.assert_allclose(np.asarray(tiled), np.asarray(dense), atol=1e-5)
  assert float(dense.max()) > 0.9  # something was drawn
  if size >= lmk.TILED_MIN_SIZE:  # what rasterize itself draws (the tiled path, on CPU)
    np.testing.assert_allclose(np.asarray(lmk.rasterize(points, size)), np.asarray(dense),
                               atol=1e-5)


@pytest.mark.parametrize("case", ["crowded", "spread"])
def test_landmarks_the_tiles_cannot_hold_are_drawn_densely(case):
  size = lmk.TILED_MIN_SIZE
  rng = np.random.default_rng(7)
  face = _face_like_points(rng, size)
  if case == "crowded":  # every point within 3 px: each tile meets all 63 segments
    odd = size / 2 + rng.uniform(-3, 3, (68, 2))
  else:  # points all over the image: most tiles are reached
    odd = rng.uniform(0, size, (68, 2))
  points = jnp.asarray(np.stack([face, odd]).astype(np.float32))
  thickness = lmk.default_thickness(size)
  plan = jax.jit(lmk._plan_tiles, static_argnums=(1, 2, 3))(points, size, thickness,
                                                            lmk._tile_size(size))
  assert bool(plan.overflow)
  dense = jax.jit(lmk._dense_image, static_argnums=(1, 2))(points, size, thickness)
  np.testing.assert_allclose(np.asarray(lmk.rasterize(points, size)), np.asarray(dense),
                             atol=1e-5)
