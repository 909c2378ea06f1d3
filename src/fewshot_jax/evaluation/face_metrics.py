"""Metrics that need a face model: identity similarity (CSIM) and landmark error (NME, AKD).

* **CSIM** is the cosine similarity of face-recognition embeddings of a generated frame and its
  ground truth (paper §4). The embedder is pluggable (``FaceEmbedder``, built by ``make_embedder``):
  ``dlib`` (the default) is dlib's 128-d ResNet descriptor from the ``face-recognition-models``
  package, which works offline; ``arcface`` is the paper's network (IR-SE50, ``arcface.py``), from
  weights converted once with ``convert-weights --kind arcface``. The two give numbers on different
  scales (dlib's is about 0.8 between two different people), so every report names the embedder
  (``csim_label``: "CSIM (ArcFace)" or "CSIM (dlib)"); only ArcFace's stands next to the paper's.
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
import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from fewshot_jax.file_digest import file_sha256
from fewshot_jax.prep.backends import (Face, LandmarkBackend, check_frame,
                                       face_recognition_models_dir)

LEFT_EYE_OUTER, RIGHT_EYE_OUTER = 36, 45


class FaceEmbedder(Protocol):
  """Maps a face (an RGB frame and the face's 68 landmarks in it) to an identity embedding."""

  name: str  # the network and its settings, recorded in eval.json
  label: str  # what tables and plots call it: "CSIM (<label>)"

  def embed(self, frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """A 1-D embedding of the face at ``landmarks`` (f32 ``[68, 2]``) in ``frame``."""
    ...

  def embed_many(self, frames: Sequence[np.ndarray],
                 landmarks: Sequence[np.ndarray]) -> np.ndarray:
    """``[N, D]`` embeddings, one per (frame, landmarks) pair: a network batches them."""
    ...


EMBEDDERS = ("dlib", "arcface")
_LABELS = {"dlib": "dlib", "arcface": "ArcFace"}


def csim_label(kind: str) -> str:
  """The CSIM column's name for embedder ``kind``: "CSIM (ArcFace)" or "CSIM (dlib)"."""
  if kind not in _LABELS:
    raise ValueError(f"CSIM embedder {kind!r}: expected one of {EMBEDDERS}")
  return f"CSIM ({_LABELS[kind]})"


def label_of(record: dict[str, object] | None) -> str | None:
  """The CSIM label of an eval.json's ``face_metrics`` record (None: no face metrics). Reports
  written before the embedder was pluggable used dlib's, and say so by its network's name."""
  if not record:
    return None
  if record.get("csim_label"):
    return str(record["csim_label"])
  name = str(record.get("csim", ""))
  return csim_label("dlib") if name.startswith("dlib") else f"CSIM ({name or 'unknown embedder'})"


def make_embedder(kind: str, arcface_weights: str | os.PathLike | None = None) -> FaceEmbedder:
  """The CSIM embedder ``kind`` (``EMBEDDERS``); ``arcface`` reads ``arcface_weights``.

  Raises:
    ValueError: an unknown kind, or arcface without weights (or weights for dlib).
    FileNotFoundError: naming a missing weights file.
  """
  csim_label(kind)
  if kind == "dlib":
    if arcface_weights:
      raise ValueError(f"ArcFace weights {os.fspath(arcface_weights)} given for the dlib embedder")
    return DlibFaceEmbedder()
  if not arcface_weights:
    raise ValueError("the arcface CSIM embedder needs its weights (convert-weights --kind arcface)")
  from fewshot_jax.evaluation.arcface import ArcFaceEmbedder  # pylint: disable=g-import-not-at-top
  return ArcFaceEmbedder(arcface_weights)


def embedder_record(kind: str, embedder: FaceEmbedder) -> dict[str, object]:
  """What eval.json says about the CSIM embedder: its kind, label, network and weights file."""
  path = getattr(embedder, "path", None)
  return {"csim": embedder.name, "csim_embedder": kind, "csim_label": csim_label(kind),
          "csim_weights": ({"path": path, "sha256": file_sha256(path)} if path else None)}


class DlibFaceEmbedder:
  """dlib's ResNet face descriptor (128-d), aligned with its 5-point predictor's chip.

  The 68 landmarks are reduced to the 5 points dlib's chip extractor expects (eye corners and the
  nose base), so no second detector pass is needed.
  """

  name = "dlib-resnet-v1"
  label = "dlib"

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

  def embed_many(self, frames: Sequence[np.ndarray],
                 landmarks: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([self.embed(f, p) for f, p in zip(frames, landmarks)])


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
  faces = [next(iter(backend.detect(real)), None) for real in reals]
  found = [i for i, face in enumerate(faces) if face is not None]
  embs: list[np.ndarray | None] = [None] * len(faces)
  if embedder is not None and found:
    got = embedder.embed_many([reals[i] for i in found], [faces[i].landmarks for i in found])
    for i, e in zip(found, got):
      embs[i] = e
  return [Reference(face, emb) for face, emb in zip(faces, embs)]


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
  usable = [i for i, ref in enumerate(refs) if ref.face is not None]
  reference[usable] = True
  if embedder is not None and usable:
    # Both faces are aligned by the ground truth's landmarks: in self-reenactment that is where
    # the generated face must be, so CSIM does not depend on detecting it.
    embs = embedder.embed_many([fakes[i] for i in usable], [refs[i].face.landmarks for i in usable])
    for i, e in zip(usable, embs):
      csim[i] = cosine(e, refs[i].embedding)
  for i in usable:
    fake, ref = fakes[i], refs[i]
    got = _face_near(backend, fake, ref.face.box)
    if got is None:
      continue
    detected[i] = True
    nme[i], akd[i] = landmark_error(got.landmarks, ref.face.landmarks)
  return FaceScores(csim=csim, nme=nme, akd=akd, detected=detected, reference=reference)
