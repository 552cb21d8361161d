"""Process leases: a durable record of every agent process tree we start.

A lease is written *before* an agent is spawned (``root_pid == 0``) and completed after, so a
crash at any moment leaves a trace the next start-up can reap.  The file format is the one
OpenClaw's TypeScript gateway writes (``{"version": 1, "leases": [...]}``, camelCase keys), so
either can read the other's file; fields we add are optional.

Guarantees of :class:`LeaseStore`:

* **Durable and atomic**: every write is temp file + fsync + rename + directory fsync, mode 0600.
* **No lost updates**: every read-modify-write holds an exclusive ``flock`` on
  ``process-leases.json.lock``, so two processes sharing a state dir never drop each other's
  leases.
* **No silent loss**: an invalid entry is skipped with a warning (it stays in the file until the
  next write); a wholly unreadable file is moved aside to ``process-leases.json.corrupt-<utc>``
  and reported, never overwritten in place.  So is anything that is not a regular file of
  ours (a symbolic link, FIFO, device or directory: never followed, never blocking) or is
  larger than 64 MiB (:func:`~acpx_trio._store.fsio.read_private_file`).  The open and
  closing leases this process held are written straight back into the new file (with a
  warning), so its running agents stay findable by lease (watchdog, reap).
* **Legal moves only**: ``open->closing``, ``open->closed``, ``closing->closed``,
  ``closing->lost``; ``closed`` and ``lost`` are final.  Anything else raises
  :class:`LeaseStateError`.  Re-applying the current state is an idempotent no-op.
* **Bounded**: final leases are pruned on write (at most ``max_final`` of them, none older than
  ``final_ttl_seconds``).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from acpx_trio._errors import AcpxUsageError, LeaseStoreError, StateFileError
from acpx_trio._log import Logger
from acpx_trio._store.flock import exclusive_lock
from acpx_trio._store.fsio import (
    LEASE_FILE_MAX_BYTES,
    StateDecoder,
    atomic_write_bytes,
    ensure_private_dir,
    quarantine,
    read_private_file,
)
from acpx_trio._store.lease_log import ChangeRecord, Fingerprint, append_change, read_changes
from acpx_trio._store.lease_model import (
    LeaseState,
    ProcessLease,
    lease_id_arg,
    lease_state,
)
from acpx_trio._store.lease_snapshot import (
    Change,
    LeaseSnapshot,
    apply_marks,
    apply_save,
    fingerprint,
    held_by,
)
from acpx_trio._store.locks import GroupCommitter, run_locked
from acpx_trio._store.userpaths import state_dir_path

__all__ = ["LEASE_FILE_NAME", "LeaseStore", "SyncLeaseStore", "decode_lease_file", "peek_leases"]

# -- the store -----------------------------------------------------------------------------

LEASE_FILE_NAME = "process-leases.json"
_log = logging.getLogger("acpx_trio.leases")
#: Invalid entries of one read that get a warning each; the rest are summed up in one line.
_ENTRY_WARNINGS = 5
T = TypeVar("T")


class _LeaseFileV1(msgspec.Struct, tag_field="version", tag=1):
    leases: list[msgspec.Raw] = []


class _LeaseFileOut(msgspec.Struct, tag_field="version", tag=1):
    leases: list[ProcessLease]


class _LeaseFileRaw(msgspec.Struct, tag_field="version", tag=1):
    """The file as written: each entry already encoded (compact), copied verbatim."""

    leases: list[msgspec.Raw]


class _LeaseFileTyped(msgspec.Struct, tag_field="version", tag=1):
    leases: list[ProcessLease] = []


# The lease file's bytes are untrusted: StateDecoder raises DecodeError for any undecodable
# input, nesting past msgspec's limit included (see decode_lease_file).
_file_decoder = StateDecoder(_LeaseFileV1)
_typed_file_decoder = StateDecoder(_LeaseFileTyped)
_lease_decoder = StateDecoder(ProcessLease)
_encoder = msgspec.json.Encoder()


def decode_lease_file(
    data: bytes,
) -> tuple[list[ProcessLease], list[msgspec.Raw], list[str]]:
    """Decode a lease file: (valid leases, raw invalid entries, why each was invalid).

    Duplicate ids: the last entry wins, as an upsert would.  Raises ``msgspec.DecodeError``
    (or ``UnicodeDecodeError``) when the file as a whole is not a version-1 lease file; also
    when it nests past msgspec's depth limit (even in one entry: the decoder cannot skip past
    it to the others), so such a file is quarantined like any garbage.

    One typed pass for a clean file; the per-entry path only when an entry is invalid or an
    id repeats."""
    try:
        typed = _typed_file_decoder.decode(data).leases
    except (msgspec.ValidationError, UnicodeDecodeError):
        pass  # per-entry path below (it raises for a file that is bad as a whole)
    else:
        if len({x.lease_id for x in typed}) == len(typed):
            return typed, [], []
    doc = _file_decoder.decode(data)
    leases: list[ProcessLease] = []
    bad: list[msgspec.Raw] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for raw in doc.leases:
        try:
            lease = _lease_decoder.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            bad.append(raw)
            problems.append(str(exc))
            continue
        if lease.lease_id in seen:
            leases[seen[lease.lease_id]] = lease
            continue
        seen[lease.lease_id] = len(leases)
        leases.append(lease)
    return leases, bad, problems


def peek_leases(state_dir: str | Path) -> tuple[list[ProcessLease], str | None]:
    """Read ``<state_dir>/process-leases.json`` with no side effects at all: no lock, no file
    or directory created, nothing quarantined (writes are atomic renames, so a lock-free read
    sees one whole version).  Returns (valid leases, a problem description or ``None``).

    For inspection tools (``acpx-trio leases``, ``reap --dry-run``); blocking."""
    path = Path(state_dir) / LEASE_FILE_NAME
    try:
        data = read_private_file(path, LEASE_FILE_MAX_BYTES)
    except FileNotFoundError:
        return [], None
    except StateFileError as exc:
        return [], str(exc)
    except OSError as exc:
        return [], f"cannot read {path}: {exc}"
    try:
        leases, bad, _ = decode_lease_file(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return [], f"{path} is unreadable ({exc}); the next write moves it aside"
    return leases, (f"{len(bad)} invalid entries in {path} skipped" if bad else None)


class SyncLeaseStore:
    """The synchronous core of :class:`LeaseStore` (blocking file I/O; thread-safe).

    Use it directly from worker threads, scripts and property tests; async code uses
    :class:`LeaseStore`."""

    def __init__(
        self,
        state_dir: str | Path,
        *,
        max_final: int = 1000,
        final_ttl_seconds: float = 7 * 24 * 3600,
        clock: Callable[[], float] = time.time,
        logger: Logger | None = None,
    ) -> None:
        self.state_dir = state_dir_path(state_dir)  # an empty one: AcpxUsageError
        self.path = self.state_dir / LEASE_FILE_NAME
        self.lock_path = self.state_dir / (LEASE_FILE_NAME + ".lock")
        self.changes_path = self.state_dir / (LEASE_FILE_NAME + ".changes")
        self._log_offset = 0  # change-log bytes already applied or written by this store
        self.max_final = max_final
        self.final_ttl_seconds = final_ttl_seconds
        self._clock = clock
        self._log: Logger = logger or _log
        #: Paths of lease files this store moved aside because they could not be decoded.
        self.quarantined: list[Path] = []
        #: Number of invalid entries skipped by the last read.
        self.skipped_entries = 0
        self._snap: LeaseSnapshot | None = None
        #: Open/closing leases of this process as last read or written intact: put back into
        #: a new lease file when a damaged one is quarantined (``_restore`` pending until then).
        self._held: dict[str, ProcessLease] = {}
        self._restore = False

    # -- reading ---------------------------------------------------------------------------
    def _read_unlocked(self) -> tuple[list[ProcessLease], list[msgspec.Raw]]:
        """Return (valid leases, raw entries that did not decode)."""
        try:
            data = read_private_file(self.path, LEASE_FILE_MAX_BYTES)
        except FileNotFoundError:
            return [], []
        except StateFileError as exc:  # a link, FIFO, device, directory or huge file
            target = quarantine(self.path)  # moves the entry itself; follows nothing
            self.quarantined.append(target)
            self._log.warning(
                "%s; moved it aside to %s and started a new lease file", exc, target
            )
            return [], []
        except OSError as exc:
            raise LeaseStoreError(f"cannot read lease file {self.path}: {exc}") from exc
        try:
            leases, bad, problems = decode_lease_file(data)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # bad UTF-8 in a string
            target = quarantine(self.path)
            self.quarantined.append(target)
            self._log.warning(
                "lease file %s is unreadable (%s); moved it aside to %s and started a new one",
                self.path, exc, target,
            )
            return [], []
        for problem in problems[:_ENTRY_WARNINGS]:
            self._log.warning("skipping invalid lease entry in %s: %s", self.path, problem)
        if len(bad) > _ENTRY_WARNINGS:  # one line per entry would flood the log
            self._log.warning(
                "skipping invalid lease entries in %s: %d more like the above",
                self.path, len(bad) - _ENTRY_WARNINGS,
            )
        self.skipped_entries = len(bad)
        return leases, bad

    def _current(self) -> LeaseSnapshot:
        """The file's content (lock held): the kept snapshot when the file is unchanged."""
        current = fingerprint(self.path)
        snap = self._snap
        if (
            snap is not None and current is not None and snap.fingerprint is not None
            and (snap.fingerprint == current or self._follow(snap, current))
        ):
            return snap
        moved = len(self.quarantined)
        leases, bad = self._read_unlocked()
        snap = LeaseSnapshot(leases, bad, _encoder)
        if not bad and len(self.quarantined) == moved:
            snap.settled(current)
        self.skipped_entries = len(bad)
        self._snap = snap
        self._restore = self._restore or len(self.quarantined) > moved
        if self._restore:
            self._restore_held(snap)
        else:
            self._held = held_by(snap, os.getpid())
        return snap

    def _follow(self, snap: LeaseSnapshot, current: Fingerprint) -> bool:
        """Bring ``snap`` to version ``current`` through the change log (lock held); False
        (``snap`` untouched) unless the log has the whole chain (see :mod:`.lease_log`)."""
        records, end = read_changes(self.changes_path, self._log_offset)
        chain: list[ChangeRecord] = []
        version = snap.fingerprint
        for record in records:
            if record.before == version:
                chain.append(record)
                version = record.after
        if version != current or not chain:
            return False
        try:
            puts = [[_lease_decoder.decode(x) for x in record.put] for record in chain]
        except (msgspec.DecodeError, UnicodeDecodeError):
            return False
        for record, leases in zip(chain, puts, strict=True):
            for lease in leases:
                snap.put(lease)
            snap.drop([x for x in record.drop if x in snap.leases])
        snap.settled(current)
        self._log_offset = end
        self._held = held_by(snap, os.getpid())
        return True

    def _restore_held(self, snap: LeaseSnapshot) -> None:
        """After a quarantine (lock held): put this process's open leases back, durably, so
        its running agents stay findable by lease (watchdog, reap) and are never orphaned."""
        missing = [x for k, x in self._held.items() if k not in snap.leases]
        if not missing:
            self._restore = False
            return
        for lease in missing:
            snap.put(lease)
        self._log.warning(
            "lease file %s was damaged and moved aside; re-added the %d open lease%s of this "
            "process (pid %d) to the new file: %s", self.path, len(missing),
            "" if len(missing) == 1 else "s", os.getpid(), ", ".join(x.lease_id for x in missing),
        )
        self._write(snap)  # clears _restore once the leases are on disk

    def _write(self, snap: LeaseSnapshot) -> None:
        self._prune(snap)
        body = bytearray()  # encoded in place, newline appended: no copy of the whole file
        _encoder.encode_into(_LeaseFileRaw(leases=list(snap.raw.values())), body)
        body += b"\n"
        try:
            atomic_write_bytes(self.path, body)
        except BaseException:
            self._snap = None  # memory is ahead of the file: re-read next time
            raise
        before, changes = snap.fingerprint, snap.changes
        after = fingerprint(self.path)
        if before is not None and after is not None and changes is not None:  # now durable
            end = append_change(self.changes_path, ChangeRecord(
                before, after, [x for x in changes.values() if x is not None],
                [k for k, x in changes.items() if x is None],
            ))
            if end is not None:
                self._log_offset = end
        snap.settled(after)
        snap.bad = []
        self.skipped_entries = 0
        self._held = held_by(snap, os.getpid())
        self._restore = False

    def _prune(self, snap: LeaseSnapshot) -> None:
        cutoff_ms = (self._clock() - self.final_ttl_seconds) * 1000
        leases = snap.leases
        if len(snap.final) <= self.max_final and all(
            leases[k].started_at >= cutoff_ms for k in snap.final
        ):
            return
        final = [leases[k] for k in snap.final]
        newest = sorted(final, key=lambda x: x.started_at, reverse=True)[: self.max_final]
        keep_ids = {x.lease_id for x in newest if x.started_at >= cutoff_ms}
        snap.drop([x.lease_id for x in final if x.lease_id not in keep_ids])

    def commit_changes(self, changes: list[Change]) -> list[tuple[bool, Any]]:
        """Apply ``changes`` in order and write once (caller holds the lock).

        Returns ``(True, result)`` or ``(False, exception)`` per change; a change that raises
        leaves the leases untouched.  Raises :class:`LeaseStoreError` if the file cannot be
        read or written (then no change is durable)."""
        try:
            snap = self._current()
            outcomes: list[tuple[bool, Any]] = []
            for change in changes:
                try:
                    outcomes.append((True, change(snap)))
                except Exception as exc:
                    outcomes.append((False, exc))
            if snap.bad:
                self._log.warning(
                    "dropping %d invalid lease entr%s from %s on rewrite",
                    len(snap.bad), "y" if len(snap.bad) == 1 else "ies", self.path,
                )
            if snap.dirty or snap.bad:
                self._write(snap)
        except OSError as exc:
            self._snap = None
            raise LeaseStoreError(f"lease store {self.path}: {exc}") from exc
        return outcomes

    def _locked(self, fn: Callable[[], T]) -> T:
        try:
            ensure_private_dir(self.state_dir, strict_link=True)  # ours: never a link
            with exclusive_lock(self.lock_path):
                return fn()
        except (OSError, TimeoutError) as exc:
            raise LeaseStoreError(f"lease store {self.path}: {exc}") from exc

    def _commit_one(self, change: Callable[[LeaseSnapshot], T]) -> T:
        ok, value = self._locked(lambda: self.commit_changes([change]))[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def list_all_unlocked(self) -> list[ProcessLease]:
        """:meth:`list_all` for a caller that holds the lock."""
        return list(self._current().leases.values())

    def list_all(self) -> list[ProcessLease]:
        """Every valid lease in file order (open, closing and final)."""
        return self._locked(self.list_all_unlocked)

    def load(self, lease_id: str) -> ProcessLease | None:
        """The lease with this id, or ``None``."""
        lease_id = lease_id_arg(lease_id)
        return self._locked(lambda: self._current().leases.get(lease_id))

    def list_open(self, gateway_instance_id: str | None = None) -> list[ProcessLease]:
        """Leases in state open or closing, optionally only those of one gateway."""
        _gateway_arg(gateway_instance_id)
        return _open_of(self.list_all(), gateway_instance_id)

    # -- writing ---------------------------------------------------------------------------
    def save(self, lease: ProcessLease) -> ProcessLease:
        """Insert or replace (by ``lease_id``).  Replacing checks the state move."""
        return self._commit_one(functools.partial(apply_save, _lease_arg(lease)))

    def mark_state(self, lease_id: str, state: LeaseState | str) -> ProcessLease | None:
        """Move one lease to ``state``; returns the updated lease, ``None`` if unknown."""
        return self.mark_states({lease_id: lease_state(state)}).get(lease_id)

    def mark_states(
        self, updates: dict[str, LeaseState], *, skip_final: bool = False
    ) -> dict[str, ProcessLease]:
        """Apply several moves in one locked write; all are checked before any is applied
        (an unknown state name: :class:`~acpx_trio.AcpxUsageError`; an illegal move:
        :class:`~acpx_trio.LeaseStateError`; nothing written).  Returns the leases moved.
        ``skip_final``: a lease already final (another reaper finished it) is left as it
        is, not an error; absent ones are skipped in any case.  An id that is not a non-empty
        string: :class:`~acpx_trio.AcpxUsageError` too."""
        checked = _checked_marks(updates)
        return self._commit_one(functools.partial(apply_marks, checked, skip_final=skip_final))


def _lease_arg(lease: object) -> ProcessLease:
    if not isinstance(lease, ProcessLease):
        raise AcpxUsageError("lease", lease, "must be a ProcessLease (see new_lease)")
    return lease


def _gateway_arg(gateway_instance_id: object) -> None:
    """A gateway id to filter by: a string (empty, as ``None``: every gateway, as the seed's
    ``listOpen``)."""
    if gateway_instance_id is not None and not isinstance(gateway_instance_id, str):
        raise AcpxUsageError("gateway_instance_id", gateway_instance_id,
                             "must be a string or None")


def _checked_marks(updates: object) -> dict[str, LeaseState]:
    """Lease state moves as given (id -> state name or :class:`LeaseState`), checked."""
    if not isinstance(updates, Mapping):
        raise AcpxUsageError("updates", updates, "must be a mapping of lease id to state")
    return {lease_id_arg(lease_id): lease_state(s) for lease_id, s in updates.items()}


def _open_of(leases: list[ProcessLease], gateway_instance_id: str | None) -> list[ProcessLease]:
    return [
        x
        for x in leases
        if x.state in (LeaseState.OPEN, LeaseState.CLOSING)
        and (not gateway_instance_id or x.gateway_instance_id == gateway_instance_id)
    ]


class LeaseStore:
    """Async, cancellable facade of :class:`SyncLeaseStore`; all file work runs in a worker thread.

    Concurrent changes from tasks of one process queue in FIFO order and are group-committed:
    all the changes waiting when a write starts go into the next write (one read, one
    durable write for the lot), each with its own result or error.  A change whose caller is
    cancelled before its write started is dropped; once started, the write completes (it is
    short and atomic) before :class:`trio.Cancelled` is delivered, so the file is never left
    half-updated.  Waiting for another process's lock is cancellable."""

    def __init__(self, state_dir: str | Path, **kwargs: Any) -> None:
        self.sync = SyncLeaseStore(state_dir, **kwargs)
        self._committer: GroupCommitter[LeaseSnapshot] = GroupCommitter(
            self.sync.lock_path, self.sync.commit_changes
        )

    @property
    def path(self) -> Path:
        return self.sync.path

    @property
    def commits(self) -> int:
        """Durable writes done through this object (each may carry many changes)."""
        return self._committer.commits

    async def _read(self, fn: Callable[[], T]) -> T:
        try:
            return await run_locked(self.sync.lock_path, fn)
        except (OSError, TimeoutError) as exc:
            raise LeaseStoreError(f"lease store {self.path}: {exc}") from exc

    async def _change(self, change: Callable[[LeaseSnapshot], T]) -> T:
        try:
            return await self._committer.submit(change)
        except (OSError, TimeoutError) as exc:
            raise LeaseStoreError(f"lease store {self.path}: {exc}") from exc

    async def load(self, lease_id: str) -> ProcessLease | None:
        """The lease with this id, or ``None``."""
        lease_id = lease_id_arg(lease_id)
        return await self._read(lambda: self.sync._current().leases.get(lease_id))

    async def list_all(self) -> list[ProcessLease]:
        """Every valid lease, final ones included."""
        return await self._read(self.sync.list_all_unlocked)

    async def list_open(self, gateway_instance_id: str | None = None) -> list[ProcessLease]:
        """Leases in state open or closing (optionally of one gateway)."""
        _gateway_arg(gateway_instance_id)
        return _open_of(await self.list_all(), gateway_instance_id)

    async def save(self, lease: ProcessLease) -> ProcessLease:
        """Insert or replace a lease (legal state moves only)."""
        return await self._change(functools.partial(apply_save, _lease_arg(lease)))

    async def mark_state(self, lease_id: str, state: LeaseState | str) -> ProcessLease | None:
        """Move a lease to ``state``; ``None`` if the id is unknown."""
        return (await self.mark_states({lease_id: lease_state(state)})).get(lease_id)

    async def mark_states(
        self, updates: dict[str, LeaseState], *, skip_final: bool = False
    ) -> dict[str, ProcessLease]:
        """Apply several state moves in one durable write (checked, returned and
        ``skip_final`` as in :meth:`SyncLeaseStore.mark_states`)."""
        checked = _checked_marks(updates)
        return await self._change(functools.partial(apply_marks, checked, skip_final=skip_final))
