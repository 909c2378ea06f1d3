"""Network shapes for both configs, the projection score, and the parameter counts we report."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fewshot_jax import config as config_lib
from fewshot_jax.models.talking_head import TalkingHeadModel, split_model


@pytest.mark.parametrize("name", ["demo_64", "paper_256"])
def test_shapes_without_compiling(name):
  cfg = config_lib.load_config(name)
  m = cfg.model
  s, b, k, n = m.image_size, 2, cfg.train.k_shots, m.embed_dim

  def forward():
    model = TalkingHeadModel(m, 10, rngs=nnx.Rngs(0))
    frames = jnp.zeros((b, k, s, s, 3))
    e = model.embedder(frames, frames)
    psi = model.generator.psi_from_embedding(e)
    fake = model.generator(frames[:, 0], psi)
    score, acts = model.discriminator(fake, fake, jnp.zeros((b,), jnp.int32))
    return e, psi, fake, score, acts

  e, psi, fake, score, acts = jax.eval_shape(forward)
  assert e.shape == (b, n)
  assert fake.shape == (b, s, s, 3)
  assert score.shape == (b,)
  assert len(acts) == len(m.d_channels) + int(m.d_extra_block)
  assert acts[-1].shape == (b, 4, 4, n)


def test_paper_parameter_counts():
  cfg = config_lib.load_config("paper_256")
  model = nnx.eval_shape(lambda: TalkingHeadModel(cfg.model, 1, rngs=nnx.Rngs(0)))
  _, v = split_model(model)
  count = lambda t: sum(x.size for x in jax.tree.leaves(t))
  e, g, d = count(v.g["embedder"]), count(v.g["generator"]), count(v.d)
  # Pinned so that an architecture change is a visible decision (README reports these numbers).
  assert (e, g, d) == (14_906_945, 37_839_461, 19_627_074)


def test_projection_score_math():
  cfg = config_lib.load_config("demo_64")
  model = TalkingHeadModel(cfg.model, 5, rngs=nnx.Rngs(0))
  model.set_attributes(update_sn=False)  # the two forwards below must see the same sigma
  d = model.discriminator
  d.w0[...] = jnp.arange(d.embed_dim, dtype=jnp.float32) / 100
  d.b[...] = jnp.asarray(0.25)
  x = jax.random.uniform(jax.random.key(0), (3, 64, 64, 3), minval=-1, maxval=1)
  idx = jnp.array([4, 0, 4])
  score, _ = d(x, x, idx)
  v, _ = d.features(x, x)
  expected = np.einsum("bn,bn->b", np.asarray(v), np.asarray(d.W[...][idx] + d.w0[...])) + 0.25
  np.testing.assert_allclose(np.asarray(score), expected, rtol=1e-5)
  # Fine-tuning form: an explicit projection vector replaces the table row.
  w = jax.random.normal(jax.random.key(1), (3, d.embed_dim))
  np.testing.assert_allclose(
      np.asarray(d.score(v, w)),
      np.einsum("bn,bn->b", np.asarray(v), np.asarray(w + d.w0[...])) + 0.25, rtol=1e-5)


def test_embedding_is_mean_over_shots():
  cfg = config_lib.load_config("demo_64")
  model = TalkingHeadModel(cfg.model, 5, rngs=nnx.Rngs(0))
  model.set_attributes(update_sn=False)
  f = jax.random.uniform(jax.random.key(2), (1, 3, 64, 64, 3), minval=-1, maxval=1)
  per_frame = model.embedder.embed_frames(f, f)
  np.testing.assert_allclose(np.asarray(model.embedder(f, f)), np.asarray(per_frame.mean(1)),
                             rtol=1e-5, atol=1e-5)


def test_bad_model_config_names_the_field():
  cfg = config_lib.apply_overrides(config_lib.load_config("demo_64"), ["model.embed_dim=64"])
  with pytest.raises(ValueError, match="model.embed_dim"):
    TalkingHeadModel(cfg.model, 2, rngs=nnx.Rngs(0))
