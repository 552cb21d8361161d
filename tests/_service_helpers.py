"""Fakes shared by the service tests: a list-capturing logger, a stub runtime, a fake reaper."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from acpx_trio._events import (
    AcpRuntimeCapabilities,
    AcpRuntimeHandle,
    AcpRuntimeStatus,
    DoctorReport,
    DoneEvent,
)
from acpx_trio._service.lazy_runtime import RuntimeFactoryParams
from acpx_trio._store.lease_model import LeaseState, ProcessLease
from acpx_trio._store.leases import SyncLeaseStore
from acpx_trio.testing.logger import ListLogger as ListLogger  # re-exported


class StubRuntime:
    """An AcpRuntimeProtocol whose probe, doctor, sweep and close are scripted and counted."""

    def __init__(
        self,
        *,
        probe_delay: float = 0.0,
        probe_shielded: bool = False,
        probe_error: BaseException | None = None,
        healthy_after_probe: bool = True,
        doctor_report: Any = None,
        sweep_result: int | BaseException = 0,
        aclose_delay: float = 0.0,
    ) -> None:
        self.probe_delay = probe_delay
        self.probe_shielded = probe_shielded
        self.probe_error = probe_error
        self.healthy_after_probe = healthy_after_probe
        self.doctor_report = doctor_report
        self.sweep_result = sweep_result
        self.aclose_delay = aclose_delay
        self.healthy = False
        self.probe_calls = 0
        self.probe_finished = 0
        self.probe_cancelled = 0
        self.doctor_calls = 0
        self.sweep_calls = 0
        self.sweep_times: list[float] = []
        self.aclose_calls = 0
        self.ensure_calls = 0

    async def probe_availability(self) -> None:
        self.probe_calls += 1
        try:
            with trio.CancelScope(shield=self.probe_shielded):
                await trio.sleep(self.probe_delay if math.isfinite(self.probe_delay) else 1e9)
        except trio.Cancelled:
            self.probe_cancelled += 1
            raise
        if self.probe_error is not None:
            raise self.probe_error
        self.healthy = self.healthy_after_probe
        self.probe_finished += 1

    def is_healthy(self) -> bool:
        return self.healthy

    async def doctor(self) -> Any:
        self.doctor_calls += 1
        await trio.lowlevel.checkpoint()
        return self.doctor_report

    async def sweep_dead_sessions(self) -> int:
        self.sweep_calls += 1
        self.sweep_times.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        if isinstance(self.sweep_result, BaseException):
            raise self.sweep_result
        return self.sweep_result

    async def aclose(self) -> None:
        self.aclose_calls += 1
        await trio.sleep(self.aclose_delay if math.isfinite(self.aclose_delay) else 1e9)

    async def ensure_session(self, *, session_key: str, agent: str, **_: Any) -> AcpRuntimeHandle:
        self.ensure_calls += 1
        await trio.lowlevel.checkpoint()
        return AcpRuntimeHandle(
            session_key=session_key,
            backend="acpx",
            agent=agent,
            mode="persistent",
            cwd="/",
            backend_session_id=f"sid-{session_key}",
        )

    async def run_turn(self, *, handle: AcpRuntimeHandle, text: str, **_: Any) -> Any:
        await trio.lowlevel.checkpoint()
        yield DoneEvent(stop_reason="end_turn")

    async def cancel(self, **_: Any) -> None:
        await trio.lowlevel.checkpoint()

    async def close(self, **_: Any) -> None:
        await trio.lowlevel.checkpoint()

    async def get_capabilities(self, **_: Any) -> AcpRuntimeCapabilities:
        await trio.lowlevel.checkpoint()
        return AcpRuntimeCapabilities()

    async def get_status(self, **_: Any) -> AcpRuntimeStatus:
        await trio.lowlevel.checkpoint()
        return AcpRuntimeStatus()

    async def set_mode(self, **_: Any) -> None:
        await trio.lowlevel.checkpoint()

    async def set_config_option(self, **_: Any) -> None:
        await trio.lowlevel.checkpoint()

    async def prepare_fresh_session(self, **_: Any) -> None:
        await trio.lowlevel.checkpoint()


class NoDoctorRuntime(StubRuntime):
    """A runtime without ``doctor`` (the attribute lookup fails)."""

    def __getattribute__(self, name: str) -> Any:
        if name == "doctor":
            raise AttributeError(name)
        return super().__getattribute__(name)


@dataclass
class StubFactory:
    """Runtime factory recording its params; hands out the given runtimes (or fresh stubs)."""

    runtimes: list[StubRuntime] = field(default_factory=list)
    calls: list[RuntimeFactoryParams] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self, params: RuntimeFactoryParams) -> StubRuntime:
        self.calls.append(params)
        runtime = self.runtimes.pop(0) if self.runtimes else StubRuntime(**self.kwargs)
        self.made.append(runtime)
        return runtime

    made: list[StubRuntime] = field(default_factory=list)


@dataclass
class FakeReapResult:
    inspected_pids: list[int] = field(default_factory=list)
    terminated_pids: list[int] = field(default_factory=list)
    survived_pids: list[int] = field(default_factory=list)
    closed_lease_ids: list[str] = field(default_factory=list)
    lost_lease_ids: list[str] = field(default_factory=list)
    left_alone: list[Any] = field(default_factory=list)


@dataclass
class FakeReaper:
    """Stands in for ``_service._reap_open_leases``; records calls."""

    terminated: list[int] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(
        self, gateway_instance_id: str, lease_store: Any, *, grace: float, deps: Any
    ) -> FakeReapResult:
        self.calls.append(
            {"gateway": gateway_instance_id, "store": lease_store, "grace": grace, "deps": deps}
        )
        await trio.lowlevel.checkpoint()
        return FakeReapResult(
            inspected_pids=list(self.terminated), terminated_pids=list(self.terminated)
        )


DOCTOR_EXAMPLE = DoctorReport(
    ok=False,
    message="probe failed",
    details=[{"code": "ACP_CLOSED", "agent": "codex"}, None, "", "  stdin closed  "],
)


def seed_open_lease(state_dir: Path, gateway_instance_id: str = "gw-test") -> ProcessLease:
    """Give ``state_dir`` a gateway id and one open lease of it (so start-up calls the reaper).

    Synchronous: call it from a sync fixture or a worker thread."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (state_dir / "gateway-instance-id").write_text(f"{gateway_instance_id}\n")
    lease = ProcessLease(
        lease_id="lease-1",
        gateway_instance_id=gateway_instance_id,
        session_key="agent:test",
        wrapper_root=str(state_dir / "acpx"),
        wrapper_path="",
        root_pid=101,
        command_hash="x",
        started_at=int(time.time() * 1000),
        state=LeaseState.OPEN,
    )
    return SyncLeaseStore(state_dir / "acpx").save(lease)
