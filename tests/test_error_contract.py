"""The error contract: every public coroutine of the runtime and the service raises only
``AcpxError`` subclasses (plus ``trio.Cancelled``/``KeyboardInterrupt``) — never an
``ExceptionGroup``, never a raw ``OSError`` — over failing stores, dead agents, closed handles
and a closed runtime.  Real mock-agent processes."""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from _runtime_helpers import MOCK, RuntimeEnv, pid_gone, wait_gone

from acpx_trio._errors import AcpRuntimeError, AcpxError, SessionStoreError
from acpx_trio._events import AcpRuntimeHandle
from acpx_trio._runtime.runtime import AcpxRuntime
from acpx_trio._service.backends import BackendRegistry
from acpx_trio._service.service import (
    AcpxRuntimeService,
    ServiceAlreadyStartedError,
    ServiceContext,
    ServiceStoppedError,
)
from acpx_trio._store.sessions import SessionStore
from acpx_trio.testing.logger import ListLogger

AGENTS = {"mock": {"command": MOCK[0], "args": MOCK[1:]}}

Call = Callable[[AcpxRuntime, AcpRuntimeHandle], Awaitable[Any]]


async def _consume_turn(rt: AcpxRuntime, handle: AcpRuntimeHandle) -> list[Any]:
    async with contextlib.aclosing(rt.run_turn(handle=handle, text="hi")) as events:
        return [event async for event in events]


async def _consume_batches(rt: AcpxRuntime, handle: AcpRuntimeHandle) -> list[Any]:
    async with contextlib.aclosing(rt.run_turn_batches(handle=handle, text="hi")) as batches:
        return [event async for batch in batches for event in batch]


#: Every public coroutine (and async generator) of AcpxRuntime, with arguments.
CALLS: dict[str, Call] = {
    "ensure_session": lambda rt, h: rt.ensure_session(session_key=h.session_key, agent="mock"),
    "prepare_fresh_session": lambda rt, h: rt.prepare_fresh_session(session_key=h.session_key),
    "close": lambda rt, h: rt.close(handle=h),
    "run_turn": _consume_turn,
    "run_turn_batches": _consume_batches,
    "cancel": lambda rt, h: rt.cancel(handle=h),
    "get_capabilities": lambda rt, h: rt.get_capabilities(handle=h),
    "get_status": lambda rt, h: rt.get_status(handle=h),
    "set_mode": lambda rt, h: rt.set_mode(handle=h, mode="plan"),
    "set_config_option": lambda rt, h: rt.set_config_option(handle=h, key="k", value="v"),
    "set_model": lambda rt, h: rt.set_model(handle=h, model="m"),
    "list_sessions": lambda rt, h: rt.list_sessions(agent="mock"),
    "doctor": lambda rt, h: rt.doctor(),
    "probe_availability": lambda rt, h: rt.probe_availability(),
    "sweep_dead_sessions": lambda rt, h: rt.sweep_dead_sessions(),
    "aclose": lambda rt, h: rt.aclose(),
}
ORDER = [name for name in CALLS if name != "aclose"] + ["aclose"]


def test_calls_cover_every_public_coroutine() -> None:
    public = {
        name
        for name, fn in inspect.getmembers(AcpxRuntime)
        if not name.startswith("_")
        and (inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn))
    }
    assert public == set(CALLS)


async def _walk(rt: AcpxRuntime, handle: AcpRuntimeHandle) -> dict[str, BaseException | None]:
    """Call everything; fail on anything that is not an AcpxError."""
    outcomes: dict[str, BaseException | None] = {}
    for name in ORDER:
        try:
            with trio.fail_after(30):
                await CALLS[name](rt, handle)
        except AcpxError as exc:
            outcomes[name] = exc
        except trio.TooSlowError:
            pytest.fail(f"{name} hung")
        except BaseException as exc:
            pytest.fail(f"{name} raised {type(exc).__name__} (not an AcpxError): {exc!r}")
        else:
            outcomes[name] = None
    return outcomes


def _fake_handle(key: str = "k") -> AcpRuntimeHandle:
    return AcpRuntimeHandle(
        session_key=key, backend="acpx", agent="mock", mode="persistent", cwd="/",
        backend_session_id="nope",
    )


async def test_closed_runtime(env: RuntimeEnv) -> None:
    async with env.runtime(agents=AGENTS, probeAgent="mock") as rt:
        handle = await rt.ensure_session(session_key="k", agent="mock")
        await rt.aclose()
        outcomes = await _walk(rt, handle)
    for name, exc in outcomes.items():
        if name in ("sweep_dead_sessions", "aclose"):
            continue  # the service's own clean-up calls: no-ops after close
        assert isinstance(exc, AcpRuntimeError), name
        assert exc.code == "ACP_BACKEND_UNAVAILABLE", name


async def test_closed_handle(env: RuntimeEnv) -> None:
    async with env.runtime(agents=AGENTS, probeAgent="mock") as rt:
        handle = await rt.ensure_session(session_key="k", agent="mock")
        await rt.close(handle=handle)
        outcomes = await _walk(rt, handle)
    for name in ("run_turn", "set_mode", "set_config_option", "get_capabilities"):
        exc = outcomes[name]
        assert isinstance(exc, AcpRuntimeError) and exc.code == "ACP_SESSION_NOT_FOUND", name


async def test_dead_agent(env: RuntimeEnv) -> None:
    async with env.runtime(agents=AGENTS, probeAgent="mock") as rt:
        handle = await rt.ensure_session(session_key="k", agent="mock")
        assert handle.agent_pid is not None
        os.kill(handle.agent_pid, signal.SIGKILL)
        await wait_gone(handle.agent_pid)
        process = rt._sessions["k"].process
        assert process is not None
        with trio.fail_after(10):
            await process.exited.wait()
        assert not (await rt.get_status(handle=handle)).alive
        outcomes = await _walk(rt, handle)
    exc = outcomes["run_turn"]
    assert isinstance(exc, AcpRuntimeError) and exc.code == "ACP_SESSION_NOT_FOUND"
    assert exc.retryable


async def test_failing_store(env: RuntimeEnv) -> None:
    """The state dir is a file: every store access fails; the agent of a failed ensure is
    killed; errors are SessionStoreError naming the path."""
    blocker = env.root / "not-a-dir"
    blocker.write_text("x")
    async with env.runtime(agents=AGENTS, probeAgent="mock", stateDir=str(blocker)) as rt:
        outcomes = await _walk(rt, _fake_handle())
    ensure = outcomes["ensure_session"]
    assert isinstance(ensure, SessionStoreError) and ensure.code == "ACPX_SESSION_STORE"
    assert str(blocker) in ensure.message
    assert isinstance(outcomes["prepare_fresh_session"], SessionStoreError)
    assert isinstance(outcomes["close"], SessionStoreError)  # not an ExceptionGroup


async def test_session_store_wraps_os_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = SessionStore(blocker)
    for call in (
        lambda: store.load("k"),
        lambda: store.mark_fresh("k"),
        lambda: store.delete("k"),
    ):
        with pytest.raises(SessionStoreError) as info:
            await call()
        assert str(blocker) in info.value.path


# -- the service ------------------------------------------------------------------------------


@pytest.fixture
def _no_env_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("OPENCLAW_SKIP_ACPX_RUNTIME", "OPENCLAW_ACPX_RUNTIME_STARTUP_PROBE"):
        monkeypatch.delenv(key, raising=False)


@pytest.mark.usefixtures("_no_env_switches")
async def test_service_state_dir_is_a_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("I am a file")
    svc = AcpxRuntimeService(registry=BackendRegistry())
    async with trio.open_nursery() as host:
        ctx = ServiceContext(
            workspace_dir=tmp_path, state_dir=state, logger=ListLogger(), nursery=host
        )
        with pytest.raises(AcpxError) as info:
            await svc.start(ctx)
        assert not isinstance(info.value, BaseExceptionGroup)
        assert str(state) in str(info.value)
        assert host.child_tasks == frozenset()
        await svc.stop(ctx)


@pytest.mark.usefixtures("_no_env_switches")
async def test_service_lifecycle_errors(tmp_path: Path) -> None:
    svc = AcpxRuntimeService({"agents": AGENTS}, registry=BackendRegistry())
    with pytest.raises(ServiceStoppedError):
        svc.require_runtime()
    async with trio.open_nursery() as host:
        ctx = ServiceContext(
            workspace_dir=tmp_path, state_dir=tmp_path / "state", logger=ListLogger(),
            nursery=host,
        )
        await svc.start(ctx)
        with pytest.raises(ServiceAlreadyStartedError):
            await svc.start(ctx)
        runtime = svc.require_runtime()
        handle = await runtime.ensure_session(session_key="k", agent="mock")
        await svc.stop(ctx)
        await svc.stop(ctx)  # idempotent
        assert handle.agent_pid is not None and pid_gone(handle.agent_pid)
        with pytest.raises(AcpRuntimeError) as info:
            await runtime.ensure_session(session_key="k", agent="mock")
        assert info.value.code == "ACP_BACKEND_UNAVAILABLE"
        with pytest.raises(AcpRuntimeError):
            await _consume_turn(runtime, handle)  # type: ignore[arg-type]
