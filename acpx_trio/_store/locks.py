"""Async locking for the stores: an in-process FIFO in front of the cross-process ``flock``, and
group commit of concurrent changes into one locked write.

Guarantees:

* Tasks of one Trio run that lock the same path queue in FIFO order on a ``trio.Lock``
  (per path, per run), so in-process contention never reaches the kernel lock.
* The ``flock`` is taken in the worker thread that does the work: uncontended, one
  non-blocking ``flock`` and no extra thread hop.  Held by another process: a blocking
  ``flock`` in a thread that is abandoned on cancel (it releases the lock as soon as the kernel
  grants it), so waiting is cancellable and never polls.
* :class:`GroupCommitter`: changes submitted while a commit is running are applied together by
  the next commit, in submission order, with one read and one write.  Each change gets its own
  result or exception.  A change whose submitter is cancelled before its commit started is
  dropped; once its commit started it completes (the submitter then sees ``Cancelled``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import trio

from acpx_trio._store.flock import LockWaiter, open_lock_file, release_lock_fd, try_flock
from acpx_trio._store.fsio import ensure_private_dir

__all__ = ["GroupCommitter", "path_lock", "run_locked"]

T = TypeVar("T")
S = TypeVar("S")

_path_locks: trio.lowlevel.RunVar[dict[Path, trio.Lock]] = trio.lowlevel.RunVar("acpx_path_locks")


def path_lock(lock_path: Path) -> trio.Lock:
    """The in-process FIFO lock of ``lock_path`` for the current Trio run."""
    try:
        locks = _path_locks.get()
    except LookupError:
        locks = {}
        _path_locks.set(locks)
    lock = locks.get(lock_path)
    if lock is None:
        lock = locks[lock_path] = trio.Lock()
    return lock


def _try_run(lock_path: Path, fn: Callable[[], T]) -> tuple[bool, T | None]:
    ensure_private_dir(lock_path.parent)
    fd = open_lock_file(lock_path)
    if not try_flock(fd):
        os.close(fd)
        return False, None
    try:
        return True, fn()
    finally:
        release_lock_fd(fd)


def _run_with_fd(fd: int, fn: Callable[[], T]) -> T:
    try:
        return fn()
    finally:
        release_lock_fd(fd)


async def _run_flocked(lock_path: Path, fn: Callable[[], T], lock_timeout: float) -> T:
    done, value = await trio.to_thread.run_sync(_try_run, lock_path, fn)
    if done:
        return value  # type: ignore[return-value]
    waiter = LockWaiter(lock_path)
    try:
        with trio.move_on_after(lock_timeout) as scope:
            await trio.to_thread.run_sync(waiter.wait, abandon_on_cancel=True)
    except BaseException:
        waiter.abandon()
        raise
    if scope.cancelled_caught:
        waiter.abandon()
        raise TimeoutError(f"could not lock {lock_path} within {lock_timeout}s")
    fd = waiter.take()
    return await trio.to_thread.run_sync(_run_with_fd, fd, fn)


async def run_locked(lock_path: Path, fn: Callable[[], T], *, lock_timeout: float = 30.0) -> T:
    """Run blocking ``fn`` in a worker thread holding the in-process FIFO lock and the
    ``flock`` of ``lock_path`` (see the module).  Raises ``TimeoutError`` when another process
    holds the file lock longer than ``lock_timeout``; ``OSError`` from opening the lock file."""
    async with path_lock(lock_path):
        return await _run_flocked(lock_path, fn, lock_timeout)


class _Change(Generic[S]):
    __slots__ = ("apply", "done", "error", "result", "taken")

    def __init__(self, apply: Callable[[S], Any]) -> None:
        self.apply = apply
        self.taken = False
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class GroupCommitter(Generic[S]):
    """Applies changes to a locked state in groups (see the module docstring).

    ``commit(changes)`` runs in a worker thread with the locks held: it must apply each change
    in order (``change(state)``), collect a result or an exception per change, write once, and
    return the outcomes as ``(ok, value)`` pairs, one per change.  An exception from
    ``commit`` itself fails every change of the group with it."""

    def __init__(
        self,
        lock_path: Path,
        commit: Callable[[list[Callable[[S], Any]]], list[tuple[bool, Any]]],
        *,
        timeout: float = 30.0,
    ) -> None:
        self.lock_path = lock_path
        self._commit = commit
        self._timeout = timeout
        self._pending: list[_Change[S]] = []
        #: Number of commits run (each is one locked read-modify-write).
        self.commits = 0

    async def submit(self, apply: Callable[[S], T]) -> T:
        """Apply one change; returns its result or raises its exception."""
        change: _Change[S] = _Change(apply)
        self._pending.append(change)
        try:
            async with path_lock(self.lock_path):
                if not change.taken:
                    await self._lead(change)
        except BaseException:
            if not change.taken:
                if change in self._pending:
                    self._pending.remove(change)
                raise
            if not change.done.is_set():
                with trio.CancelScope(shield=True):
                    await change.done.wait()
            raise
        if change.error is not None:
            raise change.error
        return change.result  # type: ignore[no-any-return]

    async def _lead(self, own: _Change[S]) -> None:
        group, self._pending = self._pending, []
        for change in group:
            change.taken = True
        applies = [c.apply for c in group]
        try:
            outcomes = await _run_flocked(
                self.lock_path, lambda: self._commit(applies), self._timeout
            )
        except trio.Cancelled:
            # Cancelled while waiting for another process's lock: nothing was applied.  The
            # others go back to the front of the queue; one of them leads the next commit.
            others = [c for c in group if c is not own]
            for change in others:
                change.taken = False
            self._pending[:0] = others
            own.taken = False
            raise
        except BaseException as exc:
            for change in group:
                change.error = _copy(exc)
                change.done.set()
            self.commits += 1
            if not isinstance(exc, Exception):
                raise
            return
        self.commits += 1
        for change, (ok, value) in zip(group, outcomes, strict=True):
            if ok:
                change.result = value
            else:
                change.error = value
            change.done.set()


def _copy(exc: BaseException) -> BaseException:
    """A fresh exception per waiter (tracebacks do not pile up on one object)."""
    try:
        clone = type(exc)(*exc.args)
    except Exception:
        return exc
    clone.__cause__ = exc.__cause__
    return clone
