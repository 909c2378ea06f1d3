"""A few of the paper's ablations at CPU scale, the sweep the README reports.

  fewshot-jax sweep cpu_ablations --workdir runs/cpu_ablations --runner local

Four runs of ``ablation_64`` (synthetic talking heads, 64 px): the baseline, no feature matching,
no self-attention, and the feed-forward model. ``arg`` overrides the step count (default 400).
"""

from __future__ import annotations


def get_sweep(arg: str | None = None) -> list[dict]:
  steps = [f"train.steps={int(arg or 400)}"]
  return [
      {"name": "baseline", "config": "ablation_64", "overrides": steps},
      {"name": "no_fm", "config": "ablations/no_fm.py:ablation_64", "overrides": steps},
      {"name": "no_attention", "config": "ablations/no_attention.py:ablation_64",
       "overrides": steps},
      {"name": "ff", "config": "ablations/ff.py:ablation_64", "overrides": steps},
  ]
