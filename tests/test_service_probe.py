"""The startup probe: gating by env switches, outcomes, doctor formatting, timeout, stop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from _service_helpers import (
    DOCTOR_EXAMPLE,
    FakeReaper,
    ListLogger,
    NoDoctorRuntime,
    StubFactory,
    StubRuntime,
)

from acpx_trio._errors import AcpRuntimeError
from acpx_trio._events import DoctorReport
from acpx_trio._service import service as _service
from acpx_trio._service.backends import BackendRegistry
from acpx_trio._service.doctor_format import (
    format_doctor_detail,
    format_doctor_failure_message,
    format_seconds,
)
from acpx_trio._service.health import ServiceHealth
from acpx_trio._service.service import AcpxRuntimeService, ServiceContext

PROBE_ENV = "OPENCLAW_ACPX_RUNTIME_STARTUP_PROBE"
SKIP_PROBE_ENV = "OPENCLAW_SKIP_ACPX_RUNTIME_PROBE"
READY = "embedded acpx runtime backend ready"


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENCLAW_SKIP_ACPX_RUNTIME", raising=False)
    monkeypatch.delenv(SKIP_PROBE_ENV, raising=False)
    monkeypatch.setenv(PROBE_ENV, "1")
    monkeypatch.setattr(_service, "_reap_open_leases", FakeReaper())


@pytest.fixture
def logger() -> ListLogger:
    return ListLogger()


@pytest.fixture
def registry() -> BackendRegistry:
    return BackendRegistry()


@pytest.fixture
async def run(
    tmp_path: Path, logger: ListLogger, registry: BackendRegistry, nursery: trio.Nursery
) -> AsyncIterator[Callable[..., Any]]:
    started: list[AcpxRuntimeService] = []

    async def start(stub: StubRuntime, **config: Any) -> AcpxRuntimeService:
        svc = AcpxRuntimeService(
            config or None, runtime_factory=StubFactory(runtimes=[stub]), registry=registry
        )
        started.append(svc)
        await svc.start(
            ServiceContext(
                workspace_dir=tmp_path, state_dir=tmp_path / "state", logger=logger,
                nursery=nursery,
            )
        )
        return svc

    yield start
    with trio.CancelScope(shield=True):
        for svc in started:
            await svc.stop()


def _probe_lines(logger: ListLogger) -> list[tuple[str, str]]:
    return [
        (lvl, m) for lvl, m in logger.records
        if m.startswith(("embedded acpx runtime backend probe", "embedded acpx runtime setup"))
        or m == READY
    ]


# -- gating --------------------------------------------------------------------------------------


async def test_probe_runs_and_reports_health(
    autojump_clock: trio.testing.MockClock,
    run: Callable[..., Any],
    logger: ListLogger,
    registry: BackendRegistry,
) -> None:
    stub = StubRuntime(probe_delay=2.0)
    svc = await run(stub)
    backend = registry.get("acpx")
    assert backend is not None and backend.healthy is not None
    assert svc.health.value is ServiceHealth.PROBING
    assert not backend.is_healthy()  # unavailable until the probe succeeds
    with pytest.raises(AcpRuntimeError) as info:
        registry.require("acpx")
    assert info.value.code == "ACP_BACKEND_UNAVAILABLE"
    assert await svc.health.wait_value(ServiceHealth.HEALTHY) is ServiceHealth.HEALTHY
    assert stub.probe_calls == 1 and stub.doctor_calls == 0
    assert backend.is_healthy() and registry.require("acpx") is backend
    assert _probe_lines(logger) == [("info", READY)]
    await svc.stop()
    assert not backend.is_healthy()  # the callback of a stopped service reads false


@pytest.mark.parametrize(
    ("probe_env", "skip_env"), [(None, None), ("0", None), ("1", "1"), (None, "1")]
)
async def test_probe_switches_off(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    probe_env: str | None,
    skip_env: str | None,
    run: Callable[..., Any],
    logger: ListLogger,
    registry: BackendRegistry,
) -> None:
    for key, value in ((PROBE_ENV, probe_env), (SKIP_PROBE_ENV, skip_env)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    stub = StubRuntime()
    svc = await run(stub)
    await trio.sleep(200)
    assert stub.probe_calls == 0 and _probe_lines(logger) == []
    backend = registry.get("acpx")
    assert backend is not None and backend.healthy is None and backend.is_healthy()
    assert svc.health.value is ServiceHealth.REGISTERED


# -- outcomes ------------------------------------------------------------------------------------


async def test_unhealthy_probe_logs_formatted_doctor_report(
    autojump_clock: trio.testing.MockClock, run: Callable[..., Any], logger: ListLogger
) -> None:
    stub = StubRuntime(healthy_after_probe=False, doctor_report=DOCTOR_EXAMPLE)
    svc = await run(stub)
    await svc.health.wait_value(ServiceHealth.UNHEALTHY)
    assert stub.doctor_calls == 1
    assert _probe_lines(logger) == [
        (
            "warning",
            "embedded acpx runtime backend probe failed: "
            'probe failed ({"code":"ACP_CLOSED","agent":"codex"}; stdin closed)',
        )
    ]


async def test_unhealthy_probe_with_a_mapping_report(
    autojump_clock: trio.testing.MockClock, run: Callable[..., Any], logger: ListLogger
) -> None:
    report = {"ok": False, "message": "agent missing", "details": [ValueError("no codex"), 3]}
    svc = await run(StubRuntime(healthy_after_probe=False, doctor_report=report))
    await svc.health.wait_value(ServiceHealth.UNHEALTHY)
    assert _probe_lines(logger) == [
        ("warning", "embedded acpx runtime backend probe failed: agent missing (no codex; 3)")
    ]


async def test_unhealthy_probe_without_doctor(
    autojump_clock: trio.testing.MockClock, run: Callable[..., Any], logger: ListLogger
) -> None:
    svc = await run(NoDoctorRuntime(healthy_after_probe=False))
    await svc.health.wait_value(ServiceHealth.UNHEALTHY)
    assert _probe_lines(logger) == [
        (
            "warning",
            "embedded acpx runtime backend probe failed: backend remained unhealthy after probe",
        )
    ]


async def test_probe_error_is_a_setup_failure(
    autojump_clock: trio.testing.MockClock, run: Callable[..., Any], logger: ListLogger
) -> None:
    stub = StubRuntime(probe_error=AcpRuntimeError("ACP_SESSION_INIT_FAILED", "spawn codex ENOENT"))
    svc = await run(stub)
    await svc.health.wait_value(ServiceHealth.UNHEALTHY)
    assert _probe_lines(logger) == [
        ("warning", "embedded acpx runtime setup failed: spawn codex ENOENT")
    ]
    assert stub.doctor_calls == 0


async def test_probe_error_without_message_names_its_type(
    autojump_clock: trio.testing.MockClock, run: Callable[..., Any], logger: ListLogger
) -> None:
    svc = await run(StubRuntime(probe_error=KeyError()))
    await svc.health.wait_value(ServiceHealth.UNHEALTHY)
    assert _probe_lines(logger) == [("warning", "embedded acpx runtime setup failed: KeyError")]


@pytest.mark.parametrize(("limit", "text"), [(0.5, "0.5"), (3, "3")])
async def test_probe_timeout_is_reported_and_the_probe_cancelled(
    autojump_clock: trio.testing.MockClock,
    limit: float,
    text: str,
    run: Callable[..., Any],
    logger: ListLogger,
    registry: BackendRegistry,
) -> None:
    stub = StubRuntime(probe_delay=float("inf"))
    t0 = trio.current_time()
    svc = await run(stub, timeoutSeconds=limit)
    await svc.health.wait_value(ServiceHealth.UNHEALTHY)
    assert trio.current_time() - t0 == pytest.approx(limit)
    assert stub.probe_cancelled == 1  # unlike the seed, the timed-out probe does not run on
    assert _probe_lines(logger) == [
        (
            "warning",
            "embedded acpx runtime setup failed: embedded acpx runtime backend startup probe "
            f"timed out after {text}s",
        )
    ]
    backend = registry.get("acpx")
    assert backend is not None and not backend.is_healthy()


async def test_default_probe_timeout_is_the_control_timeout(
    autojump_clock: trio.testing.MockClock, run: Callable[..., Any], logger: ListLogger
) -> None:
    t0 = trio.current_time()
    svc = await run(StubRuntime(probe_delay=float("inf")))
    await svc.health.wait_value(ServiceHealth.UNHEALTHY)
    assert trio.current_time() - t0 == pytest.approx(120)
    assert logger.at("warning")[-1].endswith("timed out after 120s")


# -- stop during a probe -------------------------------------------------------------------------


async def test_stop_during_a_slow_probe_drops_its_result(
    autojump_clock: trio.testing.MockClock,
    run: Callable[..., Any],
    logger: ListLogger,
    registry: BackendRegistry,
) -> None:
    stub = StubRuntime(probe_delay=10.0)
    svc = await run(stub)
    await trio.sleep(1)
    await svc.stop()
    await trio.sleep(100)
    assert stub.probe_cancelled == 1 and stub.probe_finished == 0
    assert _probe_lines(logger) == []
    assert svc.health.value is ServiceHealth.STOPPED and registry.ids() == []


async def test_a_probe_that_ignores_cancellation_is_awaited_and_dropped(
    autojump_clock: trio.testing.MockClock,
    run: Callable[..., Any],
    logger: ListLogger,
) -> None:
    stub = StubRuntime(probe_delay=10.0, probe_shielded=True)
    svc = await run(stub)
    await trio.sleep(1)
    t0 = trio.current_time()
    await svc.stop()  # waits for the probe task to end, so nothing runs on after stop
    assert trio.current_time() - t0 == pytest.approx(9.0)
    assert stub.probe_finished == 1
    await trio.sleep(100)
    assert _probe_lines(logger) == []
    assert svc.health.value is ServiceHealth.STOPPED


async def test_restart_probes_again_and_old_result_does_not_leak(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    logger: ListLogger,
    registry: BackendRegistry,
    nursery: trio.Nursery,
) -> None:
    slow, fast = StubRuntime(probe_delay=10.0), StubRuntime(probe_delay=1.0)
    svc = AcpxRuntimeService(runtime_factory=StubFactory(runtimes=[slow, fast]), registry=registry)
    ctx = ServiceContext(
        workspace_dir=tmp_path, state_dir=tmp_path / "s", logger=logger, nursery=nursery
    )
    await svc.start(ctx)
    await trio.sleep(0.5)
    await svc.stop(ctx)
    await svc.start(ctx)
    await trio.sleep(30)
    assert _probe_lines(logger) == [("info", READY)]
    assert slow.probe_finished == 0 and fast.probe_finished == 1
    await svc.stop(ctx)


# -- formatting ----------------------------------------------------------------------------------


@dataclass
class _Point:
    x: int
    y: int


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


class _Tagged(msgspec.Struct):
    code: str


@pytest.mark.parametrize(
    ("detail", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        (0, None),
        (False, None),
        ([], None),
        ("  stdin closed \n", "stdin closed"),
        (b" bytes ", "bytes"),
        (ValueError("bad agent"), "bad agent"),
        (RuntimeError(), "RuntimeError"),
        (42, "42"),
        (2.5, "2.5"),
        (True, "True"),
        ({"code": "ACP_CLOSED", "agent": "codex"}, '{"code":"ACP_CLOSED","agent":"codex"}'),
        (["a", 1, None], '["a",1,null]'),
        (_Point(1, 2), '{"x":1,"y":2}'),
        (_Tagged(code="E"), '{"code":"E"}'),
        (_Opaque(), "<opaque>"),
        ({"nested": _Opaque()}, "{'nested': <opaque>}"),
    ],
)
def test_format_doctor_detail(detail: Any, expected: str | None) -> None:
    assert format_doctor_detail(detail) == expected


def test_format_doctor_failure_message() -> None:
    assert format_doctor_failure_message("probe failed") == "probe failed"
    assert format_doctor_failure_message("probe failed", [None, " ", 0]) == "probe failed"
    assert (
        format_doctor_failure_message(DOCTOR_EXAMPLE.message, DOCTOR_EXAMPLE.details)
        == 'probe failed ({"code":"ACP_CLOSED","agent":"codex"}; stdin closed)'
    )
    report = DoctorReport(ok=False, message="m", details=[1, "two", {"three": 3}])
    assert format_doctor_failure_message(report.message, report.details) == (
        'm (1; two; {"three":3})'
    )


def test_format_seconds() -> None:
    assert format_seconds(120.0) == "120"
    assert format_seconds(0.001) == "0.001"
    assert format_seconds(2.5) == "2.5"
    assert format_seconds(float("inf")) == "inf"


async def test_wait_crash_wakes_for_a_crash_of_an_unhealthy_service(
    autojump_clock: trio.testing.MockClock, run: Callable[..., Any]
) -> None:
    """A crash sets health ``UNHEALTHY``; when the start-up probe had already failed there
    is no transition, so the warm owner, which waited on health for its service's crash,
    served on with a closed runtime.  ``wait_crash`` wakes for it."""
    svc = await run(StubRuntime(healthy_after_probe=False, doctor_report=DOCTOR_EXAMPLE))
    await svc.health.wait_value(ServiceHealth.UNHEALTHY)
    woke: list[BaseException] = []

    async def bad() -> None:
        await trio.sleep(5)
        raise KeyError("later")

    async def waiter() -> None:
        woke.append(await svc.wait_crash())

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            svc._spawn_background(bad)
    assert isinstance(woke[0], KeyError) and woke[0] is svc.crash
    assert await svc.wait_crash() is svc.crash  # at once, since it crashed
