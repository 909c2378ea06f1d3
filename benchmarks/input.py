"""Input pipeline throughput (episodes/s) against the rate at which the train step consumes them.

Why: on an accelerator the step is fast and the host must keep up; a starved step wastes the chips.
This measures the grain pipeline on real shards written by the data-prep builder (synthetic videos,
JPEG q95), for each format and worker count, at the configs' sizes: ``paper_256`` (256 px, K = 8)
and ``demo_64`` (64 px, K = 4). It also times the jitted train step of the same config on this
CPU, so the two rates sit side by side in one file.

  python benchmarks/input.py [--out runs/bench/input.json] [--workers 0 1 2] [--skip-step]

Episodes/s counts videos turned into episodes (K + 1 JPEG decodes, landmark gathers, batching);
the first batch (worker start-up) is excluded. Results depend on the cores the workers get: on this
2-core machine, 2 workers plus the main process oversubscribe.
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import jax
import tensorflow_datasets as tfds

from fewshot_jax import config as config_lib
from fewshot_jax.atomic_files import write_json
from fewshot_jax.content import build_content_loss
from fewshot_jax.data import episodes
from fewshot_jax.prep import tfds_builder
from fewshot_jax.train import sharding as sh
from fewshot_jax.train import state as st
from fewshot_jax.train import step as step_lib

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import train_step  # noqa: E402  pylint: disable=g-import-not-at-top


def build(root: pathlib.Path, size: int, videos: int, file_format: str) -> str:
  config = tfds_builder.TalkingHeadsConfig(
      name=f"bench_{size}", source="synthetic", image_size=size, num_train_videos=videos,
      num_test_videos=0, frames_per_video=32, frame_stride=8)
  builder = tfds_builder.TalkingHeads(config=config, data_dir=root / file_format,
                                      file_format=file_format)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=4))
  return builder.data_dir


def episodes_per_second(data_dir: str, cfg, workers: int, batches: int) -> float:
  cfg = config_lib.apply_overrides(cfg, [f"data.workers={workers}"])
  source = episodes.EpisodeSource.from_shards(data_dir)
  it = iter(episodes.episode_dataset(source, cfg, process_index=0, process_count=1))
  next(it)  # start-up: worker processes, file opening
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  rate = batches * cfg.train.batch_size / (time.perf_counter() - t0)
  close = getattr(it, "close", None)
  if close:
    close()
  return rate


def step_seconds(cfg, iters: int) -> dict[str, Any]:
  """Median seconds of the jitted train step (one G/E update and ``d_steps`` D updates)."""
  num_videos = max(cfg.train.batch_size, 8)
  graphdef, _ = st.abstract_model(cfg, num_videos)
  content = build_content_loss(cfg.loss)
  init = functools.partial(st.init_train_state, cfg, num_videos)
  mesh = sh.make_mesh(cfg)
  shardings = sh.state_shardings(mesh, jax.eval_shape(init, jax.random.PRNGKey(0)))
  state = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(0))
  b = cfg.train.batch_size
  batch = train_step.random_batch(b, cfg.train.k_shots, cfg.model.image_size)
  step = jax.jit(step_lib.make_train_step(graphdef, cfg, content), donate_argnums=0)
  t0 = time.perf_counter()
  state, m = step(state, batch, content.params)
  jax.block_until_ready(m)
  compile_and_first = time.perf_counter() - t0
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    state, m = step(state, batch, content.params)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  sec = statistics.median(times)
  return {"batch": b, "seconds_per_step": round(sec, 3), "episodes_per_second": round(b / sec, 2),
          "first_call_seconds": round(compile_and_first, 1), "iters": iters}


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="runs/bench/input.json")
  parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--videos", type=int, default=48)
  parser.add_argument("--batches", type=int, default=20)
  parser.add_argument("--step-iters", type=int, default=2)
  parser.add_argument("--skip-step", action="store_true", help="input rates only")
  args = parser.parse_args(argv)

  result: dict[str, Any] = {
      "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                  "python": platform.python_version(), "jax": jax.__version__},
  }
  with tempfile.TemporaryDirectory() as tmp:
    for name, overrides in (("paper_256", ["train.batch_size=8"]), ("demo_64", [])):
      cfg = config_lib.apply_overrides(config_lib.load_config(name), overrides)
      size = cfg.model.image_size
      entry: dict[str, Any] = {"image_size": size, "k_shots": cfg.train.k_shots,
                               "batch": cfg.train.batch_size, "episodes_per_second": {}}
      for file_format in ("tfrecord", "array_record"):
        data_dir = build(pathlib.Path(tmp) / name, size, args.videos, file_format)
        for w in args.workers:
          rate = episodes_per_second(data_dir, cfg, w, args.batches)
          entry["episodes_per_second"][f"{file_format}_workers{w}"] = round(rate, 1)
          print(f"{name} {file_format} workers={w}: {rate:.1f} episodes/s", flush=True)
      if not args.skip_step:
        step_cfg = cfg if name == "demo_64" else config_lib.apply_overrides(
            cfg, ["train.batch_size=2"])
        entry["train_step_cpu"] = step_seconds(step_cfg, args.step_iters)
        print(f"{name} step: {entry['train_step_cpu']}", flush=True)
      result[name] = entry
  out = write_json(args.out, result)
  print(out)
  return out


if __name__ == "__main__":
  main()
