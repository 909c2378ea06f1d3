"""The paper's feed-forward model ("Ours-FF") on VoxCeleb2: 150 epochs without the match loss.

Run: fewshot-jax train --config vox2_256_ff --workdir /gcs/BUCKET/runs/vox2_ff \
       --config.data.data_dir=/gcs/BUCKET/data --config.loss.vgg19_path=... \
       --config.loss.vggface_path=... --multihost

The FF rows of Table 1 come from this model, not from the FT model's ψ = P·ê (``vox2_256_ft``);
``evaluate`` labels each row with the model's variant and warns when they are mixed up.
"""

from __future__ import annotations

import ml_collections

from experiments import vox2_256

EPOCHS = 150


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = vox2_256.get_config(arg)
  c.train.variant = "ff"
  c.loss.match_weight = 0.0
  c.train.epochs = float(EPOCHS)
  return c
