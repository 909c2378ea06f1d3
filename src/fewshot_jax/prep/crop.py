"""Face tracks and crops: per-frame detections -> one main track -> smoothed square crops.

The crop follows the published recipe: a square around the landmarks' bounding box, enlarged by a
factor (1.8 by default), its centre and side smoothed over time so the face does not jitter, then
resized to ``image_size``. Landmarks are carried into crop coordinates with the same map, so frame
and landmarks keep agreeing exactly (pixel centres at ``j + 0.5``, as everywhere in fewshot_jax).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from fewshot_jax.prep.backends import Face


@dataclasses.dataclass(frozen=True)
class Track:
  """One face followed over a video: ``frames[i]`` is the frame index of ``faces[i]``."""

  frames: tuple[int, ...]
  faces: tuple[Face, ...]

  @property
  def mean_size(self) -> float:
    return float(np.mean([f.size for f in self.faces]))


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
  """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = w * h
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return float(inter / union) if union > 0 else 0.0


def link_tracks(
    detections: Sequence[Sequence[Face]], min_iou: float = 0.3, max_gap: int = 5
) -> list[Track]:
  """Links per-frame detections into tracks, greedily by box overlap.

  A detection continues the track whose last box overlaps it most (IoU ≥ ``min_iou``) if that track
  was seen at most ``max_gap`` frames ago; otherwise it starts a new track.

  Args:
    detections: per frame, the faces found (any order).
    min_iou: the least overlap that counts as the same face.
    max_gap: how many frames a face may go undetected and still continue its track.

  Returns:
    Tracks, longest first.
  """
  open_tracks: list[tuple[list[int], list[Face]]] = []
  for t, faces in enumerate(detections):
    taken: set[int] = set()
    for face in sorted(faces, key=lambda f: -f.size):
      best, best_iou = None, min_iou
      for k, (frames, members) in enumerate(open_tracks):
        if k in taken or t - frames[-1] > max_gap:
          continue
        iou = box_iou(members[-1].box, face.box)
        if iou >= best_iou:
          best, best_iou = k, iou
      if best is None:
        open_tracks.append(([t], [face]))
        taken.add(len(open_tracks) - 1)
      else:
        open_tracks[best][0].append(t)
        open_tracks[best][1].append(face)
        taken.add(best)
  tracks = [Track(tuple(f), tuple(m)) for f, m in open_tracks]
  return sorted(tracks, key=lambda tr: -len(tr.frames))


def main_track(tracks: Sequence[Track]) -> Track | None:
  """The track of the person the video is about: the largest face summed over time.

  Summing size over frames prefers a face that is both large and present throughout over a brief
  large detection (a false positive, a passer-by) or a small face in the background.
  """
  if not tracks:
    return None
  return max(tracks, key=lambda tr: tr.mean_size * len(tr.frames))


def crop_boxes(
    landmarks: np.ndarray, enlarge: float = 1.8, smooth_sigma: float = 2.0
) -> np.ndarray:
  """Square crop boxes ``[T, 4]`` (x0, y0, x1, y1) around landmarks ``[T, 68, 2]``.

  Each box is centred on its landmarks' bounding box with side ``enlarge`` times the larger side.
  Centres and sides are smoothed with a Gaussian over the T frames (``smooth_sigma`` in frames,
  0 to switch off), so that a frame sequence crops steadily.
  """
  landmarks = np.asarray(landmarks, np.float64)
  lo, hi = landmarks.min(axis=1), landmarks.max(axis=1)
  centre = 0.5 * (lo + hi)
  side = enlarge * (hi - lo).max(axis=1)
  if smooth_sigma > 0 and len(landmarks) > 1:
    centre = np.stack([gaussian_smooth(centre[:, i], smooth_sigma) for i in range(2)], axis=1)
    side = gaussian_smooth(side, smooth_sigma)
  half = 0.5 * side[:, None]
  return np.concatenate([centre - half, centre + half], axis=1)


def gaussian_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
  """Gaussian filter over a 1-D series, normalised at the ends (no pull towards zero)."""
  radius = min(max(1, int(math.ceil(3 * sigma))), (len(x) - 1) // 2)  # "same" needs k <= len
  k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  num = np.convolve(x, k, mode="same")
  den = np.convolve(np.ones_like(x), k, mode="same")
  return num / den


def crop_frame(
    frame: np.ndarray, box: np.ndarray, landmarks: np.ndarray, image_size: int
) -> tuple[np.ndarray, np.ndarray]:
  """Crops ``box`` (x0, y0, x1, y1, square) out of ``frame`` and resizes it to ``image_size``.

  Parts of the box outside the frame are black. Downscaling is antialiased (Lanczos), which an
  affine warp would not be.

  Returns:
    ``uint8 [S, S, 3]`` crop and ``float32 [68, 2]`` landmarks in crop pixels.
  """
  h, w = frame.shape[:2]
  x0, y0, x1, y1 = (float(v) for v in box)
  if not x1 > x0 or not y1 > y0:
    raise ValueError(f"empty crop box {box}")
  # Pillow's resize box must lie inside the image: pad with black when the crop overhangs.
  overhang = max(0.0, -x0, -y0, x1 - w, y1 - h)
  pad = int(math.ceil(overhang)) + 1 if overhang > 0 else 0
  src = np.pad(frame, ((pad, pad), (pad, pad), (0, 0))) if pad else frame
  crop = Image.fromarray(src).resize(
      (image_size, image_size), Image.Resampling.LANCZOS,
      box=(x0 + pad, y0 + pad, x1 + pad, y1 + pad),
  )
  scale = np.array([image_size / (x1 - x0), image_size / (y1 - y0)])
  points = (np.asarray(landmarks, np.float64) - np.array([x0, y0])) * scale
  return np.asarray(crop), points.astype(np.float32)
