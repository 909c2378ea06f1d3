"""The 68-point iBUG landmark convention and the on-device landmark rasteriser.

Landmarks everywhere in fewshot_jax are float32 ``[..., 68, 2]`` arrays of ``(x, y)`` in pixel
units of the image they belong to: x grows to the right, y grows downwards, and the centre of pixel
``(row i, column j)`` sits at ``(j + 0.5, i + 0.5)``. They are stored as floats and only turned into
an image on the accelerator, inside the jitted step, so that drawing never becomes a host-side
bottleneck (the public PyTorch ports draw with matplotlib on the CPU).

The rasteriser is a distance field: every pixel measures its distance to every polyline segment of a
face part, and coverage falls off linearly over one pixel at the stroke's edge, which gives
anti-aliased lines with no branching, the shape of work TPUs and GPUs like.
"""

from __future__ import annotations

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


def default_thickness(image_size: int) -> float:
  """Stroke width in pixels: about 2 px at 256, never thinner than 1 px."""
  return max(1.0, 2.0 * image_size / 256.0)


def _segment_coverage(
    landmarks: jax.Array, segs: np.ndarray, image_size: int, thickness: float
) -> jax.Array:
  """Coverage in [0, 1] of the union of segments ``segs`` at every pixel.

  Args:
    landmarks: ``[B, 68, 2]`` pixel coordinates.
    segs: ``[S, 2]`` int array of landmark index pairs.
    image_size: output height and width.
    thickness: stroke width in pixels.

  Returns:
    ``[B, H, W]`` float32 coverage, the max over segments of a one-pixel linear ramp at distance
    ``thickness / 2`` from the segment.
  """
  a = landmarks[:, segs[:, 0], :]  # [B, S, 2]
  b = landmarks[:, segs[:, 1], :]
  centres = jnp.arange(image_size, dtype=jnp.float32) + 0.5
  px = centres[None, None, :, None]  # x varies along W
  py = centres[None, :, None, None]  # y varies along H
  ax, ay = a[..., 0][:, None, None, :], a[..., 1][:, None, None, :]
  dx = (b[..., 0] - a[..., 0])[:, None, None, :]
  dy = (b[..., 1] - a[..., 1])[:, None, None, :]
  len2 = jnp.maximum(dx * dx + dy * dy, 1e-6)
  t = jnp.clip(((px - ax) * dx + (py - ay) * dy) / len2, 0.0, 1.0)
  ex = px - (ax + t * dx)
  ey = py - (ay + t * dy)
  dist = jnp.sqrt(ex * ex + ey * ey + 1e-12)  # [B, H, W, S]
  cov = jnp.clip(thickness / 2.0 + 0.5 - dist, 0.0, 1.0)
  return jnp.max(cov, axis=-1)


def rasterize(
    landmarks: jax.Array,
    image_size: int,
    thickness: float | None = None,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
  """Draws landmarks as a coloured line image, on device.

  Jit-able and batched over any leading dimensions.

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
  img = jnp.zeros(flat.shape[:1] + (image_size, image_size, 3), jnp.float32)
  for part in FACE_PARTS:
    segs = np.asarray(part_segments(part), np.int32)
    alpha = _segment_coverage(flat, segs, image_size, thickness)[..., None]
    colour = jnp.asarray(part.colour, jnp.float32)
    img = img * (1.0 - alpha) + colour * alpha
  return img.reshape(lead + (image_size, image_size, 3)).astype(dtype)


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
