"""``open_acpx_runtime``: an :class:`AcpxRuntime` with a nursery of its own."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

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
    wrapper_root: Path,
    **kwargs: Any,
) -> AsyncIterator[AcpxRuntime]:
    """An :class:`AcpxRuntime` with its own nursery; on exit (normal, error or cancellation)
    every session is closed and no agent process is left."""
    async with trio.open_nursery() as nursery:
        runtime = AcpxRuntime(
            config,
            gateway_instance_id=gateway_instance_id,
            lease_store=lease_store,
            wrapper_root=wrapper_root,
            nursery=nursery,
            **kwargs,
        )
        try:
            yield runtime
        finally:
            await runtime.aclose()
            nursery.cancel_scope.cancel()
