"""Self-reenactment on held-out videos (paper §4): K shots from the first part of each video, the
targets are later frames that are never among the shots, and generated targets are compared with the
real ones.

Methods:
  * ``ff``: feed-forward, ψ = P·ê from the meta-learned (EMA) weights;
  * ``ft``: few-shot fine-tuned for ``finetune.steps`` steps, one identity at a time (not under
    ``vmap``: batching over per-identity weights turns every conv into a grouped conv, which XLA:CPU
    runs an order of magnitude slower);
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
from fewshot_jax.progress import Progress


# The paper's Table 1 protocol: K in {1, 8, 32}, 32 hold-out targets per video.
PAPER_SHOTS = (1, 8, 32)
PAPER_TARGETS = 32


def frames_needed(k: int, num_targets: int = 0) -> int:
  """Frames a held-out video needs for K shots in its first half and ``num_targets`` in its
  second."""
  return 2 * max(k, num_targets)


def check_shots(shots: tuple[int, ...] | list[int], num_frames: int, where: str) -> None:
  """Refuses K values that ``num_frames``-frame held-out videos cannot serve, naming the frames
  each needs and how to prepare them."""
  bad = [k for k in shots if k > num_frames // 2]
  if bad:
    need = frames_needed(max(bad))
    raise ValueError(
        f"{where}: K={', '.join(map(str, bad))} needs held-out videos of at least {need} frames "
        f"(K shots from the first half, targets from the second); these have {num_frames}: "
        f"prepare the test split with `fewshot-jax prepare landmarks --test-frames-per-video "
        f"{max(need, 2 * PAPER_TARGETS)}`, or pass --shots without "
        f"{', '.join(map(str, bad))}")


def sample_videos(identities: list[str] | np.ndarray, n: int | None, seed: int) -> np.ndarray:
  """Positions of ``n`` videos drawn uniformly at random and stratified by identity.

  Identities are visited in a random order and each gives one of its videos (drawn at random)
  per round, so ``n`` videos span ``min(n, identities)`` people instead of the first one or two
  in key order, and no identity has two more videos than another unless it is the only one left
  with videos. ``n`` None (or at least the number of videos) keeps every video.

  Returns:
    Sorted positions into ``identities``.
  """
  identities = [str(i) for i in identities]
  if n is None or n >= len(identities):
    return np.arange(len(identities))
  if n < 1:
    raise ValueError(f"--max-videos {n}: expected at least 1")
  rng = np.random.default_rng(seed)
  groups: dict[str, list[int]] = {}
  for i, ident in enumerate(identities):
    groups.setdefault(ident, []).append(i)
  order = [list(rng.permutation(groups[name])) for name in sorted(groups)]
  order = [order[j] for j in rng.permutation(len(order))]
  picked: list[int] = []
  while len(picked) < n:
    for videos in order:
      if videos and len(picked) < n:
        picked.append(int(videos.pop()))
  return np.sort(np.asarray(picked))


def split_video(num_frames: int, k: int, num_targets: int) -> tuple[np.ndarray, np.ndarray]:
  """Shot and target frame indices: K shots spread over the first half, targets from the second."""
  half = num_frames // 2
  if k > half:
    raise ValueError(f"K={k} shots do not fit in the first half ({half} frames) of the video: "
                     f"it needs {frames_needed(k)} frames")
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
  """Fine-tunes each identity for ``finetune.steps`` steps; returns the states stacked on axis 0.

  The jitted step is called from a Python loop: an XLA ``while`` loop around the same step ran
  about 10x slower on XLA:CPU (measured: 3.5 s vs 0.34 s per step at 64x64, K = 8).
  """
  step = jax.jit(inf.make_finetune_step(graphdef, cfg, content))

  def run_many(base, embeddings, psis, frames, points, content_params):
    n = len(frames)
    progress = Progress(n * cfg.finetune.steps, f"finetune K={frames.shape[1]}", "steps")
    states = []
    for i in range(n):
      fs = inf.init_finetune(cfg, base, embeddings[i], psis[i])
      for _ in range(cfg.finetune.steps):
        fs, _ = step(fs, base, frames[i], points[i], content_params)
        progress.update(1)
      states.append(jax.device_get(fs))
    return jax.tree.map(lambda *xs: np.stack(xs), *states)

  return run_many


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
      gen_one = make_generate(graphdef, cfg)
      images["ft"] = np.stack([
          generate_with_finetuned(gen_one, v, ft_state, i, target_points[i])
          for i in range(len(frames))
      ])
  if "nearest_shot" in methods:
    idx = nearest_shot(shot_points, target_points)
    images["nearest_shot"] = np.take_along_axis(
        shot_frames, idx[:, :, None, None, None], axis=1
    )
  metrics = {m: _score(images[m], real) for m in methods}
  return Reenactment(images=images, metrics=metrics, ft_state=ft_state)


def make_generate(graphdef: nnx.GraphDef, cfg: ml_collections.ConfigDict):
  """``gen(vars, psi, points) -> frames in [-1, 1]``, jitted once for reuse across identities."""
  return jax.jit(lambda vv, psi, p: inf.generate(graphdef, vv, cfg.model, psi, p))


def generate_with_finetuned(
    gen: Any,
    v: ModelVars,
    ft_state: Any,
    identity: int,
    points: np.ndarray,
) -> np.ndarray:
  """uint8 frames of one fine-tuned identity (row ``identity`` of stacked states) for landmarks."""
  fs = jax.tree.map(lambda x: x[identity], ft_state)
  vv = v.replace(g={**v.g, "generator": fs.generator}, sn=fs.sn, d=fs.d)
  return to_uint8(gen(vv, fs.psi, jnp.asarray(points)))
