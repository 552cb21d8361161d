"""What a command-line process does at its start and at its end, around the command (loads
nothing itself: the entry points call it before anything else is imported).

**Ctrl-C while the command line loads.**  A ``KeyboardInterrupt`` raised inside an import can
leave a half-initialised module (one crashed the interpreter inside msgspec's decoder set-up)
or half-restored argparse state.  :func:`hold_interrupts` blocks SIGINT (delivered later,
never lost); :func:`release_interrupts` unblocks it once the command's modules are loaded and
before the event loop starts (so no worker thread or agent inherits a blocked mask), and a
Ctrl-C held meanwhile is raised there, ending the command as ``interrupted`` (130).  Once the
command has finished, :func:`finished` ignores Ctrl-C for the few instructions left: a late
one no longer kills the exiting interpreter with a ``KeyboardInterrupt`` traceback.  When a
write to stdout or stderr is still blocked then (nobody reads the pipe: the command gave up on
it), :func:`finished` flushes the other stream and ends the process with its exit code at
once: the interpreter's own exit would wait on that stream for ever, or abort.

**The end.**  :func:`end_process` ends the process once the command is over and its output
flushed, without the interpreter's teardown (a full collection and the release of every
module: about 26 ms of a one-shot ``exec``).  Nothing the command promised is skipped: the
command returns only after its agents are gone and its state files are written and closed
(every write is synchronous, fsync included); the ``atexit`` handlers run (logging's flush
among them).  When that cannot be shown cheaply (a flush fails, a non-daemon thread still
runs) or something else still has a say in how the interpreter ends (a profiler, a tracer
or debugger such as coverage or ``pdb``, ``python -i``), the interpreter's own exit runs
instead, with its own semantics."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

__all__ = ["end_process", "finished", "hold_interrupts", "release_interrupts"]


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


def end_process(code: int) -> NoReturn:
    """End the process with exit status ``code`` (see the module): ``atexit`` handlers run,
    stdout and stderr are flushed, then the process exits without the interpreter's
    teardown.  Falls back to the interpreter's exit (``SystemExit``) when a profiler, tracer
    or ``python -i`` is in charge, when a thread that is not a daemon still runs, or when a
    flush fails.  For the entry points only, after :func:`finished`."""
    if sys.flags.interactive or sys.getprofile() is not None or sys.gettrace() is not None:
        raise SystemExit(code)  # whoever runs us ends the interpreter (a report, a prompt)
    if any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        raise SystemExit(code)  # the interpreter waits for it, as it always has
    atexit._run_exitfuncs()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except BaseException:  # the interpreter reports it, with its exit status
        raise SystemExit(code) from None
    os._exit(code)
