"""A read batch of ``session/update`` lines does to a live session exactly what the same
updates do one by one through the generic path: the same events for the turn, the same
session state (mode, config options, agent-reported error) and the same stray count."""

from __future__ import annotations

import tempfile
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acpx_trio._acp import decode_session_update_line
from acpx_trio._runtime.agents import AgentSpec
from acpx_trio._runtime.live_session import LiveSession, Turn
from acpx_trio._runtime.permissions import PermissionPolicy, work_dir

_CWD = work_dir(tempfile.gettempdir())


def _session(turn_state: str) -> LiveSession:
    assert _CWD is not None
    session = LiveSession(
        session_key="k", spec=AgentSpec(name="mock", command=("mock",)), mode="persistent",
        cwd=_CWD, policy=PermissionPolicy("approve-reads", "deny"),
        on_turn_failure=lambda _session, _error: None,
    )
    session.backend_session_id = "s"
    if turn_state != "none":
        turn = Turn("prompt")
        turn.abandoned = turn_state == "abandoned"
        turn.done = turn_state == "done"
        session.turn = turn
    return session


_updates = st.one_of(
    st.builds(lambda n: {"sessionUpdate": "agent_message_chunk",
                         "content": {"type": "text", "text": f"c{n}"}}, st.integers(0, 9)),
    st.builds(lambda n: {"sessionUpdate": "agent_thought_chunk",
                         "content": {"type": "text", "text": f"t{n}"}}, st.integers(0, 9)),
    st.builds(lambda n: {"sessionUpdate": "current_mode_update", "currentModeId": f"m{n}"},
              st.integers(0, 9)),
    st.builds(lambda n: {"sessionUpdate": "config_option_update", "configOptions": [
        {"id": f"o{n}", "name": "model", "currentValue": f"v{n}"}]}, st.integers(0, 9)),
    st.builds(lambda e: {"sessionUpdate": "session_info_update", "title": "",
                         "_meta": {"codex": {"error": e}}}, st.sampled_from(["", "boom", " "])),
    st.just({"sessionUpdate": "tool_call", "toolCallId": "t1", "title": "Read"}),
    st.just({"sessionUpdate": "usage_update", "used": 5, "size": 10}),
)
_lines = st.lists(
    st.tuples(st.sampled_from(["s", "s", "s", "other"]), _updates).map(
        lambda x: msgspec.json.encode({"jsonrpc": "2.0", "method": "session/update",
                                       "params": {"sessionId": x[0], "update": x[1]}})),
    min_size=1, max_size=12,
)


def _observed(session: LiveSession) -> tuple[Any, ...]:
    turn = session.turn
    events = None if turn is None else (turn._queue[turn._head:], turn.late_updates)
    return (events, session.stray_updates, session.current_mode, session.config_options,
            session.agent_error)


@settings(max_examples=300, deadline=None)
@given(_lines, st.sampled_from(["none", "live", "live", "done", "abandoned"]))
def test_a_batch_does_what_the_updates_do_one_by_one(lines: list[bytes], turn: str) -> None:
    batched, one_by_one = _session(turn), _session(turn)
    batched._on_update_lines([decode_session_update_line(line) for line in lines],
                             sum(len(line) + 1 for line in lines))
    for line in lines:
        params = msgspec.json.decode(line)["params"]
        one_by_one._on_update(msgspec.Raw(msgspec.json.encode(params)))
    assert _observed(batched) == _observed(one_by_one)


_STATE_CHANGES = [
    ({"sessionUpdate": "current_mode_update", "currentModeId": "plan"},
     lambda s: s.current_mode == "plan"),
    ({"sessionUpdate": "config_option_update", "configOptions": [
        {"id": "model", "name": "Model", "currentValue": "fast"}]},
     lambda s: [o.id for o in s.config_options or ()] == ["model"]),
    ({"sessionUpdate": "session_info_update", "_meta": {"codex": {"error": "boom"}}},
     lambda s: s.agent_error is not None and "boom" in s.agent_error),
]


@pytest.mark.parametrize(("update", "changed"), _STATE_CHANGES)
@pytest.mark.parametrize("turn", ["none", "live", "done"])
@pytest.mark.parametrize("batched", [True, False])
def test_a_state_update_changes_the_session_on_either_path(
    update: dict[str, Any], changed: Any, turn: str, batched: bool,
) -> None:
    """The differential above cannot see a state change both paths miss: each kind that
    changes the session's own state does, with or without a running turn."""
    session = _session(turn)
    assert not changed(session)
    params = {"sessionId": "s", "update": update}
    if batched:
        line = msgspec.json.encode({"jsonrpc": "2.0", "method": "session/update",
                                    "params": params})
        session._on_update_lines([decode_session_update_line(line)], len(line) + 1)
    else:
        session._on_update(msgspec.Raw(msgspec.json.encode(params)))
    assert changed(session)
