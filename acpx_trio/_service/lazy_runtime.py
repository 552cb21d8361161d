"""The default runtime, built on first use.

Registering the backend must be cheap and must not import the real runtime module (agent
process management, the ACP client); :class:`LazyAcpxRuntime` defers both to the first call that
needs a runtime.  When that call is a start under cgroup containment (or ``auto``, where a
leaf can be made), the start's leaf is made while the runtime's modules load (a primed spare
leaf), so the move into it, which waits on the kernel, is off the start's path.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import trio

from acpx_trio._errors import AcpRuntimeError
from acpx_trio._events import (
    AcpRuntimeCapabilities,
    AcpRuntimeEvent,
    AcpRuntimeHandle,
    AcpRuntimeStatus,
    AgentSession,
    DoctorReport,
)
from acpx_trio._log import Logger, ServiceLogger, as_logger
from acpx_trio._process.cgroup import Containment, resolve_containment
from acpx_trio._service.backends import AcpRuntimeProtocol
from acpx_trio._store.config import AcpxConfig
from acpx_trio._store.leases import LeaseStore

if TYPE_CHECKING:
    from acpx_trio._process.reaper import ProcessCleanupDeps
    from acpx_trio._process.spare_leaf import SpareLeaves

__all__ = [
    "LazyAcpxRuntime",
    "RuntimeFactoryParams",
    "ServiceLogger",
    "build_default_runtime",
]

RUNTIME_MODULE = "acpx_trio._runtime.runtime"


@dataclass(frozen=True, slots=True)
class RuntimeFactoryParams:
    """Everything a runtime factory needs to build the service's runtime.

    ``nursery`` is the service's own nursery (a child of the host's): long-lived runtime tasks
    (agent processes, turn drivers) belong there, so the service's ``stop`` ends them.
    ``process_cleanup`` is the service's injected process table (``None``: the real one)."""

    config: AcpxConfig
    gateway_instance_id: str
    lease_store: LeaseStore
    logger: ServiceLogger
    nursery: trio.Nursery
    process_cleanup: ProcessCleanupDeps | None = None


async def build_default_runtime(
    params: RuntimeFactoryParams, *, for_start: bool = False
) -> AcpRuntimeProtocol:
    """Import :mod:`acpx_trio._runtime.runtime` (in a worker thread) and build ``AcpxRuntime``.

    ``for_start``: a start waits for this build.  Unless containment is ``process-group``,
    one spare leaf is then made while the modules load
    (:meth:`~acpx_trio._process.spare_leaf.SpareLeaves.prime`) and the runtime takes the pool
    over; a build that fails or is cancelled closes it (nothing of it is left running)."""
    logger = as_logger(params.logger, "acpx_trio.runtime")  # the host's logger, any kind
    spares = _primed_spare_leaves(params, logger) if for_start else None
    try:
        module = await trio.to_thread.run_sync(importlib.import_module, RUNTIME_MODULE)
        runtime = module.AcpxRuntime(
            params.config,
            gateway_instance_id=params.gateway_instance_id,
            lease_store=params.lease_store,
            nursery=params.nursery,
            logger=logger,
            process_cleanup=params.process_cleanup,
            _spare_leaves=spares,
        )
    except BaseException:
        if spares is not None:
            with trio.CancelScope(shield=True):
                await spares.aclose()
        raise
    return cast(AcpRuntimeProtocol, runtime)


def _primed_spare_leaves(params: RuntimeFactoryParams, logger: Logger) -> SpareLeaves | None:
    """The runtime's pool (see :func:`~acpx_trio._process.spare_leaf.runtime_pool`), making
    one spare leaf now; ``None`` under process-group containment."""
    from acpx_trio._process.spare_leaf import runtime_pool  # with the runtime: not at start

    spares = runtime_pool(params.nursery, containment=params.config.containment,
                          gateway_instance_id=params.gateway_instance_id,
                          lease_dir=params.lease_store.path.parent, log=logger)
    if spares is not None:
        spares.prime()
    return spares


class LazyAcpxRuntime:
    """An :class:`AcpRuntimeProtocol` that builds the real runtime on the first call needing it.

    Guarantees:

    * the runtime is built **once**, even when first calls race (they wait for one build); a
      build that fails or is cancelled is retried by the next call;
    * :meth:`is_healthy`, :meth:`sweep_dead_sessions` and :meth:`aclose` never build it;
    * after :meth:`aclose` every call raises :class:`AcpRuntimeError`
      (``ACP_BACKEND_UNAVAILABLE``) and nothing is built any more, so no agent can be started
      by a call that races the service's ``stop``;
    * when that first call is :meth:`ensure_session`, the default runtime is built
      ``for_start`` (see :func:`build_default_runtime`)."""

    def __init__(
        self,
        params: RuntimeFactoryParams,
        *,
        build: Callable[[RuntimeFactoryParams], Awaitable[AcpRuntimeProtocol]] | None = None,
    ) -> None:
        self._params = params
        self._build = build
        self._runtime: AcpRuntimeProtocol | None = None
        self._lock = trio.Lock()
        self._closed = False
        self._elicitation_handler: Any = None
        #: How many times a runtime was built (0 or 1).
        self.build_count = 0

    @property
    def containment(self) -> Containment:
        """The mechanism containing this runtime's agents and terminals, as
        :attr:`AcpxRuntime.containment <acpx_trio.AcpxRuntime.containment>` says it (known
        before the runtime is built: the service probed it at its start).  Raises
        :class:`~acpx_trio.ContainmentError` for ``"cgroup"`` where it is unusable."""
        return resolve_containment(self._params.config.containment)

    @property
    def built(self) -> AcpRuntimeProtocol | None:
        """The underlying runtime, or ``None`` while not built yet."""
        return self._runtime

    def _closed_error(self) -> AcpRuntimeError:
        return AcpRuntimeError(
            "ACP_BACKEND_UNAVAILABLE", "embedded acpx runtime is stopped; start the service again"
        )

    async def _resolve(self, *, for_start: bool = False) -> AcpRuntimeProtocol:
        runtime = self._runtime
        if runtime is not None and not self._closed:
            await trio.lowlevel.checkpoint()
            return runtime
        if self._closed:
            raise self._closed_error()
        async with self._lock:
            if self._closed:
                raise self._closed_error()
            if self._runtime is None:
                if self._build is None:
                    self._runtime = await build_default_runtime(self._params,
                                                                for_start=for_start)
                else:
                    self._runtime = await self._build(self._params)
                self.build_count += 1
                if self._elicitation_handler is not None:
                    self._extension(self._runtime, "set_elicitation_handler")(
                        self._elicitation_handler)
            return self._runtime

    async def ensure_session(
        self,
        *,
        session_key: str,
        agent: str,
        mode: Literal["persistent", "oneshot"] = "persistent",
        cwd: str | None = None,
        resume_session_id: str | None = None,
    ) -> AcpRuntimeHandle:
        return await (await self._resolve(for_start=True)).ensure_session(
            session_key=session_key,
            agent=agent,
            mode=mode,
            cwd=cwd,
            resume_session_id=resume_session_id,
        )

    # An async generator by the AcpRuntimeProtocol contract (consumed under ``aclosing``); it never
    # yields inside a nursery or cancel scope, which is what ASYNC900 guards against.
    async def run_turn(  # noqa: ASYNC900
        self,
        *,
        handle: AcpRuntimeHandle,
        text: str,
        mode: Literal["prompt", "steer"] = "prompt",
        request_id: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> AsyncGenerator[AcpRuntimeEvent, None]:
        runtime = await self._resolve()
        extra: dict[str, Any] = {} if meta is None else {"meta": meta}  # acpx runtimes only
        inner = runtime.run_turn(handle=handle, text=text, mode=mode, request_id=request_id,
                                 **extra)
        try:
            async for event in inner:
                yield event
        finally:
            await inner.aclose()

    async def run_turn_batches(  # noqa: ASYNC900 (same contract as run_turn)
        self,
        *,
        handle: AcpRuntimeHandle,
        text: str,
        mode: Literal["prompt", "steer"] = "prompt",
        request_id: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> AsyncGenerator[list[AcpRuntimeEvent], None]:
        """``run_turn`` in non-empty lists of events (see ``AcpxRuntime.run_turn_batches``);
        a runtime without the batch form gets one event per list."""
        runtime = await self._resolve()
        extra: dict[str, Any] = {} if meta is None else {"meta": meta}
        batched = getattr(runtime, "run_turn_batches", None)
        if batched is not None:
            inner = batched(handle=handle, text=text, mode=mode, request_id=request_id, **extra)
            try:
                async for batch in inner:
                    yield batch
            finally:
                await inner.aclose()
            return
        single = runtime.run_turn(handle=handle, text=text, mode=mode, request_id=request_id,
                                  **extra)
        try:
            async for event in single:
                yield [event]
        finally:
            await single.aclose()

    async def cancel(self, *, handle: AcpRuntimeHandle, reason: str | None = None) -> None:
        await (await self._resolve()).cancel(handle=handle, reason=reason)

    async def close(
        self,
        *,
        handle: AcpRuntimeHandle,
        reason: str = "closed",
        discard_persistent_state: bool = False,
    ) -> None:
        await (await self._resolve()).close(
            handle=handle, reason=reason, discard_persistent_state=discard_persistent_state
        )

    async def get_capabilities(
        self, *, handle: AcpRuntimeHandle | None = None
    ) -> AcpRuntimeCapabilities:
        return await (await self._resolve()).get_capabilities(handle=handle)

    async def get_status(self, *, handle: AcpRuntimeHandle) -> AcpRuntimeStatus:
        return await (await self._resolve()).get_status(handle=handle)

    async def set_mode(self, *, handle: AcpRuntimeHandle, mode: str) -> None:
        await (await self._resolve()).set_mode(handle=handle, mode=mode)

    async def set_config_option(
        self, *, handle: AcpRuntimeHandle, key: str, value: str | bool
    ) -> None:
        await (await self._resolve()).set_config_option(handle=handle, key=key, value=value)

    # issue 21 (protocol): AcpxRuntime extensions beyond the AcpRuntimeProtocol protocol
    def _extension(self, runtime: AcpRuntimeProtocol, name: str) -> Any:
        method = getattr(runtime, name, None)
        if method is None:
            raise AcpRuntimeError("ACP_BACKEND_UNSUPPORTED_CONTROL",
                                  f"this runtime has no {name}")
        return method

    async def list_sessions(self, *, agent: str, cwd: str | None = None) -> list[AgentSession]:
        """See ``AcpxRuntime.list_sessions``."""
        method = self._extension(await self._resolve(), "list_sessions")
        return cast("list[AgentSession]", await method(agent=agent, cwd=cwd))

    def set_elicitation_handler(self, handler: Any) -> None:
        """See ``AcpxRuntime.set_elicitation_handler`` (kept for the runtime built later)."""
        self._elicitation_handler = handler
        built = self.built
        if built is not None:
            self._extension(built, "set_elicitation_handler")(handler)

    async def delete_session(self, *, agent: str, session_id: str) -> None:
        """See ``AcpxRuntime.delete_session``."""
        await self._extension(await self._resolve(), "delete_session")(
            agent=agent, session_id=session_id)

    async def logout(self, *, agent: str) -> None:
        """See ``AcpxRuntime.logout``."""
        await self._extension(await self._resolve(), "logout")(agent=agent)

    async def set_model(self, *, handle: AcpRuntimeHandle, model: str) -> None:
        """See ``AcpxRuntime.set_model``."""
        await self._extension(await self._resolve(), "set_model")(handle=handle, model=model)

    async def prepare_fresh_session(self, *, session_key: str) -> None:
        await (await self._resolve()).prepare_fresh_session(session_key=session_key)

    async def doctor(self, *, deep: bool = False) -> DoctorReport:
        runtime = await self._resolve()
        if deep:  # only the real runtime knows deep probes
            deep_doctor: Any = runtime.doctor
            report: DoctorReport = await deep_doctor(deep=True)
            return report
        return await runtime.doctor()

    async def probe_availability(self) -> None:
        await (await self._resolve()).probe_availability()

    def is_healthy(self) -> bool:
        """False until built (and after close); then the runtime's own answer."""
        runtime = self._runtime
        return runtime is not None and not self._closed and runtime.is_healthy()

    async def sweep_dead_sessions(self) -> int:
        """Delegate to the built runtime; 0 (without building anything) when not built."""
        runtime = self._runtime
        if runtime is None or self._closed:
            await trio.lowlevel.checkpoint()
            return 0
        return await runtime.sweep_dead_sessions()

    async def aclose(self) -> None:
        """Refuse further calls, wait for an in-flight build, and close the built runtime.

        Idempotent.  If cancelled, the runtime may be partly closed; calling again retries."""
        self._closed = True
        async with self._lock:
            if self._runtime is not None:
                await self._runtime.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("built" if self._runtime else "not built")
        return f"<LazyAcpxRuntime {state}>"

