"""Pixel conventions: frames are uint8 on the host and float in [-1, 1] inside the networks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def to_signed(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(images: jax.Array | np.ndarray) -> np.ndarray:
  """float [-1, 1] -> uint8 [0, 255] on the host (rounded, clipped)."""
  x = (np.asarray(images, np.float32) + 1.0) * 127.5
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)
