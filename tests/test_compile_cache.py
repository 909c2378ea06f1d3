"""The CLI's persistent XLA compilation cache: a second start compiles nothing, and
``--no-compile-cache`` neither reads nor writes it."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import skimage.data as skdata
from PIL import Image

from carphone_run import SIZE, carphone_run
from fewshot_jax import cli
from fewshot_jax.data import synthetic

MISS = re.compile(r"PERSISTENT COMPILATION CACHE MISS for '([^']+)'")
SRC = pathlib.Path(__file__).parents[1] / "src"


@pytest.fixture(scope="module")
def run_dir() -> pathlib.Path:
  return carphone_run()


def _animate(run_dir: pathlib.Path, tmp: pathlib.Path, cache: pathlib.Path, name: str) -> list[str]:
  """``fewshot-jax animate`` in a fresh process: the source's embedding, the generator and the
  landmark rasteriser (side by side); 0 fine-tuning steps keep it to seconds (the step is cached
  like any program: benchmarks/animate_startup.py). Returns the names of the programs it compiled
  (persistent cache misses)."""
  env = dict(os.environ, FEWSHOT_JAX_XLA_CACHE=str(cache), JAX_EXPLAIN_CACHE_MISSES="1",
             JAX_PLATFORMS="cpu", PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  out = subprocess.run(
      [sys.executable, "-m", "fewshot_jax.cli", "animate", "--checkpoint", str(run_dir),
       "--source", str(tmp / "astronaut.png"), "--driver", str(tmp / "driver.npy"),
       "--out", str(tmp / f"{name}.mp4"), "--finetune-steps", "0", "--layout", "side-by-side",
       "--batch-size", "4"], env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "audio: none: the driver is a landmark file" in out.stdout
  return MISS.findall(out.stderr)


def test_a_warm_start_compiles_nothing(run_dir, tmp_path):
  Image.fromarray(skdata.astronaut()).save(tmp_path / "astronaut.png")
  np.save(tmp_path / "driver.npy", synthetic.render_video(3, 6, SIZE)[1])
  cache = tmp_path / "xla"
  cold = _animate(run_dir, tmp_path, cache, "cold")
  assert len(cold) >= 3 and any(p.startswith("jit_") for p in cold), cold
  assert sum(1 for p in cache.rglob("*") if p.is_file()) >= len(set(cold))
  assert _animate(run_dir, tmp_path, cache, "warm") == []


def test_no_compile_cache_turns_the_cache_off(monkeypatch, tmp_path):
  updates = {}
  monkeypatch.setattr(jax.config, "update", updates.__setitem__)
  monkeypatch.setenv("FEWSHOT_JAX_XLA_CACHE", str(tmp_path))
  argv = ["export", "--checkpoint", "run", "--out", "x"]
  cli._setup(False, cli.build_parser().parse_args(argv).compile_cache)  # pylint: disable=protected-access
  assert updates == {"jax_compilation_cache_dir": str(tmp_path),
                     "jax_persistent_cache_min_compile_time_secs": 0.0}
  updates.clear()
  cli._setup(False, cli.build_parser().parse_args(["--no-compile-cache", *argv]).compile_cache)  # pylint: disable=protected-access
  assert updates == {}
