"""Ablation: an embedding-match weight 8 times the base's (the paper's 10 -> 80).

Applies to any config named after the colon (default `ablation_64`):
  fewshot-jax train --config ablations/match_x8.py:paper_256 --workdir ...
"""

from __future__ import annotations

import ml_collections

from fewshot_jax import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.load_config(arg or "ablation_64")
  c.loss.match_weight = 8.0 * c.loss.match_weight
  return c
