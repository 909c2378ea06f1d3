"""Episodes for meta-learning: K source frames and one target frame from one video.

Sampling is a pure function of (seed, step), so a resumed run draws exactly the batches it would
have drawn had it never stopped, with no iterator state to save.
"""

from __future__ import annotations

import numpy as np


class EpisodeSampler:
  """Draws batches of episodes from in-memory videos.

  A batch holds ``batch_size`` distinct videos (each is one row of D's table W); per video, ``K + 1``
  distinct frames of which the last is the target, so the target is never among the K sources.
  """

  def __init__(
      self,
      frames: np.ndarray,
      landmarks: np.ndarray,
      batch_size: int,
      k_shots: int,
      seed: int,
  ):
    """Args:
      frames: ``uint8 [V, T, H, W, 3]``.
      landmarks: ``float32 [V, T, 68, 2]``.
      batch_size: videos per batch (at most V).
      k_shots: source frames per episode (at most T - 1).
      seed: sampling seed.
    """
    v, t = frames.shape[:2]
    if landmarks.shape[:2] != (v, t):
      raise ValueError(f"frames {frames.shape[:2]} and landmarks {landmarks.shape[:2]} disagree")
    if batch_size > v:
      raise ValueError(f"batch_size={batch_size} exceeds the number of videos ({v})")
    if k_shots + 1 > t:
      raise ValueError(f"k_shots={k_shots} needs at least {k_shots + 1} frames per video, have {t}")
    self.frames, self.landmarks = frames, landmarks
    self.batch_size, self.k_shots, self.seed = batch_size, k_shots, seed

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """The batch for ``step``: frames, landmarks, target, target_landmarks, video_index."""
    rng = np.random.default_rng([self.seed, step])
    v, t = self.frames.shape[:2]
    vids = rng.choice(v, self.batch_size, replace=False)
    picks = np.argsort(rng.random((self.batch_size, t)), axis=1)[:, : self.k_shots + 1]
    frames = self.frames[vids[:, None], picks]
    points = self.landmarks[vids[:, None], picks]
    return {
        "frames": frames[:, :-1],
        "landmarks": points[:, :-1].astype(np.float32),
        "target": frames[:, -1],
        "target_landmarks": points[:, -1].astype(np.float32),
        "video_index": vids.astype(np.int32),
    }
