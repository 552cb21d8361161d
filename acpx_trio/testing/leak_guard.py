"""A leak guard scoped to one gateway instance id, for test suites.

:func:`check_gateway_leaks` looks for live processes tagged with a gateway instance id (the
``OPENCLAW_GATEWAY_INSTANCE_ID`` environment tag or the ``--openclaw-gateway-instance-id``
command-line tag), gives processes that are already exiting a short, bounded moment to go, and
kills what is left **with the reaper's proofs** (:func:`acpx_trio.reap_stale_orphans`: both tags,
our uid, identity re-checked before every signal).  Processes of any other gateway id are never
looked at twice, reported or signalled.

Synchronous on purpose: it runs from a sync fixture, or from a worker thread of an async one
(``trio.to_thread.run_sync``), and uses its own short ``trio.run`` with the real clock for the
kill, so a test running under ``trio.testing.MockClock`` cannot make its grace period jump.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import msgspec
import trio

from acpx_trio._errors import AcpxUsageError
from acpx_trio._process.identity import ProcessInfo, same_process, snapshot_processes
from acpx_trio._process.reap_entry import reap_stale_orphans

__all__ = [
    "DEFAULT_KILL_GRACE",
    "DEFAULT_SETTLE",
    "LeakReport",
    "LeakedProcess",
    "check_gateway_leaks",
    "live_processes_of_gateway",
    "wait_gone",
]

#: Seconds a found process gets to finish exiting on its own before it counts as leaked.
DEFAULT_SETTLE = 0.5
#: Seconds between SIGTERM and SIGKILL when the guard kills leaked processes.
DEFAULT_KILL_GRACE = 0.2


class LeakedProcess(msgspec.Struct, frozen=True, kw_only=True):
    """One leaked process: ``killed`` is ``True`` once it is confirmed gone; otherwise
    ``reason`` says why the guard left it alone (e.g. ``"not-owned"``: it carries the gateway
    tag but no lease tag, so it is not provably ours) or that it survived SIGKILL."""

    pid: int
    cmdline: str
    killed: bool = False
    reason: str | None = None


class LeakReport(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`check_gateway_leaks` found for ``gateway_instance_id``."""

    gateway_instance_id: str
    leaked: list[LeakedProcess] = []

    def __bool__(self) -> bool:
        return bool(self.leaked)

    def describe(self) -> str:
        """A message naming every leaked pid and its command line, for ``pytest.fail``."""
        lines = [
            f"{len(self.leaked)} process(es) of gateway {self.gateway_instance_id} outlived "
            "the test:"
        ]
        for p in self.leaked:
            fate = "killed" if p.killed else f"NOT killed ({p.reason or 'unknown'})"
            lines.append(f"  pid {p.pid} [{fate}]: {p.cmdline}")
        return "\n".join(lines)


def _cmdline(p: ProcessInfo, limit: int = 200) -> str:
    text = " ".join(p.cmdline) or "?"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def live_processes_of_gateway(gateway_instance_id: str) -> list[ProcessInfo]:
    """Live (non-zombie) processes tagged with ``gateway_instance_id``, ours excluded."""
    me = os.getpid()
    return [
        p
        for p in snapshot_processes()
        if p.gateway_instance_id == gateway_instance_id and not p.zombie and p.pid != me
    ]


def wait_gone(procs: Sequence[ProcessInfo], timeout: float) -> list[ProcessInfo]:
    """Wait up to ``timeout`` seconds for ``procs`` to exit; return those still running.

    A zombie or a pid now held by another process counts as gone.  Re-checks the condition
    with a short back-off (1 ms doubling to 50 ms), so it returns as soon as they are gone."""
    deadline = time.monotonic() + max(timeout, 0.0)
    pause = 0.001
    pending = list(procs)
    while True:
        by_pid = {p.pid: p for p in snapshot_processes(p.pid for p in pending)}
        pending = [
            p
            for p in pending
            if (q := by_pid.get(p.pid)) is not None and not q.zombie and same_process(p, q)
        ]
        left = deadline - time.monotonic()
        if not pending or left <= 0:
            return pending
        time.sleep(min(pause, left))  # a bounded re-check of the real condition
        pause = min(pause * 2, 0.05)


_T = TypeVar("_T")


def _in_fresh_thread(fn: Callable[[], _T]) -> _T:
    """Run ``fn`` in a new thread and return its result (so ``trio.run`` inside it works even
    when the caller's thread runs Trio)."""
    out: list[_T] = []
    err: list[BaseException] = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            err.append(exc)

    thread = threading.Thread(target=target, name="acpx-leak-guard", daemon=True)
    thread.start()
    thread.join()
    if err:
        raise err[0]
    return out[0]


def check_gateway_leaks(
    gateway_instance_id: str,
    *,
    settle: float = DEFAULT_SETTLE,
    kill: bool = True,
    kill_grace: float = DEFAULT_KILL_GRACE,
) -> LeakReport:
    """Find processes of ``gateway_instance_id`` still alive; with ``kill``, end them.

    Costs one process-table scan when nothing leaked.  Otherwise the found processes get up to
    ``settle`` seconds to exit (a process already being killed is not a leak); the rest are
    reported, and killed through :func:`acpx_trio.reap_stale_orphans` (fail closed: a process
    it cannot prove is ours stays alive and is reported with the reason).  Never touches a
    process of another gateway id.  Blocking: from Trio, call it through
    ``trio.to_thread.run_sync``.  Raises :class:`~acpx_trio.AcpxUsageError` (a
    ``ValueError``) for a gateway id that is not a non-empty string."""
    if not isinstance(gateway_instance_id, str) or not gateway_instance_id.strip():
        raise AcpxUsageError("gateway_instance_id", gateway_instance_id,
                             "must be a non-empty string")
    found = live_processes_of_gateway(gateway_instance_id)
    if not found:
        return LeakReport(gateway_instance_id=gateway_instance_id)
    leaked = wait_gone(found, settle)
    if not leaked:
        return LeakReport(gateway_instance_id=gateway_instance_id)
    reasons: dict[int, str] = {}
    if kill:
        result = _in_fresh_thread(
            lambda: trio.run(
                lambda: reap_stale_orphans(
                    gateway_instance_id=gateway_instance_id, grace=kill_grace
                )
            )
        )
        reasons = {pid: "survived SIGKILL" for pid in result.survived_pids}
        reasons.update({pid: str(why) for pid, why in result.skipped.items()})
    alive = {p.pid for p in wait_gone(leaked, 0.0)} if kill else {p.pid for p in leaked}
    return LeakReport(
        gateway_instance_id=gateway_instance_id,
        leaked=[
            LeakedProcess(
                pid=p.pid,
                cmdline=_cmdline(p),
                killed=p.pid not in alive,
                reason=None if p.pid not in alive else reasons.get(p.pid, "not killed"),
            )
            for p in leaked
        ],
    )
