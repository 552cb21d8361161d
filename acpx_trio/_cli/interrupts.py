"""Ctrl-C held while the command line loads (loads nothing itself: the entry points call it
before anything else is imported).

A ``KeyboardInterrupt`` raised inside an import can leave a half-initialised module (one
crashed the interpreter inside msgspec's decoder set-up) or half-restored argparse state.
:func:`hold_interrupts` blocks SIGINT (delivered later, never lost);
:func:`release_interrupts` unblocks it once the command's modules are loaded and before the
event loop starts (so no worker thread or agent inherits a blocked mask), and a Ctrl-C held
meanwhile is raised there, ending the command as ``interrupted`` (130).  Once the command
has finished, :func:`finished` ignores Ctrl-C for the few instructions left: a late one no
longer kills the exiting interpreter with a ``KeyboardInterrupt`` traceback.  When a write
to stdout or stderr is still blocked then (nobody reads the pipe: the command gave up on it),
:func:`finished` flushes the other stream and ends the process with its exit code at once:
the interpreter's own exit would wait on that stream for ever, or abort."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable

__all__ = ["finished", "hold_interrupts", "release_interrupts"]


def hold_interrupts() -> None:
    """Block SIGINT in this (the only) thread; idempotent."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def release_interrupts() -> None:
    """Unblock SIGINT; one that arrived while it was held is handled now."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def finished(command: Callable[[], int]) -> int:
    """``command()``'s exit code (130 when a Ctrl-C lands as it returns), then Ctrl-C
    ignored: the process is only exiting now.  For the entry points only."""
    try:
        code = command()
    except KeyboardInterrupt:
        from acpx_trio._cli.exits import EXIT_INTERRUPTED  # loaded by then: no cost

        code = EXIT_INTERRUPTED
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    output = sys.modules.get("acpx_trio._cli.output")  # loaded by every command that writes
    blocked = output.blocked_streams() if output is not None else set()
    if blocked:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None and id(stream) not in blocked:
                with contextlib.suppress(Exception):
                    stream.flush()
        os._exit(code)
    return code
