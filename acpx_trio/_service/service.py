"""The embedded acpx runtime service: start-up reaping, backend registration, probe, sweep, stop.

A Trio port of OpenClaw's ``createAcpxRuntimeService`` (``extensions/acpx/src/service.ts``).
Background work (the startup probe and the periodic dead-session sweep) runs in the host's root
nursery, each task under a :class:`trio.CancelScope` the service holds, so :meth:`stop` ends it
for certain (this replaces the seed's lifecycle revision counter).
"""

from __future__ import annotations

import enum
import inspect
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import trio

from acpx_trio._errors import AcpxError
from acpx_trio._process.reaper import (
    ProcessCleanupDeps,
    ReapResult,
    reap_open_leases,
    reap_stale_orphans,
)
from acpx_trio._process.watchdog import WatchdogHandle, register_watchdog
from acpx_trio._service.backends import (
    AcpRuntime,
    AcpRuntimeBackend,
    BackendRegistry,
    default_registry,
)
from acpx_trio._service.doctor_format import format_seconds
from acpx_trio._service.health import ServiceHealth, ServiceHealthState
from acpx_trio._service.lazy_runtime import LazyAcpxRuntime, RuntimeFactoryParams, ServiceLogger
from acpx_trio._service.tasks import (
    Background,
    orphan_sweep_due,
    orphan_sweep_once,
    probe_once,
    sweep_once,
)
from acpx_trio._store.config import AcpxConfig, resolve_config
from acpx_trio._store.fsio import ensure_private_dir
from acpx_trio._store.instance import resolve_gateway_instance_id_sync
from acpx_trio._store.leases import LeaseStore

__all__ = [
    "BACKEND_ID",
    "SERVICE_ID",
    "AcpxRuntimeService",
    "RuntimeFactory",
    "ServiceAlreadyStartedError",
    "ServiceContext",
    "ServiceStoppedError",
    "open_runtime_service",
]

SERVICE_ID = "acpx-runtime"
BACKEND_ID = "acpx"
SKIP_RUNTIME_ENV = "OPENCLAW_SKIP_ACPX_RUNTIME"
STARTUP_PROBE_ENV = "OPENCLAW_ACPX_RUNTIME_STARTUP_PROBE"
SKIP_PROBE_ENV = "OPENCLAW_SKIP_ACPX_RUNTIME_PROBE"
WRAPPER_DIR_NAME = "acpx"

#: Builds the service's runtime; may return the runtime or an awaitable of it.
RuntimeFactory = Callable[[RuntimeFactoryParams], AcpRuntime | Awaitable[AcpRuntime]]

_default_logger = logging.getLogger("acpx_trio.service")


class ServiceStoppedError(AcpxError):
    """:meth:`AcpxRuntimeService.stop` ran while :meth:`~AcpxRuntimeService.start` was still
    starting; that start was aborted and left nothing registered or running."""

    code = "ACPX_SERVICE_STOPPED"


class ServiceAlreadyStartedError(AcpxError):
    """:meth:`AcpxRuntimeService.start` was called while the service is started or starting."""

    code = "ACPX_SERVICE_ALREADY_STARTED"


@dataclass(frozen=True, slots=True)
class ServiceContext:
    """What the host gives the service.

    ``nursery`` is the host's root nursery: the probe and sweep tasks (and the default runtime's
    long-lived tasks) run there.  ``allowed_agents`` is the host's ACP allow-list; its first
    non-blank entry is the probe agent when the config names none."""

    workspace_dir: str | os.PathLike[str]
    state_dir: str | os.PathLike[str]
    logger: ServiceLogger
    nursery: trio.Nursery
    allowed_agents: Sequence[str] = ()


class _Phase(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    STARTED = "started"
    STOPPING = "stopping"


@dataclass(slots=True)
class _Running:
    ctx: ServiceContext
    config: AcpxConfig
    runtime: AcpRuntime
    background: list[Background] = field(default_factory=list)
    #: The owner-death watchdog: stopped only after the runtime closed its agents.
    watchdog: WatchdogHandle | None = None


def _normalize_agent(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    return value.strip().lower() or None


def _probe_agent(config: AcpxConfig, allowed_agents: Sequence[str]) -> str | None:
    explicit = _normalize_agent(config.probe_agent)
    if explicit:
        return explicit
    return next((a for a in map(_normalize_agent, allowed_agents) if a), None)


def _startup_probe_enabled() -> bool:
    return os.environ.get(STARTUP_PROBE_ENV) == "1"


async def _reap_open_leases(
    gateway_instance_id: str,
    lease_store: LeaseStore,
    *,
    grace: float,
    deps: ProcessCleanupDeps | None,
) -> ReapResult:
    """Start-up reap: every open lease of this gateway whose owner is gone, then every live
    process tagged with this gateway id whose lease is unknown or final (its lease was lost to
    a damaged file, or cleanup gave up on it).  Leases still open afterwards (live owners,
    survivors to retry) protect their processes.  Tests replace this function."""
    leases = await reap_open_leases(gateway_instance_id, lease_store, grace=grace, deps=deps)
    still_open = await lease_store.list_open(gateway_instance_id)
    orphans = await reap_stale_orphans(
        gateway_instance_id=gateway_instance_id,
        protected_lease_ids=[x.lease_id for x in still_open],
        grace=grace,
        deps=deps,
    )
    if not orphans.inspected_pids:
        return leases
    return msgspec.structs.replace(
        leases,
        inspected_pids=[*leases.inspected_pids, *orphans.inspected_pids],
        terminated_pids=[*leases.terminated_pids, *orphans.terminated_pids],
        survived_pids=[*leases.survived_pids, *orphans.survived_pids],
    )


class AcpxRuntimeService:
    """The embedded acpx runtime backend as a start/stop service.

    ``start(ctx)`` reaps agent processes a previous life of this gateway left behind, registers
    backend ``"acpx"`` in ``registry`` (default: :data:`default_registry`), and starts the
    background tasks.  ``stop(ctx)`` undoes all of it.

    Env switches (read at each start): ``OPENCLAW_SKIP_ACPX_RUNTIME=1`` makes ``start`` a
    logged no-op; ``OPENCLAW_ACPX_RUNTIME_STARTUP_PROBE=1`` runs the startup probe and registers
    a ``healthy`` callback; ``OPENCLAW_SKIP_ACPX_RUNTIME_PROBE=1`` suppresses the probe again.

    Without ``runtime_factory`` the runtime is a :class:`LazyAcpxRuntime`: the real
    ``AcpxRuntime`` is imported and built on the first call that needs it, once."""

    id = SERVICE_ID
    #: Upper bound of the shielded clean-up in :meth:`stop` (waiting for background tasks and
    #: ``runtime.aclose()``).  Leases of anything still alive then are reaped at the next start.
    stop_timeout_seconds: float = 30.0

    def __init__(
        self,
        plugin_config: Mapping[str, Any] | None = None,
        *,
        runtime_factory: RuntimeFactory | None = None,
        process_cleanup: ProcessCleanupDeps | None = None,
        registry: BackendRegistry | None = None,
    ) -> None:
        self._plugin_config = plugin_config
        self._runtime_factory = runtime_factory
        self._process_cleanup = process_cleanup
        self._registry = registry if registry is not None else default_registry
        self._lock = trio.Lock()
        self._phase = _Phase.STOPPED
        self._running: _Running | None = None
        self._health = ServiceHealthState()
        self._gateway_instance_id: str | None = None
        self._startup_reap: ReapResult | None = None
        self._start_scope: trio.CancelScope | None = None

    # -- observation -------------------------------------------------------------------------
    @property
    def runtime(self) -> AcpRuntime | None:
        """The registered runtime while started; ``None`` when stopped."""
        return self._running.runtime if self._running is not None else None

    @property
    def config(self) -> AcpxConfig | None:
        """The resolved config (probe agent filled in) while started."""
        return self._running.config if self._running is not None else None

    @property
    def gateway_instance_id(self) -> str | None:
        """This installation's gateway instance id (known after the first start)."""
        return self._gateway_instance_id

    @property
    def startup_reap(self) -> ReapResult | None:
        """What the last start's lease reaping did (``None`` before the first start)."""
        return self._startup_reap

    @property
    def health(self) -> ServiceHealthState:
        """Lifecycle and probe state; ``await service.health.wait_value(ServiceHealth.HEALTHY)``.

        The registered ``healthy`` callback reads ``runtime.is_healthy()`` live instead."""
        return self._health

    @property
    def registry(self) -> BackendRegistry:
        return self._registry

    def _is_current(self, runtime: AcpRuntime) -> bool:
        return self._running is not None and self._running.runtime is runtime

    # -- start -------------------------------------------------------------------------------
    async def start(self, ctx: ServiceContext) -> None:
        """Reap, build the runtime, register backend ``"acpx"``, start probe and sweep tasks.

        Returns once the backend is registered; the probe runs in the background.

        Raises:
            ConfigError: the plugin config is invalid (nothing is registered).
            ServiceAlreadyStartedError: the service is started or starting.
            Anything the gateway id, lease store, reaper or runtime factory raise; the service
            is then stopped again (a runtime already built is closed, nothing stays
            registered).  The same holds if ``start`` is cancelled."""
        if os.environ.get(SKIP_RUNTIME_ENV) == "1":
            ctx.logger.info("skipping embedded acpx runtime backend (OPENCLAW_SKIP_ACPX_RUNTIME=1)")
            await trio.lowlevel.checkpoint()
            return
        self._check_not_started()
        async with self._lock:
            self._check_not_started()
            self._phase = _Phase.STARTING
            self._health.set(ServiceHealth.STARTING)
            running: _Running | None = None
            try:
                with trio.CancelScope() as self._start_scope:
                    running = await self._start_locked(ctx)
                if running is None:
                    raise ServiceStoppedError(
                        "acpx runtime service was stopped while it was starting"
                    )
            except BaseException:
                self._phase = _Phase.STOPPED
                self._health.set(ServiceHealth.STOPPED)
                raise
            finally:
                self._start_scope = None
            self._running = running
            self._phase = _Phase.STARTED

    def _check_not_started(self) -> None:
        if self._phase in (_Phase.STARTING, _Phase.STARTED):
            raise ServiceAlreadyStartedError(
                f"acpx runtime service is already {self._phase.value}; stop it before starting "
                "it again",
            )

    def _prepare_sync(self, ctx: ServiceContext) -> tuple[AcpxConfig, LeaseStore, str, bool]:
        """Blocking part of start, in one worker-thread hop: config, directories, gateway id,
        lease store, and whether this gateway has open leases to reap at all."""
        state_dir = Path(ctx.state_dir)
        config = resolve_config(
            self._plugin_config, Path(ctx.workspace_dir), host_state_dir=state_dir
        )
        config = msgspec.structs.replace(
            config, probe_agent=_probe_agent(config, ctx.allowed_agents)
        )
        wrapper_root = state_dir / WRAPPER_DIR_NAME
        ensure_private_dir(Path(config.state_dir))
        ensure_private_dir(wrapper_root)
        gateway_instance_id = resolve_gateway_instance_id_sync(state_dir)
        lease_store = LeaseStore(wrapper_root)
        # Reap when a previous life left open leases, or when the lease file was damaged
        # (quarantined or with unreadable entries): tagged processes may have lost their lease.
        needs_reap = (
            bool(lease_store.sync.list_open(gateway_instance_id))
            or bool(lease_store.sync.quarantined)
            or lease_store.sync.skipped_entries > 0
        )
        return config, lease_store, gateway_instance_id, needs_reap

    async def _start_locked(self, ctx: ServiceContext) -> _Running:
        logger = ctx.logger
        config, lease_store, gateway_instance_id, has_open = await trio.to_thread.run_sync(
            self._prepare_sync, ctx
        )
        self._gateway_instance_id = gateway_instance_id
        wrapper_root = lease_store.path.parent
        for moved in lease_store.sync.quarantined:
            logger.warning(
                f"lease file {lease_store.path} was unreadable; moved it aside to {moved} "
                "(nothing was deleted) and reaping by process tags instead"
            )
        if lease_store.sync.skipped_entries:
            logger.warning(
                f"lease file {lease_store.path}: skipped {lease_store.sync.skipped_entries} "
                "invalid entr" + ("y" if lease_store.sync.skipped_entries == 1 else "ies")
            )
        # No open lease of this gateway: nothing to reap, so skip the reaper's round trip.  (A
        # lease added meanwhile has a live owner, which the reaper would leave alone anyway.)
        reap = (
            await _reap_open_leases(
                gateway_instance_id,
                lease_store,
                grace=config.kill_grace_seconds,
                deps=self._process_cleanup,
            )
            if has_open
            else ReapResult()
        )
        self._startup_reap = reap
        reaped = len(reap.terminated_pids)
        if reaped > 0:
            suffix = "" if reaped == 1 else "es"
            logger.info(f"reaped {reaped} stale OpenClaw-owned ACPX process{suffix}")
        if config.ignored_legacy_fields:
            logger.warning(
                "embedded acpx runtime ignores legacy compatibility config: "
                + ", ".join(config.ignored_legacy_fields)
            )
        params = RuntimeFactoryParams(
            config=config,
            gateway_instance_id=gateway_instance_id,
            lease_store=lease_store,
            wrapper_root=wrapper_root,
            logger=logger,
            nursery=ctx.nursery,
            process_cleanup=self._process_cleanup,
        )
        runtime: AcpRuntime
        if self._runtime_factory is not None:
            made = self._runtime_factory(params)
            runtime = await made if inspect.isawaitable(made) else made
        else:
            runtime = LazyAcpxRuntime(params)
        running = _Running(ctx=ctx, config=config, runtime=runtime)
        try:
            probe = _startup_probe_enabled() and os.environ.get(SKIP_PROBE_ENV) != "1"
            healthy: Callable[[], bool] | None = None
            if probe:
                healthy = lambda: self._is_current(runtime) and runtime.is_healthy()  # noqa: E731
            self._registry.register(AcpRuntimeBackend(BACKEND_ID, runtime, healthy=healthy))
            logger.info(f"embedded acpx runtime backend registered (cwd: {config.cwd})")
            if probe:
                self._health.set(ServiceHealth.PROBING)
                self._spawn(running, self._probe_task)
            else:
                self._health.set(ServiceHealth.REGISTERED)
            self._spawn(running, self._sweep_task)
            if not has_open and orphan_sweep_due(lease_store, gateway_instance_id):
                # (with open leases the start-up reap above swept already)
                self._spawn(running, self._make_orphan_sweep(lease_store, gateway_instance_id))
            # owner-death watchdog: spawned before this service's first agent (ensure_armed)
            running.watchdog = register_watchdog(
                ctx.nursery, wrapper_root, gateway_instance_id, config.kill_grace_seconds
            )
        except BaseException:
            await self._teardown(running, logger)
            raise
        return running

    def _spawn(
        self,
        running: _Running,
        fn: Callable[[_Running, Background], Awaitable[None]],
    ) -> None:
        bg = Background()
        running.background.append(bg)
        try:
            running.ctx.nursery.start_soon(fn, running, bg)
        except BaseException:
            bg.done.set()
            raise

    def _make_orphan_sweep(
        self, lease_store: LeaseStore, gateway_instance_id: str
    ) -> Callable[[_Running, Background], Awaitable[None]]:
        """The start-up tag sweep, in the background (``tasks.orphan_sweep_once``)."""

        async def task(running: _Running, bg: Background) -> None:
            try:
                with bg.scope:
                    await orphan_sweep_once(
                        gateway_instance_id, lease_store, running.ctx.logger,
                        grace=running.config.kill_grace_seconds, deps=self._process_cleanup,
                    )
            finally:
                bg.done.set()

        return task

    # -- background tasks --------------------------------------------------------------------
    async def _probe_task(self, running: _Running, bg: Background) -> None:
        try:
            with bg.scope:
                health, level, message = await probe_once(
                    running.runtime, running.config.control_timeout_seconds
                )
                if bg.scope.cancel_called:  # stopped while the result was on its way
                    return
                self._health.set(health)
                log = running.ctx.logger
                (log.info if level == "info" else log.warning)(message)
        finally:
            bg.done.set()

    async def _sweep_task(self, running: _Running, bg: Background) -> None:
        try:
            with bg.scope:
                interval = running.config.sweep_interval_seconds
                while True:
                    await trio.sleep(interval)
                    await sweep_once(
                        running.runtime,
                        running.ctx.logger,
                        running.config.control_timeout_seconds,
                    )
        finally:
            bg.done.set()

    # -- stop --------------------------------------------------------------------------------
    async def stop(self, ctx: ServiceContext | None = None) -> None:
        """Stop the service.  Idempotent; safe to call from a cancelled scope.

        Guarantees on return: a ``start`` still in progress was aborted (it raises
        :class:`ServiceStoppedError`); the probe and sweep tasks were cancelled and have exited
        (a probe result arriving after ``stop`` is dropped, not logged); backend ``"acpx"`` is
        unregistered if it still holds this service's runtime (a replacement registered by
        someone else stays); ``runtime.aclose()`` was awaited when the runtime has it, so no
        agent process of this service is alive; :attr:`runtime` is ``None``.

        All of it runs shielded from outer cancellation and bounded by
        :attr:`stop_timeout_seconds`; if that bound is hit an error is logged and the leases of
        survivors stay open for the next start to reap.  An exception from ``aclose`` is
        raised after the service is marked stopped."""
        if self._start_scope is not None:
            self._start_scope.cancel(reason="acpx runtime service stopped")
        with trio.CancelScope(shield=True) as waiting:
            waiting.deadline = trio.current_time() + self.stop_timeout_seconds
            await self._lock.acquire()
        if waiting.cancelled_caught:
            (ctx.logger if ctx is not None else _default_logger).error(
                "acpx runtime service start did not abort within "
                f"{format_seconds(self.stop_timeout_seconds)}s; stop gave up waiting for it"
            )
            return
        try:
            running = self._running
            if running is None:
                return
            self._running = None
            self._phase = _Phase.STOPPING
            try:
                await self._teardown(running, (ctx or running.ctx).logger)
            finally:
                self._phase = _Phase.STOPPED
        finally:
            self._lock.release()

    async def _teardown(self, running: _Running, logger: ServiceLogger) -> None:
        for bg in running.background:
            bg.scope.cancel(reason="acpx runtime service stopped")
        self._registry.unregister(BACKEND_ID, runtime=running.runtime)
        self._health.set(ServiceHealth.STOPPED)
        with trio.CancelScope(shield=True) as cleanup:
            cleanup.deadline = trio.current_time() + self.stop_timeout_seconds
            for bg in running.background:
                await bg.done.wait()
            aclose = getattr(running.runtime, "aclose", None)
            try:
                if callable(aclose):
                    await aclose()
            finally:
                if running.watchdog is not None:  # agents are closed: it may go now
                    await running.watchdog.aclose()
        if cleanup.cancelled_caught:
            logger.error(
                "embedded acpx runtime did not shut down within "
                f"{format_seconds(self.stop_timeout_seconds)}s; surviving agent processes will "
                "be reaped at the next start"
            )

    def __repr__(self) -> str:
        return f"<AcpxRuntimeService {self._phase.value} health={self._health.value.value}>"


@asynccontextmanager
async def open_runtime_service(
    *,
    workspace_dir: str | os.PathLike[str],
    state_dir: str | os.PathLike[str],
    plugin_config: Mapping[str, Any] | None = None,
    logger: ServiceLogger | None = None,
    allowed_agents: Sequence[str] = (),
    runtime_factory: RuntimeFactory | None = None,
    process_cleanup: ProcessCleanupDeps | None = None,
    registry: BackendRegistry | None = None,
) -> AsyncIterator[AcpxRuntimeService]:
    """Open a root nursery, start an :class:`AcpxRuntimeService` in it, and yield the service.

    On exit (normal, exception or cancellation) the service is stopped under a shielded,
    bounded cancel scope (see :meth:`AcpxRuntimeService.stop`), so no agent process of it is
    left behind, and then the nursery is cancelled and closed.  An exception from the body (or
    from ``start``) propagates as itself, not wrapped in an ``ExceptionGroup``; failures of
    background tasks propagate as an ``ExceptionGroup``."""
    service = AcpxRuntimeService(
        plugin_config,
        runtime_factory=runtime_factory,
        process_cleanup=process_cleanup,
        registry=registry,
    )
    escaped: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            ctx = ServiceContext(
                workspace_dir=workspace_dir,
                state_dir=state_dir,
                logger=logger if logger is not None else _default_logger,
                nursery=nursery,
                allowed_agents=tuple(allowed_agents),
            )
            try:
                await service.start(ctx)
                yield service
            except BaseException as exc:
                escaped = exc
                raise
            finally:
                with trio.CancelScope(shield=True):
                    await service.stop(ctx)
                nursery.cancel_scope.cancel(reason="acpx runtime service closed")
    except BaseExceptionGroup as group:
        if escaped is None or len(group.exceptions) != 1 or group.exceptions[0] is not escaped:
            raise
        context = escaped.__context__
        try:
            raise escaped  # unwrap the nursery's group; the finally restores the context
        finally:
            escaped.__context__ = context
