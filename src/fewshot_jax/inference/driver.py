"""The driving sequence: landmarks per frame, in the pixels of a training-style face crop.

A driver is either a video (faces found per frame by a landmark backend) or a ``.npy`` of landmarks
``[T, 68, 2]`` already in crop pixels. For a video:

* each frame's face is the detection that overlaps the last tracked face most (at first face
  ``face`` in ``largest_first`` order, 0 the largest: ``--driver-face``), and only if it overlaps
  it enough, so a second person in the shot does not steal the track;
* a frame with no face holds the last landmarks (frames before the first detection take the first
  one), and the count of such frames is reported;
* the crop follows data prep: a square around the landmarks, enlarged and smoothed over time;
* landmarks are then smoothed over time (Gaussian, ``smooth_sigma`` frames) to remove the
  detector's frame-to-frame jitter, which the generator would otherwise turn into flicker.

Only landmarks stay in memory; the driver's crops, for the side-by-side layout, are re-read and cut
frame by frame while the output is written (``iter_driver_crops``).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterator

import numpy as np

from fewshot_jax.inference import motion as motion_lib
from fewshot_jax.inference.faces import NoFaceError, largest_first
from fewshot_jax.prep import crop as crop_lib
from fewshot_jax.prep import video as video_lib
from fewshot_jax.prep.backends import Face, LandmarkBackend
from fewshot_jax.progress import Progress


@dataclasses.dataclass
class Driver:
  """A driving sequence.

  Attributes:
    landmarks: f32 ``[T, 68, 2]`` in crop pixels (``image_size`` square).
    fps: frames per second of the output.
    held: frames where no face was found and the last landmarks were held.
    path: the driver file.
    boxes: for a video, the crop box ``(x0, y0, x1, y1)`` of every frame in its own pixels.
  """

  landmarks: np.ndarray
  fps: float
  held: int
  path: str
  boxes: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.landmarks)


MIN_TRACK_IOU = 0.3  # as data prep's track linking (prep.crop.link_tracks)


def _pick(faces: list[Face], previous: Face | None, start: int = 0) -> Face | None:
  """The face continuing the track: face ``start`` (``largest_first`` order, 0 the largest) of
  the first frame showing that many faces, then the one overlapping the last tracked face most.
  A frame where only other faces are seen counts as a frame without a face."""
  if not faces:
    return None
  if previous is None:
    return largest_first(faces)[start] if len(faces) > start else None
  best = max(faces, key=lambda f: crop_lib.box_iou(f.box, previous.box))
  return best if crop_lib.box_iou(best.box, previous.box) >= MIN_TRACK_IOU else None


def load_driver(
    path: str | os.PathLike,
    backend: LandmarkBackend | None,
    image_size: int,
    fps: float = 25.0,
    smooth_sigma: float = 1.0,
    enlarge: float = 1.8,
    show_progress: bool = True,
    face: int = 0,
) -> Driver:
  """Reads a driver video (landmarks found per frame) or a ``.npy`` of crop-pixel landmarks.

  Args:
    path: ``.npy`` (``[T, 68, 2]`` float, in ``image_size`` crop pixels) or any video PyAV reads.
    backend: the landmark backend for a video (unused for ``.npy``).
    image_size: the model's crop size.
    fps: the frame rate of a ``.npy`` driver (a video keeps its own).
    smooth_sigma: temporal smoothing of the landmarks, in frames (0: none).
    enlarge: crop side over landmark box side, as in data prep.
    show_progress: print a progress line while detecting.
    face: for a video, the face the track starts from (0: the largest), in the first frame that
      shows more than ``face`` faces.

  Raises:
    ValueError: a ``.npy`` of the wrong shape, with non-finite values, or with landmarks outside
      the crop (in a video's pixels, say).
    fewshot_jax.prep.video.VideoError: an unreadable video (the message names the file).
    NoFaceError: a video with no face in any frame (or no frame with more than ``face`` faces).
  """
  path = pathlib.Path(path)
  if path.suffix == ".npy":
    if not path.is_file():
      raise FileNotFoundError(f"driver {path}: no such file")
    points = np.load(path, allow_pickle=False)
    if points.ndim != 3 or points.shape[1:] != (68, 2) or len(points) == 0:
      raise ValueError(f"driver {path}: expected landmarks [T, 68, 2], found {points.shape}")
    if not np.isfinite(points).all():
      bad = int(np.flatnonzero(~np.isfinite(points).all(axis=(1, 2)))[0])
      raise ValueError(f"driver {path}: frame {bad} has non-finite landmarks")
    from fewshot_jax.landmarks import check_in_crop  # pylint: disable=g-import-not-at-top
    check_in_crop(points, image_size, f"driver {path}")
    return Driver(motion_lib.smooth(points, smooth_sigma), float(fps), 0, str(path))
  if backend is None:
    raise ValueError(f"driver {path}: a video driver needs a landmark backend")

  total = video_lib.count_frames(path)
  progress = Progress(total, "driver landmarks", "frames") if show_progress else None
  found: list[np.ndarray | None] = []
  previous = None
  video_fps = fps
  missing = most = 0
  for _, frame, video_fps in video_lib.iter_frames(path):
    faces = backend.detect(frame)
    most = max(most, len(faces))
    tracked = _pick(faces, previous, face)
    found.append(None if tracked is None else tracked.landmarks)
    previous = tracked or previous
    missing += tracked is None
    if progress:
      progress.update(1, f"no face in {missing}")
  detected = [i for i, p in enumerate(found) if p is not None]
  if not detected and most:
    raise NoFaceError(f"driver {path}: --driver-face {face} asks for face {face} (0 is the "
                      f"largest), but at most {most} face{'s were' if most > 1 else ' was'} found in "
                      f"one of its {len(found)} frames by the {backend.name} landmark backend "
                      f"(expected --driver-face 0{f' to {most - 1}' if most > 1 else ''})")
  if not detected:
    raise NoFaceError(f"driver {path}: no face found in any of its {len(found)} frames by the "
                      f"{backend.name} landmark backend")
  first = found[detected[0]]
  filled, last = [], first
  for p in found:
    last = p if p is not None else last
    filled.append(last)
  points = np.stack(filled).astype(np.float64)
  boxes = crop_lib.crop_boxes(points, enlarge)
  side = boxes[:, 2] - boxes[:, 0]
  crop_points = (points - boxes[:, None, :2]) * (image_size / side)[:, None, None]
  return Driver(motion_lib.smooth(crop_points, smooth_sigma), video_fps or fps,
                len(found) - len(detected), str(path), boxes)


def count_driver_frames(path: str | os.PathLike) -> int | None:
  """The driver's frame count without detecting faces (``None`` for a ``.npy`` that is not
  ``[T, ...]``: ``load_driver`` says what is wrong with it), so a frame index given as the
  reference is checked before a checkpoint is loaded or a face fitted."""
  path = pathlib.Path(path)
  if path.suffix == ".npy":
    try:
      points = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
      return None
    return int(points.shape[0]) if points.ndim >= 1 else None
  return video_lib.count_frames(path)


def iter_driver_crops(driver: Driver, image_size: int) -> Iterator[np.ndarray]:
  """The driver video's frames cut with its crop boxes, one ``[S, S, 3]`` uint8 at a time."""
  if driver.boxes is None:
    raise ValueError(f"driver {driver.path} is a landmark file: it has no frames to show")
  for i, frame, _ in video_lib.iter_frames(driver.path):
    if i >= len(driver.boxes):
      return
    yield crop_lib.crop_frame(frame, driver.boxes[i], np.zeros((68, 2)), image_size)[0]
