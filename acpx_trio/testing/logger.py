"""A logger that remembers what it was told, for tests and benchmarks of hosts."""

from __future__ import annotations

__all__ = ["ListLogger"]


class ListLogger:
    """Keeps ``(level, message)`` pairs; fits the service's logger protocol.

    Use it as ``ServiceContext(logger=...)`` and assert on :meth:`at` afterwards."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []

    def debug(self, msg: str, /) -> None:
        self.records.append(("debug", msg))

    def info(self, msg: str, /) -> None:
        self.records.append(("info", msg))

    def warning(self, msg: str, /) -> None:
        self.records.append(("warning", msg))

    def error(self, msg: str, /) -> None:
        self.records.append(("error", msg))

    def at(self, level: str) -> list[str]:
        """Messages logged at ``level`` (``debug``, ``info``, ``warning``, ``error``)."""
        return [m for lvl, m in self.records if lvl == level]

    def messages(self) -> list[str]:
        """Every message, in order."""
        return [m for _, m in self.records]
