"""How long a run trains: ``train.steps``, or epochs of the training set (the paper's unit).

The paper gives its schedules in epochs (75 for the FT model, 150 for FF), which only become a
step count once the training set's size is known, so this happens at start-up, before anything is
built, and what was decided is recorded in the run's ``config.json`` (``runtime.steps_from_epochs``)
so that a reader of the run sees the epochs, the videos and the batch behind ``train.steps``.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections


def steps_for_epochs(epochs: float, num_videos: int, batch_size: int) -> int:
  """Optimiser steps in ``epochs`` passes over ``num_videos`` videos, one episode per video each."""
  if num_videos < 1:
    raise ValueError(f"train.epochs={epochs}: the training set holds no videos to count epochs of")
  return max(1, math.ceil(epochs * num_videos / batch_size))


def resolve_steps(
    cfg: ml_collections.ConfigDict, num_videos: int
) -> tuple[ml_collections.ConfigDict, dict[str, Any] | None]:
  """``cfg`` with ``train.steps`` derived from ``train.epochs`` when that is set, and the record.

  Returns:
    The config to train with (a copy when steps were derived) and ``runtime.steps_from_epochs``
    (None when ``train.epochs`` is 0 or absent: ``train.steps`` is used as given).
  """
  epochs = float(cfg.train.get("epochs", 0.0))
  if epochs <= 0:
    return cfg, None
  steps = steps_for_epochs(epochs, num_videos, int(cfg.train.batch_size))
  out = ml_collections.ConfigDict(cfg.to_dict())
  out.train.steps = steps
  record = {"epochs": epochs, "num_videos": int(num_videos),
            "batch_size": int(cfg.train.batch_size), "steps": steps,
            "configured_steps": int(cfg.train.steps)}
  return out, record
