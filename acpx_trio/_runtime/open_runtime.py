"""``open_acpx_runtime``: an :class:`AcpxRuntime` with a nursery of its own."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import trio

from acpx_trio._errors import (
    AcpRuntimeError,
    AcpxError,
    collapse_group,
    is_body_exception,
)
from acpx_trio._process.cgroup import cached_probe
from acpx_trio._runtime.arguments import runtime_args
from acpx_trio._runtime.runtime import AcpxRuntime
from acpx_trio._store.config import AcpxConfig
from acpx_trio._store.leases import LeaseStore

__all__ = ["open_acpx_runtime"]


@contextlib.asynccontextmanager
async def open_acpx_runtime(
    config: AcpxConfig,
    *,
    gateway_instance_id: str,
    lease_store: LeaseStore,
    **kwargs: Any,
) -> AsyncIterator[AcpxRuntime]:
    """An :class:`AcpxRuntime` with its own nursery; on exit (normal, error or cancellation)
    every session is closed and no agent process is left.

    Errors: a bad argument raises :class:`AcpxUsageError` before anything starts.  Never an
    ``ExceptionGroup``: an exception from the body propagates as itself; an
    :class:`AcpxError` of the runtime's own tasks as itself; anything else they raise (a bug)
    as :class:`AcpRuntimeError` ``ACP_RUNTIME_INTERNAL_ERROR`` with the original as its
    ``__cause__``.  Several at once: the first, the others attached as notes."""
    runtime_args(config, gateway_instance_id, lease_store)
    # the containment probe makes and removes a cgroup, which can wait on the kernel's
    # cgroup lock: done here, in a worker thread, ``runtime.containment`` never blocks
    await trio.to_thread.run_sync(cached_probe)
    escaped: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            runtime = AcpxRuntime(
                config,
                gateway_instance_id=gateway_instance_id,
                lease_store=lease_store,
                nursery=nursery,
                **kwargs,
            )
            try:
                yield runtime
            except BaseException as exc:
                escaped = exc
                raise
            finally:
                await runtime.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        body = [x for x in group.exceptions if is_body_exception(x, escaped)]
        if escaped is not None and body:
            first = escaped  # the body's own, a group included: as itself
            for other in group.exceptions:
                leaf = collapse_group(other)
                if other not in body and not isinstance(leaf, trio.Cancelled):
                    first.add_note(f"also raised concurrently: {type(leaf).__name__}: {leaf}")
        else:
            first = collapse_group(group)
        if isinstance(first, trio.Cancelled):
            raise first from None  # only cancellations: the enclosing cancel scope takes it
        if first is not escaped and not isinstance(first, AcpxError | KeyboardInterrupt):
            raise AcpRuntimeError(
                "ACP_RUNTIME_INTERNAL_ERROR",
                f"a task of the ACP runtime failed: {first!r}",
            ) from first
        context = first.__context__
        try:
            raise first  # unwrap the nursery's group; the finally restores the context
        finally:
            first.__context__ = context
