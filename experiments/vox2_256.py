"""The paper's setup on VoxCeleb2 shards from data prep (``fewshot-jax prepare``), at 256x256.

Run: fewshot-jax train --config vox2_256 --workdir /gcs/BUCKET/runs/vox2 \
       --config.data.data_dir=/gcs/BUCKET/data --multihost
(/gcs/BUCKET: the bucket mounted on every host, e.g. by ``launch_tpu.sh setup --bucket BUCKET``.)
"""

from __future__ import annotations

import ml_collections

from experiments import paper_256


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = paper_256.get_config(arg)
  c.data.source = "shards"
  c.data.dataset = "talking_heads/voxceleb2"
  c.data.train_split = "train"
  c.data.eval_split = "test"
  # A TPU host has the cores for it: decoding 8 x 256 px JPEGs per episode off the trainer.
  c.data.workers = 8
  c.train.eval_every = 10_000
  c.data.expected_detector = "fan"  # the paper's landmarks (prepare landmarks --backend fan)
  return c
