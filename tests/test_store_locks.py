"""Store locking: in-process FIFO + blocking flock, group commit, cancellable waits, caching."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest
import trio
import trio.testing

from acpx_trio import LeaseStateError
from acpx_trio._store.flock import acquire_lock_blocking, exclusive_lock, release_lock_fd
from acpx_trio._store.locks import run_locked
from acpx_trio.lowlevel import LeaseState, LeaseStore, ProcessLease, SyncLeaseStore, new_lease


def lease(key: str, gw: str = "gw") -> ProcessLease:
    return new_lease(gateway_instance_id=gw, session_key=key, wrapper_root="/w", command="a")


def hold(lock_path: Path) -> int:
    """Take the file lock through a separate open file description (as another process)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


async def test_concurrent_changes_are_group_committed(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path)
    leases = [lease(f"k{i}") for i in range(50)]
    async with trio.open_nursery() as nursery:
        for x in leases:
            nursery.start_soon(store.save, x)
    assert len(await store.list_all()) == 50
    assert store.commits <= 5  # one write per group, not one per change
    before = store.commits
    async with trio.open_nursery() as nursery:
        for x in leases:
            nursery.start_soon(store.mark_state, x.lease_id, "closed")
    assert store.commits - before <= 5
    assert {x.state for x in SyncLeaseStore(tmp_path).list_all()} == {LeaseState.CLOSED}
    doc = json.loads((tmp_path / "process-leases.json").read_bytes())
    assert doc["version"] == 1 and len(doc["leases"]) == 50


async def test_each_change_of_a_group_gets_its_own_outcome(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path)
    done = lease("done")
    await store.save(done)
    await store.mark_state(done.lease_id, "closed")
    errors: list[BaseException] = []

    async def reopen() -> None:
        try:
            await store.mark_state(done.lease_id, "open")
        except LeaseStateError as exc:
            errors.append(exc)

    fresh = [lease(f"f{i}") for i in range(10)]
    async with trio.open_nursery() as nursery:
        for x in fresh[:5]:
            nursery.start_soon(store.save, x)
        nursery.start_soon(reopen)
        for x in fresh[5:]:
            nursery.start_soon(store.save, x)
    assert len(errors) == 1
    ids = {x.lease_id for x in await store.list_all()}
    assert ids == {done.lease_id} | {x.lease_id for x in fresh}


async def test_wait_for_another_process_lock_is_cancellable(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path)
    fd = hold(store.sync.lock_path)
    blocked = lease("blocked")
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.save, blocked)
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
    finally:
        os.close(fd)  # release: an abandoned waiter thread must not keep the lock
    with trio.fail_after(10):
        kept = lease("kept")
        await store.save(kept)
        ids = {x.lease_id for x in await store.list_all()}
    assert ids == {kept.lease_id}


async def test_contended_lock_is_taken_when_released(tmp_path: Path) -> None:
    lock_path = tmp_path / "x.lock"
    fd = hold(lock_path)
    got = trio.Event()

    async def locker() -> None:
        await run_locked(lock_path, lambda: None)
        got.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(locker)
            await trio.testing.wait_all_tasks_blocked()
            assert not got.is_set()
            os.close(fd)
            await got.wait()


def test_sync_lock_times_out_and_abandoned_waiter_releases(tmp_path: Path) -> None:
    lock_path = tmp_path / "y.lock"
    fd = hold(lock_path)
    with pytest.raises(TimeoutError), exclusive_lock(lock_path, timeout=0.2):
        pass
    os.close(fd)
    again = acquire_lock_blocking(lock_path, timeout=10)  # the abandoned thread let go
    release_lock_fd(again)


def test_unchanged_file_is_not_reread_and_foreign_writes_are_seen(tmp_path: Path) -> None:
    ours, theirs = SyncLeaseStore(tmp_path), SyncLeaseStore(tmp_path)
    first = lease("one")
    ours.save(first)
    snap = ours._snap
    assert ours.list_all()[0].lease_id == first.lease_id
    assert ours._snap is snap  # fingerprint unchanged: the kept snapshot was used
    second = lease("two")
    theirs.save(second)
    assert {x.session_key for x in ours.list_all()} == {"one", "two"}
    assert ours._snap is snap  # caught up through the change log: no full re-read
    theirs.changes_path.unlink()  # a writer whose changes are not in the log
    theirs.save(lease("three"))
    theirs.changes_path.unlink()
    assert {x.session_key for x in ours.list_all()} == {"one", "two", "three"}
    assert ours._snap is not snap  # the whole file was read again


async def test_session_saves_are_group_committed(tmp_path: Path) -> None:
    from acpx_trio._store.sessions import SessionRecord, SessionStore

    store = SessionStore(tmp_path / "sessions")

    def record(key: str) -> SessionRecord:
        return SessionRecord(session_key=key, agent="mock", agent_command=("a",), cwd="/",
                             mode="persistent")

    async with trio.open_nursery() as nursery:
        for i in range(30):
            nursery.start_soon(store.save, record(f"k{i}"))
        nursery.start_soon(store.mark_fresh, "k0")  # may share a group with k0's save
    assert len(await store.list()) == 30
    assert store._committer.commits < 30
    assert await store.delete("k1") and not await store.delete("k1")
    assert (await store.load("k0")) is not None


def test_atomic_write_many_reports_per_item(tmp_path: Path) -> None:
    from acpx_trio._store.fsio import atomic_write_many

    good = [(tmp_path / f"f{i}", f"{i}".encode()) for i in range(5)]
    bad = (tmp_path / "missing-dir" / "x", b"x")
    errors = atomic_write_many([*good[:2], bad, *good[2:]])
    assert [e is None for e in errors] == [True, True, False, True, True, True]
    assert [p.read_bytes() for p, _ in good] == [d for _, d in good]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_many_reuses_one_fsync_pool_per_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from acpx_trio._store import fsio

    items = [(tmp_path / f"r{i}.json", b"{}\n") for i in range(3)]
    assert fsio.atomic_write_many(items) == [None, None, None]
    pool = fsio._fsync_executor()
    assert fsio.atomic_write_many(items) == [None, None, None]
    assert fsio._fsync_executor() is pool  # no new threads per write
    real = os.getpid()
    monkeypatch.setattr(fsio.os, "getpid", lambda: real + 1)  # as in a forked child
    assert fsio._fsync_executor() is not pool
    assert fsio.atomic_write_many(items) == [None, None, None]
    assert all(path.read_bytes() == b"{}\n" for path, _ in items)
