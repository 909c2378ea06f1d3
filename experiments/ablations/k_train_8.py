"""Ablation: eight shots per episode during meta-learning (the paper's K = 8).

Applies to any config named after the colon (default `ablation_64`):
  fewshot-jax train --config ablations/k_train_8.py:paper_256 --workdir ...
"""

from __future__ import annotations

import ml_collections

from fewshot_jax import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.load_config(arg or "ablation_64")
  c.train.k_shots = 8
  return c
