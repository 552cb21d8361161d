"""Property tests: framing, the connection's reader, and wire Struct round-trips."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acpx_trio._acp import (
    AcpConnection,
    AgentMessageChunk,
    AgentThoughtChunk,
    ContentBlock,
    CurrentModeUpdate,
    EmptyResponse,
    LineSplitter,
    PermissionOption,
    PermissionToolCall,
    Plan,
    PlanEntry,
    PromptRequest,
    PromptResponse,
    RequestPermissionRequest,
    RequestPermissionResponse,
    SelectedOutcome,
    SessionNotification,
    ToolCall,
    ToolCallUpdate,
    UnknownSessionUpdate,
    decode_session_notification,
    decode_session_update,
    text_block,
)
from acpx_trio._acp._messages import CancelledOutcome
from acpx_trio._errors import AcpProtocolError, AcpxError

# --------------------------------------------------------------------------- framing


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=20)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


byte_soup = st.binary(max_size=400) | st.lists(
    st.sampled_from([b"\n", b"a", b"bb", b"{}", b"\r\n", b"x" * 30]), max_size=60
).map(b"".join)


@given(st.data(), byte_soup, st.integers(1, 40))
def test_splitter_matches_reference(data: st.DataObject, payload: bytes, limit: int) -> None:
    chunks = data.draw(chunked(payload))
    *complete, last = payload.split(b"\n")
    expected_ok = all(len(line) <= limit for line in [*complete, last])
    splitter = LineSplitter(limit)
    got: list[bytes] = []
    error: AcpProtocolError | None = None
    try:
        for chunk in chunks:
            got += splitter.feed(chunk)
            assert splitter.buffered <= limit  # bounded between feeds
        tail = splitter.finish()
        if tail is not None:
            got.append(tail)
    except AcpProtocolError as exc:
        error = exc
    if expected_ok:
        assert error is None
        assert got == [*complete, last] if last else got == complete
    else:
        assert error is not None and error.code == "ACP_LINE_TOO_LONG"
        assert got == complete[: len(got)]  # a prefix of the good lines, in order
        assert all(len(line) <= limit for line in got)


# --------------------------------------------------------------------------- connection

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
ids = st.integers(-2, 5) | st.sampled_from(["0", "a", ""]) | st.none()
messages = st.one_of(
    st.fixed_dictionaries({"jsonrpc": st.just("2.0"), "id": ids, "result": json_values}),
    st.fixed_dictionaries(
        {"id": ids, "error": st.fixed_dictionaries({"code": st.integers(), "message": st.text()})}
    ),
    st.fixed_dictionaries({"id": ids, "error": json_values}),
    st.fixed_dictionaries(
        {"method": st.sampled_from(["session/update", "zz"]), "params": json_values}
    ),
    st.fixed_dictionaries(
        {"id": ids, "method": st.sampled_from(["fs/read_text_file", "nope"]), "params": json_values}
    ),
    json_values,
).map(lambda m: msgspec.json.encode(m))
lines = st.lists(messages | st.binary(max_size=60).filter(lambda b: b"\n" not in b), max_size=25)


async def _drive(raw_lines: list[bytes], max_junk: int, max_line: int) -> None:
    client, agent = trio.testing.memory_stream_pair()
    conn = AcpConnection(
        client.send_stream,
        client.receive_stream,
        max_junk_lines=max_junk,
        max_line_bytes=max_line,
        on_warning=lambda w: None,
    )
    updates: list[Any] = []
    conn.set_notification_handler(
        "session/update", lambda p: updates.append(decode_session_notification(p))
    )

    async def handler(params: msgspec.Raw) -> dict[str, str]:
        return {"content": ""}

    conn.set_request_handler("fs/read_text_file", handler)
    outcomes: list[object] = []

    async def call(n: int) -> None:
        try:
            outcomes.append(await conn.request("m", {"n": n}, EmptyResponse))
        except AcpxError as exc:
            outcomes.append(exc)

    async def drain() -> None:
        with trio.move_on_after(30):
            while await agent.receive_some():
                pass

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            nursery.start_soon(call, 0)
            nursery.start_soon(call, 1)
            await trio.testing.wait_all_tasks_blocked()
            try:
                await agent.send_all(b"".join(line + b"\n" for line in raw_lines))
                await agent.send_stream.aclose()
                await conn.serve()
            except AcpxError:
                pass
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert len(outcomes) == 2  # both requests were answered one way or another
    assert conn.closed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines, st.integers(0, 5), st.sampled_from([20, 200, 8 * 1024 * 1024]))
def test_connection_never_hangs_and_raises_only_acpx_errors(
    raw_lines: list[bytes], max_junk: int, max_line: int
) -> None:
    trio.run(
        _drive, raw_lines, max_junk, max_line, clock=trio.testing.MockClock(autojump_threshold=0)
    )


# --------------------------------------------------------------------------- round trips

texts = st.text(max_size=30)
blocks = st.builds(text_block, texts) | st.builds(
    ContentBlock,
    type=st.sampled_from(["image", "resource_link", "brand_new"]),
    uri=texts | st.none(),
)
known_updates = st.one_of(
    st.builds(AgentMessageChunk, content=blocks, message_id=st.none() | texts),
    st.builds(AgentThoughtChunk, content=blocks),
    st.builds(
        ToolCall,
        tool_call_id=texts,
        title=texts | st.none(),
        kind=st.sampled_from(["read", "edit", "execute", "whatever"]) | st.none(),
        status=st.sampled_from(["pending", "completed"]) | st.none(),
        raw_input=json_values,
    ),
    st.builds(
        ToolCallUpdate, tool_call_id=texts, status=st.sampled_from(["failed", "in_progress"])
    ),
    st.builds(
        Plan, entries=st.lists(st.builds(PlanEntry, content=texts, status=texts), max_size=3)
    ),
    st.builds(CurrentModeUpdate, current_mode_id=texts),
)


@given(st.builds(SessionNotification, session_id=texts, update=known_updates))
def test_session_notification_round_trip(note: SessionNotification) -> None:
    assert decode_session_notification(msgspec.json.encode(note)) == note


@given(
    st.builds(PromptRequest, session_id=texts, prompt=st.lists(blocks, max_size=3)),
    st.builds(PromptResponse, stop_reason=st.sampled_from(["end_turn", "cancelled", "new_one"])),
)
def test_prompt_round_trip(req: PromptRequest, resp: PromptResponse) -> None:
    assert msgspec.json.decode(msgspec.json.encode(req), type=PromptRequest) == req
    assert msgspec.json.decode(msgspec.json.encode(resp), type=PromptResponse) == resp


@given(
    st.builds(
        RequestPermissionRequest,
        session_id=texts,
        tool_call=st.builds(
            PermissionToolCall, tool_call_id=texts, kind=texts, raw_input=json_values
        ),
        options=st.lists(st.builds(PermissionOption, option_id=texts, name=texts, kind=texts)),
    ),
    st.builds(SelectedOutcome, option_id=texts) | st.just(CancelledOutcome()),
)
def test_permission_round_trip(req: RequestPermissionRequest, outcome: Any) -> None:
    assert msgspec.json.decode(msgspec.json.encode(req), type=RequestPermissionRequest) == req
    resp = RequestPermissionResponse(outcome=outcome)
    assert msgspec.json.decode(msgspec.json.encode(resp), type=RequestPermissionResponse) == resp


@given(json_values, st.sampled_from(["agent_message_chunk", "tool_call", "plan", "x_new"]))
def test_any_update_object_decodes_without_error(value: Any, kind: str) -> None:
    if isinstance(value, dict):
        value = {**value, "sessionUpdate": kind}
    update = decode_session_update(msgspec.json.encode(value))
    if isinstance(update, UnknownSessionUpdate):
        assert msgspec.json.decode(update.raw) == value
    else:
        assert update.__struct_config__.tag == kind
