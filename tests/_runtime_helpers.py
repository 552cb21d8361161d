"""Helpers for the runtime tests: a per-test gateway id with a leak check, and a runtime
factory over temporary directories with the bundled mock agent."""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio

from acpx_trio._events import AcpRuntimeEvent, AcpRuntimeHandle, TextDeltaEvent
from acpx_trio._runtime.open_runtime import open_acpx_runtime
from acpx_trio._runtime.runtime import AcpxRuntime
from acpx_trio._store.config import AcpxConfig, resolve_config
from acpx_trio._store.leases import LeaseStore, ProcessLease

GATEWAY_ENV_KEY = "OPENCLAW_GATEWAY_INSTANCE_ID"
MOCK = [sys.executable, "-m", "acpx_trio.testing.mock_agent"]


def processes_of_gateway(gateway_id: str) -> list[psutil.Process]:
    """Live (non-zombie) processes whose environment carries ``gateway_id``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(GATEWAY_ENV_KEY) == gateway_id:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def assert_no_process_of(gateway_id: str) -> None:
    """Fail (after killing them) if processes of ``gateway_id`` are alive."""
    leaked = processes_of_gateway(gateway_id)
    if not leaked:
        return
    _gone, alive = psutil.wait_procs(leaked, timeout=3.0)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    if alive:
        pytest.fail(f"leaked processes of gateway {gateway_id}: {[p.pid for p in alive]}")


def leak_checked_gateway_id() -> Iterator[str]:
    """Body of the per-module ``gateway_id`` fixture: a gateway id unique to the test; the
    test fails if any process carrying it survives."""
    gw = f"gw-test-{uuid.uuid4().hex[:12]}"
    yield gw
    assert_no_process_of(gw)


@dataclass
class RuntimeEnv:
    root: Path
    gateway_id: str

    @property
    def workspace(self) -> Path:
        return self.root / "ws"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def lease_store(self) -> LeaseStore:
        return LeaseStore(self.root / "leases")

    def config(self, **raw: Any) -> AcpxConfig:
        raw.setdefault("stateDir", str(self.state_dir))
        raw.setdefault("killGraceSeconds", 0.5)
        return resolve_config(raw, self.workspace)

    @contextlib.asynccontextmanager
    async def runtime(self, config: AcpxConfig | None = None, **raw: Any) -> AsyncIterator[
        AcpxRuntime
    ]:
        async with open_acpx_runtime(
            config or self.config(**raw),
            gateway_instance_id=self.gateway_id,
            lease_store=self.lease_store,
            wrapper_root=self.root,
        ) as runtime:
            yield runtime

    async def lease(self, lease_id: str | None) -> ProcessLease:
        assert lease_id is not None
        lease = await self.lease_store.load(lease_id)
        assert lease is not None
        return lease


def make_env(tmp_path: Path, gateway_id: str) -> RuntimeEnv:
    (tmp_path / "ws").mkdir()
    return RuntimeEnv(root=tmp_path, gateway_id=gateway_id)


async def run(runtime: AcpxRuntime, handle: AcpRuntimeHandle, text: str) -> list[AcpRuntimeEvent]:
    """Every event of one turn."""
    events: list[AcpRuntimeEvent] = []
    async with contextlib.aclosing(runtime.run_turn(handle=handle, text=text)) as stream:
        async for event in stream:
            events.append(event)
    return events


def output(events: list[AcpRuntimeEvent]) -> str:
    """The concatenated ``output`` text of a turn."""
    return "".join(
        e.text for e in events if isinstance(e, TextDeltaEvent) and e.stream == "output"
    )


async def wait_gone(pid: int) -> None:
    """Wait (at most 10 s) until ``pid`` has exited (a kill is asynchronous)."""
    with trio.fail_after(10):
        for _ in range(100_000):
            if pid_gone(pid):
                return
            await trio.sleep(0.01)


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
