"""The ``acpx-trio`` exit codes (their one home) and the exit code of a finished turn."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from acpx_trio._cli.output import TurnPrinter
    from acpx_trio._events import DoneEvent

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NO_SESSION",
    "EXIT_OK",
    "EXIT_PERMISSION",
    "EXIT_TERMINATED",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "done_exit",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_NO_SESSION = 4
EXIT_PERMISSION = 5
EXIT_INTERRUPTED = 130  # SIGINT
EXIT_TERMINATED = 143  # SIGTERM


def done_exit(ev: DoneEvent, printer: TurnPrinter) -> int:
    """0 for ``end_turn``, 130 for ``cancelled``; any other stop reason is reported and 1."""
    if ev.stop_reason == "end_turn":
        return EXIT_OK
    if ev.stop_reason == "cancelled":
        return EXIT_INTERRUPTED
    printer.error(f"the turn ended early: stop reason {ev.stop_reason!r}")
    return EXIT_ERROR
