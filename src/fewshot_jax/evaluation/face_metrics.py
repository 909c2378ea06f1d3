"""Metrics that need a face model: identity similarity (CSIM) and landmark error (NME, AKD).

* **CSIM** is the cosine similarity of face-recognition embeddings of a generated frame and its
  ground truth (paper §4). The embedder is pluggable (``FaceEmbedder``); the shipped one is dlib's
  128-d ResNet descriptor from the ``face-recognition-models`` package, which works offline. An
  ArcFace embedder (the paper's choice) plugs in where its weights exist.
* **Landmark error** runs a landmark backend on both frames. **NME** is the mean point-to-point
  distance divided by the ground truth's inter-ocular distance (outer eye corners, points 36 and
  45); **AKD** is the mean distance in pixels. A generated frame in which no face is found has no
  landmark error; the detection rate is reported beside it, since dropping those frames silently
  would flatter a bad model.

The face is found in the ground truth first; in the generated frame, the detection overlapping
that box is used (none counts as not found), so a generated frame is judged where the face should
be.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from fewshot_jax.prep.backends import (Face, LandmarkBackend, check_frame,
                                       face_recognition_models_dir)

LEFT_EYE_OUTER, RIGHT_EYE_OUTER = 36, 45


class FaceEmbedder(Protocol):
  """Maps a face (an RGB frame and the face's 68 landmarks in it) to an identity embedding."""

  name: str

  def embed(self, frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """A 1-D embedding of the face at ``landmarks`` (f32 ``[68, 2]``) in ``frame``."""
    ...


class DlibFaceEmbedder:
  """dlib's ResNet face descriptor (128-d), aligned with its 5-point predictor's chip.

  The 68 landmarks are reduced to the 5 points dlib's chip extractor expects (eye corners and the
  nose base), so no second detector pass is needed.
  """

  name = "dlib-resnet-v1"

  def __init__(self, model_path: str | None = None, jitter: int = 0):
    import dlib  # pylint: disable=g-import-not-at-top

    path = model_path or str(face_recognition_models_dir() /
                             "dlib_face_recognition_resnet_model_v1.dat")
    self._net = dlib.face_recognition_model_v1(path)
    self._dlib = dlib
    self.jitter = jitter

  def embed(self, frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    frame = check_frame(frame)
    p = np.asarray(landmarks, np.float64) - 0.5  # dlib's integer pixel indices
    five = [p[45], p[42], p[36], p[39], p[33]]  # dlib's 5-point order: eyes' corners, nose base
    box = self._dlib.rectangle(int(p[:, 0].min()), int(p[:, 1].min()),
                               int(p[:, 0].max()), int(p[:, 1].max()))
    shape = self._dlib.full_object_detection(
        box, [self._dlib.point(int(round(x)), int(round(y))) for x, y in five])
    return np.asarray(self._net.compute_face_descriptor(frame, shape, self.jitter), np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


@dataclasses.dataclass
class FaceScores:
  """Per-pair results. NME and AKD are ``nan`` where no face was found in the generated frame;
  CSIM is ``nan`` only when no embedder was given."""

  csim: np.ndarray
  nme: np.ndarray
  akd: np.ndarray
  detected: np.ndarray  # bool: a face was found in the generated frame (near the reference)
  reference: np.ndarray  # bool: a face was found in the ground-truth frame

  def summary(self) -> dict[str, float]:
    """Means over the usable pairs; ``face_detected`` is over pairs with a reference."""
    def mean(x: np.ndarray) -> float:
      return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")

    ref = self.reference
    return {
        "csim": mean(self.csim), "nme": mean(self.nme), "akd": mean(self.akd),
        "face_detected": float(self.detected[ref].mean()) if ref.any() else float("nan"),
        "reference_found": float(ref.mean()) if len(ref) else float("nan"),
    }


def landmark_error(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
  """``(NME, AKD)`` of landmarks ``[68, 2]``: mean distance over the inter-ocular distance, and
  mean distance in pixels."""
  d = np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(truth, np.float64), axis=-1)
  iod = np.linalg.norm(truth[RIGHT_EYE_OUTER] - truth[LEFT_EYE_OUTER])
  return float(d.mean() / max(iod, 1e-6)), float(d.mean())


def _face_near(backend: LandmarkBackend, frame: np.ndarray, box: np.ndarray):
  """The detected face overlapping ``box`` most (or None)."""
  from fewshot_jax.prep.crop import box_iou  # pylint: disable=g-import-not-at-top

  faces = backend.detect(frame)
  if not faces:
    return None
  best = max(faces, key=lambda f: box_iou(f.box, box))
  return best if box_iou(best.box, box) > 0.1 else None


@dataclasses.dataclass
class Reference:
  """What a ground-truth frame gives every generated frame judged against it: its face (or None)
  and that face's embedding. Computed once per target, however many K and methods are scored."""

  face: Face | None
  embedding: np.ndarray | None


def references(reals: Sequence[np.ndarray], backend: LandmarkBackend,
               embedder: FaceEmbedder | None) -> list[Reference]:
  """Detects the face in each ground-truth frame (the first found) and embeds it."""
  out = []
  for real in reals:
    truth = backend.detect(real)
    if not truth:
      out.append(Reference(None, None))
      continue
    face = truth[0]
    emb = embedder.embed(real, face.landmarks) if embedder is not None else None
    out.append(Reference(face, emb))
  return out


def face_scores(
    fakes: Sequence[np.ndarray],
    reals: Sequence[np.ndarray] | None,
    backend: LandmarkBackend,
    embedder: FaceEmbedder | None,
    refs: Sequence[Reference] | None = None,
) -> FaceScores:
  """CSIM, NME and AKD of each generated frame against its ground truth (uint8 RGB frames).

  ``refs`` (from ``references``) stands in for ``reals`` when the same targets are scored many
  times. A ground-truth frame in which the backend finds no face has no reference: its pair is
  left out of every face metric and counted in ``reference_found`` (an evaluation over thousands
  of frames goes on, and the summary says how many were usable).
  """
  if refs is None:
    refs = references(reals, backend, embedder)
  if len(refs) != len(fakes):
    raise ValueError(f"{len(fakes)} generated frames against {len(refs)} ground-truth frames")
  n = len(fakes)
  csim, nme, akd = (np.full(n, np.nan) for _ in range(3))
  detected = np.zeros(n, bool)
  reference = np.zeros(n, bool)
  for i, (fake, ref) in enumerate(zip(fakes, refs)):
    if ref.face is None:
      continue
    reference[i] = True
    if embedder is not None:
      # Both faces are aligned by the ground truth's landmarks: in self-reenactment that is where
      # the generated face must be, so CSIM does not depend on detecting it.
      csim[i] = cosine(embedder.embed(fake, ref.face.landmarks), ref.embedding)
    got = _face_near(backend, fake, ref.face.box)
    if got is None:
      continue
    detected[i] = True
    nme[i], akd[i] = landmark_error(got.landmarks, ref.face.landmarks)
  return FaceScores(csim=csim, nme=nme, akd=akd, detected=detected, reference=reference)
