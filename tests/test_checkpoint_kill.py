"""A SIGKILL while a real asynchronous checkpoint save is in flight leaves the previous checkpoint
the latest, whole and restorable, and the run can save again over the debris; and a save never
renames a folder, which a gcsfuse-mounted bucket cannot do atomically.

The save is the project's own ``Checkpoints.save`` in a child process, of a state large enough
(128 MiB of incompressible floats, about 2 s of writing here) that the child can report the save
still in progress and be killed before Orbax commits it. The test checks that it was: the killed
step's folder has no ``commit_success.txt``.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np

from conftest import TEST_XLA_FLAGS, tiny_config
from fewshot_jax.train import checkpoint as ckpt_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
LEAVES, LEAF_FLOATS = 8, 4 * 2**20  # 8 x 16 MiB


def _state(step: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(step)
  return {f"w{i}": rng.standard_normal(LEAF_FLOATS, np.float32) for i in range(LEAVES)}


_CHILD = """
import sys, time
sys.path.insert(0, sys.argv[2])
import jax
from conftest import tiny_config
from test_checkpoint_kill import _state
from fewshot_jax.train.checkpoint import Checkpoints
ckpts = Checkpoints(sys.argv[1], keep=1)  # keep=1: step 1 is the only copy while 2 is written
ckpts.save(1, jax.device_put(_state(1)), tiny_config(), {"next_index": 1}, wait=True)
ckpts.save(2, jax.device_put(_state(2)), tiny_config(), {"next_index": 2})
print("in flight" if ckpts.manager.is_saving_in_progress() else "already done", flush=True)
time.sleep(600)
"""


def test_sigkill_during_an_async_save_keeps_the_previous_checkpoint(tmp_path):
  workdir = tmp_path / "run"
  env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": TEST_XLA_FLAGS}
  proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(workdir), str(REPO / "tests")],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    line = proc.stdout.readline().strip()
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.kill()
    proc.wait(timeout=30)
  assert line == "in flight", f"the save was not in flight when killed: {line!r} " \
                              f"{proc.stderr.read()[-3000:]}"
  assert proc.returncode == -signal.SIGKILL
  directory = workdir / "checkpoints"
  # It was killed mid-save: step 2's folder was being written, and was never committed.
  assert (directory / "2").is_dir(), sorted(directory.iterdir())
  assert not (directory / "2" / "commit_success.txt").exists()
  assert (directory / "1" / "commit_success.txt").is_file()

  ckpts = ckpt_lib.Checkpoints(workdir, read_only=True)
  assert ckpts.all_steps() == [1] and ckpts.latest_step() == 1
  want = _state(1)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=device) for k, v in want.items()}
  restored, step = ckpts.restore(abstract)
  assert step == 1
  for key, value in want.items():
    np.testing.assert_array_equal(np.asarray(restored[key]), value)
  assert ckpts.restore_data_state(1) == {"next_index": 1}
  assert ckpts.restore_config().to_dict() == tiny_config().to_dict()

  # A resumed run saves the same step again, past the killed save's debris.
  again = ckpt_lib.Checkpoints(workdir, keep=1, async_save=False)
  again.save(2, jax.device_put(_state(2)), tiny_config(), {"next_index": 2})
  again.close()
  assert ckpt_lib.Checkpoints(workdir, read_only=True).all_steps() == [2]


def test_a_save_commits_by_a_file_never_by_renaming_a_folder(tmp_path, monkeypatch):
  """On a gcsfuse mount a folder rename is refused, or copied then deleted object by object: a
  kill mid-rename would leave a half-copied step under its final name. So no save renames one."""
  renamed = []
  for name in ("rename", "replace"):
    original = getattr(os, name)

    def spy(src, dst, *args, _original=original, **kwargs):
      if os.path.isdir(src):
        renamed.append((os.fspath(src), os.fspath(dst)))
      return _original(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, name, spy)
  ckpts = ckpt_lib.Checkpoints(tmp_path, keep=1)
  for step in (1, 2):
    ckpts.save(step, {"x": np.full((4,), step, np.float32)}, tiny_config(), {"next_index": step})
  ckpts.close()
  assert renamed == []
  assert ckpt_lib.Checkpoints(tmp_path, read_only=True).all_steps() == [2]
  assert (tmp_path / "checkpoints" / "2" / "commit_success.txt").is_file()


def test_a_run_saved_by_the_rename_protocol_still_resumes(tmp_path):
  """Runs saved before the commit-file protocol (Orbax's default, which renames a temporary
  folder) are found by training and by inference as they are: Orbax writes commit_success.txt
  into the temporary folder before renaming it."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from fewshot_jax.inference.run import checkpoint_steps  # pylint: disable=g-import-not-at-top

  state = {"w": np.arange(6, dtype=np.float32)}
  old = ocp.CheckpointManager(tmp_path / "checkpoints",
                              options=ocp.CheckpointManagerOptions(create=True),
                              item_names=("state", "config"))
  old.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      config=ocp.args.JsonSave(tiny_config().to_dict())))
  old.wait_until_finished()
  old.close()
  assert checkpoint_steps(tmp_path) == [5]
  ckpts = ckpt_lib.Checkpoints(tmp_path)
  try:
    assert ckpts.latest_step() == 5
    restored, step = ckpts.restore(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                                state))
    np.testing.assert_array_equal(restored["w"], state["w"])
  finally:
    ckpts.close()
