"""In a core-only run (``SAE_HUB_CORE_ONLY`` set) a skipped test here is a failure: the run exists to prove that
everything in this folder works without the extras, and a skip would prove nothing while reading as green."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

CORE_ONLY = os.environ.get("SAE_HUB_CORE_ONLY", "")


def _fail_skip(report: Any) -> None:
    if CORE_ONLY and report.skipped:
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in the core-only run (SAE_HUB_CORE_ONLY={CORE_ONLY}), which must skip nothing: " \
                          f"{reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    _fail_skip(outcome.get_result())
