"""File session store: one JSON record per session key under ``config.state_dir``.

Guarantees:

* One file per key, named by the sha256 of the key (any key is safe as a file name).
* Writes are atomic and durable (temp file, fsync, rename, directory fsync); directory 0700,
  files 0600.  Read-modify-write updates hold a cross-process file lock.
* A corrupt record is reported (logged) and treated as absent by :meth:`SessionStore.load`;
  it is never deleted or overwritten silently except by a later :meth:`SessionStore.save`.
* All file work runs in worker threads; calls are cancellable (a started write completes).
* :class:`SessionStore` raises only :class:`SessionStoreError` (code ``ACPX_SESSION_STORE``)
  for file-system failures (unwritable or missing directory, a file where the directory should
  be, a lock held too long), naming the path.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
import trio

from acpx_trio._errors import SessionStoreError, StateFileError
from acpx_trio._log import Logger
from acpx_trio._store.flock import exclusive_lock
from acpx_trio._store.fsio import (
    SESSION_FILE_MAX_BYTES,
    StateDecoder,
    atomic_write_bytes,
    atomic_write_many,
    check_private_dir,
    ensure_private_dir,
    fsync_dir,
    read_private_file,
)
from acpx_trio._store.locks import GroupCommitter
from acpx_trio._store.userpaths import state_dir_path

__all__ = [
    "SESSION_FILE_PREFIX",
    "SessionRecord",
    "SessionStore",
    "SyncSessionStore",
    "store_error",
]

SESSION_FILE_PREFIX = "session-"
_log = logging.getLogger("acpx_trio.sessions")
T = TypeVar("T")


class SessionRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What is remembered about one session key across restarts.

    ``backend_session_id`` is the agent's ACP session id (used for ``session/load``);
    ``reset_on_next_ensure`` is the persisted "start fresh" marker; ``agent_pid`` with
    ``agent_create_time``/``agent_start_ticks`` identify the agent process that served it."""

    session_key: str
    agent: str
    agent_command: tuple[str, ...] = ()
    cwd: str = ""
    mode: Literal["persistent", "oneshot"] = "persistent"
    backend_session_id: str | None = None
    lease_id: str | None = None
    agent_pid: int | None = None
    agent_create_time: float | None = None
    agent_start_ticks: int | None = None
    current_mode: str | None = None
    reset_on_next_ensure: bool = False
    closed: bool = False
    updated_at: float = 0.0
    version: int = 1


_encoder = msgspec.json.Encoder()
#: Records are untrusted bytes: one that does not decode (nested too deeply included) reads as
#: absent, with a warning (``_read``); it is never deleted.
_decoder = StateDecoder(SessionRecord)


def _file_name(session_key: str) -> str:
    return SESSION_FILE_PREFIX + hashlib.sha256(session_key.encode("utf-8")).hexdigest() + ".json"


class _Batch:
    """Writes staged by the changes of one group commit (last write of a path wins)."""

    __slots__ = ("current", "staged", "unlinked", "writers")

    def __init__(self) -> None:
        self.current = 0
        self.staged: dict[Path, bytes] = {}
        self.writers: dict[Path, builtins.list[int]] = {}
        self.unlinked = False

    def write(self, path: Path, body: bytes) -> None:
        self.staged[path] = body
        self.writers.setdefault(path, []).append(self.current)


class SyncSessionStore:
    """Blocking core of :class:`SessionStore` (for worker threads and scripts)."""

    def __init__(self, directory: str | Path, *, logger: Logger | None = None) -> None:
        self.directory = state_dir_path(directory, "directory")  # empty: AcpxUsageError
        self.lock_path = self.directory / "sessions.lock"
        self._log: Logger = logger or _log

    def path_for(self, session_key: str) -> Path:
        return self.directory / _file_name(session_key)

    def _read(self, path: Path) -> SessionRecord | None:
        try:
            data = read_private_file(path, SESSION_FILE_MAX_BYTES)
        except FileNotFoundError:
            return None
        try:
            return _decoder.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            self._log.warning("ignoring unreadable session record %s: %s", path, exc)
            return None

    def _locked(self, fn: Callable[[], T]) -> T:
        ensure_private_dir(self.directory)
        with exclusive_lock(self.lock_path):
            return fn()

    def load(self, session_key: str) -> SessionRecord | None:
        record = self._read(self.path_for(session_key))
        if record is not None and record.session_key != session_key:
            return None  # a hash collision cannot happen in practice; refuse it anyway
        return record

    def save(self, record: SessionRecord) -> SessionRecord:
        record = msgspec.structs.replace(record, updated_at=time.time())
        body = _encoder.encode(record) + b"\n"
        self._locked(lambda: atomic_write_bytes(self.path_for(record.session_key), body))
        return record

    def mark_fresh(self, session_key: str) -> bool:
        """Persist "start a new ACP session next time"; False when no record exists."""

        def apply() -> bool:
            path = self.path_for(session_key)
            record = self._read(path)
            if record is None:
                return False
            record = msgspec.structs.replace(
                record, reset_on_next_ensure=True, updated_at=time.time()
            )
            atomic_write_bytes(path, _encoder.encode(record) + b"\n")
            return True

        return self._locked(apply)

    def delete(self, session_key: str) -> bool:
        def apply() -> bool:
            try:
                self.path_for(session_key).unlink()
            except FileNotFoundError:
                return False
            return True

        return self._locked(apply)

    # -- changes for a group commit (lock held); writes are staged in the batch and made
    # durable together by :meth:`commit_changes`
    def put_unlocked(self, record: SessionRecord, batch: _Batch) -> SessionRecord:
        record = msgspec.structs.replace(record, updated_at=time.time())
        batch.write(self.path_for(record.session_key), _encoder.encode(record) + b"\n")
        return record

    def _update_unlocked(self, session_key: str, batch: _Batch,
                         change: Callable[[SessionRecord], SessionRecord | None]) -> bool:
        """Write ``change(record)`` (stamped) over the record as this batch sees it; False
        when there is none or ``change`` answers ``None`` (leave it as it is)."""
        path = self.path_for(session_key)
        staged = batch.staged.get(path)
        record = self._read(path) if staged is None else _decoder.decode(staged)
        changed = None if record is None else change(record)
        if changed is None:
            return False
        changed = msgspec.structs.replace(changed, updated_at=time.time())
        batch.write(path, _encoder.encode(changed) + b"\n")
        return True

    def fresh_unlocked(self, session_key: str, batch: _Batch) -> bool:
        return self._update_unlocked(session_key, batch, lambda record: msgspec.structs.replace(
            record, reset_on_next_ensure=True))

    def closed_unlocked(self, session_key: str, discard: bool, batch: _Batch) -> bool:
        return self._update_unlocked(session_key, batch, lambda record: msgspec.structs.replace(
            record, closed=True, reset_on_next_ensure=record.reset_on_next_ensure or discard))

    def mode_unlocked(self, session_key: str, backend_session_id: str, mode: str,
                      batch: _Batch) -> bool:
        def change(record: SessionRecord) -> SessionRecord | None:
            if (record.closed or record.reset_on_next_ensure
                    or record.backend_session_id != backend_session_id):
                return None  # closed, fresh or replaced meanwhile: never brought back
            return msgspec.structs.replace(record, current_mode=mode)

        return self._update_unlocked(session_key, batch, change)

    def remove_unlocked(self, session_key: str, batch: _Batch) -> bool:
        path = self.path_for(session_key)
        staged = batch.staged.pop(path, None) is not None
        try:
            path.unlink()
        except FileNotFoundError:
            return staged
        batch.unlinked = True
        return True

    def commit_changes(self, changes: builtins.list[Callable[[_Batch], Any]]) -> Any:
        """Run ``changes`` in order (lock held), then write their records durably at once
        (:func:`atomic_write_many`); a change whose write failed gets the ``OSError``."""
        batch = _Batch()
        outcomes: builtins.list[tuple[bool, Any]] = []
        for index, change in enumerate(changes):
            batch.current = index
            try:
                outcomes.append((True, change(batch)))
            except Exception as exc:
                outcomes.append((False, exc))
        paths = list(batch.staged)
        errors = atomic_write_many([(path, batch.staged[path]) for path in paths])
        for path, error in zip(paths, errors, strict=True):
            if error is not None:
                for index in batch.writers[path]:
                    outcomes[index] = (False, error)
        if batch.unlinked and not paths:
            fsync_dir(self.directory)
        return outcomes

    def list(self) -> builtins.list[SessionRecord]:
        """Every readable record, oldest update first."""
        check_private_dir(self.directory)  # a file, another user's or a writable dir: refuse
        if not self.directory.is_dir():
            return []
        records = [
            record
            for path in sorted(self.directory.glob(f"{SESSION_FILE_PREFIX}*.json"))
            if (record := self._read(path)) is not None
        ]
        return sorted(records, key=lambda r: r.updated_at)


def store_error(directory: Path, action: str, exc: OSError) -> SessionStoreError:
    """The typed error for an ``OSError`` while ``action``-ing the store in ``directory``."""
    where = exc.filename if isinstance(exc.filename, str) else str(directory)
    reason = exc.strerror or str(exc) or type(exc).__name__
    return SessionStoreError(
        f"session store {directory}: cannot {action} ({reason}: {where}); check that the "
        "state dir is a directory this user can write",
        path=where,
    )


class SessionStore:
    """Async facade of :class:`SyncSessionStore`: every call runs in a worker thread.

    Every method raises :class:`SessionStoreError` (never a raw ``OSError``) when the file
    system refuses; a corrupt record is not an error (it reads as absent).  Writes from
    concurrent tasks are group-committed (:class:`GroupCommitter`): one locked worker-thread
    hop, concurrent fsyncs and one directory fsync for all the records waiting, each caller
    getting its own result; waiting for another process's lock is cancellable."""

    def __init__(self, directory: str | Path, *, logger: Logger | None = None) -> None:
        self.sync = SyncSessionStore(directory, logger=logger)
        self._committer: GroupCommitter[_Batch] = GroupCommitter(
            self.sync.lock_path, self.sync.commit_changes
        )

    @property
    def directory(self) -> Path:
        return self.sync.directory

    async def _run(self, action: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except OSError as exc:
            raise store_error(self.sync.directory, action, exc) from exc
        except StateFileError as exc:  # a hostile file or untrusted dir: same type, its words
            raise SessionStoreError(str(exc), path=exc.path) from exc

    async def _change(self, action: str, change: Callable[[_Batch], T]) -> T:
        try:
            return await self._committer.submit(change)
        except OSError as exc:
            raise store_error(self.sync.directory, action, exc) from exc
        except StateFileError as exc:
            raise SessionStoreError(str(exc), path=exc.path) from exc

    async def load(self, session_key: str) -> SessionRecord | None:
        """The record of ``session_key``, or ``None`` (absent or unreadable)."""
        return await self._run("read a session record", self.sync.load, session_key)

    async def save(self, record: SessionRecord) -> SessionRecord:
        """Write ``record`` (stamping ``updated_at``); returns what was written."""
        return await self._change(
            "write a session record", functools.partial(self.sync.put_unlocked, record)
        )

    async def mark_fresh(self, session_key: str) -> bool:
        """Persist the fresh marker; the next ensure starts a new ACP session."""
        return await self._change(
            "update a session record", functools.partial(self.sync.fresh_unlocked, session_key)
        )

    async def mark_closed(self, session_key: str, *, discard: bool = False) -> bool:
        """Mark the record closed (and, with ``discard``, to start a new ACP session next
        time) in one locked read-modify-write: one worker-thread hop, no lost update.
        False if there is no record."""
        return await self._change(
            "update a session record",
            functools.partial(self.sync.closed_unlocked, session_key, discard),
        )

    async def set_current_mode(self, session_key: str, backend_session_id: str,
                               mode: str) -> bool:
        """Record ``mode`` as the current mode of the ACP session ``backend_session_id``
        in one locked read-modify-write; a record closed, marked fresh or naming another
        session meanwhile is left as it is (a mode change racing a close never brings the
        closed session back).  False when nothing was written."""
        return await self._change(
            "update a session record",
            functools.partial(self.sync.mode_unlocked, session_key, backend_session_id, mode),
        )

    async def delete(self, session_key: str) -> bool:
        """Remove the record; False if there was none."""
        return await self._change(
            "delete a session record", functools.partial(self.sync.remove_unlocked, session_key)
        )

    async def list(self) -> builtins.list[SessionRecord]:
        """Every readable record."""
        return await self._run("list session records", self.sync.list)
