"""A close that could not prove its agent's tree gone leaves its lease ``closing``: this
process's own service takes it up at its next periodic sweep and at its stop, instead of
leaving the survivors to a next start that may never come.  Real agents (a tagged daemon
left behind by the agent), through the public names; the close's proof is made to fail
once (as when a scan keeps finding processes past its budget)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio
from _proc_helpers import poll_until

import acpx_trio._process.owned as owned_mod
from acpx_trio import (
    AcpxRuntimeService,
    BackendRegistry,
    LeaseState,
    ServiceContext,
    TextDeltaEvent,
)
from acpx_trio._process.leaf_end import LeafEnd
from acpx_trio._process.reaper import CleanupResult
from acpx_trio._store.leases import SyncLeaseStore
from acpx_trio.testing.logger import ListLogger


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def unproven_close(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every close's proof fails without signalling anything (the root, our child, is
    still killed by the close itself)."""

    async def leaf(leaf: str, grace: float, seconds: float) -> LeafEnd:
        await trio.lowlevel.checkpoint()
        return LeafEnd(emptied=False, left=[0])

    async def tree(**kw: Any) -> CleanupResult:
        await kw["before_signal"]()  # it signalled (nothing here), then ran out of time
        return CleanupResult(unproven=True)

    monkeypatch.setattr(owned_mod, "terminate_leaf", leaf)
    monkeypatch.setattr(owned_mod, "cleanup_owned_process_tree", tree)


async def _daemon(runtime: Any, handle: Any) -> int:
    text = []
    async for event in runtime.run_turn(handle=handle, text="/daemonize"):
        if isinstance(event, TextDeltaEvent):
            text.append(event.text)
    found = re.search(r"daemon pid=(\d+)", "".join(text))
    assert found, text
    return int(found.group(1))


def _states(state: Path) -> list[LeaseState]:
    return [x.state for x in SyncLeaseStore(state / "acpx").list_all()]


@pytest.fixture
def daemons() -> Iterator[list[int]]:
    """Pids a test may leave alive when it fails: killed at its end."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if _alive(pid):
            psutil.Process(pid).kill()


@contextlib.asynccontextmanager
async def _close_left_a_daemon(tmp_path: Path, config: dict[str, Any], daemons: list[int],
                               *, end: str = "stop",
                               ) -> AsyncIterator[tuple[Path, int, Callable[[], list[Path]]]]:
    """Inside a service (``config``) whose one session's close could not take the agent's
    tagged daemon: the state dir, the daemon's pid (alive, its lease ``closing``) and what
    lists the service's leaf cgroups (none in process-group mode).  The service ends by
    ``end``: ``"stop"``, or ``"host-cancel"`` (its host's nursery cancelled, no
    ``stop()``)."""
    state = tmp_path / "state"
    service = AcpxRuntimeService(config, registry=BackendRegistry())
    async with trio.open_nursery() as host:
        ctx = ServiceContext(workspace_dir=tmp_path, state_dir=state, nursery=host,
                             logger=ListLogger())
        await service.start(ctx)
        runtime = service.require_runtime()
        handle = await runtime.ensure_session(session_key="k", agent="mock")
        daemons.append(await _daemon(runtime, handle))
        await runtime.close(handle=handle, reason="test")
        assert _alive(daemons[-1])  # the close could not take it
        assert _states(state) == [LeaseState.CLOSING]
        where = service.containment
        parent = (None if where is None or where.path is None
                  else Path(where.path) / f"acpx-trio-{service.gateway_instance_id}")

        def leaves() -> list[Path]:
            return [] if parent is None or not parent.exists() else [
                p for p in parent.iterdir() if p.is_dir()]

        yield state, daemons[-1], leaves
        if end == "stop":
            await service.stop(ctx)
        else:
            host.cancel_scope.cancel()


@pytest.mark.usefixtures("unproven_close")
@pytest.mark.parametrize("containment", ["auto", "process-group"])
@pytest.mark.parametrize("end", ["stop", "host-cancel"])
async def test_the_end_of_the_service_takes_up_what_a_close_left_behind(
        tmp_path: Path, containment: str, end: str, daemons: list[int]) -> None:
    """Its stop, or its host's cancel (which once skipped it: the daemon lived on, 30 of
    30, a second outside review)."""
    with trio.fail_after(60):
        async with _close_left_a_daemon(tmp_path, {"containment": containment}, daemons,
                                        end=end) as (state, daemon, leaves):
            pass
        assert not _alive(daemon)  # the stop took it
        assert _states(state) == [LeaseState.CLOSED]
        assert leaves() == []


@pytest.mark.usefixtures("unproven_close")
async def test_the_periodic_sweep_takes_up_what_a_close_left_behind(
        tmp_path: Path, daemons: list[int]) -> None:
    with trio.fail_after(60):
        async with _close_left_a_daemon(tmp_path, {"sweepIntervalSeconds": 1},
                                        daemons) as (state, daemon, leaves):
            await poll_until(lambda: not _alive(daemon), seconds=20)
            await poll_until(lambda: _states(state) == [LeaseState.CLOSED], seconds=5)
            # the sweep's last step: its leaf removed (a stop cutting the sweep short here
            # would leave it, empty, for the next start)
            await poll_until(lambda: leaves() == [], seconds=5)
