"""A meta-learning step and a fine-tuning step with the paper's content loss: VGG19 and VGGFace
from real .pth files (random weights) through `convert_checkpoint`, under a config that refuses
pixel L1 (loss.allow_pixel_fallback=False)."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
import torch

from conftest import random_videos, tiny_config
from fewshot_jax import config_checks
from fewshot_jax.content import build_content_loss
from fewshot_jax.data import episodes
from fewshot_jax.inference import finetune as inf
from fewshot_jax.models import perceptual
from fewshot_jax.train import state as st
from fewshot_jax.train import step as step_lib
from test_perceptual import _torch_model

NUM_VIDEOS = 4


@pytest.fixture(scope="module")
def perceptual_cfg(tmp_path_factory):
  d = tmp_path_factory.mktemp("vgg")
  paths = {}
  for kind in ("vgg19", "vggface"):
    torch.save(_torch_model(kind).state_dict(), d / f"{kind}.pth")
    paths[kind] = d / f"{kind}.safetensors"
    # The paper configs' VGG19 sees Caffe's inputs (loss.vgg19_preprocess='caffe').
    perceptual.convert_checkpoint("vgg19_caffe" if kind == "vgg19" else kind,
                                  str(d / f"{kind}.pth"), str(paths[kind]))
  cfg = tiny_config("loss.allow_pixel_fallback=False", f"loss.vgg19_path={paths['vgg19']}",
                    f"loss.vggface_path={paths['vggface']}")
  config_checks.validate(cfg)
  return cfg


def test_train_and_finetune_steps_with_perceptual_nets(perceptual_cfg):
  cfg = perceptual_cfg
  content = build_content_loss(cfg.loss)
  assert "pixel" not in content.description and "vgg" in content.description.lower()
  graphdef, _ = st.abstract_model(cfg, NUM_VIDEOS)
  state = jax.jit(functools.partial(st.init_train_state, cfg, NUM_VIDEOS))(jax.random.PRNGKey(0))
  frames, points = random_videos(NUM_VIDEOS, 8, cfg.model.image_size)
  batch = next(iter(episodes.episode_dataset(
      episodes.EpisodeSource.from_arrays(frames, points), cfg)))
  step = jax.jit(step_lib.make_train_step(graphdef, cfg, content))
  g_before = jax.device_get(state.vars.g)
  state, metrics = step(state, batch, content.params)
  metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
  assert all(np.isfinite(v) for v in metrics.values()), metrics
  assert metrics["g/content"] > 0
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                       g_before, jax.device_get(state.vars.g))
  assert max(jax.tree.leaves(moved)) > 0  # the perceptual gradient reached G

  v = state.vars
  e = inf.embed(graphdef, v, cfg.model, frames[:1, :2], points[:1, :2])[0]
  fs = inf.init_finetune(cfg, v, e, inf.feed_forward_psi(graphdef, v, e))
  ft_step = jax.jit(inf.make_finetune_step(graphdef, cfg, content))
  fs, ft_metrics = ft_step(fs, v, frames[0, :2], points[0, :2], content.params)
  ft_metrics = {k: float(x) for k, x in jax.device_get(ft_metrics).items()}
  assert all(np.isfinite(x) for x in ft_metrics.values()) and ft_metrics["ft/content"] > 0
  # The content loss is the perceptual one, not pixel L1 of the same images.
  pixel = build_content_loss(tiny_config().loss)
  fake = np.zeros((1, 32, 32, 3), np.float32)
  real = np.full((1, 32, 32, 3), 0.5, np.float32)
  assert float(content.fn(content.params, fake, real)) != pytest.approx(
      float(pixel.fn(pixel.params, fake, real)))
