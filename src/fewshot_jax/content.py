"""The content loss as configured: VGG19 + VGGFace perceptual L1, or pixel L1 when no weights.

The perceptual nets' weights are passed to the jitted steps as an argument (not closed over), so
they are not baked into the compiled program as constants and can be sharded like any other input.
With no weights configured the loss is pixel L1; ``describe`` says so, and the loop writes that into
the log and the saved config, so a run never silently trains with a substitute.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from flax import nnx

from fewshot_jax import losses

PyTree = Any


@dataclasses.dataclass(frozen=True)
class ContentLoss:
  """A content loss: ``fn(params, fake, real) -> scalar`` plus the weights it needs."""

  fn: Callable[[PyTree, jax.Array, jax.Array], jax.Array]
  params: PyTree
  description: str


def build_content_loss(loss_cfg: ml_collections.ConfigDict) -> ContentLoss:
  """Builds the content loss from the config's ``loss`` section."""
  specs = [
      ("vgg19", loss_cfg.vgg19_path, loss_cfg.vgg19_weight),
      ("vggface", loss_cfg.vggface_path, loss_cfg.vggface_weight),
  ]
  specs = [(kind, path, weight) for kind, path, weight in specs if path]
  if not specs:
    weight = loss_cfg.pixel_weight
    return ContentLoss(
        fn=lambda params, fake, real: losses.content_loss(fake, real, (), weight),
        params=(),
        description=(
            f"pixel L1 x {weight} (no VGG19/VGGFace weights configured: set loss.vgg19_path and "
            "loss.vggface_path to files from `fewshot-jax convert-weights`)"
        ),
    )
  from fewshot_jax.models import perceptual  # pylint: disable=g-import-not-at-top

  graphdefs, params, weights = [], [], []
  for kind, path, weight in specs:
    graphdef, state = nnx.split(perceptual.load_features(kind, path))
    graphdefs.append(graphdef)
    params.append(state.to_pure_dict())
    weights.append(weight)

  def fn(p: PyTree, fake: jax.Array, real: jax.Array) -> jax.Array:
    nets = [
        (w, nnx.merge(g, nnx.State(jax.lax.stop_gradient(s))))
        for w, g, s in zip(weights, graphdefs, p)
    ]
    return losses.content_loss(fake, real, nets, 0.0)

  desc = " + ".join(f"{kind} x {weight} ({path})" for kind, path, weight in specs)
  return ContentLoss(fn=fn, params=tuple(params), description=f"perceptual L1: {desc}")
