"""The progress line every long job prints: rate and ETA must be honest from the first line on."""

import io

from fewshot_jax import progress as progress_lib


class _Clock:
  def __init__(self):
    self.now = 100.0

  def __call__(self) -> float:
    return self.now


def test_rate_and_eta_exclude_the_first_item(monkeypatch):
  clock = _Clock()
  monkeypatch.setattr(progress_lib.time, "perf_counter", clock)
  out = io.StringIO()
  p = progress_lib.Progress(10, "train", "steps", stream=out, min_interval=0.0)
  clock.now += 30.0  # the first step compiles
  p.update(1)
  clock.now += 4.0  # then 2 steps/s
  p.update(8)
  lines = out.getvalue().splitlines()
  assert lines[0] == "train 1/10 ? steps/s ETA ?"
  assert lines[1] == "train 9/10 2.00 steps/s ETA 0:00"


def test_resumed_offset_is_not_counted_as_work(monkeypatch):
  clock = _Clock()
  monkeypatch.setattr(progress_lib.time, "perf_counter", clock)
  out = io.StringIO()
  p = progress_lib.Progress(1000, "train", "steps", start=500, stream=out, min_interval=0.0)
  p.update(1, extra="G 1.0")
  clock.now += 10.0
  p.update(100)
  assert out.getvalue().splitlines()[-1] == "train 601/1000 10.00 steps/s ETA 0:40"
  assert out.getvalue().splitlines()[0].endswith("G 1.0")


def test_non_terminal_streams_are_throttled(monkeypatch):
  clock = _Clock()
  monkeypatch.setattr(progress_lib.time, "perf_counter", clock)
  out = io.StringIO()  # not a tty: one line at most every 10 s, plus the last
  p = progress_lib.Progress(100, "x", stream=out)
  for _ in range(100):
    clock.now += 0.5
    p.update(1)
  lines = out.getvalue().splitlines()
  assert 5 <= len(lines) <= 7
  assert lines[-1].startswith("x 100/100")


def test_observers_see_every_update_and_only_inside_their_block():
  seen = []
  out = io.StringIO()
  with progress_lib.observe(lambda *a: seen.append(a)):
    p = progress_lib.Progress(3, "finetune", "steps", stream=out, min_interval=1e9)
    p.update(1)
    p.update(2)
  p.update(0)  # after the block: printed as before, no longer observed
  assert seen == [("finetune", 0, 3, "steps"), ("finetune", 1, 3, "steps"),
                  ("finetune", 3, 3, "steps")]
  # The printed line keeps its rate limit (only the finished count is printed, twice).
  assert [line.split()[1] for line in out.getvalue().splitlines()] == ["3/3", "3/3"]
