"""Running gateway child processes (``_soak_child.py``) and restarting services in-process,
for the crash and concurrent-owner scenarios."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import trio
from _soak_common import MOCK_ARGS, ListLogger, SignalLog, child_env, recording_deps

from acpx_trio._process.identity import boot_id, process_info
from acpx_trio._process.reap_entry import ReapResult
from acpx_trio._service.backends import BackendRegistry
from acpx_trio._service.open_service import open_runtime_service
from acpx_trio._store.lease_model import LeaseState, ProcessLease, new_lease
from acpx_trio._store.leases import SyncLeaseStore

CHILD = Path(__file__).with_name("_soak_child.py")
_UNSET_ENV = ("OPENCLAW_SKIP_ACPX_RUNTIME", "OPENCLAW_ACPX_RUNTIME_STARTUP_PROBE")


@dataclass
class Child:
    """A running gateway child and what it reported."""

    proc: trio.Process
    records: list[dict[str, Any]] = field(default_factory=list)
    ready: trio.Event = field(default_factory=trio.Event)
    eof: trio.Event = field(default_factory=trio.Event)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pids(self, kind: str | None = None) -> list[int]:
        return [int(r["pid"]) for r in self.records
                if "pid" in r and r["pid"] and (kind is None or r["kind"] == kind)]

    @property
    def spawned(self) -> int:
        return next((int(r["spawned"]) for r in self.records if r.get("ready")), -1)

    async def read(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        try:
            while chunk := await self.proc.stdout.receive_some(65536):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    with contextlib.suppress(ValueError):
                        record = json.loads(line)
                        self.records.append(record)
                        if record.get("ready"):
                            self.ready.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.eof.set()

    async def kill(self) -> int | None:
        """SIGKILL (if still running) and reap; the return code."""
        if self.proc.returncode is None:
            with contextlib.suppress(OSError):
                self.proc.send_signal(signal.SIGKILL)
        with trio.move_on_after(10):
            await self.proc.wait()
        return self.proc.returncode


@contextlib.asynccontextmanager
async def gateway_child(
    nursery: trio.Nursery,
    state_dir: Path,
    marker: str,
    args: Sequence[str] = (),
) -> AsyncIterator[Child]:
    """Start ``_soak_child.py STATE_DIR ARGS``; always SIGKILLed and reaped on exit."""
    env = child_env(marker)
    for key in _UNSET_ENV:
        env.pop(key, None)
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(CHILD), str(state_dir), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    child = Child(proc)
    nursery.start_soon(child.read)
    try:
        yield child
    finally:
        with trio.CancelScope(shield=True):
            await child.kill()
            if proc.stdout is not None:
                await proc.stdout.aclose()


@dataclass
class Restart:
    reap: ReapResult
    seconds: float
    signals: SignalLog
    logger: ListLogger


async def restart_service(state_dir: Path, workspace: Path) -> Restart:
    """Start a fresh service on ``state_dir`` in this process (its start-up reaps), stop it."""
    signals = SignalLog()
    logger = ListLogger()
    config = {"agents": {"mock": {"command": sys.executable, "args": MOCK_ARGS}}}
    started = time.perf_counter()
    with trio.fail_after(60):
        async with open_runtime_service(
            workspace_dir=workspace, state_dir=state_dir, plugin_config=config, logger=logger,
            process_cleanup=recording_deps(signals), registry=BackendRegistry(),
        ) as service:
            reap = service.startup_reap or ReapResult()
    return Restart(reap, time.perf_counter() - started, signals, logger)


def fake_lease(
    gateway_id: str,
    *,
    root_pid: int = 0,
    ticks: int | None = None,
    owner_pid: int | None = None,
    lease_id: str | None = None,
    state: LeaseState = LeaseState.OPEN,
) -> ProcessLease:
    """A lease as a gateway writes it; ``ticks`` are the root's start ticks (lie to simulate
    a reused pid).  The owner's start time is left unset when ``owner_pid`` is unknown."""
    owner = process_info(owner_pid) if owner_pid else None
    lease = new_lease(
        gateway_instance_id=gateway_id, session_key=f"fake:{uuid.uuid4().hex[:8]}",
        wrapper_root="/nonexistent", command=[sys.executable, *MOCK_ARGS],
        owner_pid=owner_pid, owner_start_time=owner.create_time if owner else None,
    )
    info = process_info(root_pid) if root_pid else None
    return msgspec.structs.replace(
        lease,
        lease_id=lease_id or lease.lease_id,
        root_pid=root_pid,
        root_start_ticks=ticks,
        root_create_time=info.create_time if info and ticks is not None else None,
        boot_id=boot_id(),
        state=state,
    )


def lease_census(store: SyncLeaseStore, gateway_id: str) -> tuple[set[str], set[str]]:
    """(all lease ids of ``gateway_id``, those still open or closing)."""
    leases = [x for x in store.list_all() if x.gateway_instance_id == gateway_id]
    return {x.lease_id for x in leases}, {x.lease_id for x in leases if not x.state.is_final}


def summary(values: Sequence[float]) -> str:
    """``mean/max`` in seconds, or ``-``."""
    if not values:
        return "-"
    mean = math.fsum(values) / len(values)
    return f"{mean:.2f}/{max(values):.2f}s"
