"""Loading a trained run, and saving/loading fitted identities (safetensors + JSON, never pickle)."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from fewshot_jax import config as config_lib
from fewshot_jax.atomic_files import atomic_path, write_text
from fewshot_jax.models.talking_head import ModelVars


@dataclasses.dataclass
class LoadedRun:
  graphdef: nnx.GraphDef
  vars: ModelVars  # E and G are the EMA weights unless loaded with use_ema=False
  config: ml_collections.ConfigDict
  step: int


def load_run(workdir: str | os.PathLike, use_ema: bool = True, step: int | None = None) -> LoadedRun:
  """Restores a run's checkpoint (latest by default) from ``workdir`` onto the host."""
  from fewshot_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from fewshot_jax.train import state as st  # pylint: disable=g-import-not-at-top

  workdir = pathlib.Path(workdir)
  cfg_path = workdir / "config.json"
  if not cfg_path.is_file():
    raise FileNotFoundError(f"{workdir} is not a run directory: no config.json")
  cfg = config_lib.from_json(cfg_path.read_text())
  num_videos = cfg.runtime.num_videos
  graphdef, _ = st.abstract_model(cfg, num_videos)
  abstract = jax.eval_shape(lambda k: st.init_train_state(cfg, num_videos, k),
                            jax.random.PRNGKey(0))
  ckpts = ckpt_lib.Checkpoints(workdir, async_save=False)
  try:
    state, step = ckpts.restore(abstract, step)
  finally:
    ckpts.close()
  v = state.vars.replace(g=state.ema_g) if use_ema else state.vars
  return LoadedRun(graphdef=graphdef, vars=jax.device_get(v), config=cfg, step=step)


def _flatten(tree: Any) -> dict[str, np.ndarray]:
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    key = "/".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path)
    flat[key] = np.asarray(leaf)
  return flat


def save_tree(path: str | os.PathLike, tree: Any, metadata: dict[str, str] | None = None) -> None:
  """Writes a pytree's leaves to safetensors, keyed by their paths, atomically."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  with atomic_path(path) as tmp:
    save_file(_flatten(tree), tmp, metadata=metadata)


def load_tree(path: str | os.PathLike, like: Any) -> Any:
  """Reads a pytree saved by ``save_tree`` into the structure of ``like``, checking every leaf."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no such file: {path}")
  data = load_file(str(path))
  expected = _flatten(like)
  missing = sorted(set(expected) - set(data))
  if missing:
    raise ValueError(f"{path}: missing tensors {missing[:5]} (and {max(0, len(missing) - 5)} more)")
  for k, ref in expected.items():
    if data[k].shape != ref.shape:
      raise ValueError(f"{path}: tensor {k} has shape {data[k].shape}, expected {ref.shape}")
  leaves = [data[k] for k in expected]
  return jax.tree.unflatten(jax.tree.structure(like), leaves)


def save_identity(directory: str | os.PathLike, fs: Any, info: dict[str, Any]) -> None:
  """A fitted identity: ``identity.safetensors`` (ψ', G, D weights) and ``identity.json``."""
  directory = pathlib.Path(directory)
  save_tree(directory / "identity.safetensors", fs)
  write_text(directory / "identity.json", json.dumps(info, indent=2))
