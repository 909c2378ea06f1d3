"""How much device memory the paper_256 train step needs per core, by batch and execution options.

Why: on a TPU slice the global batch is split over the cores, and a step that does not fit a
core's HBM (16 GiB on v5e and v4) fails at compile time, after the slice is paid for. We have no
TPU here, so this compiles the step for this CPU (no run) and reads ``compiled.memory_analysis()``:
parameters, optimiser state and batch (arguments), outputs, and XLA's temporaries (activations
kept for the backward pass, workspaces). TPU fusion and layouts differ, so treat the figures as an
estimate of the same program; the ratios between settings carry over better than the absolutes.

  python benchmarks/memory_estimate.py [--batches 3 6] [--out runs/bench/memory_estimate.json]

The paper's batch is 48: 3 per core on a v5litepod-16, 6 per core on a v4-8 (4 chips, 8 cores).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import train_step  # noqa: E402  pylint: disable=g-import-not-at-top

SETTINGS = {
    "f32": [],
    "bf16": ["train.compute_dtype=bfloat16"],
    "f32+remat": ["train.remat=True"],
    "bf16+remat": ["train.compute_dtype=bfloat16", "train.remat=True"],
}


def estimate(batch: int, overrides: Sequence[str]) -> dict[str, Any]:
  case = train_step.build_case("paper_256", batch, overrides)
  t0 = time.perf_counter()
  compiled = case["step"].lower(case["state"], case["data"], case["content"].params).compile()
  mem = compiled.memory_analysis()
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
           - mem.alias_size_in_bytes)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {"arguments_gib": round(mem.argument_size_in_bytes / 2**30, 2),
          "temp_gib": round(mem.temp_size_in_bytes / 2**30, 2),
          "total_gib": round(total / 2**30, 2),
          "gflop_per_iter": round(float(cost.get("flops", 0.0)) / 1e9, 1),
          "compile_s": round(time.perf_counter() - t0, 1)}


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", type=int, nargs="+", default=[3, 6])
  parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
  parser.add_argument("--out", default="runs/bench/memory_estimate.json")
  args = parser.parse_args(argv)
  result: dict[str, Any] = {"config": "paper_256", "per_core_batch": {}}
  for batch in args.batches:
    for name in args.settings:
      row = estimate(batch, SETTINGS[name])
      result["per_core_batch"].setdefault(str(batch), {})[name] = row
      fits = "fits" if row["total_gib"] <= 16 else "does not fit"
      print(f"batch {batch} {name:10s}: {row['total_gib']:6.2f} GiB ({fits} 16 GiB), "
            f"temp {row['temp_gib']} GiB, {row['gflop_per_iter']} GFLOP/iter", flush=True)
  from fewshot_jax.atomic_files import write_json  # pylint: disable=g-import-not-at-top

  path = write_json(args.out, result)
  print(path)
  return path


if __name__ == "__main__":
  main()
