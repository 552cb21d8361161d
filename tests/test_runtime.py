"""AcpxRuntime with real mock-agent processes: streaming, cancel, crash, timeout, bad output."""

from __future__ import annotations

import contextlib
import os
import signal

import pytest
import trio
from _runtime_helpers import (
    MOCK,
    RuntimeEnv,
    output,
    pid_gone,
    run,
    running_turn,
    wait_gone,
    wait_prompt_sent,
    wait_reader_paused,
    wait_until,
)

from acpx_trio._errors import AcpRuntimeError
from acpx_trio._events import (
    AcpRuntimeHandle,
    DoneEvent,
    ErrorEvent,
    PlanItem,
    StatusEvent,
    TextDeltaEvent,
    ToolCallEvent,
)
from acpx_trio._runtime.runtime import AcpxRuntime
from acpx_trio._store.lease_model import LeaseState


async def test_echo_streams_text_then_done(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s1", agent="mock")
            assert handle.agent == "mock" and handle.agent_pid and handle.lease_id
            events = await run(rt, handle, "hello there")
        assert events == [
            TextDeltaEvent(text="hello there", stream="output", tag="agent_message_chunk"),
            DoneEvent(stop_reason="end_turn"),
        ]
        lease = await env.lease(handle.lease_id)
        assert lease.state is LeaseState.OPEN and lease.root_pid == handle.agent_pid
        assert lease.root_start_ticks is not None and lease.owner_pid == os.getpid()
    lease = await env.lease(handle.lease_id)
    assert lease.state is LeaseState.CLOSED
    assert pid_gone(handle.agent_pid)


async def test_chunks_arrive_in_order(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            events = await run(rt, handle, "/chunks 600")
        texts = [e.text for e in events if isinstance(e, TextDeltaEvent)]
        assert texts == [f"chunk {i}\n" for i in range(600)]
        assert events[-1] == DoneEvent(stop_reason="end_turn")


async def test_thought_and_tool_events(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            thought = await run(rt, handle, "/think pondering")
            tool = await run(rt, handle, "/tool")
        assert thought[0] == TextDeltaEvent(
            text="pondering", stream="thought", tag="agent_thought_chunk"
        )
        assert output(thought) == "pondering"
        calls = [e for e in tool if isinstance(e, ToolCallEvent)]
        assert [c.tag for c in calls] == ["tool_call", "tool_call_update"]
        assert calls[0].title == "mock tool: read README.md" and calls[0].status == "pending"
        assert calls[1].status == "completed"
        assert calls[0].tool_call_id == calls[1].tool_call_id
        assert tool[-1] == DoneEvent(stop_reason="end_turn")


async def _cancel_running_turn(
    rt: AcpxRuntime, handle: AcpRuntimeHandle, text: str
) -> tuple[list[object], float]:
    """Run ``text`` on session ``s`` and cancel it once its prompt was sent; the turn's
    events and the seconds from the cancel until the turn ended."""
    events: list[object] = []

    async def consume() -> None:
        events.extend(await run(rt, handle, text))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await wait_prompt_sent(rt, "s")
        started = trio.current_time()
        await rt.cancel(handle=handle, reason="test")
    return events, trio.current_time() - started


async def _cancel_a_sleeping_turn(rt: AcpxRuntime, agent: str = "mock") -> None:
    """Cancel a running ``/sleep`` turn of session ``s`` (on ``agent``): it ends
    ``done(cancelled)`` once the agent answered (no kill wait), and the session is the same
    live one."""
    handle = await rt.ensure_session(session_key="s", agent=agent)
    with trio.fail_after(15):
        events, waited = await _cancel_running_turn(rt, handle, "/sleep 20000")
        assert waited < 2.0  # the agent answered; no kill wait
        assert events == [DoneEvent(stop_reason="cancelled")]
        second = await run(rt, handle, "/pid")
    assert output(second) == f"pid={handle.agent_pid}"
    assert (await rt.get_status(handle=handle)).alive


async def test_cancel_during_sleep_keeps_session_usable(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        await _cancel_a_sleeping_turn(rt)


@pytest.mark.parametrize("reason", ["end_turn", "refusal"])
async def test_a_cancel_answered_with_another_stop_reason_still_ends_cancelled(
    env: RuntimeEnv, reason: str
) -> None:
    """The spec asks an agent to answer a cancelled prompt ``cancelled``; one that answers
    otherwise does not turn the caller's cancel into a normal end."""
    agents = {"lax": {"command": MOCK[0], "args": [*MOCK[1:], "--cancel-stop-reason", reason]}}
    async with env.runtime(agents=agents) as rt:
        await _cancel_a_sleeping_turn(rt, "lax")


async def _turn_running(rt: AcpxRuntime, handle: AcpRuntimeHandle) -> bool:
    return bool((await rt.get_status(handle=handle)).details["turn_running"])


async def test_second_concurrent_turn_is_busy(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        handle = await rt.ensure_session(session_key="s", agent="mock")
        first: list[object] = []

        async def consume() -> None:
            first.extend(await run(rt, handle, "/sleep 20000"))

        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                await wait_until(
                    lambda: _turn_running(rt, handle)  # the public view of the running turn
                )
                busy = await run(rt, handle, "hello")
                await rt.cancel(handle=handle)
        assert len(busy) == 1 and isinstance(busy[0], ErrorEvent)
        assert busy[0].code == "ACP_SESSION_BUSY" and busy[0].retryable
        assert first == [DoneEvent(stop_reason="cancelled")]


async def test_crash_mid_turn_fails_turn_and_next_ensure_starts_fresh(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            events = await run(rt, handle, "/crash")
            error = events[-1]
            assert isinstance(error, ErrorEvent) and error.code == "ACP_TURN_FAILED"
            assert "exited with status 1" in error.message
            assert "/crash: exiting" in error.message  # stderr tail
            assert (await env.lease(handle.lease_id)).state is LeaseState.CLOSED
            assert not (await rt.get_status(handle=handle)).alive
            again = await rt.ensure_session(session_key="s", agent="mock")
        assert again.agent_pid != handle.agent_pid
        assert output(await run(rt, again, "/pid")) == f"pid={again.agent_pid}"


async def test_hang_hits_turn_timeout_and_tree_is_killed(env: RuntimeEnv) -> None:
    async with env.runtime(timeoutSeconds=3.0) as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            events = await run(rt, handle, "/hang")
        assert len(events) == 1 and isinstance(events[0], ErrorEvent)
        assert events[0].code == "ACP_TURN_TIMEOUT"
        assert pid_gone(handle.agent_pid)
        assert (await env.lease(handle.lease_id)).state is LeaseState.CLOSED


async def test_garbage_line_is_tolerated(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            events = await run(rt, handle, "/garbage still fine")
            status = await rt.get_status(handle=handle)
        assert output(events) == "still fine"
        assert events[-1] == DoneEvent(stop_reason="end_turn")
        assert status.alive and status.details["junk_lines"] == 1


async def test_huge_line_is_a_typed_error(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with trio.fail_after(60):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            events = await run(rt, handle, f"/huge {9 * 1024 * 1024}")
        assert isinstance(events[-1], ErrorEvent)
        assert events[-1].code == "ACP_LINE_TOO_LONG"
        assert pid_gone(handle.agent_pid)


async def test_status_events_for_mode_updates(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            caps = await rt.get_capabilities(handle=handle)
            assert "session/set_mode" in caps.controls and caps.load_session
            assert "model" in caps.config_option_keys
            await rt.set_mode(handle=handle, mode="plan")
            assert (await rt.get_status(handle=handle)).current_mode == "plan"
            assert output(await run(rt, handle, "/mode")) == "mode=plan"
            with pytest.raises(AcpRuntimeError) as info:
                await rt.set_mode(handle=handle, mode="bogus")
            assert info.value.code == "ACP_INVALID_RUNTIME_OPTION"
            # the choices, as for a config option (the agent's own error named none)
            assert "offers: default, plan, yolo" in info.value.message, info.value.message
            await rt.set_config_option(handle=handle, key="model", value="mock-large")
            with pytest.raises(AcpRuntimeError) as info:
                await rt.set_config_option(handle=handle, key="nope", value="x")
            assert info.value.code == "ACP_INVALID_RUNTIME_OPTION"


async def test_dead_agent_is_replaced_on_ensure(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            assert handle.agent_pid is not None
            os.kill(handle.agent_pid, signal.SIGKILL)
            await wait_gone(handle.agent_pid)  # the kill itself is asynchronous
            again = await rt.ensure_session(session_key="s", agent="mock")
            assert again.agent_pid != handle.agent_pid
            assert again.backend_session_id == handle.backend_session_id  # session/load
            assert output(await run(rt, again, "hi")) == "hi"
        assert (await env.lease(handle.lease_id)).state is LeaseState.CLOSED


async def test_sweep_dead_sessions(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            other = await rt.ensure_session(session_key="t", agent="mock")
            assert handle.agent_pid is not None
            os.kill(handle.agent_pid, signal.SIGKILL)
            await wait_gone(handle.agent_pid)
            assert await rt.sweep_dead_sessions() == 1
            assert await rt.sweep_dead_sessions() == 0
            assert (await rt.get_status(handle=other)).alive
        assert (await env.lease(handle.lease_id)).state is LeaseState.CLOSED


async def test_unknown_status_kinds_map_to_status_events() -> None:
    from acpx_trio._acp import decode_session_update
    from acpx_trio._runtime.update_map import map_update

    event = map_update(decode_session_update(b'{"sessionUpdate":"brand_new","x":1}'))
    assert event == StatusEvent(text="brand_new update", tag="brand_new")
    plan = map_update(decode_session_update(
        b'{"sessionUpdate":"plan","entries":[{"content":"a","priority":"low","status":"pending"}]}'
    ))
    assert plan == StatusEvent(text="plan: [pending] a", tag="plan", plan=(
        PlanItem(content="a", priority="low", status="pending"),))
    assert map_update(decode_session_update(
        b'{"sessionUpdate":"user_message_chunk","content":{"type":"text","text":"x"}}'
    )) is None


async def test_agent_override_with_flags(env: RuntimeEnv) -> None:
    agents = {"slow": {"command": MOCK[0], "args": [*MOCK[1:], "--slow-start", "200"]}}
    async with env.runtime(agents=agents) as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent=" SLOW ")
            assert handle.agent == "slow"
            assert output(await run(rt, handle, "ok")) == "ok"


async def test_close_during_turn_ends_it_cancelled(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        handle = await rt.ensure_session(session_key="s", agent="mock")
        events: list[object] = []

        async def consume() -> None:
            events.extend(await run(rt, handle, "/sleep 30000"))

        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                await wait_prompt_sent(rt, "s")
                await rt.close(handle=handle, reason="user closed")
        assert events == [DoneEvent(stop_reason="cancelled")]
        assert handle.agent_pid is not None and pid_gone(handle.agent_pid)


async def test_control_call_while_consumer_lags(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            count = 0
            async with contextlib.aclosing(
                rt.run_turn(handle=handle, text="/flood 3000")
            ) as events:
                async for event in events:
                    count += isinstance(event, TextDeltaEvent)
                    if count == 10:
                        turn = running_turn(rt, "s")
                        if turn is not None:  # let the reader hit the high-water mark
                            await wait_reader_paused(turn)
                        await rt.set_mode(handle=handle, mode="plan")
            assert isinstance(event, DoneEvent) and count == 3000
            assert (await rt.get_status(handle=handle)).current_mode == "plan"


async def test_cancel_unanswered_kills_agent_after_bounded_wait(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        handle = await rt.ensure_session(session_key="s", agent="mock")
        with trio.fail_after(20):
            events, waited = await _cancel_running_turn(rt, handle, "/hang")
        assert events == [DoneEvent(stop_reason="cancelled")]
        assert 2.0 < waited < 10.0
        assert handle.agent_pid is not None and pid_gone(handle.agent_pid)
        assert (await env.lease(handle.lease_id)).state is LeaseState.CLOSED
        with trio.fail_after(30):
            again = await rt.ensure_session(session_key="s", agent="mock")
        assert again.agent_pid != handle.agent_pid
