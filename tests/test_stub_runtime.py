"""StubRuntime: scripted turns in trio time, cancel, call records, and a service under MockClock."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import pytest
import trio
import trio.testing

from acpx_trio import (
    AcpRuntimeError,
    AcpRuntimeEvent,
    AcpRuntimeHandle,
    AcpRuntimeProtocol,
    BackendRegistry,
    DoneEvent,
    ErrorEvent,
    TextDeltaEvent,
    ToolCallEvent,
    open_runtime_service,
)
from acpx_trio.testing import Delay, Fail, Hang, StubCall, StubRuntime
from acpx_trio.testing.logger import ListLogger


async def collect(
    runtime: AcpRuntimeProtocol, handle: AcpRuntimeHandle, text: str
) -> list[AcpRuntimeEvent]:
    async with contextlib.aclosing(runtime.run_turn(handle=handle, text=text)) as events:
        return [e async for e in events]


async def test_is_an_acp_runtime_and_echoes_by_default() -> None:
    stub = StubRuntime()
    assert isinstance(stub, AcpRuntimeProtocol)
    handle = await stub.ensure_session(session_key="s", agent="mock")
    assert await stub.ensure_session(session_key="s", agent="mock") == handle
    events = await collect(stub, handle, "hi")
    assert events == [TextDeltaEvent(text="echo: hi"), DoneEvent(stop_reason="end_turn")]
    assert [c.method for c in stub.calls] == ["ensure_session", "ensure_session", "run_turn"]
    assert stub.calls_to("run_turn")[0].args["text"] == "hi"
    assert stub.calls_to("run_turn")[0].session_key == "s"


async def test_script_plays_in_trio_time(autojump_clock: trio.testing.MockClock) -> None:
    tool = ToolCallEvent(text="ls", tool_call_id="t1", status="pending", title="ls")
    stub = StubRuntime(
        [TextDeltaEvent(text="a"), Delay(10), tool, Delay(5), TextDeltaEvent(text="b")]
    )
    handle = await stub.ensure_session(session_key="s", agent="mock")
    start = trio.current_time()
    seen: list[tuple[float, AcpRuntimeEvent]] = []
    async with contextlib.aclosing(stub.run_turn(handle=handle, text="x")) as events:
        async for event in events:
            seen.append((trio.current_time() - start, event))
    assert seen == [
        (0.0, TextDeltaEvent(text="a")),
        (10.0, tool),
        (15.0, TextDeltaEvent(text="b")),
        (15.0, DoneEvent(stop_reason="end_turn")),
    ]


async def test_queued_scripts_and_callable_script() -> None:
    stub = StubRuntime(lambda call: [TextDeltaEvent(text=call.args["text"].upper())])
    failed = ErrorEvent(message="nope", code="ACP_TURN_FAILED")
    stub.push_script(failed, TextDeltaEvent(text="never"))
    handle = await stub.ensure_session(session_key="s", agent="mock")
    assert await collect(stub, handle, "one") == [failed]
    assert await collect(stub, handle, "two") == [
        TextDeltaEvent(text="TWO"), DoneEvent(stop_reason="end_turn"),
    ]


async def test_fail_item_raises_and_fail_next_fails_a_call() -> None:
    stub = StubRuntime([TextDeltaEvent(text="a"), Fail(code="ACP_TURN_TIMEOUT", message="slow")])
    handle = await stub.ensure_session(session_key="s", agent="mock")
    with pytest.raises(AcpRuntimeError) as info:
        await collect(stub, handle, "x")
    assert info.value.code == "ACP_TURN_TIMEOUT"
    stub.fail_next("ensure_session", AcpRuntimeError("ACP_SESSION_INIT_FAILED", "boom"))
    with pytest.raises(AcpRuntimeError, match="boom"):
        await stub.ensure_session(session_key="t", agent="mock")
    await stub.ensure_session(session_key="t", agent="mock")  # only the next call fails


async def test_cancel_ends_a_running_turn_with_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stub = StubRuntime([TextDeltaEvent(text="first"), Hang(), TextDeltaEvent(text="never")])
    handle = await stub.ensure_session(session_key="s", agent="mock")
    seen: list[AcpRuntimeEvent] = []
    async with contextlib.aclosing(stub.run_turn(handle=handle, text="x")) as events:
        async for event in events:
            seen.append(event)
            if event == TextDeltaEvent(text="first"):
                status = await stub.get_status(handle=handle)
                assert status.summary == "running"
                await stub.cancel(handle=handle, reason="user")
    assert seen == [TextDeltaEvent(text="first"), DoneEvent(stop_reason="cancelled")]
    assert (await stub.get_status(handle=handle)).summary == "idle"
    assert stub.calls_to("cancel")[0].args == {"reason": "user"}


async def test_cancel_from_another_task_cuts_a_delay_short(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stub = StubRuntime([Delay(3600), TextDeltaEvent(text="late")])
    handle = await stub.ensure_session(session_key="s", agent="mock")
    async with trio.open_nursery() as nursery:
        results: list[list[AcpRuntimeEvent]] = []

        async def consume() -> None:
            results.append(await collect(stub, handle, "x"))

        nursery.start_soon(consume)
        await stub.wait_for_call("run_turn")
        start = trio.current_time()
        await stub.cancel(handle=handle)
    assert results == [[DoneEvent(stop_reason="cancelled")]]
    assert trio.current_time() == start


async def test_busy_unknown_dead_and_closed_sessions(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stub = StubRuntime([Hang()])
    handle = await stub.ensure_session(session_key="s", agent="mock")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, stub, handle, "x")
        await stub.wait_for_call("run_turn")
        busy = await collect(stub, handle, "y")
        assert [e.code for e in busy if isinstance(e, ErrorEvent)] == ["ACP_SESSION_BUSY"]
        stub.kill_session("s")
    assert (await stub.get_status(handle=handle)).alive is False
    assert await stub.sweep_dead_sessions() == 1
    with pytest.raises(AcpRuntimeError) as gone:
        await collect(stub, handle, "z")
    assert gone.value.code == "ACP_SESSION_NOT_FOUND"
    fresh = await stub.ensure_session(session_key="s", agent="mock")
    assert fresh.backend_session_id != handle.backend_session_id
    await stub.close(handle=fresh, reason="done")
    assert stub.sessions == {}
    await stub.aclose()
    await stub.aclose()
    assert not stub.is_healthy()
    with pytest.raises(AcpRuntimeError) as info:
        await stub.ensure_session(session_key="s", agent="mock")
    assert info.value.code == "ACP_BACKEND_UNAVAILABLE"


async def test_calls_are_msgspec_structs() -> None:
    import msgspec

    stub = StubRuntime()
    handle = await stub.ensure_session(session_key="s", agent="mock", cwd="/w")
    await stub.set_mode(handle=handle, mode="plan")
    await stub.set_config_option(handle=handle, key="model", value="x")
    status = await stub.get_status(handle=handle)
    assert status.current_mode == "plan" and status.details["options"] == {"model": "x"}
    decoded = msgspec.json.decode(msgspec.json.encode(stub.calls), type=list[StubCall])
    assert [c.method for c in decoded] == [
        "ensure_session", "set_mode", "set_config_option", "get_status",
    ]
    assert decoded[0].args["cwd"] == "/w"


async def test_service_with_stub_runs_an_hour_of_virtual_time_without_warnings(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stubs: list[StubRuntime] = []

    def factory(params: object) -> StubRuntime:
        script = [TextDeltaEvent(text="thinking"), Delay(30), TextDeltaEvent(text="ok")]
        stubs.append(StubRuntime(script))
        return stubs[-1]

    logger = ListLogger()
    caplog.set_level(logging.WARNING)
    start = trio.current_time()
    async with open_runtime_service(
        workspace_dir=tmp_path / "ws",
        state_dir=tmp_path / "state",
        logger=logger,
        runtime_factory=factory,
        registry=BackendRegistry(),
    ) as service:
        runtime = service.runtime
        assert runtime is stubs[0]
        for i in range(3):
            handle = await runtime.ensure_session(session_key=f"s{i}", agent="mock")
            events = await collect(runtime, handle, f"turn {i}")
            assert events[-1] == DoneEvent(stop_reason="end_turn")
        await trio.sleep(3600)
        assert trio.current_time() - start >= 3690
    assert service.runtime is None
    assert stubs[0].closed
    # the sweep ran periodically (default every 30 s) over the hour, then aclose was called
    assert len(stubs[0].calls_to("sweep_dead_sessions")) >= 100
    assert stubs[0].calls[-1].method == "aclose"
    assert logger.at("warning") == [] and logger.at("error") == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_testing_exports_resolve_and_are_documented() -> None:
    import inspect

    import acpx_trio.testing

    for name in acpx_trio.testing.__all__:
        value = getattr(acpx_trio.testing, name)
        assert inspect.getdoc(value), name


async def test_arguments_are_checked_as_the_real_runtime_checks_them() -> None:
    """The stub took what the real runtime refuses (``text=None``, ``session_key=""`` or a
    number) and turned a non-handle into a raw ``AttributeError``; ``run_turn`` had no
    ``meta``; a list given to ``push_script`` became an "event" (an outside review).  Now the
    same typed errors as :class:`~acpx_trio.AcpxRuntime`, from the same checks."""
    stub = StubRuntime()
    for key, code in (("", "ACP_SESSION_INIT_FAILED"), (1, "ACP_INVALID_RUNTIME_OPTION")):
        with pytest.raises(AcpRuntimeError) as info:
            await stub.ensure_session(session_key=key, agent="mock")  # type: ignore[arg-type]
        assert info.value.code == code
    handle = await stub.ensure_session(session_key="k", agent="mock")
    bad_turns = [
        {"handle": None, "text": "hi"}, {"handle": "x", "text": "hi"},
        {"handle": handle, "text": None}, {"handle": handle, "text": "hi", "mode": "nope"},
        {"handle": handle, "text": "hi", "meta": "not an object"},
    ]
    for kwargs in bad_turns:
        for method in (stub.run_turn, stub.run_turn_batches):
            with pytest.raises(AcpRuntimeError) as info:
                async with contextlib.aclosing(method(**kwargs)) as events:  # type: ignore[arg-type]
                    async for _event in events:
                        pass
            assert info.value.code == "ACP_INVALID_RUNTIME_OPTION", (method, kwargs)
    events = await collect(stub, handle, "hi")  # the session is untouched
    assert events[-1] == DoneEvent(stop_reason="end_turn")
    async with contextlib.aclosing(stub.run_turn(handle=handle, text="hi",
                                                 meta={"traceparent": "t"})) as turn:
        assert [e async for e in turn][-1] == DoneEvent(stop_reason="end_turn")
    assert stub.calls_to("run_turn")[-1].args["meta"] == {"traceparent": "t"}
    with pytest.raises(TypeError, match="push_script"):
        stub.push_script([TextDeltaEvent(text="x")])  # type: ignore[arg-type]
    # the rest of an outside review's matrix (stub against real runtime, same calls)
    with pytest.raises(AcpRuntimeError) as info:
        await stub.prepare_fresh_session(session_key=5)  # type: ignore[arg-type]
    assert info.value.code == "ACP_INVALID_RUNTIME_OPTION"
    for discard in ("yes", 0):
        with pytest.raises(AcpRuntimeError) as info:
            await stub.close(handle=handle, discard_persistent_state=discard)  # type: ignore[arg-type]
        assert info.value.code == "ACP_INVALID_RUNTIME_OPTION"
    await stub.close(handle=handle, reason="done")
    with pytest.raises(AcpRuntimeError) as info:
        await stub.get_capabilities(handle=handle)
    assert info.value.code == "ACP_SESSION_NOT_FOUND"


async def test_every_handle_and_text_argument_is_checked_as_the_real_runtime_checks_it() -> None:
    """``cancel``, ``close``, ``get_status``, ``set_mode``, ``set_config_option`` and
    ``get_capabilities`` given something that is not a handle raised a raw
    ``AttributeError`` (a second outside review): ``ACP_INVALID_RUNTIME_OPTION`` now, as
    from the real runtime, and so for a reason, mode, key or value that is not text."""
    stub = StubRuntime()
    handle = await stub.ensure_session(session_key="k", agent="mock")
    calls = [
        lambda: stub.cancel(handle="x"),  # type: ignore[arg-type]
        lambda: stub.close(handle="x"),  # type: ignore[arg-type]
        lambda: stub.get_status(handle="x"),  # type: ignore[arg-type]
        lambda: stub.set_mode(handle="x", mode="plan"),  # type: ignore[arg-type]
        lambda: stub.set_config_option(handle="x", key="k", value="v"),  # type: ignore[arg-type]
        lambda: stub.get_capabilities(handle="x"),  # type: ignore[arg-type]
        lambda: stub.cancel(handle=handle, reason=3),  # type: ignore[arg-type]
        lambda: stub.close(handle=handle, reason=None),  # type: ignore[arg-type]
        lambda: stub.set_mode(handle=handle, mode=None),  # type: ignore[arg-type]
        lambda: stub.set_config_option(handle=handle, key=1, value="v"),  # type: ignore[arg-type]
        lambda: stub.set_config_option(handle=handle, key="k", value=2),  # type: ignore[arg-type]
    ]
    for index, call in enumerate(calls):
        with pytest.raises(AcpRuntimeError) as info:
            await call()
        assert info.value.code == "ACP_INVALID_RUNTIME_OPTION", index
    assert (await stub.get_status(handle=handle)).alive  # untouched


async def test_cancel_with_the_handle_of_an_earlier_session_leaves_the_new_turn_alone() -> None:
    """The real runtime's ``cancel`` leaves a session of the same key that replaced the
    handle's alone; the stub cancelled its turn (a second outside review)."""
    stub = StubRuntime(script=[Hang()])
    old = await stub.ensure_session(session_key="k", agent="mock")
    await stub.close(handle=old, discard_persistent_state=True)
    new = await stub.ensure_session(session_key="k", agent="mock")
    assert new.backend_session_id != old.backend_session_id
    async with trio.open_nursery() as nursery:
        ends: list[object] = []

        async def turn() -> None:
            ends.extend(await collect(stub, new, "hi"))

        nursery.start_soon(turn)
        await trio.testing.wait_all_tasks_blocked()
        await stub.cancel(handle=old)
        await trio.testing.wait_all_tasks_blocked()
        assert ends == []  # still running
        await stub.cancel(handle=new)
    assert ends[-1] == DoneEvent(stop_reason="cancelled")
