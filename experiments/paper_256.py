"""The paper's architecture and optimisation at 256x256, K = 8, N = 512, v2 loss weights.

Run: fewshot-jax train --config experiments/paper_256.py --workdir /gcs/BUCKET/runs/paper_256
  --config.loss.vgg19_path=... --config.loss.vggface_path=...  (`fewshot-jax convert-weights`)
(a folder every host sees: ``launch_tpu.sh setup --bucket BUCKET`` mounts the bucket there)
"""

from __future__ import annotations

import ml_collections

from experiments import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base.get_config(arg)
  # The paper's content loss is VGG19 + VGGFace: without both weight files this config refuses to
  # start (config_checks) rather than train pixel L1 under the paper's name.
  c.loss.allow_pixel_fallback = False
  return c
