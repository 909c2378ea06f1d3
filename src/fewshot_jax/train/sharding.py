"""Device mesh and sharding rules for the train state and batches.

The mesh comes from ``train.mesh_shape`` / ``train.mesh_axes``. Its first axis is data parallel.
An optional axis named ``fsdp`` shards parameters as well (ZeRO-3 / FSDP style): batches are split
over both axes, and every large parameter, its Adam moments and its EMA copy are split along one
dimension over ``fsdp``; XLA gathers them where a layer needs them whole. The table W is split by
rows over all batch axes when its row count divides evenly. Everything else is replicated. The same
rules hold on 1 device and on N.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fewshot_jax.train import state as st

FSDP_AXIS = "fsdp"
FSDP_MIN_SIZE = 2**14  # smaller arrays stay replicated: gathering them costs more than it saves


def make_mesh(cfg: ml_collections.ConfigDict, devices: list | None = None) -> Mesh:
  """A mesh of shape ``train.mesh_shape`` (-1: all remaining devices) named ``train.mesh_axes``."""
  devices = list(devices if devices is not None else jax.devices())
  shape = list(cfg.train.mesh_shape)
  axes = tuple(cfg.train.mesh_axes)
  if len(shape) != len(axes):
    raise ValueError(f"train.mesh_shape={tuple(shape)} and train.mesh_axes={axes} differ in length")
  if shape.count(-1) > 1:
    raise ValueError(f"train.mesh_shape={tuple(shape)}: at most one -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"train.mesh_shape={tuple(shape)} does not cover {len(devices)} devices")
  return Mesh(np.asarray(devices).reshape(shape), axes)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  """The mesh axes a batch is split over: the data axis, and ``fsdp`` when present."""
  return (mesh.axis_names[0],) + ((FSDP_AXIS,) if FSDP_AXIS in mesh.axis_names[1:] else ())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(batch_axes(mesh)))


def _fsdp_spec(shape: tuple[int, ...], n: int) -> P:
  """Split the largest dimension that ``n`` divides; replicate small or indivisible arrays."""
  if n <= 1 or int(np.prod(shape, dtype=np.int64)) < FSDP_MIN_SIZE:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % n == 0:
      spec = [None] * len(shape)
      spec[dim] = FSDP_AXIS
      return P(*spec)
  return P()


def state_shardings(mesh: Mesh, abstract_state: st.TrainState) -> Any:
  """Shardings for every leaf of the train state."""
  axes = batch_axes(mesh)
  rows = int(np.prod([mesh.shape[a] for a in axes]))
  fsdp = mesh.shape[FSDP_AXIS] if FSDP_AXIS in mesh.axis_names else 1
  replicated = NamedSharding(mesh, P())
  by_rows = NamedSharding(mesh, P(axes))

  def table_rule(x):
    return by_rows if x.shape[0] % rows == 0 else replicated

  def param_rule(x):
    return NamedSharding(mesh, _fsdp_spec(tuple(x.shape), fsdp))

  shardings = jax.tree.map(lambda _: replicated, abstract_state)
  table = abstract_state.vars.w["discriminator"]["W"]
  opt_w = abstract_state.opt_w
  return shardings.replace(
      vars=abstract_state.vars.replace(
          g=jax.tree.map(param_rule, abstract_state.vars.g),
          d=jax.tree.map(param_rule, abstract_state.vars.d),
          w={"discriminator": {"W": table_rule(table)}},
          sn=jax.tree.map(lambda _: replicated, abstract_state.vars.sn)),
      opt_g=jax.tree.map(param_rule, abstract_state.opt_g),
      opt_d=jax.tree.map(param_rule, abstract_state.opt_d),
      ema_g=jax.tree.map(param_rule, abstract_state.ema_g),
      opt_w=st.RowAdamState(mu=table_rule(opt_w.mu), nu=table_rule(opt_w.nu),
                            count=table_rule(opt_w.count)),
  )
