"""The paper's ablations side by side: each run is one file of ``experiments/ablations/``.

  fewshot-jax sweep paper_ablations --workdir runs/ablations --runner local
  fewshot-jax sweep paper_ablations:paper_256 --workdir gs://BUCKET/ablations --runner tpu ...

``get_sweep(arg)`` returns the runs: a name (its folder under the sweep's workdir), a config, and
config overrides. ``arg`` is the base config every ablation is applied to (default ``ablation_64``).
"""

from __future__ import annotations

ABLATIONS = ("ff", "match_x8", "no_match", "no_fm", "no_attention", "d_steps_1", "d_steps_2",
             "k_train_1", "k_train_8")


def get_sweep(arg: str | None = None) -> list[dict]:
  base = arg or "ablation_64"
  runs = [{"name": "baseline", "config": base, "overrides": []}]
  runs += [{"name": a, "config": f"ablations/{a}.py:{base}", "overrides": []} for a in ABLATIONS]
  return runs
