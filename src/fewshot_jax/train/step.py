"""The meta-learning step: one G/E update, then ``d_steps`` D updates (paper §3.2).

The G/E update and the first D update share one D forward (both see D before its update and the
fake made before G's update); each further D update runs D again at its new weights.

Pure functions of (state, batch): the model is rebuilt from its graph with ``nnx.merge`` inside the
trace, so ``jax.jit`` sees only arrays and the step can be sharded, donated and traced once.
Landmark images are drawn here, on the device, from float landmarks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from fewshot_jax import landmarks as lmk
from fewshot_jax import losses
from fewshot_jax.content import ContentLoss
from fewshot_jax.images import to_signed
from fewshot_jax.models import execution
from fewshot_jax.train import state as st

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def landmark_images(points: jax.Array, model_cfg: ml_collections.ConfigDict) -> jax.Array:
  """Rasterised landmark images in [-1, 1] at the model's resolution."""
  return lmk.landmark_images(points, model_cfg.image_size, model_cfg.landmark_thickness)


def flip_episodes(batch: Batch, rng: jax.Array, prob: float, image_size: int) -> Batch:
  """Mirrors whole episodes (sources and target alike) with probability ``prob``, on device."""
  if prob <= 0.0:
    return batch
  flip = jax.random.bernoulli(rng, prob, batch["video_index"].shape)

  def pick(a, b):
    return jnp.where(flip.reshape(flip.shape + (1,) * (a.ndim - 1)), b, a)

  return {
      **batch,
      "frames": pick(batch["frames"], batch["frames"][..., ::-1, :]),
      "target": pick(batch["target"], batch["target"][..., ::-1, :]),
      "landmarks": pick(batch["landmarks"], lmk.mirror(batch["landmarks"], image_size)),
      "target_landmarks": pick(
          batch["target_landmarks"], lmk.mirror(batch["target_landmarks"], image_size)
      ),
  }


def split_scores(x: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
  return x[:n], x[n:]


def make_train_step(
    graphdef: nnx.GraphDef, cfg: ml_collections.ConfigDict, content: ContentLoss
) -> Callable[[st.TrainState, Batch, Any], tuple[st.TrainState, Metrics]]:
  """Builds ``step(state, batch, content_params) -> (state, metrics)``; jit it with shardings."""
  tc, lc = cfg.train, cfg.loss
  if tc.variant not in ("ft", "ff"):
    raise ValueError(f"train.variant={tc.variant!r}: expected 'ft' or 'ff'")
  if tc.d_steps < 1:
    raise ValueError(f"train.d_steps={tc.d_steps}: expected at least 1 D update per iteration")
  match_weight = lc.match_weight if tc.variant == "ft" else 0.0
  g_opt, d_opt = st.g_optimizer(cfg), st.d_optimizer(cfg)

  def step(state: st.TrainState, batch: Batch, content_params: Any):
    # train.compute_dtype and train.remat apply to everything traced inside.
    with execution.options(tc.compute_dtype, tc.remat):
      return _step(state, batch, content_params)

  def _step(state: st.TrainState, batch: Batch, content_params: Any):
    rng = jax.random.fold_in(state.rng, state.step)
    batch = flip_episodes(batch, rng, tc.flip_prob, cfg.model.image_size)
    dtype = execution.current().compute_dtype  # of activations; parameters stay f32
    frames = to_signed(batch["frames"]).astype(dtype)  # [B, K, H, W, 3]
    target = to_signed(batch["target"]).astype(dtype)  # [B, H, W, 3]
    lm_src = landmark_images(batch["landmarks"], cfg.model).astype(dtype)
    lm_tgt = landmark_images(batch["target_landmarks"], cfg.model).astype(dtype)
    idx = batch["video_index"]
    n = target.shape[0]
    lm_pair = jnp.concatenate([lm_tgt, lm_tgt], axis=0)
    idx_pair = jnp.concatenate([idx, idx], axis=0)
    v = state.vars
    table = v.w["discriminator"]["W"]

    # E and G forward, kept as a VJP: G's gradient arrives through D's input and the losses.
    def generate(g_params):
      model = st.merge_model(graphdef, v.replace(g=g_params))
      e_hat = model.embedder(frames, lm_src)
      fake = model.generator(lm_tgt, model.generator.psi_from_embedding(e_hat))
      return (fake, e_hat), st.spectral_state(model)

    (fake, e_hat), generate_vjp, sn_g = jax.vjp(generate, v.g, has_aux=True)

    # One D forward on [fake, real] serves both the G/E update (through its input) and the first
    # D update (through its weights): both see D before its update and the fake before G's (the
    # paper's alternating scheme), so the second forward the two updates used to make was the
    # same computation. Each VJP call below keeps only the cotangents it uses; XLA drops the rest.
    def discriminate(d_params, w_table, images):
      model = st.merge_model(graphdef, v.replace(d=d_params, w={"discriminator": {"W": w_table}},
                                                 sn=sn_g))
      scores, acts = model.discriminator(images, lm_pair, idx_pair)
      return (scores, acts), st.spectral_state(model)

    (scores, acts), discriminate_vjp, sn = jax.vjp(
        discriminate, v.d, table, jnp.concatenate([fake, target], axis=0), has_aux=True)

    def g_objective(fake, e_hat, scores, acts):
      r_fake, _ = split_scores(scores, n)
      l_cnt = content.fn(content_params, fake, target)
      l_fm = losses.feature_matching([a[:n] for a in acts], [a[n:] for a in acts])
      l_adv = -lc.adv_weight * jnp.mean(r_fake) + lc.fm_weight * l_fm
      l_mch = losses.embedding_match(e_hat, table[idx])
      total = l_cnt + l_adv + match_weight * l_mch
      return total, {"g/total": total, "g/content": l_cnt, "g/fm": l_fm, "g/match": l_mch,
                     "g/r_fake": jnp.mean(r_fake)}

    (_, g_metrics), (d_fake, d_e_hat, d_scores, d_acts) = jax.value_and_grad(
        g_objective, argnums=(0, 1, 2, 3), has_aux=True)(fake, e_hat, scores, acts)
    _, _, d_images = discriminate_vjp((d_scores, d_acts))
    (g_grads,) = generate_vjp((d_fake + d_images[:n], d_e_hat))
    updates, opt_g = g_opt.update(g_grads, state.opt_g, v.g)
    new_g = optax.apply_updates(v.g, updates)

    def d_objective(scores):
      r_fake, r_real = split_scores(scores, n)
      loss = losses.discriminator_hinge(r_real, r_fake)
      return loss, {"d/hinge": loss, "d/r_real": jnp.mean(r_real), "d/r_fake": jnp.mean(r_fake)}

    (_, d_metrics), d_scores = jax.value_and_grad(d_objective, has_aux=True)(scores)
    d_grads, w_grad, _ = discriminate_vjp((d_scores, jax.tree.map(jnp.zeros_like, acts)))
    updates, opt_d = d_opt.update(d_grads, state.opt_d, v.d)
    table, opt_w = st.row_adam_update(table, w_grad, idx, state.opt_w, tc.lr_d, tc.b1, tc.b2)
    v = v.replace(g=new_g, d=optax.apply_updates(v.d, updates),
                  w={"discriminator": {"W": table}}, sn=sn)

    # Further D updates (the paper's two per iteration) each need D's forward at its new weights.
    images = jax.lax.stop_gradient(jnp.concatenate([fake, target], axis=0))
    for _ in range(tc.d_steps - 1):

      def d_loss(d_params, w_table, v=v):
        model = st.merge_model(graphdef, v.replace(d=d_params, w={"discriminator": {"W": w_table}}))
        scores, _ = model.discriminator(images, lm_pair, idx_pair)
        loss, metrics = d_objective(scores)
        return loss, (st.spectral_state(model), metrics)

      (_, (sn, d_metrics)), (d_grads, w_grad) = jax.value_and_grad(
          d_loss, argnums=(0, 1), has_aux=True)(v.d, table)
      updates, opt_d = d_opt.update(d_grads, opt_d, v.d)
      table, opt_w = st.row_adam_update(table, w_grad, idx, opt_w, tc.lr_d, tc.b1, tc.b2)
      v = v.replace(d=optax.apply_updates(v.d, updates), w={"discriminator": {"W": table}}, sn=sn)

    new_state = state.replace(
        step=state.step + 1,
        vars=v,
        opt_g=opt_g,
        opt_d=opt_d,
        opt_w=opt_w,
        ema_g=st.ema_update(state.ema_g, v.g, tc.ema_decay),
    )
    return new_state, {**g_metrics, **d_metrics}

  return step
