"""Building blocks shared by the embedder, generator and discriminator.

Every conv and dense layer is spectrally normalised with Miyato/torch semantics: the raw weight is
the trainable parameter, the power-iteration vector ``u`` is non-trainable state (``SpectralU``)
refreshed by one iteration per training forward, and the effective weight ``W / sigma`` is computed
in the forward pass. (``nnx.SpectralNorm`` in flax 0.12.8 writes ``W / sigma`` back into the
parameter, which changes what the optimiser sees; hence our own layer.)

Layout is NHWC throughout: it is what XLA prefers on TPU and what ``lax.conv_general_dilated``
takes without transposes.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from fewshot_jax.models.conv import conv2d

_INIT = nnx.initializers.variance_scaling(1.0, "fan_avg", "uniform")


class SpectralU(nnx.Variable):
  """The power-iteration vector of a spectrally normalised layer: state, never trained."""


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  return x / (jnp.linalg.norm(x) + eps)


def spectral_normalize(
    kernel: jax.Array, u: jax.Array, n_iter: int = 1
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Divides ``kernel`` by its largest singular value, estimated by power iteration.

  The kernel is viewed as a matrix ``[out, rest]`` (the torch convention, so ``u`` has one entry per
  output channel). No gradient flows through ``u`` and ``v``, as in Miyato et al.

  Args:
    kernel: the raw weight, output features on the last axis.
    u: ``[out]`` current estimate of the first left singular vector.
    n_iter: power iterations to run.

  Returns:
    ``(kernel / sigma, new_u, sigma)``.
  """
  w = kernel.reshape(-1, kernel.shape[-1]).T  # [out, rest]
  w_sg = jax.lax.stop_gradient(w)
  u = jax.lax.stop_gradient(u)
  for _ in range(n_iter):
    v = _l2_normalize(w_sg.T @ u)
    u = _l2_normalize(w_sg @ v)
  sigma = u @ (w @ v)
  return kernel / sigma, u, sigma


class _SpectralLayer(nnx.Module):
  """Holds the shared spectral-norm state and the ``update_sn`` switch.

  ``update_sn`` is True while training; inference and evaluation set it to False (with
  ``module.set_attributes(update_sn=False)``) so a forward pass never changes the model.
  """

  update_sn: bool

  def _init_u(self, out_features: int, rngs: nnx.Rngs) -> None:
    u = jax.random.normal(rngs.params(), (out_features,), jnp.float32)
    self.u = SpectralU(_l2_normalize(u))
    self.update_sn = True

  def _effective_kernel(self, kernel: jax.Array) -> jax.Array:
    w, new_u, _ = spectral_normalize(kernel, self.u.get_value())
    if self.update_sn:
      # set_value, not ``u[...] =``: the indexed form compares shardings, which on a tracer costs
      # about 8 ms of tracing per layer.
      self.u.set_value(new_u)
    return w


class SNConv(_SpectralLayer):
  """A spectrally normalised 2-D convolution, NHWC, 'SAME' padding, stride 1."""

  def __init__(
      self,
      in_features: int,
      out_features: int,
      kernel_size: int = 3,
      *,
      use_bias: bool = True,
      rngs: nnx.Rngs,
  ):
    self.kernel = nnx.Param(
        _INIT(rngs.params(), (kernel_size, kernel_size, in_features, out_features), jnp.float32)
    )
    self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None
    self._init_u(out_features, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    w = self._effective_kernel(self.kernel[...]).astype(x.dtype)
    y = conv2d(x, w)  # XLA's conv; on CPU with a matmul weight gradient (models/conv.py)
    if self.bias is not None:
      y = y + self.bias[...].astype(x.dtype)
    return y


class SNDense(_SpectralLayer):
  """A spectrally normalised dense layer (``spectral=False`` turns the normalisation off)."""

  def __init__(
      self,
      in_features: int,
      out_features: int,
      *,
      use_bias: bool = True,
      spectral: bool = True,
      rngs: nnx.Rngs,
  ):
    self.kernel = nnx.Param(_INIT(rngs.params(), (in_features, out_features), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None
    self.spectral = spectral
    self._init_u(out_features, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.kernel[...]
    w = self._effective_kernel(kernel) if self.spectral else kernel
    y = x @ w.astype(x.dtype)
    if self.bias is not None:
      y = y + self.bias[...].astype(x.dtype)
    return y


def instance_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Normalises each sample's channels over H and W (no learned affine).

  The statistics are taken in f32 whatever the compute dtype: a bf16 mean over 65,536 pixels
  would lose the small variances that AdaIN then scales up.
  """
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axis=(1, 2), keepdims=True)
  var = jnp.var(xf, axis=(1, 2), keepdims=True)
  return ((xf - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def adain(x: jax.Array, params: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Adaptive instance norm: instance-normalise, then scale and shift per sample.

  Args:
    x: ``[B, H, W, C]`` activations.
    params: ``[B, 2C]``: ``C`` scale offsets then ``C`` shifts. The scale is ``1 + params[:, :C]``
      so that a zero projection starts as plain instance norm rather than erasing the signal.
    eps: variance floor.

  Returns:
    ``[B, H, W, C]``.
  """
  c = x.shape[-1]
  if params.shape[-1] != 2 * c:
    raise ValueError(f"AdaIN params have {params.shape[-1]} entries, expected 2*{c}")
  gamma = 1.0 + params[:, None, None, :c]
  beta = params[:, None, None, c:]
  return instance_norm(x, eps) * gamma.astype(x.dtype) + beta.astype(x.dtype)


def downsample(x: jax.Array) -> jax.Array:
  """2x2 average pooling, stride 2."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def upsample(x: jax.Array) -> jax.Array:
  """Nearest-neighbour upsampling by 2."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class SelfAttention(nnx.Module):
  """SAGAN self-attention: ``x + gamma * softmax(q k^T) v``, gamma starting at 0."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    inner = max(channels // 8, 1)
    self.query = SNConv(channels, inner, 1, use_bias=False, rngs=rngs)
    self.key = SNConv(channels, inner, 1, use_bias=False, rngs=rngs)
    self.value = SNConv(channels, channels, 1, use_bias=False, rngs=rngs)
    self.gamma = nnx.Param(jnp.zeros((), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    q = self.query(x).reshape(b, h * w, -1)
    k = self.key(x).reshape(b, h * w, -1)
    v = self.value(x).reshape(b, h * w, c)
    attn = jax.nn.softmax(jnp.einsum("bqd,bkd->bqk", q, k).astype(jnp.float32), axis=-1)
    out = jnp.einsum("bqk,bkc->bqc", attn.astype(v.dtype), v).reshape(b, h, w, c)
    return x + self.gamma[...].astype(x.dtype) * out


class ResDown(nnx.Module):
  """Residual downsampling block (BigGAN style), optionally with instance norm.

  main: [IN] -> ReLU -> conv3 -> [IN] -> ReLU -> conv3 -> avgpool; skip: conv1 -> avgpool.
  The very first block of a network skips the leading ReLU (its input is an image).
  """

  def __init__(
      self, in_ch: int, out_ch: int, *, norm: bool, first: bool = False, rngs: nnx.Rngs
  ):
    # With norms (G), convs have no bias: in G every per-channel constant added before the final
    # AdaIN is removed by a later (Ada)IN (residual paths included), so a bias there has no effect
    # and a gradient that is zero up to rounding, which Adam turns into a random walk.
    self.conv1 = SNConv(in_ch, out_ch, 3, use_bias=not norm, rngs=rngs)
    self.conv2 = SNConv(out_ch, out_ch, 3, use_bias=not norm, rngs=rngs)
    self.skip = SNConv(in_ch, out_ch, 1, use_bias=not norm, rngs=rngs)
    self.norm = norm
    self.first = first

  def __call__(self, x: jax.Array) -> jax.Array:
    h = x
    if self.norm:
      h = instance_norm(h)
    if not self.first:
      h = jax.nn.relu(h)
    h = self.conv1(h)
    if self.norm:
      h = instance_norm(h)
    h = self.conv2(jax.nn.relu(h))
    return downsample(h) + downsample(self.skip(x))


class ResBlock(nnx.Module):
  """Residual block at constant resolution, without normalisation (D's extra 4x4 block)."""

  def __init__(self, ch: int, *, rngs: nnx.Rngs):
    self.conv1 = SNConv(ch, ch, 3, rngs=rngs)
    self.conv2 = SNConv(ch, ch, 3, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return x + self.conv2(jax.nn.relu(self.conv1(jax.nn.relu(x))))


class ResAdaIN(nnx.Module):
  """Residual block at constant resolution whose two norms are AdaIN."""

  def __init__(self, ch: int, *, rngs: nnx.Rngs):
    self.conv1 = SNConv(ch, ch, 3, use_bias=False, rngs=rngs)  # no biases in G: see ResDown
    self.conv2 = SNConv(ch, ch, 3, use_bias=False, rngs=rngs)
    self.adain_channels: tuple[int, ...] = (ch, ch)

  def __call__(self, x: jax.Array, p: Sequence[jax.Array]) -> jax.Array:
    h = self.conv1(jax.nn.relu(adain(x, p[0])))
    h = self.conv2(jax.nn.relu(adain(h, p[1])))
    return x + h


class ResUpAdaIN(nnx.Module):
  """Residual upsampling block with AdaIN.

  main: AdaIN -> ReLU -> up2 -> conv3 -> AdaIN -> ReLU -> conv3; skip: up2 -> conv1.
  """

  def __init__(self, in_ch: int, out_ch: int, *, rngs: nnx.Rngs):
    self.conv1 = SNConv(in_ch, out_ch, 3, use_bias=False, rngs=rngs)  # no biases in G: see ResDown
    self.conv2 = SNConv(out_ch, out_ch, 3, use_bias=False, rngs=rngs)
    self.skip = SNConv(in_ch, out_ch, 1, use_bias=False, rngs=rngs)
    self.adain_channels: tuple[int, ...] = (in_ch, out_ch)

  def __call__(self, x: jax.Array, p: Sequence[jax.Array]) -> jax.Array:
    h = self.conv1(upsample(jax.nn.relu(adain(x, p[0]))))
    h = self.conv2(jax.nn.relu(adain(h, p[1])))
    return h + self.skip(upsample(x))
