"""Ablation: the feed-forward (FF) model: no embedding-match loss, so W is not tied to E (paper §3.2, 'FF').

Applies to any config named after the colon (default `ablation_64`):
  fewshot-jax train --config ablations/ff.py:paper_256 --workdir ...
"""

from __future__ import annotations

import ml_collections

from fewshot_jax import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.load_config(arg or "ablation_64")
  c.train.variant = "ff"
  return c
