"""The projection discriminator D (paper §3.2).

V(x, y) is E's downsampling stack applied to frame ‖ landmark image, one extra residual block at the
lowest resolution, ReLU and sum pooling. The realism score is ``r = V·(w + w0) + b`` where during
meta-learning ``w = W[i]``, a learned column per training video, and during few-shot fine-tuning
``w = ê_new`` (so ``w' = w0 + ê_new``). Block activations are returned for feature matching.

W is a ``VideoTable`` variable so that the training step can give it its own row-sparse optimiser
and shard it by rows: a step must touch only the rows of its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from fewshot_jax.models import execution
from fewshot_jax.models.embedder import DownStack
from fewshot_jax.models.layers import ResBlock


class VideoTable(nnx.Param):
  """The per-training-video embedding table W, ``[num_videos, N]``."""


class Discriminator(nnx.Module):
  """Projection discriminator with a per-video table."""

  def __init__(
      self,
      channels: Sequence[int],
      image_size: int,
      attn_res: Sequence[int],
      num_videos: int,
      extra_block: bool = True,
      *,
      rngs: nnx.Rngs,
  ):
    self.stack = DownStack(6, channels, image_size, attn_res, rngs=rngs)
    self.extra = ResBlock(channels[-1], rngs=rngs) if extra_block else None
    n = channels[-1]
    self.embed_dim = n
    self.W = VideoTable(0.02 * jax.random.normal(rngs.params(), (num_videos, n), jnp.float32))
    self.w0 = nnx.Param(jnp.zeros((n,), jnp.float32))
    self.b = nnx.Param(jnp.zeros((), jnp.float32))

  def features(
      self, frames: jax.Array, landmark_images: jax.Array
  ) -> tuple[jax.Array, list[jax.Array]]:
    """V(x, y) ``[B, N]`` and the list of block activations."""
    with jax.named_scope("discriminator"):  # names its ops in profiles
      h, acts = self.stack(jnp.concatenate([frames, landmark_images], axis=-1))
      if self.extra is not None:
        h = execution.block(self.extra, h)
        acts.append(h)
      return jnp.sum(jax.nn.relu(h).astype(jnp.float32), axis=(1, 2)), acts

  def score(self, v: jax.Array, w: jax.Array) -> jax.Array:
    """r = V·(w + w0) + b: ``[B, N]`` features, ``[B, N]`` projection vectors -> ``[B]``."""
    return jnp.sum(v * (w + self.w0[...]), axis=-1) + self.b[...]

  def __call__(
      self, frames: jax.Array, landmark_images: jax.Array, video_index: jax.Array
  ) -> tuple[jax.Array, list[jax.Array]]:
    """Meta-learning form: scores against the table rows ``W[video_index]``."""
    v, acts = self.features(frames, landmark_images)
    return self.score(v, self.W[...][video_index]), acts
