"""Ablation: no embedding-match loss (the paper's weight 10 -> 0), keeping the FT training otherwise.

Applies to any config named after the colon (default `ablation_64`):
  fewshot-jax train --config ablations/no_match.py:paper_256 --workdir ...
"""

from __future__ import annotations

import ml_collections

from fewshot_jax import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.load_config(arg or "ablation_64")
  c.loss.match_weight = 0.0
  return c
