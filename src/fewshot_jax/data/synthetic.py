"""Procedural talking heads with exact iBUG-68 landmarks, deterministic from a seed.

Why: the framework must be runnable end to end with no download, and a test needs data whose
landmarks are right by construction. Each identity is a 3-D landmark template (face shape, eyes,
brows, nose, lips) plus an appearance (skin, hair style and colour, eye, brow and lip colours,
background). Each frame moves that template (head yaw/pitch/roll, translation, scale) and its
expression (mouth opening and smile, blinks, brow raises), projects it orthographically, and then
*draws the face from the projected points*, so pixels and landmarks agree exactly. Extra hidden 3-D
points (forehead and hair outline) shape the head and hair but are not part of the 68.

Rendering uses Pillow polygons at 2x and a box filter down to the output size (anti-aliasing);
landmark maths is vectorised over all frames of a video at once.

Run ``python -m fewshot_jax.data.synthetic --contact-sheet docs/synthetic_contact_sheet.png`` for
the README's picture of 16 identities x 8 frames.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

NUM_LANDMARKS = 68
# Bumped whenever the rendering of a given seed changes, so caches of rendered videos are rebuilt.
GENERATOR_VERSION = 2
# Held-out identities (evaluation, the test split) use seeds from here on; training uses 0..N-1.
HELDOUT_SEED_OFFSET = 1_000_000
_SS = 2  # supersampling factor of the renderer
# Template units -> fraction of the frame. 0.315 makes the landmarks' bounding box about 1/1.8 of
# the frame (median over identities and poses), which is what the data-prep crop (the landmark box
# enlarged 1.8x) gives real faces, so synthetic and real training frames are framed alike.
_FACE_SCALE = 0.315
_FOREHEAD = 11  # hidden forehead-arc points after the 68
_HAIR_STYLES = ("short", "long", "bald", "fringe", "bob")


def _rgb(rng: np.random.Generator, lo: Sequence[float], hi: Sequence[float]) -> tuple[int, ...]:
  return tuple(int(v) for v in rng.uniform(lo, hi))


@dataclasses.dataclass(frozen=True)
class Identity:
  """Shape and appearance of one synthetic person."""

  seed: int
  face_width: float
  jaw_length: float
  jaw_power: float  # < 1 square jaw, > 1 pointed chin
  eye_spacing: float
  eye_width: float
  eye_height: float
  eye_y: float
  brow_y: float
  brow_arch: float
  brow_thickness: float
  nose_length: float
  nose_width: float
  mouth_width: float
  mouth_y: float
  lip_thickness: float
  skin: tuple[int, ...]
  hair: tuple[int, ...]
  hair_style: str
  hair_volume: float
  iris: tuple[int, ...]
  brow_colour: tuple[int, ...]
  lips: tuple[int, ...]
  background: tuple[tuple[int, ...], tuple[int, ...]]
  background_vertical: bool

  @staticmethod
  def sample(seed: int) -> "Identity":
    """Draws an identity from ``seed`` (a pure function of the seed)."""
    rng = np.random.default_rng([seed, 0x1D])
    tone = rng.uniform(0, 1)
    skin = tuple(int(v) for v in np.array([240, 205, 180]) * (1 - tone) + np.array([110, 70, 50]) * tone
                 + rng.uniform(-12, 12, 3))
    hair_base = [(30, 20, 15), (90, 55, 30), (200, 160, 90), (150, 60, 30), (60, 60, 60),
                 (210, 210, 200)][rng.integers(6)]
    hair = tuple(int(np.clip(c + rng.uniform(-25, 25), 0, 255)) for c in hair_base)
    bg1 = _rgb(rng, (20, 20, 20), (235, 235, 235))
    bg2 = tuple(int(np.clip(c + rng.uniform(-90, 90), 0, 255)) for c in bg1)
    return Identity(
        seed=seed,
        face_width=rng.uniform(0.82, 1.08),
        jaw_length=rng.uniform(0.95, 1.2),
        jaw_power=rng.uniform(0.7, 1.5),
        eye_spacing=rng.uniform(0.36, 0.48),
        eye_width=rng.uniform(0.13, 0.19),
        eye_height=rng.uniform(0.05, 0.085),
        eye_y=rng.uniform(-0.28, -0.16),
        brow_y=rng.uniform(-0.5, -0.4),
        brow_arch=rng.uniform(0.02, 0.1),
        brow_thickness=rng.uniform(0.035, 0.08),
        nose_length=rng.uniform(0.38, 0.55),
        nose_width=rng.uniform(0.14, 0.24),
        mouth_width=rng.uniform(0.25, 0.38),
        mouth_y=rng.uniform(0.52, 0.66),
        lip_thickness=rng.uniform(0.04, 0.09),
        skin=tuple(int(np.clip(c, 0, 255)) for c in skin),
        hair=hair,
        hair_style=_HAIR_STYLES[rng.integers(len(_HAIR_STYLES))],
        hair_volume=rng.uniform(1.05, 1.25),
        iris=_rgb(rng, (20, 20, 10), (120, 160, 170)),
        brow_colour=tuple(int(c * 0.8) for c in hair),
        lips=_rgb(rng, (150, 50, 60), (215, 120, 130)),
        background=(bg1, bg2),
        background_vertical=bool(rng.integers(2)),
    )


def _template(ident: Identity) -> np.ndarray:
  """The identity's neutral 3-D points ``[68 + _FOREHEAD, 3]``; x right, y down, z to the viewer.

  Units: the face's half-width is about 1.
  """
  p = np.zeros((NUM_LANDMARKS + _FOREHEAD, 3))
  w, h = ident.face_width, ident.jaw_length
  t = np.linspace(0, np.pi, 17)
  s = np.sin(t)
  p[0:17, 0] = -w * np.cos(t) * (0.9 + 0.1 * s)
  p[0:17, 1] = -0.15 + (0.15 + h) * s**ident.jaw_power
  p[0:17, 2] = -0.45 * np.abs(np.cos(t))
  for side, start in ((-1, 17), (1, 22)):  # brows (subject's right brow sits on image left)
    xs = np.linspace(0.88, 0.18, 5) if side < 0 else np.linspace(0.18, 0.88, 5)
    p[start : start + 5, 0] = side * xs * ident.face_width
    p[start : start + 5, 1] = ident.brow_y - ident.brow_arch * np.sin(np.linspace(0, np.pi, 5))
    p[start : start + 5, 2] = 0.15 - 0.25 * xs
  nl = ident.nose_length
  p[27:31, 1] = np.linspace(ident.eye_y - 0.05, ident.eye_y + nl, 4)
  p[27:31, 2] = np.linspace(0.2, 0.45, 4)
  p[31:36, 0] = np.linspace(-ident.nose_width, ident.nose_width, 5)
  p[31:36, 1] = ident.eye_y + nl + 0.09 - 0.04 * np.cos(np.linspace(-1.2, 1.2, 5))
  p[31:36, 2] = 0.32
  ew, eh = ident.eye_width, ident.eye_height
  # 6-point almonds: corner, two upper, corner, two lower, in iBUG order.
  ex = np.array([-1.0, -0.35, 0.35, 1.0, 0.35, -0.35])
  ey = np.array([0.0, -1.0, -1.0, 0.0, 1.0, 1.0])
  for start, cx in ((36, -ident.eye_spacing), (42, ident.eye_spacing)):
    p[start : start + 6, 0] = cx + ex * ew
    p[start : start + 6, 1] = ident.eye_y + ey * eh
    p[start : start + 6, 2] = 0.12
  mw, my, lt = ident.mouth_width, ident.mouth_y, ident.lip_thickness
  ox = np.array([-1.0, -0.6, -0.25, 0.0, 0.25, 0.6, 1.0, 0.6, 0.25, 0.0, -0.25, -0.6])
  oy = np.array([0.0, -0.8, -1.0, -0.8, -1.0, -0.8, 0.0, 1.0, 1.25, 1.3, 1.25, 1.0])
  p[48:60, 0] = ox * mw
  p[48:60, 1] = my + oy * lt
  p[48:60, 2] = 0.3 - 0.15 * np.abs(ox)
  ix = np.array([-0.85, -0.35, 0.0, 0.35, 0.85, 0.35, 0.0, -0.35])
  p[60:68, 0] = ix * mw
  p[60:68, 1] = my
  p[60:68, 2] = 0.28 - 0.1 * np.abs(ix)
  a = np.linspace(np.pi, 2 * np.pi, _FOREHEAD)  # forehead arc, temple to temple over the top
  p[68:, 0] = w * 0.97 * np.cos(a)
  p[68:, 1] = -0.15 + 1.05 * np.sin(a)
  p[68:, 2] = -0.2
  return p


@dataclasses.dataclass(frozen=True)
class Motion:
  """Per-frame pose and expression curves of one video, each ``[T]``."""

  yaw: np.ndarray
  pitch: np.ndarray
  roll: np.ndarray
  tx: np.ndarray
  ty: np.ndarray
  scale: np.ndarray
  mouth: np.ndarray
  smile: np.ndarray
  blink: np.ndarray
  brow: np.ndarray


def _smooth_curve(rng: np.random.Generator, n: int, amp: float, fmax: float) -> np.ndarray:
  t = np.arange(n)[:, None]
  freqs = rng.uniform(0.01, fmax, 3)
  phases = rng.uniform(0, 2 * np.pi, 3)
  weights = rng.dirichlet(np.ones(3))
  return amp * (np.sin(2 * np.pi * freqs * t + phases) * weights).sum(-1) / np.sqrt((weights**2).sum()) / 1.3


def sample_motion(seed: int, num_frames: int) -> Motion:
  """Smooth, talking-like motion curves from ``seed``."""
  rng = np.random.default_rng([seed, 0x3A])
  blink = np.zeros(num_frames)
  t = int(rng.integers(0, 25))
  while t < num_frames:
    for dt, v in enumerate((0.5, 1.0, 1.0, 0.5)):
      if t + dt < num_frames:
        blink[t + dt] = max(blink[t + dt], v)
    t += int(rng.integers(15, 45))
  speech = np.abs(_smooth_curve(rng, num_frames, 1.6, 0.2))
  return Motion(
      yaw=np.clip(_smooth_curve(rng, num_frames, np.radians(28), 0.05), -0.55, 0.55),
      pitch=_smooth_curve(rng, num_frames, np.radians(13), 0.05),
      roll=_smooth_curve(rng, num_frames, np.radians(9), 0.04),
      tx=_smooth_curve(rng, num_frames, 0.06, 0.04),
      ty=_smooth_curve(rng, num_frames, 0.04, 0.04),
      scale=1.0 + _smooth_curve(rng, num_frames, 0.08, 0.03),
      mouth=np.clip(speech - 0.15, 0.0, 1.0),
      smile=np.clip(_smooth_curve(rng, num_frames, 0.8, 0.03), -0.3, 1.0),
      blink=blink,
      brow=np.clip(_smooth_curve(rng, num_frames, 1.0, 0.04), 0.0, 1.0),
  )


def _animate(ident: Identity, motion: Motion, image_size: int) -> np.ndarray:
  """Projected 2-D points ``[T, 68 + _FOREHEAD, 2]`` in output pixel units."""
  base = _template(ident)
  n = motion.yaw.shape[0]
  p = np.broadcast_to(base, (n,) + base.shape).copy()
  lt = ident.lip_thickness
  o = motion.mouth[:, None] * (0.12 + lt)  # lower lip / jaw drop
  p[:, [65, 66, 67], 1] += o
  p[:, 55:60, 1] += o
  p[:, [61, 62, 63], 1] -= 0.15 * o
  jaw_w = np.sin(np.linspace(0, np.pi, 17)) ** 3
  p[:, 0:17, 1] += 0.6 * o * jaw_w
  sm = motion.smile[:, None]
  for idx, side in ((48, -1), (60, -1), (54, 1), (64, 1)):
    p[:, idx, 0] += side * 0.05 * sm[:, 0]
    p[:, idx, 1] -= 0.04 * sm[:, 0]
  b = motion.blink[:, None]
  for up, low in (((37, 38), (41, 40)), ((43, 44), (47, 46))):
    mid = 0.5 * (p[:, list(up), 1] + p[:, list(low), 1])
    closed = mid + 0.25 * ident.eye_height
    p[:, list(up), 1] += b * (closed - p[:, list(up), 1])
    p[:, list(low), 1] += b * (closed - p[:, list(low), 1])
  p[:, 17:27, 1] -= 0.08 * motion.brow[:, None]

  cy, sy = np.cos(motion.yaw), np.sin(motion.yaw)
  cp, sp = np.cos(motion.pitch), np.sin(motion.pitch)
  cr, sr = np.cos(motion.roll), np.sin(motion.roll)
  x, y, z = p[..., 0], p[..., 1], p[..., 2]
  x, z = cy[:, None] * x + sy[:, None] * z, -sy[:, None] * x + cy[:, None] * z
  y, z = cp[:, None] * y - sp[:, None] * z, sp[:, None] * y + cp[:, None] * z
  x, y = cr[:, None] * x - sr[:, None] * y, sr[:, None] * x + cr[:, None] * y
  px = _FACE_SCALE * image_size * motion.scale[:, None]
  cx = image_size * (0.5 + motion.tx[:, None])
  cyy = image_size * (0.47 + motion.ty[:, None])
  return np.stack([cx + px * x, cyy + px * y], axis=-1)


def _background(ident: Identity, size: int) -> Image.Image:
  a, b = (np.asarray(c, np.float32) for c in ident.background)
  ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None]
  line = a + (b - a) * ramp  # [size, 3]
  img = line[:, None, :] if ident.background_vertical else line[None, :, :]
  img = np.broadcast_to(img, (size, size, 3))
  return Image.fromarray(np.ascontiguousarray(img.round().astype(np.uint8)))


def _shade(c: tuple[int, ...], f: float) -> tuple[int, ...]:
  return tuple(int(np.clip(v * f, 0, 255)) for v in c)


def _poly(points: np.ndarray) -> list[tuple[float, float]]:
  return [(float(x), float(y)) for x, y in points]


def _draw_frame(ident: Identity, pts: np.ndarray, bg: Image.Image, yaw: float) -> Image.Image:
  """Draws one face from its points (``pts`` in supersampled pixels)."""
  img = bg.copy()
  d = ImageDraw.Draw(img)
  jaw, fore = pts[0:17], pts[68:]
  centre = pts[27:31].mean(0)
  head = np.concatenate([jaw, fore[::-1][1:-1]])
  vol = ident.hair_volume
  if ident.hair_style != "bald":
    top = centre + (fore - centre) * vol
    if ident.hair_style in ("long", "bob"):
      depth = 1.0 if ident.hair_style == "long" else 0.55
      left = jaw[0] + (jaw[3] - jaw[0]) * depth * 1.6
      right = jaw[16] + (jaw[13] - jaw[16]) * depth * 1.6
      side_l = centre + (left - centre) * vol
      side_r = centre + (right - centre) * vol
      d.polygon(_poly(np.concatenate([[side_l], top, [side_r]])), fill=ident.hair)
    else:
      d.polygon(_poly(np.concatenate([top, [centre + (jaw[12] - centre) * 0.7,
                                            centre + (jaw[4] - centre) * 0.7]])),
                fill=ident.hair)
  d.polygon(_poly(head), fill=ident.skin)
  # The half of the face turned away from the light (the side the head turns from) is darker.
  dark = _shade(ident.skin, 0.85)
  if abs(yaw) > 0.08:
    # chin -> up the jaw on the shaded side -> forehead towards the middle -> nose tip -> bridge;
    # the two sides are mirror images of each other (``fore`` runs image-left to image-right).
    if yaw > 0:
      side = np.concatenate([jaw[8:], fore[::-1][1:6]])
    else:
      side = np.concatenate([jaw[8::-1], fore[1:6]])
    d.polygon(_poly(np.concatenate([side, pts[30:26:-1]])), fill=dark)
  if ident.hair_style != "bald":
    drop = 0.45 if ident.hair_style == "fringe" else 0.2
    inner = fore + (centre - fore) * drop
    inner[0], inner[-1] = fore[0], fore[-1]
    outer = centre + (fore - centre) * vol
    d.polygon(_poly(np.concatenate([outer, inner[::-1]])), fill=ident.hair)
  sclera = (242, 240, 235)
  for start in (36, 42):
    eye = pts[start : start + 6]
    d.polygon(_poly(eye), fill=sclera)
    c = eye.mean(0) + np.array([yaw * 0.3 * (eye[3, 0] - eye[0, 0]) * 0.5, 0.0])
    r = 0.3 * abs(eye[3, 0] - eye[0, 0])
    opening = 0.5 * (np.abs(eye[5, 1] - eye[1, 1]) + np.abs(eye[4, 1] - eye[2, 1]))
    ry = min(r, 0.5 * opening)
    if ry > 0.5:
      d.ellipse([c[0] - r, c[1] - ry, c[0] + r, c[1] + ry], fill=ident.iris)
      pr = 0.45 * min(r, ry)
      d.ellipse([c[0] - pr, c[1] - pr, c[0] + pr, c[1] + pr], fill=(10, 10, 10))
    d.line(_poly(np.concatenate([eye, eye[:1]])), fill=_shade(ident.skin, 0.45), width=_SS)
  bw = max(1, int(round(ident.brow_thickness * 0.3 * np.linalg.norm(jaw[16] - jaw[0]))))
  for start in (17, 22):
    d.line(_poly(pts[start : start + 5]), fill=ident.brow_colour, width=bw, joint="curve")
  nose_c = _shade(ident.skin, 0.7)
  d.line(_poly(pts[27:31]), fill=nose_c, width=_SS)
  d.line(_poly(pts[31:36]), fill=nose_c, width=_SS)
  d.polygon(_poly(pts[48:60]), fill=ident.lips)
  d.polygon(_poly(pts[60:68]), fill=(70, 20, 30))
  return img


def render_video(
    identity_seed: int,
    num_frames: int,
    image_size: int = 64,
    motion_seed: int | None = None,
    frame_stride: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
  """Renders one talking-head video.

  Args:
    identity_seed: who is talking.
    num_frames: T.
    image_size: output height and width.
    motion_seed: how they move; derived from ``identity_seed`` by default.
    frame_stride: keep every ``frame_stride``-th frame of a ``T * frame_stride`` frame clip. The
      data-prep recipe spreads a video's frames over all its utterances, so training frames of one
      video differ in pose and expression; a stride > 1 gives synthetic videos the same spread.
      Use 1 for a driving sequence that must play smoothly.

  Returns:
    ``frames`` uint8 ``[T, H, W, 3]`` and ``landmarks`` float32 ``[T, 68, 2]`` in the pixel units of
    the returned frames (pixel (i, j) has its centre at (j + 0.5, i + 0.5)).
  """
  clip = SyntheticClip(identity_seed, num_frames, image_size, motion_seed, frame_stride)
  frames = np.empty((num_frames, image_size, image_size, 3), np.uint8)
  for t in range(num_frames):
    frames[t] = clip.frame(t)
  return frames, clip.landmarks


class SyntheticClip:
  """One synthetic video whose frames are drawn when asked for: ``render_video``'s frames, one at
  a time. Landmarks and motion are cheap and computed up front; drawing a frame is the cost.

  It is also a sequence of frames (``len``, ``clip[t]``), so an episode that needs K + 1 frames of
  a video draws only those (``SyntheticVideos``).
  """

  def __init__(self, identity_seed: int, num_frames: int, image_size: int = 64,
               motion_seed: int | None = None, frame_stride: int = 1):
    if frame_stride < 1:
      raise ValueError(f"frame_stride={frame_stride}: expected >= 1")
    self.ident = Identity.sample(identity_seed)
    motion_seed = identity_seed + 7919 if motion_seed is None else motion_seed
    motion = sample_motion(motion_seed, num_frames * frame_stride)
    self.motion = Motion(**{f.name: getattr(motion, f.name)[::frame_stride]
                            for f in dataclasses.fields(Motion)})
    self.image_size = image_size
    self.num_frames = num_frames
    self._pts = _animate(self.ident, self.motion, image_size)
    self.landmarks = self._pts[:, :NUM_LANDMARKS].astype(np.float32)
    self._bg: Image.Image | None = None

  def frame(self, t: int) -> np.ndarray:
    """Frame ``t`` as uint8 ``[H, W, 3]``."""
    if self._bg is None:
      self._bg = _background(self.ident, self.image_size * _SS)
    img = _draw_frame(self.ident, self._pts[t] * _SS, self._bg, float(self.motion.yaw[t]))
    return np.asarray(img.reduce(_SS))

  def __len__(self) -> int:
    return self.num_frames

  def __getitem__(self, t: int) -> np.ndarray:
    return self.frame(int(t))


class SyntheticVideos:
  """Random access over synthetic videos rendered on demand (row ``i`` is W's row ``i``): the
  streaming form of ``make_dataset``, for sets too large to hold in memory (``data/sources.py``
  picks it). Same frames as ``render_video`` for the same seeds."""

  def __init__(self, identity_seeds: Sequence[int], frames_per_video: int, image_size: int,
               frame_stride: int = 1):
    self.seeds = [int(s) for s in identity_seeds]
    self.frames_per_video = frames_per_video
    self.image_size = image_size
    self.frame_stride = frame_stride

  @property
  def num_frames(self) -> int:
    return self.frames_per_video

  def __len__(self) -> int:
    return len(self.seeds)

  def __getitem__(self, i: int) -> dict[str, Any]:
    clip = SyntheticClip(self.seeds[i], self.frames_per_video, self.image_size,
                         frame_stride=self.frame_stride)
    return {"frames": clip, "landmarks": clip.landmarks, "video_index": int(i),
            "key": f"synthetic/{self.seeds[i]}"}


def _render_job(args: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
  seed, num_frames, image_size, stride = args
  return render_video(seed, num_frames, image_size, frame_stride=stride)


def make_dataset(
    identity_seeds: Sequence[int],
    frames_per_video: int,
    image_size: int = 64,
    workers: int = 1,
    progress: bool = False,
    frame_stride: int = 1,
) -> dict[str, np.ndarray]:
  """Renders one video per identity seed (``frame_stride`` as in ``render_video``).

  Returns:
    ``{'frames': uint8[V,T,H,W,3], 'landmarks': f32[V,T,68,2], 'identity': int64[V]}``.
  """
  seeds = [int(s) for s in identity_seeds]
  v = len(seeds)
  frames = np.empty((v, frames_per_video, image_size, image_size, 3), np.uint8)
  points = np.empty((v, frames_per_video, NUM_LANDMARKS, 2), np.float32)
  jobs = [(s, frames_per_video, image_size, frame_stride) for s in seeds]
  t0 = time.perf_counter()

  def report(i: int) -> None:
    if progress and (i % 25 == 0 or i == v):
      rate = i / max(time.perf_counter() - t0, 1e-9)
      eta = (v - i) / rate if rate > 0 else 0.0
      sys.stderr.write(f"\rsynthetic videos {i}/{v} {rate:.1f} videos/s ETA {eta:.0f}s")
      if i == v:
        sys.stderr.write("\n")
      sys.stderr.flush()

  if workers > 1 and v > 1:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
      for i, (f, p) in enumerate(pool.imap(_render_job, jobs, chunksize=8)):
        frames[i], points[i] = f, p
        report(i + 1)
  else:
    for i, job in enumerate(jobs):
      frames[i], points[i] = _render_job(job)
      report(i + 1)
  return {"frames": frames, "landmarks": points, "identity": np.asarray(seeds, np.int64)}


def contact_sheet(identity_seeds: Sequence[int], frames: int = 8, image_size: int = 64,
                  video_length: int = 64) -> np.ndarray:
  """Rows of identities, columns of frames spread over each video, as one uint8 image."""
  pad = 2
  rows = len(identity_seeds)
  out = np.full((rows * (image_size + pad) + pad, frames * (image_size + pad) + pad, 3), 255,
                np.uint8)
  picks = np.linspace(0, video_length - 1, frames).round().astype(int)
  for r, seed in enumerate(identity_seeds):
    video, _ = render_video(int(seed), video_length, image_size)
    for c, t in enumerate(picks):
      y, x = pad + r * (image_size + pad), pad + c * (image_size + pad)
      out[y : y + image_size, x : x + image_size] = video[t]
  return out


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--contact-sheet", required=True, help="output PNG")
  parser.add_argument("--identities", type=int, default=16)
  parser.add_argument("--frames", type=int, default=8)
  parser.add_argument("--size", type=int, default=64)
  args = parser.parse_args(argv)
  sheet = contact_sheet(range(args.identities), args.frames, args.size)
  Image.fromarray(sheet).save(args.contact_sheet)
  print(f"wrote {args.contact_sheet} ({sheet.shape[1]}x{sheet.shape[0]})")


if __name__ == "__main__":
  main()
