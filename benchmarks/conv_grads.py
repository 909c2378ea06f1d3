"""Where XLA:CPU loses time in a conv layer: forward, input gradient and weight gradient, and the
formulations of the weight gradient we can choose instead.

Why: the train step is mostly 3×3 convs and their gradients, and on XLA:CPU the weight gradient
runs several times slower than the forward. This measures, at the layer shapes of ``paper_256``
(NHWC, stride 1, SAME), the GFLOP/s of:

* ``forward``: ``lax.conv_general_dilated``;
* ``input_grad``: XLA's transposed conv (the VJP with respect to the input);
* ``weight_grad/xla``: XLA's own weight-gradient conv (the VJP with respect to the kernel);
* ``weight_grad/taps``: per kernel tap, a ``[H·W, Cin]ᵀ·[H·W, Cout]`` matmul per image, summed
  (what ``models/conv.py`` uses on CPU for large images);
* ``weight_grad/rows``: the kernel's columns unfolded into channels, one matmul per kernel row.

Run it once per XLA flag set, since flags are read when the process starts:

  python benchmarks/conv_grads.py [--out runs/bench/conv_grads.json] [--xla-flags "..."]

Each figure is the median of ``--iters`` calls after a warm-up; FLOPs are ``2·N·H·W·k²·Cin·Cout``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

# (N, H, W, Cin, Cout): the first conv and one conv per resolution of paper_256's G/E/D at batch 2
# (2 targets plus 2 × 8 shots = 18 frames through E; fewer here to keep the run short).
SHAPES = ((8, 256, 256, 3, 64), (8, 256, 256, 64, 64), (8, 128, 128, 64, 128),
          (8, 64, 64, 128, 256), (8, 32, 32, 256, 512), (8, 16, 16, 512, 512))


def _time(fn: Callable[[], Any], iters: int) -> float:
  import jax  # pylint: disable=g-import-not-at-top

  jax.block_until_ready(fn())
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def measure(shapes: Sequence[tuple[int, ...]], iters: int) -> list[dict[str, Any]]:
  """GFLOP/s of each formulation at each shape, in this process (its XLA flags)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from fewshot_jax.models import conv as conv_lib  # pylint: disable=g-import-not-at-top

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  rows = []
  for n, h, w_, cin, cout in shapes:
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (n, h, w_, cin), jnp.float32)
    k = jax.random.normal(key, (3, 3, cin, cout), jnp.float32) * 0.05
    dy = jax.random.normal(key, (n, h, w_, cout), jnp.float32)
    flops = 2 * n * h * w_ * 9 * cin * cout
    fns = {
        "forward": jax.jit(conv),
        "input_grad": jax.jit(lambda x, k, dy: jax.vjp(lambda x: conv(x, k), x)[1](dy)[0]),
        "weight_grad/xla": jax.jit(lambda x, k, dy: jax.vjp(lambda k: conv(x, k), k)[1](dy)[0]),
        "weight_grad/taps": jax.jit(lambda x, k, dy: conv_lib.weight_grad_taps(x, dy, k.shape)),
        "weight_grad/rows": jax.jit(lambda x, k, dy: conv_lib.weight_grad_rows(x, dy, k.shape)),
    }
    row: dict[str, Any] = {"shape": [n, h, w_, cin, cout], "gflop": round(flops / 1e9, 2)}
    for name, fn in fns.items():
      args = (x, k) if name == "forward" else (x, k, dy)
      sec = _time(lambda fn=fn, args=args: fn(*args), iters)
      row[name] = round(flops / sec / 1e9, 1)
    want = fns["weight_grad/xla"](x, k, dy)
    for name in ("weight_grad/taps", "weight_grad/rows"):
      err = float(jnp.max(jnp.abs(fns[name](x, k, dy) - want)) / jnp.max(jnp.abs(want)))
      assert err < 1e-3, (name, row["shape"], err)  # f32 sums over N·H·W terms in another order
    print(json.dumps(row), flush=True)
    rows.append(row)
  return rows


def main(argv: Sequence[str] | None = None) -> pathlib.Path | None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="runs/bench/conv_grads.json")
  parser.add_argument("--iters", type=int, default=3)
  parser.add_argument("--xla-flags", action="append", default=None,
                      help="an XLA_FLAGS value to measure under (repeatable; default: the "
                      "environment's)")
  parser.add_argument("--shapes", type=int, nargs="+", default=None,
                      help="indices into SHAPES (default: all)")
  parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  shapes = SHAPES if args.shapes is None else [SHAPES[i] for i in args.shapes]
  if args.one:
    print(json.dumps(measure(shapes, args.iters)))
    return None
  result: dict[str, Any] = {}
  for flags in args.xla_flags or [os.environ.get("XLA_FLAGS", "")]:
    env = {**os.environ, "XLA_FLAGS": flags}
    print(f"XLA_FLAGS={flags!r}", flush=True)
    cmd = [sys.executable, __file__, "--one", "--iters", str(args.iters)]
    if args.shapes is not None:
      cmd += ["--shapes", *map(str, args.shapes)]
    out = subprocess.run(cmd, env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
      result[flags or "(default)"] = {"error": out.stderr[-2000:]}
      print(out.stderr[-2000:], flush=True)
      continue
    lines = out.stdout.strip().splitlines()
    print("\n".join(lines[:-1]), flush=True)
    result[flags or "(default)"] = json.loads(lines[-1])
  from fewshot_jax.atomic_files import write_json  # pylint: disable=g-import-not-at-top

  path = write_json(args.out, result)
  print(path)
  return path


if __name__ == "__main__":
  main()
