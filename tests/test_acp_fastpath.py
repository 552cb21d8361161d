"""The one-pass ``session/update`` path of AcpConnection."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_acp_connection import connected

from acpx_trio._acp import (
    AgentMessageChunk,
    SessionUpdateLine,
    UnknownSessionUpdate,
    decode_session_update_line,
    decode_session_update_lines,
)
from acpx_trio._runtime.update_map import decode_notification

pytestmark = pytest.mark.usefixtures("autojump_clock")


def update(n: int, kind: str = "agent_message_chunk", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"sessionUpdate": kind, "content": {"type": "text", "text": str(n)}}
    return {"jsonrpc": "2.0", "method": "session/update",
            "params": {"sessionId": "s", "update": body}, **extra}


def test_line_decoder_accepts_only_known_update_notifications() -> None:
    ok = decode_session_update_line(msgspec.json.encode(update(1)))
    assert isinstance(ok.params.update, AgentMessageChunk)
    assert ok.params.update.content.text == "1"
    bad = [
        update(1, kind="brand_new"),  # unknown kind: the tolerant path handles it
        update(1, id=7),  # a request, not a notification
        {"jsonrpc": "2.0", "method": "session/other", "params": {}},
        {"params": update(1)["params"]},  # no method at all
        {**update(1), "method": "session/other"},  # good params, another method
        {**update(1), "method": None},
    ]
    for message in bad:
        with pytest.raises(msgspec.MsgspecError):
            decode_session_update_line(msgspec.json.encode(message))
    with pytest.raises(msgspec.DecodeError):
        decode_session_update_line(b'not json "session/update"')
    params = msgspec.json.encode(update(1, "brand_new")["params"])
    tolerant = decode_notification(msgspec.Raw(params))
    assert isinstance(tolerant.update, UnknownSessionUpdate)


def line_of(n: int, **extra: Any) -> bytes:
    return msgspec.json.encode(update(n, **extra))


def per_line(lines: list[bytes]) -> list[SessionUpdateLine] | None:
    """What the per-line decoder makes of ``lines`` when it takes every one, else None."""
    out = []
    for line in lines:
        try:
            out.append(decode_session_update_line(line))
        except msgspec.MsgspecError:
            return None
    return out


def test_batch_decoder_takes_only_one_message_per_line() -> None:
    one, two, three = line_of(1), line_of(2), line_of(3)
    whole = decode_session_update_lines(b"\n".join([one, two, three + b" \r"]))
    assert whole is not None and whole == per_line([one, two, three])
    cut = len(three) // 2
    refused = [
        [one + two, three[:cut], three[cut:]],  # two on a line, one split: the counts agree
        # the same with the block starting with "{" and ending with "}"
        [one + two, three[:three.index(b'"update"')], three[three.index(b'"update"'):]],
        [one, three[:cut], three[cut:]],  # one object over two lines
        [one + b" \t" + two],  # two objects on one line
        [one, b"", two],  # a blank line (skipped by the per-line path, never decoded)
        [one, line_of(2, id=4)],  # a request
        [one, msgspec.json.encode({"jsonrpc": "2.0", "method": "\x00"})],
        [one, b"[" + two + b"]"],
        [one, b"junk"],
    ]
    for lines in refused:
        assert decode_session_update_lines(b"\n".join(lines)) is None, lines


_pieces = st.sampled_from([
    line_of(0), line_of(1, kind="agent_thought_chunk"), line_of(2, kind="brand_new"),
    line_of(3, id=9), b"", b"  ", b"junk", b"{", b"}", b"{}", b'"session/update"',
    b'{"jsonrpc":"2.0","method":"session/update","params":',
    b'{"sessionId":"s","update":{"sessionUpdate":"agent_message_chunk",',
    b'"content":{"type":"text","text":"} {"}}}',
])


_valid = st.tuples(st.sampled_from([b"", b" ", b"\t"]),
                   st.sampled_from([line_of(0), line_of(1, kind="agent_thought_chunk"),
                                    line_of(5, kind="usage_update")]),
                   st.sampled_from([b"", b" ", b"\r"])).map(b"".join)
_combined = st.lists(_pieces, min_size=1, max_size=3).flatmap(
    lambda parts: st.sampled_from([b"", b" ", b"\t"]).map(lambda sep: sep.join(parts)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_valid, _valid, _combined), min_size=1, max_size=8))
def test_batch_decoder_agrees_with_the_line_decoder(lines: list[bytes]) -> None:
    """Whatever lines arrive, the batch decoder either declines or returns exactly what the
    per-line decoder returns for each line (and that decoder then takes every line)."""
    whole = decode_session_update_lines(b"\n".join(lines))
    if whole is not None:
        assert whole == per_line(lines)


_braced_split = [  # one notification cut before its update: both halves are in _braced
    b'{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s",',
    b'"update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"x"}}}}',
]
_braced = st.sampled_from([
    line_of(0), line_of(1, kind="agent_thought_chunk"), line_of(2, kind="brand_new"),
    b"{", b"}", b"{}", b'{"a":{"b":{}}}', b'{"text":"} {"}',
    *_braced_split,
])


@settings(max_examples=500, deadline=None)
@example([line_of(0) + line_of(1), *_braced_split])
@given(st.lists(st.lists(_braced, min_size=1, max_size=3).map(b"".join), min_size=1,
                max_size=6))
def test_batch_decoder_agrees_on_objects_cut_and_joined_at_braces(
        lines: list[bytes]) -> None:
    """Lines with no whitespace between objects (the common wire shape): fragments that
    split, double and nest objects at braces are refused, and lines that are each one
    notification are all taken."""
    assert decode_session_update_lines(b"\n".join(lines)) == per_line(lines)


@pytest.mark.parametrize("batched", [False, True], ids=["line-by-line", "batch-first"])
async def test_fast_path_keeps_wire_order_and_falls_back(batched: bool) -> None:
    async with connected(max_junk_lines=5) as h:
        seen: list[Any] = []
        sizes: list[int] = []

        def on_fast(lines: list[SessionUpdateLine], size: int) -> None:
            sizes.append(size)
            for line in lines:
                assert isinstance(line.params.update, AgentMessageChunk)
                seen.append(("fast", int(line.params.update.content.text or "")))

        def on_generic(params: msgspec.Raw) -> None:
            seen.append(("generic", msgspec.json.decode(params)["update"]["sessionUpdate"]))

        h.conn.set_notification_handler("session/update", on_generic)
        h.conn.set_fast_notification_handler(
            "session/update", decode_session_update_line, on_fast,
            decode_batch=decode_session_update_lines if batched else None,
        )
        lines = [
            msgspec.json.encode(update(0)),
            msgspec.json.encode(update(1, kind="brand_new")),
            msgspec.json.encode(update(2)),
            b'junk mentioning "session/update"',
            msgspec.json.encode(update(3)),
            msgspec.json.encode(update(4, id=99)),  # a request: answered -32601
        ]
        await h.peer.send(b"\n".join(lines) + b"\n")
        answer = await h.peer.recv()
        assert answer["id"] == 99 and answer["error"]["code"] == -32601
        assert seen == [("fast", 0), ("generic", "brand_new"), ("fast", 2), ("fast", 3)]
        assert h.conn.junk_lines == 1
        assert [w.code for w in h.warnings] == ["ACP_JUNK_LINE"]
        # the handler hears the wire bytes of what it got (its lines and their newlines)
        assert sum(sizes) == sum(len(lines[i]) + 1 for i in (0, 2, 4))
        # a batch of known updates only: all delivered, in order, in one call
        sizes.clear()
        batch = b"".join(line_of(n) + b"\n" for n in range(5, 9))
        await h.peer.send(batch)
        await trio.testing.wait_all_tasks_blocked()
        assert seen[4:] == [("fast", n) for n in range(5, 9)]
        assert sum(sizes) == len(batch)


async def test_split_and_doubled_objects_are_junk_even_when_batched() -> None:
    """The batch decoder must not turn malformed lines into messages: two objects on one
    line and one object over two lines are three junk lines, as line by line."""
    async with connected(max_junk_lines=5) as h:
        seen: list[SessionUpdateLine] = []
        h.conn.set_fast_notification_handler(
            "session/update", decode_session_update_line, lambda lines, _: seen.extend(lines),
            decode_batch=decode_session_update_lines,
        )
        third = line_of(3)
        cut = len(third) // 2
        await h.peer.send(b"\n".join([line_of(1) + line_of(2), third[:cut], third[cut:]])
                          + b"\n" + line_of(4) + b"\n")
        await trio.testing.wait_all_tasks_blocked()
        assert [line.params.update.content.text for line in seen  # type: ignore[union-attr]
                ] == ["4"]
        assert h.conn.junk_lines == 3


async def test_fast_handler_failure_is_reported_and_reading_goes_on() -> None:
    async with connected() as h:
        seen: list[int] = []

        def on_fast(lines: list[SessionUpdateLine], size: int) -> None:
            if len(seen) == 0:
                seen.append(-1)
                raise RuntimeError("handler bug")
            seen.append(len(lines))

        h.conn.set_fast_notification_handler(
            "session/update", decode_session_update_line, on_fast
        )
        await h.peer.send(msgspec.json.encode(update(0)) + b"\n")
        await trio.testing.wait_all_tasks_blocked()
        await h.peer.send(msgspec.json.encode(update(1)) + b"\n")
        await trio.testing.wait_all_tasks_blocked()
        assert seen == [-1, 1]
        assert [w.code for w in h.warnings] == ["ACP_NOTIFICATION_FAILED"]
