"""Inference: embed K shots, fine-tune an identity, generate frames. Imports no training loop."""

from fewshot_jax.inference.finetune import (
    FinetuneState,
    embed,
    feed_forward_psi,
    generate,
    init_finetune,
    make_finetune_step,
)

__all__ = [
    "FinetuneState",
    "embed",
    "feed_forward_psi",
    "generate",
    "init_finetune",
    "make_finetune_step",
]
