"""The lease file held in memory between locked operations (see :class:`LeaseSnapshot`), and
the changes the lease store applies to it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
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
        "_encoder", "_held", "_pid", "bad", "dirty", "final", "fingerprint", "leases", "raw"
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

    def put(self, lease: ProcessLease) -> None:
        key = lease.lease_id
        self.leases[key] = lease
        self.raw[key] = msgspec.Raw(self._encoder.encode(lease))
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
        self.dirty = True


def apply_save(lease: ProcessLease, snap: LeaseSnapshot) -> ProcessLease:
    old = snap.leases.get(lease.lease_id)
    if old is not None:
        old.with_state(lease.state)  # raises LeaseStateError for an illegal move
    snap.put(lease)
    return lease


def apply_marks(updates: dict[str, LeaseState], snap: LeaseSnapshot) -> dict[str, ProcessLease]:
    staged: dict[str, ProcessLease] = {}
    for lease_id, state in updates.items():  # check every move before applying any
        old = snap.leases.get(lease_id)
        if old is not None:
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
