"""The evaluation metrics on known cases: identical images, shifted images, different faces."""

from __future__ import annotations

import dlib  # noqa: F401  (the dev extra pins it: missing is a failure, not a skip)
import numpy as np
import pytest
import skimage.data as skdata
import skimage.metrics as skmetrics

from test_prep_backends import carphone_path
from fewshot_jax.evaluation import face_metrics, metrics
from fewshot_jax.prep.backends import make_backend
from fewshot_jax.prep.video import read_video


@pytest.fixture(scope="module")
def backend():
  return make_backend("dlib")


@pytest.fixture(scope="module")
def embedder():
  return face_metrics.DlibFaceEmbedder()


@pytest.fixture(scope="module")
def carphone():
  return read_video(carphone_path())[0]


def _shift(image: np.ndarray, dx: int) -> np.ndarray:
  """``image`` moved right by ``dx`` pixels, the left edge repeated."""
  return np.concatenate([np.repeat(image[:, :1], dx, axis=1), image[:, :-dx]], axis=1)


def test_image_metrics_on_identical_and_shifted_images():
  face = skdata.astronaut()[:256, 96:352]
  f01 = face.astype(np.float32) / 255
  assert float(metrics.ssim(f01, f01)) == pytest.approx(1.0, abs=1e-6)
  assert float(metrics.psnr(f01, f01)) == np.inf
  assert float(metrics.l1(f01, f01)) == 0.0
  scores = []
  for dx in (1, 2, 4, 8):
    moved = _shift(face, dx).astype(np.float32) / 255
    scores.append(float(metrics.ssim(f01, moved)))
    want = skmetrics.structural_similarity(f01, moved, channel_axis=-1, gaussian_weights=True,
                                           sigma=1.5, use_sample_covariance=False, data_range=1.0)
    assert scores[-1] == pytest.approx(want, abs=1e-3)
    mse = np.mean((f01 - moved) ** 2)
    assert float(metrics.psnr(f01, moved)) == pytest.approx(10 * np.log10(1 / mse), rel=1e-5)
    assert float(metrics.l1(f01, moved)) == pytest.approx(np.abs(f01 - moved).mean(), rel=1e-5)
  assert scores == sorted(scores, reverse=True) and scores[0] < 1.0


def test_landmark_error_follows_a_known_shift(backend, carphone):
  frame = carphone[0]
  same = face_metrics.face_scores([frame], [frame], backend, None)
  assert same.nme[0] == 0.0 and same.akd[0] == 0.0 and same.detected.all()
  moved = face_metrics.face_scores([_shift(frame, 6)], [frame], backend, None)
  assert moved.detected.all()
  # dlib's landmarks move with the face: about 6 px, to within its own jitter.
  assert moved.akd[0] == pytest.approx(6.0, abs=1.5)
  truth = backend.detect(frame)[0].landmarks
  iod = np.linalg.norm(truth[45] - truth[36])
  assert moved.nme[0] == pytest.approx(moved.akd[0] / iod, rel=1e-6)
  # A frame with no face at all: no landmark error, and the detection rate says so.
  blank = face_metrics.face_scores([np.zeros_like(frame)], [frame], backend, None)
  assert not blank.detected.any() and np.isnan(blank.nme[0])
  assert blank.summary()["face_detected"] == 0.0
  # No face in the ground truth: the pair has no reference and is left out, not fatal.
  no_ref = face_metrics.face_scores([frame, frame], [np.zeros_like(frame), frame], backend, None)
  assert no_ref.reference.tolist() == [False, True] and np.isnan(no_ref.akd[0])
  assert no_ref.summary()["reference_found"] == 0.5 and no_ref.summary()["akd"] == 0.0


def test_csim_tells_the_same_person_from_a_different_one(backend, embedder, carphone):
  # The astronaut, cut to the carphone clip's frame size around her face.
  other = np.ascontiguousarray(skdata.astronaut()[20:164, 140:316])
  assert other.shape == carphone[0].shape
  identical = face_metrics.face_scores([carphone[0]], [carphone[0]], backend, embedder)
  assert identical.csim[0] == pytest.approx(1.0, abs=1e-5)
  def embedding(frame):
    return embedder.embed(frame, backend.detect(frame)[0].landmarks)

  ref = embedding(carphone[0])
  same = [face_metrics.cosine(embedding(carphone[i]), ref) for i in (30, 60, 90)]
  different = face_metrics.cosine(embedding(other), ref)
  # Measured: 0.95-0.98 for the same speaker, 0.81 for the astronaut.
  assert min(same) > different + 0.1, (same, different)
