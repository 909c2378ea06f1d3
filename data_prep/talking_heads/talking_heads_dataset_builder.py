"""Entry point for ``tfds build data_prep/talking_heads --config voxceleb2 --manual_dir CACHE``.

The builder lives in ``fewshot_jax.prep.tfds_builder``; this subclass only gives it the TFDS
dataset name ``talking_heads`` (from this folder's name).
"""

from fewshot_jax.prep.tfds_builder import TalkingHeads


class Builder(TalkingHeads):
  """Talking-head videos as crops + 68 landmarks, one example per video."""
