"""One task tree: the service owns every task it and its runtime start; crashes are reported.

Real mock-agent processes for the ownership test (an ``AgentProcess.run`` task must leave the
host nursery with ``stop``); stub runtimes for the crash and hook tests.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from _service_helpers import ListLogger, StubFactory, StubRuntime

from acpx_trio._errors import AcpRuntimeError
from acpx_trio._service.backends import BackendRegistry
from acpx_trio._service.health import ServiceHealth
from acpx_trio._service.lazy_runtime import RuntimeFactoryParams
from acpx_trio._service.service import (
    AcpxRuntimeService,
    ServiceContext,
    ServiceStoppedError,
)

MOCK = [sys.executable, "-m", "acpx_trio.testing.mock_agent"]


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in (
        "OPENCLAW_SKIP_ACPX_RUNTIME",
        "OPENCLAW_ACPX_RUNTIME_STARTUP_PROBE",
        "OPENCLAW_SKIP_ACPX_RUNTIME_PROBE",
    ):
        monkeypatch.delenv(key, raising=False)


def _walk(task: trio.lowlevel.Task) -> Iterator[trio.lowlevel.Task]:
    yield task
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            yield from _walk(child)


def _tasks_named(fragment: str) -> list[trio.lowlevel.Task]:
    return [t for t in _walk(trio.lowlevel.current_root_task()) if fragment in t.name]


def _ctx(tmp_path: Path, logger: ListLogger, nursery: trio.Nursery) -> ServiceContext:
    (tmp_path / "ws").mkdir(exist_ok=True)
    return ServiceContext(
        workspace_dir=tmp_path / "ws", state_dir=tmp_path / "state", logger=logger,
        nursery=nursery,
    )


async def test_stop_leaves_nothing_in_the_host_nursery(tmp_path: Path) -> None:
    logger = ListLogger()
    svc = AcpxRuntimeService(
        {"agents": {"mock": {"command": MOCK[0], "args": MOCK[1:]}}, "killGraceSeconds": 0.5},
        registry=BackendRegistry(),
    )
    async with trio.open_nursery() as host:
        before = set(host.child_tasks)
        await svc.start(_ctx(tmp_path, logger, host))
        added = set(host.child_tasks) - before
        assert len(added) == 1  # exactly one task of the service in the host nursery
        (service_task,) = added
        runtime = svc.require_runtime()
        handle = await runtime.ensure_session(session_key="tree", agent="mock")
        agents = [t for t in _tasks_named("AgentProcess.run")]
        assert agents, "an agent process task runs"
        # every agent task lives under the service's task, none directly in the host nursery
        under_service = set(_walk(service_task))
        assert all(t in under_service for t in agents)
        assert not any(t in host.child_tasks for t in agents)
        status = await runtime.get_status(handle=handle)
        assert status.alive
        await svc.stop()
        assert set(host.child_tasks) == before
        assert _tasks_named("AgentProcess.run") == []
        assert not any(t in set(_walk(trio.lowlevel.current_root_task())) for t in agents)
    assert svc.runtime is None


class _CrashingRuntime(StubRuntime):
    """Starts a task in the service nursery that crashes when told to."""

    def __init__(self, nursery: trio.Nursery) -> None:
        super().__init__()
        self.go = trio.Event()
        nursery.start_soon(self._doomed)

    async def _doomed(self) -> None:
        await self.go.wait()
        raise RuntimeError("runtime task exploded")


async def test_a_crash_is_reported_not_lost(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    logger = ListLogger()
    registry = BackendRegistry()
    made: list[_CrashingRuntime] = []

    def factory(params: RuntimeFactoryParams) -> _CrashingRuntime:
        made.append(_CrashingRuntime(params.nursery))
        return made[-1]

    svc = AcpxRuntimeService(runtime_factory=factory, registry=registry)
    async with trio.open_nursery() as host:
        before = set(host.child_tasks)
        await svc.start(_ctx(tmp_path, logger, host))
        made[0].go.set()
        await svc.health.wait_value(ServiceHealth.UNHEALTHY)
        # the host nursery did not crash; the crash is logged, kept, and the runtime closed
        assert isinstance(svc.crash, RuntimeError) and "exploded" in str(svc.crash)
        errors = logger.at("error")
        assert any("crashed" in m and "runtime task exploded" in m for m in errors)
        assert registry.ids() == []
        assert made[0].aclose_calls == 1
        await svc.stop()  # does not raise for the crash
        assert set(host.child_tasks) == before
    assert svc.runtime is None


async def test_background_hook_runs_in_the_service_and_ends_with_stop(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    logger = ListLogger()
    factory = StubFactory()
    svc = AcpxRuntimeService(runtime_factory=factory, registry=BackendRegistry())
    ticks: list[float] = []
    cancelled = trio.Event()

    async def watchdog(period: float) -> None:
        try:
            while True:
                ticks.append(trio.current_time())
                await trio.sleep(period)
        except trio.Cancelled:
            cancelled.set()
            raise

    with pytest.raises(ServiceStoppedError):
        svc._spawn_background(watchdog, 1.0)
    async with trio.open_nursery() as host:
        before = set(host.child_tasks)
        await svc.start(_ctx(tmp_path, logger, host))
        svc._spawn_background(watchdog, 1.0)
        await trio.sleep(3.5)
        assert len(ticks) == 4
        (service_task,) = set(host.child_tasks) - before
        assert [t for t in _tasks_named("watchdog") if t in set(_walk(service_task))]
        await svc.stop()
        assert cancelled.is_set()
        assert factory.made[0].aclose_calls == 1
        assert set(host.child_tasks) == before
    with pytest.raises(ServiceStoppedError):
        svc._spawn_background(watchdog, 1.0)


async def test_a_crashing_background_hook_is_reported(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    logger = ListLogger()
    svc = AcpxRuntimeService(runtime_factory=StubFactory(), registry=BackendRegistry())

    async def bad() -> None:
        await trio.sleep(1)
        raise KeyError("hook")

    async with trio.open_nursery() as host:
        await svc.start(_ctx(tmp_path, logger, host))
        svc._spawn_background(bad)
        await svc.health.wait_value(ServiceHealth.UNHEALTHY)
        assert isinstance(svc.crash, KeyError)
        await svc.stop()


async def test_runtime_calls_after_a_crash_raise_typed_errors(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """After a crash the (lazy, real) runtime is closed: calls raise AcpRuntimeError, never a
    'nursery is closed' RuntimeError."""
    logger = ListLogger()
    svc = AcpxRuntimeService(registry=BackendRegistry())

    async def bad() -> None:
        await trio.lowlevel.checkpoint()
        raise ValueError("boom")

    async with trio.open_nursery() as host:
        await svc.start(_ctx(tmp_path, logger, host))
        runtime = svc.require_runtime()
        svc._spawn_background(bad)
        await svc.health.wait_value(ServiceHealth.UNHEALTHY)
        with pytest.raises(AcpRuntimeError) as info:
            await runtime.ensure_session(session_key="k", agent="mock")
        assert info.value.code == "ACP_BACKEND_UNAVAILABLE"
        await svc.stop()


async def test_require_runtime(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    svc = AcpxRuntimeService(runtime_factory=StubFactory(), registry=BackendRegistry())
    with pytest.raises(ServiceStoppedError) as info:
        svc.require_runtime()
    assert info.value.code == "ACPX_SERVICE_STOPPED"
    async with trio.open_nursery() as host:
        await svc.start(_ctx(tmp_path, ListLogger(), host))
        assert svc.require_runtime() is svc.runtime
        await svc.stop()
    with pytest.raises(ServiceStoppedError):
        svc.require_runtime()


async def test_an_idle_service_is_one_task(tmp_path: Path) -> None:
    """Started and idle (no probe, no orphan sweep due, no agent), the service is exactly one
    task: its periodic duties and background nursery live in it, not in tasks of their own
    that every start and stop would spawn and cancel."""
    logger = ListLogger()
    svc = AcpxRuntimeService(runtime_factory=StubFactory(), registry=BackendRegistry())
    async with trio.open_nursery() as host:
        before = set(host.child_tasks)
        await svc.start(_ctx(tmp_path, logger, host))
        await trio.testing.wait_all_tasks_blocked()
        (service_task,) = set(host.child_tasks) - before
        assert [t.name.rsplit(".", 1)[-1] for t in _walk(service_task)] == ["_run"]
        await svc.stop()
        assert set(host.child_tasks) == before


async def test_periodic_duties_run_every_interval_and_stop_with_the_service(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The dead-session sweep runs every sweep interval from the service task, and not
    after stop."""
    logger = ListLogger()
    factory = StubFactory()
    svc = AcpxRuntimeService({"sweepIntervalSeconds": 2}, runtime_factory=factory,
                             registry=BackendRegistry())
    async with trio.open_nursery() as host:
        t0 = trio.current_time()
        await svc.start(_ctx(tmp_path, logger, host))
        await trio.sleep(7)
        stub = factory.made[0]
        assert [round(t - t0) for t in stub.sweep_times] == [2, 4, 6]
        await svc.stop()
        await trio.sleep(10)
        assert len(stub.sweep_times) == 3


async def test_a_slow_duty_is_not_doubled_and_delays_no_other(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from acpx_trio._service.tasks import run_duties

    starts: dict[str, list[float]] = {"slow": [], "quick": []}
    running = {"slow": 0}
    most = {"slow": 0}

    async def slow() -> None:
        starts["slow"].append(trio.current_time())
        running["slow"] += 1
        most["slow"] = max(most["slow"], running["slow"])
        try:
            await trio.sleep(2.5)  # the workload: longer than two intervals
        finally:
            running["slow"] -= 1

    async def quick() -> None:
        starts["quick"].append(trio.current_time())
        await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        nursery.start_soon(run_duties, nursery, 1.0, [slow, quick])
        await trio.sleep(6.5)
        nursery.cancel_scope.cancel()
    assert [round(t - t0) for t in starts["quick"]] == [1, 2, 3, 4, 5, 6]
    # ticks at 1..6: the pass started at 1 runs to 3.5, so ticks 2 and 3 skip it
    assert [round(t - t0) for t in starts["slow"]] == [1, 4]
    assert most["slow"] == 1 and running["slow"] == 0


async def test_a_duty_that_raises_crashes_its_nursery(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from acpx_trio._service.tasks import run_duties

    async def broken() -> None:
        await trio.lowlevel.checkpoint()
        raise RuntimeError("a bug in a duty")

    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="a bug in a duty"),
                            flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_duties, nursery, 1.0, [broken])


async def test_a_host_that_cancels_without_stop_leaves_a_stopped_service(
        tmp_path: Path) -> None:
    """The host's nursery cancelled, ``stop`` never called: the agents were killed and the
    backend unregistered, but health still said ``registered``, ``runtime`` was the closed
    runtime (``require_runtime`` returned it) and ``start`` raised "already started" until
    ``stop`` (an outside review).  Now it is stopped, as ``stop`` leaves it, and starts
    again.  A real agent, through the public names."""
    import psutil

    from acpx_trio import AcpxRuntimeService, BackendRegistry, ServiceContext
    from acpx_trio import ServiceStoppedError as PublicStopped

    registry = BackendRegistry()
    service = AcpxRuntimeService(registry=registry)
    logger = ListLogger()
    (tmp_path / "ws").mkdir()
    with trio.fail_after(60):
        with trio.CancelScope() as host:
            async with trio.open_nursery() as nursery:
                await service.start(ServiceContext(tmp_path / "ws", tmp_path / "state", logger,
                                                   nursery))
                handle = await service.require_runtime().ensure_session(session_key="k",
                                                                        agent="mock")
                host.cancel()
        assert handle.agent_pid is not None and not psutil.pid_exists(handle.agent_pid)
        assert service.health.value == ServiceHealth.STOPPED
        assert service.runtime is None and registry.get("acpx") is None
        with pytest.raises(PublicStopped):
            service.require_runtime()
        async with trio.open_nursery() as nursery:  # starts again, without a stop first
            await service.start(ServiceContext(tmp_path / "ws", tmp_path / "state", logger,
                                               nursery))
            again = await service.require_runtime().ensure_session(session_key="k",
                                                                   agent="mock")
            assert again.agent_pid is not None and psutil.pid_exists(again.agent_pid)
            await service.stop()
        assert not psutil.pid_exists(again.agent_pid)
