"""Ablation: no self-attention blocks in E, G or D.

Applies to any config named after the colon (default `ablation_64`):
  fewshot-jax train --config ablations/no_attention.py:paper_256 --workdir ...
"""

from __future__ import annotations

import ml_collections

from fewshot_jax import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.load_config(arg or "ablation_64")
  c.model.e_attn_res = ()
  c.model.d_attn_res = ()
  c.model.g_attn_down_res = ()
  c.model.g_attn_up_res = ()
  return c
