"""Driving landmarks -> target landmarks for the source face ("motion transfer").

``absolute`` uses the driver's landmarks as they are: the generated face takes the driver's face
shape too (jaw width, eye spacing, nose length), which is the identity leak the paper names as a
limitation when driver and source are different people.

``relative`` (the default) transfers only motion. Each driver frame is split, relative to the
driver's first frame, into

* a head motion: the 2-D similarity (scale, in-plane rotation, translation) that best maps the
  first frame's rigid landmarks (nose, eyes) onto this frame's (least squares, Umeyama), and
* an expression: what is left of the landmarks' displacement once that motion is undone.

Both are then re-expressed in the source face's frame (scaled and rotated by the similarity from
the driver's first frame to the source) and applied to the source's own landmarks. At the driver's
first frame the result is exactly the source's landmarks, and the source keeps its face shape.
"""

from __future__ import annotations

import numpy as np

from fewshot_jax.prep import crop as crop_lib

MOTIONS = ("relative", "absolute")
# Nose (27-35) and eye corners and lids (36-47): the points that move with the skull. Fitting the
# head's similarity on these keeps jaw and mouth motion (speech) out of the head pose, where it
# would otherwise leak into the source's face shape.
RIGID = np.arange(27, 48)


def similarity(a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
  """``(s, R, t)`` minimising ``sum |s R a_i + t - b_i|^2`` over 2-D points ``[N, 2]``; R is a
  rotation (no reflection)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  ca, cb = a.mean(0), b.mean(0)
  a0, b0 = a - ca, b - cb
  cov = b0.T @ a0 / len(a)
  u, d, vt = np.linalg.svd(cov)
  sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
  r = u @ sign @ vt
  var_a = (a0**2).sum() / len(a)
  s = float((d * np.diag(sign)).sum() / var_a) if var_a > 0 else 1.0
  return s, r, cb - s * r @ ca


def retarget(source: np.ndarray, driver: np.ndarray, motion: str = "relative") -> np.ndarray:
  """Target landmarks ``[T, 68, 2]`` for the source face ``[68, 2]`` from driver landmarks
  ``[T, 68, 2]`` (all in the same crop's pixels)."""
  if motion not in MOTIONS:
    raise ValueError(f"motion={motion!r}: expected one of {MOTIONS}")
  driver = np.asarray(driver, np.float64)
  if motion == "absolute":
    return driver.astype(np.float32)
  source = np.asarray(source, np.float64)
  first = driver[0]
  s_a, r_a, _ = similarity(first[RIGID], source[RIGID])  # driver's first frame -> source face
  c_first, c_src = first.mean(0), source.mean(0)
  out = np.empty_like(driver)
  for t, frame in enumerate(driver):
    s_t, r_t, tr_t = similarity(first[RIGID], frame[RIGID])  # head motion since the first frame
    undone = ((frame - tr_t) @ r_t) / s_t  # this frame with the head motion removed
    expression = undone - first
    moved_centre = s_t * r_t @ c_first + tr_t - c_first
    shaped = source + s_a * expression @ r_a.T - c_src
    out[t] = c_src + s_a * r_a @ moved_centre + s_t * shaped @ r_t.T
  return out.astype(np.float32)


def smooth(points: np.ndarray, sigma: float) -> np.ndarray:
  """Gaussian smoothing over time of ``[T, 68, 2]`` (``sigma`` in frames; 0 leaves them), the
  same filter data prep smooths crop boxes with (ends renormalised, not pulled inwards)."""
  points = np.asarray(points, np.float64)
  if sigma <= 0 or len(points) < 3:
    return points.astype(np.float32)
  flat = points.reshape(len(points), -1)
  out = np.stack([crop_lib.gaussian_smooth(flat[:, i], sigma) for i in range(flat.shape[1])], 1)
  return out.reshape(points.shape).astype(np.float32)
