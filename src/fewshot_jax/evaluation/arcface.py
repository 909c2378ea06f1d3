"""ArcFace (IR-SE50) face embeddings: the identity network behind the paper's CSIM.

The paper's CSIM is the cosine similarity of ArcFace embeddings; dlib's descriptor gives numbers on
another scale (0.8 between two different people, where ArcFace gives about 0.1), so a CSIM is
comparable with the paper's only when it comes from this network.

* **Weights.** The common PyTorch checkpoint of IR-SE50 (``model_ir_se50.pth``, the InsightFace
  PyTorch port's ``Backbone(50, mode='ir_se')``: ``input_layer``, ``body.N.res_layer`` /
  ``shortcut_layer``, ``output_layer``) is converted once by ``fewshot-jax convert-weights --kind
  arcface`` into safetensors (tensors only, names kept, shapes checked, tagged with ``KIND``).
  No weights ship with this build.
* **The network** is written here as plain functions of a ``{name: array}`` dict, in NHWC, with
  batch norm folded into a per-channel scale and shift (inference only).
* **Alignment.** The 68 landmarks give the 5 points ArcFace was trained on (the eyes' centres, the
  nose tip, the mouth's corners); a similarity transform (least squares, no reflection) maps them
  onto ArcFace's 112×112 template, and the frame is warped with it (bilinear).
* **Input.** That port trained and evaluated on BGR crops (its data loaders decode with OpenCV),
  scaled to [-1, 1]; ``channels='bgr'`` feeds it that way. The embedding is L2-normalised (512-d).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
from PIL import Image

from fewshot_jax.weight_files import check_shapes, save_tagged

SIZE = 112
FEATURES = 512
KIND = "arcface-ir-se50"
_BN_EPS = 1e-5
_SE_REDUCTION = 16
# (in channels, depth, units) of IR-50's four stages; the first unit of each has stride 2.
STAGES = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))
_FINAL = 7  # 112 / 2**4: the spatial side the output layer flattens

# ArcFace's 112×112 template (OpenCV's convention: pixel centres at integers), in the image's
# left-to-right order: the eye on the image's left, the other eye, nose tip, mouth corners.
TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                     [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)


def units() -> list[tuple[int, int, int]]:
  """``(in channels, depth, stride)`` of every body unit, in the checkpoint's ``body.N`` order."""
  out = []
  for cin, depth, n in STAGES:
    out.append((cin, depth, 2))
    out.extend((depth, depth, 1) for _ in range(n - 1))
  return out


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
  return {f"{prefix}.{f}": (c,) for f in ("weight", "bias", "running_mean", "running_var")}


def expected_shapes() -> dict[str, tuple[int, ...]]:
  """The checkpoint's tensors (PyTorch names and layouts; conv ``[out, in, kh, kw]``)."""
  shapes = {"input_layer.0.weight": (64, 3, 3, 3), **_bn("input_layer.1", 64),
            "input_layer.2.weight": (64,)}
  for i, (cin, depth, _) in enumerate(units()):
    p = f"body.{i}"
    if cin != depth:
      shapes[f"{p}.shortcut_layer.0.weight"] = (depth, cin, 1, 1)
      shapes.update(_bn(f"{p}.shortcut_layer.1", depth))
    shapes.update(_bn(f"{p}.res_layer.0", cin))
    shapes[f"{p}.res_layer.1.weight"] = (depth, cin, 3, 3)
    shapes[f"{p}.res_layer.2.weight"] = (depth,)
    shapes[f"{p}.res_layer.3.weight"] = (depth, depth, 3, 3)
    shapes.update(_bn(f"{p}.res_layer.4", depth))
    shapes[f"{p}.res_layer.5.fc1.weight"] = (depth // _SE_REDUCTION, depth, 1, 1)
    shapes[f"{p}.res_layer.5.fc2.weight"] = (depth, depth // _SE_REDUCTION, 1, 1)
  shapes.update(_bn("output_layer.0", 512))
  shapes["output_layer.3.weight"] = (FEATURES, 512 * _FINAL * _FINAL)
  shapes["output_layer.3.bias"] = (FEATURES,)
  shapes.update(_bn("output_layer.4", FEATURES))
  return shapes


def _check(flat: Mapping[str, Any], where: str) -> None:
  check_shapes(flat, expected_shapes(), where, "IR-SE50 ArcFace weights")


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """An IR-SE50 ``.pth`` state dict -> safetensors (``num_batches_tracked`` and a head dropped).

  A ``module.`` prefix (a checkpoint saved from ``DataParallel``) is removed.

  Raises:
    FileNotFoundError / ValueError: naming ``src`` (missing, unreadable, or another network).
  """
  from fewshot_jax.torch_weights import read_state_dict, to_numpy  # pylint: disable=g-import-not-at-top

  arrays = {k.removeprefix("module."): to_numpy(v) for k, v in read_state_dict(src).items()}
  _check(arrays, os.fspath(src))
  save_weights(dst, {k: arrays[k] for k in expected_shapes()})


def save_weights(path: str | os.PathLike, flat: Mapping[str, np.ndarray]) -> None:
  """Writes the network's tensors as safetensors (atomically), tagged with ``KIND``."""
  save_tagged(path, flat, expected_shapes(), KIND, "IR-SE50 ArcFace weights")


def _fold(flat: Mapping[str, np.ndarray], prefix: str) -> tuple[np.ndarray, np.ndarray]:
  scale = flat[f"{prefix}.weight"] / np.sqrt(flat[f"{prefix}.running_var"] + _BN_EPS)
  return scale, flat[f"{prefix}.bias"] - flat[f"{prefix}.running_mean"] * scale


def _read(path: str | os.PathLike, tensors: bool) -> dict[str, Any]:
  """The file's ``{name: array}`` (or, with ``tensors=False``, ``{name: shape-bearing slice}``,
  reading only the header) after checking its tag and shapes; errors name ``path``."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"ArcFace weights not found: {path} (make them with `fewshot-jax "
                            "convert-weights --kind arcface --src model_ir_se50.pth --dst FILE`)")
  try:
    with safetensors.safe_open(path, framework="numpy") as f:
      kind = (f.metadata() or {}).get("kind")
      if kind != KIND:
        raise ValueError(f"{path} holds {kind or 'untagged'} weights, not {KIND} (convert them "
                         "with `fewshot-jax convert-weights --kind arcface`)")
      flat = {k: (f.get_tensor(k) if tensors else _Shape(f.get_slice(k).get_shape()))
              for k in f.keys()}
  except ValueError:
    raise
  except Exception as e:  # safetensors raises its own error types for corrupt headers
    raise ValueError(f"cannot read {path} as safetensors: {e}") from e
  _check(flat, path)
  return flat


class _Shape:
  """Stands in for an array where only its shape is checked."""

  def __init__(self, shape: Sequence[int]):
    self.shape = tuple(shape)


def check_weights(path: str | os.PathLike) -> None:
  """Checks a weights file from its header alone (cheap: before a long evaluation starts).

  Raises:
    FileNotFoundError / ValueError: naming ``path``.
  """
  _read(path, tensors=False)


def load_weights(path: str | os.PathLike) -> dict[str, jax.Array]:
  """The network's parameters from a ``convert_checkpoint`` file: convs in HWIO, batch norms as
  ``scale``/``shift``, the linear layer's rows reordered from PyTorch's (C, H, W) flattening to
  NHWC's (H, W, C).

  Raises:
    FileNotFoundError / ValueError: naming ``path``.
  """
  flat = _read(path, tensors=True)
  params: dict[str, np.ndarray] = {}
  for name, shape in expected_shapes().items():
    if name.endswith("running_mean"):
      prefix = name.rsplit(".", 1)[0]
      params[f"{prefix}/scale"], params[f"{prefix}/shift"] = _fold(flat, prefix)
    elif len(shape) == 4:
      params[name] = flat[name].transpose(2, 3, 1, 0)
    elif name == "input_layer.2.weight" or name.endswith("res_layer.2.weight"):
      params[name] = flat[name]  # PReLU slopes
  w = flat["output_layer.3.weight"].reshape(FEATURES, 512, _FINAL, _FINAL)
  params["output_layer.3.weight"] = w.transpose(2, 3, 1, 0).reshape(-1, FEATURES)
  params["output_layer.3.bias"] = flat["output_layer.3.bias"]
  return {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}


def _conv(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
  pad = kernel.shape[0] // 2
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _affine(params: Mapping[str, jax.Array], prefix: str, x: jax.Array) -> jax.Array:
  return x * params[f"{prefix}/scale"] + params[f"{prefix}/shift"]


def _prelu(x: jax.Array, slope: jax.Array) -> jax.Array:
  return jnp.where(x > 0, x, x * slope)


def _unit(params: Mapping[str, jax.Array], i: int, cin: int, depth: int, stride: int,
          x: jax.Array) -> jax.Array:
  """One bottleneck_IR_SE: BN, 3×3 conv, PReLU, 3×3 conv (strided), BN, squeeze-excitation, plus
  a shortcut (a strided 1×1 conv and BN when the width changes, else subsampling)."""
  p = f"body.{i}"
  if cin == depth:
    short = x[:, ::stride, ::stride]
  else:
    short = _affine(params, f"{p}.shortcut_layer.1",
                    _conv(x, params[f"{p}.shortcut_layer.0.weight"], stride))
  r = _affine(params, f"{p}.res_layer.0", x)
  r = _prelu(_conv(r, params[f"{p}.res_layer.1.weight"]), params[f"{p}.res_layer.2.weight"])
  r = _affine(params, f"{p}.res_layer.4", _conv(r, params[f"{p}.res_layer.3.weight"], stride))
  s = jnp.mean(r, axis=(1, 2), keepdims=True)
  s = jax.nn.relu(_conv(s, params[f"{p}.res_layer.5.fc1.weight"]))
  s = jax.nn.sigmoid(_conv(s, params[f"{p}.res_layer.5.fc2.weight"]))
  return r * s + short


def features(params: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
  """L2-normalised ``[N, 512]`` embeddings of ``[N, 112, 112, 3]`` inputs already in [-1, 1], in
  the channel order the weights were trained on."""
  x = _affine(params, "input_layer.1", _conv(x, params["input_layer.0.weight"]))
  x = _prelu(x, params["input_layer.2.weight"])
  for i, (cin, depth, stride) in enumerate(units()):
    x = _unit(params, i, cin, depth, stride, x)
  x = _affine(params, "output_layer.0", x).reshape(x.shape[0], -1)  # dropout: identity in eval
  x = x @ params["output_layer.3.weight"] + params["output_layer.3.bias"]
  x = _affine(params, "output_layer.4", x)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def five_points(landmarks: np.ndarray) -> np.ndarray:
  """ArcFace's 5 points ``[5, 2]`` from the 68 (iBUG order), in ``TEMPLATE``'s order: the centres
  of the eye on the image's left (36-41) and right (42-47), the nose tip (30), the mouth's left
  (48) and right (54) corners."""
  p = np.asarray(landmarks, np.float64)
  if p.shape != (68, 2):
    raise ValueError(f"expected 68 landmarks [68, 2], got {p.shape}")
  return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """The 2×3 similarity transform (rotation, uniform scale, shift; no reflection) that maps the
  points ``src`` onto ``dst`` in the least-squares sense (Umeyama's closed form)."""
  src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
  ms, md = src.mean(0), dst.mean(0)
  a, b = src - ms, dst - md
  cov = b.T @ a / len(src)
  u, s, vt = np.linalg.svd(cov)
  d = np.ones(2)
  if np.linalg.det(u) * np.linalg.det(vt) < 0:
    d[-1] = -1
  rot = u @ np.diag(d) @ vt
  var = (a ** 2).sum() / len(src)
  scale = (s * d).sum() / max(var, 1e-12)
  m = np.zeros((2, 3))
  m[:, :2] = scale * rot
  m[:, 2] = md - m[:, :2] @ ms
  return m


def align(frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
  """The uint8 ``[112, 112, 3]`` ArcFace crop of the face at ``landmarks`` in ``frame``.

  Landmarks are in continuous pixel coordinates (pixel ``i`` spans ``[i, i + 1)``), as everywhere
  in this project; the template's integer-centred coordinates are shifted by half a pixel to match,
  and PIL's affine warp works in the same continuous coordinates.
  """
  m = similarity(five_points(landmarks), TEMPLATE + 0.5)
  inv = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))[:2]  # PIL maps output -> input
  image = Image.fromarray(np.ascontiguousarray(frame))
  out = image.transform((SIZE, SIZE), Image.Transform.AFFINE, tuple(inv.ravel()),
                        resample=Image.Resampling.BILINEAR)
  return np.asarray(out)


class ArcFaceEmbedder:
  """``FaceEmbedder`` over IR-SE50: aligned crops, jitted once at a fixed batch."""

  label = "ArcFace"

  def __init__(self, weights: str | os.PathLike, batch: int = 8, channels: str = "bgr"):
    if channels not in ("bgr", "rgb"):
      raise ValueError(f"channels {channels!r}: expected 'bgr' or 'rgb'")
    self.path = os.fspath(weights)
    self.batch = batch
    self.channels = channels
    self.name = f"{KIND} ({channels})"
    self._params = load_weights(weights)
    self._fn: Callable[..., jax.Array] = jax.jit(features)

  def embed(self, frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    return self.embed_many([frame], [landmarks])[0]

  def embed_many(self, frames: Sequence[np.ndarray],
                 landmarks: Sequence[np.ndarray]) -> np.ndarray:
    """``[N, 512]`` embeddings of the faces at ``landmarks[i]`` in ``frames[i]``."""
    from fewshot_jax.prep.backends import check_frame  # pylint: disable=g-import-not-at-top

    crops = np.stack([align(check_frame(f), p) for f, p in zip(frames, landmarks)])
    return self.embed_crops(crops)

  def embed_crops(self, crops: np.ndarray) -> np.ndarray:
    """``[N, 512]`` embeddings of aligned uint8 RGB crops ``[N, 112, 112, 3]``."""
    x = np.asarray(crops, np.float32) / 127.5 - 1.0
    if self.channels == "bgr":
      x = x[..., ::-1]
    out = []
    for i in range(0, len(x), self.batch):
      chunk = x[i:i + self.batch]
      n = len(chunk)
      if n < self.batch:  # one program for every call: pad the last batch
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - n, axis=0)])
      out.append(np.asarray(self._fn(self._params, jnp.asarray(chunk)))[:n])
    return np.concatenate(out).astype(np.float32)
