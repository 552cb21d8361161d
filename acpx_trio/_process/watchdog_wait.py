"""The owner-death watchdog process's first half: wait, cheaply, for the owner to die.

Run by path (``python -S -P .../watchdog_wait.py FD OWNER_PID OWNER_TICKS OWNER_START
LEASE_DIR GATEWAY_ID GRACE``, see :func:`acpx_trio._process.watchdog.watchdog_argv`), it
imports only ``os``, ``select``, ``sys`` and ``time`` at first: its start costs what a bare
``python -S`` costs (it runs next to the owner's first agent on a small machine).  Once the
owner has lived :data:`PRELOAD_SECONDS` it loads the reap's modules (the package, Trio,
psutil: ``PYTHONPATH`` names them; about 21 MiB), so that the reap after the owner's death
does not start with them: on a machine that the dead owner's agents keep busy that import
took 0.25-0.7 s of the ``killGraceSeconds + 1 s`` bound.  When the owner dies it hands over
to :func:`acpx_trio._process.watchdog_reap.after_owner_death`.  A normal stop (``stop`` on
the pipe) exits at once, without interpreter teardown.

Standard library only, and no import of ``acpx_trio`` at module level: it must run as a
script.
"""

from __future__ import annotations

import os
import select
import sys
import time

TYPE_CHECKING = False  # no ``typing`` import at run time (it costs this script's start)
if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

__all__ = [
    "PRELOAD_SECONDS", "STOP", "WATCHDOG_LOG_ENV", "main", "owner_gone", "wait_owner_gone",
]

#: A file the watchdog appends one line of figures to after a reap (tests, benchmarks).
WATCHDOG_LOG_ENV = "ACPX_TRIO_WATCHDOG_LOG"
#: What the owner writes before closing the pipe on a normal stop.
STOP = b"stop"
#: Poll interval where pidfds are unavailable.
_POLL_SECONDS = 1.0
#: How long the owner must have lived (since its watchdog started) before the reap's modules
#: are loaded: a one-shot command (``exec`` of the bundled agent takes 0.3 s) never pays for
#: them, and its first agent's start is not slowed by them.
PRELOAD_SECONDS = 0.5


def _start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
        fields = data[data.rfind(b")") + 1 :].split()
        if fields[0] in (b"Z", b"X", b"x"):
            return None
        return int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def owner_gone(pid: int, ticks: int | None) -> bool:
    """Whether the owner (``pid`` started at ``ticks``) is gone: exited, a zombie, or its pid
    now holds another process.  Without ``ticks`` (not Linux): whether ``pid`` exists."""
    if ticks is not None:
        return _start_ticks(pid) != ticks
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def wait_owner_gone(
    fd: int, pid: int, ticks: int | None, preload: Callable[[], None] | None = None,
) -> bool:
    """Block until the owner dies (``True``) or says it stopped normally (``False``: it
    wrote :data:`STOP` to the pipe ``fd``).  EOF without :data:`STOP` is not proof of death
    on its own (a dying process closes its files before it turns zombie): the owner's pidfd
    (or its start ticks, polled where pidfds are unavailable) decides.  ``preload`` is
    run once, in a thread beside the wait, if the owner still lives after
    :data:`PRELOAD_SECONDS`: a stop is still read at once; a death returns once the preload
    is over (the reap imports the same modules; their errors are left to it).  Blocking;
    for the watchdog process only."""
    loader: list[threading.Thread] = []  # the preload's thread, once started

    def gone() -> bool:  # the owner died: the reap starts once the preload is over
        for thread in loader:
            thread.join()
        return True

    pidfd: int | None = None
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        if owner_gone(pid, ticks):  # checked after opening the pidfd: it pins the owner
            return True
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP)
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        timeout = None if pidfd is not None else _POLL_SECONDS * 1000
        pipe_open = True
        preload_at = time.monotonic() + PRELOAD_SECONDS if preload is not None else None
        while True:
            wait = timeout
            if preload_at is not None:
                left = max(0, int((preload_at - time.monotonic()) * 1000) + 1)
                wait = left if wait is None else min(wait, left)
            for ready, _event in poller.poll(wait):
                if ready == pidfd:
                    return gone()
                if ready == fd:
                    data = os.read(fd, 4096)
                    if STOP in data:
                        return False  # normal stop: the owner closed everything itself
                    if not data:  # EOF: watch the owner itself from now on
                        poller.unregister(fd)
                        pipe_open = False
                        if pidfd is None:
                            timeout = 50
            if preload_at is not None and time.monotonic() >= preload_at:  # (a preload given)
                preload_at = None
                import threading

                loader.append(threading.Thread(target=_quietly, args=(preload,), daemon=True))
                loader[0].start()
            if pidfd is None and owner_gone(pid, ticks):
                return gone()
            if not pipe_open and pidfd is None and timeout is None:
                timeout = 50
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _quietly(preload: Callable[[], None]) -> None:
    try:  # noqa: SIM105 - contextlib is not loaded here
        preload()
    except Exception:  # the reap imports the same modules again, and fails loud
        pass


def _preload() -> None:
    from acpx_trio._process.watchdog_reap import preload

    preload()


def main(argv: list[str]) -> int:
    """Parse the command line (``OWNER_TICKS`` may be ``-``), wait for the owner, and on its
    death run the reap; exit code 2 on a bad command line."""
    if len(argv) != 7:
        sys.stderr.write("usage: watchdog_wait.py FD OWNER_PID OWNER_TICKS OWNER_START "
                         "LEASE_DIR GATEWAY_ID GRACE\n")
        return 2
    fd, pid = int(argv[0]), int(argv[1])
    ticks = None if argv[2] == "-" else int(argv[2])
    start, lease_dir, gateway, grace = float(argv[3]), argv[4], argv[5], float(argv[6])
    if not wait_owner_gone(fd, pid, ticks, _preload):
        os._exit(0)  # normal stop: the owner closed everything itself; nothing to flush
    from acpx_trio._process.watchdog_reap import after_owner_death

    after_owner_death(lease_dir, gateway, pid, start, grace, ticks,
                      os.environ.get(WATCHDOG_LOG_ENV))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
