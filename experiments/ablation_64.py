"""A CPU-sized base for the paper's ablations: demo_64's model and data, a shorter schedule.

Each ablation in ``experiments/ablations/`` changes one thing on top of this (or of any config
named after the colon: ``ablations/no_fm.py:paper_256``), and ``experiments/sweeps/paper_ablations.py``
runs them side by side. At this size a run is minutes on a 2-core CPU: enough to see a change of
direction, not the paper's numbers (see the README's caveats).
"""

from __future__ import annotations

import ml_collections

from experiments import demo_64


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = demo_64.get_config(arg)
  c.data.num_train_videos = 200
  c.data.num_eval_videos = 8
  c.train.steps = 400
  c.train.checkpoint_every = 200
  c.train.sample_every = 200
  c.train.log_every = 50
  c.finetune.steps = 40
  c.eval.shots = (1, 8)
  return c
