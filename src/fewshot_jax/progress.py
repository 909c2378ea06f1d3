"""A one-line progress display with rate and ETA, for any long loop (data generation, training).

A front end other than the terminal (the web app) follows the same loops with ``observe``: every
``Progress`` created while it is active reports each update to its callback, so the functions
that do the work need no second way of reporting.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

# (label, done, total, unit) for every update of every Progress in this context.
Observer = Callable[[str, int, int, str], None]
_OBSERVERS: contextvars.ContextVar[tuple[Observer, ...]] = contextvars.ContextVar(
    "progress_observers", default=())


@contextlib.contextmanager
def observe(callback: Observer) -> Iterator[None]:
  """Calls ``callback(label, done, total, unit)`` when a ``Progress`` starts (a stage's first
  item often waits on a compile) and on each ``update`` in this context (this thread or task),
  whatever the printed line's rate limit, until the block ends."""
  token = _OBSERVERS.set(_OBSERVERS.get() + (callback,))
  try:
    yield
  finally:
    _OBSERVERS.reset(token)


def format_seconds(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class Progress:
  """Prints ``label done/total rate unit/s ETA m:ss extra`` on one updating line.

  The rate is measured from the end of the first ``update`` after ``start``: the first item often
  carries compilation, and a resumed offset is not work done now. Until a second update there is
  no rate, and the line shows ``?``. When the stream is not a terminal, lines are printed at most every
  ``min_interval`` seconds instead of being redrawn.
  """

  def __init__(
      self,
      total: int,
      label: str,
      unit: str = "it",
      start: int = 0,
      stream: TextIO | None = None,
      min_interval: float | None = None,
  ):
    self.total, self.label, self.unit = total, label, unit
    self.done = start
    self._rate_origin: tuple[float, int] | None = None
    self.stream = stream or sys.stderr
    self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.min_interval = min_interval if min_interval is not None else (0.5 if self._tty else 10.0)
    self._last_print = 0.0
    for callback in _OBSERVERS.get():
      callback(self.label, self.done, self.total, self.unit)

  @property
  def rate(self) -> float:
    if self._rate_origin is None:
      return 0.0
    t0, n0 = self._rate_origin
    dt = time.perf_counter() - t0
    return (self.done - n0) / dt if dt > 0 else 0.0

  def update(self, n: int = 1, extra: str = "", force: bool = False) -> None:
    now = time.perf_counter()
    self.done += n
    for callback in _OBSERVERS.get():
      callback(self.label, self.done, self.total, self.unit)
    if self._rate_origin is None:
      self._rate_origin = (now, self.done)
    if not force and now - self._last_print < self.min_interval and self.done < self.total:
      return
    self._last_print = now
    rate = self.rate
    rate_s = f"{rate:.2f}" if rate > 0 else "?"
    eta_s = format_seconds((self.total - self.done) / rate) if rate > 0 else "?"
    line = (
        f"{self.label} {self.done}/{self.total} {rate_s} {self.unit}/s ETA {eta_s}"
        + (f" {extra}" if extra else "")
    )
    if self._tty:
      self.stream.write("\r\033[K" + line)
      if self.done >= self.total:
        self.stream.write("\n")
    else:
      self.stream.write(line + "\n")
    self.stream.flush()
