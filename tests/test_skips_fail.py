"""The suite's skips-fail plugin: a skip of any kind fails the run, and names itself."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent

SKIPPING = '''
import pytest

def test_skip_call():
  pytest.skip("no fixture data")

@pytest.mark.skip(reason="marked")
def test_marked():
  pass

@pytest.mark.skipif(True, reason="conditional")
def test_skipif():
  pass

@pytest.mark.xfail(reason="known", strict=True)
def test_xfail():
  assert False

def test_passes():
  pass
'''


def _pytest(path: pathlib.Path) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
  return subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
       "-p", "skips_fail", "-rA", str(path)],
      capture_output=True, text=True, env=env, cwd=path.parent, check=False)


def test_skips_in_tests_fail_and_xfail_stays(tmp_path):
  (tmp_path / "test_inner.py").write_text(SKIPPING)
  r = _pytest(tmp_path / "test_inner.py")
  assert r.returncode == 1, r.stdout
  # A skip in the test body fails it; a skip mark (applied at set-up) is an error there.
  assert "1 failed, 1 passed, 1 xfailed, 2 errors" in r.stdout, r.stdout
  assert "test_skip_call skipped, and this suite does not skip" in r.stdout
  assert "no fixture data" in r.stdout and "marked" in r.stdout and "conditional" in r.stdout


def test_a_module_that_skips_whole_fails(tmp_path):
  """``importorskip`` at module level, the way a broken import of our own code used to hide."""
  (tmp_path / "test_whole.py").write_text(
      "import pytest\nmissing = pytest.importorskip('fewshot_jax_no_such_module')\n"
      "def test_never_collected():\n  pass\n")
  r = _pytest(tmp_path / "test_whole.py")
  assert r.returncode != 0, r.stdout
  assert "skipped whole, and this suite does not skip" in r.stdout, r.stdout
  assert "fewshot_jax_no_such_module" in r.stdout
  assert "skipped" not in r.stdout.splitlines()[-1]


def test_the_suite_loads_the_plugin(request):
  assert request.config.pluginmanager.has_plugin("skips_fail")
