"""Newline framing: LineSplitter (sync core) and LineReader (Trio wrapper)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from acpx_trio._acp._framing import LineReader, LineSplitter
from acpx_trio._errors import AcpProtocolError


def test_splits_lines_across_chunks() -> None:
    s = LineSplitter(100)
    assert s.feed(b"ab") == []
    assert s.feed(b"c\nde\n\nf") == [b"abc", b"de", b""]
    assert s.buffered == 1
    assert s.feed(b"g\n") == [b"fg"]
    assert s.finish() is None


def test_finish_returns_partial_last_line() -> None:
    s = LineSplitter(100)
    assert s.feed(b"x\nyz") == [b"x"]
    assert s.finish() == b"yz"
    assert s.finish() is None


def test_line_of_exactly_the_limit_is_accepted() -> None:
    s = LineSplitter(4)
    assert s.feed(b"abcd\n") == [b"abcd"]
    assert s.feed(b"ab") == []
    assert s.feed(b"cd") == []
    assert s.feed(b"\n") == [b"abcd"]


def test_oversized_partial_line_fails_without_buffering_it() -> None:
    s = LineSplitter(10)
    assert s.feed(b"0123456789") == []
    with pytest.raises(AcpProtocolError) as info:
        s.feed(b"A")
    assert info.value.code == "ACP_LINE_TOO_LONG"
    assert "10 bytes" in info.value.message and "max_line_bytes" in info.value.message
    assert s.buffered == 0
    with pytest.raises(AcpProtocolError):  # stays failed
        s.feed(b"\n")
    with pytest.raises(AcpProtocolError):
        s.finish()


def test_oversized_complete_line_in_one_chunk_fails() -> None:
    s = LineSplitter(3)
    with pytest.raises(AcpProtocolError):
        s.feed(b"abcdef\n")


def test_lines_before_the_oversized_one_are_delivered_first() -> None:
    s = LineSplitter(3)
    assert s.feed(b"ok\nabcdefgh") == [b"ok"]
    assert s.error is not None
    with pytest.raises(AcpProtocolError):
        s.feed(b"")


def test_many_small_chunks_of_a_long_line_is_linear() -> None:
    # 200k one-byte feeds would be quadratic with a naive rescan; this must stay fast.
    s = LineSplitter(1_000_000)
    for _ in range(200_000):
        assert s.feed(b"x") == []
    assert s.feed(b"\n") == [b"x" * 200_000]


def test_invalid_limit() -> None:
    with pytest.raises(ValueError):
        LineSplitter(0)


async def test_reader_lines_and_eof_with_partial_line() -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    reader = LineReader(receive, 100)
    await send.send_all(b"one\ntw")
    assert await reader.receive_line() == b"one"
    await send.send_all(b"o\nthree")
    assert await reader.receive_line() == b"two"
    await send.aclose()
    assert await reader.receive_line() == b"three"
    assert await reader.receive_line() is None
    assert await reader.receive_line() is None


async def test_reader_clean_eof() -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    reader = LineReader(receive)
    await send.send_all(b"a\n")
    await send.aclose()
    assert await reader.receive_line() == b"a"
    assert await reader.receive_line() is None


async def test_reader_oversized_line_after_good_lines() -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    reader = LineReader(receive, 8)
    await send.send_all(b"good\n" + b"y" * 50)
    assert await reader.receive_line() == b"good"
    with pytest.raises(AcpProtocolError) as info:
        await reader.receive_line()
    assert info.value.code == "ACP_LINE_TOO_LONG"
    with pytest.raises(AcpProtocolError):
        await reader.receive_line()


async def test_reader_is_cancellable_and_loses_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    reader = LineReader(receive)
    with trio.move_on_after(0.01) as scope:
        await reader.receive_line()
    assert scope.cancelled_caught
    await send.send_all(b"after\n")
    with trio.fail_after(5):
        assert await reader.receive_line() == b"after"


async def test_reader_cancelled_at_a_buffered_line_loses_it_not() -> None:
    """A line already read from the stream stays buffered when the call that would return
    it is cancelled: the next call returns it."""
    send, receive = trio.testing.memory_stream_pair()
    reader = LineReader(receive, max_line_bytes=64)
    await send.send_all(b"a\nb\n")
    assert await reader.receive_line() == b"a"
    with trio.CancelScope() as scope:
        scope.cancel()
        await reader.receive_line()
    assert scope.cancelled_caught
    assert await reader.receive_line() == b"b"


async def test_reader_block_keeps_empty_lines_and_the_wire_bytes() -> None:
    send, receive = trio.testing.memory_stream_pair()
    reader = LineReader(receive, max_line_bytes=64)
    await send.send_all(b"x\n\n y\r\n")
    assert await reader.receive_block() == b"x\n\n y\r"


async def test_reader_block_returns_every_buffered_line_then_none() -> None:
    send, receive = trio.testing.memory_stream_pair()
    reader = LineReader(receive, max_line_bytes=64)
    await send.send_all(b"a\nb\nc\npar")
    assert await reader.receive_block() == b"a\nb\nc"
    await send.send_all(b"tial\nd\n")
    await send.aclose()
    assert await reader.receive_block() == b"partial\nd"
    assert await reader.receive_block() is None
    assert await reader.receive_block() is None


async def test_reader_block_after_single_line_reads_keeps_order() -> None:
    send, receive = trio.testing.memory_stream_pair()
    reader = LineReader(receive, max_line_bytes=64)
    await send.send_all(b"1\n2\n3\n4\n")
    assert await reader.receive_line() == b"1"
    assert await reader.receive_block() == b"2\n3\n4"
    await send.send_all(b"5\n")
    assert await reader.receive_line() == b"5"


async def test_reader_block_oversized_line_after_good_lines() -> None:
    send, receive = trio.testing.memory_stream_pair()
    reader = LineReader(receive, max_line_bytes=8)
    await send.send_all(b"ok\n" + b"x" * 20 + b"\n")
    assert await reader.receive_block() == b"ok"
    with pytest.raises(AcpProtocolError) as info:
        await reader.receive_block()
    assert info.value.code == "ACP_LINE_TOO_LONG"
