"""Two lease stores on one state dir: the change log brings a warm store up to date without
decoding the whole file, and is never trusted over the file itself."""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acpx_trio import LeaseState
from acpx_trio._store.leases import decode_lease_file
from acpx_trio.lowlevel import SyncLeaseStore, new_lease

OPS = st.lists(
    st.tuples(st.integers(0, 1), st.sampled_from(["new", "closing", "closed"]), st.integers(0, 50)),
    min_size=1, max_size=40,
)


class Counting(SyncLeaseStore):
    """A store that counts its whole-file decodes."""

    full_reads = 0

    def _read_unlocked(self):  # type: ignore[no-untyped-def]
        self.full_reads += 1
        return super()._read_unlocked()


def _on_disk(path: Path) -> list[object]:
    leases, bad, _ = decode_lease_file(path.read_bytes())
    assert bad == []
    return list(leases)


def _apply(store: SyncLeaseStore, op: str, pick: int, ids: list[str]) -> None:
    if op == "new" or not ids:
        lease = new_lease(gateway_instance_id="gw", session_key="k", wrapper_root="/w",
                          command="a", owner_pid=os.getpid() if pick % 2 else None)
        ids.append(store.save(lease).lease_id)
        return
    lease_id = ids[pick % len(ids)]
    current = store.load(lease_id)
    if current is None:  # pruned
        return
    state = LeaseState(op)
    if current.state is LeaseState.OPEN or (current.state, state) == (
        LeaseState.CLOSING, LeaseState.CLOSED
    ):
        store.mark_state(lease_id, state)


@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_two_writers_agree_with_the_file_and_decode_it_once(tmp_path_factory, ops) -> None:  # type: ignore[no-untyped-def]
    state_dir = tmp_path_factory.mktemp("two")
    # A small max_final: pruning drops leases, so the log's drops are exercised too.
    stores = [Counting(state_dir, max_final=1), Counting(state_dir, max_final=1)]
    ids: list[str] = []
    for who, op, pick in ops:
        _apply(stores[who], op, pick, ids)
        on_disk = _on_disk(stores[0].path)
        for store in stores:
            assert store.list_all() == on_disk  # same leases, same order
            snap = store._snap
            assert snap is not None
            assert {k: v for k, v in snap.raw.items()} == {
                x.lease_id: msgspec.Raw(msgspec.json.encode(x)) for x in on_disk  # type: ignore[attr-defined]
            }
    for store in stores:
        assert store.full_reads <= 1  # each store decoded the whole file at most once


def _foreign_rewrite(path: Path, change: dict[str, object]) -> None:
    """What another implementation (the TypeScript gateway) does: its own JSON layout, no log."""
    doc = json.loads(path.read_bytes())
    for entry in doc["leases"]:
        entry.update(change)
    path.write_text(json.dumps(doc, indent=2))


def test_a_writer_that_does_not_log_is_seen(tmp_path: Path) -> None:
    warm, other = Counting(tmp_path), Counting(tmp_path)
    a = warm.save(new_lease(gateway_instance_id="gw", session_key="k", wrapper_root="/w",
                            command="a"))
    other.save(new_lease(gateway_instance_id="gw", session_key="k2", wrapper_root="/w",
                         command="a"))
    _foreign_rewrite(warm.path, {"state": "closed"})
    assert warm.load(a.lease_id).state is LeaseState.CLOSED  # type: ignore[union-attr]
    assert warm.full_reads == 2  # the foreign write broke the chain: a full decode
    other.save(new_lease(gateway_instance_id="gw", session_key="k3", wrapper_root="/w",
                         command="a"))
    assert warm.list_all() == _on_disk(warm.path)
    assert warm.full_reads == 2  # back on the log


@pytest.mark.parametrize("damage", ["torn", "truncated", "garbage-record"])
def test_a_damaged_log_falls_back_to_the_file(tmp_path: Path, damage: str) -> None:
    warm, other = Counting(tmp_path), Counting(tmp_path)
    warm.save(new_lease(gateway_instance_id="gw", session_key="k", wrapper_root="/w",
                        command="a"))
    other.save(new_lease(gateway_instance_id="gw", session_key="k2", wrapper_root="/w",
                         command="a"))
    log = warm.changes_path
    if damage == "torn":  # a writer died mid-append: the next record shares its line
        with open(log, "ab") as f:
            f.write(b'[[1,2')
    elif damage == "truncated":
        log.write_bytes(b"")
    else:  # a whole record of versions that never were: not part of any chain
        with open(log, "ab") as f:
            f.write(b'[[0,0,0,0,0],[0,0,0,0,0],[],[]]\n')
    other.save(new_lease(gateway_instance_id="gw", session_key="k3", wrapper_root="/w",
                         command="a"))
    assert warm.list_all() == _on_disk(warm.path)
    assert len(warm.list_all()) == 3


def test_a_log_that_is_a_link_is_neither_followed_nor_written(tmp_path: Path) -> None:
    target = tmp_path.parent / (tmp_path.name + "-target")
    target.write_bytes(b"")
    warm = Counting(tmp_path)
    warm.save(new_lease(gateway_instance_id="gw", session_key="k", wrapper_root="/w",
                        command="a"))
    warm.changes_path.unlink(missing_ok=True)
    warm.changes_path.symlink_to(target)
    other = Counting(tmp_path)
    other.save(new_lease(gateway_instance_id="gw", session_key="k2", wrapper_root="/w",
                         command="a"))
    assert target.read_bytes() == b""
    assert warm.list_all() == _on_disk(warm.path)
    assert warm.full_reads == 2
