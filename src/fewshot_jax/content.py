"""The content loss as configured: VGG19 + VGGFace (+ VGG16) perceptual L1, or pixel L1 when none.

``loss.pixel_with_perceptual`` adds the pixel L1 beside the perceptual terms (the demo's small
nets learn colour faster with it); VGG19's input preprocessing is ``loss.vgg19_preprocess``.

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
      ("vgg16", loss_cfg.get("vgg16_path", ""), loss_cfg.get("vgg16_weight", 0.0)),
  ]
  specs = [(kind, path, weight) for kind, path, weight in specs if path]
  # Run configs saved before the field existed trained with torchvision's normalisation.
  preprocess = {"vgg19": loss_cfg.get("vgg19_preprocess", "torchvision")}
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
    net = perceptual.load_features(kind, path, preprocess=preprocess.get(kind))
    graphdef, state = nnx.split(net)
    graphdefs.append(graphdef)
    params.append(state.to_pure_dict())
    weights.append(weight)

  pixel = loss_cfg.pixel_weight if loss_cfg.get("pixel_with_perceptual", False) else 0.0

  def fn(p: PyTree, fake: jax.Array, real: jax.Array) -> jax.Array:
    nets = [
        (w, nnx.merge(g, nnx.State(jax.lax.stop_gradient(s))))
        for w, g, s in zip(weights, graphdefs, p)
    ]
    loss = losses.content_loss(fake, real, nets, 0.0)
    return loss + pixel * losses.l1(fake, real) if pixel else loss

  desc = " + ".join(
      f"{kind}{'/' + preprocess[kind] if kind in preprocess else ''} x {weight} ({path})"
      for kind, path, weight in specs)
  if pixel:
    desc += f" + pixel L1 x {pixel}"
  return ContentLoss(fn=fn, params=tuple(params), description=f"perceptual L1: {desc}")
