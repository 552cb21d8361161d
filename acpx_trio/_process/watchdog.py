"""Owner-death watchdog: when the process that owns agent leases dies (SIGKILL included),
every agent tree it started is killed, with no restart needed.

One small process per running service that starts agents (``python -S -P
.../acpx_trio/_process/watchdog_wait.py ...``), spawned before its first agent, detached (its own
session, stdio on ``/dev/null``), through :func:`register_watchdog`.  It holds
the read end of a pipe whose write end only the owner keeps, and a pidfd of the owner whose
identity (pid + start ticks) it checks after opening it.  It blocks in ``poll`` on both; it
starts as a bare interpreter (no Trio, no psutil: it runs beside the owner's first agent)
and loads the reap's modules once the owner has lived half a second, so that a reap does not
begin with that import on a machine the dead owner's agents keep busy (see
``benchmarks/watchdog.py``).

Guarantees:

* **Owner dies** (pidfd readable, or pipe EOF with the owner gone, or the owner's pid now holds
  another process): it reaps exactly the open/closing leases of this gateway whose
  ``ownerPid`` and ``ownerStartTime`` are the dead owner's, with the reaper's proofs (tags +
  identity, group/session kill, one-wave escalation: SIGTERM, ``grace``, SIGKILL), marks them
  final; then it sweeps every live process of this gateway whose owner tag
  (``OPENCLAW_ACPX_OWNER``) names the dead owner (pid + start time) — the agents and terminals
  whose lease record was lost (a corrupt lease file quarantined by another process) — and
  exits.  Leases of any other owner (a second gateway on the same state dir, the
  next life of this one) are never touched.
* **Owner stops normally** (writes ``stop`` to the pipe, after closing its agents): it exits
  at once, killing nothing.  EOF alone is not taken as death: the pidfd decides.
* **It never outlives its job**: it exits after one of the two above; it has no other loop.
* **Killed watchdog**: agents run as our uid and can SIGKILL it.  The owner sees it exit
  and arms a new one at once (backing off up to 1 s only when it keeps dying young); the
  window in between, or an agent killing the owner and its watchdog together, is left to the
  next start-up's reap (a same-uid process cannot be fully contained without cgroups).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from typing import TYPE_CHECKING

from acpx_trio._process.watchdog_wait import (
    STOP,
    WATCHDOG_LOG_ENV,
    owner_gone,
    wait_owner_gone,
)

if TYPE_CHECKING:
    import trio

    from .._log import ServiceLogger

__all__ = [
    "ARM_WAIT_SECONDS",
    "STOP",
    "WAIT_SCRIPT",
    "WATCHDOG_ENV",
    "WATCHDOG_LOG_ENV",
    "WatchdogHandle",
    "ensure_armed",
    "owner_gone",
    "register_watchdog",
    "wait_owner_gone",
    "watchdog_argv",
]

_log = logging.getLogger("acpx_trio.watchdog")
#: The watchdog process's program (see :func:`watchdog_argv`).
WAIT_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "watchdog_wait.py")
#: Set to ``0`` to start no watchdog (then only a later start-up or ``acpx-trio reap``
#: cleans up after a killed owner).
WATCHDOG_ENV = "ACPX_TRIO_WATCHDOG"


def _stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (job control or a tracer).  psutil is imported
    only here (the owner's side; the watchdog process never calls this)."""
    import psutil  # type: ignore[import-untyped,unused-ignore]

    try:
        status = psutil.Process(pid).status()
    except (psutil.Error, OSError):  # gone, or no descriptor left to read /proc with (EMFILE)
        return False
    return status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)


def watchdog_argv(
    fd: int, owner_pid: int, owner_ticks: int | None, owner_start: float, lease_dir: str,
    gateway_id: str, grace: float,
) -> list[str]:
    """The command line of a watchdog process: :mod:`.watchdog_wait` run by path (``-S``: no
    ``site``; ``-P``: not its directory on ``sys.path``), which imports nothing of ours until
    the owner has lived half a second or died; the caller passes its ``sys.path`` as
    ``PYTHONPATH`` for that moment."""
    return [
        sys.executable, "-S", "-P", WAIT_SCRIPT, str(fd), str(owner_pid),
        "-" if owner_ticks is None else str(owner_ticks), repr(owner_start), lease_dir,
        gateway_id, repr(grace),
    ]


def _child_env() -> dict[str, str]:
    # no ownership tag, and no credential (``ACPX_AUTH_*``): the watchdog needs neither
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENCLAW_ACPX_", "ACPX_AUTH_"))}
    # ``-S`` skips ``site`` (and its .pth files, editable-install finders included): name the
    # directory holding this package first, then our whole import path
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([package_root, *(p for p in sys.path if p)])
    return env


class WatchdogHandle:
    """A service's owner-death watchdog for one lease dir, spawned on demand.

    Made by :func:`register_watchdog` (synchronous, no task, no process); the process is
    started in the service's nursery by the first :func:`ensure_armed` for its lease dir
    (``AgentProcess`` calls it before spawning an agent), so a service that never starts an
    agent costs nothing.  :meth:`aclose` (after the runtime closed its agents) tells it to
    stop and waits for it."""

    def __init__(
        self, nursery: trio.Nursery | None, key: str, gateway_instance_id: str, grace: float,
        logger: ServiceLogger | None = None,
    ) -> None:
        import trio as _trio

        self._log: ServiceLogger = logger if logger is not None else _log
        self._nursery = nursery
        self._key = key
        self._gateway = gateway_instance_id
        self._grace = grace
        self._scope = _trio.CancelScope()
        self._armed = _trio.Event()
        self._done = _trio.Event()
        self._started = False
        #: The watchdog's pid once started.
        self.pid: int | None = None
        self._proc: trio.Process | None = None
        #: Watchdogs found stopped (``SIGSTOP``, traced) and replaced (for tests).
        self.replaced = 0

    async def ensure(self) -> None:
        """Start the watchdog if needed and wait (bounded) until it is armed."""
        import trio as _trio

        if self._nursery is None:
            await _trio.lowlevel.checkpoint()
            return
        if not self._started:
            self._started = True
            self._nursery.start_soon(self._run)
        with _trio.move_on_after(ARM_WAIT_SECONDS):
            await self._armed.wait()

    async def _run(self) -> None:
        import trio as _trio

        pause = 0.0
        try:
            with self._scope:
                while True:  # only a cancel (a normal stop) ends it
                    started = _trio.current_time()
                    code = await _spawn_and_wait(self._key, self._gateway, self._grace, self)
                    # it died while we live: killed (an agent runs as our uid and can find
                    # it) or crashed.  Arm a new one: an owner is never left unwatched.
                    # Backing off only when it dies young (a broken install must not spin).
                    quick = _trio.current_time() - started < 1.0
                    pause = min(max(pause * 2, 0.05), 1.0) if quick else 0.0
                    self._log.warning(f"owner-death watchdog exited (code {code}) while its "
                                      "owner lives; arming a new one")
                    await _trio.sleep(pause)
        except OSError as exc:
            self._log.warning(f"owner-death watchdog did not start: {exc}")
        finally:
            self._armed.set()
            self._done.set()

    async def check(self) -> bool:
        """The owner's liveness check of its watchdog (run on the service's sweep): a
        watchdog that is stopped (``SIGSTOP``, ``SIGTSTP``, a tracer: psutil status
        ``stopped`` / ``tracing-stop``) would watch nothing, so it is killed (it is our own
        child: its pid cannot have been reused) and the loop of :meth:`_run` arms a new one
        at once.  Returns whether it
        replaced one.  Never raises."""
        import trio as _trio

        proc = self._proc
        if proc is None or proc.returncode is not None:
            await _trio.lowlevel.checkpoint()
            return False
        if not await _trio.to_thread.run_sync(_stopped, proc.pid):
            return False
        self._log.warning(f"owner-death watchdog {proc.pid} is stopped; replacing it")
        with contextlib.suppress(OSError):
            proc.kill()
        self.replaced += 1
        return True

    def forget(self) -> None:
        """Unregister without waiting (its task, if any, ended with the service's nursery)."""
        if _slots.get(self._key) is self:
            del _slots[self._key]

    async def aclose(self) -> None:
        """Unregister; stop the watchdog (it kills nothing) and wait for it.  Idempotent."""
        import trio as _trio

        self.forget()
        if self._started:
            self._scope.cancel()
            await self._done.wait()
        else:
            await _trio.lowlevel.checkpoint()


#: lease dir -> the watchdog of the service running on it in this process.
_slots: dict[str, WatchdogHandle] = {}
#: How long an agent start waits for its watchdog to be armed, at most.
ARM_WAIT_SECONDS = 5.0


def _key(lease_dir: str | os.PathLike[str]) -> str:
    """Slot key: the lease dir made absolute (no filesystem access beyond the cwd)."""
    return os.path.normpath(os.path.join(os.getcwd(), os.fspath(lease_dir)))


def register_watchdog(
    nursery: trio.Nursery, lease_dir: str | os.PathLike[str], gateway_instance_id: str,
    grace: float, logger: ServiceLogger | None = None,
) -> WatchdogHandle:
    """The owner-death watchdog of a service on ``lease_dir`` (see :class:`WatchdogHandle`).
    ``ACPX_TRIO_WATCHDOG=0``, or another service of this process already watching the same
    dir: an inert handle.  Its warnings (a watchdog that died or was stopped and is
    replaced) go to ``logger``, the host's."""
    key = _key(lease_dir)
    if os.environ.get(WATCHDOG_ENV) == "0" or key in _slots:
        return WatchdogHandle(None, key, gateway_instance_id, grace, logger)
    handle = WatchdogHandle(nursery, key, gateway_instance_id, grace, logger)
    _slots[key] = handle
    return handle


async def ensure_armed(lease_dir: str | os.PathLike[str]) -> None:
    """Called before an agent is spawned: if a service watches ``lease_dir`` in this process,
    make sure its watchdog runs and is armed (the first call waits for it, a few tens of ms;
    later calls return at once).  No such service: returns at once."""
    import trio as _trio

    handle = _slots.get(_key(lease_dir))
    if handle is None:
        await _trio.lowlevel.checkpoint()
        return
    await handle.ensure()


async def _spawn_and_wait(
    key: str, gateway_instance_id: str, grace: float, handle: WatchdogHandle
) -> int | None:
    """Spawn one watchdog and wait for it; returns its exit code if it exits on its own
    (a cancel of the caller is the normal stop)."""
    import trio as _trio

    from acpx_trio._process.identity import read_start_ticks
    from acpx_trio._process.tools import owner_identity

    owner_pid, owner_start = await owner_identity()
    ticks = read_start_ticks(owner_pid)
    read_fd, write_fd = os.pipe()
    try:
        os.set_inheritable(read_fd, True)
        proc = await _trio.lowlevel.open_process(
            watchdog_argv(read_fd, owner_pid, ticks, owner_start, key, gateway_instance_id,
                          grace),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(read_fd,), start_new_session=True, env=_child_env(), cwd="/",
        )
    except BaseException:
        os.close(write_fd)
        raise
    finally:
        os.close(read_fd)
    try:
        handle.pid = proc.pid
        handle._proc = proc
        handle._armed.set()  # the pipe and the owner's pid are its already: it cannot miss us
        await proc.wait()  # it only exits on its own if something went badly wrong
    finally:
        # a normal stop (our agents are closed): the watchdog exits without killing anything
        with contextlib.suppress(OSError):
            os.write(write_fd, STOP)
        os.close(write_fd)
        with _trio.CancelScope(shield=True) as scope:
            scope.deadline = _trio.current_time() + 2.0
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
    return proc.returncode
