"""Warp-augmented shots: new (frame, landmarks) pairs of the source face, made from the source alone.

Why: fine-tuning on one photo fits that photo's pose and nothing else; asked for any other pose,
the generator has only the meta-learned prior, and a new face melts into a blur of its colours.
These pairs show the fine-tune how *this* face's own texture moves: the shot's landmarks are moved
by the motions seen in training (a small in-plane similarity, the mouth and eyes opening or
closing, a small head turn) and the photo is warped with them by a smooth dense warp, so frame and
landmarks keep agreeing.

The warp is a thin-plate spline (TPS) fitted to the landmark displacements plus fixed anchor
points on the crop's border (the background stays put, the corners exactly), sampled bilinearly.
Every pair is deterministic given ``seed``.

The ranges (``CARPHONE_RANGES``) are the spread of the carphone speaker's crops, the data the
carphone-trained model learnt from, measured by ``ranges_from`` on the clip's 120 frames cropped
as data prep crops them (``load_driver`` with no landmark smoothing; ``tests/test_augment.py``
measures them again, and ``benchmarks/single_photo_augment.py`` writes them into its JSON). Each
range is the 5-95 percentile interval:

* in-plane similarity of each crop's rigid landmarks (nose, eyes) to their mean: roll
  +-0.1884 rad (10.8 deg), scale +-0.0869 (log), shift +-0.0292 of the crop side;
* mouth opening (inner-lip gap over the outer eye-corner distance): 0.053 to 0.362;
* eye opening (lid gap over the same distance): 0.073 to 0.123;
* head turn, as the nose tip's sideways offset from the eye corners' midpoint over the same
  distance: +-0.116 about the shot's own offset.

For comparison, one synthetic training video (identity 0, 200 frames at stride 4) spans roll
+-0.163, scale +-0.080, shift +-0.058, mouth 0 to 0.201, eyes 0 to 0.128 and turn +-0.117: the
same order, so the ranges are not particular to one speaker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from fewshot_jax.inference.motion import RIGID, similarity

# Warp-augmented pairs added to each fine-tuning step's targets when none is asked for
# (``fit_identity``, ``--augment``).
DEFAULT_AUGMENT = 0
# iBUG-68 indices (0-based).
LEFT_EYE_OUTER, RIGHT_EYE_OUTER = 36, 45  # image left, image right
NOSE_TIP = 30
INNER_UPPER, INNER_LOWER = (61, 62, 63), (67, 66, 65)  # paired top-bottom
OUTER_LOWER = (55, 56, 57, 58, 59)
LID_UPPER, LID_LOWER = (37, 38, 43, 44), (41, 40, 47, 46)  # paired top-bottom
JAW = np.arange(17)
# Depth of each landmark relative to the eyes (0) and the nose tip (1), as in the synthetic data's
# 3-D head template (data/synthetic.py: eyes at z 0.12, nose tip at 0.45, the jaw's sides 0.45
# behind the chin): a head turn moves each point sideways in proportion, so the nose swings most,
# the far cheek is squeezed and the near one stretched.
_Z_EYE, _Z_TIP = 0.12, 0.45


def _depths() -> np.ndarray:
  z = np.zeros(68)
  t = np.linspace(0, np.pi, 17)
  z[0:17] = -0.45 * np.abs(np.cos(t))
  xs = np.concatenate([np.linspace(0.88, 0.18, 5), np.linspace(0.18, 0.88, 5)])
  z[17:27] = 0.15 - 0.25 * xs
  z[27:31] = np.linspace(0.2, 0.45, 4)
  z[31:36] = 0.32
  z[36:48] = _Z_EYE
  ox = np.abs([-1.0, -0.6, -0.25, 0.0, 0.25, 0.6, 1.0, 0.6, 0.25, 0.0, -0.25, -0.6])
  z[48:60] = 0.3 - 0.15 * ox
  ix = np.abs([-0.85, -0.35, 0.0, 0.35, 0.85, 0.35, 0.0, -0.35])
  z[60:68] = 0.28 - 0.1 * ix
  return (z - _Z_EYE) / (_Z_TIP - _Z_EYE)


DEPTH = _depths()
_LATTICE = 64


@dataclasses.dataclass(frozen=True)
class AugmentRanges:
  """How far augmented landmarks may move from a shot's. Angles in radians, ``scale`` as a log,
  ``shift`` as a fraction of the crop side, ``mouth``/``eyes`` as (low, high) openings and
  ``yaw`` as the nose tip's sideways offset, all three over the outer eye-corner distance."""

  roll: float
  scale: float
  shift: float
  mouth: tuple[float, float]
  eyes: tuple[float, float]
  yaw: float

  def to_dict(self) -> dict[str, object]:
    return dataclasses.asdict(self)


# Measured on the carphone clip's training crops (see the module docstring).
CARPHONE_RANGES = AugmentRanges(roll=0.1884, scale=0.0869, shift=0.0292, mouth=(0.053, 0.362),
                                eyes=(0.073, 0.123), yaw=0.116)


def _frame_axes(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
  """The face's own right (along the eye line) and down unit vectors, and the outer eye-corner
  distance: expressions move along the face, not along the image's axes."""
  across = points[RIGHT_EYE_OUTER] - points[LEFT_EYE_OUTER]
  iod = float(np.linalg.norm(across))
  right = across / max(iod, 1e-9)
  return right, np.array([-right[1], right[0]]), iod


def face_measures(points: np.ndarray) -> dict[str, np.ndarray]:
  """Per frame of ``[T, 68, 2]`` (or one ``[68, 2]``): ``mouth`` and ``eyes`` openings and
  ``yaw`` (the nose tip's offset), each over the outer eye-corner distance."""
  pts = np.asarray(points, np.float64)
  single = pts.ndim == 2
  pts = pts[None] if single else pts
  out: dict[str, list[float]] = {"mouth": [], "eyes": [], "yaw": []}
  for p in pts:
    right, down, iod = _frame_axes(p)
    iod = max(iod, 1e-9)
    out["mouth"].append(float(np.mean((p[list(INNER_LOWER)] - p[list(INNER_UPPER)]) @ down)) / iod)
    out["eyes"].append(float(np.mean((p[list(LID_LOWER)] - p[list(LID_UPPER)]) @ down)) / iod)
    mid = 0.5 * (p[LEFT_EYE_OUTER] + p[RIGHT_EYE_OUTER])
    out["yaw"].append(float((p[NOSE_TIP] - mid) @ right) / iod)
  return {k: np.asarray(v[0] if single else v) for k, v in out.items()}


def ranges_from(points: np.ndarray, size: int, low: float = 5.0, high: float = 95.0
                ) -> AugmentRanges:
  """The ``low``-``high`` percentile spread of landmarks ``[T, 68, 2]`` in ``size``-px crops:
  the similarity of each frame's rigid points to their mean (roll, log scale, shift), and the
  openings and head turn of ``face_measures``. Symmetric ranges are half the interval."""
  pts = np.asarray(points, np.float64)
  mean = pts[:, RIGID].mean(0)
  rolls, scales, shifts = [], [], []
  for p in pts:
    s, r, t = similarity(mean, p[RIGID])
    rolls.append(np.arctan2(r[1, 0], r[0, 0]))
    scales.append(np.log(s))
    shifts.append((s * r @ mean.mean(0) + t - mean.mean(0)) / size)
  m = face_measures(pts)

  def half(x: np.ndarray) -> float:
    lo, hi = np.percentile(x, [low, high], axis=0)
    return round(float(np.max(hi - lo) / 2), 4)

  def interval(x: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(x, [low, high])
    return round(max(float(lo), 0.0), 3), round(float(hi), 3)

  return AugmentRanges(roll=half(np.asarray(rolls)), scale=half(np.asarray(scales)),
                       shift=half(np.asarray(shifts)), mouth=interval(m["mouth"]),
                       eyes=interval(m["eyes"]), yaw=round(half(m["yaw"]), 3))


def border_anchors(size: int, per_side: int = 8) -> np.ndarray:
  """``[4 * per_side, 2]`` points on the centres of the crop's outermost pixels, corners
  included: the warp leaves them where they are."""
  lo, hi = 0.5, size - 0.5
  t = np.linspace(lo, hi, per_side + 1)[:-1]
  return np.concatenate([np.stack([t, np.full_like(t, lo)], 1), np.stack([np.full_like(t, hi), t], 1),
                         np.stack([lo + hi - t, np.full_like(t, hi)], 1),
                         np.stack([np.full_like(t, lo), lo + hi - t], 1)])


def _tps_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  r2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
  return np.where(r2 > 0, r2 * np.log(np.maximum(r2, 1e-300)), 0.0)


def warp_image(image: np.ndarray, src: np.ndarray, dst: np.ndarray, anchors: np.ndarray | None = None,
               smoothing: float = 1e-3) -> np.ndarray:
  """``image`` (uint8 ``[S, S, 3]``) warped so that its content at points ``src`` moves to
  ``dst`` (both ``[N, 2]`` pixels), the ``anchors`` (default: ``border_anchors``) staying put.

  A thin-plate spline maps each output pixel back to where it is read from (fitted on
  ``dst -> src`` and ``anchor -> anchor``), then the image is sampled bilinearly (edges clamped).
  ``smoothing`` regularises the landmark points only (in crop-side units squared), so coinciding
  landmarks (a closed mouth's inner lips) cannot make the fit singular, while the anchors are
  met exactly. ``src == dst`` returns ``image`` unchanged.
  """
  size = image.shape[0]
  anchors = border_anchors(size) if anchors is None else np.asarray(anchors, np.float64)
  s = float(size)
  ctrl = np.concatenate([np.asarray(dst, np.float64), anchors]) / s
  target = np.concatenate([np.asarray(src, np.float64), anchors]) / s
  n = len(ctrl)
  reg = np.concatenate([np.full(len(dst), smoothing), np.zeros(len(anchors))])
  system = np.zeros((n + 3, n + 3))
  system[:n, :n] = _tps_kernel(ctrl, ctrl) + np.diag(reg)
  system[:n, n] = 1.0
  system[:n, n + 1:] = ctrl
  system[n, :n] = 1.0
  system[n + 1:, :n] = ctrl.T
  rhs = np.zeros((n + 3, 2))
  rhs[:n] = target - ctrl  # the spline carries the displacement: zero for an identity warp
  coef = np.linalg.solve(system, rhs)
  # The spline is smooth: evaluated on at most a 64 x 64 lattice of pixel centres and carried to
  # every pixel bilinearly (exact at 64 px and below; at 256 px, 16x less work for no visible
  # change).
  lattice = min(size, _LATTICE)
  c = (np.arange(lattice) + 0.5) / lattice
  cx, cy = np.meshgrid(c, c)
  nodes = np.stack([cx.ravel(), cy.ravel()], 1)
  shift = _tps_kernel(nodes, ctrl) @ coef[:n] + coef[n] + nodes @ coef[n + 1:]
  shift = shift.reshape(lattice, lattice, 2) * s
  ys, xs = np.mgrid[0:size, 0:size]
  at = (np.stack([xs.ravel(), ys.ravel()], 1) + 0.5) * (lattice / s) - 0.5
  if lattice < size:
    shift = _bilinear(shift, at[:, 0], at[:, 1])
  else:
    shift = shift.reshape(-1, 2)
  read = np.stack([xs.ravel(), ys.ravel()], 1) + shift  # pixel indices read from
  out = _bilinear(image.astype(np.float64), read[:, 0], read[:, 1])
  return np.clip(np.round(out), 0, 255).astype(np.uint8).reshape(image.shape)


def _bilinear(values: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """``values [H, W, C]`` read at pixel indices ``(x, y)`` (edges clamped) -> ``[len(x), C]``."""
  h, w = values.shape[:2]
  x = np.clip(x, 0.0, w - 1.0)
  y = np.clip(y, 0.0, h - 1.0)
  x0 = np.minimum(np.floor(x).astype(np.int64), w - 2)
  y0 = np.minimum(np.floor(y).astype(np.int64), h - 2)
  fx, fy = (x - x0)[:, None], (y - y0)[:, None]
  top = values[y0, x0] * (1 - fx) + values[y0, x0 + 1] * fx
  bottom = values[y0 + 1, x0] * (1 - fx) + values[y0 + 1, x0 + 1] * fx
  return top * (1 - fy) + bottom * fy


def deform_landmarks(points: np.ndarray, size: int, rng: np.random.Generator,
                     ranges: AugmentRanges = CARPHONE_RANGES) -> np.ndarray:
  """One random target for a shot's landmarks ``[68, 2]``: mouth and eye openings drawn within
  ``ranges``, a head turn and an in-plane similarity within them, kept inside the crop (the
  motion is halved until every point is at least 1 px from the border)."""
  p = np.asarray(points, np.float64)
  right, down, iod = _frame_axes(p)
  now = face_measures(p)
  mouth = rng.uniform(*ranges.mouth)
  eyes = rng.uniform(*ranges.eyes)
  yaw = rng.uniform(-ranges.yaw, ranges.yaw)
  roll = rng.uniform(-ranges.roll, ranges.roll)
  scale = rng.uniform(-ranges.scale, ranges.scale)
  shift = rng.uniform(-ranges.shift, ranges.shift, 2)
  for _ in range(6):
    q = p.copy()
    # Mouth: the lower lip and the chin drop (the jaw's lower arc with it), the upper lip rises a
    # little, as the synthetic heads open theirs; the inner-lip gap becomes ``mouth``.
    gap = (mouth - now["mouth"]) * iod
    drop = gap / 1.15
    q[list(INNER_LOWER)] += drop * down
    q[list(OUTER_LOWER)] += drop * down
    q[list(INNER_UPPER)] -= 0.15 * drop * down
    q[JAW] += 0.6 * drop * (np.sin(np.linspace(0, np.pi, 17)) ** 3)[:, None] * down
    # Eyes: both lids move to their midline or away from it until the gap is ``eyes``.
    lid = 0.5 * (eyes - now["eyes"]) * iod
    q[list(LID_UPPER)] -= lid * down
    q[list(LID_LOWER)] += lid * down
    # Head turn: each point slides sideways in proportion to its depth.
    q += (yaw * iod) * DEPTH[:, None] * right
    # In-plane similarity about the face's centre.
    c = q.mean(0)
    cos, sin = np.cos(roll), np.sin(roll)
    rot = np.array([[cos, -sin], [sin, cos]])
    q = (q - c) @ rot.T * np.exp(scale) + c + shift * size
    if q.min() >= 1.0 and q.max() <= size - 1.0:
      return q.astype(np.float32)
    yaw, roll, scale, shift = yaw / 2, roll / 2, scale / 2, shift / 2
  return np.clip(q, 1.0, size - 1.0).astype(np.float32)


def augment_shots(frames: np.ndarray, points: np.ndarray, n: int, seed: int | Sequence[int] = 0,
                  ranges: AugmentRanges = CARPHONE_RANGES) -> tuple[np.ndarray, np.ndarray]:
  """``n`` augmented pairs from K shots (uint8 ``[K, S, S, 3]``, ``[K, 68, 2]`` crop pixels):
  pair ``i`` warps shot ``i % K`` to new landmarks (``deform_landmarks``). Returns uint8
  ``[n, S, S, 3]`` and f32 ``[n, 68, 2]``; the same ``seed`` gives the same pairs."""
  frames = np.asarray(frames)
  points = np.asarray(points, np.float32)
  if frames.ndim != 4 or points.shape != (len(frames), 68, 2) or frames.shape[1] != frames.shape[2]:
    raise ValueError(f"augment: expected frames [K, S, S, 3] and landmarks [K, 68, 2], found "
                     f"{frames.shape} and {points.shape}")
  size = frames.shape[1]
  rng = np.random.default_rng(seed)
  anchors = border_anchors(size)
  out_frames = np.empty((n,) + frames.shape[1:], np.uint8)
  out_points = np.empty((n, 68, 2), np.float32)
  for i in range(n):
    k = i % len(frames)
    out_points[i] = deform_landmarks(points[k], size, rng, ranges)
    out_frames[i] = warp_image(frames[k], points[k], out_points[i], anchors)
  return out_frames, out_points
