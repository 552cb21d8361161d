"""File session store: round trip, permissions, fresh marker, corrupt files."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import msgspec
import trio

from acpx_trio._store.sessions import SessionRecord, SessionStore


def record(key: str = "agent:main:1", **fields: object) -> SessionRecord:
    return SessionRecord(
        session_key=key,
        agent="mock",
        agent_command=("python", "-m", "mock"),
        cwd="/work",
        backend_session_id="acp-1",
        **fields,  # type: ignore[arg-type]
    )


async def test_round_trip_and_permissions(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "sessions")
    assert await store.load("agent:main:1") is None
    saved = await store.save(record(agent_pid=42, agent_start_ticks=7, current_mode="plan"))
    assert saved.updated_at > 0
    loaded = await store.load("agent:main:1")
    assert loaded == saved
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    files = list(store.directory.glob("session-*.json"))
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    # the file name does not leak the key
    assert "main" not in files[0].name


async def test_keys_with_any_characters(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    keys = ["a/b/../c", "../../etc/passwd", "x" * 500, "日本語 key", "nul\0byte"]
    for key in keys:
        await store.save(record(key))
    for key in keys:
        loaded = await store.load(key)
        assert loaded is not None and loaded.session_key == key
    assert sorted(r.session_key for r in await store.list()) == sorted(keys)
    files = await trio.to_thread.run_sync(lambda: list(tmp_path.rglob("session-*.json")))
    assert {p.parent for p in files} == {tmp_path}


async def test_mark_fresh_and_delete(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    assert not await store.mark_fresh("k")
    await store.save(record("k"))
    assert await store.mark_fresh("k")
    loaded = await store.load("k")
    assert loaded is not None and loaded.reset_on_next_ensure
    # a new store instance (a restart) sees the marker
    again = await SessionStore(tmp_path).load("k")
    assert again is not None and again.reset_on_next_ensure
    assert await store.delete("k")
    assert not await store.delete("k")
    assert await store.load("k") is None


async def test_corrupt_record_is_ignored_not_deleted(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    await store.save(record("good"))
    path = store.sync.path_for("bad")
    path.write_bytes(b"{not json")
    assert await store.load("bad") is None
    assert [r.session_key for r in await store.list()] == ["good"]
    assert path.exists()


async def test_list_sorted_by_update_time(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    for key in ("first", "second", "third"):
        saved = await store.save(record(key))
        while time.time() <= saved.updated_at:  # the next save must get a later time
            await trio.lowlevel.checkpoint()
    await store.save(record("first"))
    assert [r.session_key for r in await store.list()] == ["second", "third", "first"]
    assert await SessionStore(tmp_path / "missing").list() == []


def test_record_encoding_is_stable() -> None:
    data = msgspec.json.encode(record("k", closed=True))
    decoded = msgspec.json.decode(data)
    assert decoded["session_key"] == "k" and decoded["closed"] is True
    assert "agent_pid" not in decoded  # defaults omitted
    assert msgspec.json.decode(data, type=SessionRecord) == record("k", closed=True)
