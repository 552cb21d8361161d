"""Background work of the runtime service: the startup probe, the start-up orphan sweep and
the periodic duties (dead-session sweep, watchdog check, second-net orphan sweep).

Each is one pass as a plain coroutine function (no service state); the service runs them in
its background nursery, and :func:`run_duties` decides when the periodic ones run.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from acpx_trio._errors import collapse_group
from acpx_trio._log import ServiceLogger
from acpx_trio._process import held
from acpx_trio._process.gateway_reap import reap_gateway
from acpx_trio._process.reaper import ProcessCleanupDeps
from acpx_trio._process.watchdog import WatchdogHandle, register_watchdog
from acpx_trio._service.backends import AcpRuntimeProtocol
from acpx_trio._service.context import Duty
from acpx_trio._service.doctor_format import (
    format_doctor_failure_message,
    format_error_message,
    format_seconds,
)
from acpx_trio._service.health import ServiceHealth, ServiceHealthState
from acpx_trio._service.prepare import SweepMemo
from acpx_trio._store.lease_snapshot import fingerprint

__all__ = [
    "WatchdogHandle",
    "forget_guards",
    "orphan_sweep_if_changed",
    "orphan_sweep_once",
    "probe_once",
    "report_crash",
    "run_duties",
    "run_probe",
    "start_guards",
    "stop_guards",
    "sweep_once",
]


def _report_parts(report: Any) -> tuple[str, Any]:
    """(message, details) of a DoctorReport-like object or mapping."""
    if isinstance(report, Mapping):
        return str(report.get("message", "")), report.get("details")
    return str(getattr(report, "message", "")), getattr(report, "details", None)


async def probe_once(
    runtime: AcpRuntimeProtocol, limit_seconds: float
) -> tuple[ServiceHealth, str, str]:
    """Probe ``runtime`` within ``limit_seconds``; return (health, log level, log line).

    Never raises except :class:`trio.Cancelled`; a timed-out probe is cancelled (the seed let it
    run on).  Unhealthy after the probe: ``doctor()`` (when the runtime has one) explains why."""
    await trio.lowlevel.checkpoint()
    report: Any = None
    has_doctor = False
    finished = False
    try:
        with trio.move_on_after(limit_seconds):
            await runtime.probe_availability()
            if runtime.is_healthy():
                return ServiceHealth.HEALTHY, "info", "embedded acpx runtime backend ready"
            doctor = getattr(runtime, "doctor", None)
            if callable(doctor):
                has_doctor = True
                report = await doctor()
            finished = True
    except Exception as exc:
        return (
            ServiceHealth.UNHEALTHY,
            "warning",
            f"embedded acpx runtime setup failed: {format_error_message(exc)}",
        )
    # "Did it finish", not "did the deadline fire": uncancellable thread work can complete
    # after the deadline (e.g. under an autojumping test clock), and then it did not time out.
    if not finished:
        return (
            ServiceHealth.UNHEALTHY,
            "warning",
            "embedded acpx runtime setup failed: embedded acpx runtime backend startup "
            f"probe timed out after {format_seconds(limit_seconds)}s",
        )
    if has_doctor and report is not None:
        detail = format_doctor_failure_message(*_report_parts(report))
    else:
        detail = "backend remained unhealthy after probe"
    message = f"embedded acpx runtime backend probe failed: {detail}"
    return ServiceHealth.UNHEALTHY, "warning", message


async def sweep_once(runtime: AcpRuntimeProtocol, log: ServiceLogger, limit_seconds: float) -> None:
    """One ``sweep_dead_sessions()`` pass, bounded by ``limit_seconds``; logs, never raises (except
    :class:`trio.Cancelled`).  ``sweep_dead_sessions`` never builds or starts anything (a
    lazy runtime that was never built answers 0)."""
    await trio.lowlevel.checkpoint()
    swept: int | None = None
    try:
        with trio.move_on_after(limit_seconds):
            swept = await runtime.sweep_dead_sessions()
    except Exception as exc:
        log.warning(f"embedded acpx runtime sweep failed: {format_error_message(exc)}")
        return
    if swept is None:  # did not finish (see probe_once)
        log.warning(
            f"embedded acpx runtime sweep failed: timed out after {format_seconds(limit_seconds)}s"
        )
    elif swept > 0:
        log.info(f"swept {swept} dead embedded acpx session{'' if swept == 1 else 's'}")


async def run_probe(
    runtime: AcpRuntimeProtocol,
    limit_seconds: float,
    health: ServiceHealthState,
    log: ServiceLogger,
) -> None:
    """The startup probe task: one :func:`probe_once`, then publish health and log the line.
    A result arriving after the task was cancelled (the service stopped) is dropped."""
    value, level, message = await probe_once(runtime, limit_seconds)
    await trio.lowlevel.checkpoint_if_cancelled()  # stopped meanwhile: raises Cancelled
    health.set(value)
    (log.info if level == "info" else log.warning)(message)


async def run_duties(
    nursery: trio.Nursery, interval_seconds: float, duties: Sequence[Duty]
) -> None:
    """The service's periodic duties (dead-session sweep, watchdog check, orphan sweep) from
    one task: every ``interval_seconds``, each duty whose previous pass has finished starts a
    pass in ``nursery``.  A pass still running at a tick is not doubled, and delays none of
    the other duties.  Runs until cancelled (a pass running then is cancelled with
    ``nursery``); a pass that raises crashes ``nursery``, as a task of its own would."""
    busy: set[int] = set()

    async def one_pass(index: int, duty: Duty) -> None:
        try:
            await duty()
        finally:
            busy.discard(index)

    while True:
        await trio.sleep(interval_seconds)
        for index, duty in enumerate(duties):
            if index not in busy:
                busy.add(index)
                nursery.start_soon(one_pass, index, duty)


def report_crash(group: BaseExceptionGroup[Exception], log: ServiceLogger) -> BaseException:
    """Log a crash of the service's task tree (with its traceback); return the error."""
    error = collapse_group(group)
    text = "".join(traceback.format_exception(group)).rstrip()
    log.error(
        f"embedded acpx runtime service crashed ({type(error).__name__}: {error}); its "
        f"backend is unregistered and its agent processes are stopped:\n{text}"
    )
    return error


async def orphan_sweep_once(
    gateway_instance_id: str,
    lease_store: Any,
    log: ServiceLogger,
    *,
    grace: float,
    deps: ProcessCleanupDeps | None,
    lease_fp: object = None,
    memo: SweepMemo | None = None,
    open_leases: bool = True,
) -> None:
    """The start-up sweep (:func:`~acpx_trio._process.gateway_reap.reap_gateway`): every
    live process tagged with this gateway whose lease is unknown or final (its lease file
    was deleted or reset), and any open lease whose owner died meanwhile.  Logs, never
    raises (except :class:`trio.Cancelled`).  ``memo`` records a clean finish against
    ``lease_fp`` (the lease file's fingerprint read before this sweep's scan), so the next
    start of this service skips the sweep only while that proof holds (see
    :class:`~acpx_trio._service.prepare.SweepMemo`)."""
    await trio.lowlevel.checkpoint()
    try:
        report = await reap_gateway(gateway_instance_id, lease_store, grace=grace, deps=deps,
                                    lease_dir=str(lease_store.path.parent),
                                    open_leases=open_leases)
    except Exception as exc:
        log.warning(f"orphan sweep failed: {format_error_message(exc)}")
        return
    if memo is not None:
        memo.record(lease_fp, report.ok)
    reaped = len(report.terminated_pids)
    if reaped:
        suffix = "" if reaped == 1 else "es"
        log.info(f"reaped {reaped} orphaned OpenClaw-owned ACPX process{suffix}")


def start_guards(
    nursery: trio.Nursery, background: trio.Nursery, prepared: Any, log: ServiceLogger,
    deps: ProcessCleanupDeps | None,
) -> tuple[WatchdogHandle, list[Duty], Duty]:
    """Issue #11's start-up hooks: the tag sweep for orphans whose lease is unknown or final,
    in ``background`` (only when the start-up reap did not run, the gateway id is not new,
    and the sweep memo cannot prove there is nothing to find: see
    :class:`~acpx_trio._service.prepare.SweepMemo`), and the owner-death watchdog,
    registered in the service ``nursery`` (so it outlives the runtime's close; its process
    is spawned before the service's first agent).  Returns the watchdog, two periodic
    duties for :func:`run_duties` (the watchdog check and the second-net orphan sweep), and
    the stop's last sweep (:func:`sweep_left_behind`)."""
    store, gw = prepared.lease_store, prepared.gateway_instance_id
    grace = prepared.config.kill_grace_seconds
    memo: SweepMemo | None = prepared.sweep_memo
    due = memo is None or memo.due(prepared.lease_fp)
    if prepared.new_gateway_id and memo is not None:  # a new id: no process can carry it yet
        memo.record(_ABSENT if prepared.lease_fp is None else prepared.lease_fp, True)
    if not prepared.needs_reap and not prepared.new_gateway_id and due:
        background.start_soon(functools.partial(
            orphan_sweep_once, gw, store, log, grace=grace, deps=deps,
            lease_fp=prepared.lease_fp, memo=memo,
        ))
    watchdog = register_watchdog(nursery, store.path.parent, gw, grace, log)
    second_net = functools.partial(
        orphan_sweep_if_changed, gw, store, log, grace=grace, deps=deps,
        memo=memo or SweepMemo())
    last = functools.partial(sweep_left_behind, gw, store, log, grace=grace, deps=deps)
    return watchdog, [watchdog.check, second_net], last


async def sweep_left_behind(
    gateway_instance_id: str, lease_store: Any, log: ServiceLogger,
    *, grace: float, deps: ProcessCleanupDeps | None,
) -> None:
    """The service's stop, once its runtime closed: the leases a close of this process left
    behind (:func:`~acpx_trio._process.held.left_behind`: it could not prove the tree gone)
    are taken up now, not at the next start, which may never come.  No lease left behind:
    nothing is read.  Logs, never raises (except :class:`trio.Cancelled`)."""
    if not held.left_behind(gateway_instance_id):
        await trio.lowlevel.checkpoint()
        return
    await orphan_sweep_once(gateway_instance_id, lease_store, log, grace=grace, deps=deps,
                            open_leases=False)


#: The fingerprint of a lease file that does not exist (no lease was ever written there).
_ABSENT = ("absent",)


async def orphan_sweep_if_changed(
    gateway_instance_id: str, lease_store: Any, log: ServiceLogger,
    *, grace: float, deps: ProcessCleanupDeps | None, memo: SweepMemo,
) -> None:
    """The second net, a periodic duty: :func:`orphan_sweep_once` when the lease file changed
    since the last clean sweep (:class:`SweepMemo`'s proof: otherwise nothing new can carry
    this gateway's tags).  It finds what a close could not see: a process that moved itself
    out of its leaf cgroup (it keeps its tags; its lease is final), or a tagged survivor
    whose lease is final, or a close of ours that left a lease behind.  Live owners'
    processes and leaves are never touched."""
    now = await trio.to_thread.run_sync(fingerprint, lease_store.path,
                                        abandon_on_cancel=True)  # a stat: read-only
    fp: object = _ABSENT if now is None else now
    # a lease left behind since the last clean sweep may have been held (protected) by it
    if memo.due(fp) or held.left_behind(gateway_instance_id):
        await orphan_sweep_once(gateway_instance_id, lease_store, log, grace=grace,
                                deps=deps, lease_fp=fp, memo=memo, open_leases=False)


async def stop_guards(watchdog: WatchdogHandle | None) -> None:
    """Stop the watchdog after the runtime closed its agents (it kills nothing), shielded."""
    if watchdog is None:
        await trio.lowlevel.checkpoint()
        return
    with trio.CancelScope(shield=True):
        await watchdog.aclose()


def forget_guards(watchdog: WatchdogHandle | None) -> None:
    """Unregister the watchdog when its nursery already ended (crash, host cancellation)."""
    if watchdog is not None:
        watchdog.forget()
