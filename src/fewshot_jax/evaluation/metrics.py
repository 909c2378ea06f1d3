"""Image-quality metrics, as in the paper's evaluation (SSIM, PSNR, L1) on images in [0, 1].

SSIM follows Wang et al. 2004: an 11-tap Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
computed per channel over the 'valid' region (no padding) and averaged over pixels and channels.
Both functions take ``[..., H, W, C]`` and return one value per image ``[...]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  g = np.exp(-(x**2) / (2.0 * sigma**2))
  return (g / g.sum()).astype(np.float32)


def _filter(x: jax.Array, window: np.ndarray) -> jax.Array:
  """Separable 'valid' filtering of ``[N, H, W, C]`` along H then W, per channel."""
  k = window.shape[0]
  h = x.shape[1] - k + 1
  w = x.shape[2] - k + 1
  y = sum(window[i] * x[:, i : i + h] for i in range(k))
  return sum(window[i] * y[:, :, i : i + w] for i in range(k))


@jax.jit
def ssim(a: jax.Array, b: jax.Array) -> jax.Array:
  """Structural similarity of images in [0, 1], ``[..., H, W, C]`` -> ``[...]``."""
  a = jnp.asarray(a, jnp.float32)
  b = jnp.asarray(b, jnp.float32)
  lead = a.shape[:-3]
  a = a.reshape((-1,) + a.shape[-3:])
  b = b.reshape((-1,) + b.shape[-3:])
  win = _gaussian_window()
  c1, c2 = 0.01**2, 0.03**2
  mu_a, mu_b = _filter(a, win), _filter(b, win)
  var_a = _filter(a * a, win) - mu_a**2
  var_b = _filter(b * b, win) - mu_b**2
  cov = _filter(a * b, win) - mu_a * mu_b
  num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
  den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
  return jnp.mean(num / den, axis=(1, 2, 3)).reshape(lead)


@jax.jit
def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
  """Peak signal-to-noise ratio in dB of images in [0, 1], ``[..., H, W, C]`` -> ``[...]``.

  Identical images give +inf.
  """
  mse = jnp.mean((jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32)) ** 2, axis=(-3, -2, -1))
  return 10.0 * jnp.log10(1.0 / mse)


@jax.jit
def l1(a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean absolute difference of images in [0, 1], ``[..., H, W, C]`` -> ``[...]``."""
  return jnp.mean(jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32)),
                  axis=(-3, -2, -1))
