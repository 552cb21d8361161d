"""Session transcripts: NDJSON of every ACP message, rotated, redacted, replay-marked; and
``sessions history``."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import msgspec
import pytest
import trio
from _cli_helpers import MOCK, run_cli
from _warm_helpers import owner_info, wait_gone

from acpx_trio._errors import StateFileError
from acpx_trio._store.transcript import (
    REDACTED,
    TranscriptWriter,
    known_credentials,
    read_transcript,
    transcript_path,
)
from acpx_trio._store.transcript_history import past_turns

SECRET = "sk-test-0123456789abcdef"


def _line(obj: object) -> bytes:
    return msgspec.json.encode(obj)


async def test_writer_redacts_marks_replay_and_rotates(tmp_path: Path) -> None:
    path = tmp_path / "t.ndjson"
    writer = TranscriptWriter(path, max_bytes=2000, keep=3, credentials=[SECRET],
                              flush_bytes=1 << 30)
    writer.on_message("out", _line({"jsonrpc": "2.0", "id": 1, "method": "authenticate",
                                    "params": {"methodId": "key", "apiKey": "plain"}}))
    writer.on_message("out", _line({"jsonrpc": "2.0", "id": 2, "method": "session/load",
                                    "params": {"sessionId": "s"}}))
    writer.on_message("in", _line({"jsonrpc": "2.0", "method": "session/update",
                                   "params": {"update": {"text": f"old {SECRET} text"}}}))
    writer.on_message("in", b"")
    writer.on_message("in", b"junk {")
    writer.on_message("in", _line({"jsonrpc": "2.0", "id": 2, "result": {}}))
    writer.on_message("in", _line({"jsonrpc": "2.0", "method": "session/update",
                                   "params": {"update": {}}}))
    await writer.flush()
    entries = list(read_transcript(path))
    assert [e.replay for e in entries] == [False, False, True, False, False]
    auth = json.loads(bytes(entries[0].m))
    assert auth["params"] == {"methodId": "key", "apiKey": REDACTED}
    assert SECRET.encode() not in path.read_bytes()
    assert json.loads(bytes(entries[2].m))["params"]["update"]["text"] == (
        f"old {REDACTED} text")
    assert (path.stat().st_mode & 0o777) == 0o600
    for i in range(200):  # well past max_bytes * keep
        writer.on_message("out", _line({"jsonrpc": "2.0", "id": 10 + i, "method": "x",
                                        "params": {"pad": "p" * 50}}))
        if i % 10 == 0:
            await writer.flush()
    await writer.aclose()
    await trio.to_thread.run_sync(_check_rotated, tmp_path, path)


def _check_rotated(tmp_path: Path, path: Path) -> None:
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["t.ndjson", "t.ndjson.1", "t.ndjson.2"]
    assert all((tmp_path / f).stat().st_size <= 2000 for f in files)
    ids = [json.loads(bytes(e.m))["id"] for e in read_transcript(path)]
    assert ids == sorted(ids) and ids[-1] == 209  # oldest first, newest kept


async def test_writer_never_follows_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("keep")
    path = tmp_path / "t.ndjson"
    path.symlink_to(target)
    writer = TranscriptWriter(path, flush_bytes=1 << 30)
    writer.on_message("out", _line({"jsonrpc": "2.0", "id": 1, "method": "x"}))
    await writer.flush()
    assert writer.disabled and target.read_text() == "keep"


async def test_writer_and_reader_never_wait_on_a_fifo(tmp_path: Path) -> None:
    path = tmp_path / "t.ndjson"
    os.mkfifo(path, 0o600)
    with trio.fail_after(10):
        writer = TranscriptWriter(path, flush_bytes=1 << 30)
        writer.on_message("out", _line({"jsonrpc": "2.0", "id": 1, "method": "x"}))
        await writer.flush()  # no reader: opening it for writing would wait for one
        assert writer.disabled
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # with one: still no file of ours
        try:
            second = TranscriptWriter(path, flush_bytes=1 << 30)
            second.on_message("out", _line({"jsonrpc": "2.0", "id": 1, "method": "x"}))
            await second.flush()
            assert second.disabled
            assert os.read(reader, 100) == b""  # nothing was written into it
        finally:
            os.close(reader)
        # reading would wait for a writer: refused, naming the file (it once read as empty,
        # and ``sessions history`` said "no recorded turns")
        with pytest.raises(StateFileError, match="is a FIFO"):
            await trio.to_thread.run_sync(lambda: list(read_transcript(path)),
                                          abandon_on_cancel=True)


def test_a_fifo_in_the_transcripts_place_never_wedges_a_warm_session(tmp_path: Path) -> None:
    state = tmp_path / "state"
    sessions = state / "acpx" / "sessions"
    sessions.mkdir(parents=True, mode=0o700)
    (state / "acpx").chmod(0o700)
    state.chmod(0o700)
    os.mkfifo(transcript_path(sessions, "k"), 0o600)
    try:
        first = run_cli("prompt", "--session", "k", "--agent-command", MOCK, "hello",
                        state_dir=state, timeout=30)
        assert (first.returncode, first.stdout) == (0, "hello\n"), first.stderr
        again = run_cli("prompt", "--session", "k", "--agent-command", MOCK, "again",
                        state_dir=state, timeout=30)  # the owner is not wedged in the first
        assert (again.returncode, again.stdout) == (0, "again\n"), again.stderr
        status = json.loads(run_cli("status", "--json", state_dir=state, timeout=30).stdout)
        assert [s["turn_state"] for s in status["sessions"]] == ["idle"]
        assert "disabled" in (state / "owner.log").read_text()
    finally:
        closed = run_cli("sessions", "close", "k", state_dir=state, timeout=30)
    assert closed.returncode == 0, closed.stderr


def test_known_credentials_from_env_and_auth() -> None:
    found = known_credentials({"m": "config-credential-1"},
                              {"OPENAI_API_KEY": "env-credential-1", "HOME": "/root",
                               "GH_TOKEN": "shrt", "ACPX_AUTH_X": "another-secret",
                               "ACPX_AUTH_Y": "abc"})
    # issue 19: every credential of 4 characters or more; 1-3 are too short to search for
    assert set(found) == {"config-credential-1", "env-credential-1", "another-secret", "shrt"}


def test_warm_transcript_history_replay_and_redaction(tmp_path: Path) -> None:
    store = tmp_path / "agent-sessions"
    store.mkdir()
    agent = ["--agent-command", f"{MOCK} --session-dir {store}"]
    env = {"MY_SERVICE_TOKEN": SECRET}
    state = tmp_path / "state"
    one = run_cli("prompt", "--session", "k", *agent, "/tool", state_dir=state, env=env)
    assert one.returncode == 0, one.stderr
    two = run_cli("prompt", "--session", "k", *agent, f"echo {SECRET}", state_dir=state,
                  env=env)
    # issue 19: the runtime's events are redacted for every consumer (text, --json, the API)
    assert two.returncode == 0 and SECRET not in two.stdout and REDACTED in two.stdout
    info = owner_info(state)
    assert info is not None
    os.kill(info["pid"], signal.SIGTERM)  # a clean stop keeps the session record
    wait_gone(info["pid"])
    three = run_cli("prompt", "--session", "k", *agent, "/think again", state_dir=state,
                    env=env)
    assert three.returncode == 0, three.stderr  # a new owner: session/load replays
    # the owner writes a turn's transcript after the turn: `sessions history` has it written
    # out first (the file read before that may still miss the turn's lines)
    shown = run_cli("sessions", "history", "k", "--json", state_dir=state)
    assert shown.returncode == 0
    path = transcript_path(state / "acpx" / "sessions", "k")
    data = path.read_bytes()
    assert SECRET.encode() not in data
    entries = list(read_transcript(path))
    assert any(e.replay for e in entries)
    turns = past_turns(entries)
    assert [t.prompt for t in turns] == ["/tool", f"echo {REDACTED}", "/think again"]
    assert turns[0].tool_calls and turns[0].tool_calls[0].status == "completed"
    assert turns[2].reply == "again" and all(t.stop_reason == "end_turn" for t in turns)
    rows = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [r["prompt"] for r in rows] == [t.prompt for t in turns]
    assert all(r["duration_seconds"] is not None for r in rows)
    text = run_cli("sessions", "history", "k", state_dir=state)
    assert "> /tool" in text.stdout and "[tool] mock tool" in text.stdout



def test_config_turns_the_transcript_off_and_sets_the_ttl(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text('{"transcript": false, "queueOwnerTtlSeconds": 0}')
    state = tmp_path / "state"
    done = run_cli("--config", str(config), "prompt", "--session", "k", "hi", state_dir=state)
    assert done.returncode == 0, done.stderr
    status = run_cli("status", "--json", state_dir=state)
    assert json.loads(status.stdout)["sessions"][0]["ttl_seconds"] == 0  # forever
    assert not transcript_path(state / "acpx" / "sessions", "k").exists()
    assert run_cli("sessions", "close", "k", state_dir=state).returncode == 0


async def test_writer_reassembles_lines_split_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "t.ndjson"
    writer = TranscriptWriter(path, flush_bytes=1 << 30)
    first = _line({"jsonrpc": "2.0", "method": "session/update", "params": {"n": 1}})
    second = _line({"jsonrpc": "2.0", "id": 7, "result": {"stopReason": "end_turn"}})
    data = first + b"\n" + second + b"\n"
    writer.on_chunk("in", data[:10])
    writer.on_chunk("out", _line({"jsonrpc": "2.0", "id": 7, "method": "x"}) + b"\n")
    writer.on_chunk("in", data[10:len(first) + 20])
    await writer.flush()  # a partial line waits for the rest across flushes
    writer.on_chunk("in", data[len(first) + 20:])
    await writer.aclose()
    entries = list(read_transcript(path))
    assert [(e.d, json.loads(bytes(e.m)).get("id")) for e in entries] == [
        ("out", 7), ("in", None), ("in", 7)]


async def test_a_turn_whose_error_code_was_redacted_still_ends_in_history(tmp_path: Path) -> None:
    """A credential of digits sent as the error code of a prompt's answer is stored as the
    redacted text: the history still shows how the turn ended (it was listed unfinished)."""
    digits = "98765432"
    writer = TranscriptWriter(tmp_path / "t.ndjson", credentials=[digits])
    writer.on_message("out", b'{"jsonrpc":"2.0","id":3,"method":"session/prompt","params":'
                             b'{"sessionId":"s","prompt":[{"type":"text","text":"hi"}]}}')
    writer.on_message("in", b'{"jsonrpc":"2.0","id":3,"error":{"code":%s,"message":"no"}}'
                      % digits.encode())
    await writer.aclose()
    (turn,) = past_turns(read_transcript(tmp_path / "t.ndjson"))
    assert turn.prompt == "hi" and turn.error == f"{REDACTED}: no"
    assert turn.ended_at is not None
