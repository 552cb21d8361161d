"""The ``acpx-trio`` exit codes (their one home) and the exit code of a finished turn."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

from acpx_trio._events import DoneEvent, ErrorEvent

if TYPE_CHECKING:
    from acpx_trio._cli.output import TurnPrinter
    from acpx_trio._events import AcpRuntimeEvent

__all__ = [
    "EXIT_ERROR",
    "EXIT_HANGUP",
    "EXIT_INTERRUPTED",
    "EXIT_NO_SESSION",
    "EXIT_OK",
    "EXIT_PERMISSION",
    "EXIT_TERMINATED",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "STOP_SIGNALS",
    "done_exit",
    "event_exit",
    "exit_code_for",
    "signal_exit",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_NO_SESSION = 4
EXIT_PERMISSION = 5
EXIT_HANGUP = 129  # SIGHUP
EXIT_INTERRUPTED = 130  # SIGINT
EXIT_TERMINATED = 143  # SIGTERM

#: The signals a turn command answers by stopping its agent: Ctrl-C, ``kill``, and the
#: terminal going away (SIGHUP: a closed terminal or SSH session must not leave the agent to
#: the owner-death watchdog).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_SIGNAL_EXIT: dict[int, int] = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED,
                signal.SIGHUP: EXIT_HANGUP}


def signal_exit(signum: int | None) -> int:
    """The exit code of a command stopped by ``signum`` (128 + its number, as a shell
    reports it; 130 when unknown)."""
    return EXIT_INTERRUPTED if signum is None else _SIGNAL_EXIT.get(signum, EXIT_INTERRUPTED)

_CODE_EXIT = {
    "ACP_TURN_TIMEOUT": EXIT_TIMEOUT,
    "ACP_TIMEOUT": EXIT_TIMEOUT,
    "ACP_CONTROL_TIMEOUT": EXIT_TIMEOUT,
    "ACP_SESSION_NOT_FOUND": EXIT_NO_SESSION,
    "ACP_PERMISSION_PROMPT_UNAVAILABLE": EXIT_PERMISSION,
    "ACP_PERMISSION_DENIED": EXIT_PERMISSION,
    "ACP_AGENT_UNKNOWN": EXIT_USAGE,
    "ACP_INVALID_RUNTIME_OPTION": EXIT_USAGE,
    "ACP_MCP_TRANSPORT_UNSUPPORTED": EXIT_USAGE,
}


def exit_code_for(code: str) -> int:
    """The process exit code for an error ``code`` (1 when it has no special meaning)."""
    return _CODE_EXIT.get(code, EXIT_ERROR)


def done_exit(ev: DoneEvent, printer: TurnPrinter) -> int:
    """0 for ``end_turn``, 130 for ``cancelled``; any other stop reason is reported and 1."""
    if ev.stop_reason == "end_turn":
        return EXIT_OK
    if ev.stop_reason == "cancelled":
        return EXIT_INTERRUPTED
    printer.error(f"the turn ended early: stop reason {ev.stop_reason!r}")
    return EXIT_ERROR


def event_exit(ev: AcpRuntimeEvent, printer: TurnPrinter) -> int | None:
    """Print one turn event; the command's exit code when the event ends the turn."""
    printer.event(ev)
    if isinstance(ev, DoneEvent):
        return done_exit(ev, printer)
    if isinstance(ev, ErrorEvent):
        printer.failure(ev.code, ev.message, ev.detail, ev.rpc_data)
        return exit_code_for(ev.code)
    return None
