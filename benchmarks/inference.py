"""Inference speed on this machine: generation frames/s, fine-tuning time, the rasteriser.

Why: ``animate`` spends its time in three places: fitting the identity (fine-tuning), generating
one frame per driver frame, and drawing the landmark images the generator reads. This times each
with random weights (speed does not depend on the values) at the configs' architectures:
``paper_256`` (256 px) and ``demo_64`` (64 px), generation at batch 1 and 8.

  python benchmarks/inference.py [--out runs/bench/inference.json] [--finetune-steps 20]

Each figure is the median over ``--iters`` calls after one warm-up call (which compiles); the
compile time is reported on its own. Fine-tuning uses the config's content loss as shipped (pixel
L1: no VGG weights are on this machine), K = 1 shot.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fewshot_jax import config as config_lib
from fewshot_jax import landmarks as lmk
from fewshot_jax.atomic_files import write_json
from fewshot_jax.content import build_content_loss
from fewshot_jax.data import synthetic
from fewshot_jax.inference import finetune as inf
from fewshot_jax.models.talking_head import TalkingHeadModel, split_model


def _timed(fn: Callable[[], Any], iters: int) -> dict[str, float]:
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return {"median": statistics.median(times), "min": min(times), "max": max(times),
          "first_call": first}


def _points(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
  return rng.uniform(size * 0.3, size * 0.7, (n, 68, 2)).astype(np.float32)


def random_identity(cfg: Any, k: int = 1) -> dict[str, Any]:
  """A model at ``cfg``'s architecture with random weights, and one identity fitted feed-forward
  from ``k`` random shots: what generation and fine-tuning need (speed does not depend on values)."""
  size = cfg.model.image_size
  graphdef, v = split_model(TalkingHeadModel(cfg.model, 1, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(0)
  shots = rng.integers(0, 256, (k, size, size, 3), np.uint8)
  shot_points = _points(rng, k, size)
  e_hat = jax.jit(lambda v, f, p: inf.embed(graphdef, v, cfg.model, f, p))(
      v, shots[None], shot_points[None])[0]
  psi = jax.jit(lambda v, e: inf.feed_forward_psi(graphdef, v, e))(v, e_hat)
  return {"graphdef": graphdef, "vars": v, "shots": shots, "shot_points": shot_points,
          "e_hat": e_hat, "psi": psi}


def bench_generate(cfg: Any, batches: Sequence[int], iters: int, label: str = "") -> dict[str, Any]:
  """Frames/s and seconds per frame of the generator at each batch (one program per batch)."""
  case = random_identity(cfg)
  graphdef, v, psi = case["graphdef"], case["vars"], case["psi"]
  gen = jax.jit(lambda v, psi, p: inf.generate(graphdef, v, cfg.model, psi, p))
  rng = np.random.default_rng(1)
  out: dict[str, Any] = {}
  for batch in batches:
    points = _points(rng, batch, cfg.model.image_size)
    t = _timed(lambda p=points: gen(v, psi, p), iters)
    out[f"b{batch}"] = {
        "sec_per_call": {k: round(x, 4) for k, x in t.items()},
        "frames_per_second": round(batch / t["median"], 2),
        "sec_per_frame": round(t["median"] / batch, 4)}
    print(f"{label} generate b{batch}: {batch / t['median']:.2f} frames/s "
          f"({t['median'] / batch:.4f} s/frame, first call {t['first_call']:.1f} s)", flush=True)
  return out


def bench_finetune(cfg: Any, k: int, steps: int, label: str = "") -> dict[str, Any]:
  """Seconds per fine-tuning step from ``k`` shots with ``cfg``'s content loss (timed over
  ``steps`` steps after the first, which compiles)."""
  case = random_identity(cfg, k)
  graphdef, v = case["graphdef"], case["vars"]
  content = build_content_loss(cfg.loss)
  step = jax.jit(inf.make_finetune_step(graphdef, cfg, content))
  fs = inf.init_finetune(cfg, v, case["e_hat"], case["psi"])
  shots, points = case["shots"], case["shot_points"]
  t0 = time.perf_counter()
  fs, m = step(fs, v, shots, points, content.params)
  jax.block_until_ready(m)
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(steps):
    fs, m = step(fs, v, shots, points, content.params)
  jax.block_until_ready(m)
  per_step = (time.perf_counter() - t0) / steps
  print(f"{label} finetune K={k}: {per_step:.3f} s/step, {cfg.finetune.steps} steps (the "
        f"config's) in {per_step * cfg.finetune.steps:.1f} s", flush=True)
  return {"k": k, "steps_timed": steps, "sec_per_step": round(per_step, 4),
          "first_step_seconds": round(first, 1),
          "content_loss": content.description.split(" (")[0],
          f"seconds_for_{cfg.finetune.steps}_steps": round(per_step * cfg.finetune.steps, 1)}


def bench_config(name: str, iters: int, finetune_steps: int) -> dict[str, Any]:
  """Generation frames/s at batch 1 and 8 and, unless ``finetune_steps`` is 0, fine-tuning
  seconds per step, for config ``name``'s architecture with random weights."""
  cfg = config_lib.load_config(name)
  entry = {"image_size": cfg.model.image_size,
           "generate": bench_generate(cfg, (1, 8), iters, name)}
  if finetune_steps:
    entry["finetune_k1"] = bench_finetune(cfg, 1, finetune_steps, name)
  return entry


def bench_rasterizer(iters: int, size: int = 256, batch: int = 16, min_calls: int = 100
                     ) -> dict[str, Any]:
  """ms per frame drawing face-shaped landmarks (the tiled path on CPU) and scattered points.

  The faces are ``batch`` procedural talking heads (``data.synthetic``), one frame each, framed
  as data prep frames a face; the scattered points (uniform over the middle of the image) are no
  face, and make the rasteriser fall back to its dense path.
  """
  faces = np.stack([synthetic.render_video(seed, 1, size)[1][0] for seed in range(batch)])
  inputs = {"faces": faces, "scattered": _points(np.random.default_rng(1), batch, size)}
  draw = jax.jit(lambda p: lmk.rasterize(p, size))
  thickness = lmk.default_thickness(size)
  result: dict[str, Any] = {"image_size": size, "batch": batch}
  for name, points in inputs.items():
    # A call takes about 10 ms: many more calls than the generator's for a stable median.
    t = _timed(lambda p=jnp.asarray(points): draw(p), max(iters, min_calls))
    ms = 1000 * t["median"] / batch
    plan = lmk._plan_tiles(  # pylint: disable=protected-access
        jnp.asarray(points), size, thickness, lmk._tile_size(size))  # pylint: disable=protected-access
    path = "dense" if plan.overflow else lmk.rasterizer_path(size)
    print(f"rasterise {size} px, batch {batch}, {name}: {ms:.2f} ms/frame ({path} path)",
          flush=True)
    result[name] = {"ms_per_frame": round(ms, 3), "path": path,
                    "sec_per_call": {k: round(x, 4) for k, x in t.items()}}
  result["ms_per_frame"] = result["faces"]["ms_per_frame"]
  return result


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="runs/bench/inference.json")
  parser.add_argument("--configs", nargs="+", default=["paper_256", "demo_64"])
  parser.add_argument("--iters", type=int, default=5)
  parser.add_argument("--finetune-steps", type=int, default=5)
  args = parser.parse_args(argv)
  result: dict[str, Any] = {
      "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                  "python": platform.python_version(), "jax": jax.__version__,
                  "backend": jax.default_backend()},
      "rasterize": bench_rasterizer(args.iters),
  }
  for name in args.configs:
    result[name] = bench_config(name, args.iters, args.finetune_steps)
  out = write_json(args.out, result)
  print(out)
  return out


if __name__ == "__main__":
  main()
