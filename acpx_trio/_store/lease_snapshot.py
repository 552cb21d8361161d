"""The lease file held in memory between locked operations (:class:`LeaseSnapshot`), the
changes applied to it (:func:`apply_save`, :func:`apply_marks`) and the leases a process holds
(:func:`held_by`).  Pure: no file is read or written here (but the ``stat`` of
:func:`fingerprint`); :mod:`acpx_trio._store.leases` does that under the lock.

Guarantees: a move is checked before it is applied (:func:`apply_marks` checks every move of a
group before applying any: an illegal one raises :class:`~acpx_trio.LeaseStateError` and
changes nothing); :func:`held_by` of the process that built the snapshot costs O(its leases),
not O(all leases)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

from acpx_trio._store.lease_model import LeaseState, ProcessLease

__all__ = ["Change", "LeaseSnapshot", "apply_marks", "apply_save", "fingerprint", "held_by"]

_raw_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_Fingerprint = tuple[int, int, int, int, int] | None
_FINAL_STATES: frozenset[str] = frozenset({"closed", "lost"})  # LeaseState is a StrEnum


def fingerprint(path: Path) -> _Fingerprint:
    """Identity of the file's current version (inode, size, mtime, ctime); ``None`` if absent."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class LeaseSnapshot:
    """The decoded lease file, indexed by id in file order, with each entry's encoding.

    Kept between locked operations; reused only while the file's fingerprint is the one it
    had when this snapshot was read or written (another writer changes the fingerprint)."""

    __slots__ = (
        "_encoder", "_held", "_pid", "bad", "changes", "dirty", "final", "fingerprint",
        "leases", "raw",
    )

    def __init__(
        self, leases: list[ProcessLease], bad: list[msgspec.Raw], encoder: msgspec.json.Encoder
    ) -> None:
        self._encoder = encoder
        self.leases = {x.lease_id: x for x in leases}
        # Each entry's encoding: one encode of the list and one lazy split of it (C speed).
        encoded = _raw_list_decoder.decode(self._encoder.encode(list(self.leases.values())))
        self.raw = dict(zip(self.leases, encoded, strict=True))
        self.final = {k for k, v in self.leases.items() if v.state in _FINAL_STATES}
        # The open/closing leases owned by this process, kept up to date by put/drop so a
        # write costs O(changes), not O(leases) (see held_by).
        self._pid = os.getpid()
        self._held = {
            k: v for k, v in self.leases.items()
            if k not in self.final and v.owner_pid == self._pid
        }
        self.bad = bad
        self.dirty = False
        self.fingerprint: _Fingerprint = None
        #: What put/drop did since the file was last read or written, per id (the entry as
        #: encoded, or ``None`` for dropped), for the change log; ``None`` when a dropped id
        #: was put again (the log cannot say where it goes: readers decode the whole file).
        self.changes: dict[str, msgspec.Raw | None] | None = {}

    def settled(self, fingerprint: _Fingerprint) -> None:
        """The file is now version ``fingerprint`` of this snapshot (read or written)."""
        self.fingerprint = fingerprint
        self.dirty = False
        self.changes = {}

    def put(self, lease: ProcessLease) -> None:
        key = lease.lease_id
        raw = msgspec.Raw(self._encoder.encode(lease))
        self.leases[key] = lease
        self.raw[key] = raw
        if self.changes is not None:
            if key in self.changes and self.changes[key] is None:
                self.changes = None
            else:
                self.changes[key] = raw
        if lease.state in _FINAL_STATES:
            self.final.add(key)
            self._held.pop(key, None)
        else:
            self.final.discard(key)
            if lease.owner_pid == self._pid:
                self._held[key] = lease
            else:
                self._held.pop(key, None)
        self.dirty = True

    def drop(self, keys: Iterable[str]) -> None:
        for key in keys:
            del self.leases[key], self.raw[key]
            self.final.discard(key)
            self._held.pop(key, None)
            if self.changes is not None:
                self.changes[key] = None
        self.dirty = True


def apply_save(lease: ProcessLease, snap: LeaseSnapshot) -> ProcessLease:
    old = snap.leases.get(lease.lease_id)
    if old is not None:
        old.with_state(lease.state)  # raises LeaseStateError for an illegal move
    snap.put(lease)
    return lease


def apply_marks(
    updates: dict[str, LeaseState], snap: LeaseSnapshot, skip_final: bool = False
) -> dict[str, ProcessLease]:
    staged: dict[str, ProcessLease] = {}
    for lease_id, state in updates.items():  # check every move before applying any
        old = snap.leases.get(lease_id)
        if old is not None and not (skip_final and old.state.is_final):
            staged[lease_id] = old.with_state(state)
    for lease in staged.values():
        snap.put(lease)
    return staged


Change = Callable[[LeaseSnapshot], Any]


def held_by(snap: LeaseSnapshot, pid: int) -> dict[str, ProcessLease]:
    """The open and closing leases in ``snap`` whose owner is process ``pid`` (a new dict).

    O(leases held by ``pid``) for the process that built ``snap``; O(all leases) for any
    other pid (e.g. after a fork)."""
    if pid == snap._pid:
        return dict(snap._held)
    leases = snap.leases
    return {k: leases[k] for k in leases.keys() - snap.final if leases[k].owner_pid == pid}
