"""Per-key locks that exist only while someone holds or waits for one."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import trio

__all__ = ["KeyedLocks"]


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = trio.Lock()
        self.users = 0


class KeyedLocks:
    """``async with locks(key):`` serialises work on ``key``; an entry is dropped as soon as
    nobody holds or waits for it, so the table does not grow with every key ever seen."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.asynccontextmanager
    async def __call__(self, key: str) -> AsyncIterator[None]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0 and self._entries.get(key) is entry:
                del self._entries[key]
