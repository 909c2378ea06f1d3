"""The meta-learning loop, in the order a reader expects (big_vision style):
mesh -> input -> model and state (restored or created sharded) -> jitted step -> loop with
logging, sample grids and checkpoints.

Metrics are fetched one step late, so the host never waits for the device just to print.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from fewshot_jax import config as config_lib
from fewshot_jax.atomic_files import write_text
from fewshot_jax.content import ContentLoss, build_content_loss
from fewshot_jax.data.episodes import EpisodeSampler
from fewshot_jax.images import to_uint8
from fewshot_jax.progress import Progress
from fewshot_jax.train import checkpoint as ckpt_lib
from fewshot_jax.train import sharding as sh
from fewshot_jax.train import state as st
from fewshot_jax.train import step as step_lib
from fewshot_jax.train.metrics_log import MetricLog

log = logging.getLogger("fewshot_jax")


@dataclasses.dataclass
class TrainResult:
  state: st.TrainState
  graphdef: nnx.GraphDef
  content: ContentLoss
  config: ml_collections.ConfigDict  # the run config, runtime facts included
  steps_run: int
  train_seconds: float


def run_config(
    cfg: ml_collections.ConfigDict, num_videos: int, content: ContentLoss
) -> ml_collections.ConfigDict:
  """The config as saved with the run: every field plus what was decided at run time."""
  out = ml_collections.ConfigDict(cfg.to_dict())
  out.runtime = ml_collections.ConfigDict()
  out.runtime.num_videos = num_videos
  out.runtime.content_loss = content.description
  out.runtime.jax_version = jax.__version__
  out.runtime.devices = f"{jax.device_count()} x {jax.devices()[0].platform}"
  return out


def make_sample_fn(graphdef: nnx.GraphDef, cfg: ml_collections.ConfigDict):
  """Jitted ``(state, batch) -> FF reconstructions of the batch targets`` with the EMA weights."""
  from fewshot_jax.inference import finetune as inf  # pylint: disable=g-import-not-at-top

  def sample(state: st.TrainState, batch: dict[str, jax.Array]) -> jax.Array:
    v = state.vars.replace(g=state.ema_g)
    e_hat = inf.embed(graphdef, v, cfg.model, batch["frames"], batch["landmarks"])
    psi = inf.feed_forward_psi(graphdef, v, e_hat)
    return jax.vmap(lambda p, pts: inf.generate(graphdef, v, cfg.model, p, pts[None])[0])(
        psi, batch["target_landmarks"])

  return jax.jit(sample)


def _sample_grid(sample_fn, state, batch, image_size: int, rows: int = 4) -> np.ndarray:
  """sources | target landmarks | generated (EMA, feed-forward) | target, one row per episode."""
  from fewshot_jax import landmarks as lmk  # pylint: disable=g-import-not-at-top
  from fewshot_jax.visualize import grid  # pylint: disable=g-import-not-at-top

  fake = to_uint8(sample_fn(state, batch))
  batch = jax.device_get(batch)
  out = []
  for i in range(min(rows, fake.shape[0])):
    lm = to_uint8(lmk.rasterize(batch["target_landmarks"][i], image_size) * 2 - 1)
    sources = list(batch["frames"][i][:4])
    out.append(sources + [lm, fake[i], batch["target"][i]])
  return grid(out)


def train(
    cfg: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    frames: np.ndarray,
    points: np.ndarray,
) -> TrainResult:
  """Meta-learns E, G and D on in-memory videos, resuming from ``workdir`` if it has a checkpoint.

  Args:
    cfg: the full config.
    workdir: run directory (checkpoints, metrics.jsonl, tb/, samples/, config.json).
    frames: uint8 ``[V, T, H, W, 3]``, one row per training video (row i is W's row i).
    points: float32 ``[V, T, 68, 2]`` landmarks.

  Returns:
    The final state and what is needed to use it.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  num_videos = frames.shape[0]

  # Mesh and input.
  mesh = sh.make_mesh(cfg)
  sampler = EpisodeSampler(frames, points, cfg.train.batch_size, cfg.train.k_shots, cfg.data.seed)
  batch_sharding = sh.batch_sharding(mesh)

  # Model, content loss and state shardings.
  content = build_content_loss(cfg.loss)
  log.info("content loss: %s", content.description)
  saved_cfg = run_config(cfg, num_videos, content)
  write_text(workdir / "config.json", config_lib.to_json(saved_cfg))
  graphdef, _ = st.abstract_model(cfg, num_videos)
  init_fn = functools.partial(st.init_train_state, cfg, num_videos)
  rng = jax.random.PRNGKey(cfg.seed)
  abstract_state = jax.eval_shape(init_fn, rng)
  shardings = sh.state_shardings(mesh, abstract_state)

  # State: the workdir's latest checkpoint, else a fresh sharded init.
  ckpts = ckpt_lib.Checkpoints(workdir, keep=cfg.train.keep_checkpoints)
  if ckpts.latest_step() is not None:
    state, start = ckpts.restore(ckpt_lib.abstract_with_shardings(abstract_state, shardings))
    log.info("resumed from step %d in %s", start, ckpts.directory)
  else:
    state = jax.jit(init_fn, out_shardings=shardings)(rng)
    start = 0

  # The step.
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  step_fn = jax.jit(
      step_lib.make_train_step(graphdef, cfg, content),
      in_shardings=(shardings, batch_sharding, replicated),
      out_shardings=(shardings, replicated),
      donate_argnums=0,
  )

  sample_fn = make_sample_fn(graphdef, cfg) if cfg.train.sample_every else None
  metric_log = MetricLog(workdir)
  total = cfg.train.steps
  progress = Progress(total, "train", "steps", start=start)
  pending: tuple[int, Any] | None = None
  t0 = time.perf_counter()
  step = start
  sample_dir = workdir / "samples"
  for step in range(start, total):
    batch = jax.device_put(sampler.batch(step), batch_sharding)
    state, metrics = step_fn(state, batch, content.params)
    if pending is not None:
      done_step, done_metrics = pending
      values = jax.device_get(done_metrics)
      if any(not math.isfinite(float(x)) for x in values.values()):
        raise FloatingPointError(f"non-finite loss at step {done_step}: {values}")
      if done_step % cfg.train.log_every == 0 or done_step == total:
        rate = progress.rate
        metric_log.scalars(done_step, {**values, "perf/steps_per_sec": rate,
                                       "perf/images_per_sec": rate * cfg.train.batch_size})
      extra = f"G {values['g/total']:.3f} content {values['g/content']:.3f} D {values['d/hinge']:.3f}"
      progress.update(1, extra)
    pending = (step + 1, metrics)
    done = step + 1
    if cfg.train.sample_every and done % cfg.train.sample_every == 0:
      from fewshot_jax.visualize import save_png  # pylint: disable=g-import-not-at-top

      image = _sample_grid(sample_fn, state, batch, cfg.model.image_size)
      save_png(sample_dir / f"step_{done:07d}.png", image)
      metric_log.image(done, "samples", image)
    if done % cfg.train.checkpoint_every == 0 and done < total:
      ckpts.save(done, state, saved_cfg)
  if pending is not None:
    values = jax.device_get(pending[1])
    metric_log.scalars(pending[0], values)
    progress.update(1, f"G {values['g/total']:.3f} D {values['d/hinge']:.3f}", force=True)
  train_seconds = time.perf_counter() - t0
  if total > start or ckpts.latest_step() is None:
    ckpts.save(total, state, saved_cfg)
  ckpts.close()
  metric_log.close()
  (workdir / "train_summary.json").write_text(json.dumps({
      "steps": total, "resumed_from": start, "train_seconds": train_seconds,
      "steps_per_sec": (total - start) / train_seconds if total > start else None,
  }, indent=2))
  return TrainResult(state, graphdef, content, saved_cfg, total - start, train_seconds)
