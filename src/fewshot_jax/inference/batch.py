"""Several sources and drivers in one ``animate`` call: every source moved by every driver.

Why the cross product: the batch people run is "these portraits, moved by this clip" (or by a few
clips), which LivePortrait's and first-order-model's users script as a loop over one source and
one driver, paying the model load and the compilation on every turn. Pairs are a product of the
inputs, not a list: a user who wants one portrait per clip runs one call per clip, or puts them in
folders. Repeated ``-s`` flags stay compatible with the single call: each ``-s`` names the
pictures of *one* face (its K shots), as ``--source a.jpg b.jpg`` always has; ``--source-dir``
makes each picture its own face; ``--identity`` adds fitted faces.

One call is one compiled program: the generator (``animate.make_generator``) and the fine-tune
step (``identity.IdentityFitter``) are built once and serve every pair. Each source is fitted
once and each driver's landmarks detected once, whatever the number of pairs: drivers are read
first (landmarks only, so a bad driver is known before minutes of fine-tuning), then each source
is fitted and animated by every driver before the next is fitted (one identity in memory).

A bad item (a source without a face, an unreadable driver, a fit that diverged) is skipped with
one line on stderr and recorded in ``batch.json``; the other pairs are written, and the exit
status says that some failed. A single pair (``-o x.mp4``) is a batch of one that stops at its
first error, with the one-line message and exit status 2 of any bad input.

Outputs are ``<source-stem>--<driver-stem>.mp4`` in the ``-o`` folder. Their names are made here,
not chosen by the user, so a file of that name may be anyone's: it is replaced only when the
folder's ``batch.json`` lists it as written by an earlier batch (re-running a batch after fixing
an input redoes it in place); any other file in the way is refused before work starts. Names
that collide (two sources with one stem) are refused too. ``batch.json`` is rewritten
(atomically) after every pair, so a killed batch still records what it wrote.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from fewshot_jax.atomic_files import write_json
from fewshot_jax.output_paths import check_input_file, check_output_file, json_with_keys
from fewshot_jax.progress import Progress

BATCH_FILE = "batch.json"
BATCH_FORMAT = 1
PROGRAM = "fewshot-jax animate"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DRIVER_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".npy")
# The errors that mean a bad input (the CLI's one-line errors): a batch skips the item and goes on.
# Anything else is a bug and stops the batch with its traceback.
ITEM_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError)


@dataclasses.dataclass(frozen=True)
class Source:
  """One face to animate: the pictures of one person (its shots) or a fitted identity folder.

  ``name`` is the stem its outputs are named by: the first picture's, or the identity folder's.
  """

  name: str
  pictures: tuple[str, ...] = ()
  identity: str | None = None

  @property
  def files(self) -> list[str]:
    return list(self.pictures) if self.pictures else [str(self.identity)]


@dataclasses.dataclass(frozen=True)
class Pair:
  source: Source
  driver: pathlib.Path
  out: pathlib.Path

  @property
  def name(self) -> str:
    return f"{self.source.name}--{self.driver.stem}"


@dataclasses.dataclass
class Plan:
  """What one call will write, checked before a checkpoint is loaded.

  ``folder`` is the output folder (``batch.json`` goes there), or ``None`` for a single pair
  written to the ``.mp4`` the user named.
  """

  sources: list[Source]
  drivers: list[pathlib.Path]
  pairs: list[Pair]
  folder: pathlib.Path | None
  written_before: list[str] = dataclasses.field(default_factory=list)

  @property
  def strict(self) -> bool:
    """A single pair stops at its first error (exit 2), as ``animate`` always has."""
    return self.folder is None


@dataclasses.dataclass
class Options:
  """How every pair is animated (the CLI's flags)."""

  finetune_steps: int | None = None
  motion: str = "relative"
  layout: str = "single"
  batch_size: int = 8
  reference: str | int = "first"
  motion_scale: float = 1.0
  region: str = "all"
  fps: float = 25.0
  smooth: float = 1.0
  enlarge: float = 1.8
  face: int = 0
  driver_face: int = 0
  save_identity: str | None = None
  verbose: bool = False
  audio: bool = True  # copy a driver video's sound into its outputs
  augment: int = 0  # warp-augmented pairs per fine-tuning step (inference.augment)
  paste_back: bool | None = None  # None: the whole picture when it is at hand, else the crop
  max_size: int = 1024  # the pasted-back picture's longer side at most


def check_options(options: Options, drivers: Sequence[pathlib.Path], folder: bool,
                  sources: Sequence[Source] = ()) -> Options:
  """The values a user can get wrong, refused in one line each before a checkpoint is loaded or
  a face fitted (the CLI's flags and the web app's fields alike); returns ``options`` with the
  reference parsed (``first``, ``auto`` or a frame index). A single pair's ``--identity`` with
  an explicit ``--paste-back`` has its recorded picture checked here too."""
  from fewshot_jax.inference import motion as motion_lib  # pylint: disable=g-import-not-at-top
  from fewshot_jax.inference.driver import count_driver_frames  # pylint: disable=g-import-not-at-top

  if options.batch_size < 1:
    raise ValueError(f"--batch-size {options.batch_size}: expected at least 1")
  for flag, value in (("--finetune-steps", options.finetune_steps), ("--smooth", options.smooth),
                      ("--face", options.face), ("--driver-face", options.driver_face),
                      ("--augment", options.augment)):
    if value is not None and value < 0:
      raise ValueError(f"{flag} {value}: expected at least 0")
  if not options.fps > 0:
    raise ValueError(f"--fps {options.fps}: expected a frame rate > 0")
  if options.max_size < 2:
    raise ValueError(f"--max-size {options.max_size}: expected at least 2")
  if options.paste_back and not folder:
    for source in sources:
      if source.identity is not None:
        meta = pathlib.Path(source.identity) / "identity.json"
        record = json.loads(meta.read_text()).get("paste_source") if meta.is_file() else None
        paste_target(record, options)
  reference = motion_lib.parse_reference(options.reference, "--reference")
  motion_lib.check_controls(options.motion_scale, options.region, "--motion-scale", "--animate")
  if isinstance(reference, int):
    for driver in drivers:
      try:
        frames = count_driver_frames(driver)
      except ValueError:  # an unreadable driver: a batch records it when it reads the driver
        if not folder:
          raise
        continue
      if frames is not None and reference >= frames:
        which = f"the {frames} frames of the driver {driver}" if folder else \
            f"the driver's {frames} frames"
        raise ValueError(f"--reference {reference}: beyond {which} (expected auto, first or 0 "
                         f"to {frames - 1})")
  return dataclasses.replace(options, reference=reference)


def paste_target(record: dict[str, Any] | None, options: Options):
  """``(PasteTarget or None, note)``: the picture an identity's ``paste_source`` names.

  With ``--identity`` the picture is the one recorded when the identity was fitted, used only
  while it is there with the same sha256: a user animating a saved identity expects the same
  whole picture as with ``--source``, and a changed file under the old name would put the face
  in the wrong place. By default a picture that is not at hand means the face crop, and the note
  says why; an explicit ``--paste-back`` refuses instead (``PasteUnavailable``).
  """
  from fewshot_jax.inference import paste_back as paste_lib  # pylint: disable=g-import-not-at-top

  if options.paste_back is False:
    return None, ""
  try:
    return paste_lib.load_target(record, options.max_size), ""
  except paste_lib.PasteUnavailable as e:
    if options.paste_back:
      raise paste_lib.PasteUnavailable(f"--paste-back: {e}; animate with --source, or "
                                       "--no-paste-back for the face crop") from None
    return None, f"no paste-back: {e}"


def _listing(directory: str | os.PathLike, flag: str, suffixes: Sequence[str], what: str
             ) -> list[pathlib.Path]:
  """The files of ``directory`` with one of ``suffixes``, by name (hidden files left out: they
  include the half-written temporaries of an interrupted write)."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise FileNotFoundError(f"{flag} {directory}: no such folder")
  files = sorted(p for p in directory.iterdir()
                 if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes)
  if not files:
    raise ValueError(f"{flag} {directory}: no {what} in it (expected files ending in "
                     f"{', '.join(suffixes)})")
  return files


def gather_sources(groups: Sequence[Sequence[str]] = (), source_dir: str | None = None,
                   identities: Sequence[str] = ()) -> list[Source]:
  """The faces of one call: each ``-s`` group, each picture of ``--source-dir``, each
  ``--identity`` folder, in that order."""
  sources = []
  for group in groups:
    for picture in group:
      check_input_file(picture, "--source")
    sources.append(Source(pathlib.Path(group[0]).stem, tuple(str(p) for p in group)))
  if source_dir is not None:
    for picture in _listing(source_dir, "--source-dir", IMAGE_SUFFIXES, "pictures"):
      sources.append(Source(picture.stem, (str(picture),)))
  for folder in identities:
    if not pathlib.Path(folder).is_dir():
      raise FileNotFoundError(f"--identity {folder}: no such folder (expected one written by "
                              "`fewshot-jax finetune`)")
    sources.append(Source(pathlib.Path(folder).absolute().name, identity=str(folder)))
  if not sources:
    raise ValueError("animate: no face to animate: give -s/--source PICTURES, --source-dir DIR "
                     "or --identity DIR")
  return sources


def gather_drivers(drivers: Sequence[str] = (), driver_dir: str | None = None
                   ) -> list[pathlib.Path]:
  """The drivers of one call: each ``-d``, then each video or ``.npy`` of ``--driver-dir``."""
  found = [check_input_file(d, "--driver") for d in drivers]
  if driver_dir is not None:
    found += _listing(driver_dir, "--driver-dir", DRIVER_SUFFIXES, "videos or .npy landmarks")
  if not found:
    raise ValueError("animate: no driver: give -d/--driver VIDEO or --driver-dir DIR")
  return found


def read_batch_file(folder: pathlib.Path) -> dict[str, Any] | None:
  """The folder's ``batch.json`` if this program wrote it, else ``None`` (and no file at all:
  ``{}``)."""
  path = folder / BATCH_FILE
  if not path.exists():
    return {}
  if not json_with_keys(path, ("program", "format", "pairs", "written")):
    return None
  data = json.loads(path.read_text())
  return data if data.get("program") == PROGRAM else None


def check_out_file(out: str | os.PathLike, driver: pathlib.Path) -> pathlib.Path:
  """A single pair's ``.mp4``: any such file the user names is replaced (they chose the name),
  except the driver itself, which is read again while the output is written."""
  out = check_output_file(out, "--out", (".mp4",))
  if out.exists() and out.samefile(driver):
    raise ValueError(f"--out {out}: is the driver itself; choose another output file")
  return out


def plan(sources: list[Source], drivers: list[pathlib.Path], out: str | os.PathLike,
         folder: bool, inputs: Sequence[str | os.PathLike] = ()) -> Plan:
  """Every pair and its output, refused now (one line) rather than after minutes of work.

  Args:
    sources, drivers: from ``gather_sources`` and ``gather_drivers``.
    out: the ``.mp4`` of a single pair, or the output folder of a batch.
    folder: whether ``out`` is a folder (a batch).
    inputs: input folders (``--source-dir``, ``--driver-dir``), which the output folder must not
      be: the outputs would become inputs of the next run.

  Raises:
    ValueError: two outputs would have one name, an output is an input, a file in the way was
      not written by this program, or ``out`` is the wrong kind.
  """
  if not folder:
    if len(sources) * len(drivers) != 1:
      raise ValueError(f"--out {out}: {len(sources)} sources x {len(drivers)} drivers make "
                       f"{len(sources) * len(drivers)} videos, written into a folder: give a "
                       "folder, not a .mp4 file")
    out = check_out_file(out, drivers[0])
    return Plan(sources, drivers, [Pair(sources[0], drivers[0], out)], None)

  out = pathlib.Path(out)
  if out.exists() and not out.is_dir():
    raise ValueError(f"--out {out}: a file; {len(sources)} sources x {len(drivers)} drivers are "
                     "written into a folder (new or existing)")
  if not out.absolute().parent.is_dir():
    raise ValueError(f"--out {out}: the folder {out.absolute().parent} does not exist")
  for flag_dir in inputs:
    if flag_dir is not None and out.absolute() == pathlib.Path(flag_dir).absolute():
      raise ValueError(f"--out {out}: is an input folder too; choose another folder (the videos "
                       "would be read as inputs by the next run)")
  before = read_batch_file(out) if out.is_dir() else {}
  if before is None:
    raise ValueError(f"--out {out}: its {BATCH_FILE} was not written by {PROGRAM}; choose "
                     "another folder")
  written_before = [n for n in before.get("written", []) if (out / n).is_file()]
  seen: dict[str, Pair] = {}
  pairs = []
  for source in sources:
    for driver in drivers:
      pair = Pair(source, driver, out / f"{source.name}--{driver.stem}.mp4")
      if pair.out.name in seen:
        other = seen[pair.out.name]
        raise ValueError(f"--out {out}: {pair.out.name} would be written for both "
                         f"{other.source.files[0]} with {other.driver} and "
                         f"{source.files[0]} with {driver}; rename one of them")
      seen[pair.out.name] = pair
      if pair.out.exists() or pair.out.is_symlink():
        if pair.out.is_dir() or pair.out.name not in written_before:
          raise ValueError(f"--out {out}: {pair.out.name} is in the way and was not written "
                           f"by {PROGRAM} (not in its {BATCH_FILE}); move it or choose another "
                           "folder")
        if pair.out.samefile(driver):
          raise ValueError(f"--out {out}: {pair.out.name} is the driver {driver} itself")
      pairs.append(pair)
  return Plan(sources, drivers, pairs, out, written_before)


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split()) or type(e).__name__


class _Record:
  """``batch.json``: every item's fate, written after each pair."""

  def __init__(self, p: Plan):
    self.plan = p
    self.sources: dict[str, dict[str, Any]] = {
        s.name: {"name": s.name, "files": s.files} for s in p.sources}
    self.drivers: dict[str, dict[str, Any]] = {str(d): {"path": str(d)} for d in p.drivers}
    self.pairs: list[dict[str, Any]] = []
    self.written = list(p.written_before)

  def failed(self) -> list[str]:
    return [r["out"] for r in self.pairs if r["status"] == "failed"]

  def save(self) -> None:
    if self.plan.folder is None:
      return
    write_json(self.plan.folder / BATCH_FILE, {
        "program": PROGRAM, "format": BATCH_FORMAT, "pairs": self.pairs,
        "sources": list(self.sources.values()), "drivers": list(self.drivers.values()),
        "written": sorted(set(self.written)), "failed": self.failed()})


def run_batch(p: Plan, run, backend, options: Options) -> tuple[list[dict[str, Any]], int]:
  """Animates every pair of ``p``; returns each pair's record and the exit status (0: all
  written; 2: some pair failed, each named on stderr and in ``batch.json``).

  In a strict plan (a single pair) the first error propagates instead.
  """
  from fewshot_jax.inference import animate as animate_lib  # pylint: disable=g-import-not-at-top
  from fewshot_jax.inference import driver as driver_lib  # pylint: disable=g-import-not-at-top
  from fewshot_jax.inference import faces  # pylint: disable=g-import-not-at-top
  from fewshot_jax.inference import identity as identity_lib  # pylint: disable=g-import-not-at-top

  size = run.config.model.image_size
  record = _Record(p)
  steps = run.config.finetune.steps if options.finetune_steps is None else options.finetune_steps

  def skip(what: str, item: dict[str, Any], pairs: int, e: BaseException) -> None:
    """Records a bad input and says so in one line (a single pair raises instead)."""
    if p.strict:
      raise e
    item["error"] = _one_line(e)
    print(f"{PROGRAM}: skipped {what} ({pairs} pair{'s' if pairs != 1 else ''}): "
          f"{item['error']}", file=sys.stderr)
    if options.verbose:
      traceback.print_exception(e)

  # Drivers first: landmarks only, each detected once, and a bad one known before fine-tuning.
  loaded: dict[str, Any] = {}
  for path in p.drivers:
    item = record.drivers[str(path)]
    try:
      d = driver_lib.load_driver(path, backend, size, fps=options.fps,
                                 smooth_sigma=options.smooth, enlarge=options.enlarge,
                                 face=options.driver_face)
    except ITEM_ERRORS as e:
      skip(f"driver {path}", item, len(p.sources), e)
      continue
    loaded[str(path)] = d
    item.update(frames=len(d), fps=d.fps, held_frames=d.held, driver_face=options.driver_face)

  generator = animate_lib.make_generator(run, options.batch_size)
  fitter = identity_lib.IdentityFitter(run)
  progress = Progress(len(p.pairs), "pairs", "pairs") if len(p.pairs) > 1 else None
  results = []

  def finish(pair: Pair, result: dict[str, Any]) -> None:
    record.pairs.append(result)
    results.append(result)
    if result["status"] == "written" and p.folder is not None:
      record.written.append(pair.out.name)
    record.save()
    if progress:
      progress.update(1, f"{len(record.failed())} failed", force=True)

  for source in p.sources:
    item = record.sources[source.name]
    pairs = [pair for pair in p.pairs if pair.source is source]
    try:
      if source.identity is not None:
        identity = identity_lib.load_identity(source.identity, run)
      else:
        shots = faces.load_shots(list(source.pictures), backend, size, options.enlarge,
                                 options.face)
        identity = identity_lib.fit_shots(run, shots, steps, fitter=fitter,
                                          augment=options.augment)
        if options.save_identity:
          identity_lib.save_identity(options.save_identity, identity, run)
      paste, paste_note = paste_target(identity.info.get("paste_source"), options)
    except ITEM_ERRORS as e:
      skip(f"source {source.name}", item, len(pairs), e)
      for pair in pairs:
        finish(pair, {"source": source.name, "driver": str(pair.driver), "out": _out_name(p, pair),
                      "status": "failed", "error": f"source {source.name}: {item['error']}"})
      continue
    info = identity.info
    item.update(face=info.get("face"), face_boxes=info.get("face_boxes"),
                finetune_steps=int(info.get("finetune_steps", 0)))
    for pair in pairs:
      base = {"source": source.name, "source_files": source.files, "driver": str(pair.driver),
              "out": _out_name(p, pair), "face": info.get("face"),
              "face_boxes": info.get("face_boxes"), "driver_face": options.driver_face}
      d = loaded.get(str(pair.driver))
      if d is None:
        error = record.drivers[str(pair.driver)].get("error")
        finish(pair, {**base, "status": "failed", "error": f"driver {pair.driver}: {error}"})
        continue
      try:
        summary = animate_lib.animate(
            run, identity, d, pair.out, motion=options.motion, layout=options.layout,
            batch_size=options.batch_size, reference=options.reference,
            motion_scale=options.motion_scale, region=options.region, generator=generator,
            audio=options.audio, paste=paste)
        summary.paste_note = paste_note
      except ITEM_ERRORS as e:
        if p.strict:
          raise
        print(f"{PROGRAM}: failed {pair.name}: {_one_line(e)}", file=sys.stderr)
        if options.verbose:
          traceback.print_exception(e)
        finish(pair, {**base, "status": "failed", "error": _one_line(e)})
        continue
      print(summary.line())
      done = {k: v for k, v in dataclasses.asdict(summary).items() if k != "out"}
      done["line"] = summary.line()
      finish(pair, {**base, "status": "written", **done})
  failed = record.failed()
  return results, 2 if failed else 0


def _out_name(p: Plan, pair: Pair) -> str:
  """How a pair's output is named in the record: its name in the folder, or the file given."""
  return pair.out.name if p.folder is not None else str(pair.out)
