"""AcpxRuntimeService lifecycle: start-up, registration, reaping log, legacy warnings, stop."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
from _service_helpers import FakeReaper, ListLogger, StubFactory, StubRuntime, seed_open_lease

from acpx_trio._errors import AcpRuntimeError, ConfigError
from acpx_trio._service import service as _service
from acpx_trio._service.backends import AcpRuntimeBackend, BackendRegistry
from acpx_trio._service.health import ServiceHealth
from acpx_trio._service.lazy_runtime import LazyAcpxRuntime, RuntimeFactoryParams
from acpx_trio._service.open_service import open_runtime_service
from acpx_trio._service.service import (
    AcpxRuntimeService,
    ServiceAlreadyStartedError,
    ServiceContext,
    ServiceStoppedError,
)

ENV_SWITCHES = (
    "OPENCLAW_SKIP_ACPX_RUNTIME",
    "OPENCLAW_ACPX_RUNTIME_STARTUP_PROBE",
    "OPENCLAW_SKIP_ACPX_RUNTIME_PROBE",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ENV_SWITCHES:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def reaper(monkeypatch: pytest.MonkeyPatch) -> FakeReaper:
    fake = FakeReaper()
    monkeypatch.setattr(_service, "_reap_open_leases", fake)
    return fake


@pytest.fixture
def open_lease(tmp_path: Path) -> None:
    """One open lease in the state dir, so that start-up calls the reaper."""
    seed_open_lease(tmp_path / "state")


@pytest.fixture
def logger() -> ListLogger:
    return ListLogger()


@pytest.fixture
def registry() -> BackendRegistry:
    return BackendRegistry()


@pytest.fixture
async def make_ctx(
    tmp_path: Path, logger: ListLogger, nursery: trio.Nursery
) -> Callable[..., ServiceContext]:
    def make(**overrides: Any) -> ServiceContext:
        values: dict[str, Any] = {
            "workspace_dir": tmp_path / "ws",
            "state_dir": tmp_path / "state",
            "logger": logger,
            "nursery": nursery,
        }
        values.update(overrides)
        return ServiceContext(**values)

    return make


@pytest.fixture
async def services() -> AsyncIterator[list[AcpxRuntimeService]]:
    """Services to stop at teardown (so a failing test leaves nothing running)."""
    started: list[AcpxRuntimeService] = []
    yield started
    with trio.CancelScope(shield=True):
        for svc in started:
            await svc.stop()


def _new(
    services: list[AcpxRuntimeService], registry: BackendRegistry, **kwargs: Any
) -> AcpxRuntimeService:
    svc = AcpxRuntimeService(registry=registry, **kwargs)
    services.append(svc)
    return svc


async def test_registers_and_unregisters_the_backend(
    reaper: FakeReaper,
    registry: BackendRegistry,
    make_ctx: Callable[..., ServiceContext],
    logger: ListLogger,
    services: list[AcpxRuntimeService],
    tmp_path: Path,
) -> None:
    factory = StubFactory()
    svc = _new(services, registry, runtime_factory=factory)
    assert svc.id == "acpx-runtime"
    assert svc.runtime is None
    ctx = make_ctx()
    await svc.start(ctx)

    (stub,) = factory.made
    backend = registry.get("acpx")
    assert backend is not None and backend.runtime is stub is svc.runtime
    assert backend.healthy is None  # no probe switch: health is not advertised
    assert svc.health.value is ServiceHealth.REGISTERED
    cwd = str((tmp_path / "ws").resolve())
    assert logger.at("info") == [f"embedded acpx runtime backend registered (cwd: {cwd})"]
    (params,) = factory.calls
    assert params.lease_store.path.parent == tmp_path / "state" / "acpx"
    assert params.lease_store.path == tmp_path / "state" / "acpx" / "process-leases.json"
    # the runtime's nursery is the service's own, owned by its one task in the host nursery
    assert params.nursery is not ctx.nursery
    assert params.nursery.parent_task in ctx.nursery.child_tasks
    assert params.gateway_instance_id == svc.gateway_instance_id
    gw_file = (tmp_path / "state" / "gateway-instance-id").read_text().strip()
    assert gw_file == svc.gateway_instance_id
    assert params.config.cwd == cwd
    assert params.config.timeout_seconds is None
    assert params.config.control_timeout_seconds == 120

    await svc.stop(ctx)
    assert registry.get("acpx") is None
    assert svc.runtime is None
    assert stub.aclose_calls == 1
    assert svc.health.value is ServiceHealth.STOPPED


async def test_creates_private_state_dirs(
    reaper: FakeReaper,
    registry: BackendRegistry,
    make_ctx: Callable[..., ServiceContext],
    services: list[AcpxRuntimeService],
    tmp_path: Path,
) -> None:
    svc = _new(
        services,
        registry,
        plugin_config={"stateDir": str(tmp_path / "custom-sessions")},
        runtime_factory=StubFactory(),
    )
    await svc.start(make_ctx())
    for d in (tmp_path / "custom-sessions", tmp_path / "state" / "acpx"):
        assert d.is_dir()
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert svc.config is not None and svc.config.state_dir == str(tmp_path / "custom-sessions")


async def test_skip_env_does_nothing(
    monkeypatch: pytest.MonkeyPatch,
    reaper: FakeReaper,
    registry: BackendRegistry,
    make_ctx: Callable[..., ServiceContext],
    logger: ListLogger,
    services: list[AcpxRuntimeService],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("OPENCLAW_SKIP_ACPX_RUNTIME", "1")
    factory = StubFactory()
    svc = _new(services, registry, runtime_factory=factory, plugin_config={"bogus": 1})
    await svc.start(make_ctx())
    assert logger.messages() == [
        "skipping embedded acpx runtime backend (OPENCLAW_SKIP_ACPX_RUNTIME=1)"
    ]
    assert factory.calls == [] and reaper.calls == []
    assert registry.ids() == [] and svc.runtime is None
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    ("terminated", "expected"),
    [
        ([], None),
        ([101], "reaped 1 stale OpenClaw-owned ACPX process"),
        ([101, 102], "reaped 2 stale OpenClaw-owned ACPX processes"),
    ],
)
async def test_startup_reap_log_line(
    terminated: list[int],
    expected: str | None,
    reaper: FakeReaper,
    registry: BackendRegistry,
    make_ctx: Callable[..., ServiceContext],
    logger: ListLogger,
    open_lease: None,
    services: list[AcpxRuntimeService],
    tmp_path: Path,
) -> None:
    reaper.terminated = terminated
    cleanup = object()
    svc = _new(
        services,
        registry,
        plugin_config={"killGraceSeconds": 0.25},
        runtime_factory=StubFactory(),
        process_cleanup=cleanup,  # type: ignore[arg-type]
    )
    await svc.start(make_ctx())
    (call,) = reaper.calls
    assert call["gateway"] == svc.gateway_instance_id
    assert call["gateway"] == "gw-test"
    assert call["store"].path == tmp_path / "state" / "acpx" / "process-leases.json"
    assert call["grace"] == 0.25
    assert call["deps"] is cleanup
    assert svc.startup_reap is not None
    assert list(svc.startup_reap.terminated_pids) == terminated
    reap_lines = [m for m in logger.messages() if m.startswith("reaped")]
    assert reap_lines == ([expected] if expected else [])
    assert logger.at("warning") == []


async def test_reap_runs_before_the_runtime_is_built(
    monkeypatch: pytest.MonkeyPatch,
    registry: BackendRegistry,
    make_ctx: Callable[..., ServiceContext],
    open_lease: None,
    services: list[AcpxRuntimeService],
) -> None:
    order: list[str] = []
    fake = FakeReaper()

    async def reap(*args: Any, **kwargs: Any) -> Any:
        order.append("reap")
        return await fake(*args, **kwargs)

    def factory(params: RuntimeFactoryParams) -> StubRuntime:
        order.append("factory")
        return StubRuntime()

    monkeypatch.setattr(_service, "_reap_open_leases", reap)
    svc = _new(services, registry, runtime_factory=factory)
    await svc.start(make_ctx())
    assert order == ["reap", "factory"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"queueOwnerTtlSeconds": 30, "strictWindowsCmdWrapper": False},
            [
                "embedded acpx runtime ignores legacy compatibility config: "
                "strictWindowsCmdWrapper=false"
            ],
        ),
        # queueOwnerTtlSeconds is a real setting now (warm owner TTL), not legacy
        ({"queueOwnerTtlSeconds": 0}, []),
        ({"strictWindowsCmdWrapper": True}, []),
        ({}, []),
    ],
)
async def test_legacy_compatibility_warnings(
    raw: dict[str, Any],
    expected: list[str],
    reaper: FakeReaper,
    registry: BackendRegistry,
    make_ctx: Callable[..., ServiceContext],
    logger: ListLogger,
    services: list[AcpxRuntimeService],
) -> None:
    svc = _new(services, registry, plugin_config=raw, runtime_factory=StubFactory())
    await svc.start(make_ctx())
    assert logger.at("warning") == expected


@pytest.mark.parametrize(
    ("raw", "allowed", "expected"),
    [
        ({"probeAgent": "OpenCode"}, (), "opencode"),
        ({}, ("  ", "  OpenCode  ", "codex"), "opencode"),
        ({"probeAgent": "codex"}, ("opencode",), "codex"),
        ({}, (), None),
    ],
)
async def test_probe_agent_resolution(
    raw: dict[str, Any],
    allowed: tuple[str, ...],
    expected: str | None,
    reaper: FakeReaper,
    registry: BackendRegistry,
    make_ctx: Callable[..., ServiceContext],
    services: list[AcpxRuntimeService],
) -> None:
    factory = StubFactory()
    svc = _new(services, registry, plugin_config=raw, runtime_factory=factory)
    await svc.start(make_ctx(allowed_agents=allowed))
    assert factory.calls[0].config.probe_agent == expected


async def test_config_timeout_is_forwarded(
    reaper: FakeReaper,
    registry: BackendRegistry,
    make_ctx: Callable[..., ServiceContext],
    services: list[AcpxRuntimeService],
) -> None:
    factory = StubFactory()
    svc = _new(services, registry, plugin_config={"timeoutSeconds": 7}, runtime_factory=factory)
    await svc.start(make_ctx())
    assert factory.calls[0].config.timeout_seconds == 7
    assert factory.calls[0].config.control_timeout_seconds == 7


async def test_invalid_config_raises_and_registers_nothing(
    reaper: FakeReaper,
    registry: BackendRegistry,
    make_ctx: Callable[..., ServiceContext],
    services: list[AcpxRuntimeService],
) -> None:
    factory = StubFactory()
    svc = _new(
        services, registry, plugin_config={"permissionMode": "yolo"}, runtime_factory=factory
    )
    with pytest.raises(ConfigError) as info:
        await svc.start(make_ctx())
    assert info.value.field == "permissionMode"
    assert registry.ids() == [] and factory.calls == [] and reaper.calls == []
    assert svc.runtime is None and svc.health.value is ServiceHealth.STOPPED
    # the failed start left the service stopped, not "already started"
    with pytest.raises(ConfigError):
        await svc.start(make_ctx())


async def test_factory_failure_leaves_service_stopped(
    reaper: FakeReaper,
    registry: BackendRegistry,
    make_ctx: Callable[..., ServiceContext],
    services: list[AcpxRuntimeService],
) -> None:
    def broken(params: RuntimeFactoryParams) -> StubRuntime:
        raise RuntimeError("no runtime today")

    svc = _new(services, registry, runtime_factory=broken)
    with pytest.raises(RuntimeError, match="no runtime today"):
        await svc.start(make_ctx())
    assert registry.ids() == [] and svc.runtime is None


async def test_async_factory_is_awaited(
    reaper: FakeReaper,
    registry: BackendRegistry,
    make_ctx: Callable[..., ServiceContext],
    services: list[AcpxRuntimeService],
) -> None:
    stub = StubRuntime()

    async def factory(params: RuntimeFactoryParams) -> StubRuntime:
        await trio.lowlevel.checkpoint()
        return stub

    svc = _new(services, registry, runtime_factory=factory)
    await svc.start(make_ctx())
    backend = registry.get("acpx")
    assert backend is not None and backend.runtime is stub


async def test_start_twice_errors_stop_twice_is_harmless_and_restart_works(
    reaper: FakeReaper,
    registry: BackendRegistry,
    make_ctx: Callable[..., ServiceContext],
    services: list[AcpxRuntimeService],
) -> None:
    factory = StubFactory()
    svc = _new(services, registry, runtime_factory=factory)
    ctx = make_ctx()
    await svc.start(ctx)
    with pytest.raises(ServiceAlreadyStartedError) as info:
        await svc.start(ctx)
    assert info.value.code == "ACPX_SERVICE_ALREADY_STARTED"
    assert len(factory.made) == 1

    await svc.stop(ctx)
    await svc.stop(ctx)
    assert factory.made[0].aclose_calls == 1

    await svc.start(ctx)
    assert len(factory.made) == 2
    backend = registry.get("acpx")
    assert backend is not None and backend.runtime is factory.made[1]
    await svc.stop(ctx)
    assert registry.ids() == []


async def test_concurrent_starts_one_wins(
    reaper: FakeReaper,
    registry: BackendRegistry,
    make_ctx: Callable[..., ServiceContext],
    services: list[AcpxRuntimeService],
) -> None:
    factory = StubFactory()
    svc = _new(services, registry, runtime_factory=factory)
    errors: list[BaseException] = []

    async def start() -> None:
        try:
            await svc.start(make_ctx())
        except ServiceAlreadyStartedError as exc:
            errors.append(exc)

    async with trio.open_nursery() as n:
        for _ in range(3):
            n.start_soon(start)
    assert len(errors) == 2 and len(factory.made) == 1


async def test_stop_keeps_a_replacement_backend(
    reaper: FakeReaper,
    registry: BackendRegistry,
    make_ctx: Callable[..., ServiceContext],
    services: list[AcpxRuntimeService],
) -> None:
    svc = _new(services, registry, runtime_factory=StubFactory())
    await svc.start(make_ctx())
    other = StubRuntime()
    registry.register(AcpRuntimeBackend("ACPX ", other))  # someone else replaced it
    await svc.stop()
    backend = registry.get("acpx")
    assert backend is not None and backend.runtime is other


async def test_default_registry_is_used_when_none_given(
    reaper: FakeReaper, make_ctx: Callable[..., ServiceContext]
) -> None:
    from acpx_trio._service.backends import default_registry

    svc = AcpxRuntimeService(runtime_factory=StubFactory())
    await svc.start(make_ctx())
    try:
        backend = default_registry.get("acpx")
        assert backend is not None and backend.runtime is svc.runtime
    finally:
        await svc.stop()
    assert default_registry.get("acpx") is None


async def test_stop_is_bounded_when_aclose_hangs(
    autojump_clock: trio.testing.MockClock,
    reaper: FakeReaper,
    registry: BackendRegistry,
    make_ctx: Callable[..., ServiceContext],
    logger: ListLogger,
    services: list[AcpxRuntimeService],
) -> None:
    factory = StubFactory(kwargs={"aclose_delay": float("inf")})
    svc = _new(services, registry, runtime_factory=factory)
    svc.stop_timeout_seconds = 5.0
    await svc.start(make_ctx())
    t0 = trio.current_time()
    await svc.stop()
    assert trio.current_time() - t0 == pytest.approx(5.0)
    assert registry.ids() == [] and svc.runtime is None
    assert any("did not shut down within 5s" in m for m in logger.at("error"))


async def test_stop_is_shielded_from_outer_cancellation(
    autojump_clock: trio.testing.MockClock,
    reaper: FakeReaper,
    registry: BackendRegistry,
    make_ctx: Callable[..., ServiceContext],
    services: list[AcpxRuntimeService],
) -> None:
    factory = StubFactory(kwargs={"aclose_delay": 2.0})
    svc = _new(services, registry, runtime_factory=factory)
    await svc.start(make_ctx())
    with trio.CancelScope() as cs:
        cs.cancel()
        await svc.stop()
    stub = factory.made[0]
    assert stub.aclose_calls == 1
    assert svc.runtime is None and registry.ids() == []


# -- sweep -------------------------------------------------------------------------------------


async def test_sweep_runs_periodically_and_survives_errors(
    autojump_clock: trio.testing.MockClock,
    reaper: FakeReaper,
    registry: BackendRegistry,
    make_ctx: Callable[..., ServiceContext],
    logger: ListLogger,
    services: list[AcpxRuntimeService],
) -> None:
    stub = StubRuntime(sweep_result=2)
    svc = _new(
        services,
        registry,
        plugin_config={"sweepIntervalSeconds": 5},
        runtime_factory=StubFactory(runtimes=[stub]),
    )
    t0 = trio.current_time()
    await svc.start(make_ctx())
    await trio.sleep(16)
    assert [round(t - t0) for t in stub.sweep_times] == [5, 10, 15]
    assert logger.at("info").count("swept 2 dead embedded acpx sessions") == 3

    stub.sweep_result = RuntimeError("process table unavailable")
    await trio.sleep(5)
    assert stub.sweep_calls == 4
    assert logger.at("warning") == [
        "embedded acpx runtime sweep failed: process table unavailable"
    ]
    stub.sweep_result = 1
    await trio.sleep(5)
    assert stub.sweep_calls == 5
    assert logger.at("info")[-1] == "swept 1 dead embedded acpx session"

    await svc.stop()
    calls = stub.sweep_calls
    await trio.sleep(60)
    assert stub.sweep_calls == calls  # the sweep task ended with stop


async def test_sweep_does_not_build_a_lazy_runtime(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    reaper: FakeReaper,
    registry: BackendRegistry,
    make_ctx: Callable[..., ServiceContext],
    services: list[AcpxRuntimeService],
) -> None:
    built: list[StubRuntime] = []

    async def build(params: RuntimeFactoryParams, *, for_start: bool = False) -> StubRuntime:
        await trio.lowlevel.checkpoint()
        built.append(StubRuntime())
        return built[-1]

    monkeypatch.setattr("acpx_trio._service.lazy_runtime.build_default_runtime", build)
    svc = _new(services, registry, plugin_config={"sweepIntervalSeconds": 1})
    await svc.start(make_ctx())
    await trio.sleep(9.5)
    assert built == []
    runtime = svc.runtime
    assert isinstance(runtime, LazyAcpxRuntime)
    await runtime.ensure_session(session_key="k", agent="mock")
    await trio.sleep(3)  # sweep ticks at 10, 11, 12 (we are half a period off them)
    assert len(built) == 1 and built[0].sweep_calls == 3


# -- lazy default runtime ----------------------------------------------------------------------


async def test_default_runtime_is_lazy_and_built_once_under_concurrent_first_calls(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    reaper: FakeReaper,
    registry: BackendRegistry,
    make_ctx: Callable[..., ServiceContext],
    services: list[AcpxRuntimeService],
) -> None:
    built: list[StubRuntime] = []
    seen_params: list[RuntimeFactoryParams] = []

    async def slow_build(params: RuntimeFactoryParams, *, for_start: bool = False
                         ) -> StubRuntime:
        seen_params.append(params)
        await trio.sleep(1)  # every first caller arrives while this build is in flight
        built.append(StubRuntime())
        return built[-1]

    monkeypatch.setattr("acpx_trio._service.lazy_runtime.build_default_runtime", slow_build)
    cleanup = object()
    svc = _new(services, registry, process_cleanup=cleanup)  # type: ignore[arg-type]
    ctx = make_ctx()
    await svc.start(ctx)
    runtime = svc.runtime
    assert isinstance(runtime, LazyAcpxRuntime)
    assert built == [] and runtime.is_healthy() is False
    backend = registry.get("acpx")
    assert backend is not None and backend.healthy is None

    handles: list[Any] = []

    async def first_call(i: int) -> None:
        handles.append(await runtime.ensure_session(session_key=f"s{i}", agent="mock"))

    async with trio.open_nursery() as n:
        for i in range(8):
            n.start_soon(first_call, i)
    assert len(built) == 1 and runtime.build_count == 1
    assert built[0].ensure_calls == 8 and len(handles) == 8
    assert seen_params[0].nursery.parent_task in ctx.nursery.child_tasks
    assert seen_params[0].process_cleanup is cleanup
    events = [e async for e in runtime.run_turn(handle=handles[0], text="hi")]
    assert [type(e).__name__ for e in events] == ["DoneEvent"]

    await svc.stop()
    assert built[0].aclose_calls == 1
    with pytest.raises(AcpRuntimeError) as info:
        await runtime.ensure_session(session_key="late", agent="mock")
    assert info.value.code == "ACP_BACKEND_UNAVAILABLE"
    assert len(built) == 1


async def test_lazy_build_failure_is_retried(autojump_clock: trio.testing.MockClock) -> None:
    attempts: list[int] = []

    async def flaky(params: RuntimeFactoryParams) -> StubRuntime:
        attempts.append(1)
        await trio.sleep(0.1)
        if len(attempts) == 1:
            raise OSError("agent registry unreadable")
        return StubRuntime()

    lazy = LazyAcpxRuntime(None, build=flaky)  # type: ignore[arg-type]
    with pytest.raises(OSError):
        await lazy.probe_availability()
    await lazy.probe_availability()
    assert len(attempts) == 2 and lazy.build_count == 1 and lazy.is_healthy()
    await lazy.aclose()
    await lazy.aclose()  # idempotent
    assert not lazy.is_healthy()


async def test_aclose_waits_for_an_in_flight_build_and_closes_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    built: list[StubRuntime] = []

    async def slow(params: RuntimeFactoryParams) -> StubRuntime:
        await trio.sleep(5)
        built.append(StubRuntime())
        return built[-1]

    lazy = LazyAcpxRuntime(None, build=slow)  # type: ignore[arg-type]
    async with trio.open_nursery() as n:
        n.start_soon(lazy.probe_availability)
        await trio.sleep(1)
        await lazy.aclose()
    assert len(built) == 1 and built[0].aclose_calls == 1


# -- open_runtime_service ----------------------------------------------------------------------


async def test_open_runtime_service_stops_on_normal_exit(
    reaper: FakeReaper, registry: BackendRegistry, tmp_path: Path
) -> None:
    factory = StubFactory()
    async with open_runtime_service(
        workspace_dir=tmp_path, state_dir=tmp_path / "state", runtime_factory=factory,
        registry=registry,
    ) as svc:
        assert registry.get("acpx") is not None and svc.runtime is factory.made[0]
    assert factory.made[0].aclose_calls == 1 and registry.ids() == []


async def test_open_runtime_service_stops_on_exception(
    reaper: FakeReaper, registry: BackendRegistry, tmp_path: Path
) -> None:
    factory = StubFactory()
    with pytest.raises(ValueError, match="host crashed") as info:
        async with open_runtime_service(
            workspace_dir=tmp_path, state_dir=tmp_path / "state", runtime_factory=factory,
            registry=registry,
        ):
            raise ValueError("host crashed")
    assert type(info.value) is ValueError  # not wrapped in an ExceptionGroup
    assert factory.made[0].aclose_calls == 1 and registry.ids() == []


async def test_open_runtime_service_start_error_propagates_unwrapped(
    reaper: FakeReaper, registry: BackendRegistry, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError):
        async with open_runtime_service(
            workspace_dir=tmp_path, state_dir=tmp_path / "state", plugin_config={"nope": 1},
            runtime_factory=StubFactory(), registry=registry,
        ):
            pytest.fail("body must not run")
    assert registry.ids() == []


async def test_open_runtime_service_stops_on_cancellation(
    autojump_clock: trio.testing.MockClock,
    reaper: FakeReaper,
    registry: BackendRegistry,
    tmp_path: Path,
) -> None:
    factory = StubFactory(kwargs={"aclose_delay": 1.0})  # close takes time: must be shielded
    with trio.CancelScope() as cs:
        async with open_runtime_service(
            workspace_dir=tmp_path, state_dir=tmp_path / "state", runtime_factory=factory,
            registry=registry,
        ):
            cs.cancel()
            await trio.sleep_forever()
    assert cs.cancelled_caught
    (stub,) = factory.made
    assert stub.aclose_calls == 1 and registry.ids() == []


async def test_open_runtime_service_default_logger(
    reaper: FakeReaper,
    registry: BackendRegistry,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="acpx_trio.service")
    async with open_runtime_service(
        workspace_dir=tmp_path, state_dir=tmp_path / "state", runtime_factory=StubFactory(),
        registry=registry, plugin_config={"strictWindowsCmdWrapper": False},
    ):
        pass
    messages = [r.getMessage() for r in caplog.records if r.name == "acpx_trio.service"]
    assert any(m.startswith("embedded acpx runtime backend registered") for m in messages)
    assert any("ignores legacy compatibility config" in m for m in messages)



async def test_stop_aborts_a_start_in_progress(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    registry: BackendRegistry,
    make_ctx: Callable[..., ServiceContext],
    open_lease: None,
    services: list[AcpxRuntimeService],
) -> None:
    fake = FakeReaper()
    reaping = trio.Event()

    async def slow_reap(*args: Any, **kwargs: Any) -> Any:
        reaping.set()
        await trio.sleep(10)
        return await fake(*args, **kwargs)

    monkeypatch.setattr(_service, "_reap_open_leases", slow_reap)
    factory = StubFactory()
    svc = _new(services, registry, runtime_factory=factory)
    outcome: list[BaseException] = []

    async def start() -> None:
        try:
            await svc.start(make_ctx())
        except ServiceStoppedError as exc:
            outcome.append(exc)

    async with trio.open_nursery() as n:
        n.start_soon(start)
        await reaping.wait()  # (not a clock sleep: autojump would jump over start's threads)
        t0 = trio.current_time()
        await svc.stop()
        assert trio.current_time() - t0 < 1
    assert len(outcome) == 1 and outcome[0].code == "ACPX_SERVICE_STOPPED"
    assert factory.calls == [] and registry.ids() == [] and svc.runtime is None
    await svc.start(make_ctx())  # a later start works normally
    assert svc.runtime is factory.made[0]


async def test_reaper_is_skipped_without_open_leases(
    reaper: FakeReaper,
    registry: BackendRegistry,
    make_ctx: Callable[..., ServiceContext],
    services: list[AcpxRuntimeService],
) -> None:
    svc = _new(services, registry, runtime_factory=StubFactory())
    await svc.start(make_ctx())
    assert reaper.calls == []
    assert svc.startup_reap is not None and svc.startup_reap.terminated_pids == []


async def test_require_acpx_runtime_is_the_runtime_with_its_extensions(
    reaper: FakeReaper, registry: BackendRegistry, tmp_path: Path
) -> None:
    """The default runtime has every acpx extension; a factory's runtime without them is a
    usage error (``require_runtime`` still serves it), and a stopped service raises."""
    from acpx_trio import AcpxRuntimeProtocol, AcpxUsageError

    async with open_runtime_service(workspace_dir=tmp_path, state_dir=tmp_path / "state",
                                    registry=registry) as service:
        runtime = service.require_acpx_runtime()
        assert isinstance(runtime, LazyAcpxRuntime) and isinstance(runtime, AcpxRuntimeProtocol)
        assert runtime is service.require_runtime()
    with pytest.raises(ServiceStoppedError):
        service.require_acpx_runtime()
    async with open_runtime_service(workspace_dir=tmp_path, state_dir=tmp_path / "state",
                                    runtime_factory=StubFactory(), registry=registry) as other:
        with pytest.raises(AcpxUsageError, match="runtime_factory"):
            other.require_acpx_runtime()
        assert other.require_runtime() is not None
