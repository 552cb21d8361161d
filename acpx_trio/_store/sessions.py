"""File session store: one JSON record per session key under ``config.state_dir``.

Guarantees:

* One file per key, named by the sha256 of the key (any key is safe as a file name).
* Writes are atomic and durable (temp file, fsync, rename, directory fsync); directory 0700,
  files 0600.  Read-modify-write updates hold a cross-process file lock.
* A corrupt record is reported (logged) and treated as absent by :meth:`SessionStore.load`;
  it is never deleted or overwritten silently except by a later :meth:`SessionStore.save`.
* All file work runs in worker threads; calls are cancellable (a started write completes).
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

import msgspec
import trio

from acpx_trio._store.fsio import (
    SESSION_FILE_MAX_BYTES,
    atomic_write_bytes,
    check_private_dir,
    ensure_private_dir,
    exclusive_lock,
    read_private_file,
)

__all__ = ["SESSION_FILE_PREFIX", "SessionRecord", "SessionStore", "SyncSessionStore"]

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
_decoder = msgspec.json.Decoder(SessionRecord)


def _file_name(session_key: str) -> str:
    return SESSION_FILE_PREFIX + hashlib.sha256(session_key.encode("utf-8")).hexdigest() + ".json"


class SyncSessionStore:
    """Blocking core of :class:`SessionStore` (for worker threads and scripts)."""

    def __init__(self, directory: str | Path, *, logger: logging.Logger | None = None) -> None:
        self.directory = Path(directory)
        self.lock_path = self.directory / "sessions.lock"
        self._log = logger or _log

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


class SessionStore:
    """Async facade of :class:`SyncSessionStore`: every call runs in a worker thread."""

    def __init__(self, directory: str | Path, *, logger: logging.Logger | None = None) -> None:
        self.sync = SyncSessionStore(directory, logger=logger)

    @property
    def directory(self) -> Path:
        return self.sync.directory

    async def load(self, session_key: str) -> SessionRecord | None:
        """The record of ``session_key``, or ``None`` (absent or unreadable)."""
        return await trio.to_thread.run_sync(self.sync.load, session_key)

    async def save(self, record: SessionRecord) -> SessionRecord:
        """Write ``record`` (stamping ``updated_at``); returns what was written."""
        return await trio.to_thread.run_sync(self.sync.save, record)

    async def mark_fresh(self, session_key: str) -> bool:
        """Persist the fresh marker; the next ensure starts a new ACP session."""
        return await trio.to_thread.run_sync(self.sync.mark_fresh, session_key)

    async def delete(self, session_key: str) -> bool:
        """Remove the record; False if there was none."""
        return await trio.to_thread.run_sync(self.sync.delete, session_key)

    async def list(self) -> builtins.list[SessionRecord]:
        """Every readable record."""
        return await trio.to_thread.run_sync(self.sync.list)
