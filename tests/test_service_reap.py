"""Start-up reaping through the real reaper and a real LeaseStore over a simulated process table."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest
import trio
from _service_helpers import ListLogger, StubFactory

from acpx_trio._process.identity import ProcessInfo
from acpx_trio._process.reaper import ProcessCleanupDeps
from acpx_trio._service.backends import BackendRegistry
from acpx_trio._service.service import AcpxRuntimeService, ServiceContext
from acpx_trio._store.lease_model import LeaseState, ProcessLease
from acpx_trio._store.leases import LeaseStore

GW = "gw-test"


class FakeTable:
    """A process table in which SIGTERM ends a process at once (unless it is stubborn)."""

    def __init__(self, procs: Sequence[ProcessInfo], stubborn: Sequence[int] = ()) -> None:
        self.procs = {p.pid: p for p in procs}
        self.stubborn = set(stubborn)
        self.signals: list[tuple[int, int]] = []

    def deps(self) -> ProcessCleanupDeps:
        async def list_processes() -> list[ProcessInfo]:
            await trio.lowlevel.checkpoint()
            return list(self.procs.values())

        async def kill_process(info: ProcessInfo, sig: int) -> bool:
            await trio.lowlevel.checkpoint()
            if info.pid not in self.procs:
                return False
            self.signals.append((info.pid, sig))
            if sig == signal.SIGKILL or info.pid not in self.stubborn:
                del self.procs[info.pid]
            return True

        async def wait_exit(infos: Sequence[ProcessInfo], within: float) -> set[int]:
            await trio.lowlevel.checkpoint()
            return {p.pid for p in infos if p.pid in self.procs}

        return ProcessCleanupDeps(
            list_processes=list_processes,
            kill_process=kill_process,
            wait_exit=wait_exit,
            self_pid=os.getpid(),
            self_uid=os.getuid(),
        )


def _proc(pid: int, ppid: int, lease_id: str, gw: str = GW, ticks: int = 1000) -> ProcessInfo:
    return ProcessInfo(
        pid=pid, ppid=ppid, cmdline=("codex-acp",), create_time=1.0, uid=os.getuid(),
        start_ticks=ticks, lease_id=lease_id, gateway_instance_id=gw,
    )


def _lease(lease_id: str, root_pid: int, wrapper_root: Path, gw: str = GW) -> ProcessLease:
    return ProcessLease(
        lease_id=lease_id, gateway_instance_id=gw, session_key=f"agent:{lease_id}",
        wrapper_root=str(wrapper_root), wrapper_path="", root_pid=root_pid, command_hash="x",
        started_at=int(time.time() * 1000), state=LeaseState.OPEN,
        root_start_ticks=1000 if root_pid else None,
    )


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("OPENCLAW_SKIP_ACPX_RUNTIME", "OPENCLAW_ACPX_RUNTIME_STARTUP_PROBE"):
        monkeypatch.delenv(key, raising=False)


async def _seed(state: Path, leases: list[ProcessLease]) -> LeaseStore:
    def write_id() -> None:
        state.mkdir(mode=0o700)
        (state / "gateway-instance-id").write_text(f"{GW}\n")

    await trio.to_thread.run_sync(write_id)
    store = LeaseStore(state / "acpx")
    for lease in leases:
        await store.save(lease)
    return store


async def test_startup_reaps_seeded_leases_and_logs_the_count(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    state = tmp_path / "state"
    root = state / "acpx"
    store = await _seed(
        state,
        [
            _lease("lease-1", 101, root),  # root + child
            _lease("lease-2", 0, root),  # pending: reaped by tags
            _lease("lease-3", 301, root),  # nothing alive any more
            _lease("lease-9", 901, root, gw="other-gateway"),  # not ours
        ],
    )
    table = FakeTable(
        [
            _proc(101, 1, "lease-1"),
            _proc(102, 101, "lease-1"),
            _proc(201, 1, "lease-2"),
            _proc(901, 1, "lease-9", gw="other-gateway"),
            _proc(555, 1, "unrelated", gw="nobody"),
        ]
    )
    logger = ListLogger()
    svc = AcpxRuntimeService(
        runtime_factory=StubFactory(), process_cleanup=table.deps(), registry=BackendRegistry()
    )
    await svc.start(
        ServiceContext(workspace_dir=tmp_path, state_dir=state, logger=logger, nursery=nursery)
    )
    try:
        assert svc.gateway_instance_id == GW
        reap = svc.startup_reap
        assert reap is not None
        assert sorted(reap.terminated_pids) == [101, 102, 201]
        assert sorted(reap.closed_lease_ids) == ["lease-1", "lease-2"]
        assert reap.lost_lease_ids == ["lease-3"]
        assert "reaped 3 stale OpenClaw-owned ACPX processes" in logger.at("info")
        assert sorted(table.procs) == [555, 901]
        states = {x.lease_id: x.state for x in await store.list_all()}
        assert states == {
            "lease-1": LeaseState.CLOSED,
            "lease-2": LeaseState.CLOSED,
            "lease-3": LeaseState.LOST,
            "lease-9": LeaseState.OPEN,
        }
    finally:
        await svc.stop()


async def test_startup_is_quiet_without_open_leases(tmp_path: Path, nursery: trio.Nursery) -> None:
    state = tmp_path / "state"
    await _seed(state, [])
    table = FakeTable([_proc(101, 1, "lease-1")])
    logger = ListLogger()
    svc = AcpxRuntimeService(
        runtime_factory=StubFactory(), process_cleanup=table.deps(), registry=BackendRegistry()
    )
    await svc.start(
        ServiceContext(workspace_dir=tmp_path, state_dir=state, logger=logger, nursery=nursery)
    )
    await svc.stop()
    assert table.signals == []
    assert not any(m.startswith("reaped") for m in logger.messages())
    assert logger.at("warning") == []


async def test_damaged_lease_file_still_reaps_tagged_orphans(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The lease file is garbage (quarantined): processes tagged with our gateway id lost their
    leases, and start-up still reaps them; another gateway's processes are untouched."""
    state = tmp_path / "state"
    await _seed(state, [])
    (state / "acpx").mkdir(mode=0o700)
    (state / "acpx" / "process-leases.json").write_text("{ this is not json")
    table = FakeTable(
        [
            _proc(101, 1, "lost-lease"),
            _proc(102, 101, "lost-lease"),
            _proc(901, 1, "lease-9", gw="other-gateway"),
        ]
    )
    logger = ListLogger()
    svc = AcpxRuntimeService(
        runtime_factory=StubFactory(), process_cleanup=table.deps(), registry=BackendRegistry()
    )
    await svc.start(
        ServiceContext(workspace_dir=tmp_path, state_dir=state, logger=logger, nursery=nursery)
    )
    try:
        reap = svc.startup_reap
        assert reap is not None
        assert sorted(reap.terminated_pids) == [101, 102]
        assert sorted(table.procs) == [901]
        assert "reaped 2 stale OpenClaw-owned ACPX processes" in logger.at("info")
        assert any("was unreadable; moved it aside" in m for m in logger.at("warning"))
        assert [p.name for p in (state / "acpx").iterdir() if ".corrupt-" in p.name]
    finally:
        await svc.stop()


async def test_orphans_of_final_leases_are_reaped_but_live_owners_protected(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    state = tmp_path / "state"
    root = state / "acpx"
    me_pid, me_start = os.getppid(), None  # a live process that is not us: the test's parent
    live_owner = msgspec.structs.replace(
        _lease("lease-live", 401, root), owner_pid=me_pid, owner_start_time=me_start
    )
    closed = msgspec.structs.replace(_lease("lease-closed", 0, root), state=LeaseState.CLOSED)
    await _seed(state, [_lease("lease-open", 0, root), live_owner, closed])
    table = FakeTable(
        [
            _proc(201, 1, "lease-open"),
            _proc(401, 1, "lease-live"),  # its owner is alive: left alone
            _proc(501, 1, "lease-closed"),  # final lease, yet alive: a stale orphan
            ProcessInfo(pid=me_pid, ppid=1, cmdline=("owner",), create_time=1.0,
                        uid=os.getuid()),  # the owner of lease-live, untagged
        ]
    )
    svc = AcpxRuntimeService(
        runtime_factory=StubFactory(), process_cleanup=table.deps(), registry=BackendRegistry()
    )
    await svc.start(
        ServiceContext(workspace_dir=tmp_path, state_dir=state, logger=ListLogger(),
                       nursery=nursery)
    )
    try:
        reap = svc.startup_reap
        assert reap is not None
        assert sorted(reap.terminated_pids) == [201, 501]
        assert sorted(table.procs) == sorted([401, me_pid])
        assert reap.left_alone == {"lease-live": "owner-alive"}
    finally:
        await svc.stop()
