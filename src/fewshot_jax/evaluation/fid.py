"""FID: the Fréchet distance between Inception-v3 pool features of generated and real frames.

The paper reports FID (Table 1). Its numbers are comparable with others' only when computed with
the same network: the Inception graph of 2015-12-05 that the original FID code used. pytorch-fid
ships those weights as ``pt_inception-2015-12-05-6726825d.pth``; ``fewshot-jax convert-weights
--kind inception`` turns that file into safetensors (names kept, tensors checked), and
``fewshot-jax evaluate --fid-weights FILE`` then adds an FID column. No weights ship with this
build, so without the file FID is left out and the report says so.

The network is written here as plain functions of a ``{name: array}`` dict in that file's naming,
in NHWC. The 2015 graph differs from the later Inception-v3 in its pooling: the average pools do
not count padding, and the last block max-pools (``last_pool="max"``). With ``last_pool="avg"``
it is Keras's ``InceptionV3``, which is how the test checks the graph against a reference.

Inputs follow the FID recipe: uint8 RGB resized to 299×299 (bilinear, no antialiasing), scaled to
[-1, 1]; the features are the 2048-d global average pool.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import safetensors

from fewshot_jax.weight_files import check_shapes, save_tagged

SIZE = 299
FEATURES = 2048
KIND = "inception-fid-2015"
_BN_EPS = 1e-3

# One BasicConv2d (conv without bias, batch norm, ReLU): (in, out, kernel (h, w), stride, pad (h, w)).
ConvSpec = tuple[int, int, tuple[int, int], int, tuple[int, int]]


def _c(cin: int, cout: int, k: tuple[int, int] = (1, 1), stride: int = 1,
       pad: tuple[int, int] = (0, 0)) -> ConvSpec:
  return (cin, cout, k, stride, pad)


def _block_a(cin: int, pool: int) -> dict[str, ConvSpec]:
  return {"branch1x1": _c(cin, 64), "branch5x5_1": _c(cin, 48),
          "branch5x5_2": _c(48, 64, (5, 5), 1, (2, 2)), "branch3x3dbl_1": _c(cin, 64),
          "branch3x3dbl_2": _c(64, 96, (3, 3), 1, (1, 1)),
          "branch3x3dbl_3": _c(96, 96, (3, 3), 1, (1, 1)), "branch_pool": _c(cin, pool)}


def _block_b(cin: int) -> dict[str, ConvSpec]:
  return {"branch3x3": _c(cin, 384, (3, 3), 2), "branch3x3dbl_1": _c(cin, 64),
          "branch3x3dbl_2": _c(64, 96, (3, 3), 1, (1, 1)),
          "branch3x3dbl_3": _c(96, 96, (3, 3), 2)}


def _block_c(cin: int, c7: int) -> dict[str, ConvSpec]:
  row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))
  return {"branch1x1": _c(cin, 192), "branch7x7_1": _c(cin, c7),
          "branch7x7_2": _c(c7, c7, row[0], 1, row[1]),
          "branch7x7_3": _c(c7, 192, col[0], 1, col[1]), "branch7x7dbl_1": _c(cin, c7),
          "branch7x7dbl_2": _c(c7, c7, col[0], 1, col[1]),
          "branch7x7dbl_3": _c(c7, c7, row[0], 1, row[1]),
          "branch7x7dbl_4": _c(c7, c7, col[0], 1, col[1]),
          "branch7x7dbl_5": _c(c7, 192, row[0], 1, row[1]), "branch_pool": _c(cin, 192)}


def _block_d(cin: int) -> dict[str, ConvSpec]:
  return {"branch3x3_1": _c(cin, 192), "branch3x3_2": _c(192, 320, (3, 3), 2),
          "branch7x7x3_1": _c(cin, 192), "branch7x7x3_2": _c(192, 192, (1, 7), 1, (0, 3)),
          "branch7x7x3_3": _c(192, 192, (7, 1), 1, (3, 0)),
          "branch7x7x3_4": _c(192, 192, (3, 3), 2)}


def _block_e(cin: int) -> dict[str, ConvSpec]:
  return {"branch1x1": _c(cin, 320), "branch3x3_1": _c(cin, 384),
          "branch3x3_2a": _c(384, 384, (1, 3), 1, (0, 1)),
          "branch3x3_2b": _c(384, 384, (3, 1), 1, (1, 0)), "branch3x3dbl_1": _c(cin, 448),
          "branch3x3dbl_2": _c(448, 384, (3, 3), 1, (1, 1)),
          "branch3x3dbl_3a": _c(384, 384, (1, 3), 1, (0, 1)),
          "branch3x3dbl_3b": _c(384, 384, (3, 1), 1, (1, 0)), "branch_pool": _c(cin, 192)}


# The network's blocks in order: (name, kind, its convs). Stem convs are blocks of one conv.
BLOCKS: tuple[tuple[str, str, dict[str, ConvSpec]], ...] = (
    ("Conv2d_1a_3x3", "conv", {"": _c(3, 32, (3, 3), 2)}),
    ("Conv2d_2a_3x3", "conv", {"": _c(32, 32, (3, 3))}),
    ("Conv2d_2b_3x3", "conv", {"": _c(32, 64, (3, 3), 1, (1, 1))}),
    ("maxpool1", "maxpool", {}),
    ("Conv2d_3b_1x1", "conv", {"": _c(64, 80)}),
    ("Conv2d_4a_3x3", "conv", {"": _c(80, 192, (3, 3))}),
    ("maxpool2", "maxpool", {}),
    ("Mixed_5b", "a", _block_a(192, 32)),
    ("Mixed_5c", "a", _block_a(256, 64)),
    ("Mixed_5d", "a", _block_a(288, 64)),
    ("Mixed_6a", "b", _block_b(288)),
    ("Mixed_6b", "c", _block_c(768, 128)),
    ("Mixed_6c", "c", _block_c(768, 160)),
    ("Mixed_6d", "c", _block_c(768, 160)),
    ("Mixed_6e", "c", _block_c(768, 192)),
    ("Mixed_7a", "d", _block_d(768)),
    ("Mixed_7b", "e", _block_e(1280)),
    ("Mixed_7c", "e_last", _block_e(2048)),
)


def conv_names() -> list[str]:
  """Every conv's name prefix (``Mixed_5b.branch1x1``), in the order the network creates them."""
  return [f"{block}.{conv}" if conv else block for block, _, convs in BLOCKS for conv in convs]


def _spec(name: str) -> ConvSpec:
  block, _, conv = name.partition(".")
  return next(convs for b, _, convs in BLOCKS if b == block)[conv]


def expected_shapes() -> dict[str, tuple[int, ...]]:
  """The weights file's tensors: PyTorch names and layouts (conv ``[out, in, kh, kw]``)."""
  shapes = {}
  for name in conv_names():
    cin, cout, (kh, kw), _, _ = _spec(name)
    shapes[f"{name}.conv.weight"] = (cout, cin, kh, kw)
    for field in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{name}.bn.{field}"] = (cout,)
  return shapes


def _check(flat: Mapping[str, Any], where: str) -> None:
  check_shapes(flat, expected_shapes(), where, "the FID Inception weights")


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """pytorch-fid's ``pt_inception-2015-12-05-*.pth`` -> safetensors (the classifier dropped).

  Raises:
    FileNotFoundError / ValueError: naming ``src`` (missing, unreadable, or another network).
  """
  from fewshot_jax.torch_weights import read_state_dict, to_numpy  # pylint: disable=g-import-not-at-top

  arrays = {k: to_numpy(v) for k, v in read_state_dict(src).items()}
  _check(arrays, os.fspath(src))
  save_weights(dst, {k: arrays[k] for k in expected_shapes()})


def save_weights(path: str | os.PathLike, flat: Mapping[str, np.ndarray]) -> None:
  """Writes the network's tensors as safetensors (atomically), tagged with ``KIND``."""
  save_tagged(path, flat, expected_shapes(), KIND, "the FID Inception weights")


def load_weights(path: str | os.PathLike) -> dict[str, jax.Array]:
  """The network's parameters from a ``convert_checkpoint`` file, with convs in HWIO and batch
  norm folded into a scale and a shift (inference only, so one multiply-add per channel).

  Raises:
    FileNotFoundError / ValueError: naming ``path``.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"FID Inception weights not found: {path} (make them with "
                            "`fewshot-jax convert-weights --kind inception --src "
                            "pt_inception-2015-12-05-6726825d.pth --dst FILE`)")
  try:
    with safetensors.safe_open(path, framework="numpy") as f:
      kind = (f.metadata() or {}).get("kind")
      flat = {k: f.get_tensor(k) for k in f.keys()}
  except Exception as e:  # safetensors raises its own error types for corrupt headers
    raise ValueError(f"cannot read {path} as safetensors: {e}") from e
  if kind != KIND:
    raise ValueError(f"{path} holds {kind or 'untagged'} weights, not {KIND} (convert them "
                     "with `fewshot-jax convert-weights --kind inception`)")
  _check(flat, path)
  params = {}
  for name in conv_names():
    scale = flat[f"{name}.bn.weight"] / np.sqrt(flat[f"{name}.bn.running_var"] + _BN_EPS)
    params[f"{name}/kernel"] = jnp.asarray(flat[f"{name}.conv.weight"].transpose(2, 3, 1, 0))
    params[f"{name}/scale"] = jnp.asarray(scale)
    params[f"{name}/shift"] = jnp.asarray(flat[f"{name}.bn.bias"] -
                                          flat[f"{name}.bn.running_mean"] * scale)
  return params


def _conv(params: Mapping[str, jax.Array], name: str, x: jax.Array) -> jax.Array:
  _, _, _, stride, (ph, pw) = _spec(name)
  y = jax.lax.conv_general_dilated(x, params[f"{name}/kernel"], (stride, stride),
                                   ((ph, ph), (pw, pw)),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jax.nn.relu(y * params[f"{name}/scale"] + params[f"{name}/shift"])


def _max_pool(x: jax.Array, stride: int, pad: int = 0) -> jax.Array:
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
                               ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def _avg_pool_same(x: jax.Array) -> jax.Array:
  """3×3, stride 1, padding 1, averaging only the pixels inside the image."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
  count = jax.lax.reduce_window(jnp.ones(x.shape[1:3], x.dtype)[None, :, :, None], 0.0,
                                jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
  return total / count


def _block(params: Mapping[str, jax.Array], name: str, kind: str, x: jax.Array,
           last_pool: str) -> jax.Array:
  def c(conv: str, y: jax.Array) -> jax.Array:
    return _conv(params, f"{name}.{conv}", y)

  def chain(y: jax.Array, *convs: str) -> jax.Array:
    for conv in convs:
      y = c(conv, y)
    return y

  if kind == "conv":
    return _conv(params, name, x)
  if kind == "maxpool":
    return _max_pool(x, 2)
  if kind == "a":
    return jnp.concatenate([
        c("branch1x1", x), chain(x, "branch5x5_1", "branch5x5_2"),
        chain(x, "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
        c("branch_pool", _avg_pool_same(x))], axis=-1)
  if kind == "b":
    return jnp.concatenate([
        c("branch3x3", x), chain(x, "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
        _max_pool(x, 2)], axis=-1)
  if kind == "c":
    return jnp.concatenate([
        c("branch1x1", x), chain(x, "branch7x7_1", "branch7x7_2", "branch7x7_3"),
        chain(x, *(f"branch7x7dbl_{i}" for i in range(1, 6))),
        c("branch_pool", _avg_pool_same(x))], axis=-1)
  if kind == "d":
    return jnp.concatenate([
        chain(x, "branch3x3_1", "branch3x3_2"),
        chain(x, *(f"branch7x7x3_{i}" for i in range(1, 5))), _max_pool(x, 2)], axis=-1)
  # "e" and "e_last": the 2015 graph max-pools in its last block.
  b3 = c("branch3x3_1", x)
  d3 = chain(x, "branch3x3dbl_1", "branch3x3dbl_2")
  pooled = (_max_pool(x, 1, 1) if kind == "e_last" and last_pool == "max"
            else _avg_pool_same(x))
  return jnp.concatenate([
      c("branch1x1", x), c("branch3x3_2a", b3), c("branch3x3_2b", b3),
      c("branch3x3dbl_3a", d3), c("branch3x3dbl_3b", d3), c("branch_pool", pooled)], axis=-1)


def features(params: Mapping[str, jax.Array], images: jax.Array,
             last_pool: str = "max") -> jax.Array:
  """``[N, 2048]`` pool features of uint8 RGB ``images`` ``[N, H, W, 3]`` (any size)."""
  x = images.astype(jnp.float32)
  if x.shape[1:3] != (SIZE, SIZE):
    x = jax.image.resize(x, (x.shape[0], SIZE, SIZE, 3), "bilinear", antialias=False)
  x = x / 127.5 - 1.0
  for name, kind, _ in BLOCKS:
    x = _block(params, name, kind, x, last_pool)
  return jnp.mean(x, axis=(1, 2))


class FidInception:
  """The loaded network, jitted once, with a fixed batch so every call reuses one program."""

  def __init__(self, path: str | os.PathLike, batch: int = 16, last_pool: str = "max"):
    self.path = os.fspath(path)
    self.batch = batch
    self._params = load_weights(path)
    self._fn: Callable[..., jax.Array] = jax.jit(lambda p, x: features(p, x, last_pool))

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """``[N, 2048]`` float64 features of uint8 ``[N, H, W, 3]`` (the last batch is padded)."""
    out = []
    for i in range(0, len(images), self.batch):
      chunk = np.asarray(images[i:i + self.batch])
      n = len(chunk)
      if n < self.batch:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - n, axis=0)])
      out.append(np.asarray(self._fn(self._params, jnp.asarray(chunk)))[:n])
    return np.concatenate(out).astype(np.float64)


def statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance (``ddof=1``, as in the FID reference) of ``[N, D]`` features."""
  feats = np.asarray(feats, np.float64)
  if len(feats) < 2:
    raise ValueError(f"FID needs at least 2 frames per side, got {len(feats)}")
  return feats.mean(axis=0), np.cov(feats, rowvar=False)


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((m + m.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """‖μ₁−μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^½ between two Gaussians.

  tr (Σ₁Σ₂)^½ is computed as the sum of the square roots of the eigenvalues of the symmetric
  matrix Σ₁^½ Σ₂ Σ₁^½ (similar to Σ₁Σ₂), which stays real and stable when the covariances are
  singular, as they are with fewer frames than feature dimensions.
  """
  root = _psd_sqrt(np.asarray(sigma1, np.float64))
  inner = root @ np.asarray(sigma2, np.float64) @ root
  tr_sqrt = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None))))
  diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_sqrt)


def fid(fake_features: np.ndarray, real_features: np.ndarray) -> float:
  """FID between two sets of ``[N, D]`` features."""
  return frechet_distance(*statistics(fake_features), *statistics(real_features))
