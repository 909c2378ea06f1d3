"""Where the videos are: the VoxCeleb2 tree, or a plain folder of videos.

A *video* in the paper's sense is one recording of one person: in VoxCeleb2 it is all the
utterances (clips) sharing a ``video_id``; in a plain folder it is one file. Each becomes one row of
the discriminator's table W, so the grouping decides what W learns.
"""

from __future__ import annotations

import dataclasses
import pathlib

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


@dataclasses.dataclass(frozen=True)
class VideoEntry:
  """One video to prepare: a stable key, its identity, its clip files in order, and the split it
  goes to (the test split may keep more frames: ``PrepOptions.test_frames_per_video``)."""

  key: str
  identity: str
  clips: tuple[pathlib.Path, ...]
  split: str = "train"


def _is_video(p: pathlib.Path) -> bool:
  return p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS


def voxceleb2(root: str | pathlib.Path) -> list[VideoEntry]:
  """``<root>/{dev,test}/mp4/idNNNNN/<video_id>/<utterance>.mp4``: a video per ``video_id``."""
  root = pathlib.Path(root)
  entries = []
  for split in ("dev", "test"):
    base = root / split / "mp4"
    if not base.is_dir():
      continue
    for ident in sorted(p for p in base.iterdir() if p.is_dir()):
      for vid in sorted(p for p in ident.iterdir() if p.is_dir()):
        clips = tuple(sorted(p for p in vid.iterdir() if _is_video(p)))
        if clips:
          entries.append(VideoEntry(f"{split}/{ident.name}/{vid.name}", ident.name, clips,
                                    "test" if split == "test" else "train"))
  if not entries:
    raise FileNotFoundError(
        f"{root}: no videos in the VoxCeleb2 layout (<root>/dev|test/mp4/idNNNNN/<video_id>/*.mp4)"
    )
  return entries


def video_folder(root: str | pathlib.Path) -> list[VideoEntry]:
  """``<root>/<identity>/<video>.<ext>`` (identity from the folder) or flat ``<root>/<video>.<ext>``
  (each file its own identity)."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f"{root}: not a directory")
  entries = []
  for p in sorted(root.iterdir()):
    if _is_video(p):
      entries.append(VideoEntry(p.stem, p.stem, (p,)))
    elif p.is_dir():
      for clip in sorted(q for q in p.iterdir() if _is_video(q)):
        entries.append(VideoEntry(f"{p.name}/{clip.stem}", p.name, (clip,)))
  if not entries:
    raise FileNotFoundError(f"{root}: no video files ({', '.join(VIDEO_EXTENSIONS)})")
  return entries


LAYOUTS = {"voxceleb2": voxceleb2, "folder": video_folder}


def list_videos(root: str | pathlib.Path, layout: str) -> list[VideoEntry]:
  if layout not in LAYOUTS:
    raise ValueError(f"layout {layout!r}: expected one of {sorted(LAYOUTS)}")
  return LAYOUTS[layout](root)
