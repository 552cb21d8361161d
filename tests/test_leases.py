"""Lease store: format compatibility, corruption handling, atomicity, transitions, pruning."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import msgspec
import pytest
import trio

from acpx_trio import LeaseStateError, LeaseStoreError
from acpx_trio.lowlevel import (
    LeaseState,
    LeaseStore,
    ProcessLease,
    SyncLeaseStore,
    hash_command,
    new_lease,
    new_lease_id,
)

SEED_FILE = {
    "version": 1,
    "leases": [
        {
            "leaseId": "5b0f0c1e-6d0a-4a43-9d0e-1f1f0e5d7a11",
            "gatewayInstanceId": "gw-1",
            "sessionKey": "agent:codex:acp:1",
            "wrapperRoot": "/state/acpx",
            "wrapperPath": "/state/acpx/codex-acp-wrapper.mjs",
            "rootPid": 4242,
            "commandHash": "ab" * 32,
            "startedAt": 1760000000000,
            "state": "open",
        },
        {
            "leaseId": "pending-1",
            "gatewayInstanceId": "gw-1",
            "sessionKey": "agent:claude:acp:2",
            "wrapperRoot": "/state/acpx",
            "wrapperPath": "",
            "rootPid": 0,
            "processGroupId": 4243,
            "commandHash": "cd" * 32,
            "startedAt": 1760000000001,
            "state": "closing",
        },
    ],
}


def lease(gw: str = "gw", key: str = "k", state: LeaseState = LeaseState.OPEN,
          started_at: int | None = None) -> ProcessLease:
    base = new_lease(gateway_instance_id=gw, session_key=key, wrapper_root="/w", command="agent")
    changes: dict[str, object] = {"state": state}
    if started_at is not None:
        changes["started_at"] = started_at
    return msgspec.structs.replace(base, **changes)


def test_ids_and_hash() -> None:
    assert new_lease_id() != new_lease_id()
    assert hash_command("npx codex-acp") == hash_command(["npx", "codex-acp"])
    assert len(hash_command("x")) == 64


async def test_round_trip(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path)
    original = msgspec.structs.replace(
        lease(), root_pid=123, root_create_time=1.5, root_start_ticks=77, boot_id="b",
        owner_pid=9, owner_start_time=2.5, process_group_id=123,
    )
    await store.save(original)
    assert await store.load(original.lease_id) == original
    assert await LeaseStore(tmp_path).load(original.lease_id) == original  # a fresh instance
    assert await store.load("missing") is None
    doc = json.loads((tmp_path / "process-leases.json").read_text())
    assert doc["version"] == 1
    entry = doc["leases"][0]
    assert entry["leaseId"] == original.lease_id and entry["rootCreateTime"] == 1.5
    assert entry["ownerPid"] == 9 and entry["rootPid"] == 123
    # the seed's required keys are always written (the TS reader drops entries without them)
    for key in ("leaseId", "gatewayInstanceId", "sessionKey", "wrapperRoot", "wrapperPath",
                "rootPid", "commandHash", "startedAt", "state"):
        assert key in entry


def test_seed_format_file_loads(tmp_path: Path) -> None:
    (tmp_path / "process-leases.json").write_text(json.dumps(SEED_FILE, indent=2))
    store = SyncLeaseStore(tmp_path, clock=lambda: 1760000001.0)  # "now" = the file's time
    leases = store.list_all()
    assert [x.lease_id for x in leases] == ["5b0f0c1e-6d0a-4a43-9d0e-1f1f0e5d7a11", "pending-1"]
    assert leases[0].root_create_time is None and leases[0].root_pid == 4242
    assert leases[1].process_group_id == 4243 and leases[1].state is LeaseState.CLOSING
    # writing keeps every entry and stays readable in the seed's shape
    store.mark_state("pending-1", "lost")
    doc = json.loads((tmp_path / "process-leases.json").read_text())
    assert [e["state"] for e in doc["leases"]] == ["open", "lost"]


def test_unknown_fields_from_a_newer_writer_are_tolerated(tmp_path: Path) -> None:
    doc = json.loads(json.dumps(SEED_FILE))
    doc["futureTopLevel"] = True
    doc["leases"][0]["somethingNew"] = {"x": 1}
    (tmp_path / "process-leases.json").write_text(json.dumps(doc))
    assert len(SyncLeaseStore(tmp_path).list_all()) == 2


async def test_list_open_filters(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path)
    a = await store.save(lease("gw-a"))
    b = await store.save(lease("gw-b"))
    c = await store.save(lease("gw-a"))
    await store.mark_state(c.lease_id, "closing")
    d = await store.save(lease("gw-a"))
    await store.mark_state(d.lease_id, "closed")
    assert {x.lease_id for x in await store.list_open("gw-a")} == {a.lease_id, c.lease_id}
    assert {x.lease_id for x in await store.list_open()} == {a.lease_id, b.lease_id, c.lease_id}
    assert {x.lease_id for x in await store.list_open("")} == {a.lease_id, b.lease_id, c.lease_id}


async def test_save_is_upsert(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path)
    pending = await store.save(lease())
    completed = msgspec.structs.replace(pending, root_pid=999)
    await store.save(completed)
    assert await store.list_all() == [completed]


async def test_concurrent_saves_on_one_store(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path)
    made = [lease(key=f"k{i}") for i in range(25)]
    async with trio.open_nursery() as nursery:
        for x in made:
            nursery.start_soon(store.save, x)
    assert {x.lease_id for x in await store.list_open()} == {x.lease_id for x in made}


@pytest.mark.parametrize(
    ("moves", "ok"),
    [
        (["closing", "closed"], True),
        (["closing", "lost"], True),
        (["closed"], True),
        (["closing", "closing", "closed", "closed"], True),  # idempotent re-application
        (["lost"], False),
        (["closed", "open"], False),
        (["closed", "closing"], False),
        (["closing", "lost", "closing"], False),
        (["closing", "open"], False),
        (["closing", "closed", "lost"], False),
    ],
)
def test_transitions(tmp_path: Path, moves: list[str], ok: bool) -> None:
    store = SyncLeaseStore(tmp_path)
    x = store.save(lease())
    if ok:
        for m in moves:
            store.mark_state(x.lease_id, m)
        assert store.load(x.lease_id).state == LeaseState(moves[-1])  # type: ignore[union-attr]
    else:
        with pytest.raises(LeaseStateError) as info:
            for m in moves:
                store.mark_state(x.lease_id, m)
        assert info.value.code == "ACPX_LEASE_STATE_INVALID"


def test_save_cannot_resurrect_a_final_lease(tmp_path: Path) -> None:
    store = SyncLeaseStore(tmp_path)
    x = store.save(lease())
    store.mark_state(x.lease_id, "closed")
    with pytest.raises(LeaseStateError):
        store.save(x)  # a late save of the open version must not overwrite the final state
    assert store.load(x.lease_id).state is LeaseState.CLOSED  # type: ignore[union-attr]


def test_a_reapers_moves_leave_a_lease_another_reaper_finished(tmp_path: Path) -> None:
    """``skip_final``: two reapers (a restart and the dead owner's watchdog) finish the same
    leases; the second's moves leave a lease the first made final as it is, move the rest,
    and return only what moved.  Without it the same move is refused, nothing written."""
    store = SyncLeaseStore(tmp_path)
    done, todo = store.save(lease()), store.save(lease())
    store.mark_state(done.lease_id, "closing")
    store.mark_state(done.lease_id, "lost")
    moves = {done.lease_id: LeaseState.CLOSING, todo.lease_id: LeaseState.CLOSING}
    with pytest.raises(LeaseStateError):
        store.mark_states(moves)
    assert store.load(todo.lease_id).state is LeaseState.OPEN  # type: ignore[union-attr]
    moved = store.mark_states(moves, skip_final=True)
    assert list(moved) == [todo.lease_id]
    states = {x.lease_id: x.state for x in store.list_all()}
    assert states == {done.lease_id: LeaseState.LOST, todo.lease_id: LeaseState.CLOSING}


def test_mark_state_unknown_id_is_noop(tmp_path: Path) -> None:
    store = SyncLeaseStore(tmp_path)
    x = store.save(lease())
    assert store.mark_state("nope", "closed") is None
    assert store.list_all() == [x]


def test_plain_strings_accepted_and_invalid_state_rejected(tmp_path: Path) -> None:
    store = SyncLeaseStore(tmp_path)
    x = store.save(lease())
    assert store.mark_state(x.lease_id, "closing").state is LeaseState.CLOSING  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        store.mark_state(x.lease_id, "exploded")


def test_modes(tmp_path: Path) -> None:
    state = tmp_path / "acpx"
    SyncLeaseStore(state).save(lease())
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "process-leases.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "process-leases.json.lock").stat().st_mode) == 0o600
    assert not [p for p in state.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"", b'{"version": 1, "leases": [', b"\xff\xfe\x00",
     b'{"version": 2, "leases": []}', b'{"version": 1, "leases": {}}', b"[1, 2, 3]", b"null"],
)
def test_unreadable_file_is_quarantined_not_dropped(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "process-leases.json"
    path.write_bytes(content)
    store = SyncLeaseStore(tmp_path)
    assert store.list_all() == []
    (moved,) = store.quarantined
    assert moved.name.startswith("process-leases.json.corrupt-")
    assert moved.read_bytes() == content  # kept whole for the operator
    assert "moved it aside" in caplog.text
    # the next write starts a fresh file and does not touch the quarantined copy
    x = store.save(lease())
    assert store.list_all() == [x]
    assert moved.read_bytes() == content


def test_invalid_entries_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    doc = json.loads(json.dumps(SEED_FILE))
    doc["leases"].append({"leaseId": "bad", "rootPid": "not a number"})
    doc["leases"].append("not even an object")
    doc["leases"].append({**SEED_FILE["leases"][0], "leaseId": "bad-state", "state": "zombie"})
    (tmp_path / "process-leases.json").write_text(json.dumps(doc))
    store = SyncLeaseStore(tmp_path)
    assert [x.lease_id for x in store.list_all()] == [SEED_FILE["leases"][0]["leaseId"],
                                                      "pending-1"]
    assert store.skipped_entries == 3
    assert "skipping invalid lease entry" in caplog.text
    assert "rootPid" in caplog.text  # the warning says what is wrong


def test_crash_between_write_and_rename_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SyncLeaseStore(tmp_path)
    first = store.save(lease())
    before = (tmp_path / "process-leases.json").read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(LeaseStoreError):
        store.save(lease())
    monkeypatch.undo()
    assert (tmp_path / "process-leases.json").read_bytes() == before
    assert store.list_all() == [first]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_final_leases_are_pruned(tmp_path: Path) -> None:
    now_ms = 1_800_000_000_000
    store = SyncLeaseStore(tmp_path, max_final=5, final_ttl_seconds=3600,
                           clock=lambda: now_ms / 1000)
    old_final = store.save(lease(state=LeaseState.CLOSED, started_at=now_ms - 7_200_000))
    old_open = store.save(lease(started_at=now_ms - 7_200_000))
    finals = [store.save(lease(state=LeaseState.LOST, started_at=now_ms - i)) for i in range(8)]
    ids = {x.lease_id for x in store.list_all()}
    assert old_open.lease_id in ids  # open leases are never pruned, however old
    assert old_final.lease_id not in ids  # older than the ttl
    assert {x.lease_id for x in finals[:5]} <= ids  # the newest five final ones are kept
    assert not ({x.lease_id for x in finals[5:]} & ids)
    assert len(ids) == 6


async def test_async_api_is_cancellable_and_consistent(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path)
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.save(lease())
    # a cancelled call either did not start or completed whole: the file always decodes
    assert isinstance(await store.list_all(), list)


def test_peek_has_no_side_effects(tmp_path: Path) -> None:
    from acpx_trio._store.leases import peek_leases

    missing = tmp_path / "nowhere"
    assert peek_leases(missing) == ([], None)
    assert not missing.exists()  # nothing created
    store = SyncLeaseStore(tmp_path)
    x = store.save(lease())
    assert peek_leases(tmp_path) == ([x], None)
    (tmp_path / "process-leases.json").write_text("{broken")
    leases, problem = peek_leases(tmp_path)
    assert leases == [] and problem is not None and "unreadable" in problem
    assert (tmp_path / "process-leases.json").read_text() == "{broken"  # not quarantined
    assert not [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
