"""Driving landmarks -> target landmarks for the source face ("motion transfer").

``absolute`` uses the driver's landmarks as they are: the generated face takes the driver's face
shape too (jaw width, eye spacing, nose length), which is the identity leak the paper names as a
limitation when driver and source are different people.

``relative`` (the default) transfers only motion. Each driver frame is split, relative to the
driver's first frame (or the chosen reference frame), into

* a head motion: the 2-D similarity (scale, in-plane rotation, translation) that best maps the
  first frame's rigid landmarks (nose, eyes) onto this frame's (least squares, Umeyama), and
* an expression: what is left of the landmarks' displacement once that motion is undone.

Both are then re-expressed in the source face's frame (scaled and rotated by the similarity from
the driver's first frame to the source) and applied to the source's own landmarks. At the driver's
first frame the result is exactly the source's landmarks, and the source keeps its face shape.

The controls: ``reference`` picks the driver frame motion is measured from instead of the first
(``auto``: the frame closest to the source's pose and expression); ``scale`` multiplies the
expression; ``animate`` carries the head motion only (``pose``), the expression only
(``expression``) or both (``all``).
"""

from __future__ import annotations

import numpy as np

from fewshot_jax.prep import crop as crop_lib

MOTIONS = ("relative", "absolute")
REFERENCES = ("auto", "first")
ANIMATE = ("all", "pose", "expression")
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


def normalised(points: np.ndarray) -> np.ndarray:
  """Landmarks ``[..., 68, 2]`` centred and scaled to unit RMS radius: what is left is pose (roll,
  yaw and pitch as they bend the 2-D shape) and expression, not where the face is or how big."""
  points = np.asarray(points, np.float64)
  centred = points - points.mean(-2, keepdims=True)
  radius = np.sqrt((centred**2).sum(-1).mean(-1))[..., None, None]
  return centred / np.maximum(radius, 1e-9)


def best_reference(source: np.ndarray, driver: np.ndarray) -> int:
  """The driver frame whose normalised landmarks are closest (mean point distance) to the
  source's: relative motion measured from there starts from the source's own pose and expression,
  so a driver that opens on a turned head or an open mouth does not carry that offset into every
  frame (first-order-model's ``--find_best_frame``)."""
  gaps = np.linalg.norm(normalised(driver) - normalised(source)[None], axis=-1).mean(-1)
  return int(np.argmin(gaps))


def parse_reference(text: str | int, flag: str = "reference") -> str | int:
  """``auto``, ``first`` or a frame index >= 0, from a user's string (``flag`` names it in the
  error)."""
  if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
    value = int(text)
  elif text in REFERENCES:
    return text
  else:
    try:
      value = int(str(text))
    except ValueError:
      raise ValueError(f"{flag} {text}: expected auto, first or a driver frame index") from None
  if value < 0:
    raise ValueError(f"{flag} {value}: expected auto, first or a driver frame index >= 0")
  return value


def resolve_reference(reference: str | int, source: np.ndarray, driver: np.ndarray,
                      flag: str = "reference") -> int:
  """The driver frame index relative motion is measured from (see ``best_reference``)."""
  reference = parse_reference(reference, flag)
  if reference == "first":
    return 0
  if reference == "auto":
    return best_reference(source, driver)
  if reference >= len(driver):
    raise ValueError(f"{flag} {reference}: beyond the driver's {len(driver)} frames (expected "
                     f"auto, first or 0 to {len(driver) - 1})")
  return reference


def check_controls(scale: float, animate: str, scale_flag: str = "motion_scale",
                   animate_flag: str = "animate") -> None:
  """Refuses a negative or non-finite motion scale and an unknown region."""
  if not (np.isfinite(scale) and scale >= 0):
    raise ValueError(f"{scale_flag} {scale}: expected a finite scale >= 0 (0: the reference's "
                     "expression, 1: the driver's)")
  if animate not in ANIMATE:
    raise ValueError(f"{animate_flag} {animate!r}: expected one of {ANIMATE}")


def retarget(source: np.ndarray, driver: np.ndarray, motion: str = "relative",
             reference: str | int = "first", scale: float = 1.0, animate: str = "all"
             ) -> np.ndarray:
  """Target landmarks ``[T, 68, 2]`` for the source face ``[68, 2]`` from driver landmarks
  ``[T, 68, 2]`` (all in the same crop's pixels).

  Args:
    source: the source face's landmarks.
    driver: the driver's landmarks per frame.
    motion: ``relative`` (motion on the source's face) or ``absolute`` (the driver's landmarks;
      the controls below then act on the driver's reference frame instead of the source).
    reference: the driver frame motion is measured from: ``first``, ``auto``
      (``best_reference``) or an index.
    scale: multiplies the expression (displacement from the reference once the head motion is
      undone): 0 keeps the reference's expression, 1 carries the driver's, > 1 exaggerates it.
    animate: ``all``, ``pose`` (head motion only: the source's expression is kept) or
      ``expression`` (the head stays where the source's is).
  """
  if motion not in MOTIONS:
    raise ValueError(f"motion={motion!r}: expected one of {MOTIONS}")
  check_controls(scale, animate)
  driver = np.asarray(driver, np.float64)
  source = np.asarray(source, np.float64)
  ref_index = resolve_reference(reference, source, driver)
  first = driver[ref_index]
  if motion == "absolute":
    if scale == 1.0 and animate == "all":
      return driver.astype(np.float32)
    source = first  # the driver's own face shape: at scale 1 and `all`, exactly the driver
  s_a, r_a, _ = similarity(first[RIGID], source[RIGID])  # driver's reference frame -> source face
  c_first, c_src = first.mean(0), source.mean(0)
  carry_pose, carry_expression = animate in ("all", "pose"), animate in ("all", "expression")
  out = np.empty_like(driver)
  for t, frame in enumerate(driver):
    s_t, r_t, tr_t = similarity(first[RIGID], frame[RIGID])  # head motion since the reference
    undone = ((frame - tr_t) @ r_t) / s_t  # this frame with the head motion removed
    expression = (undone - first) * (scale if carry_expression else 0.0)
    if not carry_pose:
      s_t, r_t, tr_t = 1.0, np.eye(2), np.zeros(2)
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
