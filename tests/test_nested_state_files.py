"""State files nested past msgspec's recursion limit (100,000 levels: msgspec raises
``RecursionError``, not ``DecodeError``) are handled like any other undecodable file: the
lease file is quarantined, a change-log line, a session record, a transcript line and
``owner.json`` are skipped, a config file is a ``ConfigError`` naming it.  Never a crash."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec
import pytest
import trio
from _runtime_helpers import MOCK, RuntimeEnv

from acpx_trio import ConfigError, load_config_file, open_runtime_service
from acpx_trio._owner.paths import OwnerPaths, read_owner_info
from acpx_trio._store.transcript import read_transcript, transcript_path
from acpx_trio._store.transcript_history import past_turns
from acpx_trio.lowlevel import LeaseStore, ProcessLease, SessionStore, SyncLeaseStore, new_lease

DEPTH = 100_000
DEEP = b"[" * DEPTH + b"]" * DEPTH
DEEP_LEASE_FILE = b'{"version":1,"leases":[' + DEEP + b"]}"


def _lease() -> ProcessLease:
    return new_lease(gateway_instance_id="gw", session_key="k", wrapper_root="/w",
                     command="agent")


def _quarantined(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if ".corrupt-" in p.name]


async def test_a_deeply_nested_lease_file_is_quarantined(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "process-leases.json").write_bytes(DEEP_LEASE_FILE)
    store = LeaseStore(tmp_path)
    assert await store.list_all() == []
    (moved,) = _quarantined(tmp_path)
    assert moved.read_bytes() == DEEP_LEASE_FILE  # kept whole for the operator
    assert "moved it aside" in caplog.text
    saved = await store.save(_lease())
    assert await store.list_all() == [saved]
    # a write through the group committer (locks.py) on a fresh deep file
    (tmp_path / "process-leases.json").write_bytes(DEEP_LEASE_FILE)
    other = await LeaseStore(tmp_path).save(_lease())
    assert other in await store.list_all()
    assert len(_quarantined(tmp_path)) == 2


def test_a_deeply_nested_entry_in_an_otherwise_valid_lease_file(tmp_path: Path) -> None:
    """msgspec cannot skip the deep entry to reach the others: the file is quarantined (and
    kept), like a truncated one; never a RecursionError.  The open lease of this process is
    put back into the new file."""
    store = SyncLeaseStore(tmp_path)
    mine = msgspec.structs.replace(_lease(), owner_pid=os.getpid())
    valid = store.save(mine)
    path = tmp_path / "process-leases.json"
    data = path.read_bytes().replace(b'"leases":[', b'"leases":[{"x":' + DEEP + b"},", 1)
    path.write_bytes(data)
    assert store.list_all() == [valid]
    (moved,) = store.quarantined
    assert moved.read_bytes() == data
    assert SyncLeaseStore(tmp_path).list_all() == [valid]


def test_a_deeply_nested_change_log_line_is_skipped(tmp_path: Path) -> None:
    writer = SyncLeaseStore(tmp_path)
    reader = SyncLeaseStore(tmp_path)
    first = writer.save(_lease())
    assert reader.list_all() == [first]  # reader keeps a snapshot and follows the log
    log = tmp_path / "process-leases.json.changes"
    with log.open("ab") as fh:
        fh.write(b"[[1,2,3,4,5],[1,2,3,4,5],[" + DEEP + b"],[]]\n")
    second = writer.save(_lease())
    assert reader.list_all() == [first, second]


async def test_service_starts_on_a_deeply_nested_lease_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "acpx").mkdir(parents=True, mode=0o700)
    state.chmod(0o700)
    lease_file = state / "acpx" / "process-leases.json"
    lease_file.write_bytes(DEEP_LEASE_FILE)
    with trio.fail_after(60):
        async with open_runtime_service(workspace_dir=tmp_path, state_dir=state):
            pass
    (moved,) = _quarantined(state / "acpx")
    assert moved.read_bytes() == DEEP_LEASE_FILE


def _deep_record(key: str) -> bytes:
    return (b'{"session_key":' + msgspec.json.encode(key) + b',"agent":"mock","x":'
            + DEEP + b"}")


def _write_deep_record(store: SessionStore, key: str) -> Path:
    path = store.sync.path_for(key)
    path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    path.write_bytes(_deep_record(key))
    return path


async def test_a_deeply_nested_session_record_reads_as_absent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SessionStore(tmp_path)
    path = _write_deep_record(store, "bad")
    with caplog.at_level(logging.WARNING):
        assert await store.load("bad") is None
        assert await store.list() == []
        assert not await store.mark_closed("bad")
        assert not await store.mark_fresh("bad")
    assert "unreadable session record" in caplog.text
    assert path.read_bytes() == _deep_record("bad")  # skipped, never deleted


async def test_ensure_session_over_a_deeply_nested_record(env: RuntimeEnv) -> None:
    agents = {"mock": {"command": MOCK[0], "args": MOCK[1:]}}
    config = env.config(agents=agents)
    store = SessionStore(config.state_dir)
    _write_deep_record(store, "c")
    with trio.fail_after(60):
        async with env.runtime(config) as rt:
            handle = await rt.ensure_session(session_key="c", agent="mock")
            await rt.close(handle=handle, reason="test")
    record = await store.load("c")
    assert record is not None and record.backend_session_id == handle.backend_session_id


def test_deeply_nested_transcript_lines_are_skipped(tmp_path: Path) -> None:
    path = transcript_path(tmp_path, "k")
    good = (b'{"t":1.0,"d":"out","m":{"jsonrpc":"2.0","id":1,"method":"session/prompt",'
            b'"params":{"prompt":[{"type":"text","text":"hi"}]}}}\n')
    deep_params = (b'{"t":2.0,"d":"out","m":{"jsonrpc":"2.0","id":2,"method":"session/prompt",'
                   b'"params":' + DEEP + b"}}\n")
    path.write_bytes(good + b'{"t":1.5,"d":"in","m":' + DEEP + b"}\n" + deep_params)
    entries = list(read_transcript(path))
    assert [e.t for e in entries] == [1.0]  # the deep lines do not decode: skipped
    # an entry whose message is nested too deeply (from any source) is no turn
    deep_entry = msgspec.json.decode(good.replace(b'"hi"', b'"x"'), type=type(entries[0]))
    deep_entry.m = msgspec.Raw(b'{"method":"session/prompt","id":3,"params":' + DEEP + b"}")
    turns = past_turns([*entries, deep_entry])
    assert [t.prompt for t in turns] == ["hi"]


def test_a_deeply_nested_owner_info_reads_as_absent(tmp_path: Path) -> None:
    paths = OwnerPaths(tmp_path)
    paths.info.write_bytes(b'{"pid":1,"x":' + DEEP + b"}")
    assert read_owner_info(paths) is None


@pytest.mark.parametrize("name", ["deep.json", "deep.toml"])
def test_a_deeply_nested_config_file_is_a_config_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b'{"agents":' + DEEP + b"}" if name.endswith(".json")
                     else b"agents = " + DEEP + b"\n")
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert info.value.field == "<file>" and str(path) in str(info.value)
