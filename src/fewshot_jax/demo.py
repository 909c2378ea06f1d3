"""`fewshot-jax demo`: synthetic talking heads -> meta-learning -> few-shot reenactment -> metrics.

The whole product at small size, in minutes on a CPU: it meta-learns ``demo_64`` on procedurally
generated talking faces, then reenacts identities it never saw (K = 1 and K = 8 shots, feed-forward
and fine-tuned), scores them against a nearest-shot baseline, and writes what a person wants to look
at: ``metrics.json``, ``samples.png``, ``reenactment.mp4`` / ``.gif``, and the run's checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from fewshot_jax import landmarks as lmk
from fewshot_jax.atomic_files import write_text
from fewshot_jax.data import shards, synthetic
from fewshot_jax.data.episodes import EpisodeSource
from fewshot_jax.evaluation import protocol
from fewshot_jax.images import to_uint8
from fewshot_jax.train.loop import train
from fewshot_jax.visualize import grid, save_gif, save_mp4, save_png

log = logging.getLogger("fewshot_jax")

DRIVER_MOTION_SEED = 7_777_777


def is_demo_dir(path: pathlib.Path) -> bool:
  """A demo's workdir, which a re-run may update (cli.py refuses any other non-empty folder): its
  metrics.json, or the training run it holds."""
  from fewshot_jax.output_paths import is_run, json_with_keys  # pylint: disable=g-import-not-at-top
  return json_with_keys(path / "metrics.json", ("checks",)) or is_run(path / "run")
VIDEO_FPS = 15


def build_shards(cfg: ml_collections.ConfigDict, data_dir: pathlib.Path) -> pathlib.Path:
  """The demo's synthetic videos as ArrayRecord shards, through the data-prep TFDS builder.

  The config name encodes everything that shapes the data, so a re-run (or a changed generator)
  reuses or rebuilds it automatically. ArrayRecord rather than TFRecord because TFDS writes
  ArrayRecord without TensorFlow, which the demo does not install.
  """
  from fewshot_jax.prep import tfds_builder  # pylint: disable=g-import-not-at-top

  dc, size = cfg.data, cfg.model.image_size
  name = (f"demo_{size}px_{dc.num_train_videos}v_{dc.num_eval_videos}h_{dc.frames_per_video}f_"
          f"s{dc.frame_stride}_g{synthetic.GENERATOR_VERSION}")
  config = tfds_builder.TalkingHeadsConfig(
      name=name, source="synthetic", image_size=size, num_train_videos=dc.num_train_videos,
      num_test_videos=dc.num_eval_videos, frames_per_video=dc.frames_per_video,
      frame_stride=dc.frame_stride, description="fewshot-jax demo")
  builder = tfds_builder.TalkingHeads(config=config, data_dir=str(data_dir),
                                      file_format="array_record")
  builder.download_and_prepare()  # a no-op when this config is already built
  return pathlib.Path(builder.data_dir)


def check_margins(results: dict[str, Any]) -> dict[str, bool]:
  """The four learning checks the demo must pass (see README)."""
  k1, k8 = results["k1"], results["k8"]
  return {
      "ft_k8_beats_nearest_by_0.10_ssim": k8["ft"]["ssim"] - k8["nearest_shot"]["ssim"] >= 0.10,
      "ft_k8_beats_nearest_by_3db_psnr": k8["ft"]["psnr"] - k8["nearest_shot"]["psnr"] >= 3.0,
      "ft_k1_beats_nearest_by_0.10_ssim": k1["ft"]["ssim"] - k1["nearest_shot"]["ssim"] >= 0.10,
      "ff_k8_beats_nearest_ssim": k8["ff"]["ssim"] > k8["nearest_shot"]["ssim"],
      "ft_k8_beats_ft_k1_ssim": k8["ft"]["ssim"] > k1["ft"]["ssim"],
  }


def run_demo(cfg: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
  """Runs the demo end to end and returns the contents of ``metrics.json``."""
  t_start = time.perf_counter()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  size = cfg.model.image_size

  log.info("synthetic shards: %d training and %d held-out videos", cfg.data.num_train_videos,
           cfg.data.num_eval_videos)
  dataset_dir = build_shards(cfg, workdir / "data")
  held = shards.read_videos(dataset_dir, "test")
  held_seeds = range(synthetic.HELDOUT_SEED_OFFSET,
                     synthetic.HELDOUT_SEED_OFFSET + cfg.data.num_eval_videos)
  expected_keys = [f"synthetic/{s}" for s in held_seeds]
  if held["keys"].tolist() != expected_keys:
    raise RuntimeError(f"{dataset_dir}: held-out split holds {held['keys'][:3]}..., expected "
                       f"{expected_keys[:3]}...")

  source = EpisodeSource.from_shards(str(dataset_dir), split="train")
  result = train(cfg, workdir / "run", source)
  state = jax.device_get(result.state)
  v = state.vars.replace(g=state.ema_g)

  results: dict[str, Any] = {}
  reenactments = {}
  for k in cfg.eval.shots:
    log.info("evaluating K=%d on %d held-out identities", k, cfg.data.num_eval_videos)
    r = protocol.reenact(result.graphdef, v, result.config, result.content, held["frames"],
                         held["landmarks"], k)
    results[f"k{k}"] = r.metrics
    reenactments[k] = r
  kmax = max(cfg.eval.shots)
  lpips_weights = add_lpips(results, reenactments, held["frames"], cfg)

  # samples.png: per held-out identity, its shots, then for one target: landmarks | FF | FT |
  # nearest shot | ground truth.
  shots, targets = protocol.split_video(held["frames"].shape[1], kmax, cfg.eval.targets_per_video)
  rows = []
  r = reenactments[kmax]
  for i in range(held["frames"].shape[0]):
    t = targets[0]
    lm_img = to_uint8(lmk.rasterize(held["landmarks"][i, t], size) * 2 - 1)
    rows.append([held["frames"][i, s] for s in shots[:4]] + [
        lm_img, r.images["ff"][i, 0], r.images["ft"][i, 0], r.images["nearest_shot"][i, 0],
        held["frames"][i, t]])
  save_png(workdir / "samples.png", grid(rows))

  # reenactment.mp4/.gif: a held-out identity driven by a motion it was never shown.
  drive_frames, drive_points = synthetic.render_video(
      held_seeds.start, 3 * cfg.data.frames_per_video, size, motion_seed=DRIVER_MOTION_SEED)
  gen = protocol.make_generate(result.graphdef, result.config)
  fake = protocol.generate_with_finetuned(gen, v, r.ft_state, 0, drive_points)
  lm_imgs = to_uint8(lmk.rasterize(drive_points, size) * 2 - 1)
  video = np.concatenate([lm_imgs, fake, drive_frames], axis=2)
  save_mp4(workdir / "reenactment.mp4", video, VIDEO_FPS, upscale=4)
  save_gif(workdir / "reenactment.gif", video, VIDEO_FPS, upscale=2)

  out = {
      "results": results,
      "checks": check_margins(results) if {"k1", "k8"} <= results.keys() else {},
      "train_steps": int(state.step),
      "train_seconds": result.train_seconds,
      "wall_seconds": time.perf_counter() - t_start,
      "content_loss": result.content.description,
      "lpips": ({"weights": lpips_weights, "network": "lpips_vgg16"} if lpips_weights else
                "not computed: no weights (make lpips-weights)"),
      "heldout_identities": list(held_seeds),
      "train_identities": cfg.data.num_train_videos,
  }
  write_text(workdir / "metrics.json", json.dumps(out, indent=2))
  print(format_table(out), file=sys.stderr)
  return out


def add_lpips(results: dict[str, Any], reenactments: dict[int, Any], frames: np.ndarray,
              cfg: ml_collections.ConfigDict) -> str | None:
  """Adds each method's mean LPIPS to ``results`` when the converted weights are in their place.

  Returns the weights' path, or None (and no LPIPS) when ``make lpips-weights`` has not run: the
  demo must run offline, and a missing metric is written as such rather than failing the run.
  """
  from fewshot_jax.evaluation import lpips  # pylint: disable=g-import-not-at-top

  path = lpips.default_weights_path()
  if not path.is_file():
    log.warning("LPIPS not computed: %s is missing (make lpips-weights)", path)
    return None
  metric = lpips.Lpips(path)
  for k, r in reenactments.items():
    _, targets = protocol.split_video(frames.shape[1], k, cfg.eval.targets_per_video)
    real = frames[:, targets].reshape((-1,) + frames.shape[2:])
    for m, images in r.images.items():
      results[f"k{k}"][m]["lpips"] = float(np.mean(metric(images.reshape(real.shape), real)))
  return str(path)


def format_table(out: dict[str, Any]) -> str:
  lines = ["", "K   method        SSIM    PSNR   LPIPS"]
  for key, methods in out["results"].items():
    for m, vals in methods.items():
      lp = f"{vals['lpips']:.3f}" if "lpips" in vals else "–"
      lines.append(f"{key[1:]:<3} {m:<13} {vals['ssim']:.3f}  {vals['psnr']:.2f}  {lp}")
  for name, ok in out["checks"].items():
    lines.append(f"{'PASS' if ok else 'FAIL'} {name}")
  lines.append(f"train {out['train_steps']} steps in {out['train_seconds']:.0f}s, "
               f"wall {out['wall_seconds']:.0f}s")
  return "\n".join(lines)
