"""Evaluation: image metrics and the self-reenactment protocol."""

from fewshot_jax.evaluation.metrics import psnr, ssim

__all__ = ["psnr", "ssim"]
