"""AcpxRuntime: no process survives; permissions and fs confinement end to end."""

from __future__ import annotations

import contextlib
import os
import re

import pytest
import trio
from _runtime_helpers import (
    RuntimeEnv,
    output,
    pid_gone,
    processes_of_gateway,
    run,
    wait_reader_paused,
)

from acpx_trio import AcpRuntimeError
from acpx_trio._events import DoneEvent, ErrorEvent, TextDeltaEvent
from acpx_trio._runtime.live_session import HIGH_WATER
from acpx_trio._runtime.turn_queue import HIGH_WATER_BYTES
from acpx_trio._store.lease_model import LeaseState


async def test_grandchild_and_daemon_are_gone_after_close(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            grand_text = output(await run(rt, handle, "/spawn-grandchild"))
            daemon_text = output(await run(rt, handle, "/daemonize"))
            grand = int(re.findall(r"pid=(\d+)", grand_text)[0])
            daemon = int(re.findall(r"pid=(\d+)", daemon_text)[0])
            assert not pid_gone(grand) and not pid_gone(daemon)
            assert os.getsid(daemon) != os.getsid(handle.agent_pid or 0)  # escaped the group
            await rt.close(handle=handle, reason="test")
        assert pid_gone(grand) and pid_gone(daemon)
        assert handle.agent_pid is not None and pid_gone(handle.agent_pid)
        assert (await env.lease(handle.lease_id)).state is LeaseState.CLOSED
        assert processes_of_gateway(env.gateway_id) == []


async def test_crash_leaves_no_grandchild(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            text = output(await run(rt, handle, "/spawn-grandchild"))
            grand = int(text.split("pid=")[1])
            events = await run(rt, handle, "/crash")
        assert isinstance(events[-1], ErrorEvent)
        assert pid_gone(grand)


async def test_cancelled_scope_mid_turn_leaves_no_process(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        handle = await rt.ensure_session(session_key="s", agent="mock")
        seen: list[object] = []
        with trio.fail_after(20):
            with trio.move_on_after(0.5) as scope:
                async with contextlib.aclosing(
                    rt.run_turn(handle=handle, text="/sleep 30000")
                ) as events:
                    async for event in events:
                        seen.append(event)
            assert scope.cancelled_caught and seen == []
            # the cancel settles in the background; the next turn waits for it, then runs
            # on the same agent: the turn was cancelled and the session stayed usable
            assert output(await run(rt, handle, "/pid")) == f"pid={handle.agent_pid}"
            status = await rt.get_status(handle=handle)
            assert status.alive and not status.details["turn_running"]
    assert handle.agent_pid is not None and pid_gone(handle.agent_pid)


async def test_whole_runtime_scope_cancelled_mid_turn(env: RuntimeEnv) -> None:
    pids: list[int] = []
    with trio.fail_after(30), trio.move_on_after(2.0):
        async with env.runtime() as rt:
            handle = await rt.ensure_session(session_key="s", agent="mock")
            assert handle.agent_pid is not None
            pids.append(handle.agent_pid)
            await run(rt, handle, "/sleep 60000")
    assert pids and pid_gone(pids[0])
    leases = await env.lease_store.list_all()
    assert [x.state for x in leases] == [LeaseState.CLOSED]


async def test_abandoned_turn_is_cancelled_and_session_reusable(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            async with contextlib.aclosing(
                rt.run_turn(handle=handle, text="/flood 20000")
            ) as events:
                async for _event in events:
                    break
            assert output(await run(rt, handle, "/pid")) == f"pid={handle.agent_pid}"


async def test_abandoned_oneshot_turn_closes_session(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock", mode="oneshot")
            async with contextlib.aclosing(
                rt.run_turn(handle=handle, text="/sleep 30000")
            ) as events:
                with trio.move_on_after(0.3):
                    async for _event in events:
                        pass
            # the session closes in the background; a next turn waits for that and finds
            # it gone
            with pytest.raises(AcpRuntimeError) as info:
                await run(rt, handle, "hi")
            assert info.value.code == "ACP_SESSION_NOT_FOUND"
        assert handle.agent_pid is not None and pid_gone(handle.agent_pid)
        assert not (await rt.get_status(handle=handle)).alive


async def test_slow_consumer_bounds_buffered_events(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with trio.fail_after(60):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            session = rt._sessions["s"]
            peak = 0
            count = 0
            async with contextlib.aclosing(
                rt.run_turn(handle=handle, text="/flood 5000")
            ) as events:
                async for event in events:
                    if isinstance(event, TextDeltaEvent):
                        count += 1
                        if count % 500 == 0 and session.turn is not None:
                            # let the agent run ahead until reading pauses at high water
                            await wait_reader_paused(session.turn)
                    turn = session.turn
                    if turn is not None:
                        peak = max(peak, turn.pending)
        assert count == 5000
        # one 64 KiB read of small lines may overshoot the high-water mark
        assert peak <= HIGH_WATER + 1000, peak


async def test_a_stopped_consumer_of_huge_lines_holds_a_bounded_queue(
        env: RuntimeEnv) -> None:
    """The turn's queue was bounded in events only (256): a consumer that stopped reading
    while the agent streamed 4 MB lines held up to 1 GiB (a warm owner whose client was
    stopped with Ctrl-Z peaked at 1.2 GiB).  Reading now also pauses once the queued events
    stand for ``HIGH_WATER_BYTES`` of the agent's lines, and the turn still ends whole."""
    line = 1 << 20
    count = 3 * HIGH_WATER_BYTES // line  # 48 lines of 1 MiB: far below 256 events
    async with env.runtime() as rt:
        with trio.fail_after(60):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            session = rt._sessions["s"]
            received = 0
            async with contextlib.aclosing(
                rt.run_turn(handle=handle, text=f"/huge {line} {count}")
            ) as events:
                async for event in events:
                    if isinstance(event, TextDeltaEvent):
                        received += 1
                        turn = session.turn
                        if received == 1 and turn is not None:
                            await wait_reader_paused(turn)  # the consumer stops
                            assert not turn.finished.is_set()
                            held = turn.pending * line
                            # one read (up to the line cap) may overshoot the mark
                            assert held <= HIGH_WATER_BYTES + 8 * line, held
        assert received == count


@pytest.mark.parametrize(
    ("raw", "kind", "expected"),
    [
        ({"permissionMode": "approve-all"}, "execute", "permission outcome=selected:allow"),
        ({"permissionMode": "deny-all"}, "read", "permission outcome=selected:reject"),
        ({"permissionMode": "approve-reads"}, "read", "permission outcome=selected:allow"),
        (
            {"permissionMode": "approve-reads", "nonInteractivePermissions": "deny"},
            "execute",
            "permission outcome=selected:reject",
        ),
    ],
)
async def test_permission_modes_end_to_end(
    env: RuntimeEnv, raw: dict[str, str], kind: str, expected: str
) -> None:
    async with env.runtime(**raw) as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            events = await run(rt, handle, f"/permission {kind}")
            status = await rt.get_status(handle=handle)
        assert output(events) == expected
        assert events[-1] == DoneEvent(stop_reason="end_turn")
        assert status.details["permissions"]["requested"] == 1


async def test_permission_fail_policy_fails_the_turn(env: RuntimeEnv) -> None:
    async with env.runtime(permissionMode="approve-reads", nonInteractivePermissions="fail") as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            events = await run(rt, handle, "/permission execute")
            assert isinstance(events[-1], ErrorEvent)
            assert events[-1].code == "ACP_PERMISSION_PROMPT_UNAVAILABLE"
            assert "approve-all" in events[-1].message
            assert output(await run(rt, handle, "still here")) == "still here"


async def test_fs_confinement_end_to_end(env: RuntimeEnv) -> None:
    cwd = env.workspace
    (cwd / "notes.txt").write_text("one\ntwo\nthree\n")
    outside = env.root / "secret.txt"
    outside.write_text("secret")
    (cwd / "link").symlink_to(env.root)
    async with env.runtime(permissionMode="approve-all") as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")

            async def say(text: str) -> str:
                return output(await run(rt, handle, text))

            assert await say(f"/read {cwd}/notes.txt") == "one\ntwo\nthree\n"
            assert "outside" in await say(f"/read {outside}")
            assert "outside" in await say(f"/read {cwd}/../secret.txt")
            assert "symlink" in await say(f"/read {cwd}/link/secret.txt")
            assert "absolute" in await say("/read notes.txt")
            assert "NUL" in await say(f"/read {cwd}/notes.txt\x00x")
            assert await say(f"/write {cwd}/sub/dir/new.txt hello") == (
                f"wrote {cwd}/sub/dir/new.txt"
            )
            assert (cwd / "sub" / "dir" / "new.txt").read_text() == "hello"
            assert "outside" in await say(f"/write {env.root}/evil.txt x")
            assert "symlink" in await say(f"/write {cwd}/link/evil.txt x")
        assert not (env.root / "evil.txt").exists()
        assert outside.read_text() == "secret"


async def test_a_session_cwd_replaced_by_a_symlink_leads_nowhere(env: RuntimeEnv) -> None:
    """The agent renames the session cwd away and puts a symlink to an outside directory in
    its place: reads, writes and terminals through that path are refused, not followed
    (30 of 30 each went outside before); ensuring the session again is refused while it
    runs; once closed, a session ensured there afresh starts anew."""
    cwd = env.workspace
    outside = env.root / "outside"
    outside.mkdir()
    (outside / "notes.txt").write_text("OUTSIDE")
    (cwd / "notes.txt").write_text("inside")
    async with env.runtime(permissionMode="approve-all") as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")

            async def say(text: str) -> str:
                return output(await run(rt, handle, text))

            assert await say(f"/read {cwd}/notes.txt") == "inside"
            cwd.rename(env.root / "moved-away")
            cwd.symlink_to(outside)
            for line in (f"/read {cwd}/notes.txt", f"/write {cwd}/new.txt x",
                         "/terminal pwd"):
                assert "no longer the directory" in await say(line), line
            assert not (outside / "new.txt").exists()
            assert (outside / "notes.txt").read_text() == "OUTSIDE"
            # ensured again (a warm prompt does so every time): refused, not restarted in the
            # directory the symlink names (it was, with reads and writes there)
            with pytest.raises(AcpRuntimeError, match="no longer the directory"):
                await rt.ensure_session(session_key="s", agent="mock")
            await rt.close(handle=handle, reason="replaced cwd")
            again = await rt.ensure_session(session_key="s", agent="mock")  # asked for anew
            assert output(await run(rt, again, f"/read {cwd}/notes.txt")) == "OUTSIDE"


async def test_fs_writes_follow_permission_mode(env: RuntimeEnv) -> None:
    cwd = env.workspace
    async with env.runtime(permissionMode="deny-all") as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            assert "denied" in output(await run(rt, handle, f"/write {cwd}/a.txt x"))
            assert "denied" in output(await run(rt, handle, f"/read {cwd}/a.txt"))
    async with env.runtime(permissionMode="approve-reads", nonInteractivePermissions="fail") as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s2", agent="mock")
            events = await run(rt, handle, f"/write {cwd}/a.txt x")
            assert isinstance(events[-1], ErrorEvent)
            assert events[-1].code == "ACP_PERMISSION_PROMPT_UNAVAILABLE"
    assert not (cwd / "a.txt").exists()


async def test_agent_process_task_cancelled_kills_tree(env: RuntimeEnv) -> None:
    from _runtime_helpers import MOCK

    from acpx_trio._acp import InitializeResponse
    from acpx_trio._process.agent import AgentProcess, AgentSpawn
    from acpx_trio._runtime.handshake import initialize_request

    agent = AgentProcess(
        AgentSpawn(
            argv=tuple(MOCK), cwd=str(env.workspace), session_key="raw",
            gateway_instance_id=env.gateway_id, kill_grace=0.5,
        ),
        lease_store=env.lease_store,
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            assert agent.connection is not None and agent.alive
            init = await agent.connection.request(
                "initialize", initialize_request(), InitializeResponse
            )
            assert init.protocol_version == 1
            await agent.wait_recorded()
            nursery.cancel_scope.cancel()
    assert agent.pid is not None and pid_gone(agent.pid)
    assert agent.closed.is_set() and not agent.alive
    lease = await env.lease(agent.lease_id)
    assert lease.state is LeaseState.CLOSED and lease.root_pid == agent.pid
    assert lease.root_start_ticks is not None and lease.process_group_id == agent.pid


@pytest.mark.parametrize("batches", [False, True])
async def test_a_consumer_deadline_is_kept_when_the_agent_ignores_the_cancel(
        env: RuntimeEnv, batches: bool) -> None:
    """A consumer's deadline fired about 2.5 s late: leaving a turn early waited, shielded,
    for the agent to answer its cancel (``CANCEL_WAIT_SECONDS``), and for its kill when it
    did not (20/20 at 3.0 s for a 0.5 s deadline, an outside review).  The consumer now
    leaves at its deadline; the agent is still killed, in the background, and the session's
    next turn waits for that and finds the session gone."""
    async with env.runtime() as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            turn = (rt.run_turn_batches if batches else rt.run_turn)(handle=handle,
                                                                     text="/hang")
            start = trio.current_time()
            with trio.move_on_after(0.5):
                async with contextlib.aclosing(turn) as events:
                    async for _event in events:
                        pass
            left = trio.current_time() - start
            assert left < 0.5 + 0.4, left  # not 0.5 + CANCEL_WAIT_SECONDS
            with pytest.raises(AcpRuntimeError) as info:
                await run(rt, handle, "hi")  # waits for the kill, then the call's error
            assert info.value.code == "ACP_SESSION_NOT_FOUND"
            assert handle.agent_pid is not None and pid_gone(handle.agent_pid)


async def test_an_ensure_right_after_an_early_leave_gives_a_usable_session(
        env: RuntimeEnv) -> None:
    """Right after a consumer left a turn whose agent ignores the cancel, ``ensure_session``
    handed back that agent, killed 2.5 s later: the usual "ensure, then run" failed with
    ``ACP_SESSION_NOT_FOUND`` (30/30, an outside review of the early leave).  The ensure
    waits for the abandoned turn to settle, then starts a fresh agent."""
    async with env.runtime() as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            with trio.move_on_after(0.3):
                async with contextlib.aclosing(rt.run_turn(handle=handle,
                                                           text="/hang")) as events:
                    async for _event in events:
                        pass
            again = await rt.ensure_session(session_key="s", agent="mock")
            assert again.agent_pid != handle.agent_pid
            assert handle.agent_pid is not None and pid_gone(handle.agent_pid)
            assert (await run(rt, again, "hi"))[-1] == DoneEvent(stop_reason="end_turn")


def test_check_gateway_leaks_refuses_an_empty_gateway_id_with_a_typed_error() -> None:
    from acpx_trio import AcpxUsageError
    from acpx_trio.testing import check_gateway_leaks

    for bad in ("", "  ", None):
        with pytest.raises(AcpxUsageError) as info:
            check_gateway_leaks(bad)  # type: ignore[arg-type]
        assert info.value.code == "ACPX_USAGE" and isinstance(info.value, ValueError)
