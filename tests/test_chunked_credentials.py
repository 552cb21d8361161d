"""Issue 19, hole 2: a credential an agent streams back in pieces never reaches what a reader
reassembles — the runtime's events (so ``--json`` and every API consumer), the transcript,
``sessions history`` — nor when it is a JSON object key; credentials of 4 characters or more
are redacted, 1-3 characters are refused in config.  Real agents (the bundled mock streams
the text cut at chosen offsets), plus a hypothesis property of the stream redactor."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Literal

import pytest
from _cli_helpers import MOCK, run_cli
from _runtime_helpers import RuntimeEnv, output, run
from hypothesis import given
from hypothesis import strategies as st

from acpx_trio import (
    AcpRuntimeEvent,
    ConfigError,
    DoneEvent,
    StatusEvent,
    TextDeltaEvent,
    TokenUsage,
    UsageInfo,
    resolve_config,
)
from acpx_trio._errors import REDACTED, StreamRedactor
from acpx_trio._runtime.turn_redaction import TurnRedactor
from acpx_trio._store.transcript import transcript_path

SECRET = "sk-chunked-0123456789abcdef"
#: cuts that split the credential three ways, one of them at the very first character
CUTS = "9,10,17,25"
TEXT = f"the key is {SECRET} ok"


# -- the stream redactor (pure) --------------------------------------------------------------


def _pieces(text: str, cuts: list[int]) -> list[str]:
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@given(st.text(alphabet="ab", max_size=30), st.text(alphabet="ab", min_size=4, max_size=6),
       st.lists(st.integers(0, 60), max_size=12))
def test_no_split_of_the_text_lets_a_secret_through(
    text: str, secret: str, cuts: list[int]
) -> None:
    """Whatever the cuts, the joined output is the one-shot redaction of the joined input
    (nothing lost, nothing reordered) and holds no secret."""
    whole = f"{text}{secret}{text}"
    r = StreamRedactor([secret])
    out = "".join(r.feed(p) for p in _pieces(whole, cuts)) + r.flush()
    assert out == whole.replace(secret, REDACTED)
    assert secret not in out


@given(st.text(alphabet="abc", max_size=40), st.integers(300, 3000),
       st.lists(st.integers(0, 8000), max_size=12))
def test_a_long_credential_is_redacted_in_any_split(text: str, size: int, cuts: list[int]) -> None:
    """A credential of hundreds or thousands of characters (a cloud session token): no
    crash (a regex nested once per character overflowed from about 490), and the joined
    output is the one-shot redaction."""
    secret = ("AbC9" * (size // 4 + 1))[:size]
    whole = f"{text}{secret}{text}{secret[: size // 2]}"
    r = StreamRedactor([secret])
    out = "".join(r.feed(p) for p in _pieces(whole, cuts)) + r.flush()
    assert out == whole.replace(secret, REDACTED)
    assert r.clean("ab") and not r.clean(secret[:10])


@given(st.text(alphabet="ab", max_size=30),
       st.lists(st.text(alphabet="ab", min_size=4, max_size=7), min_size=2, max_size=3),
       st.lists(st.integers(0, 60), max_size=12))
def test_no_split_lets_any_of_several_secrets_through(
    text: str, secrets: list[str], cuts: list[int]
) -> None:
    whole = f"{text}{secrets[0]}{text}{secrets[-1]}{text}"
    r = StreamRedactor(secrets)
    out = "".join(r.feed(p) for p in _pieces(whole, cuts)) + r.flush()
    assert not any(secret in out for secret in secrets)


@given(st.text(max_size=200), st.lists(st.integers(0, 300), max_size=20))
def test_without_secrets_every_piece_passes_unchanged(text: str, cuts: list[int]) -> None:
    r = StreamRedactor([])
    pieces = _pieces(text, cuts)
    assert [r.feed(p) for p in pieces] == pieces and r.flush() == ""


@given(st.text(alphabet="ab ", max_size=20), st.lists(st.integers(0, 80), max_size=10),
       st.lists(st.integers(0, 12), max_size=6), st.booleans())
def test_turn_events_in_any_batching_never_carry_the_secret(
    text: str, cuts: list[int], batch_cuts: list[int], thought: bool
) -> None:
    """The runtime's redactor over a turn's events in any batching: each stream, joined,
    is the one-shot redaction; no event (a status naming it too) holds it; the
    final event comes last."""
    secret = "abab"
    whole = f"{text}{secret}{text}"
    stream: Literal["output", "thought"] = "thought" if thought else "output"
    events: list[AcpRuntimeEvent] = [TextDeltaEvent(text=p, stream=stream)
                                     for p in _pieces(whole, cuts)]
    events.insert(len(events) // 2, StatusEvent(text=f"note {secret}", tag="x"))
    events.append(DoneEvent(stop_reason="end_turn"))
    r = TurnRedactor([secret])
    out: list[AcpRuntimeEvent] = []
    bounds = sorted({0, len(events), *(c % (len(events) + 1) for c in batch_cuts)})
    for a, b in itertools.pairwise(bounds):
        out += r.batch(events[a:b])
    joined = "".join(e.text for e in out if isinstance(e, TextDeltaEvent))
    assert joined == whole.replace(secret, REDACTED)
    assert not any(secret in str(e) for e in out)
    assert isinstance(out[-1], DoneEvent)


def test_a_tail_that_cannot_start_a_secret_is_never_held() -> None:
    r = StreamRedactor([SECRET])
    assert r.feed("hello ") == "hello "  # streaming stays live
    assert r.feed("the key is sk-ch") == "the key is "  # could be the credential: held
    assert r.feed("eese") == "sk-cheese"  # it was not
    assert r.flush() == ""


def test_a_short_config_credential_is_refused_without_showing_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config({"auth": {"m": "xyz"}}, tmp_path)
    assert info.value.field == "auth.m" and "xyz" not in str(info.value)
    assert "at least 4 characters" in str(info.value)


# -- through the runtime (every consumer) ----------------------------------------------------


async def test_runtime_events_never_carry_a_split_credential(
    env: RuntimeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_SERVICE_TOKEN", SECRET)
    async with env.runtime() as rt:
        handle = await rt.ensure_session(session_key="k", agent="mock")
        events = await run(rt, handle, f"/split {CUTS} {TEXT}")
    thought = "".join(e.text for e in events
                      if isinstance(e, TextDeltaEvent) and e.stream == "thought")
    reply = output(events)
    assert reply == thought == f"the key is {REDACTED} ok"
    assert not any(SECRET in json.dumps(str(e)) for e in events)


async def test_a_credential_in_the_agents_command_line_stays_out_of_its_session_record(
    env: RuntimeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config ``auth`` value or a credential-like variable put in an agent's arguments was
    written verbatim into ``session-*.json`` (and shown by ``sessions show``)."""
    monkeypatch.setenv("MY_SERVICE_TOKEN", SECRET)
    auth = "auth-value-0123456789"
    agent = f"env X={SECRET} Y={auth} {MOCK}"
    async with env.runtime(agents={"keyed": agent}, auth={"api-key": auth}) as rt:
        handle = await rt.ensure_session(session_key="k", agent="keyed")
        assert output(await run(rt, handle, "hi")) == "hi"
    records = [p.read_text() for p in env.state_dir.rglob("session-*.json")]
    assert records and all(SECRET not in r and auth not in r for r in records)
    assert any(f"X={REDACTED}" in r for r in records)


# -- through the command line: --json, the transcript, history --------------------------------


def test_cli_json_transcript_and_history_never_reassemble_it(tmp_path: Path) -> None:
    env = {"MY_SERVICE_TOKEN": SECRET}
    state = tmp_path / "state"
    agent = ["--agent-command", MOCK]
    done = run_cli("prompt", "--session", "k", *agent, "--json", f"/split {CUTS} {TEXT}",
                   state_dir=state, env=env)
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout and REDACTED in done.stdout
    texts = [json.loads(x).get("text", "") for x in done.stdout.splitlines()]
    assert SECRET not in "".join(texts)
    keyed = run_cli("prompt", "--session", "k", *agent, "--json", f"/tool-key {SECRET}",
                    state_dir=state, env=env)
    assert keyed.returncode == 0 and SECRET not in keyed.stdout
    shown = run_cli("sessions", "history", "k", "--json", state_dir=state, env=env)
    text = run_cli("sessions", "history", "k", state_dir=state, env=env)
    run_cli("sessions", "close", "k", state_dir=state, env=env)
    for out in (shown.stdout, text.stdout):
        assert SECRET not in out and REDACTED in out
    data = b"".join(p.read_bytes() for p in transcript_path(
        state / "acpx" / "sessions", "k").parent.glob("transcript-*"))
    assert data and SECRET.encode() not in data
    # the stored chunks, joined as a reader joins them, read back the redacted text
    joined = "".join(
        m["params"]["update"]["content"]["text"]
        for m in (json.loads(line)["m"] for line in data.splitlines())
        if m.get("method") == "session/update"
        and m["params"]["update"].get("sessionUpdate") == "agent_message_chunk")
    assert f"the key is {REDACTED} ok" in joined


def test_exec_json_never_carries_a_split_credential(tmp_path: Path) -> None:
    done = run_cli("exec", "--agent-command", MOCK, "--json", f"/split {CUTS} {TEXT}",
                   state_dir=tmp_path, env={"ACPX_AUTH_SOMETHING": SECRET})
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout and REDACTED in done.stdout


def test_a_cloud_session_token_long_as_they_come_neither_crashes_nor_leaks(
    tmp_path: Path,
) -> None:
    """A credential of 1,200 characters (``AWS_SESSION_TOKEN`` is often this long) made every
    turn crash with a RecursionError; split across chunks, it is still redacted."""
    token = ("Fw0GZXIvYXdzEBAaD" * 80)[:1200]
    done = run_cli("exec", "--agent-command", MOCK, "--json",
                   f"/split {CUTS} the key is {token} ok", state_dir=tmp_path,
                   env={"AWS_SESSION_TOKEN": token})
    assert done.returncode == 0, done.stderr[-2000:]
    assert token[:40] not in done.stdout and REDACTED in done.stdout


async def test_a_short_environment_credential_is_named_in_a_warning_never_shown(
    env: RuntimeEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """1-3 characters cannot be redacted (they would hide ordinary text): the agent still
    gets it, and the owner is told which variable, never its value."""
    monkeypatch.setenv("ACPX_AUTH_TINY", "q7z")
    with caplog.at_level(logging.WARNING):
        async with env.runtime() as rt:
            handle = await rt.ensure_session(session_key="k", agent="mock")
            assert output(await run(rt, handle, "/env TINY")) == "TINY=set(3)"
    warned = [r.getMessage() for r in caplog.records if "shorter than 4" in r.getMessage()]
    assert warned and "TINY" in warned[0] and "q7z" not in warned[0]


def test_the_stderr_tail_never_starts_inside_a_credential(tmp_path: Path) -> None:
    """The kept stderr loses its start once it outgrows its bound: the cut may fall inside a
    credential, whose end was shown (20 characters before).  Redacted first, the cut
    line dropped: nothing of it is left; a whole one later in the tail is redacted."""
    from acpx_trio._process.agent import STDERR_TAIL_BYTES, AgentProcess, AgentSpawn
    from acpx_trio._store.leases import LeaseStore

    proc = AgentProcess(
        AgentSpawn(argv=("true",), cwd=str(tmp_path), session_key="s",
                   gateway_instance_id="gw"),
        lease_store=LeaseStore(tmp_path / "state"), secrets=(SECRET,))
    before = f"key {SECRET} end\n" + "x" * (STDERR_TAIL_BYTES - 100) + f"\nagain {SECRET}\n"
    proc._stderr = bytearray(before.encode()[12:])  # the trim cut into the first credential
    proc._stderr_cut = True
    tail = proc.stderr_tail()
    assert SECRET[10:] not in tail and SECRET[-6:] not in tail
    assert tail.endswith(f"again {REDACTED}\n")
    proc._stderr_cut = False  # the whole stderr, as the agent wrote it
    proc._stderr = bytearray(f"one {SECRET}\n".encode())
    assert proc.stderr_tail() == f"one {REDACTED}\n"


async def test_a_transcript_keeps_no_credential_written_with_unicode_escapes(
    tmp_path: Path,
) -> None:
    """An agent that writes a credential's first characters as ``\\uXXXX`` escapes (in a
    tool call's title, a chunk's metadata) had the raw line stored: decoded, it gave the
    whole key (30 of 30).  Nested past what can be checked, a message is not kept whole."""
    from acpx_trio._errors import TOO_DEEP
    from acpx_trio._store.transcript import TranscriptWriter

    escaped = "".join(f"\\u{ord(c):04x}" for c in SECRET[:6]) + SECRET[6:]
    lines = [
        '{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":'
        f'{{"sessionUpdate":"tool_call","toolCallId":"t","title":"key {escaped}"}}}}}}',
        '{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":'
        '{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"hi"},'
        f'"_meta":{{"k":"{escaped}"}}}}}}}}',
        '{"jsonrpc":"2.0","method":"x","params":' + "[" * 200 + f'"{SECRET}"' + "]" * 200 + "}",
    ]
    writer = TranscriptWriter(tmp_path / "t.ndjson", credentials=[SECRET])
    for line in lines:
        writer.on_message("in", line.encode())
    await writer.aclose()
    stored = (tmp_path / "t.ndjson").read_text().splitlines()
    assert len(stored) == 3
    for entry in stored:
        assert SECRET not in json.dumps(json.loads(entry), ensure_ascii=False)
    assert TOO_DEEP in stored[2]


async def test_a_credential_of_digits_sent_as_a_json_number_is_not_kept(tmp_path: Path) -> None:
    """A numeric credential (a PIN-like token, an account number used as a key) that the
    agent writes as a JSON number, not a string, was stored as it came."""
    from acpx_trio._errors import replace_secrets
    from acpx_trio._store.transcript import TranscriptWriter

    digits = "738201945563"
    line = ('{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":'
            '{"sessionUpdate":"tool_call","toolCallId":"t","title":"t","rawInput":'
            f'{{"pin":{digits},"n":[7,{digits}0,2.5,true]}}}}}}}}')
    writer = TranscriptWriter(tmp_path / "t.ndjson", credentials=[digits])
    writer.on_message("in", line.encode())
    await writer.aclose()
    (stored,) = (tmp_path / "t.ndjson").read_text().splitlines()
    assert digits not in stored
    raw_input = json.loads(stored)["m"]["params"]["update"]["rawInput"]
    assert raw_input == {"pin": REDACTED, "n": [7, f"{REDACTED}0", 2.5, True]}
    # written as floats (the digits with a point among them): redacted too, whatever form
    writer = TranscriptWriter(tmp_path / "f.ndjson", credentials=[digits])
    floats = f'{{"jsonrpc":"2.0","method":"x","params":{{"a":{digits}e20,"b":0.0000{digits}}}}}'
    writer.on_message("in", floats.encode())
    await writer.aclose()
    (stored,) = (tmp_path / "f.ndjson").read_text().splitlines()
    assert digits not in stored.replace(".", ""), stored
    # numbers without a credential in them stay numbers
    assert replace_secrets({"a": 12, "b": [1.5, False]}, [digits]) == {"a": 12, "b": [1.5, False]}


def test_a_credential_in_a_typed_number_of_an_event_is_withheld() -> None:
    """A typed event cannot carry the redacted text in a number field: the number is
    withheld (every number field of an event is optional), the rest kept."""
    import msgspec

    digits = "738201945563"
    usage = StatusEvent(text=f"usage {digits}/200000", tag="usage_update",
                        usage=UsageInfo(used=int(digits), size=200000, cost_amount=0.25))
    done = DoneEvent(stop_reason="end_turn",
                     usage=TokenUsage(total_tokens=int(digits + "1"), input_tokens=5))
    out = TurnRedactor([digits]).batch([usage, done])
    assert digits not in msgspec.json.encode(out).decode()
    assert out == [
        StatusEvent(text=f"usage {REDACTED}/200000", tag="usage_update",
                    usage=UsageInfo(used=None, size=200000, cost_amount=0.25)),
        DoneEvent(stop_reason="end_turn", usage=TokenUsage(total_tokens=None, input_tokens=5)),
    ]


#: a credential of digits longer than a float keeps (22 digits: a JSON float holds 15-17)
LONG_DIGITS = "7382019455630918273645"


@pytest.mark.parametrize(("digits", "amount"), [
    ("73820194", "73820194"),  # shown as "7.38202e+07" it was the first digits, unredacted
    ("73820194", "0.0073820194"),
    (LONG_DIGITS, LONG_DIGITS),  # an integer of 22 digits: a float keeps its first 16
    (LONG_DIGITS, f"{LONG_DIGITS}.5"),
    (LONG_DIGITS, f"0.000{LONG_DIGITS}"),
])
async def test_a_credential_sent_as_a_cost_shows_in_no_form(
    env: RuntimeEnv, monkeypatch: pytest.MonkeyPatch, digits: str, amount: str
) -> None:
    """A usage update whose cost amount carries a credential of digits: the status text
    showed the amount rounded (its first digits), which redaction, looking for the whole
    credential, did not find; a credential longer than a float's precision reached the event's
    number field (and the transcript) rounded, so no longer whole, and was kept."""
    monkeypatch.setenv("MY_SERVICE_TOKEN", digits)
    async with env.runtime() as rt:
        handle = await rt.ensure_session(session_key="k", agent="mock")
        events = await run(rt, handle, f"/cost {amount}")
    (usage,) = [e for e in events if isinstance(e, StatusEvent) and e.tag == "usage_update"]
    assert usage.usage is not None and usage.usage.cost_amount is None, usage
    assert usage.usage.cost_currency == "USD" and usage.usage.used == 1
    assert REDACTED in usage.text, usage.text
    shown = json.dumps([str(e) for e in events]).replace(".", "")
    assert digits[:6] not in shown, shown


def test_a_transcript_keeps_no_float_rounded_long_credential(tmp_path: Path) -> None:
    """The raw message held the whole credential; decoded, the float kept its first 16 digits
    and the transcript stored them."""
    from acpx_trio._store.transcript import TranscriptWriter

    async def write() -> None:
        writer = TranscriptWriter(tmp_path / "t.ndjson", credentials=[LONG_DIGITS])
        for number in (f"{LONG_DIGITS}.5", "7.382019455630918e21", f"-0.0{LONG_DIGITS}"):
            writer.on_message("in", f'{{"jsonrpc":"2.0","method":"x","params":{{"a":{number},'
                                    f'"b":1.5}}}}'.encode())
        await writer.aclose()

    import trio

    trio.run(write)
    stored = (tmp_path / "t.ndjson").read_text().splitlines()
    assert len(stored) == 3
    for line in stored:
        assert LONG_DIGITS[:15] not in line.replace(".", ""), line
        assert json.loads(line)["m"]["params"] == {"a": REDACTED, "b": 1.5}


def test_error_data_and_messages_follow_the_same_digit_rule() -> None:
    """An agent's error data and messages (``redact``, ``redact_value``) kept a credential of
    digits carried as a float: written with a point among its digits, or rounded to its
    first digits (one longer than a float keeps); the events' and transcripts' rule caught
    both."""
    from acpx_trio._errors import redact, redact_value

    short = "738201945563"
    data = {"a": float(f"{short}e20"), "b": float(f"{LONG_DIGITS}.5"), "c": 2.5, "d": 7}
    assert redact_value(data, [short, LONG_DIGITS]) == {
        "a": REDACTED, "b": REDACTED, "c": 2.5, "d": 7}
    assert redact(f"limit hit at {float(LONG_DIGITS)!r}", [LONG_DIGITS]) == REDACTED
    assert redact("7.38201945563e11 requests", [short]) == REDACTED
    assert redact("nothing here: 1.5", [short]) == "nothing here: 1.5"


@given(st.integers(1, len(SECRET) - 1),
       st.sampled_from(["tool_call", "plan", "request", "thought", "mode-answer"]))
def test_no_other_message_between_its_halves_lets_a_transcript_keep_a_credential(
        cut: int, between: str) -> None:
    """A credential streamed in two chunks with a tool call (or a plan, a request of the
    agent, the answer to a mode change sent during the turn) between them: the transcript
    stored both halves as they came, and the history (its chunks joined) showed the key
    whole (15 of 15 cuts; 29 of 30 with a ``set-mode`` mid-turn: two outside reviews).  The
    live events were right: the turn holds a possible start of a credential to its end."""
    import tempfile

    import trio

    from acpx_trio._store.transcript import TranscriptWriter

    def update(body: str) -> str:
        return ('{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s",'
                f'"update":{body}}}}}')

    def chunk(text: str, kind: str = "agent_message_chunk") -> str:
        return update(f'{{"sessionUpdate":"{kind}","content":{{"type":"text","text":"{text}"}}}}')

    middle = {
        "tool_call": update('{"sessionUpdate":"tool_call","toolCallId":"t","title":"x"}'),
        "plan": update('{"sessionUpdate":"plan","entries":[]}'),
        "request": '{"jsonrpc":"2.0","id":9,"method":"fs/read_text_file","params":'
                   '{"sessionId":"s","path":"/f"}}',
        "thought": chunk("hmm", "agent_thought_chunk"),
        "mode-answer": '{"jsonrpc":"2.0","id":2,"result":{}}',
    }[between]
    prompt = ('{"jsonrpc":"2.0","id":1,"method":"session/prompt","params":{"sessionId":"s",'
              '"prompt":[]}}')
    lines = [chunk("A" + SECRET[:cut]), middle, chunk(SECRET[cut:] + "B"),
             '{"jsonrpc":"2.0","id":1,"result":{"stopReason":"end_turn"}}']
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.ndjson"

        async def write() -> None:
            writer = TranscriptWriter(path, credentials=[SECRET])
            writer.on_message("out", prompt.encode())
            for line in lines:
                writer.on_message("in", line.encode())
            await writer.aclose()

        trio.run(write)
        entries = [json.loads(x)["m"] for x in path.read_text().splitlines()][1:]
    texts = [e["params"]["update"]["content"]["text"] for e in entries
             if e.get("method") == "session/update"
             and e["params"]["update"]["sessionUpdate"] == "agent_message_chunk"]
    assert SECRET not in "".join(texts) and "".join(texts) == f"A{REDACTED}B", texts
    assert "result" in entries[-1]  # the held tail was stored before the turn's answer


async def test_a_transcript_keeps_a_line_with_a_lone_surrogate_as_the_turn_read_it(
        tmp_path: Path) -> None:
    """A chunk (or the prompt's answer) with a lone UTF-16 surrogate escape: the connection
    read it with U+FFFD, but the transcript dropped it as junk, so the history lost the
    text, showed the turn unfinished and moved its held tail into the next turn (an outside
    review).  Stored as read now, held tail before the answer."""
    from acpx_trio._store.transcript import TranscriptWriter, read_transcript
    from acpx_trio._store.transcript_history import past_turns

    path = tmp_path / "t.ndjson"
    writer = TranscriptWriter(path, credentials=[SECRET])
    writer.on_message("out", b'{"jsonrpc":"2.0","id":1,"method":"session/prompt","params":'
                             b'{"sessionId":"s","prompt":[{"type":"text","text":"hi"}]}}')
    for text in ("X\\ud800Y ", "A" + SECRET[:5]):
        writer.on_message("in", (
            '{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":'
            '{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"'
            + text + '"}}}}').encode())
    writer.on_message("in", b'{"jsonrpc":"2.0","id":1,"result":{"stopReason":"end_turn",'
                            b'"_meta":{"x":"\\udc00"}}}')
    await writer.aclose()
    (turn,) = past_turns(list(read_transcript(path)))
    assert turn.reply == "X\ufffdY A" + SECRET[:5], turn
    assert turn.stop_reason == "end_turn"
