"""The meta-learning step: one G/E update, then ``d_steps`` D updates (paper §3.2).

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
  match_weight = lc.match_weight if tc.variant == "ft" else 0.0
  g_opt, d_opt = st.g_optimizer(cfg), st.d_optimizer(cfg)

  def step(state: st.TrainState, batch: Batch, content_params: Any):
    rng = jax.random.fold_in(state.rng, state.step)
    batch = flip_episodes(batch, rng, tc.flip_prob, cfg.model.image_size)
    frames = to_signed(batch["frames"])  # [B, K, H, W, 3]
    target = to_signed(batch["target"])  # [B, H, W, 3]
    lm_src = landmark_images(batch["landmarks"], cfg.model)
    lm_tgt = landmark_images(batch["target_landmarks"], cfg.model)
    idx = batch["video_index"]
    n = target.shape[0]
    lm_pair = jnp.concatenate([lm_tgt, lm_tgt], axis=0)
    idx_pair = jnp.concatenate([idx, idx], axis=0)
    v = state.vars

    def g_loss(g_params):
      model = st.merge_model(graphdef, v.replace(g=g_params))
      e_hat = model.embedder(frames, lm_src)
      fake = model.generator(lm_tgt, model.generator.psi_from_embedding(e_hat))
      scores, acts = model.discriminator(jnp.concatenate([fake, target], 0), lm_pair, idx_pair)
      r_fake, _ = split_scores(scores, n)
      fake_acts = [a[:n] for a in acts]
      real_acts = [a[n:] for a in acts]
      l_cnt = content.fn(content_params, fake, target)
      l_fm = losses.feature_matching(fake_acts, real_acts)
      l_adv = -lc.adv_weight * jnp.mean(r_fake) + lc.fm_weight * l_fm
      l_mch = losses.embedding_match(e_hat, v.w["discriminator"]["W"][idx])
      total = l_cnt + l_adv + match_weight * l_mch
      metrics = {"g/total": total, "g/content": l_cnt, "g/fm": l_fm, "g/match": l_mch,
                 "g/r_fake": jnp.mean(r_fake)}
      return total, (fake, st.spectral_state(model), metrics)

    (_, (fake, sn, g_metrics)), g_grads = jax.value_and_grad(g_loss, has_aux=True)(v.g)
    updates, opt_g = g_opt.update(g_grads, state.opt_g, v.g)
    v = v.replace(g=optax.apply_updates(v.g, updates), sn=sn)

    # D sees the fake made before this G update (as in the paper's alternating scheme); reusing it
    # saves a second generator forward per iteration.
    fake = jax.lax.stop_gradient(fake)
    images = jnp.concatenate([fake, target], axis=0)
    opt_d, opt_w = state.opt_d, state.opt_w
    d_metrics: Metrics = {}
    for _ in range(tc.d_steps):

      def d_loss(d_params, table, v=v):
        model = st.merge_model(graphdef, v.replace(d=d_params, w={"discriminator": {"W": table}}))
        scores, _ = model.discriminator(images, lm_pair, idx_pair)
        r_fake, r_real = split_scores(scores, n)
        loss = losses.discriminator_hinge(r_real, r_fake)
        metrics = {"d/hinge": loss, "d/r_real": jnp.mean(r_real), "d/r_fake": jnp.mean(r_fake)}
        return loss, (st.spectral_state(model), metrics)

      table = v.w["discriminator"]["W"]
      (_, (sn, d_metrics)), (d_grads, w_grad) = jax.value_and_grad(
          d_loss, argnums=(0, 1), has_aux=True
      )(v.d, table)
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
