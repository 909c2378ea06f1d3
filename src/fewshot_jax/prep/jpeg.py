"""JPEG bytes in and out (Pillow): the one encoding of stored crops, so cache entries, shards and
benchmarks all use the same settings."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode(image: np.ndarray, quality: int) -> bytes:
  """uint8 ``[H, W, 3]`` RGB -> JPEG bytes (Pillow's default 4:2:0 chroma subsampling)."""
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
  """JPEG bytes -> uint8 ``[H, W, 3]`` RGB."""
  return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
