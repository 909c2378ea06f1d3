"""Throughput of the synthetic data generator and of the on-device landmark rasteriser.

Why: the demo renders its whole training set before it trains, inside a fixed time budget, and the
rasteriser runs inside every jitted train step; these numbers say whether either can become the
bottleneck, and on how many cores. The generator is timed in one process pinned to one core
(``make_dataset`` scales it with worker processes), the rasteriser as a jitted function on the
default JAX device. Compilation and warm-up are excluded; each figure is the median of repeats.

Usage::

  python benchmarks/synthetic.py [--out runs/bench/synthetic.json] [--frames 64] [--size 64]
                                 [--videos 8] [--also-size 256] [--repeats 5]

It writes the JSON atomically and prints its path.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import PIL

from fewshot_jax.atomic_files import write_json
from fewshot_jax.data import synthetic


@contextlib.contextmanager
def _one_core() -> Iterator[int | None]:
  """Pins this process to a single CPU for the block, so "frames/s" means per core.

  Yields the CPU used, or None where affinity cannot be set (then the process is unpinned, which
  for the single-threaded renderer is still about one core).
  """
  if not hasattr(os, "sched_setaffinity"):
    yield None
    return
  allowed = os.sched_getaffinity(0)
  cpu = max(allowed)
  os.sched_setaffinity(0, {cpu})
  try:
    yield cpu
  finally:
    os.sched_setaffinity(0, allowed)


def _summary(values: Sequence[float]) -> dict[str, Any]:
  return {"median": statistics.median(values), "min": min(values), "max": max(values),
          "all": list(values)}


def bench_generator(size: int, frames: int, videos: int, repeats: int) -> dict[str, Any]:
  """Frames/s of ``render_video`` in a loop over ``videos`` identities, one process, one core."""
  with _one_core() as cpu:
    synthetic.render_video(10_000, min(frames, 4), size)  # warm-up: imports, allocator, caches
    rates = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      for seed in range(videos):
        synthetic.render_video(seed, frames, size)
      rates.append(videos * frames / (time.perf_counter() - t0))
  fps = _summary(rates)
  return {"image_size": size, "frames_per_video": frames, "videos_per_repeat": videos,
          "repeats": repeats, "pinned_cpu": cpu, "frames_per_s": fps,
          "ms_per_frame_median": 1e3 / fps["median"]}


def bench_rasterizer(size: int, batch: int, repeats: int, min_time: float) -> dict[str, Any]:
  """Milliseconds per frame of the jitted ``landmark_images`` on ``batch`` synthetic faces."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from fewshot_jax import landmarks as lmk  # pylint: disable=g-import-not-at-top

  # Real face layouts at this size; landmarks scale linearly with the image, so render small.
  _, points = synthetic.render_video(0, batch, 32)
  points = jax.device_put(jnp.asarray(points * (size / 32), jnp.float32))
  thickness = lmk.default_thickness(size)
  fn = jax.jit(lambda p: lmk.landmark_images(p, size, thickness))
  t0 = time.perf_counter()
  fn(points).block_until_ready()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  fn(points).block_until_ready()  # warm-up run after compilation
  iters = max(1, int(min_time / max(time.perf_counter() - t0, 1e-6)))
  per_call = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(iters):
      fn(points).block_until_ready()
    per_call.append((time.perf_counter() - t0) / iters * 1e3)
  calls = _summary(per_call)
  return {"image_size": size, "batch": batch, "thickness": thickness, "repeats": repeats,
          "calls_per_repeat": iters, "compile_s": compile_s, "ms_per_call": calls,
          "ms_per_frame_median": calls["median"] / batch}


def machine_info() -> dict[str, Any]:
  """What the numbers were measured on; the load average shows a shared, busy machine."""
  info = {
      "platform": platform.platform(),
      "machine": platform.machine(),
      "processor": platform.processor(),
      "python": platform.python_version(),
      "cpu_count": os.cpu_count(),
      "cpus_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
      "numpy": np.__version__,
      "pillow": PIL.__version__,
  }
  if hasattr(os, "getloadavg"):
    info["load_average_1_5_15"] = list(os.getloadavg())
  return info


def _jax_info() -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top

  return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "backend": jax.default_backend(),
          "devices": [str(d) for d in jax.devices()]}


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="runs/bench/synthetic.json", help="output JSON")
  parser.add_argument("--frames", type=int, default=64, help="frames per rendered video")
  parser.add_argument("--size", type=int, default=64, help="generator image size")
  parser.add_argument("--videos", type=int, default=8, help="videos rendered per repeat")
  parser.add_argument("--also-size", type=int, default=256,
                      help="a second generator image size to time (0: none)")
  parser.add_argument("--repeats", type=int, default=5, help="timed repeats; the median is kept")
  parser.add_argument("--raster-sizes", type=int, nargs="*", default=[256, 64])
  parser.add_argument("--raster-batches", type=int, nargs="*", default=[1, 32])
  parser.add_argument("--min-time", type=float, default=0.2,
                      help="rasteriser: seconds of calls per repeat (at least one call)")
  args = parser.parse_args(argv)
  for name in ("frames", "size", "videos", "repeats"):
    if getattr(args, name) < 1:
      parser.error(f"--{name.replace('_', '-')} must be >= 1")

  started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  machine = machine_info()
  # The generator first: jax is not imported yet, so no XLA threads compete with it.
  sizes = [args.size] + ([args.also_size] if args.also_size > 0 else [])
  generator = [bench_generator(s, args.frames, args.videos, args.repeats) for s in sizes]
  for g in generator:
    print(f"generator {g['image_size']}x{g['image_size']}: "
          f"{g['frames_per_s']['median']:.0f} frames/s on one core", file=sys.stderr)
  raster = []
  for size in args.raster_sizes:
    for batch in args.raster_batches:
      r = bench_rasterizer(size, batch, args.repeats, args.min_time)
      raster.append(r)
      print(f"rasteriser {size}x{size} batch {batch}: {r['ms_per_frame_median']:.3f} ms/frame "
            f"({r['ms_per_call']['median']:.2f} ms/call)", file=sys.stderr)
  machine.update(_jax_info())
  if hasattr(os, "getloadavg"):
    machine["load_average_1_5_15_after"] = list(os.getloadavg())
  result = {
      "benchmark": "synthetic",
      "started_utc": started,
      "argv": sys.argv[1:] if argv is None else list(argv),
      "machine": machine,
      "generator": generator,
      "rasterizer": raster,
  }
  out = write_json(args.out, result)
  print(out)
  return out


if __name__ == "__main__":
  main()
