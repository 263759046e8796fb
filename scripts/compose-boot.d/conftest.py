"""The boot test (scripts/compose-boot runs it): a skipped test fails the run, as in scripts/e2e."""

from __future__ import annotations

import os
import sys

# The client's environment, before anything imports mlflow: the tracking URI and nothing else.
for _k in list(os.environ):
    if _k.startswith(("MLFLOW_", "AWS_")):
        del os.environ[_k]
os.environ["MLFLOW_TRACKING_URI"] = "http://127.0.0.1:5000"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"

_SKIPPED: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped:
        _SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    # A skipped test is not a passing test.
    if _SKIPPED and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    boot = sys.modules.get("test_boot")
    for what, seconds in getattr(boot, "TIMINGS", {}).items():
        terminalreporter.write_line(f"{what}: {seconds:.1f} s")
    if _SKIPPED:
        terminalreporter.write_line(
            f"FAILING THE RUN: {len(_SKIPPED)} test(s) were skipped, and skipped does not count as passed:"
        )
        for nodeid in _SKIPPED:
            terminalreporter.write_line(f"  {nodeid}")
