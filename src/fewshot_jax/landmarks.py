"""The 68-point iBUG landmark convention and the on-device landmark rasteriser.

Landmarks everywhere in fewshot_jax are float32 ``[..., 68, 2]`` arrays of ``(x, y)`` in pixel
units of the image they belong to: x grows to the right, y grows downwards, and the centre of pixel
``(row i, column j)`` sits at ``(j + 0.5, i + 0.5)``. They are stored as floats and only turned into
an image on the accelerator, inside the jitted step, so that drawing never becomes a host-side
bottleneck (the public PyTorch ports draw with matplotlib on the CPU).

The rasteriser is a distance field: a pixel's coverage by a face part falls off linearly over one
pixel at the stroke's edge, measured from the part's nearest segment, which gives anti-aliased
lines with no branching, the shape of work TPUs and GPUs like (the dense path). On CPU at 256 px
and above, a tiled path draws the same image from only the tiles the strokes reach, each against
only the segments that reach it (0.5-0.6 against 1.5 ms per frame in a batch of 16, measured).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

NUM_LANDMARKS = 68


class FacePart(NamedTuple):
  """One polyline of the iBUG-68 scheme, drawn in one colour."""

  name: str
  indices: tuple[int, ...]
  closed: bool
  colour: tuple[float, float, float]  # RGB in [0, 1]


# The iBUG-68 face parts, in drawing order. Indices are 0-based. "Right"/"left" are the subject's,
# so the right brow and eye appear on the image's left in a frontal face.
FACE_PARTS: tuple[FacePart, ...] = (
    FacePart("jaw", tuple(range(0, 17)), False, (0.95, 0.95, 0.95)),
    FacePart("right_brow", tuple(range(17, 22)), False, (1.0, 0.55, 0.0)),
    FacePart("left_brow", tuple(range(22, 27)), False, (1.0, 0.85, 0.0)),
    FacePart("nose_bridge", tuple(range(27, 31)), False, (0.1, 0.4, 1.0)),
    FacePart("nostrils", tuple(range(31, 36)), False, (0.0, 0.8, 1.0)),
    FacePart("right_eye", tuple(range(36, 42)), True, (0.2, 1.0, 0.2)),
    FacePart("left_eye", tuple(range(42, 48)), True, (0.6, 1.0, 0.3)),
    FacePart("outer_lips", tuple(range(48, 60)), True, (1.0, 0.1, 0.3)),
    FacePart("inner_lips", tuple(range(60, 68)), True, (0.8, 0.2, 1.0)),
)

PART_SLICES: dict[str, tuple[int, ...]] = {p.name: p.indices for p in FACE_PARTS}


def part_segments(part: FacePart) -> list[tuple[int, int]]:
  """Returns the (start, end) landmark indices of every segment of one part's polyline."""
  idx = list(part.indices)
  segs = list(zip(idx[:-1], idx[1:]))
  if part.closed:
    segs.append((idx[-1], idx[0]))
  return segs


def check_in_crop(points: np.ndarray, image_size: int, where: str, unit: str = "frame") -> None:
  """Refuses landmarks ``[T, 68, 2]`` that cannot be in crop pixels (a video's pixels, say):
  drawn, they would fall off the image. A quarter of the crop beyond each edge is allowed (a turned
  head's jaw). Raises ValueError naming ``where`` and the first bad ``unit`` (frame, shot)."""
  lo, hi = -0.25 * image_size, 1.25 * image_size
  bad = ~np.all(np.isfinite(points) & (points >= lo) & (points <= hi), axis=(1, 2))
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(
        f"{where}: {unit} {i} has landmarks in [{np.nanmin(points[i]):.0f}, "
        f"{np.nanmax(points[i]):.0f}], expected crop pixels within [0, {image_size}] (the run's "
        "model.image_size); landmarks in a video's pixels must be cropped first")


def default_thickness(image_size: int) -> float:
  """Stroke width in pixels: about 2 px at 256, never thinner than 1 px."""
  return max(1.0, 2.0 * image_size / 256.0)


def _all_segments() -> tuple[np.ndarray, np.ndarray]:
  """Every segment of every part in drawing order: ``[S, 2]`` landmark pairs, ``[S]`` part ids."""
  segs, parts = [], []
  for p, part in enumerate(FACE_PARTS):
    for seg in part_segments(part):
      segs.append(seg)
      parts.append(p)
  return np.asarray(segs, np.int32), np.asarray(parts, np.int32)


SEGMENTS, SEGMENT_PARTS = _all_segments()
PART_COLOURS: np.ndarray = np.asarray([p.colour for p in FACE_PARTS], np.float32)  # [P, 3]


class _Segments(NamedTuple):
  """Segment geometry, broadcastable against pixel coordinates: start, direction, 1/length²."""

  ax: jax.Array
  ay: jax.Array
  dx: jax.Array
  dy: jax.Array
  inv_len2: jax.Array


def _segments(landmarks: jax.Array) -> _Segments:
  """``[B, S]`` geometry of every segment (``SEGMENTS``) of every face in ``[B, 68, 2]``."""
  a = landmarks[:, SEGMENTS[:, 0], :]
  b = landmarks[:, SEGMENTS[:, 1], :]
  dx, dy = b[..., 0] - a[..., 0], b[..., 1] - a[..., 1]
  return _Segments(a[..., 0], a[..., 1], dx, dy, 1.0 / jnp.maximum(dx * dx + dy * dy, 1e-6))


def _squared_distance(px: jax.Array, py: jax.Array, s: _Segments) -> jax.Array:
  """Squared distance from points ``(px, py)`` to segments ``s`` (all arguments broadcast)."""
  ux, uy = px - s.ax, py - s.ay
  t = jnp.clip((ux * s.dx + uy * s.dy) * s.inv_len2, 0.0, 1.0)
  ex, ey = ux - t * s.dx, uy - t * s.dy
  return ex * ex + ey * ey


def _coverage(d2: jax.Array, thickness: float) -> jax.Array:
  """Stroke coverage in [0, 1] at squared distance ``d2``: a one-pixel ramp at ``thickness / 2``."""
  return jnp.clip(thickness / 2.0 + 0.5 - jnp.sqrt(d2 + 1e-12), 0.0, 1.0)


def _dense_image(landmarks: jax.Array, image_size: int, thickness: float) -> jax.Array:
  """``[B, H, W, 3]``: every pixel against every segment, parts composited in drawing order.

  Coverage falls with distance, so a part's coverage is that of its nearest segment: a running
  minimum of squared distances over the part's segments, then one square root per pixel and part.
  The segments are unrolled rather than reduced over a small trailing axis, which XLA:CPU runs
  five times slower (7.8 against 1.4 ms per 256 px frame, measured).
  """
  b, num = landmarks.shape[0], SEGMENTS.shape[0]
  # Per segment, [B, 1, 1] fields; one split per field keeps the traced program small (indexing
  # each segment on its own takes seconds to trace).
  fields = [jnp.split(f.reshape(b, num, 1), num, axis=1) for f in _segments(landmarks)]
  centres = jnp.arange(image_size, dtype=jnp.float32) + 0.5
  px = centres.reshape(1, 1, -1)  # x varies along W
  py = centres.reshape(1, -1, 1)  # y varies along H
  img = jnp.zeros((b, image_size, image_size, 3), jnp.float32)
  for p in range(len(FACE_PARTS)):
    lo, hi = np.searchsorted(SEGMENT_PARTS, [p, p + 1])  # a part's segments are contiguous
    d2 = None
    for i in range(lo, hi):
      e = _squared_distance(px, py, _Segments(*(f[i] for f in fields)))
      d2 = e if d2 is None else jnp.minimum(d2, e)
    alpha = _coverage(d2, thickness)[..., None]
    img = img * (1.0 - alpha) + jnp.asarray(PART_COLOURS[p]) * alpha
  return img


# The tiled path is a CPU lever: accelerators keep the dense path's plain elementwise work, which
# suits them, and below 256 px the dense path is faster (at 128 px, 0.21 against 0.34 ms/frame).
TILED_MIN_SIZE = 256


def _tile_size(image_size: int) -> int:
  """Tiles of 1/32 of the image side (at least 2 px): few segments meet each one.

  At 64 px, 2 px tiles leave the crowded tiles of a 64 px face (strokes 1 px wide, lips a few
  pixels apart) within the groups' budgets; 4 px tiles do not.
  """
  return max(2, image_size // 32)


class _Group(NamedTuple):
  """Tiles drawn together with the same number of segment slots per tile."""

  slots: int  # segments per tile
  share: float  # the most tiles of the image the group holds, as a share of all tiles


# Most reached tiles meet a few segments; a few, where the lips or an eye crowd, meet up to a
# dozen. Two groups keep the slots (every pixel pays for every slot) where they are needed. At 256
# px, over the carphone speaker's 118 crops, at most 166 of 1024 tiles are reached, 13 of them by
# more than 4 segments, and no tile by more than 9.
_GROUPS = (_Group(slots=4, share=1 / 4), _Group(slots=16, share=1 / 32))


class _Plan(NamedTuple):
  """The tiled path's plan for a batch: for each group, which tiles, with which segments."""

  tiles: tuple[jax.Array, ...]  # per group [B, M_g] tile indices (row-major); padding repeats 0
  segments: tuple[jax.Array, ...]  # per group [B, M_g, slots_g] segments in drawing order, S unused
  slot: jax.Array  # [B, T * T] each tile's row in the groups' rows laid end to end; blank: the end
  overflow: jax.Array  # scalar bool: the plan cannot draw this batch exactly (draw it densely)


def _compact(member: jax.Array, budget: int) -> tuple[jax.Array, jax.Array]:
  """The true entries' indices of ``member`` [B, N], in order in ``budget`` rows; each entry's row.

  Running counts and a scatter, not a sort: XLA:CPU's sorts cost more than the drawing itself.
  """
  b, num = member.shape
  row = jnp.where(member, jnp.cumsum(member, -1) - 1, budget)
  # Rows past the budget (a plan that overflows, drawn densely instead) are dropped.
  out = jnp.zeros((b, budget + 1), jnp.int32).at[jnp.arange(b)[:, None], row].set(
      jnp.arange(num), mode="drop")
  return out[:, :budget], row


def _plan_tiles(landmarks: jax.Array, image_size: int, thickness: float, tile: int) -> _Plan:
  """Finds the tiles the strokes reach and, per tile, the segments that reach it.

  A segment reaches a pixel when it lies within ``thickness / 2 + 0.5`` of it; it can reach some
  pixel of a tile only if it lies within that plus the tile's half-diagonal of the tile's centre.
  The plan overflows when a group has more tiles than its share or a tile meets more segments than
  the last group's slots.
  """
  s = _segments(landmarks)
  b, n = landmarks.shape[0], -(-image_size // tile)
  c = (jnp.arange(n, dtype=jnp.float32) + 0.5) * tile
  reach = thickness / 2.0 + 0.5 + tile * np.sqrt(0.5)
  d2 = _squared_distance(c[None, None, :, None], c[None, :, None, None],
                         _Segments(*(f[:, None, None, :] for f in s)))
  near = (d2 <= reach * reach).reshape(b, n * n, -1)  # [B, T*T, S]
  count = near.sum(-1)
  num = SEGMENTS.shape[0]
  tiles, segments, slot = [], [], jnp.full((b, n * n), 0, jnp.int32)
  overflow = jnp.any(count > _GROUPS[-1].slots)
  lower, start = 0, 0
  for group in _GROUPS:
    budget = max(1, int(round(group.share * n * n)))
    member = (count > lower) & (count <= group.slots)
    ids, row = _compact(member, budget)
    overflow |= jnp.any(member.sum(-1) > budget)
    slot = jnp.where(member, start + row, slot)
    picked = jnp.take_along_axis(near, ids[..., None], 1)  # [B, M, S]
    rank = jnp.where(picked, jnp.cumsum(picked, -1) - 1, -1)
    onehot = rank[..., None] == jnp.arange(group.slots)  # [B, M, S, slots]
    tiles.append(ids)
    segments.append(jnp.where(onehot.any(-2), jnp.argmax(onehot, -2), num))
    lower, start = group.slots, start + budget
  slot = jnp.where(count > 0, slot, start)
  return _Plan(tuple(tiles), tuple(segments), slot, overflow)


def _draw_tiles(
    s: _Segments, tiles: jax.Array, segments: jax.Array, n: int, tile: int, thickness: float
) -> jax.Array:
  """``[B, M, tile, tile, 3]``: the tiles ``tiles`` drawn from their segments ``segments``.

  Each pixel composites its tile's segments in drawing order; consecutive segments of one part
  share one coverage (their nearest) before the part's colour goes down, as in ``_dense_image``.
  """
  b, m, k_slots = segments.shape
  # The unused slots' segment: zero length, far outside the image.
  pad = (-1e4, -1e4, 0.0, 0.0, 0.0)
  padded = [jnp.concatenate([f, jnp.full((b, 1), v, jnp.float32)], 1) for f, v in zip(s, pad)]
  flat = segments.reshape(b, -1)
  sel = _Segments(*(jnp.take_along_axis(f, flat, 1).reshape(b, m, k_slots) for f in padded))
  parts = jnp.asarray(np.append(SEGMENT_PARTS, -1))[segments]  # [B, M, K]
  colours = jnp.asarray(np.concatenate([PART_COLOURS, np.zeros((1, 3), np.float32)]))[parts]
  off = jnp.arange(tile, dtype=jnp.float32) + 0.5
  px = ((tiles % n) * tile).astype(jnp.float32)[..., None, None] + off[None, :]  # [B, M, 1, t]
  py = ((tiles // n) * tile).astype(jnp.float32)[..., None, None] + off[:, None]  # [B, M, t, 1]
  img = jnp.zeros((b, m, tile, tile, 3), jnp.float32)
  before = img
  d2_part = jnp.full((b, m, tile, tile), jnp.inf, jnp.float32)
  # Unrolled: a third faster than a loop over the slots, for about a second more of compiling.
  # Per slot: [B, M, 1, 1] fields and part ids, [B, M, 1, 1, 3] colours (split, not indexed).
  fields = [jnp.split(f.reshape(b, m, k_slots, 1), k_slots, axis=2) for f in sel]
  slot_parts = jnp.split(parts.reshape(b, m, k_slots, 1), k_slots, axis=2)
  slot_colours = jnp.split(colours.reshape(b, m, k_slots, 1, 3), k_slots, axis=2)
  prev = jnp.full((b, m, 1, 1), -2, jnp.int32)
  for k in range(k_slots):
    d2 = _squared_distance(px, py, _Segments(*(f[k] for f in fields)))
    same = slot_parts[k] == prev
    before = jnp.where(same[..., None], before, img)
    d2_part = jnp.where(same, jnp.minimum(d2_part, d2), d2)
    alpha = _coverage(d2_part, thickness)[..., None]
    img = before * (1.0 - alpha) + slot_colours[k] * alpha
    prev = slot_parts[k]
  return img


def _tiled_image(
    landmarks: jax.Array, image_size: int, thickness: float, tile: int, plan: _Plan
) -> jax.Array:
  """``[B, H, W, 3]`` drawn from the reached tiles of ``plan`` only; the others stay black."""
  b, n = landmarks.shape[0], -(-image_size // tile)
  s = _segments(landmarks)
  drawn = [_draw_tiles(s, t, g, n, tile, thickness) for t, g in zip(plan.tiles, plan.segments)]
  # Blank tiles read the zero row after the groups' rows.
  img = jnp.concatenate(drawn + [jnp.zeros((b, 1, tile, tile, 3), jnp.float32)], 1)
  img = jnp.take_along_axis(img, plan.slot[:, :, None, None, None], 1)
  img = img.reshape(b, n, n, tile, tile, 3).transpose(0, 1, 3, 2, 4, 5)
  return img.reshape(b, n * tile, n * tile, 3)[:, :image_size, :image_size]


def rasterize(
    landmarks: jax.Array,
    image_size: int,
    thickness: float | None = None,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
  """Draws landmarks as a coloured line image, on device.

  Jit-able and batched over any leading dimensions. On CPU from 256 px, the image is cut into
  small tiles, and each tile a stroke reaches is measured only against the few segments that reach
  it; when that plan does not fit (landmarks crowded into a few pixels, or spread over most of the
  image), the whole batch is drawn densely instead. Both paths give the same image.

  Args:
    landmarks: ``[..., 68, 2]`` pixel coordinates in an ``image_size`` square image.
    image_size: output height and width in pixels.
    thickness: stroke width in pixels; ``default_thickness(image_size)`` when None.
    dtype: output dtype (bfloat16 halves the memory on TPU).

  Returns:
    ``[..., image_size, image_size, 3]`` image in [0, 1]: black background, one colour per part,
    parts composited in ``FACE_PARTS`` order.
  """
  landmarks = jnp.asarray(landmarks, jnp.float32)
  if landmarks.shape[-2:] != (NUM_LANDMARKS, 2):
    raise ValueError(f"landmarks must have shape [..., 68, 2], got {landmarks.shape}")
  if thickness is None:
    thickness = default_thickness(image_size)
  lead = landmarks.shape[:-2]
  flat = landmarks.reshape((-1, NUM_LANDMARKS, 2))
  img = _draw(flat, image_size, float(thickness))
  return img.reshape(lead + (image_size, image_size, 3)).astype(dtype)


def rasterizer_path(image_size: int) -> str:
  """``tiled`` or ``dense``: how ``rasterize`` draws at ``image_size`` on the default backend.

  The tiled path (each tile draws only the segments near it, ``lax.cond`` falling back to dense
  when a tile overflows) is a CPU optimisation; on GPU and TPU, XLA's fused dense program over
  all segments is the fast one, so they always take it.
  """
  return "tiled" if jax.default_backend() == "cpu" and image_size >= TILED_MIN_SIZE else "dense"


@functools.partial(jax.jit, static_argnums=(1, 2))
def _draw(landmarks: jax.Array, image_size: int, thickness: float) -> jax.Array:
  """``[B, H, W, 3]`` by the dense path, or on CPU from 256 px by the tiled one.

  Jitted on its own so that eager callers (sample grids, the demo's pictures) run one program, not
  dozens of small ops one by one.
  """
  if rasterizer_path(image_size) == "dense":
    return _dense_image(landmarks, image_size, thickness)
  tile = _tile_size(image_size)
  plan = _plan_tiles(landmarks, image_size, thickness, tile)
  return jax.lax.cond(plan.overflow, lambda: _dense_image(landmarks, image_size, thickness),
                      lambda: _tiled_image(landmarks, image_size, thickness, tile, plan))


def _mirror_permutation() -> np.ndarray:
  """Index map of the iBUG-68 scheme under a left-right flip (point i becomes point perm[i])."""
  pairs = [(i, 16 - i) for i in range(8)]  # jaw
  pairs += [(17 + i, 26 - i) for i in range(5)]  # brows
  pairs += [(31, 35), (32, 34)]  # nostrils
  pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
  pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips
  pairs += [(60, 64), (61, 63), (65, 67)]  # inner lips
  perm = np.arange(NUM_LANDMARKS)
  for a, b in pairs:
    perm[a], perm[b] = b, a
  return perm


MIRROR_PERMUTATION: np.ndarray = _mirror_permutation()


def mirror(points: jax.Array, image_size: int) -> jax.Array:
  """Landmarks of the horizontally flipped image: x -> size - x, and left/right parts swapped."""
  flipped = jnp.asarray(points)[..., MIRROR_PERMUTATION, :]
  return flipped.at[..., 0].set(image_size - flipped[..., 0])


def landmark_images(
    points: jax.Array, image_size: int, thickness: float | None = None
) -> jax.Array:
  """Landmark images in [-1, 1], the networks' input range (``rasterize`` gives [0, 1])."""
  return rasterize(points, image_size, thickness or None) * 2.0 - 1.0
