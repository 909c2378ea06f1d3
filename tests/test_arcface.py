"""ArcFace CSIM: IR-SE50 against a PyTorch IR-SE50 (random weights) through `convert-weights`, the
5-point alignment against a known transform, and the embedder's name in every report.

The torch network is written here from the checkpoint's published layout (``input_layer``,
``body.N.shortcut_layer`` / ``res_layer``, ``output_layer``), not imported, so a wrong index,
transpose, flattening order or batch-norm fold in the converter shows up as a mismatch.
"""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
import torch
from torch import nn

from fewshot_jax import cli
from fewshot_jax import config as config_lib
from fewshot_jax.evaluation import arcface, face_metrics, report


class TorchSE(nn.Module):
  def __init__(self, c: int):
    super().__init__()
    self.fc1 = nn.Conv2d(c, c // 16, 1, bias=False)
    self.fc2 = nn.Conv2d(c // 16, c, 1, bias=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
    return x * s


class TorchUnit(nn.Module):
  def __init__(self, cin: int, depth: int, stride: int):
    super().__init__()
    self.stride = stride
    self.shortcut_layer = (nn.MaxPool2d(1, stride) if cin == depth else
                           nn.Sequential(nn.Conv2d(cin, depth, 1, stride, bias=False),
                                         nn.BatchNorm2d(depth)))
    self.res_layer = nn.Sequential(
        nn.BatchNorm2d(cin), nn.Conv2d(cin, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
        nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth), TorchSE(depth))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.res_layer(x) + self.shortcut_layer(x)


class TorchIRSE50(nn.Module):
  def __init__(self):
    super().__init__()
    self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                                     nn.PReLU(64))
    self.body = nn.Sequential(*[TorchUnit(*u) for u in arcface.units()])
    self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.4), nn.Flatten(),
                                      nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(self.output_layer(self.body(self.input_layer(x))), dim=1)


def _randomized() -> TorchIRSE50:
  """Random convs, batch-norm statistics and affines, and PReLU slopes (so every fold is used)."""
  torch.manual_seed(0)
  model = TorchIRSE50()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 2.0)
      elif isinstance(m, nn.PReLU):
        m.weight.uniform_(0.0, 0.5)
  return model.eval()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """(torch model, converted safetensors path), through the CLI."""
  tmp = tmp_path_factory.mktemp("arcface")
  model = _randomized()
  state = {f"module.{k}": v for k, v in model.state_dict().items()}  # saved from DataParallel
  torch.save(state, tmp / "model_ir_se50.pth")
  assert cli.main(["convert-weights", "--kind", "arcface", "--src", str(tmp / "model_ir_se50.pth"),
                   "--dst", str(tmp / "arcface.safetensors")]) == 0
  return model, tmp / "arcface.safetensors"


def test_ir_se50_matches_torch_through_the_pth_conversion(converted):
  model, path = converted
  rng = np.random.default_rng(0)
  crops = rng.integers(0, 256, (3, 112, 112, 3)).astype(np.uint8)
  embedder = arcface.ArcFaceEmbedder(path, batch=2)  # 3 crops: a padded second batch
  got = embedder.embed_crops(crops)
  # The reference sees what the port was trained on: BGR, NCHW, in [-1, 1].
  bgr = crops[..., ::-1].astype(np.float32) / 127.5 - 1
  x = torch.from_numpy(bgr.transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    want = model(x).numpy()
  assert got.shape == want.shape == (3, arcface.FEATURES)
  assert np.abs(got - want).max() < 2e-4, np.abs(got - want).max()
  # The three inputs differ, and so do their embeddings (the comparison is not of constants).
  assert abs(float(want[0] @ want[1])) < 0.999
  # The other channel order is another input: visibly different embeddings.
  rgb = arcface.ArcFaceEmbedder(path, batch=2, channels="rgb").embed_crops(crops)
  assert np.abs(rgb - want).max() > 1e-2


def _template_landmarks(m: np.ndarray) -> np.ndarray:
  """68 landmarks whose 5 ArcFace points are ``TEMPLATE`` (continuous coordinates) moved by the
  2×3 transform ``m``: each eye's six points on a small ring around its centre."""
  five = (arcface.TEMPLATE + 0.5) @ m[:, :2].T + m[:, 2]
  p = np.zeros((68, 2))
  ring = 3.0 * np.stack([np.cos(np.arange(6) * np.pi / 3), np.sin(np.arange(6) * np.pi / 3)], 1)
  p[36:42], p[42:48] = five[0] + ring, five[1] + ring
  p[30], p[48], p[54] = five[2], five[3], five[4]
  return p


def test_alignment_puts_the_five_points_on_the_template():
  angle, scale = np.deg2rad(12.0), 2.5
  m = np.array([[scale * np.cos(angle), -scale * np.sin(angle), 60.0],
                [scale * np.sin(angle), scale * np.cos(angle), 30.0]])
  points = _template_landmarks(m)
  # The least-squares similarity recovers the inverse exactly, with no reflection.
  est = arcface.similarity(arcface.five_points(points), arcface.TEMPLATE + 0.5)
  back = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
  np.testing.assert_allclose(est, back, atol=1e-9)
  # A frame with a Gaussian spot at each of the 5 points: in the crop, each spot's centroid is on
  # the template point (OpenCV's integer-centred coordinates), to a tenth of a pixel (a half-pixel
  # slip in either coordinate convention would be 0.5 px off).
  yy, xx = np.mgrid[:420, :420] + 0.5  # pixel centres, continuous coordinates
  five = arcface.five_points(points)
  spots = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * (1.5 * scale) ** 2)) for x, y in five)
  frame = np.repeat((255 * spots).round().astype(np.uint8)[..., None], 3, axis=-1)
  crop = arcface.align(frame, points).astype(np.float64)[..., 0]
  assert crop.shape == (112, 112)
  cy, cx = np.mgrid[:112, :112]
  for tx, ty in arcface.TEMPLATE:
    near = crop * ((cx - tx) ** 2 + (cy - ty) ** 2 < 8 ** 2)
    centroid = np.array([(near * cx).sum(), (near * cy).sum()]) / near.sum()
    np.testing.assert_allclose(centroid, (tx, ty), atol=0.1)
  with pytest.raises(ValueError, match=r"expected 68 landmarks \[68, 2\], got \(5, 2\)"):
    arcface.five_points(five)


def test_wrong_files_are_named(tmp_path, capsys):
  with pytest.raises(FileNotFoundError, match="convert-weights --kind arcface"):
    arcface.load_weights(tmp_path / "missing.safetensors")
  torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "vgg.pth")
  assert cli.main(["convert-weights", "--kind", "arcface", "--src", str(tmp_path / "vgg.pth"),
                   "--dst", str(tmp_path / "out.safetensors")]) == 2
  err = capsys.readouterr().err.splitlines()[0]
  assert err.startswith(f"fewshot-jax convert-weights: error: {tmp_path / 'vgg.pth'}: not IR-SE50 "
                        "ArcFace weights: missing 'input_layer.0.weight'")
  assert not (tmp_path / "out.safetensors").exists()
  from fewshot_jax.evaluation import fid  # pylint: disable=g-import-not-at-top
  shapes = fid.expected_shapes()
  fid.save_weights(tmp_path / "inception.safetensors",
                   {k: np.zeros(s, np.float32) for k, s in shapes.items()})
  with pytest.raises(ValueError, match="holds inception-fid-2015 weights, not arcface-ir-se50"):
    arcface.load_weights(tmp_path / "inception.safetensors")
  # evaluate reads the header before it loads the checkpoint or the data (neither exists here).
  assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "no_run"), "--data-dir",
                   str(tmp_path), "--out", str(tmp_path / "eval"), "--csim-embedder", "arcface",
                   "--arcface-weights", str(tmp_path / "inception.safetensors")]) == 2
  assert (f"{tmp_path / 'inception.safetensors'} holds inception-fid-2015 weights, not "
          "arcface-ir-se50" in capsys.readouterr().err.splitlines()[0])
  # A file with the right tag and a tensor missing or of the wrong shape, from its header alone.
  good = {k: np.zeros(s, np.float32) for k, s in arcface.expected_shapes().items()}
  arcface.save_weights(tmp_path / "ok.safetensors", good)
  arcface.check_weights(tmp_path / "ok.safetensors")
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  bad = {**good, "output_layer.3.weight": np.zeros((512, 512), np.float32)}
  (tmp_path / "bad.safetensors").write_bytes(safetensors.numpy.save(bad, {"kind": arcface.KIND}))
  with pytest.raises(ValueError, match=r"'output_layer.3.weight' has shape \(512, 512\), "
                     r"expected \(512, 25088\)"):
    arcface.check_weights(tmp_path / "bad.safetensors")
  (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(ValueError, match="cannot read .*junk.safetensors as safetensors"):
    arcface.check_weights(tmp_path / "junk.safetensors")


def test_evaluate_refuses_mismatched_embedder_options(tmp_path, capsys):
  base = ["evaluate", "--checkpoint", str(tmp_path / "no_run"), "--data-dir", str(tmp_path),
          "--out", str(tmp_path / "eval")]
  cases = {
      ("--csim-embedder", "arcface"):
          "--csim-embedder arcface needs --arcface-weights FILE (from `fewshot-jax convert-weights "
          "--kind arcface`)",
      ("--arcface-weights", str(tmp_path / "a.safetensors")):
          "--arcface-weights is read only with --csim-embedder arcface (got dlib)",
      ("--csim-embedder", "arcface", "--arcface-weights", str(tmp_path / "a.safetensors")):
          f"--arcface-weights {tmp_path / 'a.safetensors'}: no such file",
      ("--csim-embedder", "arcface", "--no-face-metrics"):
          "--csim-embedder arcface: CSIM is off (--no-face-metrics)",
  }
  for extra, message in cases.items():
    assert cli.main(base + list(extra)) == 2
    assert message in capsys.readouterr().err.splitlines()[0], extra
  assert not (tmp_path / "eval").exists()
  # A sweep checks the same before any run trains (its face metrics are off unless asked for).
  assert cli.main(["sweep", "cpu_ablations", "--workdir", str(tmp_path / "sweep"),
                   "--csim-embedder", "arcface", "--arcface-weights", "w.safetensors"]) == 2
  assert ("fewshot-jax sweep: error: --csim-embedder arcface: CSIM is off (no --face-metrics)"
          == capsys.readouterr().err.splitlines()[0])
  assert not (tmp_path / "sweep").exists()


def _carphone_videos() -> tuple[np.ndarray, np.ndarray]:
  """Two 8-frame 'videos' of the carphone clip's face (a 144 px square), with dlib landmarks."""
  from test_prep_backends import carphone_path  # pylint: disable=g-import-not-at-top
  from fewshot_jax.prep.backends import make_backend  # pylint: disable=g-import-not-at-top
  from fewshot_jax.prep.video import read_video  # pylint: disable=g-import-not-at-top

  frames = read_video(carphone_path())[0][:, :, 16:160]
  videos = np.stack([frames[0:8], frames[40:48]])
  backend = make_backend("dlib")
  points = np.zeros(videos.shape[:2] + (68, 2), np.float32)
  for v in range(2):
    for t in range(8):
      faces = backend.detect(np.asarray(videos[v, t]))
      if faces:
        points[v, t] = faces[0].landmarks
  return videos, points


def test_every_report_names_the_csim_embedder(converted, tmp_path):
  """eval.json, table.md and the plot's titles say which network CSIM came from, ArcFace or dlib,
  on the carphone clip (the nearest-shot baseline needs no model)."""
  _, weights = converted
  videos, points = _carphone_videos()
  cfg = config_lib.apply_overrides(config_lib.load_config("demo_64"),
                                   ["eval.targets_per_video=2", "model.image_size=144"])
  run = types.SimpleNamespace(config=cfg, graphdef=None, vars=None, workdir="stub", step=0)
  for kind, label in (("arcface", "CSIM (ArcFace)"), ("dlib", "CSIM (dlib)")):
    settings = report.EvalSettings((1,), ("nearest_shot",), csim_embedder=kind,
                                   arcface_weights=str(weights) if kind == "arcface" else None)
    out = tmp_path / kind
    rep = report.evaluate(run, videos, points, settings, out)
    ev = json.loads((out / "eval.json").read_text())
    assert ev["face_metrics"]["csim_embedder"] == kind
    assert ev["face_metrics"]["csim_label"] == label
    row = ev["results"]["k1"]["nearest_shot"]
    assert row["reference_found"] == 1.0 and -1 <= row["csim"] <= 1
    header = next(l for l in (out / "table.md").read_text().splitlines() if l.startswith("| method"))
    assert f"| {label} ↑ |" in header and "| CSIM ↑ |" not in header
    assert f"{label} ↑" in [title for _, title, _, _ in report.report_columns(rep)]
    assert (out / "metrics_vs_k.png").stat().st_size > 5000
    if kind == "arcface":
      assert ev["face_metrics"]["csim"] == "arcface-ir-se50 (bgr)"
      assert ev["face_metrics"]["csim_weights"]["sha256"] == face_metrics.file_sha256(weights)
      assert math.isfinite(row["csim"])


def test_sweep_results_keep_each_embedders_csim_in_its_own_labelled_column(tmp_path):
  """A sweep whose runs were evaluated with different embedders (one with ArcFace, one by an
  older build with dlib, whose eval.json has no label) never puts their CSIMs in one column."""
  import csv  # pylint: disable=g-import-not-at-top

  from fewshot_jax import sweep  # pylint: disable=g-import-not-at-top

  spec = tmp_path / "two.py"
  spec.write_text("def get_sweep(arg=None):\n  return [{'name': 'a', 'config': 'demo_64'}, "
                  "{'name': 'b', 'config': 'demo_64', 'overrides': ['seed=1']}]\n")
  runs = sweep.load_sweep(str(spec))
  workdir = tmp_path / "sweep"
  records = {"a": {"csim": "arcface-ir-se50 (bgr)", "csim_embedder": "arcface",
                   "csim_label": "CSIM (ArcFace)"},
             "b": {"csim": "dlib-resnet-v1"}}
  for r, csim in zip(runs, (0.412, 0.873)):
    cfg = sweep.run_config(r)
    (workdir / r.name / "eval").mkdir(parents=True)
    (workdir / r.name / sweep.MARKER).write_text(
        json.dumps({"config_sha256": sweep.config_hash(cfg)}))
    row = {"ssim": 0.5, "psnr": 20.0, "csim": csim}
    (workdir / r.name / "eval" / "eval.json").write_text(json.dumps({
        "step": cfg.train.steps, "face_metrics": records[r.name],
        "results": {"k1": {"ff": row, "ft": row}}}))
  assert [row["run"] for row in sweep.collect(runs, workdir)] == ["a", "b"]
  head, _, a, b = ([cell.strip() for cell in line.strip("|").split("|")]
                   for line in (workdir / "results.md").read_text().splitlines())
  columns = dict(zip(head, zip(a, b)))
  assert columns["FF CSIM (ArcFace) K=1"] == ("0.412", "–")
  assert columns["FT CSIM (dlib) K=1"] == ("–", "0.873")
  assert not [h for h in head if h.startswith(("FF CSIM K", "FT CSIM K"))]
  rows = list(csv.DictReader((workdir / "results.csv").open()))
  assert [r["csim_embedder"] for r in rows] == ["CSIM (ArcFace)", "CSIM (dlib)"]
