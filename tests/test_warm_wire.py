"""Pure logic of the warm owner's edges (no process): request validation, the shared budget
of unfinished frames, credential digests, escaping, and the per-turn timeout under a mock
clock over :class:`StubRuntime`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from acpx_trio._cli.text import printable
from acpx_trio._events import DoneEvent, ErrorEvent
from acpx_trio._owner.client import ReplyReader
from acpx_trio._owner.paths import OwnerPaths
from acpx_trio._owner.queue import QueuedTurn
from acpx_trio._owner.server import Owner
from acpx_trio._owner.wire import (
    EventFrame,
    FrameBudget,
    FrameReader,
    OwnerLaunch,
    OwnerProtocolError,
    OwnerStreamCutError,
    PromptRequest,
    config_fingerprint,
    credential_env_digests,
    credential_env_mismatch,
    decode_reply,
    decode_request,
    encode_frame,
)
from acpx_trio.testing.stub_runtime import Delay, Hang, StubRuntime


def _prompt(**kw: Any) -> PromptRequest:
    fields: dict[str, Any] = dict(request_id="r", session_key="k", agent="stub", text="t",
                                  cwd="/", config_fingerprint=config_fingerprint({}))
    fields.update(kw)
    return PromptRequest(**fields)


@pytest.mark.parametrize("bad", [
    {"ttl_seconds": -1.0}, {"timeout_seconds": 0.0}, {"timeout_seconds": 1e12},
    {"session_key": ""}, {"session_key": "k" * 5000}, {"request_id": ""},
    {"config_fingerprint": "x" * 32}, {"credential_env": {"A_KEY": "not-a-digest"}},
])
def test_bad_request_fields_are_refused(bad: dict[str, Any]) -> None:
    frame = encode_frame(_prompt(**bad))  # encoding does not validate; decoding does
    with pytest.raises(OwnerProtocolError):
        decode_request(frame[:-1])
    assert decode_request(encode_frame(_prompt())[:-1]) == _prompt()


async def test_frame_budget_is_shared_and_given_back() -> None:
    budget = FrameBudget(100)
    a_send, a_recv = trio.testing.memory_stream_one_way_pair()
    b_send, b_recv = trio.testing.memory_stream_one_way_pair()
    a = FrameReader(a_recv, limit=1000, budget=budget)
    b = FrameReader(b_recv, limit=1000, budget=budget)
    await a_send.send_all(b"x" * 80)
    await b_send.send_all(b"y" * 30)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.receive)
        await trio.testing.wait_all_tasks_blocked()
        assert budget.used == 80
        with pytest.raises(OwnerProtocolError, match="ownerPartialMaxBytes"):
            await b.receive()
        a.release()
        assert budget.used == 0
        nursery.cancel_scope.cancel()
    b2 = FrameReader(b_recv, limit=1000, budget=budget)
    await b_send.send_all(b"z" * 20 + b"\n")
    assert await b2.receive() == b"z" * 20
    b2.release()
    assert budget.used == 0


async def test_a_connection_cut_in_the_middle_of_a_frame_is_told_apart() -> None:
    """A cut mid-frame (an owner that died, or dropped a client that stopped reading while a
    large frame was on its way) is its own error, so the client can say which of the two
    happened instead of calling it a protocol error; a clean end is ``None``."""
    send, recv = trio.testing.memory_stream_one_way_pair()
    reader = FrameReader(recv, limit=1 << 20)
    await send.send_all(b'{"kind": "heart')
    await send.aclose()
    with pytest.raises(OwnerStreamCutError) as info:
        await reader.receive()
    assert isinstance(info.value, OwnerProtocolError)
    send, recv = trio.testing.memory_stream_one_way_pair()
    await send.aclose()
    assert await FrameReader(recv, limit=10).receive() is None


@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=12),
       st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=8),
       st.binary(max_size=10).map(lambda b: b.replace(b"\n", b"")))
def test_frames_read_in_batches_are_the_frames_read_one_by_one(
        frames: list[bytes], cuts: list[int], tail: bytes) -> None:
    """Whatever the reads' sizes: ``receive_lines`` returns the same frames as ``receive``,
    in order, never an empty batch; an unfinished frame at EOF is a cut, raised only once
    every complete frame before it was returned."""
    data = b"".join(f + b"\n" for f in frames) + tail

    async def read(batches: bool) -> tuple[list[list[bytes]], bool]:
        send, recv = trio.testing.memory_stream_one_way_pair()
        reader = FrameReader(recv, limit=1 << 20)
        got: list[list[bytes]] = []
        cut = False

        async def feed() -> None:
            at, i = 0, 0
            while at < len(data):
                step = cuts[i % len(cuts)]
                await send.send_all(data[at:at + step])
                await trio.testing.wait_all_tasks_blocked()  # one read per piece
                at, i = at + step, i + 1
            await send.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            try:
                while True:
                    if batches:
                        lines = await reader.receive_lines()
                    else:
                        line = await reader.receive()
                        lines = None if line is None else [line]
                    if lines is None:
                        break
                    got.append(lines)
            except OwnerStreamCutError:
                cut = True
        return got, cut

    one_by_one, cut_one = trio.run(read, False)
    batched, cut_batched = trio.run(read, True)
    assert [x for batch in batched for x in batch] == [x[0] for x in one_by_one] == frames
    assert all(batched)
    assert cut_one == cut_batched == bool(tail)
    if len(cuts) == 1 and cuts[0] >= len(data):  # everything in one read: one batch
        assert len(batched) == (1 if frames else 0)


async def test_replies_before_a_malformed_frame_are_returned_first() -> None:
    """A batch holding good replies and then a malformed frame returns the good ones; the
    next call raises the protocol error (nothing read before it is lost)."""
    a, b = trio.socket.socketpair()
    mine, theirs = trio.SocketStream(a), trio.SocketStream(b)
    async with mine, theirs:
        good = encode_frame(EventFrame(request_id="r", event=DoneEvent(stop_reason="end_turn")))
        await theirs.send_all(good + good + b'{"kind": "nonsense"}\n' + good)
        replies = ReplyReader(mine)
        first = await replies.next_replies()
        assert first is not None and len(first) == 2
        assert all(isinstance(x, EventFrame) for x in first)
        with pytest.raises(OwnerProtocolError, match="bad reply frame"):
            await replies.next_replies()
        await theirs.send_all(b"{")
        await theirs.aclose()
        with pytest.raises(OwnerStreamCutError):
            await replies.next_replies()


@given(st.dictionaries(st.sampled_from(["ACPX_AUTH_X", "OPENAI_API_KEY", "HOME", "MY_TOKEN",
                                        "PLAIN"]), st.text(min_size=1, max_size=8)),
       st.dictionaries(st.sampled_from(["ACPX_AUTH_X", "OPENAI_API_KEY", "HOME", "MY_TOKEN",
                                        "PLAIN"]), st.text(min_size=1, max_size=8)))
def test_credential_mismatch_names_exactly_the_differing_credentials(
        mine: dict[str, str], theirs: dict[str, str]) -> None:
    digests = credential_env_digests(theirs, ["PLAIN"])
    assert all(v not in str(digests) for v in theirs.values() if len(v) > 3)
    differ = credential_env_mismatch(mine, ["PLAIN"], digests)
    relevant = {"ACPX_AUTH_X", "OPENAI_API_KEY", "MY_TOKEN", "PLAIN"}
    assert differ == sorted(n for n in relevant if mine.get(n) != theirs.get(n))


@given(st.text())
def test_printable_leaves_no_control_character(text: str) -> None:
    out = printable(text)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in out)
    kept = printable(text, keep_lines=True)
    assert kept.count("\n") == text.count("\n")
    if text.isprintable():
        assert out == text


def _owner(runtime: StubRuntime, nursery: trio.Nursery) -> Owner:
    owner = Owner(runtime, OwnerPaths(Path("/nonexistent")),
                  OwnerLaunch(raw_config={}, workspace_dir="/"))
    owner._nursery = nursery
    return owner


async def _final(turn: QueuedTurn) -> Any:
    assert turn.receive is not None
    last = None
    async with turn.receive:
        async for batch in turn.receive:
            frame = decode_reply(batch.splitlines()[-1])
            assert isinstance(frame, EventFrame)
            last = frame.event
    return last


async def test_turn_timeout_is_per_prompt(autojump_clock: Any) -> None:
    """A turn past its own timeout is cancelled at its deadline and ends ACP_TURN_TIMEOUT;
    the next prompt with a longer timeout on the same session runs to its end."""
    stub = StubRuntime()
    stub.push_script(Hang())
    stub.push_script(Delay(5))
    async with trio.open_nursery() as nursery:
        owner = _owner(stub, nursery)
        short = QueuedTurn(_prompt(request_id="a", timeout_seconds=3))
        longer = QueuedTurn(_prompt(request_id="b", timeout_seconds=10))
        owner._session(short.request).enqueue(short)
        owner._session(longer.request).enqueue(longer)
        start = trio.current_time()
        first = await _final(short)
        assert isinstance(first, ErrorEvent) and first.code == "ACP_TURN_TIMEOUT"
        assert trio.current_time() - start == pytest.approx(3, abs=0.01)
        second = await _final(longer)
        assert isinstance(second, DoneEvent) and second.stop_reason == "end_turn"
        assert trio.current_time() - start == pytest.approx(8, abs=0.01)
        assert len(stub.calls_to("cancel")) == 1
        nursery.cancel_scope.cancel()
