"""The ``fan`` landmark backend: face-alignment's S3FD detector and 2DFAN4 network.

This is the detector the paper used. We take the two networks and S3FD's box decoding from
face-alignment 1.5.0 and do the rest here, for two reasons:

  * face-alignment maps heatmap peaks back to the image through ``int32`` (truncating every landmark
    to a whole pixel, a bias of about half a pixel); we keep the sub-pixel estimate in float.
  * Coordinates follow fewshot_jax's convention (pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``),
    and the crop fed to FAN is one exact affine warp, so heatmap cell ``(r, c)`` maps back to a
    known continuous image point. ``tests/test_prep_fan.py`` checks that mapping end to end.

Weights: ``s3fd-619a316812.pth`` and ``2DFAN4-11f355bf06.pth.tar`` in
``torch.hub.get_dir()/checkpoints/`` (``$TORCH_HOME/hub/checkpoints``), the same place and names
face-alignment uses, so a cache filled by face-alignment is reused. When a file is absent it is
downloaded from face-alignment's URL; when that fails (no network), the error names both files,
their URLs and the folder to put them in.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import pathlib
import urllib.parse

import numpy as np

from fewshot_jax.file_digest import file_sha256
from fewshot_jax.prep.backends import NUM_LANDMARKS, Face, check_frame

FAN_INPUT = 256  # FAN's input side, pixels
HEATMAP = 64  # FAN's heatmap side
# face-alignment's crop recipe for S3FD boxes: the crop side is 200 * (w + h) / 195 and its centre
# sits 12% of the box height above the box centre (S3FD boxes run low on the chin).
_SCALE_UNIT = 200.0
_REFERENCE_SCALE = 195.0
_CENTER_Y_OFFSET = 0.12
_NMS_IOU = 0.3


@dataclasses.dataclass(frozen=True)
class WeightFile:
  role: str  # what the file is, for error messages
  url: str

  @property
  def name(self) -> str:
    return pathlib.PurePosixPath(urllib.parse.urlparse(self.url).path).name


def weight_files() -> tuple[WeightFile, WeightFile]:
  """The detector's and the landmark network's weight files, as the installed face-alignment names
  them (so a cache it filled is found under the same names)."""
  from face_alignment import api  # pylint: disable=g-import-not-at-top
  from face_alignment.detection.sfd import sfd_detector  # pylint: disable=g-import-not-at-top
  return (WeightFile("S3FD face detector", sfd_detector.models_urls["s3fd"]),
          WeightFile("2DFAN4 landmark network", api.models_urls["2DFAN-4"]))


def checkpoints_dir() -> pathlib.Path:
  """Where torch hub (and face-alignment) keep downloaded weights."""
  import torch  # pylint: disable=g-import-not-at-top
  return pathlib.Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights(
    folder: str | pathlib.Path | None = None, download: bool = True
) -> dict[str, pathlib.Path]:
  """Paths of both weight files, downloading any that are missing when ``download`` is set.

  Raises:
    FileNotFoundError: a file is missing and could not be downloaded; the message names both files,
      their URLs and the folder, since an offline user has to fetch them by hand.
  """
  import torch  # pylint: disable=g-import-not-at-top
  folder = pathlib.Path(folder) if folder is not None else checkpoints_dir()
  files = weight_files()
  failures = []
  for f in files:
    path = folder / f.name
    if path.is_file() or not download:
      continue
    try:
      folder.mkdir(parents=True, exist_ok=True)
      # Downloads to a temporary file and renames it into place, so a failure leaves nothing.
      torch.hub.download_url_to_file(f.url, str(path), progress=False)
    except Exception as e:  # pylint: disable=broad-except  (network errors come in many types)
      failures.append(f"{f.name}: {type(e).__name__}: {e}")
  missing = [f for f in files if not (folder / f.name).is_file()]
  if missing:
    lines = "\n".join(f"  {f.name}  ({f.role}; from {f.url})" for f in files)
    why = ("download failed:\n  " + "\n  ".join(failures)) if failures else "downloads are off"
    raise FileNotFoundError(
        f"the fan backend needs two weight files in {folder}:\n{lines}\n"
        f"missing: {', '.join(f.name for f in missing)}; {why}.\n"
        f"Copy them there (or set TORCH_HOME so that $TORCH_HOME/hub/checkpoints holds them), "
        f"or use --backend dlib, which works offline.")
  return {"detector": folder / files[0].name, "landmarks": folder / files[1].name}


def _load_state_dict(module, path: pathlib.Path, role: str, device: str) -> None:
  """Loads ``path`` into ``module``, turning torch's errors into ones that name the file."""
  import torch  # pylint: disable=g-import-not-at-top
  try:
    state = torch.load(path, map_location=device, weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path}: not a readable PyTorch state dict for the {role} ({e})") from e
  if isinstance(state, dict) and "state_dict" in state:
    state = state["state_dict"]
  try:
    module.load_state_dict(state)
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).strip().splitlines()
    raise ValueError(
        f"{path}: not the {role} weights face-alignment "
        f"{importlib.metadata.version('face-alignment')} expects "
        f"({first[0] if first else type(e).__name__} ...)") from e
  module.to(device).eval()


def _file_digest(path: pathlib.Path) -> str:
  return file_sha256(path)[:12]


def crop_transform(box: np.ndarray) -> tuple[np.ndarray, float]:
  """The square FAN crop for a detector box: its centre ``(x, y)`` and side, in image pixels."""
  x0, y0, x1, y1 = (float(v) for v in box[:4])
  centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2 - (y1 - y0) * _CENTER_Y_OFFSET])
  side = _SCALE_UNIT * ((x1 - x0) + (y1 - y0)) / _REFERENCE_SCALE
  return centre, side


def warp_crop(frame: np.ndarray, centre: np.ndarray, side: float) -> np.ndarray:
  """Samples the square ``[cx - side/2, cx + side/2] x [...]`` at ``FAN_INPUT``² (bilinear).

  The matrix maps a crop pixel index to an image pixel index: crop pixel ``u`` has its centre at
  continuous ``u + 0.5``, which is image continuous ``cx - side/2 + (u + 0.5) * side / FAN_INPUT``,
  i.e. image index that minus one half. Outside the frame is black, as in face-alignment.
  """
  import cv2  # pylint: disable=g-import-not-at-top
  s = side / FAN_INPUT
  offset = centre - side / 2 + 0.5 * s - 0.5
  matrix = np.array([[s, 0, offset[0]], [0, s, offset[1]]], np.float64)
  return cv2.warpAffine(frame, matrix, (FAN_INPUT, FAN_INPUT),
                        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def decode_heatmaps(
    heatmaps: np.ndarray, centre: np.ndarray, side: float
) -> tuple[np.ndarray, np.ndarray]:
  """Landmarks ``[68, 2]`` in image pixels and per-point peak values ``[68]``.

  The peak cell ``(r, c)`` covers heatmap continuous ``[c, c+1) x [r, r+1)``; its centre moves a
  quarter cell towards the larger neighbour (the usual sub-pixel refinement), then maps linearly to
  the image: heatmap ``32`` is the crop centre, one cell is ``side / 64`` pixels.
  """
  n, h, w = heatmaps.shape
  flat = heatmaps.reshape(n, h * w)
  idx = flat.argmax(axis=1)
  peak = flat[np.arange(n), idx]
  r, c = np.divmod(idx, w)
  point = np.stack([c, r], axis=1).astype(np.float64) + 0.5
  inner = (r > 0) & (r < h - 1) & (c > 0) & (c < w - 1)
  k = np.nonzero(inner)[0]
  dx = heatmaps[k, r[k], c[k] + 1] - heatmaps[k, r[k], c[k] - 1]
  dy = heatmaps[k, r[k] + 1, c[k]] - heatmaps[k, r[k] - 1, c[k]]
  point[k] += 0.25 * np.sign(np.stack([dx, dy], axis=1))
  image = centre + (point - w / 2) * (side / w)
  return image.astype(np.float32), peak.astype(np.float32)


class FanBackend:
  """S3FD + 2DFAN4 from face-alignment, with float sub-pixel landmarks.

  Args:
    device: ``cpu``, ``cuda`` or ``cuda:N``; by default CUDA when torch sees a GPU.
    flip: also run FAN on the mirrored crop and average the heatmaps (face-alignment's default;
      about 2x the landmark cost, steadier points).
    min_score: S3FD boxes scoring below this are dropped (face-alignment's threshold is 0.5).
    weights_dir: the folder holding the two weight files; by default torch hub's checkpoints.
    download: fetch missing weight files from face-alignment's URLs.
    threads: torch intra-op threads; set it to cores / workers when running several processes.
    max_faces: landmarks are found for at most this many boxes per frame, the largest. Data prep
      needs the main face and whether a second one exists; an unbounded count would let a noisy
      frame (or untrained weights, thousands of boxes) run FAN thousands of times.
  """

  name = "fan"

  def __init__(
      self,
      device: str | None = None,
      flip: bool = True,
      min_score: float = 0.5,
      weights_dir: str | pathlib.Path | None = None,
      download: bool = True,
      threads: int | None = None,
      max_faces: int = 4,
  ):
    try:
      import torch  # pylint: disable=g-import-not-at-top
      from face_alignment.detection.sfd import detect as sfd_detect  # pylint: disable=g-import-not-at-top
      from face_alignment.detection.sfd import net_s3fd  # pylint: disable=g-import-not-at-top
      from face_alignment import models  # pylint: disable=g-import-not-at-top
      from face_alignment import utils as fa_utils  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ModuleNotFoundError(
          "the fan backend needs face-alignment and torch: pip install -e '.[landmarks]' "
          "(face-alignment==1.5.0, torch==2.13.0)") from e
    if threads is not None:
      torch.set_num_threads(threads)
    self._torch, self._sfd_detect, self._fa_utils = torch, sfd_detect, fa_utils
    self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if max_faces < 1:
      raise ValueError(f"max_faces={max_faces}: expected >= 1")
    self.flip, self.min_score, self.max_faces = flip, min_score, max_faces
    paths = resolve_weights(weights_dir, download=download)
    self._detector = net_s3fd.s3fd()
    _load_state_dict(self._detector, paths["detector"], "S3FD face detector", self.device)
    self._fan = models.FAN(4)
    _load_state_dict(self._fan, paths["landmarks"], "2DFAN4 landmark network", self.device)
    self.version = (
        f"face-alignment {importlib.metadata.version('face-alignment')} "
        f"s3fd:{_file_digest(paths['detector'])} 2dfan4:{_file_digest(paths['landmarks'])} "
        f"flip={int(flip)} min_score={min_score} max_faces={max_faces}")

  def detect_boxes(self, frame: np.ndarray) -> np.ndarray:
    """S3FD boxes ``float32 [N, 5]`` as ``(x0, y0, x1, y1, score)``, after NMS and ``min_score``,
    the ``max_faces`` largest (ties: highest score)."""
    frame = check_frame(frame)
    boxes = self._sfd_detect.detect(self._detector, frame, device=self.device)[0]
    boxes = np.asarray(boxes, np.float32).reshape(-1, 5)
    if len(boxes):
      boxes = boxes[self._sfd_detect.nms(boxes, _NMS_IOU)].reshape(-1, 5)
      boxes = boxes[boxes[:, 4] >= self.min_score]
      size = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
      boxes = boxes[np.lexsort((-boxes[:, 4], -size))[:self.max_faces]]
    return boxes

  def landmarks(self, frame: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FAN landmarks ``[N, 68, 2]`` and peak values ``[N, 68]`` for given boxes ``[N, >=4]``."""
    frame = check_frame(frame)
    boxes = np.asarray(boxes, np.float32).reshape(-1, np.shape(boxes)[-1] if len(boxes) else 4)
    if not len(boxes):
      return np.zeros((0, NUM_LANDMARKS, 2), np.float32), np.zeros((0, NUM_LANDMARKS), np.float32)
    torch = self._torch
    crops = [crop_transform(b) for b in boxes]
    inputs = np.stack([warp_crop(frame, c, s) for c, s in crops]).astype(np.float32) / 255.0
    x = torch.from_numpy(inputs.transpose(0, 3, 1, 2)).to(self.device)
    with torch.no_grad():
      heat = self._last(self._fan(x))
      if self.flip:
        mirrored = self._last(self._fan(torch.flip(x, dims=[3])))
        heat = heat + self._fa_utils.flip(mirrored, is_label=True)
    heat = heat.float().cpu().numpy()
    points, peaks = zip(*(decode_heatmaps(h, c, s) for h, (c, s) in zip(heat, crops)))
    return np.stack(points), np.stack(peaks)

  @staticmethod
  def _last(out):
    return out[-1] if isinstance(out, (list, tuple)) else out

  def detect(self, frame: np.ndarray) -> list[Face]:
    boxes = self.detect_boxes(frame)
    points, _ = self.landmarks(frame, boxes)
    faces = [Face(box=b[:4].copy(), landmarks=p, confidence=float(b[4]))
             for b, p in zip(boxes, points)]
    faces.sort(key=lambda f: (-f.size, -f.confidence))
    return faces
