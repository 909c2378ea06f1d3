"""The demo: the paper's family at 64x64 and small widths, sized for minutes on a 2-core CPU.

Run: fewshot-jax demo --workdir runs/demo   (or: make demo)
"""

from __future__ import annotations

import ml_collections

from experiments import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base.get_config(arg)
  m = c.model
  m.image_size = 64
  m.embed_dim = 128
  m.e_channels = (16, 32, 64, 128)  # 64 -> 4x4
  m.e_attn_res = (8,)
  m.d_channels = (16, 32, 64, 128)
  m.d_attn_res = (8,)
  m.g_down_channels = (16, 32, 64)  # 64 -> 8x8
  m.g_res_blocks = 2
  m.g_up_channels = (32, 16, 16)
  m.g_attn_down_res = ()
  m.g_attn_up_res = (16,)
  m.landmark_thickness = 2.0

  c.data.num_train_videos = 600
  c.data.num_eval_videos = 8
  c.data.frames_per_video = 32

  c.loss.pixel_weight = 10.0

  c.train.steps = 500
  c.train.batch_size = 8
  c.train.k_shots = 4
  c.train.lr_g = 4e-4
  c.train.lr_d = 4e-4
  c.train.b1 = 0.5
  c.train.d_steps = 1
  c.train.ema_decay = 0.99
  c.train.log_every = 25
  c.train.checkpoint_every = 500
  c.train.sample_every = 500

  c.finetune.steps = 30
  c.finetune.lr_g = 2e-4
  c.finetune.lr_d = 2e-4
  return c
