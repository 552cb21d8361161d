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
  larger than 64 MiB (:func:`~acpx_trio._store.fsio.read_private_file`).
* **Legal moves only**: ``open->closing``, ``open->closed``, ``closing->closed``,
  ``closing->lost``; ``closed`` and ``lost`` are final.  Anything else raises
  :class:`LeaseStateError`.  Re-applying the current state is an idempotent no-op.
* **Bounded**: final leases are pruned on write (at most ``max_final`` of them, none older than
  ``final_ttl_seconds``).
"""

from __future__ import annotations

import enum
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import trio

from acpx_trio._errors import LeaseStateError, LeaseStoreError, StateFileError
from acpx_trio._store.fsio import (
    LEASE_FILE_MAX_BYTES,
    atomic_write_bytes,
    ensure_private_dir,
    exclusive_lock,
    quarantine,
    read_private_file,
)

__all__ = [
    "LEASE_FILE_NAME",
    "LeaseState",
    "LeaseStore",
    "ProcessLease",
    "SyncLeaseStore",
    "check_transition",
    "decode_lease_file",
    "hash_command",
    "new_lease_id",
    "peek_leases",
]

LEASE_FILE_NAME = "process-leases.json"
_log = logging.getLogger("acpx_trio.leases")
#: Invalid entries of one read that get a warning each; the rest are summed up in one line.
_ENTRY_WARNINGS = 5
T = TypeVar("T")


class LeaseState(enum.StrEnum):
    """Lifecycle of a lease.  Every API also accepts the plain strings."""

    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    LOST = "lost"

    @property
    def is_final(self) -> bool:
        return self in (LeaseState.CLOSED, LeaseState.LOST)


_ALLOWED: frozenset[tuple[LeaseState, LeaseState]] = frozenset(
    {
        (LeaseState.OPEN, LeaseState.CLOSING),
        (LeaseState.OPEN, LeaseState.CLOSED),
        (LeaseState.CLOSING, LeaseState.CLOSED),
        (LeaseState.CLOSING, LeaseState.LOST),
    }
)


def check_transition(lease_id: str, current: LeaseState | str, requested: LeaseState | str) -> None:
    """Raise :class:`LeaseStateError` unless ``current -> requested`` is allowed.

    Staying in the same state is always allowed (idempotent)."""
    cur, req = LeaseState(current), LeaseState(requested)
    if cur is req or (cur, req) in _ALLOWED:
        return
    raise LeaseStateError(lease_id, cur.value, req.value)


class ProcessLease(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True, frozen=True):
    """One agent launch.  Encoded camelCase (``leaseId``, ``rootPid``, ...) as the seed does.

    The seed's fields are required (a file without them is not a lease file); the fields we
    add are optional and omitted when unset, so the TypeScript gateway reads our file as-is.

    ``root_pid == 0`` means *pending*: written before spawn, no pid recorded yet.
    ``root_create_time`` (psutil create time) and ``root_start_ticks``/``boot_id`` (Linux
    ``/proc/PID/stat`` field 22 and ``/proc/sys/kernel/random/boot_id``) guard against pid
    reuse.  ``owner_pid``/``owner_start_time`` identify the gateway process that holds the lease,
    so start-up reaping can leave the leases of a live owner alone."""

    lease_id: str
    gateway_instance_id: str
    session_key: str
    wrapper_root: str
    wrapper_path: str
    root_pid: int
    process_group_id: int | None = None
    command_hash: str
    started_at: int
    state: LeaseState
    root_create_time: float | None = None
    root_start_ticks: int | None = None
    boot_id: str | None = None
    owner_pid: int | None = None
    owner_start_time: float | None = None

    def with_state(self, state: LeaseState | str) -> ProcessLease:
        """Return a copy in ``state`` after checking that the move is legal."""
        check_transition(self.lease_id, self.state, state)
        return msgspec.structs.replace(self, state=LeaseState(state))


class _LeaseFileV1(msgspec.Struct, tag_field="version", tag=1):
    leases: list[msgspec.Raw] = []


class _LeaseFileOut(msgspec.Struct, tag_field="version", tag=1):
    leases: list[ProcessLease]


_file_decoder = msgspec.json.Decoder(_LeaseFileV1)
_lease_decoder = msgspec.json.Decoder(ProcessLease)
_encoder = msgspec.json.Encoder()


def decode_lease_file(
    data: bytes,
) -> tuple[list[ProcessLease], list[msgspec.Raw], list[str]]:
    """Decode a lease file: (valid leases, raw invalid entries, why each was invalid).

    Duplicate ids: the last entry wins, as an upsert would.  Raises ``msgspec.DecodeError``
    (or ``UnicodeDecodeError``) when the file as a whole is not a version-1 lease file."""
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


def new_lease_id() -> str:
    """A fresh random lease id (UUID4 text)."""
    return str(uuid.uuid4())


def hash_command(command: str | Iterable[str]) -> str:
    """sha256 hex of the agent command (argv parts joined by single spaces)."""
    text = command if isinstance(command, str) else " ".join(command)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _now_ms() -> int:
    return int(time.time() * 1000)


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
        logger: logging.Logger | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / LEASE_FILE_NAME
        self.lock_path = self.state_dir / (LEASE_FILE_NAME + ".lock")
        self.max_final = max_final
        self.final_ttl_seconds = final_ttl_seconds
        self._clock = clock
        self._log = logger or _log
        #: Paths of lease files this store moved aside because they could not be decoded.
        self.quarantined: list[Path] = []
        #: Number of invalid entries skipped by the last read.
        self.skipped_entries = 0

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

    def _write_unlocked(self, leases: list[ProcessLease]) -> None:
        kept = self._prune(leases)
        body = msgspec.json.format(_encoder.encode(_LeaseFileOut(leases=kept)), indent=2)
        atomic_write_bytes(self.path, body + b"\n")

    def _prune(self, leases: list[ProcessLease]) -> list[ProcessLease]:
        cutoff_ms = (self._clock() - self.final_ttl_seconds) * 1000
        final = [x for x in leases if x.state.is_final]
        if len(final) <= self.max_final and all(x.started_at >= cutoff_ms for x in final):
            return leases
        newest = sorted(final, key=lambda x: x.started_at, reverse=True)[: self.max_final]
        keep_ids = {x.lease_id for x in newest if x.started_at >= cutoff_ms}
        return [x for x in leases if not x.state.is_final or x.lease_id in keep_ids]

    def _locked(self, fn: Callable[[], T]) -> T:
        try:
            ensure_private_dir(self.state_dir)
            with exclusive_lock(self.lock_path):
                return fn()
        except (OSError, TimeoutError) as exc:
            raise LeaseStoreError(f"lease store {self.path}: {exc}") from exc

    def list_all(self) -> list[ProcessLease]:
        """Every valid lease in file order (open, closing and final)."""
        return self._locked(lambda: self._read_unlocked()[0])

    def load(self, lease_id: str) -> ProcessLease | None:
        """The lease with this id, or ``None``."""
        return next((x for x in self.list_all() if x.lease_id == lease_id), None)

    def list_open(self, gateway_instance_id: str | None = None) -> list[ProcessLease]:
        """Leases in state open or closing, optionally only those of one gateway."""
        return [
            x
            for x in self.list_all()
            if x.state in (LeaseState.OPEN, LeaseState.CLOSING)
            and (not gateway_instance_id or x.gateway_instance_id == gateway_instance_id)
        ]

    # -- writing ---------------------------------------------------------------------------
    def _modify(self, fn: Callable[[list[ProcessLease]], T]) -> T:
        def run() -> T:
            leases, bad = self._read_unlocked()
            result = fn(leases)
            if bad:
                self._log.warning(
                    "dropping %d invalid lease entr%s from %s on rewrite",
                    len(bad), "y" if len(bad) == 1 else "ies", self.path,
                )
            self._write_unlocked(leases)
            return result

        return self._locked(run)

    def save(self, lease: ProcessLease) -> ProcessLease:
        """Insert or replace (by ``lease_id``).  Replacing checks the state move."""

        def apply(leases: list[ProcessLease]) -> ProcessLease:
            for i, old in enumerate(leases):
                if old.lease_id == lease.lease_id:
                    check_transition(lease.lease_id, old.state, lease.state)
                    leases[i] = lease
                    return lease
            leases.append(lease)
            return lease

        return self._modify(apply)

    def mark_state(self, lease_id: str, state: LeaseState | str) -> ProcessLease | None:
        """Move one lease to ``state``; returns the updated lease, ``None`` if unknown."""
        target = LeaseState(state)
        return self.mark_states({lease_id: target}).get(lease_id)

    def mark_states(self, updates: dict[str, LeaseState]) -> dict[str, ProcessLease]:
        """Apply several moves in one locked write; all are checked before any is applied."""

        def apply(leases: list[ProcessLease]) -> dict[str, ProcessLease]:
            out: dict[str, ProcessLease] = {}
            staged = list(leases)
            for i, old in enumerate(staged):
                if old.lease_id in updates:
                    staged[i] = old.with_state(updates[old.lease_id])
                    out[old.lease_id] = staged[i]
            leases[:] = staged
            return out

        return self._modify(apply)


class LeaseStore:
    """Async, cancellable facade of :class:`SyncLeaseStore`; all file work runs in a worker thread.

    On cancellation a started write still completes (it is short and atomic) before
    :class:`trio.Cancelled` is delivered, so the file is never left half-updated."""

    def __init__(self, state_dir: str | Path, **kwargs: Any) -> None:
        self.sync = SyncLeaseStore(state_dir, **kwargs)

    @property
    def path(self) -> Path:
        return self.sync.path

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args)

    async def load(self, lease_id: str) -> ProcessLease | None:
        """The lease with this id, or ``None``."""
        return await self._run(self.sync.load, lease_id)

    async def list_all(self) -> list[ProcessLease]:
        """Every valid lease, final ones included."""
        return await self._run(self.sync.list_all)

    async def list_open(self, gateway_instance_id: str | None = None) -> list[ProcessLease]:
        """Leases in state open or closing (optionally of one gateway)."""
        return await self._run(self.sync.list_open, gateway_instance_id)

    async def save(self, lease: ProcessLease) -> ProcessLease:
        """Insert or replace a lease (legal state moves only)."""
        return await self._run(self.sync.save, lease)

    async def mark_state(self, lease_id: str, state: LeaseState | str) -> ProcessLease | None:
        """Move a lease to ``state``; ``None`` if the id is unknown."""
        return await self._run(self.sync.mark_state, lease_id, state)

    async def mark_states(self, updates: dict[str, LeaseState]) -> dict[str, ProcessLease]:
        """Apply several state moves in one durable write."""
        return await self._run(self.sync.mark_states, updates)


def new_lease(
    *,
    gateway_instance_id: str,
    session_key: str,
    wrapper_root: str | Path,
    command: str | Iterable[str],
    owner_pid: int | None = None,
    owner_start_time: float | None = None,
    wrapper_path: str = "",
) -> ProcessLease:
    """A pending (``root_pid == 0``) lease for a launch about to happen."""
    return ProcessLease(
        lease_id=new_lease_id(),
        gateway_instance_id=gateway_instance_id,
        session_key=session_key,
        wrapper_root=str(wrapper_root),
        wrapper_path=wrapper_path,
        root_pid=0,
        command_hash=hash_command(command),
        started_at=_now_ms(),
        state=LeaseState.OPEN,
        owner_pid=owner_pid,
        owner_start_time=owner_start_time,
    )
