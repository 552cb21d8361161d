"""How the owner process answers SIGTERM, SIGINT and SIGHUP.

* The first signal stops the owner (its sessions are closed, every agent gone, then the
  clients get the rest of their streams; see :mod:`acpx_trio._owner.server`).
* A further signal waits for nothing: while the sessions close, every tree this process
  holds a lease for is killed at once, without ``killGraceSeconds`` (the reaper's proofs
  still decide what is signalled), again while a session is left (an agent still starting
  when the signal came has its lease saved after a pass), and the clients' streams are not
  waited for.
* A signal while the owner starts (before its receiver runs) is recorded and acted on once
  it serves; one after the receiver is gone (the process exiting) is ignored.  None takes
  the default action that would end the owner half-way, its socket and ``owner.json`` left.

Trio's receiver merges a signal with one of the same number not yet handled: two SIGTERMs
within about a millisecond count as one.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable

import trio

from acpx_trio._errors import AcpxError

__all__ = ["KILL_AGAIN_SECONDS", "STOP_SIGNALS", "OwnerSignals", "record_early_signals"]

#: The signals that stop the owner.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: While a further signal's kill runs and sessions are left: the longest wait between passes
#: (a launch whose lease is saved after a pass has no event to wait on).
KILL_AGAIN_SECONDS = 0.25
_log = logging.getLogger("acpx_trio.owner")


def record_early_signals() -> list[int]:
    """Before the event loop: the stop signals are recorded in the returned list instead of
    ending the process (hand it to :class:`OwnerSignals`).  The handlers are Python's: an
    agent started later gets the default dispositions."""
    early: list[int] = []

    def record(signum: int, _frame: object) -> None:
        early.append(signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, record)
    return early


def ignore_late_signals() -> None:
    """Once the owner is done (nothing is started after this): the stop signals are
    ignored, so the interpreter's exit never gives one the default action."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class OwnerSignals:
    """The signal policy of one owner (see the module docstring).  ``stop``: begin the
    shutdown; ``sessions_left``: whether a session is still open or closing; ``kill_now``:
    the grace-free kill of this process's launches (see :mod:`acpx_trio._service.kill_now`);
    ``early``: what :func:`record_early_signals` recorded."""

    def __init__(self, *, stop: Callable[[], None], sessions_left: Callable[[], bool],
                 kill_now: Callable[[], Awaitable[object]] | None = None,
                 early: list[int] | None = None) -> None:
        self._stop = stop
        self._sessions_left = sessions_left
        self._kill_now = kill_now
        self._early = early if early is not None else []
        self._count = 0
        self._nursery: trio.Nursery | None = None
        #: a signal came after the first: nothing more is waited for
        self.hurry = False
        #: set by the owner while it waits for its clients to read the rest (a signal then
        #: ends that wait)
        self.draining: trio.CancelScope | None = None
        self._kill_again = trio.Event()

    async def watch(self, nursery: trio.Nursery) -> None:
        """Answer signals until cancelled; the kill runs in ``nursery``."""
        self._nursery = nursery
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            early, self._early[:] = list(self._early), []
            for signum in early:  # came before this receiver: while the owner started
                self.on_signal(signum)
            async for signum in signals:
                self.on_signal(signum)

    def on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        self._count += 1
        if self.draining is not None:
            _log.info(f"signal {name}: not waiting for clients to read the rest")
            self.draining.cancel()
        elif self._count == 1:
            _log.info(f"signal {name}: shutting down")
            self._stop()
        elif not self.hurry:
            self.hurry = True
            _log.info(f"signal {name} again: killing the agents now (no grace), not waiting "
                      "for clients to read the rest")
            if self._kill_now is not None and self._nursery is not None:
                self._nursery.start_soon(self._kill_agents_now, self._kill_now)
        else:
            self._kill_again.set()

    async def _kill_agents_now(self, kill_now: Callable[[], Awaitable[object]]) -> None:
        """Kill every tree this process holds a lease for, again while a session is left:
        at the latest :data:`KILL_AGAIN_SECONDS` later, at once on a further signal."""
        while True:
            self._kill_again = trio.Event()
            try:
                await kill_now()
            except AcpxError as exc:  # the sessions' own close still ends every agent
                _log.warning(f"the immediate kill failed ({exc.code}); the sessions' close "
                             "goes on with its grace")
            if not self._sessions_left():
                return
            with trio.move_on_after(KILL_AGAIN_SECONDS):
                await self._kill_again.wait()
