"""The accelerator benchmark: its smoke run end to end, its arithmetic, and the backend choices.

An accelerator is lent here only now and then, for minutes, so ``benchmarks/accelerator.py`` must
work the first time it meets one. The smoke run executes every section on the CPU (a tiny model,
a short demo) and is checked for figures in every one; the code paths that differ by backend are
checked with the backend reported as ``gpu``, which is what those paths read.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

ROOT = pathlib.Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import accelerator  # noqa: E402  pylint: disable=g-import-not-at-top

from fewshot_jax import landmarks as lmk  # noqa: E402
from fewshot_jax.data import synthetic  # noqa: E402
from fewshot_jax.models import conv  # noqa: E402


def test_the_smoke_run_measures_every_section_and_costs_the_paper_recipe(tmp_path):
  out = tmp_path / "acc"
  done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accelerator.py"), "--smoke",
                         "--out", str(out), "--budget-s", "300"],
                        capture_output=True, text=True, timeout=400, cwd=ROOT)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads((out / "accelerator.json").read_text())
  sections = result["sections"]
  assert list(sections) == list(accelerator.SECTIONS)
  assert not {k: v["error"] for k, v in sections.items() if "error" in v}
  assert sections["environment"]["backend"] == jax.default_backend()
  assert sections["environment"]["backend_paths"] == {"conv_weight_gradient_256px": "taps",
                                                      "rasterizer_256px": "tiled"}
  peak = sections["matmul_peak"]
  assert peak["float32_gflops"] > 0 and peak["bfloat16_gflops"] > 0
  for name, dtype in accelerator.DTYPES.items():
    train = sections[name]
    assert train["dtype"] == dtype and train["probe"]["loss_finite"]
    assert train["largest"]["batch"] >= train["probe"]["batch"]
    assert train["largest"]["images_per_s"] > 0 and 0 < train["mfu"] < 1
    assert train["probe"]["xla_memory_estimate_bytes"]["total"] > 0
  # f32 is compiled again at a larger batch (the search's path); bf16 stays at the probe's.
  assert sections["train_f32"]["largest"]["batch"] == 2 > sections["train_f32"]["probe"]["batch"]
  gen = sections["generate"]
  assert gen["b1"]["frames_per_second"] > 0 and gen["latency_one_frame_s"] > 0
  assert sections["finetune"]["k8"]["k"] == 8 and sections["finetune"]["k1"]["sec_per_step"] > 0
  assert sections["rasterize"]["faces"]["path"] == "tiled"
  demo = sections["demo"]
  assert demo["train_steps"] == 4 and set(demo["checks"]) and demo["wall_s"] > demo["train_s"]
  best = max(sections[n]["largest"]["images_per_s"] for n in accelerator.DTYPES)
  assert result["costing"]["images_per_s_per_device"] == best
  assert result["costing"]["from"].startswith("smoke run")
  summary = (out / "accelerator.md").read_text()
  assert "smoke run" in summary and "vox2_256_ft" in summary and "Fine-tuning: K=1" in summary
  # A second run into the same folder replaces its own files; a folder of other things is refused.
  other = tmp_path / "thesis"
  other.mkdir()
  (other / "thesis.tex").write_text("mine")
  refused = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accelerator.py"),
                            "--smoke", "--out", str(other), "--sections", "environment"],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert refused.returncode != 0 and "thesis.tex" in refused.stderr
  assert (other / "thesis.tex").read_text() == "mine" and len(list(other.iterdir())) == 1


def test_costing_is_the_paper_schedule_over_the_measured_rate():
  cost = accelerator.costing(100.0, "train_bf16, batch 64")
  ft, ff = cost["schedules"]["vox2_256_ft"], cost["schedules"]["vox2_256_ff"]
  assert ft["device_hours"] == round(75 * 145_569 / 100.0 / 3600, 1) == 30.3
  assert ff["device_hours"] == round(2 * 75 * 145_569 / 100.0 / 3600, 1)
  assert ft["wall_hours_on_8"] == round(ft["device_hours"] / 8, 1)


def test_the_largest_batch_grows_the_temporaries_and_keeps_the_weights():
  probe = {"xla_memory_estimate_bytes": {"total": 10 * 2**30, "temp": 6 * 2**30}}
  # 4 GiB fixed, 1 GiB per image at batch 6: 0.9 * 100 GiB holds 86 images, rounded to 80.
  assert accelerator._largest_batch(probe, 6, 100 * 2**30) == 80  # pylint: disable=protected-access
  assert accelerator._largest_batch(probe, 6, 12 * 2**30) == 6  # pylint: disable=protected-access


@pytest.fixture
def gpu_backend(monkeypatch):
  """The backend reported as ``gpu``: what the backend-dependent code paths read."""
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")


def _primitives(jaxpr) -> set[str]:
  """Every primitive in ``jaxpr``, inside loops, conds and nested calls too."""
  from jax.extend.core import jaxprs_in_params  # pylint: disable=g-import-not-at-top

  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for sub in jaxprs_in_params(eqn.params):
      names |= _primitives(sub)
  return names


def _conv_grad_primitives() -> set[str]:
  x = jnp.ones((1, 64, 64, 8))
  kernel = jnp.ones((3, 3, 8, 8))
  grad = jax.grad(lambda k: jnp.sum(conv.conv2d(x, k)))
  return _primitives(jax.make_jaxpr(grad)(kernel).jaxpr)


def _raster_primitives() -> set[str]:
  points = jnp.asarray(synthetic.render_video(0, 1, 256)[1])
  draw = lmk._draw.__wrapped__  # pylint: disable=protected-access  (the traced body, not the cache)
  return _primitives(jax.make_jaxpr(lambda p: draw(p, 256, 2.0))(points).jaxpr)


def test_on_the_cpu_the_weight_gradient_and_rasteriser_take_their_cpu_paths():
  assert conv.weight_grad_mode((1, 256, 256, 64)) == "taps"
  assert "scan" in _conv_grad_primitives()  # the weight gradient as a loop of per-tap matmuls
  assert lmk.rasterizer_path(256) == "tiled" and "cond" in _raster_primitives()


def test_off_the_cpu_both_select_xla_s_own_kernels(gpu_backend):  # pylint: disable=unused-argument
  assert conv.weight_grad_mode((1, 256, 256, 64)) == "xla"
  prims = _conv_grad_primitives()
  assert "scan" not in prims and "conv_general_dilated" in prims  # XLA's own weight gradient
  assert lmk.rasterizer_path(256) == "dense" and "cond" not in _raster_primitives()
