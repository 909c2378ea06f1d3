"""The meta-learning step: one trace, row-sparse table updates, FF vs FT, and learning."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import random_videos, tiny_config
from fewshot_jax.content import build_content_loss
from fewshot_jax.data import episodes
from fewshot_jax.train import sharding as sh
from fewshot_jax.train import state as st
from fewshot_jax.train import step as step_lib

NUM_VIDEOS = 12


def _setup(cfg):
  graphdef, _ = st.abstract_model(cfg, NUM_VIDEOS)
  init = functools.partial(st.init_train_state, cfg, NUM_VIDEOS)
  mesh = sh.make_mesh(cfg)
  shardings = sh.state_shardings(mesh, jax.eval_shape(init, jax.random.PRNGKey(0)))
  state = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(0))
  content = build_content_loss(cfg.loss)
  traces = []

  def counted(state, batch, params):
    traces.append(1)
    return step_lib.make_train_step(graphdef, cfg, content)(state, batch, params)

  step = jax.jit(counted, donate_argnums=0)
  frames, points = random_videos(NUM_VIDEOS, 8, cfg.model.image_size)
  batches = iter(episodes.episode_dataset(episodes.EpisodeSource.from_arrays(frames, points), cfg))
  return state, step, content, batches, traces


@pytest.fixture(scope="module")
def ft_setup():
  return _setup(tiny_config())


def test_traces_once_and_only_batch_rows_of_w_change(ft_setup):
  state, step, content, batches, traces = ft_setup
  state = jax.tree.map(np.array, jax.device_get(state))  # host copy; the step donates its input
  for i in range(3):
    batch = next(batches)
    before = jax.device_get(state)
    state, metrics = step(state, batch, content.params)
    after = jax.device_get(state)
    rows = np.zeros(NUM_VIDEOS, bool)
    rows[batch["video_index"]] = True
    w0 = before.vars.w["discriminator"]["W"]
    w1 = after.vars.w["discriminator"]["W"]
    np.testing.assert_array_equal(w1[~rows], w0[~rows])  # bit-identical
    assert (np.abs(w1[rows] - w0[rows]).max(axis=1) > 0).all()
    np.testing.assert_array_equal(after.opt_w.mu[~rows], before.opt_w.mu[~rows])
    assert int(after.step) == i + 1
    assert all(np.isfinite(float(v)) for v in jax.device_get(metrics).values())
    state = after
  assert len(traces) == 1, f"the step was traced {len(traces)} times"


def test_ff_variant_has_no_embedding_match():
  """With the adversarial terms off, only the embedding match could carry W into E and G."""
  cfg = tiny_config("train.variant=ff", "loss.adv_weight=0.0", "loss.fm_weight=0.0")
  state, step, content, batches, _ = _setup(cfg)
  batch = next(batches)
  host = jax.device_get(state)
  table = host.vars.w["discriminator"]["W"]
  shifted = host.replace(vars=host.vars.replace(w={"discriminator": {"W": table + 1.0}}))
  a, ma = step(jax.tree.map(np.array, host), batch, content.params)
  b, _ = step(shifted, batch, content.params)
  for x, y in zip(jax.tree.leaves(jax.device_get(a.vars.g)), jax.tree.leaves(jax.device_get(b.vars.g))):
    np.testing.assert_array_equal(x, y)
  assert float(ma["g/match"]) > 0  # the term is measured, just not trained on
  with pytest.raises(ValueError, match="train.variant"):
    step_lib.make_train_step(None, tiny_config("train.variant=xx"), content)


def test_content_loss_falls_on_a_repeated_batch(ft_setup):
  state, step, content, batches, _ = ft_setup
  state = jax.tree.map(np.array, jax.device_get(state))
  batch = next(batches)
  losses = []
  for _ in range(25):
    state, m = step(state, batch, content.params)
    losses.append(float(m["g/content"]))
  assert losses[-1] < 0.8 * losses[0], losses


def test_flip_augmentation_mirrors_frames_and_landmarks_together():
  frames, points = random_videos(2, 3, 16)
  batch = {"frames": frames[:, :2], "landmarks": points[:, :2], "target": frames[:, 2],
           "target_landmarks": points[:, 2], "video_index": np.arange(2, dtype=np.int32)}
  out = jax.device_get(step_lib.flip_episodes(batch, jax.random.PRNGKey(0), 1.0, 16))
  np.testing.assert_array_equal(out["frames"], frames[:, :2, :, ::-1])
  np.testing.assert_allclose(out["landmarks"][..., 36, 0], 16 - points[:, :2, 45, 0], atol=1e-5)
  same = jax.device_get(step_lib.flip_episodes(batch, jax.random.PRNGKey(0), 0.0, 16))
  np.testing.assert_array_equal(same["target"], frames[:, 2])


def test_episode_targets_are_never_among_the_sources():
  frames = np.arange(6 * 10, dtype=np.uint8).reshape(6, 10, 1, 1, 1).repeat(3, -1)
  frames = np.broadcast_to(frames, (6, 10, 16, 16, 3)).copy()
  points = np.zeros((6, 10, 68, 2), np.float32)
  cfg = tiny_config("train.batch_size=4", "train.k_shots=9", "model.image_size=16")
  source = episodes.EpisodeSource.from_arrays(frames, points)
  ds = episodes.episode_dataset(source, cfg)
  it = iter(ds)
  seen = []
  for _ in range(20):
    b = next(it)
    src = b["frames"][..., 0, 0, 0]
    tgt = b["target"][..., 0, 0, 0]
    assert not (src == tgt[:, None]).any()
    assert (src // 10 == b["video_index"][:, None]).all()  # every frame from the episode's video
    seen.append(b["frames"])
  again = iter(episodes.episode_dataset(source, cfg))  # a pure function of the seed
  for frames_seen in seen:
    np.testing.assert_array_equal(next(again)["frames"], frames_seen)
  cfg.train.k_shots = 10
  with pytest.raises(ValueError, match="needs 11 frames per video"):
    episodes.episode_dataset(source, cfg)


def _step_jaxpr(*overrides: str) -> str:
  """The step's program (traced, not compiled) under a tiny config with ``overrides``."""
  cfg = tiny_config(*overrides)
  state, _, content, batches, _ = _setup(cfg)
  graphdef = st.abstract_model(cfg, NUM_VIDEOS)[0]
  return str(jax.make_jaxpr(step_lib.make_train_step(graphdef, cfg, content))(
      state, next(batches), content.params))


def _one_step(*overrides: str):
  state, step, content, batches, _ = _setup(tiny_config(*overrides))
  state, metrics = step(state, next(batches), content.params)
  return jax.device_get(state), jax.device_get(metrics)


def test_remat_recomputes_the_same_step():
  """train.remat puts the residual blocks under jax.checkpoint: memory and FLOPs change, the
  losses and the gradients do not."""
  plain_jaxpr, remat_jaxpr = _step_jaxpr(), _step_jaxpr("train.remat=True")
  # The blocks' forwards run again in the backward pass: their ReLUs (custom_jvp calls) and
  # matmuls appear twice in the step's program.
  for op in ("custom_jvp_call[", "dot_general["):
    assert remat_jaxpr.count(op) > 1.3 * plain_jaxpr.count(op), op
  # Gradients of E and G (through D) with and without remat.
  from fewshot_jax.models import execution  # pylint: disable=g-import-not-at-top
  cfg = tiny_config()
  graphdef, v = st.split_model(st.TalkingHeadModel(cfg.model, NUM_VIDEOS, rngs=nnx.Rngs(0)))
  frames, points = random_videos(2, 3, cfg.model.image_size)
  images = (frames.astype(np.float32) / 127.5 - 1.0)
  landmarks = step_lib.landmark_images(points, cfg.model)

  def loss(g, remat):
    with execution.options(remat=remat):
      model = st.merge_model(graphdef, v.replace(g=g))
      e = model.embedder(images[:, :2], landmarks[:, :2])
      fake = model.generator(landmarks[:, 2], model.generator.psi_from_embedding(e))
      scores, acts = model.discriminator(fake, landmarks[:, 2], np.arange(2))
      return jnp.sum(scores) + sum(jnp.mean(a**2) for a in acts) + jnp.mean(fake**2)

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  want, got = grad(v.g, False), grad(v.g, True)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()) + 1e-9)


def test_bf16_compute_keeps_f32_parameters_and_close_losses():
  _, f32 = _one_step()
  bf16_state, bf16 = _one_step("train.compute_dtype=bfloat16")
  assert bf16["g/content"] != f32["g/content"]  # the option took effect
  for leaf in jax.tree.leaves((bf16_state.vars, bf16_state.opt_g, bf16_state.ema_g)):
    if np.issubdtype(leaf.dtype, np.floating):
      assert leaf.dtype == np.float32
  for key in ("g/content", "g/fm", "g/match", "d/hinge"):
    assert np.isfinite(bf16[key])
    assert abs(bf16[key] - f32[key]) <= 0.05 * abs(f32[key]) + 1e-3, (key, bf16[key], f32[key])
  with pytest.raises(ValueError, match="compute dtype 'float16'"):
    _one_step("train.compute_dtype=float16")
