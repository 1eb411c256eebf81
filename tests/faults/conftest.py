"""Writes the fault suite's tally at the end of the session (see :mod:`faults.report`)."""

from __future__ import annotations

from faults import report


def pytest_sessionfinish(session, exitstatus):
    report.write()
