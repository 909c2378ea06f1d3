"""Our spectral norm against an independent implementation: torch's ``spectral_norm``.

Both run one power iteration per training forward from the same ``u`` and let the gradient flow
through σ (Miyato et al.); so the normalised forward, the updated ``u`` and the gradient with
respect to the raw weight must agree. torch stores a conv weight as ``[out, in, kh, kw]`` where
ours is ``[kh, kw, in, out]``: the matrix columns come in another order, which changes neither
σ, nor ``u``, nor the gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from fewshot_jax.models import layers


def _ours(layer: layers._SpectralLayer, x: np.ndarray, cot: np.ndarray):
  """The layer's output, its updated ``u`` and d(Σ y·cot)/d(raw kernel)."""
  graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
  params, rest = params.to_pure_dict(), rest.to_pure_dict()

  def loss(params):
    model = nnx.merge(graphdef, nnx.State(params), nnx.State(rest))
    y = model(jnp.asarray(x))
    return jnp.sum(y * cot), (y, model.u.get_value())

  (_, (y, u)), grads = jax.value_and_grad(loss, has_aux=True)(params)
  return np.asarray(y), np.asarray(u), np.asarray(grads["kernel"])


def _torch(module: torch.nn.Module, weight: np.ndarray, u: np.ndarray, x: np.ndarray,
           cot: np.ndarray):
  """The same through ``torch.nn.utils.spectral_norm`` in training mode (one power iteration)."""
  with torch.no_grad():
    module.weight.copy_(torch.tensor(weight))
    module.bias.zero_()
  module = torch.nn.utils.spectral_norm(module, n_power_iterations=1)
  with torch.no_grad():
    module.weight_u.copy_(torch.tensor(u))
  module.train()
  y = module(torch.tensor(x))
  (y * torch.tensor(cot)).sum().backward()
  return y.detach().numpy(), module.weight_u.numpy().copy(), module.weight_orig.grad.numpy()


def test_conv_forward_u_and_gradient_match_torch():
  rng = np.random.default_rng(0)
  layer = layers.SNConv(4, 6, 3, rngs=nnx.Rngs(3))
  kernel = np.asarray(layer.kernel.get_value())  # [3, 3, 4, 6]
  u = np.asarray(layer.u.get_value())
  x = rng.normal(size=(2, 7, 7, 4)).astype(np.float32)
  cot = rng.normal(size=(2, 7, 7, 6)).astype(np.float32)
  y, new_u, grad = _ours(layer, x, cot)

  conv = torch.nn.Conv2d(4, 6, 3, padding=1)
  t_y, t_u, t_grad = _torch(conv, kernel.transpose(3, 2, 0, 1), u, x.transpose(0, 3, 1, 2),
                            cot.transpose(0, 3, 1, 2))
  np.testing.assert_allclose(y, t_y.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(new_u, t_u, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, t_grad.transpose(2, 3, 1, 0), rtol=1e-4, atol=1e-5)
  # The σ term is a real part of that gradient: dropping it (the naive 1/σ·dL/dW_sn) differs.
  sigma = float(layers.spectral_normalize(jnp.asarray(kernel), jnp.asarray(u))[2])
  w = torch.tensor(kernel.transpose(3, 2, 0, 1) / sigma, requires_grad=True)
  (torch.nn.functional.conv2d(torch.tensor(x.transpose(0, 3, 1, 2)), w, padding=1)
   * torch.tensor(cot.transpose(0, 3, 1, 2))).sum().backward()
  naive = w.grad.numpy().transpose(2, 3, 1, 0) / sigma
  assert np.abs(naive - grad).max() > 100 * np.abs(grad - t_grad.transpose(2, 3, 1, 0)).max()


def test_dense_forward_u_and_gradient_match_torch():
  rng = np.random.default_rng(1)
  layer = layers.SNDense(5, 3, rngs=nnx.Rngs(4))
  kernel = np.asarray(layer.kernel.get_value())  # [in, out]
  u = np.asarray(layer.u.get_value())
  x = rng.normal(size=(4, 5)).astype(np.float32)
  cot = rng.normal(size=(4, 3)).astype(np.float32)
  y, new_u, grad = _ours(layer, x, cot)
  t_y, t_u, t_grad = _torch(torch.nn.Linear(5, 3), kernel.T.copy(), u, x, cot)
  np.testing.assert_allclose(y, t_y, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(new_u, t_u, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, t_grad.T, rtol=1e-4, atol=1e-5)
