"""Orbax checkpoints of a run: the train state, the input iterator's position, and the config.

Each step is committed by a file, not a rename: Orbax writes the step's own folder and, last,
``commit_success.txt`` in it; a step folder without one is not a checkpoint. A save interrupted
half-way (a kill, a preemption) is therefore never seen as the latest checkpoint, and the previous
one stays whole, on every filesystem. Orbax's default on a local path commits by renaming a
temporary folder, which is atomic on a disk but not on a gcsfuse-mounted bucket (the documented
TPU path): there a folder rename is refused, or copied object by object then deleted, so a kill
mid-rename could leave a half-copied step under its final name. Orbax can also accept folders
saved by the rename protocol (``allow_legacy_atomic_rename``), but that check takes any step
folder not named ``*.orbax-checkpoint-tmp*`` as complete, a half-written one included, so it stays
off. Steps saved before this change need nothing: Orbax's rename protocol also writes
``commit_success.txt``, into the temporary folder before renaming it, so older runs resume as they
are (tested). Saves are asynchronous: the loop continues while the arrays are written. The last
``keep`` checkpoints are kept, plus every ``keep_every``-th step for good.

The iterator's state is captured when the save is requested and written by grain's Orbax handler
(one JSON file per process), so an asynchronous save cannot record a later position than the
state it is saved with.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from fewshot_jax import config as config_lib


# Commit each step with commit_success.txt, never by a folder rename (the module docstring says
# why, and why folders without that file are not accepted as checkpoints).
COMMIT_BY_FILE = ocp.options.AtomicityOptions(
    mode=ocp.options.AtomicityMode.COMMIT_FILE, allow_legacy_atomic_rename=False)


class IteratorSnapshot:
  """A data iterator's state frozen at one moment, in the shape grain's checkpoint handler reads
  and writes (``get_state() -> bytes``, ``set_state(bytes)``)."""

  def __init__(self, state: dict[str, Any] | None = None):
    self.state = None if state is None else json.dumps(state).encode()

  def get_state(self) -> bytes:
    return self.state

  def set_state(self, state: bytes) -> None:
    self.state = state

  def start_prefetch(self) -> None:  # called by grain's handler after a restore
    pass

  def as_dict(self) -> dict[str, Any]:
    return json.loads(self.state.decode())


class Checkpoints:
  """The checkpoints of one run, in ``<workdir>/checkpoints``."""

  def __init__(
      self,
      workdir: str | pathlib.Path,
      keep: int = 3,
      keep_every: int = 0,
      async_save: bool = True,
      read_only: bool = False,
  ):
    self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
    if read_only and not self.directory.is_dir():
      raise FileNotFoundError(f"no checkpoints in {pathlib.Path(workdir)} (expected "
                              f"{self.directory})")
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, keep_period=keep_every or None, create=not read_only,
            enable_async_checkpointing=async_save, read_only=read_only,
            atomicity_options=COMMIT_BY_FILE),
        item_names=("state", "config", "data"),
        item_handlers={"data": grain.checkpoint.CheckpointHandler()},
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(
      self,
      step: int,
      state: Any,
      config: ml_collections.ConfigDict,
      data_state: dict[str, Any] | None = None,
      wait: bool = False,
  ) -> None:
    """Saves ``step``; ``wait`` blocks until it is on disk (before exiting on preemption)."""
    items = {"state": ocp.args.StandardSave(state),
             "config": ocp.args.JsonSave(config.to_dict())}
    if data_state is not None:
      items["data"] = grain.checkpoint.CheckpointSave(IteratorSnapshot(data_state))
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)
    if wait:
      self.manager.wait_until_finished()

  def _step(self, step: int | None) -> int:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    return step

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, int]:
    """Restores ``step`` (default: latest) into the shapes and shardings of ``abstract_state``."""
    step = self._step(step)
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"], step

  def restore_data_state(self, step: int) -> dict[str, Any] | None:
    """This process's iterator state saved with ``step``, or None if the step has none."""
    if not (self.directory / str(step) / "data").is_dir():
      return None
    snapshot = IteratorSnapshot()
    self.manager.restore(
        step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(snapshot)))
    return snapshot.as_dict()

  def restore_config(self, step: int | None = None) -> ml_collections.ConfigDict:
    step = self._step(step)
    restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return config_lib.from_json_dict(restored["config"])

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings, for a sharded restore."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings
  )
