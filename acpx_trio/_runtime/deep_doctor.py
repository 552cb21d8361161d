"""``doctor --deep``: open and close a real session with the probe agent.

Initialize alone says OK for agents that cannot open a session (not logged in, adapter
crashing at ``session/new``); the deep probe runs the whole set-up — spawn, ``initialize``,
``authenticate``, ``session/new`` — then closes the session, kills the agent and forgets the
record.  A failure becomes a failed :class:`DoctorReport` whose ``code`` is the typed reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

import msgspec
import trio

from acpx_trio._errors import AcpRuntimeError
from acpx_trio._events import AcpRuntimeHandle, DoctorReport

__all__ = ["DEEP_PROBE_KEY_PREFIX", "deep_probe"]

DEEP_PROBE_KEY_PREFIX = "openclaw:acpx:probe:deep:"


class _Sessions(Protocol):
    """What the deep probe needs of the runtime."""

    async def ensure_session(
        self, *, session_key: str, agent: str, mode: Literal["persistent", "oneshot"] = ...,
    ) -> AcpRuntimeHandle: ...

    async def close(
        self, *, handle: AcpRuntimeHandle, reason: str = ..., discard_persistent_state: bool = ...
    ) -> None: ...


async def deep_probe(
    runtime: _Sessions, forget: Callable[[str], Awaitable[object]], name: str,
    report: DoctorReport,
) -> DoctorReport:
    """``report`` extended with the session check (see the module docstring); ``forget``
    deletes the probe's session record afterwards."""
    key = f"{DEEP_PROBE_KEY_PREFIX}{uuid.uuid4().hex[:12]}"
    start = trio.current_time()
    try:
        handle = await runtime.ensure_session(session_key=key, agent=name, mode="oneshot")
        await runtime.close(handle=handle, reason="doctor --deep", discard_persistent_state=True)
    except AcpRuntimeError as exc:
        return DoctorReport(
            ok=False, code=exc.code, message=exc.message,
            install_command=report.install_command,
            details=[*report.details, f"session=failed {exc.code}",
                     *([f"detail={exc.detail}"] if exc.detail else [])],
        )
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await forget(key)
    seconds = trio.current_time() - start
    return msgspec.structs.replace(
        report, message="embedded ACP runtime ready (session opened and closed)",
        details=[*report.details, f"session=ok {seconds:.2f}s"],
    )
