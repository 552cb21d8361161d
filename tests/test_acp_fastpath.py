"""The one-pass ``session/update`` path of AcpConnection and the ``on_message`` tap."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from test_acp_connection import connected

from acpx_trio._acp import (
    AgentMessageChunk,
    SessionUpdateLine,
    UnknownSessionUpdate,
    decode_session_update_line,
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
    ]
    for message in bad:
        with pytest.raises(msgspec.MsgspecError):
            decode_session_update_line(msgspec.json.encode(message))
    with pytest.raises(msgspec.DecodeError):
        decode_session_update_line(b'not json "session/update"')
    params = msgspec.json.encode(update(1, "brand_new")["params"])
    tolerant = decode_notification(msgspec.Raw(params))
    assert isinstance(tolerant.update, UnknownSessionUpdate)


async def test_fast_path_keeps_wire_order_and_falls_back() -> None:
    async with connected(max_junk_lines=5) as h:
        seen: list[Any] = []

        def on_fast(lines: list[SessionUpdateLine]) -> None:
            for line in lines:
                assert isinstance(line.params.update, AgentMessageChunk)
                seen.append(("fast", int(line.params.update.content.text or "")))

        def on_generic(params: msgspec.Raw) -> None:
            seen.append(("generic", msgspec.json.decode(params)["update"]["sessionUpdate"]))

        h.conn.set_notification_handler("session/update", on_generic)
        h.conn.set_fast_notification_handler(
            "session/update", decode_session_update_line, on_fast
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


async def test_fast_handler_failure_is_reported_and_reading_goes_on() -> None:
    async with connected() as h:
        seen: list[int] = []

        def on_fast(lines: list[SessionUpdateLine]) -> None:
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


async def test_on_message_sees_raw_lines_both_ways() -> None:
    taps: list[tuple[str, bytes]] = []
    async with connected(on_message=lambda d, line: taps.append((d, line))) as h:
        await h.conn.notify("session/cancel", {"sessionId": "s"})
        note = await h.peer.recv()
        assert note["method"] == "session/cancel"
        raw_in = b'{"jsonrpc":"2.0","method":"x/y","params":{"a":1}}'
        await h.peer.send(raw_in + b"\n")
        await trio.testing.wait_all_tasks_blocked()
    assert taps[0][0] == "out" and msgspec.json.decode(taps[0][1])["method"] == "session/cancel"
    assert not taps[0][1].endswith(b"\n")
    assert taps[1] == ("in", raw_in)
