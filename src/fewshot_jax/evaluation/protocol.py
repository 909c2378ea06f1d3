"""Self-reenactment on held-out videos (paper §4): K shots from the first part of each video, the
targets are later frames that are never among the shots, and generated targets are compared with the
real ones.

Methods:
  * ``ff``: feed-forward, ψ = P·ê from the meta-learned (EMA) weights;
  * ``ft``: few-shot fine-tuned for ``finetune.steps`` steps (all held-out identities at once, under
    ``jax.vmap``, the whole fine-tuning one compiled ``fori_loop``);
  * ``nearest_shot``: a baseline with no model: the shot whose landmarks are closest to the target's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from fewshot_jax.content import ContentLoss
from fewshot_jax.evaluation.metrics import psnr, ssim
from fewshot_jax.images import to_uint8
from fewshot_jax.inference import finetune as inf
from fewshot_jax.models.talking_head import ModelVars


def split_video(num_frames: int, k: int, num_targets: int) -> tuple[np.ndarray, np.ndarray]:
  """Shot and target frame indices: K shots spread over the first half, targets from the second."""
  half = num_frames // 2
  if k > half:
    raise ValueError(f"K={k} shots do not fit in the first half ({half} frames) of the video")
  shots = np.unique(np.linspace(0, half - 1, k).round().astype(int))
  targets = np.arange(half, num_frames)
  if num_targets < len(targets):
    targets = targets[np.linspace(0, len(targets) - 1, num_targets).round().astype(int)]
  return shots, targets


def nearest_shot(shot_points: np.ndarray, target_points: np.ndarray) -> np.ndarray:
  """Index of the shot whose landmarks are closest (mean point distance) to each target's.

  Args:
    shot_points: ``[V, K, 68, 2]``.
    target_points: ``[V, T, 68, 2]``.

  Returns:
    ``[V, T]`` shot indices.
  """
  d = np.linalg.norm(target_points[:, :, None] - shot_points[:, None], axis=-1).mean(-1)
  return np.argmin(d, axis=-1)


@dataclasses.dataclass
class Reenactment:
  """Generated targets (uint8 ``[V, T, H, W, 3]``) per method, and the fitted FT ψ' per identity."""

  images: dict[str, np.ndarray]
  metrics: dict[str, dict[str, float]]
  ft_state: Any = None


def _score(fake_u8: np.ndarray, real_u8: np.ndarray) -> dict[str, float]:
  a = fake_u8.astype(np.float32) / 255.0
  b = real_u8.astype(np.float32) / 255.0
  return {"ssim": float(np.mean(ssim(a, b))), "psnr": float(np.mean(psnr(a, b)))}


def make_finetune_many(graphdef: nnx.GraphDef, cfg: ml_collections.ConfigDict, content: ContentLoss):
  """jit(vmap(fine-tune N steps)) over identities; returns the fitted states."""
  step = inf.make_finetune_step(graphdef, cfg, content)

  def run_one(base: ModelVars, embedding, psi, frames, points, content_params):
    fs = inf.init_finetune(cfg, base, embedding, psi)

    def body(_, fs):
      return step(fs, base, frames, points, content_params)[0]

    return jax.lax.fori_loop(0, cfg.finetune.steps, body, fs)

  return jax.jit(jax.vmap(run_one, in_axes=(None, 0, 0, 0, 0, None)))


def reenact(
    graphdef: nnx.GraphDef,
    v: ModelVars,
    cfg: ml_collections.ConfigDict,
    content: ContentLoss,
    frames: np.ndarray,
    points: np.ndarray,
    k: int,
    methods: tuple[str, ...] = ("ff", "ft", "nearest_shot"),
) -> Reenactment:
  """Runs the protocol for one K on held-out videos.

  Args:
    graphdef: model graph.
    v: model variables (E and G should be the EMA weights).
    cfg: run config.
    content: the run's content loss (used by fine-tuning).
    frames: uint8 ``[V, T, H, W, 3]`` held-out videos.
    points: ``[V, T, 68, 2]`` their landmarks.
    k: number of shots.
    methods: which of ``ff``, ``ft``, ``nearest_shot`` to run.

  Returns:
    Generated targets and mean SSIM/PSNR per method.
  """
  shots, targets = split_video(frames.shape[1], k, cfg.eval.targets_per_video)
  shot_frames, shot_points = frames[:, shots], points[:, shots]
  real = frames[:, targets]
  target_points = points[:, targets]
  images: dict[str, np.ndarray] = {}
  ft_state = None

  gen = jax.jit(jax.vmap(lambda vv, psi, p: inf.generate(graphdef, vv, cfg.model, psi, p),
                         in_axes=(None, 0, 0)))
  if "ff" in methods or "ft" in methods:
    embed = jax.jit(lambda vv, f, p: inf.embed(graphdef, vv, cfg.model, f, p))
    e_hat = embed(v, shot_frames, shot_points)
    psi = jax.jit(lambda vv, e: inf.feed_forward_psi(graphdef, vv, e))(v, e_hat)
    if "ff" in methods:
      images["ff"] = to_uint8(gen(v, psi, target_points))
    if "ft" in methods:
      ft_state = make_finetune_many(graphdef, cfg, content)(
          v, e_hat, psi, shot_frames, shot_points, content.params
      )
      gen_ft = jax.jit(jax.vmap(
          lambda fs, p: inf.generate(
              graphdef, v.replace(g={**v.g, "generator": fs.generator}, sn=fs.sn, d=fs.d),
              cfg.model, fs.psi, p),
          in_axes=(0, 0)))
      images["ft"] = to_uint8(gen_ft(ft_state, target_points))
  if "nearest_shot" in methods:
    idx = nearest_shot(shot_points, target_points)
    images["nearest_shot"] = np.take_along_axis(
        shot_frames, idx[:, :, None, None, None], axis=1
    )
  metrics = {m: _score(images[m], real) for m in methods}
  return Reenactment(images=images, metrics=metrics, ft_state=ft_state)


def generate_with_finetuned(
    graphdef: nnx.GraphDef,
    v: ModelVars,
    cfg: ml_collections.ConfigDict,
    ft_state: Any,
    identity: int,
    points: np.ndarray,
) -> np.ndarray:
  """Frames of one fine-tuned identity (row ``identity`` of a vmapped state) for new landmarks."""
  fs = jax.tree.map(lambda x: x[identity], ft_state)
  vv = v.replace(g={**v.g, "generator": fs.generator}, sn=fs.sn, d=fs.d)
  out = jax.jit(lambda vv, psi, p: inf.generate(graphdef, vv, cfg.model, psi, p))(
      vv, fs.psi, jnp.asarray(points)
  )
  return to_uint8(out)
