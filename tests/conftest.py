"""Shared fixtures.  The leak guard fails any test that leaves a tagged agent process alive."""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

#: The short soak scenarios in the suite import the benchmark modules that run them in full.
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

#: Every process this test run starts inherits this marker, so the guard only ever looks at
#: our own processes (other test runs on the machine are left alone).
RUN_MARKER_KEY = "ACPX_TRIO_TEST_RUN"
RUN_MARKER = os.environ.setdefault(RUN_MARKER_KEY, uuid.uuid4().hex)
LEASE_KEY = "OPENCLAW_ACPX_LEASE_ID"
#: No owner-death watchdog process unless a test asks for one (``tests/test_watchdog.py``):
#: most service tests run on trio's MockClock, where a real child process has no place.
os.environ.setdefault("ACPX_TRIO_WATCHDOG", "0")


def tagged_processes_of_this_run() -> list[psutil.Process]:
    """Live, non-zombie processes started by this test run that carry a lease tag."""
    found: list[psutil.Process] = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.pid == me or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        if env.get(RUN_MARKER_KEY) == RUN_MARKER and LEASE_KEY in env:
            found.append(proc)
    return found


def _is_live(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture(autouse=True)
def no_leaked_agent_processes() -> Iterator[None]:
    """Fail the test if a tagged process it started is still alive shortly after it ends."""
    before = {p.pid for p in tagged_processes_of_this_run()}
    yield
    leaked = [p for p in tagged_processes_of_this_run() if p.pid not in before]
    if leaked:
        # Give processes that are already being killed a moment to finish exiting.
        _gone, alive = psutil.wait_procs(leaked, timeout=5.0)
        leaked = [p for p in alive if _is_live(p)]
    if leaked:
        details = []
        for p in leaked:
            try:
                details.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
            except psutil.Error:
                continue
            with contextlib.suppress(psutil.Error):
                p.kill()
        if details:
            pytest.fail("test leaked tagged agent processes:\n" + "\n".join(details))


@pytest.fixture
def gateway_id() -> Iterator[str]:
    """A unique gateway id; fails the test if a process carrying it is alive afterwards."""
    from _runtime_helpers import leak_checked_gateway_id

    yield from leak_checked_gateway_id()


@pytest.fixture
def env(tmp_path: Path, gateway_id: str) -> Any:
    """A runtime environment (config, lease store, state dirs) for runtime tests."""
    from _runtime_helpers import make_env

    return make_env(tmp_path, gateway_id)
