"""Loading a trained run's weights for inference, without importing any training code.

A run directory holds ``config.json`` and Orbax checkpoints of the whole train state (optimiser
moments, the per-video table W, ...). Inference needs only E's and G's weights (the EMA copy by
default), D's weights (fine-tuning trains against D) and the spectral-norm vectors, so only those
are read (an Orbax partial restore): W alone is ``num_videos x 512`` floats, 300 MB on VoxCeleb2,
and the Adam moments are twice the parameters. The table is replaced by one zero row, which no
inference path reads (fine-tuning projects onto ``w0 + ê``, never onto a row of W).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from fewshot_jax import config as config_lib
from fewshot_jax.atomic_files import filesystem_path
from fewshot_jax.inference.tensors import flat_paths, like
from fewshot_jax.models.talking_head import ModelVars, abstract_model


class IncompatibleCheckpoint(ValueError):
  """A checkpoint whose arrays do not fit the model its config (or the caller) describes."""


@dataclasses.dataclass
class LoadedRun:
  """A run's inference weights on the host.

  Attributes:
    graphdef: the model's static graph (built for a one-row table W).
    vars: the weights by role; ``vars.g`` is the EMA copy of E and G unless loaded otherwise.
    config: the run's config, with any overrides applied.
    step: the checkpoint's step.
    workdir: the run directory.
  """

  graphdef: nnx.GraphDef
  vars: ModelVars
  config: ml_collections.ConfigDict
  step: int
  workdir: pathlib.Path


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
  """Finished checkpoint steps in ``workdir/checkpoints``, oldest first.

  A step is committed by ``commit_success.txt``, written last in its folder
  (``train/checkpoint.py``), so a save cut short is never picked up.
  """
  root = pathlib.Path(workdir) / "checkpoints"
  if not root.is_dir():
    return []
  return sorted(int(p.name) for p in root.iterdir()
                if p.name.isdigit() and (p / "commit_success.txt").is_file())


def check_shapes(where: str, expected: Any, found: Any) -> None:
  """Raises ``IncompatibleCheckpoint`` listing every array whose presence or shape differs.

  Args:
    where: what ``found`` was read from (named in the error).
    expected: a pytree of arrays or ShapeDtypeStructs the model needs.
    found: the same kind of pytree (or Orbax metadata) read from storage.
  """
  want, have = flat_paths(expected), flat_paths(found)
  problems = [f"{k}: expected {tuple(want[k].shape)}, found "
              + (f"{tuple(have[k].shape)}" if k in have else "nothing")
              for k in sorted(want) if k not in have or tuple(have[k].shape) != tuple(want[k].shape)]
  problems += [f"{k}: not in the model, found {tuple(have[k].shape)}"
               for k in sorted(set(have) - set(want))]
  if problems:
    shown = "\n  ".join(problems[:8])
    more = f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else ""
    raise IncompatibleCheckpoint(
        f"{where} does not match the model of its config ({len(problems)} arrays differ); was "
        f"it written with another config, or were model.* overrides given?\n  {shown}{more}")


def load_run(
    workdir: str | os.PathLike,
    use_ema: bool = True,
    step: int | None = None,
    overrides: Sequence[str] = (),
) -> LoadedRun:
  """Reads a run's inference weights (latest checkpoint by default) onto the host.

  Args:
    workdir: a run directory written by ``fewshot-jax train`` or ``demo``.
    use_ema: E and G from the EMA copy (what the paper evaluates) rather than the raw weights.
    step: a checkpoint step; default the latest.
    overrides: ``key=value`` config overrides (``finetune.*`` for instance); ``model.*`` overrides
      that change shapes are reported as an incompatible checkpoint.

  Raises:
    FileNotFoundError: ``workdir`` has no config.json or no finished checkpoint.
    IncompatibleCheckpoint: the arrays do not fit the config's model (expected vs found shapes).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  workdir = filesystem_path(workdir, "checkpoint")
  cfg_path = workdir / "config.json"
  if not cfg_path.is_file():
    raise FileNotFoundError(f"{workdir} is not a run directory: no config.json")
  cfg = config_lib.apply_overrides(config_lib.from_json(cfg_path.read_text()), list(overrides))
  if overrides:  # a fine-tuning override is checked like a training one (config_checks.py)
    from fewshot_jax import config_checks  # pylint: disable=g-import-not-at-top
    config_checks.validate(cfg, check_files=False)
  steps = checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"{workdir}: no finished checkpoint in {workdir / 'checkpoints'}")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise FileNotFoundError(f"{workdir}: no checkpoint for step {step} (found {steps})")
  path = (workdir / "checkpoints" / str(step) / "state").absolute()

  graphdef, abstract = abstract_model(cfg, 1)
  expected = {"d": abstract.d, "sn": abstract.sn, "g": abstract.g}
  checkpointer = ocp.PyTreeCheckpointer()
  absl_log = logging.getLogger("absl")
  level = absl_log.level
  absl_log.setLevel(logging.ERROR)  # Orbax warns that the item has no step metadata: expected
  try:
    meta = checkpointer.metadata(path).item_metadata.tree
  finally:
    absl_log.setLevel(level)
  if "vars" not in meta or "ema_g" not in meta:
    raise IncompatibleCheckpoint(f"{path}: not a fewshot_jax train state (top-level keys "
                                 f"{sorted(meta)})")
  found = {"d": meta["vars"]["d"], "sn": meta["vars"]["sn"],
           "g": meta["ema_g"] if use_ema else meta["vars"]["g"]}
  check_shapes(str(path), expected, found)

  wanted = {"vars": {"d": meta["vars"]["d"], "sn": meta["vars"]["sn"]}}
  if use_ema:
    wanted["ema_g"] = meta["ema_g"]
  else:
    wanted["vars"]["g"] = meta["vars"]["g"]
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
  try:
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item=wanted, restore_args=restore_args, partial_restore=True))
  finally:
    checkpointer.close()
  table = abstract.w["discriminator"]["W"]
  v = ModelVars(w={"discriminator": {"W": np.zeros(table.shape, table.dtype)}},
                d=restored["vars"]["d"], sn=restored["vars"]["sn"],
                g=restored["ema_g"] if use_ema else restored["vars"]["g"])
  # Orbax hands back plain dicts (integer keys as strings); rebuild the model's own structure.
  return LoadedRun(graphdef=graphdef, vars=like(abstract, v), config=cfg, step=step,
                   workdir=workdir)
