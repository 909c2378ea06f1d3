"""Pure loss functions of the meta-learning objective (paper §3.2, v2 weights).

All images are NHWC in [-1, 1]. Every function returns a scalar mean so that weights in the config
mean the same thing at any batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

FeatureNet = Callable[[jax.Array], Sequence[jax.Array]]


def l1(a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean absolute difference."""
  return jnp.mean(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))


def perceptual_l1(net: FeatureNet, fake: jax.Array, real: jax.Array) -> jax.Array:
  """Sum over the tapped layers of the L1 between activations of ``fake`` and ``real``.

  The real images go through the net on their own, outside the differentiated computation: in
  one batch with the fakes, the backward pass would also run through the real half (whose
  gradient is thrown away) and keep its activations for it.
  """
  real_acts = [jax.lax.stop_gradient(a) for a in net(jax.lax.stop_gradient(real))]
  return sum(l1(f, r) for f, r in zip(net(fake), real_acts))


def content_loss(
    fake: jax.Array,
    real: jax.Array,
    nets: Sequence[tuple[float, FeatureNet]],
    pixel_weight: float,
) -> jax.Array:
  """L_CNT: weighted perceptual L1 over the configured feature nets.

  Args:
    fake: generated frames.
    real: ground-truth frames.
    nets: ``(weight, feature_net)`` pairs (VGG19, VGGFace); empty when no weights are configured.
    pixel_weight: weight of a pixel L1, used only when ``nets`` is empty.

  Returns:
    The scalar loss.
  """
  if not nets:
    return pixel_weight * l1(fake, real)
  return sum(w * perceptual_l1(net, fake, real) for w, net in nets)


def feature_matching(fake_acts: Sequence[jax.Array], real_acts: Sequence[jax.Array]) -> jax.Array:
  """L_FM: sum over D's blocks of the L1 between activations on fake and (fixed) real frames."""
  return sum(l1(f, jax.lax.stop_gradient(r)) for f, r in zip(fake_acts, real_acts))


def generator_adversarial(
    fake_scores: jax.Array,
    fake_acts: Sequence[jax.Array],
    real_acts: Sequence[jax.Array],
    adv_weight: float,
    fm_weight: float,
) -> jax.Array:
  """L_ADV = -r(fake) + λ_FM · L_FM (the realism score is unbounded: no sigmoid)."""
  return -adv_weight * jnp.mean(fake_scores) + fm_weight * feature_matching(fake_acts, real_acts)


def embedding_match(embedding: jax.Array, table_rows: jax.Array) -> jax.Array:
  """L_MCH = ‖ê_i − W_i‖₁ (mean over entries). W_i is held fixed here; D's hinge trains W."""
  return l1(embedding, jax.lax.stop_gradient(table_rows))


def discriminator_hinge(real_scores: jax.Array, fake_scores: jax.Array) -> jax.Array:
  """L_DSC = max(0, 1 + r(fake)) + max(0, 1 − r(real))."""
  return jnp.mean(jax.nn.relu(1.0 + fake_scores)) + jnp.mean(jax.nn.relu(1.0 - real_scores))
