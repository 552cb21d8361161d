"""The embedded acpx runtime service: start-up reaping, backend registration, probe, sweep, stop.

A Trio port of OpenClaw's ``createAcpxRuntimeService`` (``extensions/acpx/src/service.ts``).

One task tree: :meth:`AcpxRuntimeService.start` starts exactly one task in the host's nursery
(``await ctx.nursery.start(...)``).  That task owns the *service nursery*; everything the
service and its runtime run lives under it — the runtime's agent processes, turn drivers and
cancels (``RuntimeFactoryParams.nursery`` is the service nursery), and a *background nursery*
opened by the service task itself, holding the startup probe, the orphan sweeps, the passes of
the periodic duties (dead-session sweep, watchdog check, second-net orphan sweep: the service
task starts them every sweep interval, so an idle service is that one task) and whatever other
components add with :meth:`AcpxRuntimeService._spawn_background`.
:meth:`~AcpxRuntimeService.stop` cancels the background nursery, closes the runtime, then
cancels the service nursery and joins the task, so when ``stop`` returns nothing of the service
is left in the host's nursery.

A crash (an exception escaping any task of the service) is **reported, not lost, and never
propagated into the host's nursery**: it is logged at error level with its traceback, health
becomes ``UNHEALTHY``, the backend is unregistered and the runtime closed (every agent process
of it is dead), and :attr:`AcpxRuntimeService.crash` holds the exception.  The host then calls
``stop()`` as usual (it does not raise for the crash).

A host that cancels its nursery without calling ``stop()`` gets what ``stop`` gives: every
agent process is gone, the backend unregistered, health ``STOPPED``, :attr:`runtime` ``None``
(``require_runtime`` raises :class:`ServiceStoppedError`), and ``start`` works again.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from acpx_trio._errors import AcpxUsageError, collapse_group
from acpx_trio._log import ServiceLogger
from acpx_trio._process.cgroup import Containment
from acpx_trio._process.reap_entry import ReapResult
from acpx_trio._process.reaper import ProcessCleanupDeps
from acpx_trio._service import tasks as _guards  # issue #11: start-up sweep, watchdog
from acpx_trio._service.backends import (
    AcpRuntimeBackend,
    AcpRuntimeProtocol,
    AcpxRuntimeProtocol,
    BackendRegistry,
    default_registry,
)
from acpx_trio._service.context import (
    BACKEND_ID,
    SERVICE_ID,
    SKIP_RUNTIME_ENV,
    Phase,
    Running,
    RuntimeFactory,
    ServiceAlreadyStartedError,
    ServiceContext,
    ServiceStoppedError,
    startup_probe_enabled,
)
from acpx_trio._service.doctor_format import format_seconds
from acpx_trio._service.health import ServiceHealth, ServiceHealthState
from acpx_trio._service.lazy_runtime import LazyAcpxRuntime, RuntimeFactoryParams
from acpx_trio._service.prepare import PrepareCache
from acpx_trio._service.startup import (
    reap_leases_and_orphans,
    report_lease_file,
    report_reap,
)
from acpx_trio._service.tasks import report_crash, run_duties, run_probe, sweep_once
from acpx_trio._store.config import DEFAULT_STOP_TIMEOUT_SECONDS, AcpxConfig

__all__ = [
    "BACKEND_ID",
    "SERVICE_ID",
    "AcpxRuntimeService",
    "RuntimeFactory",
    "ServiceAlreadyStartedError",
    "ServiceContext",
    "ServiceStoppedError",
]

_default_logger = logging.getLogger("acpx_trio.service")
#: The start-up reap; tests replace it on this module.
_reap_open_leases = reap_leases_and_orphans


class AcpxRuntimeService:
    """The embedded acpx runtime backend as a start/stop service (see the module docstring
    for its task tree and crash reporting).

    ``start(ctx)`` reaps agent processes a previous life of this gateway left behind, registers
    backend ``"acpx"`` in ``registry`` (default: :data:`default_registry`), and starts the
    background tasks.  ``stop(ctx)`` undoes all of it.

    Env switches (read at each start): ``OPENCLAW_SKIP_ACPX_RUNTIME=1`` makes ``start`` a
    logged no-op; ``OPENCLAW_ACPX_RUNTIME_STARTUP_PROBE=1`` runs the startup probe and registers
    a ``healthy`` callback; ``OPENCLAW_SKIP_ACPX_RUNTIME_PROBE=1`` suppresses the probe again.

    Without ``runtime_factory`` the runtime is a :class:`LazyAcpxRuntime`: the real
    ``AcpxRuntime`` is imported and built on the first call that needs it, once.

    ``stop_timeout_seconds`` bounds each shielded phase of :meth:`stop` (waiting for a start to
    abort; background tasks and ``runtime.aclose()``; joining the service task), measured on
    Trio's clock."""

    id = SERVICE_ID
    #: Default bound of each shielded clean-up phase of :meth:`stop`.  Leases of anything still
    #: alive when it is hit are reaped at the next start.
    stop_timeout_seconds: float = DEFAULT_STOP_TIMEOUT_SECONDS

    def __init__(
        self,
        plugin_config: Mapping[str, Any] | None = None,
        *,
        runtime_factory: RuntimeFactory | None = None,
        process_cleanup: ProcessCleanupDeps | None = None,
        registry: BackendRegistry | None = None,
        stop_timeout_seconds: float | None = None,
    ) -> None:
        if runtime_factory is not None and not callable(runtime_factory):
            raise AcpxUsageError("runtime_factory", runtime_factory,
                                 "must be callable (see RuntimeFactoryParams)")
        if registry is not None and not isinstance(registry, BackendRegistry):
            raise AcpxUsageError("registry", registry, "must be a BackendRegistry")
        self._plugin_config = plugin_config
        self._runtime_factory = runtime_factory
        self._process_cleanup = process_cleanup
        self._registry = registry if registry is not None else default_registry
        if stop_timeout_seconds is not None:
            if isinstance(stop_timeout_seconds, bool) or not isinstance(
                    stop_timeout_seconds, int | float) or not 0 < stop_timeout_seconds < math.inf:
                raise AcpxUsageError("stop_timeout_seconds", stop_timeout_seconds,
                                     "must be a finite number of seconds > 0")
            self.stop_timeout_seconds = stop_timeout_seconds
        self._lock = trio.Lock()
        self._phase = Phase.STOPPED
        self._running: Running | None = None
        self._background: trio.Nursery | None = None
        self._watchdog: _guards.WatchdogHandle | None = None
        self._health = ServiceHealthState()
        self._gateway_instance_id: str | None = None
        self._startup_reap: ReapResult | None = None
        self._containment: Containment | None = None
        self._start_scope: trio.CancelScope | None = None
        self._crash: BaseException | None = None
        self._crash_event = trio.Event()
        self._prepare_cache = PrepareCache()  # config, dirs, gateway id across restarts

    # -- observation -------------------------------------------------------------------------
    @property
    def runtime(self) -> AcpRuntimeProtocol | None:
        """The registered runtime while started; ``None`` when stopped (see
        :meth:`require_runtime` for a non-optional accessor)."""
        return self._running.runtime if self._running is not None else None

    def require_runtime(self) -> AcpRuntimeProtocol:
        """The runtime while started; raises :class:`ServiceStoppedError` when stopped."""
        if self._running is None:
            raise ServiceStoppedError(
                "acpx runtime service is not started; start it (or use open_runtime_service) "
                "before using its runtime"
            )
        return self._running.runtime

    def require_acpx_runtime(self) -> AcpxRuntimeProtocol:
        """:meth:`require_runtime`, typed with what acpx runtimes add (``run_turn_batches``,
        ``set_model``, ``list_sessions``, ...: :class:`AcpxRuntimeProtocol`).  Raises
        :class:`ServiceStoppedError` when stopped, and :class:`~acpx_trio.AcpxUsageError`
        when a ``runtime_factory`` made a runtime without them."""
        runtime = self.require_runtime()
        if not isinstance(runtime, AcpxRuntimeProtocol):
            raise AcpxUsageError("runtime_factory", runtime,
                                 "made a runtime without the acpx extensions "
                                 "(AcpxRuntimeProtocol); use require_runtime()")
        return runtime

    @property
    def config(self) -> AcpxConfig | None:
        """The resolved config (probe agent filled in) while started."""
        return self._running.config if self._running is not None else None

    @property
    def gateway_instance_id(self) -> str | None:
        """This installation's gateway instance id (known after the first start)."""
        return self._gateway_instance_id

    @property
    def containment(self) -> Containment | None:
        """The mechanism containing this service's agents and terminals (``"cgroup"`` with
        its path, or ``"process-group"`` with the reason); ``None`` before the first start."""
        return self._containment

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
    def crash(self) -> BaseException | None:
        """The exception that crashed the service's task tree since the last start, if any."""
        return self._crash

    async def wait_crash(self) -> BaseException:
        """Wait until the service's task tree crashes and return the exception (what
        :attr:`crash` then holds); returns at once when it crashed since the last start.

        Unlike a wait on :attr:`health`, this wakes for a crash of a service already
        ``UNHEALTHY`` (a failed start-up probe).  A stop that is no crash never wakes it; a
        waiter may span restarts (it wakes for a crash of a later run)."""
        while (crash := self._crash) is None:  # a restart may clear what a waiter woke for
            await self._crash_event.wait()
        await trio.lowlevel.checkpoint()
        return crash

    @property
    def registry(self) -> BackendRegistry:
        return self._registry

    def _is_current(self, runtime: AcpRuntimeProtocol) -> bool:
        return self._running is not None and self._running.runtime is runtime

    # -- hook for other components -----------------------------------------------------------
    def _spawn_background(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run ``fn(*args)`` as a background task of the service (e.g. a watchdog or an
        orphan sweep).

        The task lives in the service's background nursery: :meth:`stop` cancels it before the
        runtime is closed and waits for it; an exception it raises is a service crash (logged,
        health ``UNHEALTHY``, runtime closed; see the module docstring).  Callable from
        :meth:`start`'s runtime factory onwards.  Raises :class:`ServiceStoppedError` when the
        service is not running."""
        if self._background is None:
            raise ServiceStoppedError("acpx runtime service is not running")
        self._background.start_soon(fn, *args)

    # -- start -------------------------------------------------------------------------------
    async def start(self, ctx: ServiceContext) -> None:
        """Reap, build the runtime, register backend ``"acpx"``, start the probe and the duties.

        Returns once the backend is registered; the probe runs in the background.  Exactly one
        task of the service is then in ``ctx.nursery``.

        Raises:
            ConfigError: the plugin config is invalid (nothing is registered).
            ServiceAlreadyStartedError: the service is started or starting.
            ServiceStoppedError: :meth:`stop` was called while starting.
            Anything the gateway id, lease store, reaper or runtime factory raise (never
            wrapped in an ``ExceptionGroup``); the service is then stopped again (a runtime
            already built is closed, nothing stays registered or running).  The same holds if
            ``start`` is cancelled.
            AcpxUsageError: ``ctx`` is not a :class:`ServiceContext`, or a field of it is
            not of its type (before anything is read or started)."""
        if not isinstance(ctx, ServiceContext):
            raise AcpxUsageError("ctx", ctx, "must be a ServiceContext")
        if os.environ.get(SKIP_RUNTIME_ENV) == "1":
            ctx.logger.info("skipping embedded acpx runtime backend (OPENCLAW_SKIP_ACPX_RUNTIME=1)")
            await trio.lowlevel.checkpoint()
            return
        self._check_not_started()
        async with self._lock:
            self._check_not_started()
            self._phase = Phase.STARTING
            self._health.set(ServiceHealth.STARTING)
            self._crash = None
            if self._crash_event.is_set():
                self._crash_event = trio.Event()
            running: Running | None = None
            try:
                with trio.CancelScope() as self._start_scope:
                    try:
                        running = await ctx.nursery.start(self._run, ctx)
                    except BaseExceptionGroup as group:
                        raise collapse_group(group) from None
                if running is None:
                    raise ServiceStoppedError(
                        "acpx runtime service was stopped while it was starting"
                    )
            except BaseException:
                self._phase = Phase.STOPPED
                self._health.set(ServiceHealth.STOPPED)
                raise
            finally:
                self._start_scope = None
            self._running = running
            self._phase = Phase.STARTED

    def _check_not_started(self) -> None:
        if self._phase in (Phase.STARTING, Phase.STARTED):
            raise ServiceAlreadyStartedError(
                f"acpx runtime service is already {self._phase.value}; stop it before starting "
                "it again",
            )

    async def _run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[Running]
    ) -> None:
        """The service's one task in the host nursery: owns the service nursery."""
        await trio.lowlevel.checkpoint()
        run_done = trio.Event()
        running: Running | None = None
        crash: BaseExceptionGroup[Exception] | None = None
        try:
            async with trio.open_nursery() as nursery:
                background_done = trio.Event()
                try:
                    # The background nursery is this task's own (no host task of its own):
                    # stop() cancels it first, then this task waits for the service nursery.
                    async with trio.open_nursery() as background:
                        running = await self._boot(ctx, nursery, background, background_done,
                                                   run_done)
                        self._running = running  # before anything can crash unobserved
                        task_status.started(running)
                        await run_duties(background, running.config.sweep_interval_seconds,
                                         running.duties)
                finally:
                    background_done.set()
                await trio.sleep_forever()
        except* Exception as group:
            if running is None:
                raise  # start() reports it
            crash = group
        finally:
            ended_unstopped = running is not None and self._running is running
            if running is not None and ended_unstopped:
                # Ended without stop() (crash or host cancellation): nothing of it may stay
                # usable, and a late call must get a typed error, not a closed nursery.
                self._registry.unregister(BACKEND_ID, runtime=running.runtime)
                await self._close_runtime(running, ctx.logger)
                await self._last_sweep(running)
            if crash is not None and running is not None:
                self._crashed(running, crash)
            elif ended_unstopped:
                # the host cancelled it (no crash to report): stopped, as stop() leaves it,
                # so ``runtime`` is None, ``health`` says so and ``start`` works again
                self._running = None
                self._phase = Phase.STOPPED
                self._health.set(ServiceHealth.STOPPED)
                watchdog, self._watchdog = self._watchdog, None
                _guards.forget_guards(watchdog)
            self._background = None
            run_done.set()

    async def _boot(
        self, ctx: ServiceContext, nursery: trio.Nursery, background: trio.Nursery,
        background_done: trio.Event, run_done: trio.Event,
    ) -> Running:
        logger = ctx.logger
        prepared = await self._prepare_cache.prepare_async(self._plugin_config, ctx)
        config, lease_store = prepared.config, prepared.lease_store
        gateway_instance_id = prepared.gateway_instance_id
        self._gateway_instance_id = gateway_instance_id
        self._containment = prepared.containment
        report_lease_file(lease_store, logger)
        # No open lease of this gateway: nothing to reap, so skip the reaper's round trip.  (A
        # lease added meanwhile has a live owner, which the reaper would leave alone anyway.)
        reap = (
            await _reap_open_leases(
                gateway_instance_id, lease_store, grace=config.kill_grace_seconds,
                deps=self._process_cleanup,
            )
            if prepared.needs_reap
            else ReapResult()
        )
        self._startup_reap = reap
        report_reap(reap, config, logger)
        self._background = background
        params = RuntimeFactoryParams(
            config=config,
            gateway_instance_id=gateway_instance_id,
            lease_store=lease_store,
            logger=logger,
            nursery=nursery,
            process_cleanup=self._process_cleanup,
        )
        runtime: AcpRuntimeProtocol
        if self._runtime_factory is not None:
            made = self._runtime_factory(params)
            runtime = await made if inspect.isawaitable(made) else made
        else:
            runtime = LazyAcpxRuntime(params)
        running = Running(
            ctx=ctx, config=config, runtime=runtime, nursery=nursery, background=background,
            background_done=background_done, run_done=run_done,
        )
        try:
            probe = startup_probe_enabled()
            healthy: Callable[[], bool] | None = None
            if probe:
                healthy = lambda: self._is_current(runtime) and runtime.is_healthy()  # noqa: E731
            self._registry.register(AcpRuntimeBackend(BACKEND_ID, runtime, healthy=healthy))
            logger.info(f"embedded acpx runtime backend registered (cwd: {config.cwd})")
            if probe:
                self._health.set(ServiceHealth.PROBING)
                background.start_soon(
                    run_probe, runtime, config.control_timeout_seconds, self._health, logger
                )
            else:
                self._health.set(ServiceHealth.REGISTERED)
            self._watchdog, guard_duties, running.last_sweep = _guards.start_guards(
                nursery, background, prepared, logger, self._process_cleanup
            )  # orphan sweeps + watchdog
            running.duties = [
                functools.partial(sweep_once, runtime, logger, config.control_timeout_seconds),
                *guard_duties,
            ]
        except BaseException:
            self._registry.unregister(BACKEND_ID, runtime=runtime)
            await self._close_runtime(running, logger)
            raise
        return running

    # -- crash and close ---------------------------------------------------------------------
    def _crashed(self, running: Running, group: BaseExceptionGroup[Exception]) -> None:
        self._crash = report_crash(group, running.ctx.logger)
        self._crash_event.set()
        if self._running is running:
            self._health.set(ServiceHealth.UNHEALTHY)

    # Clean-up is shielded on purpose (it must finish, bounded, even when cancelled): ASYNC910/
    # ASYNC912 would have it add cancel points.
    async def _close_runtime(  # noqa: ASYNC910
        self, running: Running, logger: ServiceLogger
    ) -> None:
        """``runtime.aclose()`` shielded and bounded; failures are logged, never raised.

        The bound is on Trio's clock; what is reported is whether ``aclose`` *finished* (thread
        work that completes after the deadline, e.g. under an autojumping test clock, is not a
        failure)."""
        closed = False
        with trio.CancelScope(shield=True) as scope:  # noqa: ASYNC912
            scope.deadline = trio.current_time() + self.stop_timeout_seconds
            try:
                await running.runtime.aclose()
                closed = True
            except Exception as exc:
                closed = True
                logger.error(f"embedded acpx runtime failed to close: {exc!r}")
        if not closed:
            logger.error(
                "embedded acpx runtime did not shut down within "
                f"{format_seconds(self.stop_timeout_seconds)}s; surviving agent processes will "
                "be reaped at the next start"
            )

    async def _last_sweep(self, running: Running) -> None:  # noqa: ASYNC910
        """What a close of ours could not prove gone, taken up once the runtime closed
        (``tasks.sweep_left_behind``), however the service ends: shielded and bounded."""
        if running.last_sweep is not None:
            with trio.CancelScope(shield=True) as last:  # noqa: ASYNC912
                last.deadline = trio.current_time() + self.stop_timeout_seconds
                await running.last_sweep()

    # -- stop --------------------------------------------------------------------------------
    async def stop(self, ctx: ServiceContext | None = None) -> None:  # noqa: ASYNC910
        """Stop the service.  Idempotent; safe to call from a cancelled scope.

        Guarantees on return: a ``start`` still in progress was aborted (it raises
        :class:`ServiceStoppedError`); backend ``"acpx"`` is unregistered if it still holds
        this service's runtime (a replacement registered by someone else stays); the
        background tasks (probe, sweep, spawned hooks) were cancelled and have exited (a probe
        result arriving after ``stop`` is dropped, not logged); ``runtime.aclose()`` was
        awaited, so no agent process of this service is alive; the service's task has left
        the host's nursery; :attr:`runtime` is ``None``.

        Each phase runs shielded from outer cancellation and bounded by
        :attr:`stop_timeout_seconds` on Trio's clock; if a bound is hit an error is logged and
        the leases of survivors stay open for the next start to reap.  ``stop`` does not raise
        for a crash of the service (see :attr:`crash`) nor for a failing ``aclose`` (logged)."""
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
            self._phase = Phase.STOPPING
            try:
                await self._teardown(running, (ctx or running.ctx).logger)
            finally:
                self._phase = Phase.STOPPED
        finally:
            self._lock.release()

    async def _teardown(self, running: Running, logger: ServiceLogger) -> None:
        # shielded clean-up: no cancel points on purpose (ASYNC910)
        self._registry.unregister(BACKEND_ID, runtime=running.runtime)
        self._health.set(ServiceHealth.STOPPED)
        watchdog, self._watchdog = self._watchdog, None
        if running.run_done.is_set():
            # the task tree already ended (crash or host cancellation) and closed all
            _guards.forget_guards(watchdog)
            return  # noqa: ASYNC910
        with trio.CancelScope(shield=True) as cleanup:  # noqa: ASYNC912
            cleanup.deadline = trio.current_time() + self.stop_timeout_seconds
            running.background.cancel_scope.cancel(reason="acpx runtime service stopped")
            await running.background_done.wait()
        if not running.background_done.is_set():
            logger.error(
                "embedded acpx runtime background tasks did not stop within "
                f"{format_seconds(self.stop_timeout_seconds)}s"
            )
        await self._close_runtime(running, logger)
        await self._last_sweep(running)
        await _guards.stop_guards(watchdog)  # the agents are closed: it may go now (kills nothing)
        with trio.CancelScope(shield=True) as join:  # noqa: ASYNC912
            join.deadline = trio.current_time() + self.stop_timeout_seconds
            running.nursery.cancel_scope.cancel(reason="acpx runtime service stopped")
            await running.run_done.wait()
        if not running.run_done.is_set():
            logger.error(
                "embedded acpx runtime service task did not exit within "
                f"{format_seconds(self.stop_timeout_seconds)}s"
            )

    def __repr__(self) -> str:
        return f"<AcpxRuntimeService {self._phase.value} health={self._health.value.value}>"
