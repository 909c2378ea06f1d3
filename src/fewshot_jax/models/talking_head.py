"""The three networks together, built from a config's ``model`` section.

One ``nnx.Module`` holds E, G and D so that a single ``nnx.split`` gives the graph definition and the
state the jitted steps work on; the step functions then partition that state by role (E+G params,
D params, the table W, spectral-norm state). See ``fewshot_jax.train.state``.
"""

from __future__ import annotations

from typing import Any

import flax
import ml_collections
from flax import nnx

from fewshot_jax.models.discriminator import Discriminator, VideoTable
from fewshot_jax.models.embedder import Embedder
from fewshot_jax.models.generator import Generator


class TalkingHeadModel(nnx.Module):
  """Embedder, generator and projection discriminator."""

  def __init__(self, cfg: ml_collections.ConfigDict, num_videos: int, *, rngs: nnx.Rngs):
    validate_model_config(cfg)
    self.embedder = Embedder(cfg.e_channels, cfg.image_size, cfg.e_attn_res, rngs=rngs)
    self.generator = Generator(
        cfg.image_size,
        cfg.e_channels[-1],
        cfg.g_down_channels,
        cfg.g_res_blocks,
        cfg.g_up_channels,
        cfg.g_attn_down_res,
        cfg.g_attn_up_res,
        projection_sn=cfg.projection_sn,
        rngs=rngs,
    )
    self.discriminator = Discriminator(
        cfg.d_channels, cfg.image_size, cfg.d_attn_res, num_videos, cfg.d_extra_block, rngs=rngs
    )


def validate_model_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field when the model section cannot build a network."""
  size = cfg.image_size
  for name in ("e_channels", "d_channels", "g_down_channels"):
    n = len(cfg[name])
    if size % (2**n):
      raise ValueError(f"model.image_size={size} is not divisible by 2**len(model.{name})={2**n}")
  if cfg.embed_dim != cfg.e_channels[-1]:
    raise ValueError(
        f"model.embed_dim={cfg.embed_dim} must equal model.e_channels[-1]={cfg.e_channels[-1]} "
        "(E sum-pools its last block into the embedding)"
    )
  if cfg.d_channels[-1] != cfg.embed_dim:
    raise ValueError(
        f"model.d_channels[-1]={cfg.d_channels[-1]} must equal model.embed_dim={cfg.embed_dim} "
        "(D projects its features onto W_i + w0, and fine-tuning sets w' = w0 + ê)"
    )


_D_PARAMS = nnx.All(nnx.Param, nnx.PathContains("discriminator"))


@flax.struct.dataclass
class ModelVars:
  """The model's variables by role, as pure dicts of arrays.

  ``w``: D's per-video table W; ``d``: D's other parameters; ``g``: E's and G's parameters
  (P included); ``sn``: spectral-norm vectors (state, never trained).
  """

  w: Any
  d: Any
  g: Any
  sn: Any


def split_model(model: TalkingHeadModel) -> tuple[nnx.GraphDef, ModelVars]:
  """Splits a model into its static graph and its variables by role."""
  graphdef, w, d, g, sn = nnx.split(model, VideoTable, _D_PARAMS, nnx.Param, ...)
  return graphdef, ModelVars(
      w=w.to_pure_dict(), d=d.to_pure_dict(), g=g.to_pure_dict(), sn=sn.to_pure_dict()
  )


def merge_model(graphdef: nnx.GraphDef, v: ModelVars) -> TalkingHeadModel:
  """Rebuilds a model from its graph and variables (cheap; done inside every jitted step)."""
  return nnx.merge(graphdef, nnx.State(v.w), nnx.State(v.d), nnx.State(v.g), nnx.State(v.sn))


def spectral_state(model: TalkingHeadModel) -> Any:
  """The spectral-norm vectors of a (just run) model, as a pure dict."""
  return split_model(model)[1].sn


def abstract_model(
    cfg: ml_collections.ConfigDict, num_videos: int
) -> tuple[nnx.GraphDef, ModelVars]:
  """Graph and variable shapes, without allocating or computing anything."""
  model = nnx.eval_shape(lambda: TalkingHeadModel(cfg.model, num_videos, rngs=nnx.Rngs(0)))
  return split_model(model)
