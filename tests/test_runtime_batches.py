"""``run_turn_batches``: the batch form of ``run_turn`` (same events, same end and abandon)."""

from __future__ import annotations

import contextlib

import trio
from _runtime_helpers import RuntimeEnv, run

from acpx_trio._events import AcpRuntimeEvent, DoneEvent, ErrorEvent, TextDeltaEvent


async def test_batches_carry_the_same_events_in_order(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            batches: list[list[AcpRuntimeEvent]] = []
            async with contextlib.aclosing(
                rt.run_turn_batches(handle=handle, text="/chunks 2000")
            ) as stream:
                async for batch in stream:
                    assert batch
                    batches.append(batch)
            flat = [e for b in batches for e in b]
            assert len(batches) < len(flat)  # events do arrive grouped
            assert [e.text for e in flat if isinstance(e, TextDeltaEvent)] == [
                f"chunk {i}\n" for i in range(2000)
            ]
            assert flat[-1] == DoneEvent(stop_reason="end_turn")
            assert not any(isinstance(e, DoneEvent | ErrorEvent) for e in flat[:-1])
            # the per-event form still works on the same session afterwards
            again = await run(rt, handle, "/chunks 50")
            assert len([e for e in again if isinstance(e, TextDeltaEvent)]) == 50


async def test_abandoned_batch_stream_cancels_the_turn(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            async with contextlib.aclosing(
                rt.run_turn_batches(handle=handle, text="/flood 100000")
            ) as stream:
                async for _batch in stream:
                    break  # leave early: the turn is cancelled at the agent
            # the next turn waits for the cancel to settle, then runs (not busy)
            busy = [b async for b in rt.run_turn_batches(handle=handle, text="hi")]
            assert busy[-1][-1] == DoneEvent(stop_reason="end_turn")
            status = await rt.get_status(handle=handle)
            assert status.details["turn_running"] is False
