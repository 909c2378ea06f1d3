"""Stride-1 'SAME' 2-D convolution (NHWC input, HWIO kernel), with a faster weight gradient on CPU.

Why: on XLA:CPU the weight gradient of a conv (a convolution of the input with the output
gradient, reduced over batch and space) runs at a fifth or less of the forward's rate on large
images with few channels: 21-44 GFLOP/s against 136-173 at 64-256 px
(``benchmarks/conv_grads.py``), and it was the largest single cost of the train step. The same sum is, per kernel tap, a matmul of
the shifted input with the output gradient; as batched per-image matmuls in a loop over the taps
it runs at 55-124 GFLOP/s there. So on CPU, for inputs of at least ``TAPS_MIN_PIXELS`` per image,
the conv carries a custom VJP whose weight gradient is that loop; the input gradient and the
forward stay XLA's. Smaller, deeper layers keep XLA's weight gradient, which is faster there. On TPU
and GPU XLA's own kernels are used unchanged.

The choice is made when the function is traced: ``FEWSHOT_CONV_WEIGHT_GRAD`` = ``auto`` (the
default, as above), ``xla`` or ``taps``. Exported programs contain only forwards, which are the
same either way.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

_DIMS = ("NHWC", "HWIO", "NHWC")
WEIGHT_GRAD_ENV = "FEWSHOT_CONV_WEIGHT_GRAD"


def _xla_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_DIMS)


def _same_pad(x: jax.Array, kh: int, kw: int) -> jax.Array:
  """XLA's 'SAME' padding for stride 1: ``(k - 1) // 2`` before, the rest after."""
  return jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))


def _per_image_sum(a: jax.Array, b: jax.Array) -> jax.Array:
  """``Σ_n a[n]ᵀ·b[n]`` for ``[N, P, Ci]`` and ``[N, P, Co]``: a batched matmul then a sum.

  XLA:CPU runs the batched form (one ``[P, Ci]ᵀ·[P, Co]`` per image) at 1.5-3× the rate of a
  single contraction over ``N·P`` (measured in ``benchmarks/conv_grads.py``).
  """
  return jnp.einsum("npc,npo->nco", a, b).sum(0)


def weight_grad_taps(x: jax.Array, dy: jax.Array, kernel_shape: tuple[int, ...]) -> jax.Array:
  """dL/dkernel of ``_xla_conv(x, kernel)`` given dL/dy: per kernel tap, the shifted input's
  ``[H·W, Cin]ᵀ·[H·W, Cout]`` per image, summed over the images."""
  kh, kw, cin, cout = kernel_shape
  n, h, w, _ = x.shape
  flat_dy = dy.reshape(n, h * w, cout)
  if kh == kw == 1:
    return _per_image_sum(x.reshape(n, h * w, cin), flat_dy)[None, None]
  xp = _same_pad(x, kh, kw)

  # One tap per loop iteration, so one shifted copy of the input is alive at a time (unrolled,
  # XLA keeps all of them: +3 GB at paper_256, batch 2).
  def tap(t, acc):
    shifted = jax.lax.dynamic_slice(xp, (0, t // kw, t % kw, 0), (n, h, w, cin))
    return acc.at[t].set(_per_image_sum(shifted.reshape(n, h * w, cin), flat_dy))

  acc = jnp.zeros((kh * kw, cin, cout), jnp.result_type(x, dy))
  return jax.lax.fori_loop(0, kh * kw, tap, acc).reshape(kernel_shape)


def weight_grad_rows(x: jax.Array, dy: jax.Array, kernel_shape: tuple[int, ...]) -> jax.Array:
  """The same gradient with the kernel's columns unfolded into channels (``[.., kw·Cin]``): one
  matmul per kernel row, at the cost of a ``kw``-times copy of the input."""
  kh, kw, cin, cout = kernel_shape
  n, h, w, _ = x.shape
  xp = _same_pad(x, kh, kw)
  cols = jnp.concatenate([xp[:, :, j:j + w] for j in range(kw)], axis=-1)
  flat_dy = dy.reshape(n, h * w, cout)
  rows = [_per_image_sum(cols[:, i:i + h].reshape(n, h * w, kw * cin), flat_dy)
          for i in range(kh)]
  return jnp.stack(rows).reshape(kh, kw, cin, cout)


@jax.custom_vjp
def _conv_taps_grad(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return _xla_conv(x, kernel)


def _fwd(x: jax.Array, kernel: jax.Array):
  return _xla_conv(x, kernel), (x, kernel)


def _bwd(res, dy: jax.Array):
  x, kernel = res
  dx = jax.vjp(lambda x: _xla_conv(x, kernel), x)[1](dy)[0]
  # Unused cotangents (frozen kernels, the image input) are removed by XLA's dead-code pass.
  return dx, weight_grad_taps(x, dy, kernel.shape).astype(kernel.dtype)


_conv_taps_grad.defvjp(_fwd, _bwd)


# Below this many pixels per image XLA:CPU's own weight gradient is as fast (deep, narrow layers).
TAPS_MIN_PIXELS = 64 * 64


def weight_grad_mode(x_shape: tuple[int, ...] | None = None) -> str:
  """``xla`` or ``taps``: how a conv on an input of ``x_shape`` computes its weight gradient."""
  mode = os.environ.get(WEIGHT_GRAD_ENV, "auto")
  if mode not in ("auto", "xla", "taps"):
    raise ValueError(f"{WEIGHT_GRAD_ENV}={mode!r}: expected auto, xla or taps")
  if mode != "auto":
    return mode
  if jax.default_backend() != "cpu":
    return "xla"
  return "taps" if x_shape is None or x_shape[1] * x_shape[2] >= TAPS_MIN_PIXELS else "xla"


def conv2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """``SAME`` stride-1 conv, NHWC × HWIO -> NHWC; its weight gradient per ``weight_grad_mode``."""
  if weight_grad_mode(x.shape) == "taps":
    return _conv_taps_grad(x, kernel)
  return _xla_conv(x, kernel)
