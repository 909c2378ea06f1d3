"""The train state: a plain pytree of arrays, and how the model's variables map onto it.

The model's variables are split by role, because each role is optimised differently:

* ``g``: parameters of E and G (including P) — Adam at ``lr_g``, with an EMA copy for inference;
* ``d``: parameters of D except the table — Adam at ``lr_d``;
* ``w``: the per-video table W — a row-sparse ("lazy") Adam, so rows not in a batch stay
  bit-identical (a dense Adam would keep moving them with stale momentum), sharded by rows;
* ``sn``: spectral-norm power-iteration vectors — state, not trained.

Everything is a nested dict of arrays, so Orbax saves it as is and shardings are plain pytrees.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from fewshot_jax.models.talking_head import (
    ModelVars,
    abstract_model,
    TalkingHeadModel,
    merge_model,
    spectral_state,
    split_model,
)

PyTree = Any
__all__ = ["ModelVars", "abstract_model", "merge_model", "spectral_state", "split_model"]


@flax.struct.dataclass
class RowAdamState:
  """Lazy Adam moments for the table W, with a per-row step count for bias correction."""

  mu: jax.Array
  nu: jax.Array
  count: jax.Array  # [num_videos] int32


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  vars: ModelVars
  opt_g: PyTree
  opt_d: PyTree
  opt_w: RowAdamState
  ema_g: PyTree
  rng: jax.Array


def g_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return optax.adam(cfg.train.lr_g, b1=cfg.train.b1, b2=cfg.train.b2)


def d_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return optax.adam(cfg.train.lr_d, b1=cfg.train.b1, b2=cfg.train.b2)


def init_train_state(
    cfg: ml_collections.ConfigDict, num_videos: int, rng: jax.Array
) -> TrainState:
  """Creates a fresh train state. Meant to run under ``jax.jit(..., out_shardings=...)`` so the
  parameters are born sharded instead of being built on one device and then moved."""
  init_rng, state_rng = jax.random.split(rng)
  model = TalkingHeadModel(cfg.model, num_videos, rngs=nnx.Rngs(init_rng))
  _, v = split_model(model)
  table = v.w["discriminator"]["W"]
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      vars=v,
      opt_g=g_optimizer(cfg).init(v.g),
      opt_d=d_optimizer(cfg).init(v.d),
      opt_w=RowAdamState(
          mu=jnp.zeros_like(table),
          nu=jnp.zeros_like(table),
          count=jnp.zeros((table.shape[0],), jnp.int32),
      ),
      ema_g=jax.tree.map(jnp.copy, v.g),
      rng=state_rng,
  )


def row_adam_update(
    table: jax.Array,
    grad: jax.Array,
    rows: jax.Array,
    opt: RowAdamState,
    lr: float,
    b1: float,
    b2: float,
    eps: float = 1e-8,
) -> tuple[jax.Array, RowAdamState]:
  """Adam on the rows ``rows`` of ``table`` only; every other row and its moments are untouched.

  A row listed twice receives its (already summed) gradient once: both writes carry the same
  values, so the result does not depend on scatter order.
  """
  g = grad[rows]
  count = opt.count[rows] + 1
  mu = b1 * opt.mu[rows] + (1.0 - b1) * g
  nu = b2 * opt.nu[rows] + (1.0 - b2) * g * g
  t = count.astype(jnp.float32)[:, None]
  mu_hat = mu / (1.0 - b1**t)
  nu_hat = nu / (1.0 - b2**t)
  new_rows = table[rows] - lr * mu_hat / (jnp.sqrt(nu_hat) + eps)
  return table.at[rows].set(new_rows), RowAdamState(
      mu=opt.mu.at[rows].set(mu), nu=opt.nu.at[rows].set(nu), count=opt.count.at[rows].set(count)
  )


def ema_update(ema: PyTree, params: PyTree, decay: float) -> PyTree:
  """``ema <- decay * ema + (1 - decay) * params``."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def count_params(tree: PyTree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))
