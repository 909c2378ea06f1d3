"""Few-shot embedding, fine-tuning and generation (paper §3.3), as pure functions.

Fine-tuning a new person from K shots: ψ' is initialised to P·ê_new and trained directly, the
generator's weights are trained, and D's projection vector becomes w' = w0 + ê_new (stored here as
``w_proj = ê_new``; D's ``score`` adds w0). There is no table row and no embedding match. Every
function is pure in its arrays, so ``jax.vmap`` fine-tunes many identities at once (the demo does
this for its held-out set) and ``jax.jit`` traces each shape once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from fewshot_jax import landmarks as lmk
from fewshot_jax import losses
from fewshot_jax.content import ContentLoss
from fewshot_jax.images import to_signed
from fewshot_jax.models.talking_head import ModelVars, merge_model, spectral_state

PyTree = Any


def _lm_images(points: jax.Array, model_cfg: ml_collections.ConfigDict) -> jax.Array:
  return lmk.landmark_images(points, model_cfg.image_size, model_cfg.landmark_thickness)


def _eval_model(graphdef: nnx.GraphDef, v: ModelVars):
  model = merge_model(graphdef, v)
  model.set_attributes(update_sn=False)
  return model


def embed(
    graphdef: nnx.GraphDef,
    v: ModelVars,
    model_cfg: ml_collections.ConfigDict,
    frames: jax.Array,
    points: jax.Array,
) -> jax.Array:
  """ê from K shots: uint8 ``[..., K, H, W, 3]`` and ``[..., K, 68, 2]`` -> ``[..., N]``."""
  model = _eval_model(graphdef, v)
  lead = frames.shape[:-4]
  f = to_signed(frames).reshape((-1,) + frames.shape[-4:])
  p = _lm_images(points, model_cfg).reshape(f.shape)
  return model.embedder(f, p).reshape(lead + (-1,))


def feed_forward_psi(graphdef: nnx.GraphDef, v: ModelVars, embedding: jax.Array) -> jax.Array:
  """ψ = P·ê (the FF model's AdaIN parameters)."""
  return _eval_model(graphdef, v).generator.psi_from_embedding(embedding)


def generate(
    graphdef: nnx.GraphDef,
    v: ModelVars,
    model_cfg: ml_collections.ConfigDict,
    psi: jax.Array,
    points: jax.Array,
) -> jax.Array:
  """Frames in [-1, 1] for target landmarks ``[T, 68, 2]`` with one identity's ψ ``[psi_dim]``."""
  model = _eval_model(graphdef, v)
  psi_b = jnp.broadcast_to(psi, (points.shape[0],) + psi.shape[-1:])
  return model.generator(_lm_images(points, model_cfg), psi_b)


@flax.struct.dataclass
class FinetuneState:
  """One identity being fitted: G's weights, ψ', D's weights, w' - w0, and their optimisers."""

  generator: PyTree
  psi: jax.Array
  d: PyTree
  w_proj: jax.Array
  sn: PyTree
  opt_g: PyTree
  opt_d: PyTree


def _optimizers(cfg: ml_collections.ConfigDict):
  f = cfg.finetune
  return (
      optax.adam(f.lr_g, b1=cfg.train.b1, b2=cfg.train.b2),
      optax.adam(f.lr_d, b1=cfg.train.b1, b2=cfg.train.b2),
  )


def init_finetune(
    cfg: ml_collections.ConfigDict, v: ModelVars, embedding: jax.Array, psi: jax.Array
) -> FinetuneState:
  """Starts fine-tuning from the meta-learned weights: ψ' = P·ê, w' = w0 + ê."""
  opt_g, opt_d = _optimizers(cfg)
  gen = v.g["generator"]
  return FinetuneState(
      generator=gen,
      psi=psi,
      d=v.d,
      w_proj=embedding,
      sn=v.sn,
      opt_g=opt_g.init((gen, psi)),
      opt_d=opt_d.init((v.d, embedding)),
  )


def d_steps(cfg: ml_collections.ConfigDict) -> int:
  """D updates per G update when fine-tuning: ``finetune.d_steps``, or with 0 (the default) the
  meta-learning schedule's ``train.d_steps`` (2 in the paper), so that fine-tuning continues the
  game G and D were trained in rather than one that favours G."""
  n = int(cfg.finetune.get("d_steps", 0))
  return n if n > 0 else int(cfg.train.d_steps)


def make_finetune_step(
    graphdef: nnx.GraphDef, cfg: ml_collections.ConfigDict, content: ContentLoss
) -> Callable[..., tuple[FinetuneState, dict[str, jax.Array]]]:
  """Builds ``step(fs, base_vars, frames, points, content_params)`` for one identity.

  ``frames`` uint8 ``[K, H, W, 3]`` and ``points`` ``[K, 68, 2]`` are the shots; each step trains G
  (and ψ') against them with the content, adversarial and feature-matching losses, then D
  ``d_steps(cfg)`` times with the hinge loss. ``base_vars`` supplies the frozen embedder.
  """
  lc = cfg.loss
  n_d = d_steps(cfg)
  opt_g, opt_d = _optimizers(cfg)

  def step(fs: FinetuneState, base: ModelVars, frames, points, content_params):
    real = to_signed(frames)
    lm = _lm_images(points, cfg.model)
    n = real.shape[0]
    lm_pair = jnp.concatenate([lm, lm], 0)

    def vars_with(gen, d, sn):
      return base.replace(g={**base.g, "generator": gen}, d=d, sn=sn)

    def g_loss(trainable):
      gen, psi = trainable
      model = merge_model(graphdef, vars_with(gen, fs.d, fs.sn))
      fake = model.generator(lm, jnp.broadcast_to(psi, (n,) + psi.shape))
      feats, acts = model.discriminator.features(jnp.concatenate([fake, real], 0), lm_pair)
      r_fake = model.discriminator.score(feats[:n], fs.w_proj)
      l_cnt = content.fn(content_params, fake, real)
      l_fm = losses.feature_matching([a[:n] for a in acts], [a[n:] for a in acts])
      total = l_cnt - lc.adv_weight * jnp.mean(r_fake) + lc.fm_weight * l_fm
      return total, (fake, spectral_state(model), {"ft/g_total": total, "ft/content": l_cnt})

    (_, (fake, sn, metrics)), grads = jax.value_and_grad(g_loss, has_aux=True)(
        (fs.generator, fs.psi)
    )
    updates, og = opt_g.update(grads, fs.opt_g, (fs.generator, fs.psi))
    gen, psi = optax.apply_updates((fs.generator, fs.psi), updates)
    images = jnp.concatenate([jax.lax.stop_gradient(fake), real], 0)
    d, w_proj, od = fs.d, fs.w_proj, fs.opt_d
    for _ in range(n_d):

      def d_loss(trainable, sn=sn):
        d_params, w = trainable
        model = merge_model(graphdef, vars_with(gen, d_params, sn))
        feats, _ = model.discriminator.features(images, lm_pair)
        scores = model.discriminator.score(feats, w)
        loss = losses.discriminator_hinge(scores[n:], scores[:n])
        return loss, (spectral_state(model), loss)

      (_, (sn, hinge)), grads = jax.value_and_grad(d_loss, has_aux=True)((d, w_proj))
      updates, od = opt_d.update(grads, od, (d, w_proj))
      d, w_proj = optax.apply_updates((d, w_proj), updates)
      metrics["ft/d_hinge"] = hinge
    return fs.replace(generator=gen, psi=psi, d=d, w_proj=w_proj, sn=sn, opt_g=og, opt_d=od), metrics

  return step
