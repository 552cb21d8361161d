"""``doctor --deep``: open and close a real session with the probe agent.

Initialize alone says OK for agents that cannot open a session (not logged in, adapter
crashing at ``session/new``); the deep probe runs the whole set-up — spawn, ``initialize``,
``authenticate``, ``session/new`` — then closes the session, kills the agent and forgets the
record.  A failure becomes a failed :class:`DoctorReport` whose ``code`` is the typed reason.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import msgspec
import trio

from acpx_trio._errors import AcpRuntimeError
from acpx_trio._events import DoctorReport

if TYPE_CHECKING:
    from acpx_trio._runtime.runtime import AcpxRuntime

__all__ = ["DEEP_PROBE_KEY_PREFIX", "deep_probe"]

DEEP_PROBE_KEY_PREFIX = "openclaw:acpx:probe:deep:"


async def deep_probe(runtime: AcpxRuntime, name: str, report: DoctorReport) -> DoctorReport:
    """``report`` extended with the session check (see the module docstring)."""
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
            await runtime.session_store.delete(key)
    seconds = trio.current_time() - start
    return msgspec.structs.replace(
        report, message="embedded ACP runtime ready (session opened and closed)",
        details=[*report.details, f"session=ok {seconds:.2f}s"],
    )
