"""The embedder E: K (frame, landmark image) pairs -> one identity embedding ê.

Residual downsampling blocks with no normalisation, self-attention at the configured resolutions,
ReLU, global *sum* pooling to N channels, then the mean over the K shots (paper §3.2).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from fewshot_jax.models import execution
from fewshot_jax.models.layers import ResDown, SelfAttention


class DownStack(nnx.Module):
  """Residual downsampling blocks with optional self-attention; shared by E and D.

  Returns every block's output as well as the last, so D can use them for feature matching.
  """

  def __init__(
      self,
      in_ch: int,
      channels: Sequence[int],
      image_size: int,
      attn_res: Sequence[int],
      *,
      rngs: nnx.Rngs,
  ):
    blocks, attns = [], []
    res, prev = image_size, in_ch
    for i, ch in enumerate(channels):
      res //= 2
      blocks.append(ResDown(prev, ch, norm=False, first=(i == 0), rngs=rngs))
      attns.append(SelfAttention(ch, rngs=rngs) if res in attn_res else None)
      prev = ch
    self.blocks = nnx.List(blocks)
    self.attns = nnx.List(attns)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    acts = []
    for block, attn in zip(self.blocks, self.attns):
      x = execution.block(block, x)
      if attn is not None:
        x = attn(x)
      acts.append(x)
    return x, acts


class Embedder(nnx.Module):
  """E(x, y): sum-pooled features of frame ‖ landmark image, averaged over the K shots."""

  def __init__(
      self,
      channels: Sequence[int],
      image_size: int,
      attn_res: Sequence[int],
      *,
      rngs: nnx.Rngs,
  ):
    self.stack = DownStack(6, channels, image_size, attn_res, rngs=rngs)
    self.embed_dim = channels[-1]

  def embed_frames(self, frames: jax.Array, landmark_images: jax.Array) -> jax.Array:
    """Per-frame embeddings.

    Args:
      frames: ``[..., H, W, 3]`` in [-1, 1].
      landmark_images: ``[..., H, W, 3]`` in [-1, 1].

    Returns:
      ``[..., N]``.
    """
    with jax.named_scope("embedder"):  # names its ops in profiles
      lead = frames.shape[:-3]
      x = jnp.concatenate([frames, landmark_images], axis=-1)
      x = x.reshape((-1,) + x.shape[-3:])
      h, _ = self.stack(x)
      e = jnp.sum(jax.nn.relu(h).astype(jnp.float32), axis=(1, 2))  # f32 whatever the compute dtype
      return e.reshape(lead + (self.embed_dim,))

  def __call__(self, frames: jax.Array, landmark_images: jax.Array) -> jax.Array:
    """ê for each video: ``[B, K, H, W, 3]`` twice -> ``[B, N]`` (mean over K)."""
    return jnp.mean(self.embed_frames(frames, landmark_images), axis=1)
