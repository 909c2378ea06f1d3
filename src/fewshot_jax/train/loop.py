"""The meta-learning loop, in the order a reader expects (big_vision style):
mesh -> input -> model and state (restored, initialised from another run, or created sharded) ->
jitted step -> loop with logging, sample grids, evaluation and checkpoints.

Behaviour a long run relies on:

* Metrics are fetched one step late, so the host never waits for the device just to print.
* A NaN or Inf in any loss stops the run with the step and the loss names; a checkpoint is only
  written after its step's losses were checked, so the last checkpoint is always a good one.
* SIGTERM (a TPU preemption notice) saves a checkpoint at the current step, waits for it to be on
  disk and returns normally; the job exits 0 and the next launch resumes. With several processes
  all of them agree on the step through JAX's preemption sync point.
* A checkpoint holds the state, the input iterator's position and the config, so a resumed run
  draws exactly the batches it would have drawn.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from fewshot_jax import config as config_lib
from fewshot_jax import config_checks
from fewshot_jax.atomic_files import filesystem_path, write_text
from fewshot_jax.content import ContentLoss, build_content_loss
from fewshot_jax.data import episodes
from fewshot_jax.images import to_uint8
from fewshot_jax.prep import provenance
from fewshot_jax.host_memory import release_freed_heap
from fewshot_jax.progress import Progress
from fewshot_jax.train import checkpoint as ckpt_lib
from fewshot_jax.train import resume
from fewshot_jax.train import schedule
from fewshot_jax.train import sharding as sh
from fewshot_jax.train import state as st
from fewshot_jax.train import step as step_lib
from fewshot_jax.train.metrics_log import MetricLog

log = logging.getLogger("fewshot_jax")

EVAL_HOOK_SEED = 12345  # the held-out episodes of the periodic evaluation


@dataclasses.dataclass
class TrainResult:
  state: st.TrainState
  graphdef: nnx.GraphDef
  content: ContentLoss
  config: ml_collections.ConfigDict  # the run config, runtime facts included
  steps_run: int
  train_seconds: float
  preempted: bool = False


def run_config(
    cfg: ml_collections.ConfigDict, num_videos: int, content: ContentLoss,
    steps_from_epochs: dict[str, Any] | None = None,
    detector: dict[str, Any] | None = None,
) -> ml_collections.ConfigDict:
  """The config as saved with the run: every field plus what was decided at run time."""
  out = ml_collections.ConfigDict(cfg.to_dict())
  out.runtime = ml_collections.ConfigDict()
  out.runtime.num_videos = num_videos
  out.runtime.content_loss = content.description
  # What the perceptual weights were, so a resume may name the same files at another path.
  out.runtime.content_weights = resume.weight_hashes(cfg)
  if steps_from_epochs is not None:
    out.runtime.steps_from_epochs = steps_from_epochs
  if detector is not None:
    out.runtime.landmark_detector = detector
  out.runtime.jax_version = jax.__version__
  out.runtime.devices = f"{jax.device_count()} x {jax.devices()[0].platform}"
  out.runtime.processes = jax.process_count()
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


def _sample_grid(fake: np.ndarray, batch: dict[str, np.ndarray], image_size: int,
                 rows: int = 4) -> np.ndarray:
  """sources | target landmarks | generated (EMA, feed-forward) | target, one row per episode."""
  from fewshot_jax import landmarks as lmk  # pylint: disable=g-import-not-at-top
  from fewshot_jax.visualize import grid  # pylint: disable=g-import-not-at-top

  out = []
  for i in range(min(rows, fake.shape[0])):
    lm = to_uint8(lmk.rasterize(batch["target_landmarks"][i], image_size) * 2 - 1)
    out.append(list(batch["frames"][i][:4]) + [lm, fake[i], batch["target"][i]])
  return grid(out)


class _Preemption:
  """Whether the job was told to stop (SIGTERM), agreed across processes."""

  def __init__(self):
    self.multi = jax.process_count() > 1
    self.requested = False
    self._previous = None
    if not self.multi:  # with several processes JAX's coordination service watches SIGTERM
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)

  def _on_signal(self, signum, frame) -> None:
    del signum, frame
    log.warning("SIGTERM: saving a checkpoint after this step, then exiting")
    self.requested = True

  def reached(self, step: int) -> bool:
    if self.multi:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _due(step: int, every: int) -> bool:
  """Whether an interval's event falls on ``step``; an interval of 0 is off (config_checks.py)."""
  return every > 0 and step % every == 0


def _check_finite(step: int, values: dict[str, Any]) -> None:
  bad = {k: float(v) for k, v in values.items() if not math.isfinite(float(v))}
  if bad:
    names = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
    raise FloatingPointError(
        f"non-finite loss at step {step}: {names}; the run stopped, and its last checkpoint "
        "(written before this step) is intact")


@jax.jit
def _finite_leaves(state: st.TrainState) -> Any:
  """Per float leaf of the state: are all its values finite?"""
  return jax.tree.map(lambda x: jnp.isfinite(x).all() if jnp.issubdtype(x.dtype, jnp.floating)
                      else jnp.bool_(True), state)


def _check_state_finite(step: int, state: st.TrainState) -> None:
  """Losses are computed before a step's update, so a finite loss does not prove the updated
  state finite; this does, before the state is written as a checkpoint."""
  flags = jax.device_get(_finite_leaves(state))
  bad = [jax.tree_util.keystr(path) for path, ok in jax.tree_util.tree_leaves_with_path(flags)
         if not ok]
  if bad:
    raise FloatingPointError(
        f"non-finite parameters after step {step} in {len(bad)} arrays (first: {bad[0]}); the run "
        "stopped, and its last checkpoint (written before this step) is intact")


def _initial_state(
    cfg: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    num_videos: int,
    ckpts: ckpt_lib.Checkpoints,
    init: str | None,
) -> tuple[st.TrainState, int, Any, dict[str, Any] | None]:
  """Restore order: this workdir's latest checkpoint, then ``init`` (another run), then fresh.

  ``init`` takes the other run's E, G, D, spectral state and EMA weights (and W when it has the
  same videos), with fresh optimiser moments, from step 0.
  """
  init_fn = functools.partial(st.init_train_state, cfg, num_videos)
  rng = jax.random.PRNGKey(cfg.seed)
  abstract_state = jax.eval_shape(init_fn, rng)
  shardings = sh.state_shardings(mesh, abstract_state)
  if ckpts.latest_step() is not None:
    state, start = ckpts.restore(ckpt_lib.abstract_with_shardings(abstract_state, shardings))
    log.info("resumed from step %d in %s", start, ckpts.directory)
    return state, start, shardings, ckpts.restore_data_state(start)
  fresh = jax.jit(init_fn, out_shardings=shardings)(rng)
  if not init:
    return fresh, 0, shardings, None
  source = ckpt_lib.Checkpoints(init, read_only=True)
  their_cfg = source.restore_config()
  mismatch = {k: (cfg.model[k], their_cfg.model.get(k)) for k in cfg.model
              if cfg.model[k] != their_cfg.model.get(k)}
  if mismatch:
    rows = "; ".join(f"model.{k}: this run {a!r}, {init} {b!r}" for k, (a, b) in mismatch.items())
    raise ValueError(f"--init {init}: incompatible model config ({rows})")
  their_videos = int(their_cfg.runtime.num_videos)
  their_abstract = jax.eval_shape(
      functools.partial(st.init_train_state, cfg, their_videos), rng)
  loaded, step = source.restore(ckpt_lib.abstract_with_shardings(
      their_abstract, sh.state_shardings(mesh, their_abstract)))
  w = loaded.vars.w if their_videos == num_videos else fresh.vars.w
  state = fresh.replace(
      vars=fresh.vars.replace(g=loaded.vars.g, d=loaded.vars.d, sn=loaded.vars.sn, w=w),
      ema_g=loaded.ema_g)
  log.info("initialised from %s step %d (W %s)", init, step,
           "kept" if w is loaded.vars.w else f"fresh: {their_videos} videos there, {num_videos} here")
  return state, 0, shardings, None


def _eval_batches(source: episodes.EpisodeSource, cfg: ml_collections.ConfigDict,
                  batches: int) -> list[dict[str, np.ndarray]]:
  """A fixed set of held-out episodes, the same in every process and at every evaluation."""
  eval_cfg = ml_collections.ConfigDict(cfg.to_dict())
  eval_cfg.data.workers = 0
  eval_cfg.data.seed = EVAL_HOOK_SEED
  eval_cfg.train.batch_size = min(cfg.train.batch_size, source.num_videos)
  it = iter(episodes.episode_dataset(source, eval_cfg, process_index=0, process_count=1))
  return [next(it) for _ in range(batches)]


def _fetch(x: jax.Array) -> np.ndarray:
  """A global array on the host of every process (also when it is split over processes)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def train(
    cfg: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    source: episodes.EpisodeSource,
    init: str | None = None,
    eval_source: episodes.EpisodeSource | None = None,
) -> TrainResult:
  """Meta-learns E, G and D; resumes from ``workdir`` if it has a checkpoint.

  Args:
    cfg: the full config.
    workdir: run directory (checkpoints, metrics.jsonl, tb/, samples/, config.json).
    source: the training videos (shards or in memory); W gets one row per video.
    init: another run's workdir to start from when this one has no checkpoint yet.
    eval_source: held-out videos for the periodic SSIM/PSNR hook (``train.eval_every``).

  Returns:
    The final state and what is needed to use it.
  """
  config_checks.validate(cfg)  # before a mesh, a dataset or a program is built
  workdir = filesystem_path(workdir, "workdir")
  workdir.mkdir(parents=True, exist_ok=True)
  num_videos = source.num_videos
  # train.epochs: the step count follows the training set's size (train/schedule.py).
  cfg, steps_from_epochs = schedule.resolve_steps(cfg, num_videos)
  if steps_from_epochs is not None:
    log.info("train.steps=%d: %g epochs of %d videos at batch %d", cfg.train.steps,
             steps_from_epochs["epochs"], num_videos, cfg.train.batch_size)
  tc = cfg.train
  detector = None
  split = getattr(source, "split", None)
  if split is not None:  # shards: which detector made the landmarks, from the dataset's metadata
    detector = provenance.check_detector(split.directory, split.split,
                                         cfg.data.get("expected_detector", ""), "train")

  # Mesh and input.
  mesh = sh.make_mesh(cfg)
  batch_sharding = sh.batch_sharding(mesh)
  dataset = episodes.episode_dataset(source, cfg)

  # Model, content loss, state.
  content = build_content_loss(cfg.loss)
  log.info("content loss: %s", content.description)
  saved_cfg = run_config(cfg, num_videos, content, steps_from_epochs, detector)
  graphdef, _ = st.abstract_model(cfg, num_videos)
  ckpts = ckpt_lib.Checkpoints(workdir, keep=tc.keep_checkpoints, keep_every=tc.keep_every)
  # A resume is checked against the checkpoint's own config before anything in the run is
  # written: a wrong --config must not make a good run unloadable (train/resume.py).
  latest = ckpts.latest_step()
  changes = {}
  if latest is not None:
    try:
      changes = resume.check_resume(cfg, ckpts.restore_config(latest), num_videos, workdir,
                                    latest)
    except resume.ResumeMismatch:
      ckpts.close()
      raise
  state, start, shardings, data_state = _initial_state(cfg, mesh, num_videos, ckpts, init)
  if jax.process_index() == 0:  # only now that the state has been restored (or created)
    write_text(workdir / "config.json", config_lib.to_json(saved_cfg))
    resume.record_changes(workdir, start, changes)
  iterator = iter(dataset)
  if data_state is not None:
    iterator.set_state(data_state)
  elif start:
    log.warning("checkpoint %d has no input state: the input restarts from its beginning", start)

  # The step.
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  step_fn = jax.jit(
      step_lib.make_train_step(graphdef, cfg, content),
      in_shardings=(shardings, batch_sharding, replicated),
      out_shardings=(shardings, replicated),
      donate_argnums=0,
  )
  sample_fn = make_sample_fn(graphdef, cfg) if (tc.sample_every or tc.eval_every) else None
  eval_every = int(tc.eval_every) if eval_source is not None else 0
  eval_set = _eval_batches(eval_source, cfg, int(cfg.eval.hook_batches)) if eval_every else []

  metric_log = MetricLog(workdir)
  total = tc.steps
  progress = Progress(total, "train", "steps", start=start)
  preemption = _Preemption()
  pending: tuple[int, Any] | None = None
  t0 = time.perf_counter()
  done = start
  preempted = False

  def report(step: int, metrics: Any, force: bool = False) -> None:
    values = jax.device_get(metrics)
    _check_finite(step, values)
    rate = progress.rate
    if _due(step, tc.log_every) or step == total or force:
      metric_log.write_scalars(step, {**values, "perf/steps_per_sec": rate,
                                      "perf/images_per_sec": rate * tc.batch_size})
    progress.update(1, f"{rate * tc.batch_size:.1f} img/s G {values['g/total']:.3f} "
                       f"content {values['g/content']:.3f} D {values['d/hinge']:.3f}", force=force)

  try:
    for step in range(start, total):
      local = next(iterator)
      batch = episodes.global_batch(local, batch_sharding)
      state, metrics = step_fn(state, batch, content.params)
      if step == start:  # compiled by now: hand the compiler's freed heap back (host_memory.py)
        release_freed_heap()
      if pending is not None:
        report(*pending)
      done = step + 1
      pending = (done, metrics)
      if _due(done, tc.sample_every):
        from fewshot_jax.visualize import save_png  # pylint: disable=g-import-not-at-top
        fake = to_uint8(_fetch(sample_fn(state, batch)))
        image = _sample_grid(fake, local, cfg.model.image_size)
        if jax.process_index() == 0:
          save_png(workdir / "samples" / f"step_{done:07d}.png", image)
        metric_log.write_images(done, {"samples": image})
      if _due(done, eval_every):
        metric_log.write_scalars(done, _evaluate(sample_fn, state, eval_set))
      preempted = preemption.reached(done)
      if preempted or (_due(done, tc.checkpoint_every) and done < total):
        report(*pending)  # a checkpoint is written only after its losses were checked
        pending = None
        _check_state_finite(done, state)  # ... and its parameters
        ckpts.save(done, state, saved_cfg, iterator.get_state(), wait=preempted)
      if preempted:
        log.warning("preempted: saved step %d in %s", done, ckpts.directory)
        break
    if pending is not None:
      report(*pending, force=True)
    train_seconds = time.perf_counter() - t0
    if not preempted and (total > start or ckpts.latest_step() is None):
      _check_state_finite(total, state)
      ckpts.save(total, state, saved_cfg, iterator.get_state())
  finally:
    preemption.close()
    ckpts.close()
    metric_log.close()
    close = getattr(iterator, "close", None)
    if close is not None:
      close()
  if jax.process_index() == 0:
    write_text(workdir / "train_summary.json", json.dumps({
        "steps": done, "resumed_from": start, "train_seconds": train_seconds,
        "steps_per_sec": (done - start) / train_seconds if done > start else None,
        "preempted": preempted,
    }, indent=2))
  return TrainResult(state, graphdef, content, saved_cfg, done - start, train_seconds, preempted)


def _evaluate(sample_fn, state, eval_set) -> dict[str, float]:
  """Feed-forward SSIM and PSNR (EMA weights) on the fixed held-out episodes.

  Every process holds the same episodes, so they enter the step as replicated inputs.
  """
  from fewshot_jax.evaluation import metrics  # pylint: disable=g-import-not-at-top
  ssim, psnr = [], []
  for local in eval_set:
    fake = _fetch(sample_fn(state, local)).astype(np.float32)
    fake01 = np.clip((fake + 1) / 2, 0, 1)
    real01 = np.asarray(local["target"], np.float32) / 255.0
    ssim.append(np.asarray(metrics.ssim(fake01, real01)))
    psnr.append(np.asarray(metrics.psnr(fake01, real01)))
  return {"eval/ssim": float(np.mean(np.concatenate(ssim))),
          "eval/psnr": float(np.mean(np.concatenate(psnr)))}
