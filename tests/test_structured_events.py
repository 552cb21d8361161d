"""Structured session updates (issue 21): plan, usage, commands, session info, mode and config
options arrive as typed data on StatusEvent, the turn's token usage on DoneEvent; malformed
optional fields and list entries are defaulted/skipped, never a failed turn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import trio
from _cli_helpers import json_lines, run_cli
from _runtime_helpers import RuntimeEnv, run
from hypothesis import given, settings
from hypothesis import strategies as st

from acpx_trio import (
    CommandInfo,
    DoneEvent,
    PlanItem,
    SessionInfo,
    StatusEvent,
    TokenUsage,
    UsageInfo,
)
from acpx_trio._acp import decode_session_update
from acpx_trio._runtime.update_map import map_update, token_usage

EXPECTED_PLAN = (
    PlanItem(content="read the code", priority="high", status="completed"),
    PlanItem(content="write the fix", priority="medium", status="in_progress"),
)
EXPECTED_USAGE = UsageInfo(used=1200, size=200000, cost_amount=0.25, cost_currency="USD")
EXPECTED_COMMANDS = (
    CommandInfo(name="web", description="Search the web", input_hint="query"),
    CommandInfo(name="test", description="Run the tests", input_hint=None),
)
EXPECTED_INFO = SessionInfo(title="Mock report", updated_at="2026-01-01T00:00:00Z")


def _by_tag(events: list[Any]) -> dict[str, StatusEvent]:
    return {e.tag: e for e in events if isinstance(e, StatusEvent)}


async def test_report_turn_carries_typed_data(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            events = await run(rt, handle, "/report")
    status = _by_tag(events)
    assert status["plan"].plan == EXPECTED_PLAN
    assert status["plan"].text == "plan: [completed] read the code; [in_progress] write the fix"
    assert status["usage_update"].usage == EXPECTED_USAGE
    assert status["available_commands_update"].commands == EXPECTED_COMMANDS
    assert status["session_info_update"].session_info == EXPECTED_INFO
    assert events[-1] == DoneEvent(stop_reason="end_turn", usage=TokenUsage(
        total_tokens=150, input_tokens=100, output_tokens=40, thought_tokens=10,
        cached_read_tokens=5))


async def test_malformed_entries_and_fields_do_not_fail_the_turn(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            events = await run(rt, handle, "/report bad")
    plans = [e for e in events if isinstance(e, StatusEvent) and e.tag == "plan"]
    # the bad plan (its only entry malformed) decodes as an empty plan, the good one in full
    assert [p.plan for p in plans] == [(), EXPECTED_PLAN]
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.stop_reason == "end_turn"
    assert done.usage == TokenUsage(total_tokens=150, input_tokens=100, output_tokens=None,
                                    thought_tokens=10, cached_read_tokens=5)


async def test_echo_turn_has_no_usage(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            events = await run(rt, handle, "hi")
    assert events[-1] == DoneEvent(stop_reason="end_turn")


def test_cli_json_carries_structured_data(tmp_path: Path) -> None:
    done = run_cli("--json", "prompt", "/report", state_dir=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = json_lines(done.stdout)
    by_tag = {r.get("tag"): r for r in rows if r["type"] == "status"}
    assert by_tag["plan"]["plan"][0] == {"content": "read the code", "priority": "high",
                                         "status": "completed"}
    assert by_tag["usage_update"]["usage"]["cost_amount"] == 0.25
    assert by_tag["usage_update"]["usage"]["cost_currency"] == "USD"
    assert by_tag["available_commands_update"]["commands"][0]["input_hint"] == "query"
    assert by_tag["session_info_update"]["session_info"]["title"] == "Mock report"
    assert rows[-1]["type"] == "done" and rows[-1]["usage"]["total_tokens"] == 150


def test_mode_and_config_option_updates_are_typed() -> None:
    mode = map_update(decode_session_update(
        b'{"sessionUpdate":"current_mode_update","currentModeId":"plan"}'))
    assert mode == StatusEvent(text="mode: plan", tag="current_mode_update", mode="plan")
    config = map_update(decode_session_update(msgspec.json.encode({
        "sessionUpdate": "config_option_update", "configOptions": [
            {"id": "model", "name": "Model", "type": "select", "category": "model",
             "currentValue": "fast", "options": [
                 {"value": "fast", "name": "Fast"},
                 {"group": "big", "name": "Big", "options": [{"value": "large", "name": "L"}]},
             ]},
            {"id": 5},  # malformed entry: skipped
        ]})))
    assert isinstance(config, StatusEvent) and config.config_options is not None
    [option] = config.config_options
    assert (option.id, option.category, option.current_value, option.values) == (
        "model", "model", "fast", ("fast", "large"))


# ------------------------------------------------------------------ property tests (decoding)

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8,
)
_entry = st.fixed_dictionaries(
    {"content": st.text(max_size=5)},
    optional={"priority": st.sampled_from(["high", "medium", "low"]),
              "status": st.sampled_from(["pending", "in_progress", "completed"])},
)


@settings(max_examples=200, deadline=None)
@given(good=st.lists(_entry, max_size=4), bad=st.lists(_json, max_size=4), seed=st.randoms())
def test_plan_keeps_every_valid_entry_and_skips_the_rest(
    good: list[dict[str, Any]], bad: list[Any], seed: Any
) -> None:
    bad = [b for b in bad if not (isinstance(b, dict) and isinstance(b.get("content"), str))]
    entries = [*good, *bad]
    seed.shuffle(entries)
    event = map_update(decode_session_update(
        msgspec.json.encode({"sessionUpdate": "plan", "entries": entries})))
    assert isinstance(event, StatusEvent) and event.tag == "plan"
    valid = [e for e in entries if e in good]
    assert event.plan == tuple(PlanItem(**e) for e in valid)


_KINDS = ["plan", "usage_update", "available_commands_update", "session_info_update",
          "current_mode_update", "config_option_update", "agent_message_chunk", "tool_call",
          "brand_new"]


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(_KINDS), fields=st.dictionaries(
    st.sampled_from(["entries", "used", "size", "cost", "availableCommands", "title",
                     "updatedAt", "currentModeId", "configOptions", "content", "toolCallId"]),
    _json, max_size=4))
def test_any_update_shape_maps_without_raising(kind: str, fields: dict[str, Any]) -> None:
    event = map_update(decode_session_update(
        msgspec.json.encode({"sessionUpdate": kind, **fields})))
    assert event is None or event.tag is not None


@settings(max_examples=200, deadline=None)
@given(raw=_json)
def test_token_usage_never_raises(raw: Any) -> None:
    usage = token_usage(raw)
    assert usage is None or all(
        v is None or isinstance(v, int) for v in msgspec.structs.astuple(usage))
