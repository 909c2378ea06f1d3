"""Perceptual nets vs hand-built PyTorch references, through the real .pth -> safetensors path.

The torch architectures are written here from the published layouts (torchvision's ``vgg19``
``features`` indices, the VGG-Face dag port's ``convX_Y`` names), not imported, so a wrong index
map, transpose or preprocessing constant in the converter shows up as a mismatch.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

from fewshot_jax.models import perceptual

TORCHVISION_VGG19_CONVS = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
TORCHVISION_VGG19_POOLS = (4, 9, 18, 27, 36)
VGG19_TAPS = (1, 6, 11, 20, 29)  # the ReLU after conv1_1, conv2_1, ..., conv5_1
VGGFACE_STAGES = (2, 2, 3, 3, 3)
WIDTHS = (64, 128, 256, 512, 512)
SIZE = 64


def _randomize(model: nn.Module) -> nn.Module:
  """He-normal kernels and small random biases, so activations stay O(1) down to relu5_1."""
  for m in model.modules():
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
      nn.init.uniform_(m.bias, -0.1, 0.1)
  return model.eval()


class TorchVGG19(nn.Module):
  """torchvision's vgg19 layout: ``features`` is a Sequential with the library's exact indices."""

  def __init__(self):
    super().__init__()
    layers, cin = [], 3
    for i in range(37):
      if i in TORCHVISION_VGG19_POOLS:
        layers.append(nn.MaxPool2d(2, 2))
      elif i in TORCHVISION_VGG19_CONVS:
        cout = WIDTHS[sum(p < i for p in TORCHVISION_VGG19_POOLS)]
        layers.append(nn.Conv2d(cin, cout, 3, padding=1))
        cin = cout
      else:
        layers.append(nn.ReLU())
    self.features = nn.Sequential(*layers)
    # A stand-in classifier (the real one is 25088 -> 4096 ...): its keys must be ignored.
    self.classifier = nn.Sequential(nn.Linear(8, 4))

  def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
    x = ((x + 1) / 2 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    out = []
    for i, layer in enumerate(self.features):
      x = layer(x)
      if i in VGG19_TAPS:
        out.append(x)
    return out


class TorchVGGFaceDag(nn.Module):
  """The VGG-Face dag port: attributes conv1_1 ... conv5_3 and fc6-fc8 (here tiny stand-ins)."""

  def __init__(self):
    super().__init__()
    cin = 3
    for s, (n, width) in enumerate(zip(VGGFACE_STAGES, WIDTHS)):
      for i in range(n):
        setattr(self, f"conv{s + 1}_{i + 1}", nn.Conv2d(cin, width, 3, padding=1))
        cin = width
    self.fc6, self.fc7, self.fc8 = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4)

  def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
    x = (x + 1) * 127.5 - torch.tensor([129.186, 104.762, 93.594]).view(1, 3, 1, 1)
    out = []
    for s, n in enumerate(VGGFACE_STAGES):
      if s:
        x = torch.max_pool2d(x, 2, 2)
      for i in range(n):
        x = torch.relu(getattr(self, f"conv{s + 1}_{i + 1}")(x))
        if i == 0:
          out.append(x)
    return out


def _torch_model(kind: str) -> nn.Module:
  torch.manual_seed({"vgg19": 0, "vggface": 1}[kind])
  return _randomize(TorchVGG19() if kind == "vgg19" else TorchVGGFaceDag())


@pytest.fixture(scope="module", params=["vgg19", "vggface"])
def converted(request, tmp_path_factory):
  """(kind, torch model, converted safetensors path) via ``convert_checkpoint`` on a real .pth."""
  kind = request.param
  model = _torch_model(kind)
  d = tmp_path_factory.mktemp(kind)
  torch.save(model.state_dict(), d / f"{kind}.pth")
  dst = d / "out" / f"{kind}.safetensors"
  perceptual.convert_checkpoint(kind, str(d / f"{kind}.pth"), str(dst))
  return kind, model, dst


def test_torchvision_indices_match_layout():
  keys = {k for k in TorchVGG19().state_dict() if k.startswith("features.")}
  assert keys == {f"features.{i}.{p}" for i in TORCHVISION_VGG19_CONVS for p in ("weight", "bias")}


def test_activations_match_torch(converted):
  kind, model, dst = converted
  net = perceptual.load_features(kind, str(dst))
  classes = {"vgg19": perceptual.VGG19Features, "vggface": perceptual.VGGFaceFeatures}
  assert type(net) is classes[kind]
  x = np.random.default_rng(0).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
  with torch.no_grad():
    taps = model.taps(torch.from_numpy(x).permute(0, 3, 1, 2))
  ref = [t.permute(0, 2, 3, 1).numpy() for t in taps]
  got = jax.jit(lambda g, s, x: nnx.merge(g, s)(x))(*nnx.split(net), jnp.asarray(x))
  assert len(got) == len(ref) == 5
  for level, (a, r) in enumerate(zip(got, ref)):
    assert a.shape == r.shape == (2, SIZE >> level, SIZE >> level, WIDTHS[level])
    scale = np.abs(r).max()
    assert scale > 1e-3 and (r > 0).mean() > 0.05, "degenerate reference activation"
    rel = np.abs(np.asarray(a) - r).max() / scale
    print(f"{kind} relu{level + 1}_1 max|diff|/max|ref| = {rel:.2e}")
    assert rel <= 1e-4, (kind, level, rel)


def test_net_stops_at_relu5_1_and_weights_are_frozen(converted):
  kind, _, dst = converted
  net = perceptual.load_features(kind, str(dst))
  assert len(nnx.state(net, nnx.Param)) == 0
  names = set(nnx.to_pure_dict(nnx.state(net, perceptual.FrozenWeight)))
  assert "conv5_1" in names and "conv5_2" not in names
  assert set(perceptual.load_weights(str(dst))) == set(perceptual.expected_shapes(kind))
  assert not [f for f in os.listdir(dst.parent) if f.endswith(".tmp")]  # atomic save cleaned up


@pytest.mark.parametrize(
    "kind,convert,key",
    [
        ("vgg19", perceptual.convert_torchvision_vgg19, "features.10.weight"),
        ("vggface", perceptual.convert_vgg_face_dag, "conv3_2.bias"),
    ],
)
def test_missing_unexpected_and_misshaped_keys(kind, convert, key):
  sd = {k: v.numpy() for k, v in _torch_model(kind).state_dict().items()}
  assert set(convert(sd)) == set(perceptual.expected_shapes(kind))
  with pytest.raises(ValueError, match=f"missing key '{key}'.*expected shape"):
    convert({k: v for k, v in sd.items() if k != key})
  with pytest.raises(ValueError, match="unexpected key 'features.3.weight'"):
    convert({**sd, "features.3.weight": sd[key]})
  with pytest.raises(ValueError, match=f"'{key}' has shape"):
    convert({**sd, key: sd[key][..., None]})


def test_swapped_or_mismatched_file_is_rejected_naming_it(tmp_path):
  flat = perceptual.convert_vgg_face_dag(_torch_model("vggface").state_dict())
  path = tmp_path / "face.safetensors"
  perceptual.save_weights(str(path), flat, kind="vggface")
  with pytest.raises(ValueError, match=f"{path}.*vggface weights, not vgg19"):
    perceptual.load_features("vgg19", str(path))
  perceptual.save_weights(str(path), flat)  # no kind in the header: caught by the tensor check
  with pytest.raises(ValueError, match=f"{path}.*missing key 'conv3_4/kernel'"):
    perceptual.load_features("vgg19", str(path))
  path.write_bytes(b"not a safetensors file")
  with pytest.raises(ValueError, match=str(path)):
    perceptual.load_features("vggface", str(path))


def test_missing_files_are_named(tmp_path):
  missing = tmp_path / "nope.safetensors"
  with pytest.raises(FileNotFoundError, match=str(missing)):
    perceptual.load_features("vgg19", str(missing))
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope.pth")):
    perceptual.convert_checkpoint("vggface", str(tmp_path / "nope.pth"), str(missing))
  with pytest.raises(ValueError, match="unknown perceptual net kind 'vgg11'"):
    perceptual.load_features("vgg11", str(missing))


CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


class TorchCaffeVGG19(nn.Module):
  """A PyTorch port of the Caffe VGG19 with per-layer names (``conv1_1`` ... ``conv5_4``), fed as
  Caffe was: BGR, 0-255, minus the BGR ImageNet mean, no std."""

  def __init__(self):
    super().__init__()
    cin = 3
    for s, (n, width) in enumerate(zip((2, 2, 4, 4, 4), WIDTHS)):
      for i in range(n):
        setattr(self, f"conv{s + 1}_{i + 1}", nn.Conv2d(cin, width, 3, padding=1))
        cin = width

  def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
    x = caffe_input(x)
    out = []
    for s, n in enumerate((2, 2, 4, 4, 4)):
      if s:
        x = nn.functional.max_pool2d(x, 2, 2)
      for i in range(n):
        x = torch.relu(getattr(self, f"conv{s + 1}_{i + 1}")(x))
        if i == 0:
          out.append(x)
    return out


def caffe_input(x: torch.Tensor) -> torch.Tensor:
  """NCHW RGB in [-1, 1] -> Caffe's BGR 0-255 minus mean."""
  bgr = (x[:, [2, 1, 0]] + 1) * 127.5
  return bgr - torch.tensor(CAFFE_BGR_MEAN).view(1, 3, 1, 1)


def _astronaut(n: int = 2) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from skimage import data as skdata  # pylint: disable=g-import-not-at-top

  img = skdata.astronaut()
  crops = [img[:256, 96:352], img[100:356, 150:406]][:n]
  return np.stack([np.asarray(Image.fromarray(c).resize((SIZE, SIZE)), np.float32) / 127.5 - 1
                   for c in crops])


@pytest.mark.parametrize("layout", ["per_layer_names", "torchvision_keys"])
def test_caffe_vgg19_matches_torch(tmp_path, layout):
  torch.manual_seed(2)
  if layout == "per_layer_names":
    model = _randomize(TorchCaffeVGG19())
    taps = model.taps
  else:  # jcjohnson's vgg19-d01eb7cb.pth: torchvision's keys, Caffe's weights and inputs
    model = _randomize(TorchVGG19())
    taps = lambda x: [t for i, t in enumerate(_features(model, caffe_input(x))) if i in VGG19_TAPS]
  # Caffe's inputs are ~100x torchvision's: smaller kernels keep relu5_1 from overflowing scale.
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.Conv2d):
        m.weight.mul_(1.0 / 128 if m.in_channels == 3 else 1.0)
  torch.save(model.state_dict(), tmp_path / "caffe.pth")
  perceptual.convert_checkpoint("vgg19_caffe", tmp_path / "caffe.pth", tmp_path / "c.safetensors")
  net = perceptual.load_features("vgg19", tmp_path / "c.safetensors", preprocess="caffe")
  x = _astronaut()
  with torch.no_grad():
    ref = [t.permute(0, 2, 3, 1).numpy() for t in taps(torch.from_numpy(x).permute(0, 3, 1, 2))]
  got = jax.jit(lambda g, s, x: nnx.merge(g, s)(x))(*nnx.split(net), jnp.asarray(x))
  for level, (a, r) in enumerate(zip(got, ref)):
    scale = np.abs(r).max()
    assert scale > 1e-3 and (r > 0).mean() > 0.05, "degenerate reference activation"
    rel = np.abs(np.asarray(a) - r).max() / scale
    print(f"caffe {layout} relu{level + 1}_1 max|diff|/max|ref| = {rel:.2e}")
    assert rel <= 1e-4, (layout, level, rel)
  # The same weights read as torchvision's see other inputs: the preprocessing matters.
  tv = perceptual.build_features("vgg19", preprocess="torchvision")
  tv.set_weights(perceptual.load_weights(tmp_path / "c.safetensors"))
  assert np.abs(np.asarray(tv(jnp.asarray(x))[0]) - ref[0]).max() > 0.1 * np.abs(ref[0]).max()


def _features(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
  out = []
  for layer in model.features:
    x = layer(x)
    out.append(x)
  return out


def test_preprocessing_mismatch_is_refused_naming_the_file(tmp_path):
  model = _torch_model("vgg19")
  torch.save(model.state_dict(), tmp_path / "tv.pth")
  tv_file = tmp_path / "tv.safetensors"
  perceptual.convert_checkpoint("vgg19", tmp_path / "tv.pth", tv_file)
  with pytest.raises(ValueError, match=rf"{tv_file} holds vgg19 weights for 'torchvision' inputs, "
                                       r"but 'caffe' .*--kind vgg19_caffe"):
    perceptual.load_features("vgg19", tv_file, preprocess="caffe")
  # The paper configs ask for Caffe's VGG19: a torchvision file is refused before training.
  from fewshot_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from fewshot_jax.content import build_content_loss  # pylint: disable=g-import-not-at-top

  for name in ("base", "paper_256", "vox2_256"):
    assert config_lib.load_config(name).loss.vgg19_preprocess == "caffe", name
  cfg = config_lib.load_config("base")
  cfg.loss.vgg19_path = str(tv_file)
  with pytest.raises(ValueError, match=f"{tv_file} holds vgg19 weights for 'torchvision'"):
    build_content_loss(cfg.loss)
  cfg.loss.vgg19_preprocess = "torchvision"
  assert "vgg19/torchvision" in build_content_loss(cfg.loss).description
  with pytest.raises(ValueError, match="vgg19 has no preprocessing 'bgr'"):
    perceptual.build_features("vgg19", preprocess="bgr")


def test_vgg16_content_loss_with_pixel_l1_beside_it():
  """demo_64_perceptual's loss: ImageNet VGG16 (the LPIPS file) + pixel L1, both counted."""
  from fewshot_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from fewshot_jax import losses  # pylint: disable=g-import-not-at-top
  from fewshot_jax.content import build_content_loss  # pylint: disable=g-import-not-at-top
  from fewshot_jax.evaluation import lpips  # pylint: disable=g-import-not-at-top

  cfg = config_lib.load_config("demo_64_perceptual")
  assert cfg.loss.vgg16_path == str(lpips.default_weights_path())
  content = build_content_loss(cfg.loss)
  assert "vgg16 x 1.0" in content.description and "pixel L1 x 50.0" in content.description
  x = _astronaut()
  fake, real = jnp.asarray(x[:1]), jnp.asarray(x[1:])
  net = perceptual.load_features("vgg16", cfg.loss.vgg16_path)
  want = losses.perceptual_l1(net, fake, real) + 50.0 * losses.l1(fake, real)
  assert float(content.fn(content.params, fake, real)) == pytest.approx(float(want), rel=1e-5)
  cfg.loss.pixel_with_perceptual = False
  off = build_content_loss(cfg.loss)
  assert float(off.fn(off.params, fake, real)) == pytest.approx(
      float(losses.perceptual_l1(net, fake, real)), rel=1e-5)
