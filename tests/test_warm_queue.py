"""The warm owner's queue and lifetime over :class:`StubRuntime` under a mock clock: pure
logic (FIFO order, cancels, exactly one final event per turn, idle TTL), no process."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from acpx_trio._events import AcpRuntimeEvent, DoneEvent, ErrorEvent, TextDeltaEvent
from acpx_trio._owner.paths import OwnerPaths
from acpx_trio._owner.queue import CLIENT_BUFFER, CLIENT_BUFFER_BYTES, QueuedTurn, WarmSession
from acpx_trio._owner.server import EMPTY_GRACE_SECONDS, Owner
from acpx_trio._owner.stream import CLIENT_SEND_SECONDS, stream_turn
from acpx_trio._owner.wire import (
    EventFrame,
    OwnerLaunch,
    PromptRequest,
    config_fingerprint,
    decode_reply,
    encode_frames,
)
from acpx_trio.testing.stub_runtime import Delay, Hang, StubRuntime


def _request(rid: str, *, key: str = "k", ttl: float | None = None,
             wait: bool = True) -> PromptRequest:
    return PromptRequest(request_id=rid, session_key=key, agent="stub", text=rid, cwd="/",
                         config_fingerprint=config_fingerprint({}), wait=wait, ttl_seconds=ttl)


def _owner(runtime: StubRuntime, nursery: trio.Nursery, ttl: float = 300.0) -> Owner:
    owner = Owner(runtime, OwnerPaths(Path("/nonexistent")),
                  OwnerLaunch(raw_config={}, workspace_dir="/", default_ttl_seconds=ttl))
    owner._nursery = nursery
    return owner


async def _idle(owner: Owner, session: WarmSession) -> None:
    """Wait (event-driven) until ``session`` has no active or queued turn."""
    while session.busy:
        await owner._changed.wait()


def _frames(batch: bytes) -> list[EventFrame]:
    """The frames of one batch a waiting client's stream gets (one line each)."""
    frames = [decode_reply(line) for line in batch.splitlines()]
    assert all(isinstance(f, EventFrame) for f in frames), frames
    return frames  # type: ignore[return-value]


async def _collect(turn: QueuedTurn, into: list[Any]) -> None:
    assert turn.receive is not None
    async with turn.receive:
        async for batch in turn.receive:
            into.extend(e.event for e in _frames(batch))


def _submit(owner: Owner, rid: str, nursery: trio.Nursery, out: dict[str, list[Any]],
            **kw: Any) -> tuple[QueuedTurn, int]:
    req = _request(rid, **kw)
    turn = QueuedTurn(req)
    position = owner._session(req).enqueue(turn)
    out[rid] = []
    if turn.receive is not None:
        nursery.start_soon(_collect, turn, out[rid])
    return turn, position


async def test_turns_run_in_arrival_order_and_queued_cancel_drops(autojump_clock: Any) -> None:
    stub = StubRuntime()
    stub.push_script(Delay(10), TextDeltaEvent(text="first"))
    out: dict[str, list[Any]] = {}
    async with trio.open_nursery() as nursery:
        owner = _owner(stub, nursery)
        positions = [_submit(owner, rid, nursery, out)[1] for rid in ("a", "b", "c", "d")]
        assert positions == [0, 1, 2, 3]
        await stub.wait_for_call("run_turn")
        session = owner.sessions["k"]
        assert await session.cancel("c")  # queued: dropped, never reaches the runtime
        assert not await session.cancel("nope")
        await _idle(owner, session)
        nursery.cancel_scope.cancel()
    ran = [c.args.get("text") for c in stub.calls_to("run_turn")]
    assert ran == ["a", "b", "d"]
    assert out["c"] == [DoneEvent(stop_reason="cancelled")]
    for rid in ("a", "b", "d"):
        assert isinstance(out[rid][-1], DoneEvent) and out[rid][-1].stop_reason == "end_turn"
    assert TextDeltaEvent(text="first") in out["a"]


async def test_cancel_of_the_active_turn_and_close_of_a_busy_session(
        autojump_clock: Any) -> None:
    stub = StubRuntime()
    stub.push_script(Hang())
    stub.push_script(Hang())
    out: dict[str, list[Any]] = {}
    async with trio.open_nursery() as nursery:
        owner = _owner(stub, nursery)
        _submit(owner, "a", nursery, out)
        _submit(owner, "b", nursery, out)
        _submit(owner, "c", nursery, out)
        await stub.wait_for_call("run_turn")
        session = owner.sessions["k"]
        assert await session.cancel(None)  # the active one ("a")
        await stub.wait_for_call("run_turn", 2)  # "b" runs next
        await owner.close_session(session)  # "b" active and "c" queued end cancelled
        assert "k" not in owner.sessions and stub.calls_to("close")
        nursery.cancel_scope.cancel()
    assert out["a"][-1] == DoneEvent(stop_reason="cancelled")
    assert out["b"][-1] == DoneEvent(stop_reason="cancelled")
    assert out["c"] == [DoneEvent(stop_reason="cancelled")]
    assert [c.args.get("text") for c in stub.calls_to("run_turn")] == ["a", "b"]


async def test_idle_ttl_closes_sessions_then_the_owner_exits(autojump_clock: Any) -> None:
    stub = StubRuntime()
    out: dict[str, list[Any]] = {}
    async with trio.open_nursery() as nursery:
        owner = _owner(stub, nursery)
        _submit(owner, "a", nursery, out, key="short", ttl=60)
        _submit(owner, "b", nursery, out, key="long", ttl=600)
        _submit(owner, "c", nursery, out, key="forever", ttl=0)
        start = trio.current_time()
        with trio.move_on_after(3600) as never:
            await owner.lifetime()  # "forever" keeps it up
        assert never.cancelled_caught
        closed = {c.session_key: c.at - start for c in stub.calls_to("close")}
        assert set(closed) == {"short", "long"}
        assert 60 <= closed["short"] < 61 and 600 <= closed["long"] < 601
        assert list(owner.sessions) == ["forever"]
        await owner.close_session(owner.sessions["forever"])
        await owner.lifetime()  # no session left: returns at once
        nursery.cancel_scope.cancel()


async def test_an_owner_nobody_uses_exits_after_the_grace(autojump_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        owner = _owner(StubRuntime(), nursery)
        start = trio.current_time()
        await owner.lifetime()
        assert trio.current_time() - start == EMPTY_GRACE_SECONDS
        nursery.cancel_scope.cancel()


async def test_a_failed_start_expires_the_session_at_once(autojump_clock: Any) -> None:
    from acpx_trio._errors import AcpRuntimeError

    stub = StubRuntime()
    stub.fail_next("ensure_session", AcpRuntimeError("ACP_AGENT_SPAWN_FAILED", "no agent"))
    out: dict[str, list[Any]] = {}
    async with trio.open_nursery() as nursery:
        owner = _owner(stub, nursery)
        _submit(owner, "a", nursery, out)
        start = trio.current_time()
        await owner.lifetime()
        assert trio.current_time() - start < 1
        nursery.cancel_scope.cancel()
    assert isinstance(out["a"][-1], ErrorEvent) and out["a"][-1].code == "ACP_AGENT_SPAWN_FAILED"


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["submit", "cancel", "cancel_active", "step"]),
                              st.integers(0, 9)), max_size=25))
def test_every_turn_gets_one_final_event_and_order_is_kept(
        ops: list[tuple[str, int]]) -> None:
    """Whatever interleaving of submits and cancels: runs happen in arrival order, each
    submitted turn gets exactly one final event, and nothing runs twice."""

    async def scenario() -> tuple[list[str], dict[str, list[Any]], list[str]]:
        stub = StubRuntime(script=lambda call: (Delay(3), TextDeltaEvent(text="x")))
        out: dict[str, list[Any]] = {}
        submitted: list[str] = []
        async with trio.open_nursery() as nursery:
            owner = _owner(stub, nursery)
            for op, n in ops:
                if op == "submit":
                    rid = f"r{len(submitted)}"
                    submitted.append(rid)
                    _submit(owner, rid, nursery, out)
                elif op == "cancel" and submitted and "k" in owner.sessions:
                    await owner.sessions["k"].cancel(submitted[n % len(submitted)])
                elif op == "cancel_active" and "k" in owner.sessions:
                    await owner.sessions["k"].cancel(None)
                else:
                    await trio.sleep(n)
            if "k" in owner.sessions:
                await _idle(owner, owner.sessions["k"])
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        return submitted, out, [str(c.args.get("text")) for c in stub.calls_to("run_turn")]

    submitted, out, ran = trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    assert ran == sorted(set(ran), key=submitted.index)  # arrival order, once each
    for rid in submitted:
        finals = [e for e in out[rid] if isinstance(e, DoneEvent | ErrorEvent)]
        assert len(finals) == 1, (rid, out[rid])
        assert out[rid][-1] is finals[0]
        if rid not in ran:
            assert finals[0] == DoneEvent(stop_reason="cancelled")


async def test_a_dead_session_fails_the_turn_not_the_owner(autojump_clock: Any) -> None:
    """A turn whose session died between start-up and prompt gets an error event; the
    worker goes on with the next turn (which starts a new session)."""
    stub = StubRuntime()
    stub.push_script(Delay(5))
    out: dict[str, list[Any]] = {}
    async with trio.open_nursery() as nursery:
        owner = _owner(stub, nursery)
        _submit(owner, "a", nursery, out)
        await stub.wait_for_call("run_turn")
        stub.kill_session("k")
        _submit(owner, "b", nursery, out)
        await _idle(owner, owner.sessions["k"])
        nursery.cancel_scope.cancel()
    finals = [out[rid][-1] for rid in ("a", "b")]
    assert all(isinstance(f, DoneEvent | ErrorEvent) for f in finals), finals
    assert len(stub.calls_to("ensure_session")) == 2


async def test_a_turn_call_that_raises_fails_that_turn_only(autojump_clock: Any) -> None:
    from acpx_trio._errors import AcpRuntimeError

    stub = StubRuntime()
    stub.fail_next("run_turn", AcpRuntimeError("ACP_SESSION_NOT_FOUND", "gone"))
    out: dict[str, list[Any]] = {}
    async with trio.open_nursery() as nursery:
        owner = _owner(stub, nursery)
        _submit(owner, "a", nursery, out)
        _submit(owner, "b", nursery, out)
        await _idle(owner, owner.sessions["k"])
        nursery.cancel_scope.cancel()
    assert isinstance(out["a"][-1], ErrorEvent) and out["a"][-1].code == "ACP_SESSION_NOT_FOUND"
    assert out["b"][-1] == DoneEvent(stop_reason="end_turn")


async def test_a_final_event_cancelled_on_its_way_is_still_delivered_by_abort() -> None:
    """A ``sessions close`` landing as the turn ends cancelled the final event's send after
    the turn had been marked final: ``abort`` then sent nothing and never closed the
    channel, so the waiting client got heartbeats forever and no end."""
    turn = QueuedTurn(_request("r"))
    await turn.emit(TextDeltaEvent(text="x"), None)
    with trio.CancelScope() as scope:
        scope.cancel()  # the close's cancel lands at the final event's send
        await turn.emit(DoneEvent(stop_reason="end_turn"), None)
    assert scope.cancelled_caught and not turn.final_sent
    turn.abort()  # the close
    assert turn.receive is not None
    events = [f.event async for batch in turn.receive for f in _frames(batch)]  # it ends
    assert events == [TextDeltaEvent(text="x"), DoneEvent(stop_reason="cancelled")]


async def test_a_client_that_stops_reading_holds_a_bounded_buffer() -> None:
    """The frames buffered for a waiting client were bounded by count only (1,024): a
    client stopped with Ctrl-Z while the agent streamed 4 MB lines held 1.2 GiB of the
    owner.  Past ``CLIENT_BUFFER_BYTES`` the turn now waits for the client to read (or to be
    dropped), as it did for a full count."""
    turn = QueuedTurn(_request("r"))
    line = "x" * (1 << 20)
    emitted = 0
    while turn.buffered + (1 << 20) <= CLIENT_BUFFER_BYTES:
        await turn.emit(TextDeltaEvent(text=line), None)
        emitted += 1
    done = trio.Event()

    async def one_more() -> None:
        await turn.emit(TextDeltaEvent(text=line), None)
        done.set()

    assert turn.receive is not None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(one_more)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set() and turn.buffered <= CLIENT_BUFFER_BYTES  # it waits
        turn.taken(turn.receive.receive_nowait())  # the client reads one batch
        await done.wait()
    assert emitted >= 8 and turn.buffered <= CLIENT_BUFFER_BYTES


async def test_a_dropped_client_never_holds_up_its_turn() -> None:
    turn = QueuedTurn(_request("r"))
    line = "x" * (1 << 20)
    while turn.buffered + (1 << 20) <= CLIENT_BUFFER_BYTES:
        await turn.emit(TextDeltaEvent(text=line), None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(turn.emit, TextDeltaEvent(text=line), None)
        await trio.testing.wait_all_tasks_blocked()
        turn.taken(None)  # the client was dropped (stopped reading for 15 s)
    await turn.emit(DoneEvent(stop_reason="end_turn"), None)  # the turn goes on, unblocked
    assert turn.final_sent


class _BatchingStub(StubRuntime):
    """A runtime whose turns arrive as one batch of 500 text events and the final one, as
    the real runtime hands a fast agent's read batches over."""

    async def run_turn_batches(  # noqa: ASYNC900
            self, **kw: Any) -> AsyncGenerator[list[AcpRuntimeEvent], None]:
        await self._enter("run_turn", kw["handle"].session_key, text=kw["text"])
        batch: list[AcpRuntimeEvent] = [TextDeltaEvent(text=str(i)) for i in range(500)]
        yield [*batch, DoneEvent(stop_reason="end_turn")]


async def test_a_waiting_client_gets_the_runtimes_batches_whole() -> None:
    """The owner drove ``run_turn`` and sent its client one frame per event, each through
    the channel and a socket write of its own: 45 us of the owner's CPU per chunk, 28x the
    embedded runtime's (``benchmarks/warm_stream.py``).  It now forwards each batch the
    runtime read as one hand-off, in order, to be written in one go."""
    turn = QueuedTurn(_request("r"))
    async with trio.open_nursery() as nursery:
        owner = _owner(_BatchingStub(), nursery)
        owner._session(turn.request).enqueue(turn)
        assert turn.receive is not None
        batches = [batch async for batch in turn.receive]
        nursery.cancel_scope.cancel()
    frames = _frames(batches[0])
    assert len(batches) == 1 and len(frames) == 501
    texts = [getattr(frame.event, "text", None) for frame in frames[:-1]]
    assert texts == [str(i) for i in range(500)]
    assert frames[-1].event == DoneEvent(stop_reason="end_turn")


class _Client(trio.abc.SendStream):
    """A client's end of the socket that records each write, taking ``rate`` bytes a
    second (trio time; ``None``: at once)."""

    def __init__(self, rate: float | None = None) -> None:
        self.rate = rate
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.sleep(0 if self.rate is None else len(data) / self.rate)
        self.writes.append(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def _one_batch(frames: list[EventFrame]) -> trio.MemoryReceiveChannel[bytes]:
    send, receive = trio.open_memory_channel[bytes](1)
    send.send_nowait(encode_frames([*frames, EventFrame(
        request_id="r", event=DoneEvent(stop_reason="end_turn"))]))
    send.close()
    return receive


async def test_the_client_stream_writes_a_batch_in_one_write() -> None:
    """``stream_turn`` encodes a batch's frames into one write (each a line the client
    decodes as before)."""
    frames = [EventFrame(request_id="r", event=TextDeltaEvent(text=str(i))) for i in range(300)]
    client = _Client()
    await stream_turn(_one_batch(frames), client)
    assert len(client.writes) == 1
    assert [decode_reply(line) for line in client.writes[0].splitlines()][:-1] == frames


async def test_a_large_batch_reaches_a_slow_but_steady_client(autojump_clock: Any) -> None:
    """One batch of the runtime can stand for 16 MiB of an agent's lines: written as one
    write bounded by ``CLIENT_SEND_SECONDS``, a client reading a steady 50 KB/s was dropped
    on a 1 MiB batch.  Each write of at most ``SEND_BATCH_BYTES`` is bounded on its own."""
    frames = [EventFrame(request_id="r", event=TextDeltaEvent(text="x" * 4096))
              for _ in range(256)]  # 1 MiB of text in one batch
    client = _Client(rate=50_000)
    started = trio.current_time()
    await stream_turn(_one_batch(frames), client)  # no ClientStalled
    assert trio.current_time() - started > CLIENT_SEND_SECONDS
    got = b"".join(client.writes)
    assert [decode_reply(line) for line in got.splitlines()][:-1] == frames


async def test_a_close_reaches_a_lagging_client_with_a_full_channel() -> None:
    """A close (or owner stop) aborting a turn whose waiting client lagged by a full
    channel (1,024 small batches: an agent writing a few updates at a time, a client
    stopped for a few seconds) dropped the final frame: the client read every batch, then
    the end of the stream, and reported itself dropped (8/8 with a real owner, agent and
    client).  The channel now keeps a slot for that final frame."""
    turn = QueuedTurn(_request("r"))

    async def worker() -> None:
        for i in range(CLIENT_BUFFER + 10):
            await turn.emit(TextDeltaEvent(text=str(i)), None)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker)
        await trio.testing.wait_all_tasks_blocked()  # the worker waits for the client
        assert turn.batches == CLIENT_BUFFER
        nursery.cancel_scope.cancel()  # the session's close cancels the worker
    turn.abort()
    assert turn.receive is not None
    events = [f.event async for batch in turn.receive for f in _frames(batch)]
    assert events[:-1] == [TextDeltaEvent(text=str(i)) for i in range(CLIENT_BUFFER)]
    assert events[-1] == DoneEvent(stop_reason="cancelled")


async def test_a_session_being_closed_is_not_reported_idle(
        autojump_clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    """While ``sessions close`` ended a session's agent, the lifetime loop took the
    session (its handle already cleared) for one whose agent never started, and logged
    "idle for 300s, closing it"."""

    class _SlowClose(StubRuntime):
        async def close(self, **kw: Any) -> None:  # an agent that takes a second to exit
            await trio.sleep(1)
            await super().close(**kw)

    stub = _SlowClose()
    out: dict[str, list[Any]] = {}
    caplog.set_level(logging.INFO, logger="acpx_trio.owner")
    async with trio.open_nursery() as nursery:
        owner = _owner(stub, nursery)
        nursery.start_soon(owner.lifetime)
        _submit(owner, "a", nursery, out)
        session = owner.sessions["k"]
        await _idle(owner, session)
        closing = trio.Event()

        async def close() -> None:
            await owner.close_session(session)
            closing.set()

        nursery.start_soon(close)
        await trio.testing.wait_all_tasks_blocked()  # the agent is exiting, handle cleared
        owner.changed()  # anything else that wakes the lifetime loop meanwhile
        await closing.wait()
        nursery.cancel_scope.cancel()
    assert stub.calls_to("close")
    assert not [r for r in caplog.records if "closing it" in r.getMessage()], caplog.text
