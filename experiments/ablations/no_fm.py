"""Ablation: no feature-matching loss (the paper's 'no FM': L_FM weight 10 -> 0).

Applies to any config named after the colon (default `ablation_64`):
  fewshot-jax train --config ablations/no_fm.py:paper_256 --workdir ...
"""

from __future__ import annotations

import ml_collections

from fewshot_jax import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.load_config(arg or "ablation_64")
  c.loss.fm_weight = 0.0
  return c
