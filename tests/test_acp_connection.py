"""AcpConnection over in-memory Trio streams, against a scripted peer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from acpx_trio._acp import (
    AcpConnection,
    EmptyResponse,
    Implementation,
    InitializeRequest,
    InitializeResponse,
    ReadTextFileRequest,
    ReadTextFileResponse,
)
from acpx_trio._acp._framing import LineReader
from acpx_trio._acp._jsonrpc import Notification, parse_message
from acpx_trio._acp._updates import decode_session_update_line, decode_session_update_lines
from acpx_trio._errors import (
    AcpConnectionClosedError,
    AcpProtocolError,
    AcpRuntimeError,
)

pytestmark = pytest.mark.usefixtures("autojump_clock")


class Peer:
    """The agent side, scripted by the test."""

    def __init__(self, stream: trio.StapledStream[Any, Any]) -> None:
        self.stream = stream
        self.reader = LineReader(stream.receive_stream)

    async def send(self, message: dict[str, Any] | bytes) -> None:
        data = message if isinstance(message, bytes) else msgspec.json.encode(message) + b"\n"
        await self.stream.send_all(data)

    async def recv(self) -> dict[str, Any]:
        with trio.fail_after(5):
            line = await self.reader.receive_line()
        assert line is not None, "client closed its output"
        decoded: dict[str, Any] = msgspec.json.decode(line)
        return decoded


class Harness:
    def __init__(self, conn: AcpConnection, peer: Peer, nursery: trio.Nursery) -> None:
        self.conn = conn
        self.peer = peer
        self.nursery = nursery
        self.warnings: list[AcpProtocolError] = []
        self.serve_error: BaseException | None = None
        self.serve_done = trio.Event()


@asynccontextmanager
async def connected(*, lockstep: bool = False, **kwargs: Any) -> AsyncIterator[Harness]:
    """A served connection and its scripted peer; ``lockstep``: every write waits for the
    other side to read it (a peer that reads nothing blocks our answers)."""
    pair = trio.testing.lockstep_stream_pair if lockstep else trio.testing.memory_stream_pair
    client, agent = pair()
    warnings: list[AcpProtocolError] = []
    conn = AcpConnection(
        client.send_stream, client.receive_stream, on_warning=warnings.append, **kwargs
    )
    async with trio.open_nursery() as nursery:
        h = Harness(conn, Peer(agent), nursery)
        h.warnings = warnings

        async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                await conn.serve(task_status=task_status)
            except AcpProtocolError as exc:
                h.serve_error = exc
            finally:
                h.serve_done.set()

        await nursery.start(serve)
        yield h
        nursery.cancel_scope.cancel()


def init_params() -> InitializeRequest:
    return InitializeRequest(protocol_version=1, client_info=Implementation(name="t", version="1"))


async def start_request(h: Harness, method: str, result_type: type[Any]) -> list[Any]:
    """Starts conn.request in the background; the returned list gets the result or exception."""
    box: list[Any] = []

    async def run() -> None:
        try:
            box.append(await h.conn.request(method, {"x": 1}, result_type))
        except Exception as exc:
            box.append(exc)

    h.nursery.start_soon(run)
    return box


async def test_request_response_with_id_zero() -> None:
    async with connected() as h:
        async with trio.open_nursery() as n:
            box: list[InitializeResponse] = []

            async def call() -> None:
                box.append(await h.conn.request("initialize", init_params(), InitializeResponse))

            n.start_soon(call)
            msg = await h.peer.recv()
            assert msg == {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": 1,
                    "clientCapabilities": {
                        "fs": {"readTextFile": False, "writeTextFile": False},
                        "terminal": False,
                        # not offered by these params: null means unsupported (schema v1)
                        "elicitation": None,
                        "session": None,
                    },
                    "clientInfo": {"name": "t", "version": "1"},
                },
            }
            await h.peer.send(
                {
                    "jsonrpc": "2.0",
                    "id": 0,
                    "result": {
                        "protocolVersion": 1,
                        "agentCapabilities": {"loadSession": True, "futureThing": {"a": 1}},
                        "agentInfo": {"name": "a", "version": "2"},
                        "unknownTopLevel": True,
                    },
                }
            )
        assert box[0].protocol_version == 1
        assert box[0].agent_capabilities.load_session is True
        assert box[0].agent_info is not None and box[0].agent_info.name == "a"
        # ids increase
        box2 = await start_request(h, "x", EmptyResponse)
        assert (await h.peer.recv())["id"] == 1
        await h.peer.send({"jsonrpc": "2.0", "id": 1, "result": None})  # null -> {}
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(box2[0], EmptyResponse)


async def test_jsonrpc_error_becomes_runtime_error() -> None:
    async with connected() as h:
        box = await start_request(h, "session/load", EmptyResponse)
        msg = await h.peer.recv()
        await h.peer.send(
            {
                "jsonrpc": "2.0",
                "id": msg["id"],
                "error": {"code": -32002, "message": "Session not found", "data": {"id": "s"}},
            }
        )
        await trio.testing.wait_all_tasks_blocked()
        exc = box[0]
        assert type(exc) is AcpRuntimeError
        assert exc.code == "ACP_RPC_ERROR"
        assert exc.rpc_code == -32002
        assert exc.rpc_data == {"id": "s"}
        assert "session/load" in exc.message and "Session not found" in exc.message


async def test_malformed_error_object_still_answers() -> None:
    async with connected() as h:
        box = await start_request(h, "m", EmptyResponse)
        msg = await h.peer.recv()
        await h.peer.send({"jsonrpc": "2.0", "id": msg["id"], "error": "boom"})
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(box[0], AcpRuntimeError) and box[0].rpc_code == -32603


async def test_bad_result_is_bad_message_and_connection_survives() -> None:
    async with connected() as h:
        box = await start_request(h, "fs", ReadTextFileResponse)
        msg = await h.peer.recv()
        await h.peer.send({"jsonrpc": "2.0", "id": msg["id"], "result": {"content": 5}})
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(box[0], AcpProtocolError) and box[0].code == "ACP_BAD_MESSAGE"
        box = await start_request(h, "fs", ReadTextFileResponse)
        msg = await h.peer.recv()
        await h.peer.send({"jsonrpc": "2.0", "id": msg["id"], "result": {"content": "ok"}})
        await trio.testing.wait_all_tasks_blocked()
        assert box[0] == ReadTextFileResponse(content="ok")


async def test_raw_result_type() -> None:
    async with connected() as h:
        box = await start_request(h, "m", msgspec.Raw)
        msg = await h.peer.recv()
        await h.peer.send({"jsonrpc": "2.0", "id": msg["id"], "result": [1, 2]})
        await trio.testing.wait_all_tasks_blocked()
        assert bytes(box[0]) == b"[1,2]"


async def test_agent_requests_are_served() -> None:
    async with connected() as h:
        release = trio.Event()

        async def read_file(params: msgspec.Raw) -> ReadTextFileResponse:
            req = msgspec.json.decode(params, type=ReadTextFileRequest)
            if req.path == "/slow":
                await release.wait()
            if req.path == "/missing":
                raise AcpRuntimeError("X", "no such file", rpc_code=-32002, rpc_data={"p": 1})
            if req.path == "/bug":
                raise ValueError("oops")
            if req.path == "/plain":
                raise AcpRuntimeError("X", "no rpc code")
            return ReadTextFileResponse(content=f"content of {req.path}")

        async def returns_none(params: msgspec.Raw) -> None:
            return None

        async def unencodable(params: msgspec.Raw) -> object:
            return object()

        h.conn.set_request_handler("fs/read_text_file", read_file)
        h.conn.set_request_handler("none", returns_none)
        h.conn.set_request_handler("weird", unencodable)

        def req(id_: Any, path: str) -> dict[str, Any]:
            return {
                "jsonrpc": "2.0",
                "id": id_,
                "method": "fs/read_text_file",
                "params": {"sessionId": "s", "path": path},
            }

        # the slow one (id 0) must not block the next (string id)
        await h.peer.send(req(0, "/slow"))
        await h.peer.send(req("abc", "/fast"))
        answer = await h.peer.recv()
        assert answer == {"jsonrpc": "2.0", "id": "abc", "result": {"content": "content of /fast"}}
        release.set()
        assert (await h.peer.recv()) == {
            "jsonrpc": "2.0",
            "id": 0,
            "result": {"content": "content of /slow"},
        }
        await h.peer.send(req(2, "/missing"))
        assert (await h.peer.recv())["error"] == {
            "code": -32002,
            "message": "no such file",
            "data": {"p": 1},
        }
        await h.peer.send(req(3, "/bug"))
        err = (await h.peer.recv())["error"]
        assert err["code"] == -32603 and "oops" in err["message"]
        await h.peer.send(req(4, "/plain"))
        assert (await h.peer.recv())["error"]["code"] == -32603
        await h.peer.send(
            {"jsonrpc": "2.0", "id": 5, "method": "fs/read_text_file", "params": {"path": 1}}
        )
        assert (await h.peer.recv())["error"]["code"] == -32602
        await h.peer.send({"jsonrpc": "2.0", "id": 6, "method": "terminal/create", "params": {}})
        err = (await h.peer.recv())["error"]
        assert err["code"] == -32601 and "terminal/create" in err["message"]
        await h.peer.send({"jsonrpc": "2.0", "id": 7, "method": "none"})
        assert (await h.peer.recv()) == {"jsonrpc": "2.0", "id": 7, "result": None}
        await h.peer.send({"jsonrpc": "2.0", "id": 8, "method": "weird"})
        assert (await h.peer.recv())["error"]["code"] == -32603


async def test_notifications_in_wire_order() -> None:
    async with connected() as h:
        seen: list[int] = []

        def on_update(params: msgspec.Raw) -> None:
            n = msgspec.json.decode(params, type=dict[str, int])["n"]
            if n == 3:
                raise RuntimeError("handler bug")
            seen.append(n)

        h.conn.set_notification_handler("session/update", on_update)
        lines = b"".join(
            msgspec.json.encode({"jsonrpc": "2.0", "method": "session/update", "params": {"n": i}})
            + b"\n"
            for i in range(200)
        )
        await h.peer.send(lines + b'{"jsonrpc":"2.0","method":"unknown/thing"}\n')
        await trio.testing.wait_all_tasks_blocked()
        assert seen == [i for i in range(200) if i != 3]
        assert [w.code for w in h.warnings] == ["ACP_NOTIFICATION_FAILED"]


async def test_junk_lines_are_tolerated_then_fatal() -> None:
    async with connected(max_junk_lines=3) as h:
        box = await start_request(h, "m", EmptyResponse)
        await h.peer.recv()
        await h.peer.send(b"Welcome back!\n\n   \n[1,2]\n")
        await h.peer.send(b'{"jsonrpc":"2.0"}\n')
        await trio.testing.wait_all_tasks_blocked()
        assert h.conn.junk_lines == 3
        assert h.conn.last_junk == [b"Welcome back!", b"[1,2]", b'{"jsonrpc":"2.0"}']
        assert [w.code for w in h.warnings] == ["ACP_JUNK_LINE"] * 3
        assert box == [] and not h.conn.closed
        await h.peer.send(b"x" * 500 + b"\n")  # the 4th: fatal
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(h.serve_error, AcpProtocolError)
        assert h.serve_error.code == "ACP_PROTOCOL_GARBAGE"
        assert isinstance(box[0], AcpProtocolError) and box[0].code == "ACP_PROTOCOL_GARBAGE"
        assert len(h.conn.last_junk[-1]) == 200
        assert h.conn.closed
        with pytest.raises(AcpConnectionClosedError):
            await h.conn.request("m", {}, EmptyResponse)


async def test_a_junk_line_is_redacted_before_it_is_cut_for_display() -> None:
    """A credential across the 80-byte preview (or the 200 bytes kept): the cut must not
    leave its first part (20 of 32 characters were shown before)."""
    secret = "sk-live-0123456789abcdefghijklmnop"
    async with connected(max_junk_lines=1) as h:
        h.conn.redact_secrets = (secret,)
        box = await start_request(h, "m", EmptyResponse)
        await h.peer.recv()
        await h.peer.send(b"J" * 60 + secret.encode() + b"\n")
        await h.peer.send(b"\xff" * 170 + secret.encode() + b"\n")  # the 2nd: fatal
        await trio.testing.wait_all_tasks_blocked()
        shown = [w.message for w in h.warnings] + [str(h.serve_error), str(box[0])]
        assert all(secret[:8] not in text for text in shown), shown
        assert all(secret[:8].encode() not in line for line in h.conn.last_junk)
        assert h.conn.last_junk[-1].startswith(b"\xff" * 170)  # undecodable bytes kept


async def test_a_credential_of_digits_as_an_error_code_is_never_shown_or_kept() -> None:
    """An agent answering with its credential of digits as the JSON-RPC error's code (or as
    a float in its data) had it in the message, ``rpc_code`` and every place they go."""
    secret = "98765432"
    async with connected() as h:
        h.conn.redact_secrets = (secret,)
        box = await start_request(h, "session/new", EmptyResponse)
        msg = await h.peer.recv()
        await h.peer.send({"jsonrpc": "2.0", "id": msg["id"], "error": {
            "code": int(secret), "message": "no", "data": {"n": 98765432e20, "m": 0.000098765432}}})
        await trio.testing.wait_all_tasks_blocked()
        exc = box[0]
        assert isinstance(exc, AcpRuntimeError) and exc.code == "ACP_RPC_ERROR"
        assert exc.rpc_code is None
        shown = f"{exc.message} {exc.rpc_data!r}".replace(".", "")
        assert secret not in shown, shown


async def test_json_nested_past_the_decoders_limit_is_a_junk_line_not_a_crash() -> None:
    """msgspec stops at about 1,000 levels with a RecursionError, which killed the read
    loop (and a warm owner with it): such a line is junk, reported, and the connection
    serves on."""
    deep = b"[" * 5000 + b"]" * 5000
    update = (b'{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s",'
              b'"update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text",'
              b'"text":"x"},"_meta":' + deep + b"}}}")
    seen: list[Any] = []
    async with connected() as h:
        h.conn.set_fast_notification_handler(
            "session/update", decode_session_update_line, lambda lines, _: seen.extend(lines),
            decode_batch=decode_session_update_lines)
        box = await start_request(h, "m", EmptyResponse)
        request = await h.peer.recv()
        await h.peer.send(update + b"\n" + deep + b"\n")
        await h.peer.send(b'{"jsonrpc":"2.0","id":%d,"result":{}}\n' % request["id"])
        await trio.testing.wait_all_tasks_blocked()
        assert [w.code for w in h.warnings] == ["ACP_JUNK_LINE"] * 2
        assert "nested too deeply" in h.warnings[0].message
        assert box and isinstance(box[0], EmptyResponse) and not h.conn.closed


async def test_oversized_line_is_fatal_and_fails_pending() -> None:
    async with connected(max_line_bytes=1000) as h:
        box = await start_request(h, "m", EmptyResponse)
        box2 = await start_request(h, "m2", EmptyResponse)
        await h.peer.recv()
        await h.peer.send(b'{"jsonrpc":"2.0","method":"x","params":"' + b"a" * 5000)
        with trio.fail_after(5):
            await h.serve_done.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(h.serve_error, AcpProtocolError)
        assert h.serve_error.code == "ACP_LINE_TOO_LONG"
        for b in (box, box2):
            assert isinstance(b[0], AcpProtocolError) and b[0].code == "ACP_LINE_TOO_LONG"
        assert box[0] is not box2[0]


async def test_eof_mid_request_fails_with_connection_closed() -> None:
    async with connected() as h:
        box = await start_request(h, "session/prompt", EmptyResponse)
        await h.peer.recv()
        await h.peer.stream.send_stream.aclose()
        with trio.fail_after(5):
            await h.serve_done.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert h.serve_error is None  # EOF is a clean return
        assert isinstance(box[0], AcpConnectionClosedError)
        assert "EOF" in box[0].message
        assert h.conn.closed
        with pytest.raises(AcpConnectionClosedError):
            await h.conn.request("m", {}, EmptyResponse)
        with pytest.raises(AcpConnectionClosedError):
            await h.conn.notify("session/cancel", {"sessionId": "s"})


async def test_eof_cancels_running_handlers() -> None:
    async with connected() as h:
        cancelled = trio.Event()

        async def forever(params: msgspec.Raw) -> None:
            try:
                await trio.sleep_forever()
            finally:
                cancelled.set()

        h.conn.set_request_handler("session/request_permission", forever)
        await h.peer.send({"jsonrpc": "2.0", "id": 0, "method": "session/request_permission"})
        await trio.testing.wait_all_tasks_blocked()
        await h.peer.stream.send_stream.aclose()
        with trio.fail_after(5):
            await cancelled.wait()
            await h.serve_done.wait()


async def test_unknown_response_id_warns_and_is_ignored() -> None:
    async with connected() as h:
        box = await start_request(h, "m", ReadTextFileResponse)
        msg = await h.peer.recv()
        await h.peer.send({"jsonrpc": "2.0", "id": 99, "result": {}})
        await h.peer.send({"jsonrpc": "2.0", "id": "0", "result": {}})  # str "0" is not 0
        await h.peer.send({"jsonrpc": "2.0", "id": None, "error": {"code": -32700}})
        await trio.testing.wait_all_tasks_blocked()
        assert [w.code for w in h.warnings] == ["ACP_UNKNOWN_RESPONSE_ID"] * 3
        assert box == []
        await h.peer.send({"jsonrpc": "2.0", "id": msg["id"], "result": {"content": "c"}})
        await h.peer.send({"jsonrpc": "2.0", "id": msg["id"], "result": {"content": "dup"}})
        await trio.testing.wait_all_tasks_blocked()
        assert box == [ReadTextFileResponse(content="c")]
        assert len(h.warnings) == 4  # the duplicate answer is reported too


async def test_cancelled_request_drops_late_answer_quietly() -> None:
    async with connected() as h:
        with trio.move_on_after(1) as scope:
            await h.conn.request("session/prompt", {}, EmptyResponse)
        assert scope.cancelled_caught
        msg = await h.peer.recv()
        await h.peer.send({"jsonrpc": "2.0", "id": msg["id"], "result": {}})
        await trio.testing.wait_all_tasks_blocked()
        assert h.warnings == []
        box = await start_request(h, "again", EmptyResponse)
        msg2 = await h.peer.recv()
        assert msg2["id"] == msg["id"] + 1
        await h.peer.send({"jsonrpc": "2.0", "id": msg2["id"], "result": {}})
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(box[0], EmptyResponse)


async def test_notify_and_aclose() -> None:
    async with connected() as h:
        await h.conn.notify("session/cancel", {"sessionId": "s"})
        assert await h.peer.recv() == {
            "jsonrpc": "2.0",
            "method": "session/cancel",
            "params": {"sessionId": "s"},
        }
        box = await start_request(h, "m", EmptyResponse)
        await h.peer.recv()
        await h.conn.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(box[0], AcpConnectionClosedError)
        assert h.conn.closed
        with trio.fail_after(5):
            assert await h.peer.reader.receive_line() is None  # the agent sees EOF
        with pytest.raises(AcpConnectionClosedError):
            await h.conn.notify("x", None)
        await h.conn.aclose()  # idempotent


async def test_cancelling_serve_fails_pending_requests() -> None:
    client, agent = trio.testing.memory_stream_pair()
    conn = AcpConnection(client.send_stream, client.receive_stream)
    peer = Peer(agent)
    box: list[Any] = []
    async with trio.open_nursery() as outer:
        serve_scope = trio.CancelScope()

        async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with serve_scope:
                await conn.serve(task_status=task_status)

        async def call() -> None:
            try:
                await conn.request("m", {}, EmptyResponse)
            except AcpConnectionClosedError as exc:
                box.append(exc)

        await outer.start(serve)
        outer.start_soon(call)
        await peer.recv()
        serve_scope.cancel()
    assert isinstance(box[0], AcpConnectionClosedError)
    assert "cancelled" in box[0].message
    assert conn.closed


class BrokenSend(trio.abc.SendStream):
    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        raise trio.BrokenResourceError("EPIPE")

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_broken_pipe_raises_connection_closed() -> None:
    _, receive = trio.testing.memory_stream_one_way_pair()
    conn = AcpConnection(BrokenSend(), receive)
    with pytest.raises(AcpConnectionClosedError):
        await conn.notify("x", {})
    with pytest.raises(AcpConnectionClosedError):
        await conn.request("x", {}, EmptyResponse)


async def test_serve_runs_once() -> None:
    async with connected() as h:
        with pytest.raises(RuntimeError):
            await h.conn.serve()


#: text with surrogates in it, paired and lone, among other characters
_SURROGATE_TEXT = st.lists(st.one_of(
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), st.characters(codec=None),
), max_size=12).map("".join)


@given(_SURROGATE_TEXT)
def test_lone_surrogate_escapes_read_as_replacement_characters(text: str) -> None:
    """What a JSON encoder writes for any string (pairs kept, lone surrogates escaped, as
    JavaScript's ``JSON.stringify`` does) is read back: pairs joined, each lone surrogate a
    U+FFFD, never a line dropped."""
    line = json.dumps({"jsonrpc": "2.0", "method": "m", "params": {"t": text}}).encode()
    message = parse_message(line)
    assert isinstance(message, Notification)
    expected = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    assert msgspec.json.decode(message.params) == {"t": expected}


async def test_lone_surrogates_never_lose_a_message() -> None:
    """A JSON line with a lone UTF-16 surrogate escape (valid JSON, no Unicode text: msgspec
    refuses it) is no junk line: an answer to our request arrives (with U+FFFD), a
    notification is delivered, and a request of the agent gets an "invalid params" error,
    its handler never run on altered text.  Each was once dropped: the request unanswered,
    the turn's answer lost."""
    async with connected() as h:
        called: list[msgspec.Raw] = []

        async def write(params: msgspec.Raw) -> None:
            called.append(params)

        seen: list[Any] = []
        h.conn.set_request_handler("fs/write_text_file", write)
        h.conn.set_notification_handler(
            "session/update", lambda params: seen.append(msgspec.json.decode(params)))
        box = await start_request(h, "session/prompt", msgspec.Raw)
        msg = await h.peer.recv()
        await h.peer.send(b'{"jsonrpc":"2.0","method":"session/update","params":'
                          b'{"text":"smile \\ud83d"}}\n')
        await h.peer.send(b'{"jsonrpc":"2.0","id":7,"method":"fs/write_text_file","params":'
                          b'{"sessionId":"s","path":"/f","content":"a\\ud800b"}}\n')
        reply = await h.peer.recv()
        assert reply["id"] == 7 and reply["error"]["code"] == -32602, reply
        assert "surrogate" in reply["error"]["message"]
        await h.peer.send(b'{"jsonrpc":"2.0","id":%d,"result":{"stopReason":"end_turn",'
                          b'"_meta":{"x":"\\udc00"}}}\n' % msg["id"])
        await trio.testing.wait_all_tasks_blocked()
        assert called == []
        assert seen == [{"text": "smile \ufffd"}]
        assert msgspec.json.decode(box[0]) == {"stopReason": "end_turn", "_meta": {"x": "\ufffd"}}
        assert h.warnings == []


async def test_reading_waits_while_request_lines_being_handled_pass_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past ``MAX_HANDLING_BYTES`` of request lines whose handler runs (handlers that end
    without the peer: a file write, a permission) the connection reads nothing more, and
    resumes in wire order once one is handled."""
    from acpx_trio._acp import _answers

    monkeypatch.setattr(_answers, "MAX_HANDLING_BYTES", 10_000)
    async with connected() as h:
        release = trio.Event()
        running = 0
        seen: list[str] = []

        async def write(params: msgspec.Raw) -> None:
            nonlocal running
            running += 1
            await release.wait()

        h.conn.set_request_handler("fs/write_text_file", write)
        h.conn.set_notification_handler("note", lambda params: seen.append("note"))
        for n in range(5):  # 5 lines of about 4 KB: the third passes the bound
            await h.peer.send({"jsonrpc": "2.0", "id": n, "method": "fs/write_text_file",
                               "params": {"sessionId": "s", "path": "/f", "content": "x" * 4000}})
        await h.peer.send({"jsonrpc": "2.0", "method": "note"})
        await trio.testing.wait_all_tasks_blocked()
        assert running == 2 and not seen  # the reader waits for a handler to end
        release.set()
        answered = {(await h.peer.recv())["id"] for _ in range(5)}
        assert answered == set(range(5))
        await trio.testing.wait_all_tasks_blocked()
        assert seen == ["note"]


async def test_a_peer_that_never_reads_its_answers_is_cut_off_past_the_count_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past ``MAX_ANSWERS`` requests unanswered the connection fails with
    ``ACP_TOO_MANY_REQUESTS`` (memory stays bounded) instead of reading on for ever."""
    from acpx_trio._acp import _answers

    monkeypatch.setattr(_answers, "MAX_ANSWERS", 50)
    async with connected() as h:
        never = trio.Event()

        async def wait(params: msgspec.Raw) -> None:
            await never.wait()

        h.conn.set_request_handler("wait", wait)
        for n in range(51):
            await h.peer.send({"jsonrpc": "2.0", "id": n, "method": "wait"})
        with trio.fail_after(5):
            await h.serve_done.wait()
        assert isinstance(h.serve_error, AcpProtocolError)
        assert h.serve_error.code == "ACP_TOO_MANY_REQUESTS"


async def test_a_peer_that_writes_all_its_requests_before_reading_is_answered() -> None:
    """Pipelining: the peer writes 300 requests for file contents (more than the pipe and
    the large-answer lanes hold) before it reads a single answer.  The connection must keep
    reading while its answers wait for the peer (pausing there deadlocked: the peer blocked
    writing, the answers blocked on the peer; an outside review, 8 of 8)."""
    async def read_file(params: msgspec.Raw) -> ReadTextFileResponse:
        return ReadTextFileResponse(content="x" * 20_000)

    async with connected(lockstep=True) as h:
        h.conn.set_request_handler("fs/read_text_file", read_file, kind="heavy")
        with trio.fail_after(30):
            for n in range(300):
                await h.peer.send({"jsonrpc": "2.0", "id": n, "method": "fs/read_text_file",
                                   "params": {"sessionId": "s", "path": "/f"}})
            answered = {(await h.peer.recv())["id"] for _ in range(300)}
        assert answered == set(range(300))


async def test_a_large_answer_cancelled_while_it_waits_for_its_lane_is_never_made() -> None:
    """``$/cancel_request`` for a request still waiting for a large-answer lane answers it
    -32800 at once; its handler never runs (it used to run and send the whole file)."""
    made: list[str] = []

    async def read_file(params: msgspec.Raw) -> ReadTextFileResponse:
        path = msgspec.json.decode(params, type=ReadTextFileRequest).path
        made.append(path)
        return ReadTextFileResponse(content="x" * 100_000)

    async with connected(lockstep=True) as h:
        h.conn.set_request_handler("fs/read_text_file", read_file, kind="heavy")
        with trio.fail_after(30):
            # one write: two take the lanes (their answers wait for the peer), the third
            # waits; the cancel comes in the same read as the request it cancels
            batch = [{"jsonrpc": "2.0", "id": n, "method": "fs/read_text_file",
                      "params": {"sessionId": "s", "path": f"/f{n}"}} for n in range(3)]
            batch.append({"jsonrpc": "2.0", "method": "$/cancel_request",
                          "params": {"requestId": 2}})
            await h.peer.send(b"".join(msgspec.json.encode(m) + b"\n" for m in batch))
            await trio.testing.wait_all_tasks_blocked()
            answers = {}
            for _ in range(3):
                answer = await h.peer.recv()
                answers[answer["id"]] = answer
        assert answers[2]["error"]["code"] == -32800
        assert "/f2" not in made and sorted(made) == ["/f0", "/f1"]


async def test_large_answers_wait_for_a_peer_that_does_not_read() -> None:
    """Of a ``heavy`` method, at most ``HEAVY_ANSWERS`` answers are made or waiting to be
    written while the peer reads none; each is answered once it reads again."""
    from acpx_trio._acp._answers import HEAVY_ANSWERS

    made = 0

    async def read_file(params: msgspec.Raw) -> ReadTextFileResponse:
        nonlocal made
        made += 1
        return ReadTextFileResponse(content="x" * 100_000)

    async with connected(lockstep=True) as h:
        h.conn.set_request_handler("fs/read_text_file", read_file, kind="heavy")
        for n in range(20):
            await h.peer.send({"jsonrpc": "2.0", "id": n, "method": "fs/read_text_file",
                               "params": {"sessionId": "s", "path": "/f"}})
        await trio.testing.wait_all_tasks_blocked()
        assert made == HEAVY_ANSWERS
        answered = {(await h.peer.recv())["id"] for _ in range(20)}
        assert answered == set(range(20)) and made == 20


async def test_a_cancel_in_the_same_read_stops_a_handler_that_never_checkpoints() -> None:
    """A permission handler decides without an ``await``: a ``$/cancel_request`` read in
    the same batch as its request used to arrive too late to matter (30 of 30, an outside
    review); now it is answered -32800 and the handler never runs."""
    async with connected() as h:
        ran: list[int] = []

        async def decide(params: msgspec.Raw) -> dict[str, Any]:
            ran.append(1)
            return {"outcome": {"outcome": "selected", "optionId": "a"}}

        h.conn.set_request_handler("session/request_permission", decide, kind="wait")
        batch = [{"jsonrpc": "2.0", "id": 7, "method": "session/request_permission",
                  "params": {}},
                 {"jsonrpc": "2.0", "method": "$/cancel_request", "params": {"requestId": 7}}]
        await h.peer.send(b"".join(msgspec.json.encode(m) + b"\n" for m in batch))
        answer = await h.peer.recv()
        assert answer["id"] == 7 and answer["error"]["code"] == -32800 and not ran


async def test_a_change_once_started_runs_to_its_end_and_says_what_it_did() -> None:
    """A ``"work"`` request (a terminal released, a file written) cancelled by the peer
    while its handler runs is answered with what it did, never -32800 for a change that
    happened (a released terminal used to be reported cancelled)."""
    async with connected() as h:
        started, release = trio.Event(), trio.Event()

        async def release_terminal(params: msgspec.Raw) -> dict[str, Any]:
            started.set()
            await release.wait()
            return {}

        h.conn.set_request_handler("terminal/release", release_terminal)  # "work"
        await h.peer.send({"jsonrpc": "2.0", "id": 3, "method": "terminal/release",
                           "params": {}})
        await started.wait()
        await h.peer.send({"jsonrpc": "2.0", "method": "$/cancel_request",
                           "params": {"requestId": 3}})
        await trio.testing.wait_all_tasks_blocked()
        release.set()
        assert await h.peer.recv() == {"jsonrpc": "2.0", "id": 3, "result": {}}


async def test_waits_never_pause_reading_and_padded_ones_are_cut_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Requests that wait on the peer (a terminal's exit) never pause reading, so the
    peer's own ``terminal/kill`` behind them is served (padded waits used to park the
    reader until the command exited on its own); past ``MAX_HELD_BYTES`` of such lines the
    connection ends with ``ACP_TOO_MANY_REQUESTS``."""
    from acpx_trio._acp import _answers

    monkeypatch.setattr(_answers, "MAX_HELD_BYTES", 10_000)
    monkeypatch.setattr(_answers, "MAX_HANDLING_BYTES", 10_000)
    async with connected() as h:
        exited = trio.Event()

        async def wait_for_exit(params: msgspec.Raw) -> dict[str, Any]:
            await exited.wait()
            return {"exitCode": 0}

        async def kill(params: msgspec.Raw) -> dict[str, Any]:
            exited.set()
            return {}

        h.conn.set_request_handler("terminal/wait_for_exit", wait_for_exit, kind="wait")
        h.conn.set_request_handler("terminal/kill", kill)
        pad = "x" * 4000
        for n in range(2):  # 8 KB of waits: under the held bound, over half the work one
            await h.peer.send({"jsonrpc": "2.0", "id": n, "method": "terminal/wait_for_exit",
                               "params": {"pad": pad}})
        await h.peer.send({"jsonrpc": "2.0", "id": 9, "method": "terminal/kill",
                           "params": {"pad": pad}})
        answered = {(await h.peer.recv())["id"] for _ in range(3)}
        assert answered == {0, 1, 9}
        exited = trio.Event()
        for n in range(3):  # 12 KB of waits: the third one is fatal
            await h.peer.send({"jsonrpc": "2.0", "id": 20 + n,
                               "method": "terminal/wait_for_exit", "params": {"pad": pad}})
        with trio.fail_after(5):
            await h.serve_done.wait()
        assert isinstance(h.serve_error, AcpProtocolError)
        assert h.serve_error.code == "ACP_TOO_MANY_REQUESTS"


async def test_answers_that_echo_a_huge_id_to_a_peer_that_never_reads_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An answer repeats the request's id, which the peer chooses: a peer that sends huge
    ids and never reads made every answer wait in memory (1.6 GB for 120 requests of 7 MB,
    an outside review).  Past ``MAX_WAITING_ANSWER_BYTES`` of answers waiting, the next
    request ends the connection; an error answer repeats at most 200 characters of an
    unknown method's name."""
    from acpx_trio._acp import _answers

    monkeypatch.setattr(_answers, "MAX_WAITING_ANSWER_BYTES", 50_000)
    async with connected(lockstep=True) as h:
        with trio.fail_after(10):
            await h.peer.send({"jsonrpc": "2.0", "id": 1, "method": "m" * 10_000})
            assert len((await h.peer.recv())["error"]["message"]) < 300
            n = 0
            while not h.serve_done.is_set():  # never reads: the answers (20 KB each) wait
                n += 1
                await h.peer.send({"jsonrpc": "2.0", "id": f"{n}-" + "i" * 20_000,
                                   "method": "nope"})
                await trio.testing.wait_all_tasks_blocked()
        assert isinstance(h.serve_error, AcpProtocolError)
        assert h.serve_error.code == "ACP_TOO_MANY_REQUESTS"
        assert n <= 5
