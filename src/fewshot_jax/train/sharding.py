"""Device mesh and sharding rules for the train state and batches.

Batches are split along the mesh's first axis ('data'). The table W is split by rows along the same
axis when its row count divides evenly (each device holds a slice of the videos); every other leaf
is replicated. This works unchanged on 1 device and on N.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fewshot_jax.train import state as st


def make_mesh(cfg: ml_collections.ConfigDict, devices: list | None = None) -> Mesh:
  """A mesh of shape ``train.mesh_shape`` (-1: all remaining devices) named ``train.mesh_axes``."""
  devices = list(devices if devices is not None else jax.devices())
  shape = list(cfg.train.mesh_shape)
  if shape.count(-1) > 1:
    raise ValueError(f"train.mesh_shape={tuple(shape)}: at most one -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"train.mesh_shape={tuple(shape)} does not cover {len(devices)} devices")
  return Mesh(np.asarray(devices).reshape(shape), tuple(cfg.train.mesh_axes))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(mesh.axis_names[0]))


def state_shardings(mesh: Mesh, abstract_state: st.TrainState) -> Any:
  """Shardings for every leaf of the train state (table rows split, the rest replicated)."""
  data = mesh.axis_names[0]
  rows = mesh.shape[data]
  replicated = NamedSharding(mesh, P())
  by_rows = NamedSharding(mesh, P(data))

  def table_rule(x):
    return by_rows if x.shape[0] % rows == 0 else replicated

  shardings = jax.tree.map(lambda _: replicated, abstract_state)
  table = abstract_state.vars.w["discriminator"]["W"]
  opt_w = abstract_state.opt_w
  return shardings.replace(
      vars=shardings.vars.replace(w={"discriminator": {"W": table_rule(table)}}),
      opt_w=st.RowAdamState(mu=table_rule(opt_w.mu), nu=table_rule(opt_w.nu),
                            count=table_rule(opt_w.count)),
  )
