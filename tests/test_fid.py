"""FID: the Fréchet distance against closed forms and scipy, and the Inception graph against
Keras's InceptionV3 (random weights, the same tensors in both), through the `.pth` conversion."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from fewshot_jax.evaluation import fid


def test_frechet_distance_matches_closed_forms_and_scipy():
  rng = np.random.default_rng(0)
  # Diagonal covariances: Σ (μ1-μ2)² + Σ (σ1-σ2)², σ the standard deviations.
  mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
  s1, s2 = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
  want = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
  assert fid.frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(want)
  # Identical distributions are 0 apart.
  a = rng.normal(size=(6, 6))
  cov = a @ a.T
  assert abs(fid.frechet_distance(mu1, cov, mu1, cov)) < 1e-8
  # Covariances that do not commute: against scipy's matrix square root.
  from scipy import linalg  # pylint: disable=g-import-not-at-top
  b = rng.normal(size=(6, 6))
  cov2 = b @ b.T
  ref = np.trace(cov) + np.trace(cov2) - 2 * np.trace(linalg.sqrtm(cov @ cov2).real)
  assert fid.frechet_distance(np.zeros(6), cov, np.zeros(6), cov2) == pytest.approx(ref, rel=1e-6)
  # Fewer samples than dimensions (a singular covariance) still gives a finite, non-negative value.
  feats = rng.normal(size=(10, 64))
  assert 0 <= fid.fid(feats, feats + 0.1) < 1.0
  with pytest.raises(ValueError, match="at least 2 frames"):
    fid.statistics(feats[:1])


# Builds Keras's InceptionV3 with random weights (batch-norm statistics too), writes its tensors as
# a PyTorch state dict in pytorch-fid's naming, and its pool features for two images.
_KERAS_REFERENCE = r"""
import re, sys
import numpy as np, keras, torch
out = sys.argv[1]
rng = np.random.default_rng(0)
keras.utils.set_random_seed(0)
model = keras.applications.InceptionV3(weights=None, include_top=False, pooling="avg",
                                       input_shape=(299, 299, 3))
def by_creation(cls):  # Keras numbers auto-named layers as it creates them: conv2d, conv2d_1, ...
  layers = [l for l in model.layers if isinstance(l, cls)]
  return sorted(layers, key=lambda l: int(m.group(1)) if (m := re.search(r"_(\d+)$", l.name)) else 0)
convs, bns = by_creation(keras.layers.Conv2D), by_creation(keras.layers.BatchNormalization)
names = sys.argv[2].split(",")
assert len(convs) == len(bns) == len(names), (len(convs), len(names))
state = {}
for name, conv, bn in zip(names, convs, bns):
  (kernel,) = conv.get_weights()
  cout = kernel.shape[-1]
  beta = rng.normal(0, 0.1, cout).astype("float32")
  mean = rng.normal(0, 0.1, cout).astype("float32")
  var = rng.uniform(0.5, 2.0, cout).astype("float32")
  bn.set_weights([beta, mean, var])
  state[f"{name}.conv.weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
  state[f"{name}.bn.weight"] = torch.ones(cout)  # Keras's InceptionV3 has no BN scale
  state[f"{name}.bn.bias"] = torch.from_numpy(beta)
  state[f"{name}.bn.running_mean"] = torch.from_numpy(mean)
  state[f"{name}.bn.running_var"] = torch.from_numpy(var)
  state[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
state["fc.weight"] = torch.zeros(1008, 2048)  # pytorch-fid's file carries the classifier
torch.save(state, f"{out}/inception.pth")
images = rng.integers(0, 256, (2, 299, 299, 3)).astype("uint8")
x = images.astype("float32") / 127.5 - 1.0
np.save(f"{out}/images.npy", images)
np.save(f"{out}/features.npy", np.asarray(model.predict(x, verbose=0)))
"""


def test_inception_graph_matches_keras_through_the_pth_conversion(tmp_path):
  env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
  subprocess.run([sys.executable, "-c", _KERAS_REFERENCE, str(tmp_path),
                  ",".join(fid.conv_names())], check=True, env=env, capture_output=True)
  from fewshot_jax import cli  # pylint: disable=g-import-not-at-top
  assert cli.main(["convert-weights", "--kind", "inception", "--src", str(tmp_path / "inception.pth"),
                   "--dst", str(tmp_path / "inception.safetensors")]) == 0
  params = fid.load_weights(tmp_path / "inception.safetensors")
  images = np.load(tmp_path / "images.npy")
  want = np.load(tmp_path / "features.npy")
  got = np.asarray(fid.features(params, images, last_pool="avg"))
  assert got.shape == want.shape == (2, fid.FEATURES)
  assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max() + 1e-6, np.abs(got - want).max()
  # The 2015 graph's last block max-pools: a different network, and a visibly different output.
  other = np.asarray(fid.features(params, images, last_pool="max"))
  assert np.abs(other - want).max() > 1e-3 * np.abs(want).max()


def test_wrong_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="convert-weights --kind inception"):
    fid.load_weights(tmp_path / "missing.safetensors")
  import torch  # pylint: disable=g-import-not-at-top
  torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "vgg.pth")
  with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'vgg.pth'}: not the FID Inception")):
    fid.convert_checkpoint(tmp_path / "vgg.pth", tmp_path / "out.safetensors")
  assert not (tmp_path / "out.safetensors").exists()
  from fewshot_jax.models import perceptual  # pylint: disable=g-import-not-at-top
  perceptual.save_weights(tmp_path / "vgg.safetensors", {"x": np.zeros(3, np.float32)}, "vgg19")
  with pytest.raises(ValueError, match="holds vgg19 weights, not inception"):
    fid.load_weights(tmp_path / "vgg.safetensors")
