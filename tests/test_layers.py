"""Spectral norm, AdaIN and self-attention: the behaviours the networks rely on."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fewshot_jax.models import layers


def test_spectral_norm_sigma_converges_to_one_and_raw_weight_is_untouched():
  conv = layers.SNConv(8, 16, 3, rngs=nnx.Rngs(0))
  raw = np.array(conv.kernel[...])
  x = jnp.ones((1, 8, 8, 8))
  for _ in range(30):
    conv(x)
  np.testing.assert_array_equal(np.asarray(conv.kernel[...]), raw)  # forward never edits W
  w_eff, _, _ = layers.spectral_normalize(conv.kernel[...], conv.u[...])
  sigma = np.linalg.svd(np.asarray(w_eff).reshape(-1, 16), compute_uv=False)[0]
  assert abs(sigma - 1.0) < 1e-3
  true_sigma = np.linalg.svd(raw.reshape(-1, 16), compute_uv=False)[0]
  _, _, est = layers.spectral_normalize(conv.kernel[...], conv.u[...])
  assert abs(float(est) - true_sigma) / true_sigma < 1e-3


def test_spectral_u_is_state_updated_only_when_training():
  dense = layers.SNDense(5, 7, rngs=nnx.Rngs(1))
  u0 = np.array(dense.u[...])
  dense(jnp.ones((2, 5)))
  u1 = np.array(dense.u[...])
  assert not np.allclose(u0, u1)
  dense.set_attributes(update_sn=False)
  dense(jnp.ones((2, 5)))
  np.testing.assert_array_equal(np.asarray(dense.u[...]), u1)
  assert isinstance(dense.u, layers.SpectralU) and not isinstance(dense.u, nnx.Param)
  assert "u" not in nnx.state(dense, nnx.Param)


def test_spectral_norm_gradient_flows_through_sigma():
  """d(W/σ)/dW includes the σ term: the gradient of ‖W/σ‖_2 along W itself is ~0."""
  k = jax.random.normal(jax.random.key(0), (3, 3, 4, 6))
  u = jnp.ones((6,)) / np.sqrt(6)
  for _ in range(50):
    _, u, _ = layers.spectral_normalize(k, u)
  g = jax.grad(lambda k: jnp.sum(layers.spectral_normalize(k, u)[0] * k))(k)
  # ∑ (W/σ)·W = ‖W‖²/σ; its gradient is not the naive 2W/σ because σ depends on W.
  naive = 2 * k / layers.spectral_normalize(k, u)[2]
  assert not np.allclose(np.asarray(g), np.asarray(naive), atol=1e-3)


def test_adain_sets_per_sample_statistics():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3)) * 5 + 3
  gamma_offset = jnp.array([[1.0, -0.5, 0.0], [0.0, 2.0, 1.0]])
  beta = jnp.array([[0.5, 1.0, -2.0], [3.0, 0.0, 0.0]])
  y = layers.adain(x, jnp.concatenate([gamma_offset, beta], -1))
  np.testing.assert_allclose(np.asarray(y.mean(axis=(1, 2))), np.asarray(beta), atol=1e-4)
  np.testing.assert_allclose(
      np.asarray(y.std(axis=(1, 2))), np.abs(1 + np.asarray(gamma_offset)), rtol=1e-3
  )


def test_self_attention_starts_as_identity_and_mixes_positions_once_gamma_moves():
  attn = layers.SelfAttention(16, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (1, 4, 4, 16))
  np.testing.assert_array_equal(np.asarray(attn(x)), np.asarray(x))
  attn.gamma[...] = jnp.asarray(1.0)
  x2 = x.at[0, 0, 0].add(10.0)  # change one position
  delta = np.abs(np.asarray(attn(x2) - attn(x)))[0].sum(-1)
  assert (delta[1:, :] > 1e-6).any()  # other positions see it through attention


def test_resdown_and_resup_shapes():
  down = layers.ResDown(3, 8, norm=True, first=True, rngs=nnx.Rngs(0))
  assert down(jnp.ones((2, 16, 16, 3))).shape == (2, 8, 8, 8)
  up = layers.ResUpAdaIN(8, 4, rngs=nnx.Rngs(0))
  p = [jnp.zeros((2, 16)), jnp.zeros((2, 8))]
  assert up(jnp.ones((2, 8, 8, 8)), p).shape == (2, 16, 16, 4)


@pytest.mark.parametrize("kernel_shape", [(3, 3, 5, 7), (1, 1, 6, 4), (5, 5, 3, 2)])
def test_conv_weight_gradient_formulations_match_xla(kernel_shape):
  """The CPU weight gradients (taps, rows) against XLA's own, and the custom-VJP conv's
  gradients (both arguments) against plain XLA differentiation."""
  from fewshot_jax.models import conv as conv_lib  # pylint: disable=g-import-not-at-top

  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (2, 9, 6, kernel_shape[2]))
  k = jax.random.normal(jax.random.fold_in(key, 1), kernel_shape)
  dy = jax.random.normal(jax.random.fold_in(key, 2), (2, 9, 6, kernel_shape[3]))
  want = jax.vjp(lambda k: conv_lib._xla_conv(x, k), k)[1](dy)[0]  # pylint: disable=protected-access
  np.testing.assert_allclose(conv_lib.weight_grad_rows(x, dy, k.shape), want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(conv_lib.weight_grad_taps(x, dy, k.shape), want, rtol=1e-4, atol=1e-4)

  def loss(conv, x, k):
    return jnp.sum(jnp.sin(conv(x, k)))

  got = jax.grad(functools.partial(loss, conv_lib._conv_taps_grad), argnums=(0, 1))(x, k)  # pylint: disable=protected-access
  ref = jax.grad(functools.partial(loss, conv_lib._xla_conv), argnums=(0, 1))(x, k)  # pylint: disable=protected-access
  for a, b in zip(got, ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_conv_weight_gradient_mode(monkeypatch):
  from fewshot_jax.models import conv as conv_lib  # pylint: disable=g-import-not-at-top

  monkeypatch.delenv(conv_lib.WEIGHT_GRAD_ENV, raising=False)
  cpu = jax.default_backend() == "cpu"
  assert conv_lib.weight_grad_mode((8, 128, 128, 64)) == ("taps" if cpu else "xla")
  assert conv_lib.weight_grad_mode((8, 32, 32, 256)) == "xla"  # XLA's own is as fast there
  monkeypatch.setenv(conv_lib.WEIGHT_GRAD_ENV, "xla")
  assert conv_lib.weight_grad_mode() == "xla"
  monkeypatch.setenv(conv_lib.WEIGHT_GRAD_ENV, "cudnn")
  with pytest.raises(ValueError, match="FEWSHOT_CONV_WEIGHT_GRAD='cudnn'"):
    conv_lib.weight_grad_mode()
