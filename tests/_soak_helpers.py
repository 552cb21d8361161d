"""Shared by the short soak scenarios (benchmarks/ is put on sys.path by conftest.py)."""

from __future__ import annotations

from _soak_common import ScenarioResult


def assert_clean(result: ScenarioResult) -> None:
    """Fail with the scenario's result line and every failure it recorded."""
    assert result.ok, "\n".join([result.line(), *result.failures])
