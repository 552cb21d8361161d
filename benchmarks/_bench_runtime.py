"""The runtime side shared by the benchmarks: an ``AcpxRuntime`` on a throw-away state dir,
and one streamed turn counted chunk by chunk (through ``run_turn`` or ``run_turn_batches``)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from acpx_trio._events import AcpRuntimeHandle, DoneEvent, ErrorEvent, TextDeltaEvent
from acpx_trio._runtime.open_runtime import open_acpx_runtime
from acpx_trio._runtime.runtime import AcpxRuntime
from acpx_trio._store.config import resolve_config
from acpx_trio._store.leases import LeaseStore

__all__ = ["bench_runtime", "stream_chunks"]


@contextlib.asynccontextmanager
async def bench_runtime(root: Path, containment: str = "auto") -> AsyncIterator[AcpxRuntime]:
    """A runtime whose workspace is ``root/ws`` (created) and whose state lives under
    ``root``, with a gateway id of its own and the given ``containment``; every agent is gone
    on exit."""
    (root / "ws").mkdir(exist_ok=True)
    config = resolve_config({"stateDir": str(root / "state"), "containment": containment},
                            str(root / "ws"))
    async with open_acpx_runtime(
        config, gateway_instance_id=f"bench-{uuid.uuid4().hex[:8]}",
        lease_store=LeaseStore(root / "leases"),
    ) as rt:
        yield rt


async def stream_chunks(
    rt: AcpxRuntime, handle: AcpRuntimeHandle, chunks: int, *, batches: bool
) -> None:
    """Run ``/chunks N`` on ``handle`` to its end; raises if the turn fails or the number of
    text chunks is not ``chunks``."""
    count = 0
    text = f"/chunks {chunks}"
    if batches:
        async with contextlib.aclosing(rt.run_turn_batches(handle=handle, text=text)) as stream:
            async for batch in stream:
                for event in batch:
                    if type(event) is TextDeltaEvent:
                        count += 1
                    elif isinstance(event, ErrorEvent):
                        raise RuntimeError(event.message)
    else:
        async with contextlib.aclosing(rt.run_turn(handle=handle, text=text)) as events:
            async for event in events:
                if type(event) is TextDeltaEvent:
                    count += 1
                elif isinstance(event, ErrorEvent):
                    raise RuntimeError(event.message)
                elif isinstance(event, DoneEvent):
                    break
    assert count == chunks, count
