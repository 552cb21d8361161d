"""The agent's own sessions (``session/list``): start the agent, page through, stop it."""

from __future__ import annotations

import trio

from acpx_trio._acp import InitializeResponse, ListSessionsRequest, ListSessionsResponse
from acpx_trio._errors import AcpRuntimeError, AcpxError, collapse_group
from acpx_trio._events import AgentSession
from acpx_trio._runtime.handshake import initialize_request, make_agent_process
from acpx_trio._runtime.session_factory import SessionFactory

__all__ = ["list_agent_sessions"]

#: Bound on pages followed, against an agent whose cursor never ends.
MAX_PAGES = 1000


async def list_agent_sessions(
    factory: SessionFactory, name: str, cwd: str | None
) -> list[AgentSession]:
    """Every session agent ``name`` lists (all pages), filtered by ``cwd`` when given.

    Raises ``ACP_BACKEND_UNSUPPORTED_CONTROL`` when the agent does not advertise
    ``sessionCapabilities.list``, ``ACP_CONTROL_TIMEOUT`` when a call exceeds the control
    timeout, ``ACP_CONTROL_FAILED`` for any other failure.  The agent is always stopped."""
    spec = factory.agents.resolve(name)
    timeout = factory.config.control_timeout_seconds
    proc = make_agent_process(factory, "agent-session-list", spec, cwd or factory.config.cwd)
    try:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(proc.run)
                connection = proc.connection
                assert connection is not None
                with trio.fail_after(timeout):
                    init = await connection.request(
                        "initialize", initialize_request(), InitializeResponse
                    )
                if init.agent_capabilities.session_capabilities.list_sessions is None:
                    raise AcpRuntimeError(
                        "ACP_BACKEND_UNSUPPORTED_CONTROL",
                        f"agent {spec.name} does not support session/list",
                    )
                found: list[AgentSession] = []
                cursor: str | None = None
                for _ in range(MAX_PAGES):
                    with trio.fail_after(timeout):
                        page = await connection.request(
                            "session/list", ListSessionsRequest(cwd=cwd, cursor=cursor),
                            ListSessionsResponse,
                        )
                    found.extend(
                        AgentSession(session_id=s.session_id, cwd=s.cwd, title=s.title,
                                     updated_at=s.updated_at)
                        for s in page.items()
                    )
                    cursor = page.next_cursor
                    if not cursor:
                        break
                return found
            finally:
                with trio.CancelScope(shield=True):
                    await proc.aclose("session list finished")
    except trio.TooSlowError as exc:
        raise AcpRuntimeError("ACP_CONTROL_TIMEOUT",
                              f"agent {spec.name} did not answer within {timeout:g}s",
                              retryable=True) from exc
    except BaseExceptionGroup as group:
        first = collapse_group(group)
        if isinstance(first, AcpRuntimeError):
            raise first from None
        if isinstance(first, AcpxError):
            raise AcpRuntimeError("ACP_CONTROL_FAILED",
                                  f"session/list failed: {first.message}") from None
        raise first from None
    except AcpRuntimeError:
        raise
    except AcpxError as exc:
        raise AcpRuntimeError("ACP_CONTROL_FAILED",
                              f"session/list failed: {exc.message}") from exc
