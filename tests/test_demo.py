"""`fewshot-jax demo` end to end on a shrunk config: every output exists and is well formed."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from conftest import TINY_OVERRIDES
from fewshot_jax import cli
from fewshot_jax.prep.video import read_video


def test_demo_writes_every_output(tmp_path, monkeypatch):
  monkeypatch.setenv("FEWSHOT_JAX_XLA_CACHE", "")
  workdir = tmp_path / "demo"
  overrides = [f"--config.{o}" for o in TINY_OVERRIDES] + [
      "--config.train.steps=3",
      "--config.data.num_train_videos=12",
      "--config.data.num_eval_videos=2",
      "--config.data.frames_per_video=16",
      "--config.finetune.steps=2",
  ]
  assert cli.main(["demo", "--workdir", str(workdir)] + overrides) == 0

  metrics = json.loads((workdir / "metrics.json").read_text())
  for k in ("k1", "k8"):
    for method in ("ff", "ft", "nearest_shot"):
      vals = metrics["results"][k][method]
      assert 0.0 < vals["ssim"] <= 1.0 and 0.0 < vals["psnr"] < 100.0
      assert 0.0 < vals["lpips"] < 2.0  # make test converts the LPIPS weights before the tests
  assert metrics["train_steps"] == 3
  assert metrics["train_seconds"] > 0 and metrics["wall_seconds"] >= metrics["train_seconds"]
  assert set(metrics["checks"]) and all(isinstance(v, bool) for v in metrics["checks"].values())
  assert metrics["content_loss"].startswith("pixel L1")
  assert metrics["lpips"]["network"] == "lpips_vgg16"

  samples = np.asarray(Image.open(workdir / "samples.png"))
  assert samples.ndim == 3 and samples.shape[0] > 2 * 32 and samples.shape[1] > 8 * 32

  frames, fps = read_video(workdir / "reenactment.mp4")
  assert frames.shape == (48, 4 * 32, 4 * 3 * 32, 3)  # landmarks | generated | truth, x4
  assert round(fps) == 15
  gif = Image.open(workdir / "reenactment.gif")
  assert gif.n_frames == 48

  saved = json.loads((workdir / "run" / "config.json").read_text())
  assert saved["model"]["image_size"] == 32 and saved["runtime"]["num_videos"] == 12
  assert (workdir / "run" / "checkpoints" / "3").is_dir()
  assert (workdir / "run" / "metrics.jsonl").is_file()
  # Training read its episodes from the synthetic builder's shards, not from memory.
  assert list((workdir / "data").rglob("talking_heads-train.array_record-*"))
  assert (workdir / "run" / "checkpoints" / "3" / "data").is_dir()  # the input's position
