"""Background work of the runtime service: the startup probe and the dead-session sweep.

Each is one pass as a plain coroutine function (no service state), so the service only
decides when they run and under which cancel scope.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import trio

from acpx_trio._process.reaper import ProcessCleanupDeps, sweep_orphans
from acpx_trio._service.backends import AcpRuntime
from acpx_trio._service.doctor_format import (
    format_doctor_failure_message,
    format_error_message,
    format_seconds,
)
from acpx_trio._service.health import ServiceHealth
from acpx_trio._service.lazy_runtime import LazyAcpxRuntime, ServiceLogger

__all__ = ["Background", "orphan_sweep_due", "orphan_sweep_once", "probe_once", "sweep_once"]


class Background:
    """A task in the host nursery that the service can cancel and wait for."""

    __slots__ = ("done", "scope")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.done = trio.Event()


def _report_parts(report: Any) -> tuple[str, Any]:
    """(message, details) of a DoctorReport-like object or mapping."""
    if isinstance(report, Mapping):
        return str(report.get("message", "")), report.get("details")
    return str(getattr(report, "message", "")), getattr(report, "details", None)


async def probe_once(runtime: AcpRuntime, limit_seconds: float) -> tuple[ServiceHealth, str, str]:
    """Probe ``runtime`` within ``limit_seconds``; return (health, log level, log line).

    Never raises except :class:`trio.Cancelled`; a timed-out probe is cancelled (the seed let it
    run on).  Unhealthy after the probe: ``doctor()`` (when the runtime has one) explains why."""
    report: Any = None
    has_doctor = False
    try:
        with trio.move_on_after(limit_seconds) as deadline:
            await runtime.probe_availability()
            if runtime.is_healthy():
                return ServiceHealth.HEALTHY, "info", "embedded acpx runtime backend ready"
            doctor = getattr(runtime, "doctor", None)
            if callable(doctor):
                has_doctor = True
                report = await doctor()
    except Exception as exc:
        return (
            ServiceHealth.UNHEALTHY,
            "warning",
            f"embedded acpx runtime setup failed: {format_error_message(exc)}",
        )
    if deadline.cancelled_caught:
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


async def sweep_once(runtime: AcpRuntime, log: ServiceLogger, limit_seconds: float) -> None:
    """One ``sweep_dead_sessions()`` pass, bounded by ``limit_seconds``; logs, never raises (except
    :class:`trio.Cancelled`).  A lazy runtime that was never built is not built for it."""
    sweep = getattr(runtime, "sweep_dead_sessions", None)
    if sweep is None or (isinstance(runtime, LazyAcpxRuntime) and runtime.built is None):
        await trio.lowlevel.checkpoint()
        return
    try:
        with trio.move_on_after(limit_seconds) as deadline:
            swept = int(await sweep())
    except Exception as exc:
        log.warning(f"embedded acpx runtime sweep failed: {format_error_message(exc)}")
        return
    if deadline.cancelled_caught:
        log.warning(
            f"embedded acpx runtime sweep failed: timed out after {format_seconds(limit_seconds)}s"
        )
    elif swept > 0:
        log.info(f"swept {swept} dead embedded acpx session{'' if swept == 1 else 's'}")


#: Seconds between two start-up orphan sweeps of one lease dir + gateway in one process.
ORPHAN_SWEEP_EVERY = 30.0
_last_sweep: dict[tuple[str, str], float] = {}


def orphan_sweep_due(lease_store: Any, gateway_instance_id: str) -> bool:
    """Whether a start-up orphan sweep of this lease dir + gateway should start now (none
    started in this process in the last :data:`ORPHAN_SWEEP_EVERY` seconds); if so, records
    that one starts."""
    key = (str(getattr(lease_store, "path", "")), gateway_instance_id)
    now = time.monotonic()
    last = _last_sweep.get(key)
    if last is not None and now - last < ORPHAN_SWEEP_EVERY:
        return False
    _last_sweep[key] = now
    return True


async def orphan_sweep_once(
    gateway_instance_id: str,
    lease_store: Any,
    log: ServiceLogger,
    *,
    grace: float,
    deps: ProcessCleanupDeps | None,
) -> None:
    """The start-up tag sweep (:func:`~acpx_trio._process.reaper.sweep_orphans`): every
    live process tagged with this gateway whose lease is unknown or final (its lease file
    was deleted or reset).  Logs, never raises (except :class:`trio.Cancelled`).

    At most one sweep per lease dir and gateway starts in :data:`ORPHAN_SWEEP_EVERY` seconds
    within one process (:func:`orphan_sweep_due`, checked by the caller): a start/stop loop
    in one process scans once, not at every start."""
    try:
        result = await sweep_orphans(gateway_instance_id, lease_store, grace=grace, deps=deps)
    except Exception as exc:
        log.warning(f"start-up orphan sweep failed: {format_error_message(exc)}")
        return
    reaped = len(result.terminated_pids)
    if reaped:
        suffix = "" if reaped == 1 else "es"
        log.info(f"reaped {reaped} orphaned OpenClaw-owned ACPX process{suffix}")
