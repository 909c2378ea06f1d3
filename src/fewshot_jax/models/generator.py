"""The generator G: target landmark image + identity embedding -> the target frame.

Downsampling residual blocks with instance norm (and self-attention), residual AdaIN blocks at the
bottleneck, upsampling residual AdaIN blocks (and self-attention), then a final AdaIN -> ReLU ->
conv -> tanh (paper §3.2 and appendix). Every AdaIN's scale and shift come from ψ = P·ê, P a
spectrally normalised linear map; few-shot fine-tuning starts ψ' from P·ê_new and trains it.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from fewshot_jax.models import execution
from fewshot_jax.models.layers import (
    ResAdaIN,
    ResDown,
    ResUpAdaIN,
    SelfAttention,
    SNConv,
    SNDense,
    adain,
)


class Generator(nnx.Module):
  """G(y, ψ), with ``psi_from_embedding`` giving ψ = P·ê."""

  def __init__(
      self,
      image_size: int,
      embed_dim: int,
      down_channels: Sequence[int],
      num_res_blocks: int,
      up_channels: Sequence[int],
      attn_down_res: Sequence[int],
      attn_up_res: Sequence[int],
      *,
      projection_sn: bool = True,
      rngs: nnx.Rngs,
  ):
    if len(up_channels) != len(down_channels):
      raise ValueError(
          f"generator needs as many up blocks as down blocks: {len(up_channels)} vs "
          f"{len(down_channels)}"
      )
    res, prev = image_size, 3
    downs, down_attn = [], []
    for i, ch in enumerate(down_channels):
      res //= 2
      downs.append(ResDown(prev, ch, norm=True, first=(i == 0), rngs=rngs))
      down_attn.append(SelfAttention(ch, rngs=rngs) if res in attn_down_res else None)
      prev = ch
    self.downs = nnx.List(downs)
    self.down_attn = nnx.List(down_attn)
    self.res_blocks = nnx.List([ResAdaIN(prev, rngs=rngs) for _ in range(num_res_blocks)])
    ups, up_attn = [], []
    for ch in up_channels:
      res *= 2
      ups.append(ResUpAdaIN(prev, ch, rngs=rngs))
      up_attn.append(SelfAttention(ch, rngs=rngs) if res in attn_up_res else None)
      prev = ch
    self.ups = nnx.List(ups)
    self.up_attn = nnx.List(up_attn)
    self.out_conv = SNConv(prev, 3, 3, rngs=rngs)
    self.adain_channels: tuple[int, ...] = tuple(
        c for b in list(self.res_blocks) + list(self.ups) for c in b.adain_channels
    ) + (prev,)
    self.psi_dim = 2 * sum(self.adain_channels)
    self.projection = SNDense(embed_dim, self.psi_dim, spectral=projection_sn, rngs=rngs)

  def psi_from_embedding(self, embedding: jax.Array) -> jax.Array:
    """ψ = P·ê: ``[B, N] -> [B, psi_dim]``."""
    return self.projection(embedding)

  def _split_psi(self, psi: jax.Array) -> list[jax.Array]:
    out, start = [], 0
    for c in self.adain_channels:
      out.append(psi[:, start : start + 2 * c])
      start += 2 * c
    return out

  def __call__(self, landmark_images: jax.Array, psi: jax.Array) -> jax.Array:
    """Generates frames.

    Args:
      landmark_images: ``[B, H, W, 3]`` in [-1, 1].
      psi: ``[B, psi_dim]`` AdaIN parameters.

    Returns:
      ``[B, H, W, 3]`` images in [-1, 1].
    """
    with jax.named_scope("generator"):  # names its ops in profiles
      p = self._split_psi(psi)
      x = landmark_images
      for block, attn in zip(self.downs, self.down_attn):
        x = execution.block(block, x)
        if attn is not None:
          x = attn(x)
      i = 0
      for block in self.res_blocks:
        x = execution.block(block, x, p[i : i + 2])
        i += 2
      for block, attn in zip(self.ups, self.up_attn):
        x = execution.block(block, x, p[i : i + 2])
        i += 2
        if attn is not None:
          x = attn(x)
      x = jax.nn.relu(adain(x, p[i]))
      return jnp.tanh(self.out_conv(x))
