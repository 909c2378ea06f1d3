"""The meta-learning train step on this machine: seconds, FLOPs, the share of peak, memory.

Why: users pay for accelerator hours, and a step that wastes FLOPs or stalls wastes them. We
cannot time an accelerator here, so this times the same work as the public PyTorch port on the
same CPU, next to the machine's own matmul peak, and reports what XLA says the step costs.

  python benchmarks/train_step.py [--out runs/bench/train_step.json] [--iters 5]
         [--configs paper_256:1,2 demo_64:1,2,8] [--xla-flags "..."]

Each (config, batch) case runs in its own process, so its peak RSS is its own. The schedule is
the port's: one G/E update and two D updates per iteration (``train.d_steps=2``), K = 8 for
``paper_256``, with the content loss on: VGG19 and VGGFace with random weights (the timing does not
depend on the values). Per case it reports:

* ``sec_per_iter``: median, min and max over ``--iters`` iterations after one warm-up;
* ``images_per_s``: generated (target) images per second, ``batch / median``;
* ``flops_per_iter`` from ``compiled.cost_analysis()`` and ``achieved_gflops`` from it;
* ``fraction_of_peak``: achieved over ``matmul_peak_gflops``, a 4096² f32 matmul timed in the
  same run (the best this machine does with XLA);
* ``compile_s``; ``memory``: ``compiled.memory_analysis()``, and the process's peak RSS while
  compiling and while stepping (``process_peak_rss_bytes``, the figure to hold against the port).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

DEFAULT_CASES = ("paper_256:1,2", "demo_64:1,2,8")


def matmul_peak_gflops(n: int = 4096, iters: int = 5, dtype: str = "float32") -> float:
  """The best ``dtype`` matmul rate this process gets from XLA (GFLOP/s), median of ``iters``."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(jnp.matmul)
  f(a, b).block_until_ready()
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n**3 / statistics.median(times) / 1e9


def random_perceptual_weights(directory: pathlib.Path) -> list[str]:
  """Random VGG19 and VGGFace files in the converted format; config overrides pointing at them."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from fewshot_jax.models import perceptual  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  overrides = []
  for kind in ("vgg19", "vggface"):
    flat = {k: rng.normal(0, 0.05, s).astype(np.float32)
            for k, s in perceptual.expected_shapes(kind).items()}
    path = directory / f"{kind}.safetensors"
    # The paper's VGG19 is Caffe's (base.py's loss.vgg19_preprocess): the file says so.
    perceptual.save_weights(path, flat, kind=kind, preprocess="caffe" if kind == "vgg19" else None)
    overrides.append(f"loss.{kind}_path={path}")
  return overrides


def build_case(config: str, batch: int, extra: Sequence[str] = ()) -> dict[str, Any]:
  """The config (with the port's schedule and random perceptual weights), a fresh train state,
  a random batch and the jitted step, ready to lower."""
  import jax  # pylint: disable=g-import-not-at-top

  from fewshot_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from fewshot_jax.content import build_content_loss  # pylint: disable=g-import-not-at-top
  from fewshot_jax.train import state as st  # pylint: disable=g-import-not-at-top
  from fewshot_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as tmp:
    overrides = [f"train.batch_size={batch}", "train.d_steps=2", "data.workers=0",
                 *random_perceptual_weights(pathlib.Path(tmp)), *extra]
    if config == "paper_256":
      overrides.append("train.k_shots=8")
    cfg = config_lib.apply_overrides(config_lib.load_config(config), overrides)
    content = build_content_loss(cfg.loss)
  num_videos = max(batch, 8)
  graphdef, _ = st.abstract_model(cfg, num_videos)
  state = jax.jit(lambda r: st.init_train_state(cfg, num_videos, r))(jax.random.PRNGKey(0))
  data = random_batch(batch, cfg.train.k_shots, cfg.model.image_size)
  step = jax.jit(step_lib.make_train_step(graphdef, cfg, content), donate_argnums=0)
  return {"cfg": cfg, "content": content, "state": state, "data": jax.device_put(data),
          "step": step}


def random_batch(b: int, k: int, s: int) -> dict[str, Any]:
  """A batch in the input pipeline's layout: ``b`` episodes of ``k`` shots at ``s`` px."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  return {
      "frames": rng.integers(0, 256, (b, k, s, s, 3), np.uint8),
      "landmarks": rng.uniform(s * 0.3, s * 0.7, (b, k, 68, 2)).astype(np.float32),
      "target": rng.integers(0, 256, (b, s, s, 3), np.uint8),
      "target_landmarks": rng.uniform(s * 0.3, s * 0.7, (b, 68, 2)).astype(np.float32),
      "video_index": np.arange(b, dtype=np.int32),
  }


def run_case(config: str, batch: int, iters: int, extra: Sequence[str] = ()) -> dict[str, Any]:
  """Compiles and times one (config, batch) train step in this process."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from fewshot_jax.host_memory import release_freed_heap  # pylint: disable=g-import-not-at-top

  case = build_case(config, batch, extra)
  cfg, content, state, data, step = (case[k] for k in ("cfg", "content", "state", "data", "step"))
  b, k, s = batch, cfg.train.k_shots, cfg.model.image_size
  t0 = time.perf_counter()
  lowered = step.lower(state, data, content.params)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  rss_compiled = _rss_bytes()
  release_freed_heap()  # as the train loop does once its step is compiled
  compile_peak_rss = _peak_rss_bytes(reset=True)  # the run's own peak is measured from here
  rss_after_compile = _rss_bytes()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan")))
  mem = compiled.memory_analysis()
  state, metrics = compiled(state, data, content.params)  # warm-up
  jax.block_until_ready(metrics)
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    state, metrics = compiled(state, data, content.params)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  median = statistics.median(times)
  return {
      "config": config, "batch": b, "k_shots": k, "image_size": s, "d_steps": cfg.train.d_steps,
      "content_loss": content.description.split(":")[0],
      "sec_per_iter": {"median": round(median, 4), "min": round(min(times), 4),
                       "max": round(max(times), 4), "iters": iters},
      "images_per_s": round(b / median, 3),
      "flops_per_iter": flops,
      "achieved_gflops": round(flops / median / 1e9, 2),
      "compile_s": round(compile_s, 1),
      "memory": {
          "xla_argument_bytes": int(mem.argument_size_in_bytes),
          "xla_output_bytes": int(mem.output_size_in_bytes),
          "xla_temp_bytes": int(mem.temp_size_in_bytes),
          "xla_alias_bytes": int(mem.alias_size_in_bytes),
          "xla_peak_estimate_bytes": int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                                         + mem.temp_size_in_bytes - mem.alias_size_in_bytes),
          # Peak resident memory while compiling (XLA's own) and while stepping (the step's).
          "compile_peak_rss_bytes": compile_peak_rss,
          # Resident after compiling, then after handing the compiler's freed heap back
          # (host_memory.release_freed_heap), before the first step.
          "rss_compiled_bytes": rss_compiled,
          "rss_after_compile_bytes": rss_after_compile,
          "process_peak_rss_bytes": _peak_rss_bytes(),
      },
      "loss_finite": bool(np.isfinite(float(metrics["g/total"]))),
  }


def _rss_bytes() -> int:
  """This process's resident set now (VmRSS), or 0 where /proc is not there."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
  except OSError:
    return 0


def _peak_rss_bytes(reset: bool = False) -> int:
  """This process's peak resident set (VmHWM); ``reset`` then starts a new peak from now.

  Resetting writes 5 to /proc/self/clear_refs (Linux), so the step's peak is not hidden under
  the compiler's. Where that is not possible the peak since start is reported.
  """
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    if reset:
      with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")
  except OSError:
    pass
  return peak


def parse_cases(specs: Sequence[str]) -> list[tuple[str, int]]:
  """``["paper_256:1,2"]`` -> ``[("paper_256", 1), ("paper_256", 2)]``."""
  cases = []
  for spec in specs:
    name, _, batches = spec.partition(":")
    if not batches:
      raise ValueError(f"{spec!r}: expected CONFIG:B1,B2 (e.g. paper_256:1,2)")
    cases += [(name, int(b)) for b in batches.split(",")]
  return cases


def main(argv: Sequence[str] | None = None) -> pathlib.Path | None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="runs/bench/train_step.json")
  parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CASES))
  parser.add_argument("--iters", type=int, default=5)
  parser.add_argument("--xla-flags", default=None,
                      help="XLA_FLAGS for every case (default: the environment's)")
  parser.add_argument("--override", action="append", default=[],
                      help="a config override for every case (repeatable)")
  parser.add_argument("--one", help=argparse.SUPPRESS)  # CONFIG:B, run in this process
  args = parser.parse_args(argv)

  if args.one:
    name, batch = parse_cases([args.one])[0]
    print(json.dumps(run_case(name, batch, args.iters, args.override)))
    return None

  env = dict(os.environ)
  if args.xla_flags is not None:
    env["XLA_FLAGS"] = args.xla_flags
  import jax  # pylint: disable=g-import-not-at-top

  peak = matmul_peak_gflops()
  print(f"matmul peak: {peak:.1f} GFLOP/s", flush=True)
  result: dict[str, Any] = {
      "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                  "python": platform.python_version(), "jax": jax.__version__,
                  "xla_flags": env.get("XLA_FLAGS", "")},
      "overrides": args.override,
      "matmul_peak_gflops": round(peak, 1),
  }
  for name, batch in parse_cases(args.configs):
    cmd = [sys.executable, __file__, "--one", f"{name}:{batch}", "--iters", str(args.iters)]
    cmd += [f"--override={o}" for o in args.override]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
      raise RuntimeError(f"{name} batch {batch} failed:\n{out.stderr[-4000:]}")
    case = json.loads(out.stdout.strip().splitlines()[-1])
    case["fraction_of_peak"] = round(case["achieved_gflops"] / peak, 3)
    result.setdefault(name, {})[f"b{batch}"] = case
    sec = case["sec_per_iter"]["median"]
    print(f"{name} b{batch}: {sec:.3f} s/iter, {case['achieved_gflops']:.1f} GFLOP/s "
          f"({case['fraction_of_peak']:.0%} of peak), compile {case['compile_s']} s, peak RSS "
          f"{case['memory']['process_peak_rss_bytes'] / 2**30:.2f} GiB "
          f"[{time.perf_counter() - t0:.0f} s]", flush=True)
  from fewshot_jax.atomic_files import write_json  # pylint: disable=g-import-not-at-top

  path = write_json(args.out, result)
  print(path)
  return path


if __name__ == "__main__":
  main()
