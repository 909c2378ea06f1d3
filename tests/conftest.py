"""Shared fixtures: a tiny model config that compiles in seconds, and synthetic episodes."""

from __future__ import annotations

import os
import pathlib

import jax
import numpy as np
import pytest

from fewshot_jax import config as config_lib

# Every skip fails: the dev extra installs all that the tests need (tests/skips_fail.py says why).
pytest_plugins = ["skips_fail"]

# Identical programs compiled by several tests (a resumed run, a re-built step) hit this disk cache
# instead of compiling again; XLA:CPU compiles are the slow part of this suite.
jax.config.update(
    "jax_compilation_cache_dir", str(pathlib.Path(__file__).parents[1] / ".pytest_cache" / "xla")
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

# On a cold cache (CI), XLA:CPU's compiles are most of this suite's time, and LLVM's optimisation
# is most of a compile: at level 0 the tiny model's train step compiles in half the time (5.9
# against 11.8 s, its initialisation 6.3 against 15 s) and runs 5% slower. The tests check
# behaviour, not speed; users and benchmarks keep XLA's default. Set before the backend starts,
# and passed on to the subprocesses the tests start.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):  # xdist workers inherit it
  os.environ["XLA_FLAGS"] = f"{TEST_XLA_FLAGS} {os.environ.get('XLA_FLAGS', '')}".strip()

TINY_OVERRIDES = [
    "model.image_size=32",
    "model.embed_dim=32",
    "model.e_channels=(8, 16, 32)",
    "model.e_attn_res=(8,)",
    "model.d_channels=(8, 16, 32)",
    "model.d_attn_res=(8,)",
    "model.g_down_channels=(8, 16)",
    "model.g_res_blocks=1",
    "model.g_up_channels=(16, 8)",
    "model.g_attn_down_res=()",
    "model.g_attn_up_res=(16,)",
    "train.batch_size=4",
    "train.k_shots=2",
    "train.d_steps=2",
    "train.log_every=1",
    "train.sample_every=0",
    "finetune.steps=3",
    "data.frames_per_video=8",
    "data.workers=0",
    "eval.targets_per_video=2",
]


def tiny_config(*extra: str):
  cfg = config_lib.load_config("demo_64")
  return config_lib.apply_overrides(cfg, TINY_OVERRIDES + list(extra))


@pytest.fixture
def tiny_cfg():
  return tiny_config()


def random_videos(num_videos: int, frames: int, size: int, seed: int = 0):
  """Random frames with plausible face-sized landmark clouds; enough to exercise the step."""
  rng = np.random.default_rng(seed)
  f = rng.integers(0, 256, (num_videos, frames, size, size, 3), dtype=np.uint8)
  centre = size / 2 + rng.normal(0, size / 16, (num_videos, frames, 1, 2))
  p = centre + rng.normal(0, size / 6, (num_videos, frames, 68, 2))
  return f, np.clip(p, 1, size - 1).astype(np.float32)


# The carphone-trained model (tests/carphone_run.py) takes minutes to train and several test files
# need it. Those files run last, and the first worker starts training it in the background as soon
# as the tests are collected, so no worker sits waiting on its lock while the other trains it.
_CARPHONE_IMPORT = "from carphone_run import"
_uses_carphone: dict[pathlib.Path, bool] = {}
_pretrain: list = []


def _needs_carphone(item) -> bool:
  path = pathlib.Path(item.path)
  if path not in _uses_carphone:
    _uses_carphone[path] = _CARPHONE_IMPORT in path.read_text()
  return _uses_carphone[path]


def pytest_collection_modifyitems(session, config, items):  # pylint: disable=unused-argument
  items.sort(key=_needs_carphone)  # stable: each file stays whole, in its order
  if os.environ.get("PYTEST_XDIST_WORKER", "gw0") != "gw0" or not any(map(_needs_carphone, items)):
    return
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  tests = pathlib.Path(__file__).parent
  (tests.parent / ".pytest_cache").mkdir(exist_ok=True)
  log = open(tests.parent / ".pytest_cache" / "carphone_pretrain.log", "w")  # pylint: disable=consider-using-with
  _pretrain.append(subprocess.Popen(
      [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import carphone_run; "
       "carphone_run.carphone_run()", str(tests)], stdout=log, stderr=log))


def pytest_sessionfinish(session, exitstatus):  # pylint: disable=unused-argument
  for proc in _pretrain:  # a session that ended first (one file, -x) does not leave it behind
    if proc.poll() is None:
      proc.terminate()
      proc.wait()
