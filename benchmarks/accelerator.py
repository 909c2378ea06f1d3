"""Training, generation and fine-tuning on an accelerator, measured in one command.

Why: users run this on GPU nodes and TPU pods, and an accelerator is at hand here only now and then,
for minutes. This script is prepared and smoke-tested on the CPU so that those minutes go into
measuring, not debugging. It writes ``accelerator.json`` (rewritten after every section, so a run
stopped at its limit keeps what it measured) and ``accelerator.md``, a summary for a person, into
the folder it is given.

  python benchmarks/accelerator.py --out DIR [--smoke] [--budget-s 450]

Sections, in order (each in its own process, so its device memory and peak are its own):

* ``environment``: devices, their kind and memory, library versions;
* ``matmul_peak``: the device's measured f32 and bf16 matmul rate (the MFU denominators);
* ``train_f32`` and ``train_bf16``: the ``paper_256`` meta-learning step with the perceptual nets at
  random weights, first at a probe batch (XLA's memory estimate against the measured peak there),
  then at the largest per-device batch that fits by that estimate: s/iteration, images/s, peak
  device memory, and the model FLOP utilisation (XLA's FLOP count over the measured matmul peak
  of the step's dtype);
* ``generate``: 256 px generation at batch 1 and 32: frames/s and the latency of one frame;
* ``finetune``: fine-tuning at K = 1 and K = 8: s/step;
* ``rasterize``: the landmark rasteriser on the device, ms/frame, and the path it took;
* ``demo``: ``fewshot-jax demo`` (what ``make demo`` runs), its wall time and learning checks;
* ``costing``: the device-hours of the paper's schedules at the measured images/s.

``--smoke`` runs every section on a tiny model and a short demo, on whatever backend is there
(the CPU here, in under two minutes): it checks the script, not the machine. Its costing line is
the same arithmetic on the smoke figures, and says so.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

BENCH_DIR = pathlib.Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

SECTIONS = ("environment", "matmul_peak", "train_f32", "train_bf16", "generate", "finetune",
            "rasterize", "demo")
DTYPES = {"train_f32": "float32", "train_bf16": "bfloat16"}

# The smoke run's model: the paper's family at 32 px and a few channels, which compiles in seconds.
SMOKE_MODEL = (
    "model.image_size=32", "model.embed_dim=32", "model.e_channels=(8, 16, 32)",
    "model.e_attn_res=(8,)", "model.d_channels=(8, 16, 32)", "model.d_attn_res=(8,)",
    "model.g_down_channels=(8, 16)", "model.g_res_blocks=1", "model.g_up_channels=(16, 8)",
    "model.g_attn_down_res=()", "model.g_attn_up_res=(16,)",
)
# The smoke demo: the same command and checks, on a few videos and steps.
SMOKE_DEMO = (*SMOKE_MODEL, "data.num_train_videos=8", "data.num_eval_videos=2",
              "data.frames_per_video=16", "train.steps=4", "train.batch_size=2",
              "train.log_every=2", "train.checkpoint_every=4", "train.sample_every=0",
              "finetune.steps=1", "eval.targets_per_video=1")

# The paper's schedules (§4): epochs of VoxCeleb2's dev set (145,569 videos in its release notes),
# for the FT and FF models.
VOX2_TRAIN_VIDEOS = 145_569
PAPER_SCHEDULES = {"vox2_256_ft": 75, "vox2_256_ff": 150}
# Device memory the batch search leaves free: XLA's estimate misses allocator fragmentation.
FIT_MARGIN = 0.9


# --- the sections, each run in a child process --------------------------------------------------

def _jax_setup() -> Any:
  import jax  # pylint: disable=g-import-not-at-top

  cache = os.environ.get("FEWSHOT_JAX_XLA_CACHE")
  if cache:  # a re-run on a warm machine skips the compiles
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  return jax


def _device_memory() -> dict[str, int] | None:
  """The first device's allocator figures (``bytes_limit``, ``peak_bytes_in_use``), or None on
  backends that keep none (the CPU)."""
  jax = _jax_setup()
  stats = jax.devices()[0].memory_stats()
  if not stats:
    return None
  return {k: int(stats[k]) for k in ("bytes_limit", "peak_bytes_in_use", "bytes_in_use")
          if k in stats}


def section_environment(args: argparse.Namespace) -> dict[str, Any]:
  jax = _jax_setup()
  import flax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from fewshot_jax import landmarks as lmk  # pylint: disable=g-import-not-at-top
  from fewshot_jax.models import conv  # pylint: disable=g-import-not-at-top

  dev = jax.devices()[0]
  return {
      "backend": jax.default_backend(), "device_kind": dev.device_kind,
      "device_count": jax.device_count(), "memory": _device_memory(),
      "host": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
               "python": platform.python_version()},
      "versions": {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__},
      # The code paths that differ by backend pick XLA's own kernels off the CPU.
      "backend_paths": {
          "conv_weight_gradient_256px": conv.weight_grad_mode((1, 256, 256, 64)),
          "rasterizer_256px": lmk.rasterizer_path(256),
      },
  }


def section_matmul_peak(args: argparse.Namespace) -> dict[str, Any]:
  import train_step  # pylint: disable=g-import-not-at-top

  _jax_setup()
  n = 1024 if args.smoke else 8192
  return {"n": n, **{f"{dtype}_gflops": round(train_step.matmul_peak_gflops(n, 10, dtype), 1)
                     for dtype in ("float32", "bfloat16")}}


def _memory_figures(compiled: Any) -> dict[str, int]:
  mem = compiled.memory_analysis()
  return {"arguments": int(mem.argument_size_in_bytes), "outputs": int(mem.output_size_in_bytes),
          "temp": int(mem.temp_size_in_bytes), "alias": int(mem.alias_size_in_bytes),
          "total": int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                       + mem.temp_size_in_bytes - mem.alias_size_in_bytes)}


def _time_step(config: str, batch: int, extra: Sequence[str], iters: int) -> dict[str, Any]:
  """One train step compiled at ``batch`` and timed: the same figures as train_step.py, with the
  device's own peak memory where it keeps one."""
  import statistics  # pylint: disable=g-import-not-at-top

  import train_step  # pylint: disable=g-import-not-at-top

  jax = _jax_setup()
  case = train_step.build_case(config, batch, extra)
  t0 = time.perf_counter()
  compiled = case["step"].lower(case["state"], case["data"], case["content"].params).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  state, data, params = case["state"], case["data"], case["content"].params
  del case
  times = []
  for i in range(iters + 1):  # the first call warms up
    t0 = time.perf_counter()
    state, metrics = compiled(state, data, params)
    jax.block_until_ready(metrics)
    if i:
      times.append(time.perf_counter() - t0)
  median = statistics.median(times)
  flops = float(cost.get("flops", float("nan")))
  memory = _device_memory()
  out = {"batch": batch, "compile_s": round(compile_s, 1),
         "sec_per_iter": round(median, 4), "images_per_s": round(batch / median, 2),
         "flops_per_iter": flops, "achieved_tflops": round(flops / median / 1e12, 3),
         "xla_memory_estimate_bytes": _memory_figures(compiled),
         "measured_peak_bytes": memory["peak_bytes_in_use"] if memory else None,
         "loss_finite": bool(math.isfinite(float(metrics["g/total"])))}
  del state, data, params, compiled
  return out


def _largest_batch(probe: dict[str, Any], batch: int, limit: int) -> int:
  """The largest batch whose estimated memory fits ``FIT_MARGIN`` of ``limit``: the probe's
  temporaries grow with the batch, its arguments (weights, optimiser state) do not."""
  est = probe["xla_memory_estimate_bytes"]
  per_image = est["temp"] / batch
  fixed = est["total"] - est["temp"]
  fit = int((FIT_MARGIN * limit - fixed) // per_image)
  return fit // 8 * 8 if fit >= 16 else max(fit, 1)


def section_train(args: argparse.Namespace, dtype: str) -> dict[str, Any]:
  # The smoke run keeps VGG19 (the perceptual path) and leaves VGGFace out: half the compiling.
  smoke = [*SMOKE_MODEL, "loss.vggface_path="] if args.smoke else []
  extra = [f"train.compute_dtype={dtype}", *smoke]
  config = "demo_64" if args.smoke else "paper_256"
  probe_batch = 1 if args.smoke else 6
  iters = 1 if args.smoke else 5
  probe = _time_step(config, probe_batch, extra, iters)
  memory = _device_memory()
  limit = memory["bytes_limit"] if memory else int(args.smoke_memory_gib * 2**30)
  out: dict[str, Any] = {"config": config, "dtype": dtype, "device_bytes_limit": limit,
                         "probe": probe, "limit_source": "device" if memory else "--smoke-memory-gib"}
  batch = _largest_batch(probe, probe_batch, limit)
  if args.smoke:
    # The smoke run checks the path, not the machine: f32 takes the step to a second batch, bf16
    # stays at the probe's (each compile of the perceptual nets is seconds on the CPU).
    batch = min(batch, 2 if dtype == "float32" else probe_batch)
  tried = []
  while batch > probe_batch:
    try:
      out["largest"] = _time_step(config, batch, extra, iters)
      break
    except Exception as e:  # pylint: disable=broad-except
      if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
        raise
      tried.append({"batch": batch, "error": str(e).splitlines()[0][:200]})
      batch = max(probe_batch, int(batch * 0.75) // 8 * 8)
  out["largest"] = out.get("largest", probe)
  out["out_of_memory_at"] = tried
  return out


def _inference_config(args: argparse.Namespace) -> Any:
  """The config generation and fine-tuning are timed at: ``paper_256`` with its perceptual nets at
  random weights; the smoke run's tiny model with the pixel loss (the train sections already
  check the perceptual path)."""
  import train_step  # pylint: disable=g-import-not-at-top

  from fewshot_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  if args.smoke:
    overrides = list(SMOKE_MODEL)
  else:
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="accelerator-weights-"))
    overrides = train_step.random_perceptual_weights(tmp)
  return config_lib.apply_overrides(config_lib.load_config("demo_64" if args.smoke else
                                                           "paper_256"), overrides)


def section_generate(args: argparse.Namespace) -> dict[str, Any]:
  import inference  # pylint: disable=g-import-not-at-top

  _jax_setup()
  cfg = _inference_config(args)
  batches = (1, 4) if args.smoke else (1, 32)
  gen = inference.bench_generate(cfg, batches, 3 if args.smoke else 10, "generate")
  return {"image_size": cfg.model.image_size, **gen,
          "latency_one_frame_s": gen["b1"]["sec_per_call"]["median"]}


def section_finetune(args: argparse.Namespace) -> dict[str, Any]:
  import inference  # pylint: disable=g-import-not-at-top

  _jax_setup()
  cfg = _inference_config(args)
  steps = 1 if args.smoke else 10
  return {"image_size": cfg.model.image_size,
          **{f"k{k}": inference.bench_finetune(cfg, k, steps, "finetune") for k in (1, 8)}}


def section_rasterize(args: argparse.Namespace) -> dict[str, Any]:
  import inference  # pylint: disable=g-import-not-at-top

  _jax_setup()
  return inference.bench_rasterizer(3, 256, 16, min_calls=3 if args.smoke else 100)


def section_demo(args: argparse.Namespace) -> dict[str, Any]:
  """``fewshot-jax demo`` as ``make demo`` runs it, in a fresh folder: wall time and checks."""
  workdir = pathlib.Path(tempfile.mkdtemp(prefix="accelerator-demo-")) / "demo"
  cmd = [sys.executable, "-m", "fewshot_jax.cli", "demo", "--workdir", str(workdir)]
  cmd += [f"--config.{o}" for o in (SMOKE_DEMO if args.smoke else ())]
  env = dict(os.environ)
  if args.smoke:  # LPIPS's VGG16 on the CPU would be most of the smoke demo's time
    env["FEWSHOT_JAX_WEIGHTS_DIR"] = str(workdir.parent / "no-lpips-weights")
  t0 = time.perf_counter()
  done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
  wall = time.perf_counter() - t0
  if done.returncode != 0:
    raise RuntimeError(f"demo exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
  metrics = json.loads((workdir / "metrics.json").read_text())
  return {"wall_s": round(wall, 1), "train_s": round(metrics["train_seconds"], 1),
          "train_steps": metrics["train_steps"], "checks": metrics["checks"],
          "all_checks_pass": all(metrics["checks"].values()),
          "results": metrics["results"], "overrides": list(SMOKE_DEMO if args.smoke else ())}


CHILD_SECTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "environment": section_environment,
    "matmul_peak": section_matmul_peak,
    "train_f32": lambda a: section_train(a, "float32"),
    "train_bf16": lambda a: section_train(a, "bfloat16"),
    "generate": section_generate,
    "finetune": section_finetune,
    "rasterize": section_rasterize,
    "demo": section_demo,
}


# --- the parent: runs the sections, derives the figures, writes the files ------------------------

def _run_child(name: str, args: argparse.Namespace, timeout: float) -> dict[str, Any]:
  """One section in a fresh process; its last stdout line is its JSON."""
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--section", name,
         "--smoke-memory-gib", str(args.smoke_memory_gib)] + (["--smoke"] if args.smoke else [])
  env = dict(os.environ)
  env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")  # the batch search wants the device
  env.setdefault("FEWSHOT_JAX_XLA_CACHE", str(pathlib.Path(tempfile.gettempdir()) /
                                              "fewshot_jax_accelerator_xla"))
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                        check=False, cwd=ROOT)
  sys.stderr.write(done.stderr[-2000:] if done.returncode else "")
  if done.returncode != 0:
    tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:]
    raise RuntimeError(f"exit {done.returncode}: {tail[0] if tail else 'no output'}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def mfu(train: dict[str, Any], peak: dict[str, Any] | None) -> float | None:
  """Model FLOP utilisation of a train case: XLA's FLOPs per second over the dtype's matmul peak."""
  if not peak or "largest" not in train:
    return None
  rate = peak.get(f"{train['dtype']}_gflops")
  best = train["largest"]
  return round(best["achieved_tflops"] * 1e3 / rate, 4) if rate else None


def costing(images_per_s: float, source: str, devices: Sequence[int] = (1, 8)) -> dict[str, Any]:
  """Device-hours of the paper's schedules at ``images_per_s`` per device (one episode, one
  generated image, per video per epoch), extrapolated from a measured step: data-parallel
  scaling is taken as linear, so 8 devices take an eighth of the wall time."""
  out: dict[str, Any] = {"images_per_s_per_device": images_per_s, "from": source,
                         "train_videos": VOX2_TRAIN_VIDEOS, "schedules": {}}
  for name, epochs in PAPER_SCHEDULES.items():
    hours = epochs * VOX2_TRAIN_VIDEOS / images_per_s / 3600
    out["schedules"][name] = {
        "epochs": epochs, "device_hours": round(hours, 1),
        **{f"wall_hours_on_{n}": round(hours / n, 1) for n in devices}}
  return out


def _best_train(result: dict[str, Any]) -> tuple[float, str] | None:
  rows = [(s["largest"]["images_per_s"], f"{name}, batch {s['largest']['batch']}")
          for name in DTYPES if isinstance(s := result["sections"].get(name), dict)
          and "largest" in s]
  return max(rows) if rows else None


def summary_markdown(result: dict[str, Any]) -> str:
  """``accelerator.md``: the figures a person reads first."""
  sec = result["sections"]
  env = sec.get("environment", {})
  lines = [f"# Accelerator run, {result['date']}", "",
           f"Device: {env.get('device_kind', '?')} ({env.get('backend', '?')}), "
           f"{'smoke run (tiny model): checks the script, not the machine' if result['smoke'] else 'full run'}; "
           f"{result['wall_s']:.0f} s in all.", ""]
  peak = sec.get("matmul_peak")
  if isinstance(peak, dict) and "float32_gflops" in peak:
    lines.append(f"Matmul peak: {peak['float32_gflops'] / 1e3:.1f} TFLOP/s f32, "
                 f"{peak['bfloat16_gflops'] / 1e3:.1f} TFLOP/s bf16 ({peak['n']}² products).")
    lines.append("")
  lines += ["| train step | batch | s/iter | images/s | peak memory | XLA estimate | MFU |",
            "|---|---|---|---|---|---|---|"]
  for name in DTYPES:
    s = sec.get(name)
    if not isinstance(s, dict) or "probe" not in s:
      lines.append(f"| {name} | {s.get('error', s) if isinstance(s, dict) else s} |||||")
      continue
    for label, row in (("probe", s["probe"]), ("largest", s.get("largest"))):
      if not row:
        continue
      peak_b = row["measured_peak_bytes"]
      lines.append(
          f"| {s['config']} {s['dtype']} ({label}) | {row['batch']} | {row['sec_per_iter']} | "
          f"{row['images_per_s']} | {f'{peak_b / 2**30:.2f} GiB' if peak_b else 'n/a'} | "
          f"{row['xla_memory_estimate_bytes']['total'] / 2**30:.2f} GiB | "
          f"{(s.get('mfu') if label == 'largest' else None) or '–'} |")
  gen = sec.get("generate")
  if isinstance(gen, dict) and "b1" in gen:
    batches = [k for k in gen if k.startswith("b") and k[1:].isdigit()]
    lines += ["", f"Generation at {gen['image_size']} px: " + ", ".join(
        f"batch {k[1:]}: {gen[k]['frames_per_second']} frames/s" for k in batches)
        + f"; one frame's latency {gen['latency_one_frame_s'] * 1e3:.1f} ms."]
  ft = sec.get("finetune")
  if isinstance(ft, dict) and "k1" in ft:
    lines.append(f"Fine-tuning: K=1 {ft['k1']['sec_per_step']} s/step, "
                 f"K=8 {ft['k8']['sec_per_step']} s/step.")
  ras = sec.get("rasterize")
  if isinstance(ras, dict) and "ms_per_frame" in ras:
    lines.append(f"Landmark rasteriser, 256 px: {ras['ms_per_frame']} ms/frame "
                 f"({ras['faces']['path']} path).")
  demo = sec.get("demo")
  if isinstance(demo, dict) and "wall_s" in demo:
    lines.append(f"`fewshot-jax demo`: {demo['wall_s']} s wall, {demo['train_s']} s training "
                 f"({demo['train_steps']} steps); learning checks "
                 f"{'all pass' if demo['all_checks_pass'] else 'FAILED: ' + str(demo['checks'])}.")
  cost = result.get("costing")
  if cost:
    lines += ["", f"The paper's schedules at {cost['images_per_s_per_device']} images/s per device "
              f"({cost['from']}), extrapolated from a measured step, linear scaling assumed:", "",
              "| schedule | epochs | device-hours | wall hours on 1 | on 8 |", "|---|---|---|---|---|"]
    for name, c in cost["schedules"].items():
      lines.append(f"| {name} | {c['epochs']} | {c['device_hours']} | {c['wall_hours_on_1']} | "
                   f"{c['wall_hours_on_8']} |")
  failed = {k: v["error"] for k, v in sec.items() if isinstance(v, dict) and "error" in v}
  if failed:
    lines += ["", "Sections that did not finish: " + "; ".join(f"{k}: {v}" for k, v in failed.items())]
  return "\n".join(lines) + "\n"


def _is_ours(path: pathlib.Path) -> bool:
  from fewshot_jax.output_paths import json_with_keys  # pylint: disable=g-import-not-at-top
  return json_with_keys(path / "accelerator.json", ("sections", "smoke"))


def main(argv: Sequence[str] | None = None) -> pathlib.Path | None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", help="folder for accelerator.json and accelerator.md")
  parser.add_argument("--smoke", action="store_true",
                      help="a tiny model and a short demo: checks the script in under 2 minutes")
  parser.add_argument("--budget-s", type=float, default=None,
                      help="stop starting sections after this many seconds (default 450; smoke 110)")
  parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
  parser.add_argument("--smoke-memory-gib", type=float, default=2.0,
                      help="the memory the batch search assumes where the device reports none")
  parser.add_argument("--section", choices=list(CHILD_SECTIONS), help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.section:  # a child: one section, its JSON on the last line of stdout
    print(json.dumps(CHILD_SECTIONS[args.section](args)), flush=True)
    return None
  if not args.out:
    parser.error("--out DIR is required")
  sys.path.insert(0, str(ROOT / "src"))
  from fewshot_jax.atomic_files import write_json, write_text  # pylint: disable=g-import-not-at-top
  from fewshot_jax.output_paths import check_output_dir  # pylint: disable=g-import-not-at-top
  from fewshot_jax.progress import format_seconds  # pylint: disable=g-import-not-at-top

  out = check_output_dir(args.out, "--out", _is_ours, "an accelerator benchmark's output")
  out.mkdir(parents=True, exist_ok=True)
  budget = args.budget_s or (110.0 if args.smoke else 450.0)
  t_start = time.perf_counter()
  result: dict[str, Any] = {"date": datetime.date.today().isoformat(), "smoke": args.smoke,
                            "budget_s": budget, "sections": {}, "wall_s": 0.0}

  def save() -> None:
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    write_json(out / "accelerator.json", result)
    write_text(out / "accelerator.md", summary_markdown(result))

  for i, name in enumerate(args.sections):
    elapsed = time.perf_counter() - t_start
    left = budget - elapsed
    if left < 5:
      result["sections"][name] = {"error": f"not started: {elapsed:.0f} s of the {budget:.0f} s "
                                           "budget were spent"}
      continue
    print(f"[{i + 1}/{len(args.sections)}] {name} ({format_seconds(elapsed)} in, "
          f"{format_seconds(left)} of the budget left)", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
      result["sections"][name] = _run_child(name, args, timeout=left)
    except subprocess.TimeoutExpired:
      result["sections"][name] = {"error": f"stopped at the budget after {left:.0f} s"}
    except (RuntimeError, ValueError) as e:
      result["sections"][name] = {"error": str(e)[:500]}
    result["sections"][name]["section_s"] = round(time.perf_counter() - t0, 1)
    for train in DTYPES:
      if train in result["sections"] and "largest" in result["sections"][train]:
        result["sections"][train]["mfu"] = mfu(result["sections"][train],
                                               result["sections"].get("matmul_peak"))
    best = _best_train(result)
    if best:
      result["costing"] = costing(best[0], ("smoke run, tiny model: not a real figure; "
                                            if args.smoke else "") + best[1])
    save()
  save()
  print(summary_markdown(result), flush=True)
  print(out / "accelerator.json")
  return out / "accelerator.json"


if __name__ == "__main__":
  main()
