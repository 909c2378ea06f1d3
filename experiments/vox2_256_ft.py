"""The paper's fine-tuned model ("Ours-FT") on VoxCeleb2: 75 epochs with the embedding-match loss.

Run: fewshot-jax train --config vox2_256_ft --workdir /gcs/BUCKET/runs/vox2_ft \
       --config.data.data_dir=/gcs/BUCKET/data --config.loss.vgg19_path=... \
       --config.loss.vggface_path=... --multihost

The paper trains its two models differently (§4): the FT model for 75 epochs with the match loss,
which ties W to E so that fine-tuning starts from ψ = P·ê; the FF model (``vox2_256_ff``) for 150
epochs without it. ``train.steps`` is derived from the training set's size and the batch at
start-up (``train.epochs``) and recorded in the run's config.json (``runtime.steps_from_epochs``).
"""

from __future__ import annotations

import ml_collections

from experiments import vox2_256

EPOCHS = 75


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = vox2_256.get_config(arg)
  c.train.variant = "ft"
  c.loss.match_weight = 10.0
  c.train.epochs = float(EPOCHS)
  return c
