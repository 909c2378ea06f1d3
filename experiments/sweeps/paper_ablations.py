"""The paper's ablations side by side: each run is one file of ``experiments/ablations/``.

  fewshot-jax sweep paper_ablations --workdir runs/ablations --runner local
  fewshot-jax sweep paper_ablations:paper_256 --workdir /gcs/BUCKET/ablations --runner tpu ...

``get_sweep(arg)`` returns the runs: a name (its folder under the sweep's workdir), a config, and
config overrides. ``arg`` is the base config every ablation is applied to (default ``ablation_64``).
Runs that would equal the base are left out: the FF model is the embedding-match weight 0 (it is
trained without the match loss), and of "one vs two D steps" and "K = 1 vs 8 during training" only
the settings the base does not already use are run.
"""

from __future__ import annotations

from fewshot_jax import config as config_lib


def get_sweep(arg: str | None = None) -> list[dict]:
  base = arg or "ablation_64"
  cfg = config_lib.load_config(base)
  ablations = ["ff", "match_x8", "no_fm", "no_attention"]
  ablations.append("d_steps_2" if cfg.train.d_steps == 1 else "d_steps_1")
  ablations += [name for name, k in (("k_train_1", 1), ("k_train_8", 8)) if cfg.train.k_shots != k]
  runs = [{"name": "baseline", "config": base, "overrides": []}]
  runs += [{"name": a, "config": f"ablations/{a}.py:{base}", "overrides": []} for a in ablations]
  return runs
