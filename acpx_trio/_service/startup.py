"""The blocking and reaping part of the service's start: config, private dirs, gateway id,
lease store, and the start-up reap of what a previous life of this gateway left behind."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from acpx_trio._errors import GatewayInstanceIdError, LeaseStoreError
from acpx_trio._log import ServiceLogger, as_logger
from acpx_trio._process.cgroup import Containment, resolve_containment
from acpx_trio._process.gateway_reap import GatewayReapReport, reap_gateway
from acpx_trio._process.reap_entry import ReapResult
from acpx_trio._process.reap_report import ReapFigures
from acpx_trio._process.reaper import ProcessCleanupDeps
from acpx_trio._service.context import WRAPPER_DIR_NAME, ServiceContext
from acpx_trio._store.config import AcpxConfig, resolve_config
from acpx_trio._store.dirs import ensure_lease_dirs, is_default_session_dir
from acpx_trio._store.fsio import ensure_private_dir
from acpx_trio._store.instance import GATEWAY_ID_FILE_NAME, resolve_gateway_instance_id_sync
from acpx_trio._store.leases import LeaseStore
from acpx_trio._store.sessions import store_error
from acpx_trio._store.userpaths import state_dir_path

__all__ = [
    "Prepared",
    "prepare_sync",
    "probe_agent",
    "reap_leases_and_orphans",
    "reap_result",
    "report_lease_file",
    "report_reap",
]


def _normalize_agent(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    return value.strip().lower() or None


def probe_agent(config: AcpxConfig, allowed_agents: Sequence[str]) -> str | None:
    """The configured probe agent, else the first non-blank allowed agent, else ``None``."""
    explicit = _normalize_agent(config.probe_agent)
    if explicit:
        return explicit
    return next((a for a in map(_normalize_agent, allowed_agents) if a), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepared:
    """What :func:`prepare_sync` found.  ``needs_reap``: open leases of this gateway, or a
    damaged lease file (tagged processes may have lost their lease).  ``new_gateway_id``:
    this start minted the gateway id, so no process anywhere can carry it yet (the start-up
    orphan sweep has nothing to look for)."""

    config: AcpxConfig
    lease_store: LeaseStore
    gateway_instance_id: str
    needs_reap: bool
    new_gateway_id: bool = False
    #: The lease file's fingerprint read by this start (before any sweep it starts), and
    #: the proof that decides whether the start-up orphan sweep is needed (see
    #: :class:`~acpx_trio._service.prepare.SweepMemo`; ``None``: always sweep).
    lease_fp: object = None
    sweep_memo: Any = None
    #: The mechanism that contains this service's agents (from config ``containment``).
    containment: Containment | None = None


def prepare_sync(plugin_config: Mapping[str, Any] | None, ctx: ServiceContext) -> Prepared:
    """Blocking part of start, in one worker-thread hop: config, directories, gateway id,
    lease store, and whether this gateway has open leases to reap at all."""
    state_dir = state_dir_path(ctx.state_dir)  # empty: AcpxUsageError, before anything
    logger = as_logger(ctx.logger)
    config = resolve_config(plugin_config, Path(ctx.workspace_dir), host_state_dir=state_dir)
    config = msgspec.structs.replace(config, probe_agent=probe_agent(config, ctx.allowed_agents))
    containment = resolve_containment(config.containment)  # "cgroup" unusable: start fails
    wrapper_root = state_dir / WRAPPER_DIR_NAME
    session_dir = Path(config.state_dir)
    default_sessions = is_default_session_dir(state_dir, session_dir)
    try:  # the lease dir first, each level checked (never a link) before one below it
        ensure_lease_dirs(state_dir, sessions=False)
    except OSError as exc:
        raise LeaseStoreError(
            f"cannot create the lease dir {wrapper_root} ({exc.strerror or exc}); check that "
            "the host state dir is a directory this user can write"
        ) from exc
    try:  # its ancestors are checked first (a session dir configured elsewhere too)
        ensure_private_dir(session_dir, strict_link=default_sessions)
    except OSError as exc:
        raise store_error(session_dir, "create the state dir", exc) from exc
    id_existed = os.path.lexists(state_dir / GATEWAY_ID_FILE_NAME)
    try:
        gateway_instance_id = resolve_gateway_instance_id_sync(state_dir, logger=logger)
    except OSError as exc:
        raise GatewayInstanceIdError(
            f"cannot read or create the gateway instance id in {state_dir} "
            f"({exc.strerror or exc}); check the host state dir's permissions"
        ) from exc
    lease_store = LeaseStore(wrapper_root, logger=logger)  # its warnings reach the host
    needs_reap = (
        bool(lease_store.sync.list_open(gateway_instance_id))
        or bool(lease_store.sync.quarantined)
        or lease_store.sync.skipped_entries > 0
    )
    return Prepared(
        config=config, lease_store=lease_store, gateway_instance_id=gateway_instance_id,
        needs_reap=needs_reap, new_gateway_id=not id_existed, containment=containment,
    )


def reap_result(report: GatewayReapReport) -> ReapResult:
    """The figures of a :func:`~acpx_trio._process.gateway_reap.reap_gateway` report as the
    service's :class:`~acpx_trio._process.reaper.ReapResult`."""
    return ReapResult(**{f: getattr(report, f) for f in ReapFigures.__struct_fields__})


async def reap_leases_and_orphans(
    gateway_instance_id: str,
    lease_store: LeaseStore,
    *,
    grace: float,
    deps: ProcessCleanupDeps | None,
) -> ReapResult:
    """Start-up reap (:func:`~acpx_trio._process.gateway_reap.reap_gateway`): every open
    lease of this gateway whose owner is gone, and every live process tagged with this
    gateway id whose lease is unknown or final (its lease was lost to a damaged file, or
    cleanup gave up on it), from one snapshot.  Leases open at each scan (live owners,
    survivors to retry, sessions another service of this process starts meanwhile) protect
    their processes."""
    report = await reap_gateway(gateway_instance_id, lease_store, grace=grace, deps=deps,
                                lease_dir=str(lease_store.path.parent))
    return reap_result(report)


def report_lease_file(lease_store: LeaseStore, logger: ServiceLogger) -> None:
    """Warn about a quarantined lease file or skipped invalid entries."""
    for moved in lease_store.sync.quarantined:
        logger.warning(
            f"lease file {lease_store.path} was unreadable; moved it aside to {moved} "
            "(nothing was deleted) and reaping by process tags instead"
        )
    skipped = lease_store.sync.skipped_entries
    if skipped:
        logger.warning(
            f"lease file {lease_store.path}: skipped {skipped} "
            "invalid entr" + ("y" if skipped == 1 else "ies")
        )


def report_reap(reap: ReapResult, config: AcpxConfig, logger: ServiceLogger) -> None:
    """Log what the start-up reap killed, and legacy config that is ignored."""
    reaped = len(reap.terminated_pids)
    if reaped > 0:
        suffix = "" if reaped == 1 else "es"
        logger.info(f"reaped {reaped} stale OpenClaw-owned ACPX process{suffix}")
    if config.ignored_legacy_fields:
        logger.warning(
            "embedded acpx runtime ignores legacy compatibility config: "
            + ", ".join(config.ignored_legacy_fields)
        )
