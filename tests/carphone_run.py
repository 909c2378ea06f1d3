"""One small model meta-trained on the carphone speaker's face crops, shared by every test file.

Several test files animate real faces (the astronaut driven by the carphone clip) and need a
generator that has learnt what landmarks mean on a real face: the tiny test config cannot learn
one. Training it costs about a minute and a half, so it is trained once per source tree and kept
under ``.pytest_cache/carphone_run/<key>``: pytest-xdist workers wait on a file lock instead of
training it twice, and a re-run of the suite on an unchanged tree reuses it. The key hashes the
training sources and this file, so a change to the model, the loop or the recipe retrains.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys

from conftest import TEST_XLA_FLAGS
from test_prep_backends import carphone_path

SIZE = 64
TRAIN_STEPS = 600
ROOT = pathlib.Path(__file__).parents[1]
# FEWSHOT_JAX_TEST_RUN_CACHE: another checkout's cache (a git worktree's tests reuse main's run).
CACHE = pathlib.Path(os.environ.get("FEWSHOT_JAX_TEST_RUN_CACHE",
                                    ROOT / ".pytest_cache" / "carphone_run"))
# What the trained weights depend on: the model, losses, loop, data path and the config. Inference
# code is left out, so work on animate or fine-tuning reuses the run.
TRAINING_SOURCES = ("models", "train", "data", "prep", "losses.py", "config.py", "landmarks.py",
                    "images.py", "host_memory.py", "content.py")

_TRAIN_ON_CARPHONE = """
import pathlib, sys
import numpy as np
from fewshot_jax import config as config_lib
from fewshot_jax.data.episodes import EpisodeSource
from fewshot_jax.prep import crop as crop_lib
from fewshot_jax.prep.backends import make_backend
from fewshot_jax.prep.video import read_video
from fewshot_jax.train.loop import train

video, workdir = sys.argv[1], pathlib.Path(sys.argv[2])
size, steps = int(sys.argv[3]), int(sys.argv[4])
backend = make_backend("dlib")
frames, _ = read_video(video)
found = [(i, f[0].landmarks) for i, f in enumerate(map(backend.detect, frames)) if f]
points = np.stack([p for _, p in found])
boxes = crop_lib.crop_boxes(points)
crops = [crop_lib.crop_frame(frames[i], b, p, size) for (i, p), b in zip(found, boxes)]
n = len(crops) // 8 * 8
video_frames = np.stack([c[0] for c in crops[:n]]).reshape(8, -1, size, size, 3)
video_points = np.stack([c[1] for c in crops[:n]]).reshape(8, -1, 68, 2)
# demo_64's architecture: the test tiny one cannot learn a face in a few hundred steps.
cfg = config_lib.apply_overrides(config_lib.load_config("demo_64"), [
    "train.batch_size=4", "train.k_shots=2", "data.workers=0", f"train.steps={steps}",
    f"train.checkpoint_every={steps}", "train.log_every=100", "train.sample_every=0"])
train(cfg, workdir, EpisodeSource.from_arrays(video_frames, video_points))
"""


def _key() -> str:
  digest = hashlib.sha256(_TRAIN_ON_CARPHONE.encode())
  package = ROOT / "src" / "fewshot_jax"
  files = [ROOT / "experiments" / "demo_64.py", ROOT / "experiments" / "base.py"]
  for name in TRAINING_SOURCES:
    files += sorted((package / name).rglob("*.py")) if (package / name).is_dir() else [package / name]
  for path in files:
    digest.update(str(path.relative_to(ROOT)).encode())
    digest.update(path.read_bytes())
  digest.update(f"{SIZE} {TRAIN_STEPS}".encode())
  return digest.hexdigest()[:16]


KEEP = 3  # runs of other trees kept (worktrees of one checkout share a cache)


def _prune() -> None:
  """Removes runs killed while training, and all but the ``KEEP`` most recently used runs."""
  runs = []
  for entry in CACHE.iterdir():
    if entry.name.startswith(".training-"):
      pid = entry.name.removeprefix(".training-")
      if not pid.isdigit() or not pathlib.Path(f"/proc/{pid}").exists():
        shutil.rmtree(entry, ignore_errors=True)
    elif entry.is_dir():
      runs.append(entry)
  for stale in sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)[KEEP:]:
    shutil.rmtree(stale, ignore_errors=True)


def carphone_run() -> pathlib.Path:
  """The trained run's directory (trained here on first use; read-only for the tests).

  Trained in a subprocess at XLA's default optimisation level: the suite compiles at level 0,
  whose slower programs would add a minute to these 600 steps.
  """
  CACHE.mkdir(parents=True, exist_ok=True)
  done = CACHE / _key()
  with open(CACHE / "lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be training it: wait for it
    if (done / "config.json").is_file():
      os.utime(done)  # most recently used: kept by _prune
      return done
    _prune()
    staging = CACHE / f".training-{os.getpid()}"
    env = dict(os.environ)
    flags = env.pop("XLA_FLAGS", "").replace(TEST_XLA_FLAGS, "").strip()
    if flags:  # XLA reads a blank value as a file name
      env["XLA_FLAGS"] = flags
    out = subprocess.run([sys.executable, "-c", _TRAIN_ON_CARPHONE, str(carphone_path()),
                          str(staging), str(SIZE), str(TRAIN_STEPS)],
                         env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    staging.rename(done)
    return done
