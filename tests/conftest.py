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

from acpx_trio._process.identity import read_proc
from acpx_trio._process.tags import environ_entries

#: The short soak scenarios in the suite import the benchmark modules that run them in full.
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

#: Every process this test run starts inherits this marker, so the guard only ever looks at
#: our own processes (other test runs on the machine are left alone).
RUN_MARKER_KEY = "ACPX_TRIO_TEST_RUN"
RUN_MARKER = os.environ.setdefault(RUN_MARKER_KEY, uuid.uuid4().hex)
#: Under ``pytest -n`` (pytest-xdist) each worker marks its own processes: a worker's guard
#: must never count (or kill) what a test in another worker is running.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER and not RUN_MARKER.endswith("-" + _WORKER):
    RUN_MARKER = os.environ[RUN_MARKER_KEY] = f"{RUN_MARKER}-{_WORKER}"
LEASE_KEY = "OPENCLAW_ACPX_LEASE_ID"
#: No owner-death watchdog process unless a test asks for one (``tests/test_watchdog.py``):
#: most service tests run on trio's MockClock, where a real child process has no place.
os.environ.setdefault("ACPX_TRIO_WATCHDOG", "0")


def processes_of_this_run() -> tuple[list[psutil.Process], list[psutil.Process]]:
    """One pass over the process table: the live, non-zombie processes started by this test
    run that carry a lease tag, and the live warm owners (``python -m acpx_trio._owner``)
    it started.  Each process's environment is read raw and searched for the run marker
    (0.4 ms a pass here against 5.5 ms through psutil's parsed environments); psutil answers
    the rest for the few that carry it."""
    marker_key, marker = f"{RUN_MARKER_KEY}=".encode(), RUN_MARKER.encode()
    lease_key = f"{LEASE_KEY}=".encode()
    tagged: list[psutil.Process] = []
    owners: list[psutil.Process] = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            env = read_proc(f"/proc/{name}/environ")  # a zombie's is empty
        except OSError:
            continue
        if marker not in env or (marker, True) not in environ_entries(env, marker_key):
            continue
        try:
            proc = psutil.Process(int(name))
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if environ_entries(env, lease_key):
                tagged.append(proc)
            if "acpx_trio._owner" in proc.cmdline():
                owners.append(proc)
        except psutil.Error:
            continue
    return tagged, owners


#: How long a found process may take to finish exiting before it counts as leaked.  Short:
#: the guard waits on the real condition (the process is gone) and returns as soon as it holds,
#: so the bound is only paid when something really leaked.
LEAK_SETTLE_SECONDS = 1.0


@pytest.fixture(autouse=True)
def no_leaked_agent_processes() -> Iterator[None]:
    """Fail the test if a tagged process it started is still alive after it ends.

    First the warm owners the test left running are stopped (SIGTERM: a clean shutdown that
    closes their agents; leaving a warm owner is normal, it lives for its TTL, so that is
    clean-up, not a failure).  Leaked processes are killed: those with a gateway tag through
    the shipped leak guard (the reaper's proofs), any other (lease tag only) directly."""
    tagged, owners = processes_of_this_run()
    before = {p.pid for p in tagged}
    owners_before = {p.pid for p in owners}
    yield
    tagged, owners = processes_of_this_run()
    left = [p for p in owners if p.pid not in owners_before]
    if left:
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _gone, alive_owners = psutil.wait_procs(left, timeout=15.0)
        for proc in alive_owners:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        tagged, _owners = processes_of_this_run()
    leaked = [p for p in tagged if p.pid not in before]
    if not leaked:
        return
    from acpx_trio._process.identity import snapshot_processes
    from acpx_trio.testing.leak_guard import check_gateway_leaks, wait_gone

    alive = wait_gone(snapshot_processes(p.pid for p in leaked), LEAK_SETTLE_SECONDS)
    if not alive:
        return
    details = [f"{p.pid} {' '.join(p.cmdline)[:120]}" for p in alive]
    for gateway in {p.gateway_instance_id for p in alive if p.gateway_instance_id}:
        check_gateway_leaks(gateway, settle=0.0)
    for p in wait_gone(alive, 0.0):
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(p.pid)
            if proc.create_time() == p.create_time:
                proc.kill()
    pytest.fail("test leaked tagged agent processes:\n" + "\n".join(details))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The ``slow`` tests first (otherwise in collection order): under ``-n`` the workers
    share them out at the start instead of one worker taking one last while the others
    have nothing left to run."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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
