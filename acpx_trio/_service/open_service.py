"""``open_runtime_service``: a root nursery with a started :class:`AcpxRuntimeService`."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from acpx_trio._errors import collapse_group, is_body_exception
from acpx_trio._log import ServiceLogger
from acpx_trio._process.reaper import ProcessCleanupDeps
from acpx_trio._service.backends import BackendRegistry
from acpx_trio._service.context import RuntimeFactory, ServiceContext
from acpx_trio._service.service import AcpxRuntimeService

__all__ = ["open_runtime_service"]

_default_logger = logging.getLogger("acpx_trio.service")


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
    """Open a root nursery, start an :class:`AcpxRuntimeService` in it, and yield the service
    (``service.require_runtime()`` is its runtime, typed non-optional).

    On exit (normal, exception or cancellation) the service is stopped under a shielded,
    bounded cancel scope (see :meth:`AcpxRuntimeService.stop`), so no agent process of it is
    left behind, and then the nursery is closed.  An exception from the body (or from
    ``start``) propagates as itself, not wrapped in an ``ExceptionGroup``; a crash of the
    service's own tasks is reported by the service (see :attr:`AcpxRuntimeService.crash`)."""
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
                allowed_agents=(tuple(allowed_agents) if isinstance(allowed_agents, list)
                                else allowed_agents),  # anything else: start checks it
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
        _, rest = group.split(trio.Cancelled)
        if rest is None:  # only cancellations: the host's cancel scope takes the one raised
            raise collapse_group(group) from None
        # the body's exception is one of the nursery's own (a group the body raised is not
        # unwrapped: it is raised as the body raised it)
        others = [x for x in group.exceptions if not is_body_exception(x, escaped)]
        if len(others) == len(group.exceptions) or any(
                not isinstance(collapse_group(x), trio.Cancelled) for x in others):
            raise  # the service's own tasks failed too
        assert escaped is not None
        context = escaped.__context__
        try:
            raise escaped  # unwrap the nursery's group; the finally restores the context
        finally:
            escaped.__context__ = context
