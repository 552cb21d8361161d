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
    "delete_session": lambda rt, h: rt.delete_session(agent="mock", session_id="s"),
    "logout": lambda rt, h: rt.logout(agent="mock"),
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


# -- bad arguments and edges, through the public names ------------------------------------------


def _untouchable_deps() -> Any:
    """Process-table deps that fail the test if the reaper uses them: bad arguments must be
    refused before anything is listed or signalled."""
    from acpx_trio import ProcessCleanupDeps

    async def forbidden(*_: Any) -> Any:
        raise AssertionError("the reaper touched the process table on a bad argument")

    return ProcessCleanupDeps(
        list_processes=forbidden, kill_process=forbidden, wait_exit=forbidden,
        self_pid=os.getpid(), self_uid=os.getuid(),
    )


def _assert_usage(exc: BaseException, argument: str) -> None:
    from acpx_trio import AcpxUsageError

    assert isinstance(exc, AcpxUsageError), repr(exc)
    assert isinstance(exc, ValueError)  # callers that caught ValueError keep working
    assert exc.code == "ACPX_USAGE" and exc.argument == argument
    assert argument in str(exc)


async def test_reaper_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    from acpx_trio import (
        LeaseStore,
        cleanup_owned_process_tree,
        reap_open_leases,
        reap_stale_orphans,
    )
    from acpx_trio.lowlevel import reap_gateway, terminate_trees

    store = LeaseStore(tmp_path / "leases")
    deps = _untouchable_deps()
    calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("gateway_instance_id", lambda: reap_open_leases("", store, deps=deps)),
        ("gateway_instance_id", lambda: reap_open_leases(None, store, deps=deps)),  # type: ignore[arg-type]
        ("gateway_instance_id", lambda: reap_stale_orphans(gateway_instance_id=" ", deps=deps)),
        ("gateway_instance_id", lambda: reap_gateway("", store, deps=deps)),
        ("expected_lease_id", lambda: cleanup_owned_process_tree(
            root_pid=1, expected_lease_id="", expected_gateway_instance_id="gw", deps=deps)),
        ("root_pid", lambda: cleanup_owned_process_tree(
            root_pid=-1, expected_lease_id="l", expected_gateway_instance_id="gw", deps=deps)),
        ("root_pid", lambda: cleanup_owned_process_tree(
            root_pid="7", expected_lease_id="l",  # type: ignore[arg-type]
            expected_gateway_instance_id="gw", deps=deps)),
        ("grace", lambda: cleanup_owned_process_tree(
            root_pid=0, expected_lease_id="l", expected_gateway_instance_id="gw",
            grace=-1, deps=deps)),
        ("grace", lambda: reap_stale_orphans(gateway_instance_id="gw", grace=float("nan"),
                                             deps=deps)),
        ("grace", lambda: terminate_trees([], grace=-0.5, deps=deps)),
        # checked before the store is read (an empty store used to return an empty result)
        ("grace", lambda: reap_open_leases("gw", store, grace=-1, deps=deps)),
        ("grace", lambda: reap_open_leases("gw", store, grace="x", deps=deps)),  # type: ignore[arg-type]
        ("grace", lambda: reap_stale_orphans(gateway_instance_id="gw", grace=float("inf"),
                                             deps=deps)),
        ("lease_store", lambda: reap_open_leases("gw", None, deps=deps)),  # type: ignore[arg-type]
        ("protected_lease_ids", lambda: reap_open_leases("gw", store, deps=deps,
                                                         protected_lease_ids=5)),  # type: ignore[arg-type]
        ("protected_lease_ids", lambda: reap_stale_orphans(
            gateway_instance_id="gw", protected_lease_ids="lease-1", deps=deps)),
        # a second outside review: a sync store, deps and groups that are not ones
        ("lease_store", lambda: reap_open_leases("gw", store.sync, deps=deps)),  # type: ignore[arg-type]
        ("deps", lambda: reap_stale_orphans(gateway_instance_id="gw", deps=5)),  # type: ignore[arg-type]
        ("deps", lambda: cleanup_owned_process_tree(
            root_pid=0, expected_lease_id="l", expected_gateway_instance_id="gw", deps=5)),  # type: ignore[arg-type]
        ("verified_groups", lambda: cleanup_owned_process_tree(
            root_pid=0, expected_lease_id="l", expected_gateway_instance_id="gw", deps=deps,
            verified_groups=["a"])),  # type: ignore[list-item]
    ]
    for argument, call in calls:
        with pytest.raises(AcpxError) as info:
            await call()
        _assert_usage(info.value, argument)
    assert not (tmp_path / "leases").exists()  # nothing was read or written
    # what the annotations allow still works: any iterable of ids, a Fraction of a second
    from fractions import Fraction

    result = await reap_open_leases("gw", store, deps=deps, grace=Fraction(1, 2),
                                    protected_lease_ids=(x for x in ["a", "b"]))
    assert result.terminated_pids == []


async def test_lease_store_bad_state_is_a_usage_error(tmp_path: Path) -> None:
    """An unknown state name is refused before the file is touched, even for an unknown id
    (it used to be a bare ValueError from the enum, or silently ignored)."""
    from acpx_trio import LeaseState, LeaseStore, ProcessLease
    from acpx_trio.lowlevel import SyncLeaseStore, new_lease

    store = LeaseStore(tmp_path)
    lease = new_lease(gateway_instance_id="gw", session_key="k", wrapper_root=str(tmp_path),
                      command="agent")
    await store.save(lease)
    before = store.path.read_bytes()
    for call in (
        lambda: store.mark_state(lease.lease_id, "bogus"),
        lambda: store.mark_state("unknown-id", "bogus"),
        lambda: store.mark_states({lease.lease_id: "CLOSED"}),  # type: ignore[dict-item]
    ):
        with pytest.raises(AcpxError) as info:
            await call()
        _assert_usage(info.value, "state")
    with pytest.raises(AcpxError) as info:
        SyncLeaseStore(tmp_path).mark_state(lease.lease_id, 3)  # type: ignore[arg-type]
    _assert_usage(info.value, "state")
    # ids, leases and gateway filters that are not ones: refused before the file is read
    for call, argument in (
        (lambda: store.mark_state("", "closed"), "lease_id"),
        (lambda: store.load(5), "lease_id"),  # type: ignore[arg-type]
        (lambda: store.save(None), "lease"),  # type: ignore[arg-type]
        (lambda: store.save({"leaseId": "x"}), "lease"),  # type: ignore[arg-type]
        (lambda: store.list_open(5), "gateway_instance_id"),  # type: ignore[arg-type]
        (lambda: store.mark_states([("x", "closed")]), "updates"),  # type: ignore[arg-type]
    ):
        with pytest.raises(AcpxError) as info:
            await call()
        _assert_usage(info.value, argument)
    for sync_call, argument in (
        (lambda: SyncLeaseStore(tmp_path).save(None), "lease"),  # type: ignore[arg-type]
        (lambda: SyncLeaseStore(tmp_path).load(""), "lease_id"),
    ):
        with pytest.raises(AcpxError) as info:
            sync_call()
        _assert_usage(info.value, argument)
    assert store.path.read_bytes() == before
    moved = await store.mark_state(lease.lease_id, "closing")  # the plain string still works
    assert isinstance(moved, ProcessLease) and moved.state is LeaseState.CLOSING


async def test_gateway_id_on_unusable_state_dirs(tmp_path: Path) -> None:
    """A state dir that is a file, one below a file, or an empty path: typed errors naming
    the path, never NotADirectoryError/TypeError (sync and async forms)."""
    from acpx_trio import StateFileError, resolve_gateway_instance_id
    from acpx_trio.lowlevel import resolve_gateway_instance_id_sync

    blocker = tmp_path / "file"
    blocker.write_text("x")
    for state_dir in (blocker, blocker / "below"):
        with pytest.raises(StateFileError) as info:
            await resolve_gateway_instance_id(state_dir)
        assert str(state_dir) in str(info.value) and info.value.path == str(state_dir)
        with pytest.raises(StateFileError):
            resolve_gateway_instance_id_sync(state_dir)
    for bad in ("", "  ", None):
        with pytest.raises(AcpxError) as info:
            await resolve_gateway_instance_id(bad)  # type: ignore[arg-type]
        _assert_usage(info.value, "state_dir")
    assert blocker.read_text() == "x"


def test_deeply_nested_config_is_a_config_error(tmp_path: Path) -> None:
    """A config file (JSON or TOML) or mapping nested 100,000 levels deep: ConfigError, not
    RecursionError (the parsers recurse, and so did repr() in the error message)."""
    from acpx_trio import ConfigError, load_config_file, resolve_config

    depth = 100_000
    json_file = tmp_path / "deep.json"
    json_file.write_text('{"agents": ' + "[" * depth + "]" * depth + "}")
    toml_file = tmp_path / "deep.toml"
    toml_file.write_text("agents = " + "[" * depth + "]" * depth + "\n")
    for path in (json_file, toml_file):
        with pytest.raises(ConfigError) as info:
            load_config_file(path)
        assert info.value.field == "<file>" and "deeply" in str(info.value)
    nested: dict[str, Any] = {}
    cur = nested
    for _ in range(depth):
        cur["x"] = {}
        cur = cur["x"]
    with pytest.raises(ConfigError) as cfg:
        resolve_config({"agents": nested}, tmp_path)
    assert cfg.value.field == "agents.x.x" and len(str(cfg.value)) < 300


def test_config_bad_values_name_the_field(tmp_path: Path) -> None:
    """Each value is validated against its own field's type (no parsing of msgspec's
    messages): the error names the field, down to an agent entry's key; a directly built
    AcpxConfig is checked at construction too."""
    from acpx_trio import AcpxConfig, ConfigError, resolve_config

    cases: list[tuple[dict[Any, Any], str]] = [
        ({"permissionMode": "approve-everything"}, "permissionMode"),
        ({"transcript": 1}, "transcript"),
        ({"transcriptKeep": 2.5}, "transcriptKeep"),
        ({"timeoutSeconds": "10"}, "timeoutSeconds"),
        ({"auth": {"m": 5}}, "auth"),
        ({"agents": {"a": {"command": "x", "args": "not-a-list"}}}, "agents.a.args"),
        ({"agents": {"a": {"command": 7}}}, "agents.a.command"),
        ({"agents": {"a": {"args": []}}}, "agents.a.command"),
        ({"agents": {"a": {"command": "x", "cmd": "y"}}}, "agents.a.cmd"),
        ({"agents": {"a": 5}}, "agents.a"),
        ({"mcpServers": {"s": {"command": "x", "env": {"K": 1}}}}, "mcpServers.s.env"),
        ({1: 2}, "1"),
    ]
    for raw, field in cases:
        with pytest.raises(ConfigError) as info:
            resolve_config(raw, tmp_path)
        assert info.value.field == field, (raw, info.value)
    with pytest.raises(ConfigError) as info:
        resolve_config({"auth": {"m": 5, "n": "sk-secret-value"}}, tmp_path)
    assert "sk-secret-value" not in str(info.value)
    direct: list[tuple[dict[str, Any], str]] = [
        ({"permission_mode": "bogus"}, "permissionMode"),
        ({"transcript_keep": 2.5}, "transcriptKeep"),
        ({"kill_grace_seconds": "soon"}, "killGraceSeconds"),
        ({"kill_grace_seconds": -5}, "killGraceSeconds"),
        ({"agents": {"a": "not-a-tuple"}}, "agents"),
        ({"ignored_legacy_fields": [1]}, "ignored_legacy_fields"),
    ]
    for kwargs, field in direct:
        with pytest.raises(ConfigError) as info:
            AcpxConfig(cwd="/", state_dir="/s", **kwargs)
        assert info.value.field == field, (kwargs, info.value)


async def test_open_acpx_runtime_bad_arguments(env: RuntimeEnv) -> None:
    from acpx_trio import LeaseStore, open_acpx_runtime

    store = LeaseStore(env.root / "leases")
    for kwargs, argument in (
        ({"config": {"agents": {}}}, "config"),
        ({"gateway_instance_id": ""}, "gateway_instance_id"),
        ({"lease_store": None}, "lease_store"),
        ({"lease_store": "x"}, "lease_store"),
    ):
        call: dict[str, Any] = {
            "config": env.config(), "gateway_instance_id": env.gateway_id,
            "lease_store": store, "wrapper_root": env.root, **kwargs,
        }
        with pytest.raises(AcpxError) as info:
            async with open_acpx_runtime(**call):
                pytest.fail("the body must not run")
        _assert_usage(info.value, argument)


async def test_open_acpx_runtime_never_raises_a_group(env: RuntimeEnv) -> None:
    """The body's own exception comes out as itself (AcpxError or not), a crashed task of
    the runtime as a typed error, never an ExceptionGroup; agents are gone either way."""
    from acpx_trio import AcpRuntimeError

    class BodyError(Exception):
        pass

    pids: list[int] = []
    for raised in (AcpRuntimeError("ACP_TURN_FAILED", "from the body"), BodyError("mine")):
        with pytest.raises(type(raised)) as info:
            async with env.runtime(agents=AGENTS, probeAgent="mock") as rt:
                handle = await rt.ensure_session(session_key="k", agent="mock")
                assert handle.agent_pid is not None
                pids.append(handle.agent_pid)
                raise raised
        assert info.value is raised and not isinstance(info.value, BaseExceptionGroup)

    async def crash() -> None:
        raise RuntimeError("a bug in a runtime task")

    with pytest.raises(AcpRuntimeError) as crashed:
        async with env.runtime(agents=AGENTS, probeAgent="mock") as rt:
            handle = await rt.ensure_session(session_key="k", agent="mock")
            assert handle.agent_pid is not None
            pids.append(handle.agent_pid)
            rt._nursery.start_soon(crash)  # a task of the runtime's own nursery fails
            await trio.sleep_forever()
    assert crashed.value.code == "ACP_RUNTIME_INTERNAL_ERROR"
    assert isinstance(crashed.value.__cause__, RuntimeError)
    for pid in pids:
        await wait_gone(pid)


async def test_bad_prompt_text_is_refused_and_the_agent_survives(env: RuntimeEnv) -> None:
    """A lone surrogate cannot be sent as UTF-8: refused before the first event with a typed
    error; the same agent process then answers the next prompt."""
    from acpx_trio import DoneEvent

    async with env.runtime(agents=AGENTS, probeAgent="mock") as rt:
        handle = await rt.ensure_session(session_key="k", agent="mock")
        pid = handle.agent_pid
        for text, why in (("bad \ud800 text", "surrogate"), (b"bytes", "must be a str")):
            with pytest.raises(AcpRuntimeError) as info:
                await _consume_turn_text(rt, handle, text)
            assert info.value.code == "ACP_INVALID_RUNTIME_OPTION" and why in str(info.value)
        status = await rt.get_status(handle=handle)
        assert status.alive and pid is not None and not pid_gone(pid)
        events = await _consume_turn_text(rt, handle, "hello again")
        assert isinstance(events[-1], DoneEvent)
        assert (await rt.ensure_session(session_key="k", agent="mock")).agent_pid == pid


async def _consume_turn_text(rt: AcpxRuntime, handle: AcpRuntimeHandle, text: Any) -> list[Any]:
    async with contextlib.aclosing(rt.run_turn(handle=handle, text=text)) as events:
        return [event async for event in events]


async def test_lease_store_on_unusable_dirs_raises_typed_errors(tmp_path: Path) -> None:
    """A lease dir that is a file, or below one: every call raises an AcpxError naming the
    path (StateFileError / LeaseStoreError), never a raw OSError."""
    from acpx_trio import LeaseStore
    from acpx_trio.lowlevel import new_lease

    blocker = tmp_path / "file"
    blocker.write_text("x")
    lease = new_lease(gateway_instance_id="gw", session_key="k", wrapper_root="/w",
                      command="agent")
    for lease_dir in (blocker, blocker / "below"):
        store = LeaseStore(lease_dir)
        for call in (
            lambda s=store: s.save(lease),
            lambda s=store: s.list_open("gw"),
            lambda s=store: s.load(lease.lease_id),
            lambda s=store: s.mark_state(lease.lease_id, "closed"),
        ):
            with pytest.raises(AcpxError) as info:
                await call()  # type: ignore[no-untyped-call]
            assert str(blocker) in str(info.value)
    assert blocker.read_text() == "x"


@contextlib.asynccontextmanager
async def _opened(how: str, root: Path) -> Any:
    from acpx_trio import (
        LeaseStore,
        open_acpx_runtime,
        open_runtime_service,
        resolve_config,
        resolve_gateway_instance_id,
    )

    if how == "service":
        async with open_runtime_service(workspace_dir=root, state_dir=root / "state",
                                        registry=BackendRegistry()) as service:
            yield service
        return
    config = resolve_config({}, str(root), host_state_dir=str(root / "state"))
    gateway = await resolve_gateway_instance_id(config.state_dir)
    async with open_acpx_runtime(config, gateway_instance_id=gateway,
                                 lease_store=LeaseStore(config.state_dir)) as runtime:
        yield runtime


@pytest.mark.parametrize("how", ["service", "runtime"])
async def test_a_group_the_body_raises_propagates_as_itself(tmp_path: Path, how: str) -> None:
    """A body whose own nursery failed: ``open_acpx_runtime`` turned the host's
    ``ExceptionGroup`` into ``ACP_RUNTIME_INTERNAL_ERROR`` (the host's ``except*`` no longer
    matched) and ``open_runtime_service`` wrapped it in one more group (an outside review)."""
    raised: list[BaseExceptionGroup[Exception]] = []

    async def boom() -> None:
        raise ValueError("the host's own bug")

    caught: BaseException | None = None
    try:
        async with _opened(how, tmp_path):
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(boom)
            except BaseExceptionGroup as group:
                raised.append(group)
                raise
    except BaseException as exc:  # what comes out is the point
        caught = exc
    assert raised and caught is raised[0], repr(caught)


@pytest.mark.parametrize(("argument", "value"), [
    ("workspace_dir", None), ("workspace_dir", 5), ("workspace_dir", ""),
    ("workspace_dir", "a\0b"), ("logger", object()), ("allowed_agents", 5),
    ("allowed_agents", "mock"), ("allowed_agents", [5]), ("runtime_factory", 5),
    ("registry", 5),
])
async def test_bad_service_arguments_are_usage_errors(tmp_path: Path, argument: str,
                                                      value: object) -> None:
    """``workspace_dir=None`` raised a raw ``TypeError`` and a logger without its methods an
    ``AttributeError`` (``state_dir`` was already checked): now the typed usage error naming
    the argument, before anything is created."""
    from acpx_trio import AcpxUsageError, open_runtime_service

    kwargs: dict[str, Any] = {"workspace_dir": tmp_path, "state_dir": tmp_path / "state",
                              "registry": BackendRegistry(), argument: value}
    with pytest.raises(AcpxUsageError, match=argument) as info:
        async with open_runtime_service(**kwargs):
            pytest.fail("the body must not run")
    assert info.value.code == "ACPX_USAGE"
    assert not (tmp_path / "state").exists()


async def test_bad_arguments_to_the_other_public_names_are_usage_errors(tmp_path: Path) -> None:
    """Each raised a raw ``TypeError`` or ``AttributeError`` from inside the library (an
    outside review): now :class:`AcpxUsageError` naming the argument."""
    from acpx_trio import (
        AcpRuntimeBackend,
        AcpxRuntimeService,
        AcpxUsageError,
        hash_command,
        load_config_file,
        resolve_config,
    )

    registry = BackendRegistry()
    calls: list[tuple[str, Callable[[], object]]] = [
        ("command", lambda: hash_command(5)),  # type: ignore[arg-type]
        ("command", lambda: hash_command(["a", "\ud800"])),
        ("path", lambda: load_config_file(5)),  # type: ignore[arg-type]
        ("workspace_dir", lambda: resolve_config({}, 5)),  # type: ignore[arg-type]
        ("backend", lambda: registry.register(None)),  # type: ignore[arg-type]
        ("backend.id", lambda: registry.register(AcpRuntimeBackend(5, object()))),  # type: ignore[arg-type]
        ("backend_id", lambda: registry.get(5)),  # type: ignore[arg-type]
        ("backend_id", lambda: registry.unregister(5)),  # type: ignore[arg-type]
        ("stop_timeout_seconds", lambda: AcpxRuntimeService(stop_timeout_seconds=-1)),
        ("stop_timeout_seconds", lambda: AcpxRuntimeService(stop_timeout_seconds=float("nan"))),
    ]
    for argument, call in calls:
        with pytest.raises(AcpxUsageError) as info:
            call()
        _assert_usage(info.value, argument)
    with pytest.raises(AcpxUsageError) as info:
        await AcpxRuntimeService(registry=registry).start(None)  # type: ignore[arg-type]
    _assert_usage(info.value, "ctx")
    assert not os.listdir(tmp_path)  # nothing was created


async def test_an_ensure_cut_off_by_stop_says_the_runtime_shut_down(tmp_path: Path) -> None:
    """An ``ensure_session`` still starting its agent when the service stopped raised
    ``ACP_SESSION_INIT_FAILED`` ("reader was cancelled ... killed by signal 15", 50/50 in
    an outside review): the cause is the shutdown, ``ACP_BACKEND_UNAVAILABLE``."""
    from acpx_trio import open_runtime_service

    started = tmp_path / "started"
    os.mkfifo(started)  # the agent writes a line into it once it runs
    agents = {"silent": {"command": "sh", "args": ["-c", f"echo >{started}; exec sleep 60"]}}
    errors: list[AcpxError] = []
    with trio.fail_after(60):
        async with open_runtime_service(workspace_dir=tmp_path, state_dir=tmp_path / "state",
                                        plugin_config={"agents": agents},
                                        registry=BackendRegistry()) as service:
            runtime = service.require_runtime()

            async def ensure() -> None:
                try:
                    await runtime.ensure_session(session_key="k", agent="silent")
                except AcpxError as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ensure)
                # the agent runs (its handshake never answers)
                await trio.to_thread.run_sync(started.read_bytes, abandon_on_cancel=True)
                await service.stop()
    assert [e.code for e in errors] == ["ACP_BACKEND_UNAVAILABLE"], errors
