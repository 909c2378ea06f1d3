"""A profile of one train step on CPU: which HLO ops and which network take the time.

Why: the train-step benchmark says how fast the step is; this says where its time goes, so that
work goes to the ops that dominate. It runs one compiled step (``benchmarks/train_step.py``'s
case: the port's schedule, random perceptual weights) under ``jax.profiler`` with XLA:CPU's
per-op trace events on, reads the trace back, and joins each op with its HLO instruction:

* ``kind``: forward conv, conv input gradient, conv weight gradient, matmul (dot), or other
  (element-wise fusions, reductions, copies, ...);
* ``network``: from the op's JAX name stack: ``embedder``, ``generator``, ``discriminator``,
  ``perceptual`` (VGG19/VGGFace), or ``other`` (losses, optimiser, landmark drawing).

  python benchmarks/profile_step.py [--config paper_256] [--batch 2] [--out runs/bench/profile_step.json]

It writes the totals by kind, by network and by both, and the 25 most expensive ops.
"""

from __future__ import annotations

import os

if "--xla_cpu_enable_xprof_traceme" not in os.environ.get("XLA_FLAGS", ""):
  # Must be set before jax starts: per-op trace events from the CPU runtime.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_cpu_enable_xprof_traceme=true").strip()

import argparse  # noqa: E402
import collections  # noqa: E402
import glob  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import train_step  # noqa: E402  pylint: disable=g-import-not-at-top

NETWORKS = ("embedder", "generator", "discriminator", "perceptual")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+)\s+(\w[\w-]*)\(")


def hlo_instructions(hlo_text: str) -> dict[str, dict[str, str]]:
  """Each instruction of the optimised HLO: its opcode, output shape, op_name metadata and, for a
  fusion, the opcodes it calls (to see a conv or dot inside)."""
  computations: dict[str, list[str]] = {}
  current = None
  instrs: dict[str, dict[str, str]] = {}
  for line in hlo_text.splitlines():
    head = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if head and "=" not in line.split("{")[0]:
      current = head.group(1)
      computations[current] = []
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    name, shape, opcode = m.groups()
    op_name = re.search(r'op_name="([^"]*)"', line)
    calls = re.search(r"calls=%?([\w.\-]+)", line)
    dims = re.search(r"dim_labels=(\S+?)[,}\s]", line)
    instrs[name] = {"opcode": opcode, "shape": shape, "op_name": op_name.group(1) if op_name else "",
                    "calls": calls.group(1) if calls else "", "dim_labels": dims.group(1) if dims else ""}
    if current is not None:
      computations[current].append(opcode)
  for info in instrs.values():
    info["inner"] = ",".join(sorted(set(computations.get(info["calls"], []))))
  return instrs


def classify(info: dict[str, str]) -> str:
  """forward conv / conv input grad / conv weight grad / matmul / other."""
  ops = {info["opcode"], *info["inner"].split(",")}
  backward = "transpose(" in info["op_name"]
  if "convolution" in ops:
    if not backward:
      return "conv forward"
    # A weight gradient's output is a kernel: two adjacent dims are the kernel's (1 or 3 here),
    # where an image's spatial dims are powers of two from 4 up.
    dims = [int(d) for d in re.findall(r"\d+", info["shape"].split("[", 1)[-1].split("]")[0])]
    if len(dims) == 4 and any(a in (1, 3) and b in (1, 3) for a, b in zip(dims, dims[1:])):
      return "conv weight grad"
    return "conv input grad"
  if "dot" in ops or "ynn_fusion" in info["opcode"]:
    return "matmul"
  return "other"


def network(info: dict[str, str]) -> str:
  # Scopes show up wrapped in transforms: jit(step)/jvp(embedder)/..., transpose(jvp(embedder)).
  for net in NETWORKS:
    if re.search(rf"\b{net}\b", info["op_name"]):
      return net
  return "other"


def op_times(trace_dir: str) -> dict[str, float]:
  """Seconds per event name on the host threads of the newest trace under ``trace_dir``."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top

  path = sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1]
  space = xplane_pb2.XSpace()
  space.ParseFromString(pathlib.Path(path).read_bytes())
  times: dict[str, float] = collections.defaultdict(float)
  for plane in space.planes:
    if not plane.name.startswith("/host:CPU"):
      continue
    for line in plane.lines:
      for event in line.events:
        times[plane.event_metadata[event.metadata_id].name] += event.duration_ps * 1e-12
  return times


def profile(config: str, batch: int) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top

  case = train_step.build_case(config, batch)
  state, data, params = case["state"], case["data"], case["content"].params
  compiled = case["step"].lower(state, data, params).compile()
  instrs = hlo_instructions(compiled.as_text())
  state, metrics = compiled(state, data, params)  # warm-up
  jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as tmp:
    jax.profiler.start_trace(tmp)
    state, metrics = compiled(state, data, params)
    jax.block_until_ready(metrics)
    jax.profiler.stop_trace()
    times = op_times(tmp)
  ops = []
  for name, sec in times.items():
    info = instrs.get(name)
    if info is None:
      continue  # runtime events (executable launch, argument handling), not HLO ops
    ops.append({"op": name, "seconds": sec, "kind": classify(info), "network": network(info),
                "opcode": info["opcode"], "shape": info["shape"], "op_name": info["op_name"][-160:]})
  total = sum(o["seconds"] for o in ops)

  def totals(key) -> dict[str, float]:
    out: dict[str, float] = collections.defaultdict(float)
    for o in ops:
      out[key(o)] += o["seconds"]
    return {k: round(v, 3) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}

  return {
      "config": config, "batch": batch, "op_seconds_total": round(total, 3),
      "by_kind": totals(lambda o: o["kind"]),
      "by_network": totals(lambda o: o["network"]),
      "by_network_and_kind": totals(lambda o: f"{o['network']} / {o['kind']}"),
      "top_ops": sorted(ops, key=lambda o: -o["seconds"])[:40],
      "top_other_ops": sorted((o for o in ops if o["kind"] == "other"),
                              key=lambda o: -o["seconds"])[:15],
  }


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="paper_256")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--out", default="runs/bench/profile_step.json")
  args = parser.parse_args(argv)
  result = profile(args.config, args.batch)
  total = result["op_seconds_total"]
  print(f"{args.config} batch {args.batch}: {total:.2f} s in HLO ops")
  for title in ("by_kind", "by_network", "by_network_and_kind"):
    print(f"\n{title}:")
    for k, v in result[title].items():
      print(f"  {k:40s} {v:8.3f} s  {v / total:6.1%}")
  print("\ntop ops:")
  for o in result["top_ops"][:25]:
    print(f"  {o['seconds']:7.3f} s  {o['kind']:18s} {o['network']:14s} {o['op']} {o['shape']}")
  print("\ntop 'other' ops:")
  for o in result["top_other_ops"][:10]:
    print(f"  {o['seconds']:7.3f} s  {o['opcode']:12s} {o['network']:14s} {o['op']} {o['shape']} "
          f"{o['op_name'][-70:]}")
  from fewshot_jax.atomic_files import write_json  # pylint: disable=g-import-not-at-top

  path = write_json(args.out, result)
  print(path)
  return path


if __name__ == "__main__":
  main()
