"""Bad arguments at the runtime's public boundary are typed errors, never bare Python errors.

Every public coroutine of the runtime raises only ``AcpxError`` subclasses: an argument that
is not text (not a ``str``, a lone surrogate UTF-8 cannot carry, a NUL where a path or argv
is meant), a handle that is not one, a ``meta`` nested too deeply to encode, an agent command
that no ``exec`` takes.  Each case runs on a real runtime (``service.runtime``) with the
bundled mock agent; afterwards the session is the same live session and still works, and
(the autouse leak guard) no process is left."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from acpx_trio import (
    AcpRuntimeError,
    AcpRuntimeHandle,
    AcpxError,
    AcpxRuntime,
    ConfigError,
    DoneEvent,
    LeaseStore,
    open_acpx_runtime,
    open_runtime_service,
    resolve_config,
)

INVALID = "ACP_INVALID_RUNTIME_OPTION"

Call = Callable[[AcpxRuntime, AcpRuntimeHandle], Awaitable[Any]]


@pytest.fixture(autouse=True)
def _no_env_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("OPENCLAW_SKIP_ACPX_RUNTIME", "OPENCLAW_ACPX_RUNTIME_STARTUP_PROBE"):
        monkeypatch.delenv(key, raising=False)


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


async def _consume(events: Any) -> list[Any]:
    async with contextlib.aclosing(events) as stream:
        return [event async for event in stream]


async def _consume_batches(batches: Any) -> list[Any]:
    async with contextlib.aclosing(batches) as stream:
        return [event async for batch in stream for event in batch]


@contextlib.asynccontextmanager
async def _live_session(tmp_path: Path) -> AsyncIterator[tuple[Any, AcpRuntimeHandle]]:
    """A service's runtime with one live mock session ``k``; on leaving, checks that it is
    the same session (not replaced) and that a turn on it still completes."""
    (tmp_path / "ws").mkdir()
    async with open_runtime_service(
        workspace_dir=tmp_path / "ws", state_dir=tmp_path / "state",
        plugin_config={"killGraceSeconds": 0.5},
    ) as service:
        rt: Any = service.runtime  # the LazyAcpxRuntime a host is given
        handle = await rt.ensure_session(session_key="k", agent="mock")
        yield rt, handle
        with trio.fail_after(30):
            assert await rt.ensure_session(session_key="k", agent="mock") == handle
            assert (await rt.get_status(handle=handle)).alive
            events = await _consume(rt.run_turn(handle=handle, text="still here?"))
        assert isinstance(events[-1], DoneEvent), events[-1]


async def _expect(call: Awaitable[Any], code: str = INVALID) -> AcpxError:
    """``call`` raises an AcpxError with ``code`` (anything else fails the test)."""
    try:
        with trio.fail_after(30):
            await call
    except AcpxError as exc:
        assert exc.code == code, exc
        return exc
    except BaseException as exc:  # the bug: a bare Python error through the public API
        pytest.fail(f"raised {type(exc).__name__} (not an AcpxError): {exc!r}")
    pytest.fail("no error raised")


#: (what, the call, the argument the message names)
TEXT_CASES: list[tuple[str, Call, str]] = [
    ("ensure key=5", lambda rt, h: rt.ensure_session(session_key=5, agent="mock"),  # type: ignore[arg-type]
     "session_key"),
    ("ensure key=[]", lambda rt, h: rt.ensure_session(session_key=[], agent="mock"),  # type: ignore[arg-type]
     "session_key"),
    ("ensure key surrogate", lambda rt, h: rt.ensure_session(session_key="\ud800", agent="mock"),
     "session_key"),
    ("ensure agent=5", lambda rt, h: rt.ensure_session(session_key="k", agent=5),  # type: ignore[arg-type]
     "agent"),
    ("ensure agent surrogate", lambda rt, h: rt.ensure_session(session_key="k", agent="m\udcff"),
     "agent"),
    ("ensure cwd NUL", lambda rt, h: rt.ensure_session(session_key="k", agent="mock", cwd="a\x00"),
     "cwd"),
    ("ensure cwd=5", lambda rt, h: rt.ensure_session(session_key="k", agent="mock", cwd=5),  # type: ignore[arg-type]
     "cwd"),
    ("ensure cwd surrogate",
     lambda rt, h: rt.ensure_session(session_key="k", agent="mock", cwd="\udcff"), "cwd"),
    ("ensure resume surrogate", lambda rt, h: rt.ensure_session(
        session_key="k", agent="mock", resume_session_id="\ud800"), "resume_session_id"),
    ("ensure resume=5", lambda rt, h: rt.ensure_session(
        session_key="k", agent="mock", resume_session_id=5), "resume_session_id"),  # type: ignore[arg-type]
    ("fresh key surrogate", lambda rt, h: rt.prepare_fresh_session(session_key="\ud800"),
     "session_key"),
    ("fresh key=[]", lambda rt, h: rt.prepare_fresh_session(session_key=[]),  # type: ignore[arg-type]
     "session_key"),
    ("list agent=5", lambda rt, h: rt.list_sessions(agent=5), "agent"),  # type: ignore[arg-type]
    ("list cwd NUL", lambda rt, h: rt.list_sessions(agent="mock", cwd="\x00"), "cwd"),
    ("list cwd=5", lambda rt, h: rt.list_sessions(agent="mock", cwd=5), "cwd"),  # type: ignore[arg-type]
    ("logout agent=5", lambda rt, h: rt.logout(agent=5), "agent"),  # type: ignore[arg-type]
    ("delete agent=5", lambda rt, h: rt.delete_session(agent=5, session_id="s"),  # type: ignore[arg-type]
     "agent"),
    ("delete id surrogate", lambda rt, h: rt.delete_session(agent="mock", session_id="\ud800"),
     "session_id"),
    ("set_mode object", lambda rt, h: rt.set_mode(handle=h, mode=object()), "mode"),  # type: ignore[arg-type]
    ("set_mode surrogate", lambda rt, h: rt.set_mode(handle=h, mode="\ud800"), "mode"),
    ("set_config key object",
     lambda rt, h: rt.set_config_option(handle=h, key=object(), value="v"), "key"),  # type: ignore[arg-type]
    ("set_config value object",
     lambda rt, h: rt.set_config_option(handle=h, key="model", value=object()), "value"),  # type: ignore[arg-type]
    ("set_model surrogate", lambda rt, h: rt.set_model(handle=h, model="\ud800"), "model"),
    ("run_turn deep meta", lambda rt, h: _consume(
        rt.run_turn(handle=h, text="hi", meta={"a": _nested(5000)})), "meta"),
    ("run_turn_batches deep meta", lambda rt, h: _consume_batches(
        rt.run_turn_batches(handle=h, text="hi", meta={"a": _nested(5000)})), "meta"),
    ("run_turn text=5", lambda rt, h: _consume(rt.run_turn(handle=h, text=5)), "text"),  # type: ignore[arg-type]
    ("run_turn request_id surrogate", lambda rt, h: _consume(
        rt.run_turn(handle=h, text="hi", request_id="\ud800")), "request_id"),
    ("cancel reason object", lambda rt, h: rt.cancel(handle=h, reason=object()), "reason"),  # type: ignore[arg-type]
    ("close reason object", lambda rt, h: rt.close(handle=h, reason=object()), "reason"),  # type: ignore[arg-type]
    # a truthy non-bool was written into the session record, which could then not be read
    ("close discard='yes'", lambda rt, h: rt.close(handle=h, discard_persistent_state="yes"),  # type: ignore[arg-type]
     "discard_persistent_state"),
    ("close discard=0", lambda rt, h: rt.close(handle=h, discard_persistent_state=0),  # type: ignore[arg-type]
     "discard_persistent_state"),
]


@pytest.mark.parametrize(("call", "argument"), [(c, a) for _, c, a in TEXT_CASES],
                         ids=[what for what, _, _ in TEXT_CASES])
async def test_an_argument_that_is_not_text_is_refused_typed(
    tmp_path: Path, call: Call, argument: str
) -> None:
    async with _live_session(tmp_path) as (rt, handle):
        exc = await _expect(call(rt, handle))
        assert isinstance(exc, AcpRuntimeError)
        assert exc.message.startswith(argument), exc.message


async def test_a_deep_meta_is_refused_whatever_the_recursion_limit(tmp_path: Path) -> None:
    """The bound is a depth, not the interpreter's stack: with a recursion limit high enough
    to encode it, a meta 5,000 deep is still refused (the agent would have to parse it)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)
    try:
        async with _live_session(tmp_path) as (rt, handle):
            exc = await _expect(_consume(rt.run_turn(handle=handle, text="hi",
                                                     meta={"a": _nested(5000)})))
            assert "nested deeper than" in str(exc)
            shallow = await _consume(rt.run_turn(handle=handle, text="hi",
                                                 meta={"a": _nested(30)}))
            assert isinstance(shallow[-1], DoneEvent), shallow[-1]
    finally:
        sys.setrecursionlimit(limit)


#: every public method taking a handle
HANDLE_CALLS: dict[str, Callable[[AcpxRuntime, Any], Awaitable[Any]]] = {
    "run_turn": lambda rt, h: _consume(rt.run_turn(handle=h, text="hi")),
    "run_turn_batches": lambda rt, h: _consume_batches(rt.run_turn_batches(handle=h, text="hi")),
    "get_status": lambda rt, h: rt.get_status(handle=h),
    "cancel": lambda rt, h: rt.cancel(handle=h),
    "set_mode": lambda rt, h: rt.set_mode(handle=h, mode="plan"),
    "set_config_option": lambda rt, h: rt.set_config_option(handle=h, key="model", value="m"),
    "set_model": lambda rt, h: rt.set_model(handle=h, model="mock-small"),
    "get_capabilities": lambda rt, h: rt.get_capabilities(handle=h),
    "close": lambda rt, h: rt.close(handle=h),
}

BAD_HANDLES: dict[str, Callable[[AcpRuntimeHandle], object]] = {
    "None": lambda h: None,
    "dict": lambda h: msgspec.structs.asdict(h),
    "key=5": lambda h: msgspec.structs.replace(h, session_key=5),
    "key surrogate": lambda h: msgspec.structs.replace(h, session_key="\ud800"),
    "session id=None": lambda h: msgspec.structs.replace(h, backend_session_id=None),
}


@pytest.mark.parametrize("bad", list(BAD_HANDLES))
async def test_a_handle_that_is_not_one_is_refused_typed(tmp_path: Path, bad: str) -> None:
    async with _live_session(tmp_path) as (rt, handle):
        for name, call in HANDLE_CALLS.items():
            if name == "get_capabilities" and bad == "None":
                assert (await rt.get_capabilities(handle=None)).controls  # None: all controls
                continue
            exc = await _expect(call(rt, BAD_HANDLES[bad](handle)))
            assert "handle" in exc.message, (name, exc.message)


# -- agent commands no exec takes ---------------------------------------------------------


@pytest.mark.parametrize(("agent", "field"), [
    ({"command": sys.executable, "args": ["\x00"]}, "agents.x.args"),
    ({"command": sys.executable, "args": ["ok", "\ud800"]}, "agents.x.args"),
    ("py\udcffthon", "agents.x.command"),
    ({"command": "pyth\x00on"}, "agents.x.command"),
])
async def test_config_refuses_an_agent_command_no_exec_takes(
    tmp_path: Path, agent: Any, field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config({"agents": {"x": agent}}, tmp_path)
    assert info.value.field == field
    with pytest.raises(ConfigError) as info:
        async with open_runtime_service(workspace_dir=tmp_path, state_dir=tmp_path / "state",
                                        plugin_config={"agents": {"x": agent}}):
            raise AssertionError("started with an agent command no exec takes")
    assert info.value.field == field


@pytest.mark.parametrize("argv", [
    (sys.executable, "\x00"),  # was ValueError from the spawn
    ("py\udcffthon",),  # was UnicodeEncodeError from the lease's command hash
    ("pyth\x00on",),  # the command itself: the same code as ever
], ids=["NUL in args", "surrogate in command", "NUL in command"])
async def test_spawning_a_command_no_exec_takes_is_spawn_failed(
    tmp_path: Path, gateway_id: str, argv: tuple[str, ...]
) -> None:
    """A command given past the config (an embedder's AcpxConfig, the CLI's
    --agent-command) fails at spawn with ACP_AGENT_SPAWN_FAILED, before any lease is
    written; the runtime keeps working."""
    (tmp_path / "ws").mkdir()
    config = msgspec.structs.replace(
        resolve_config({"stateDir": str(tmp_path / "state"), "killGraceSeconds": 0.5},
                       tmp_path / "ws"),
        agents={"x": argv})
    leases = LeaseStore(tmp_path / "leases")
    async with open_acpx_runtime(config, gateway_instance_id=gateway_id,
                                 lease_store=leases) as rt:
        exc = await _expect(rt.ensure_session(session_key="k", agent="x"),
                            "ACP_AGENT_SPAWN_FAILED")
        assert "could not start the agent" in exc.message
        assert await leases.list_all() == []  # refused before a lease was written
        handle = await rt.ensure_session(session_key="k", agent="mock")
        events = await _consume(rt.run_turn(handle=handle, text="hi"))
        assert isinstance(events[-1], DoneEvent)


# -- the property --------------------------------------------------------------------------


def _is_text(value: object, *, path: bool = False) -> bool:
    if not isinstance(value, str) or (path and "\x00" in value):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_ANY_TEXT = st.text(st.characters(codec=None, categories=None))  # surrogates and NULs too
_ANYTHING = _ANY_TEXT | st.none() | st.integers() | st.binary() | st.lists(st.text(), max_size=2)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=_ANYTHING, cwd=_ANYTHING, resume=_ANYTHING)
@example(key="\ud800", cwd=None, resume=None)
@example(key="k", cwd="a\x00", resume=None)
@example(key="k", cwd=None, resume="\udcff")
@example(key=" ", cwd=None, resume=None)
def test_ensure_and_fresh_argument_checking_property(
    tmp_path_factory: pytest.TempPathFactory, key: object, cwd: object, resume: object
) -> None:
    """Whatever the arguments, ensure_session and prepare_fresh_session raise an AcpxError
    with the code the arguments call for, and start nothing (the agent is unknown: nothing
    could start)."""
    root = tmp_path_factory.mktemp("prop")

    async def main() -> None:
        config = resolve_config({"stateDir": str(root / "state"),
                                 "containment": "process-group"}, root)
        async with open_acpx_runtime(config, gateway_instance_id="gw-test-args-property",
                                     lease_store=LeaseStore(root / "leases")) as rt:
            with pytest.raises(AcpxError) as info:
                await rt.ensure_session(session_key=key, agent="no-such-agent",  # type: ignore[arg-type]
                                        cwd=cwd, resume_session_id=resume)  # type: ignore[arg-type]
            if key is None or (isinstance(key, str) and _is_text(key) and not key.strip()):
                want = "ACP_SESSION_INIT_FAILED"
            elif not _is_text(key) or not (cwd is None or _is_text(cwd, path=True)) or not (
                    resume is None or _is_text(resume)):
                want = INVALID
            else:
                want = "ACP_AGENT_UNKNOWN"
            assert info.value.code == want, info.value
            if _is_text(key):
                await rt.prepare_fresh_session(session_key=key)  # type: ignore[arg-type]
            else:
                with pytest.raises(AcpRuntimeError) as fresh:
                    await rt.prepare_fresh_session(session_key=key)  # type: ignore[arg-type]
                assert fresh.value.code == INVALID

    trio.run(main)
