"""Calls on an agent outside any session of ours (``session/list``, ``session/delete``,
``logout``): start the agent, initialize, authenticate (as a session would), check the
capability, call, stop it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from acpx_trio._acp import (
    AcpConnection,
    DeleteSessionRequest,
    EmptyResponse,
    InitializeResponse,
    ListSessionsRequest,
    ListSessionsResponse,
)
from acpx_trio._errors import AcpRuntimeError, AcpxError, collapse_group, redact
from acpx_trio._events import AgentSession
from acpx_trio._runtime.handshake import initialize_agent, make_agent_process
from acpx_trio._runtime.session_factory import SessionFactory
from acpx_trio._runtime.session_steps import authenticate_agent

__all__ = ["delete_agent_session", "list_agent_sessions", "logout_agent", "with_agent"]

_T = TypeVar("_T")

#: Bound on pages followed, against an agent whose cursor never ends.
MAX_PAGES = 1000


_Call = Callable[[AcpConnection, InitializeResponse], Awaitable[_T]]


async def with_agent(factory: SessionFactory, name: str, cwd: str | None, what: str,
                     call: _Call[_T]) -> _T:
    """Start agent ``name``, ``initialize`` and ``authenticate`` it (as a session would: the
    first advertised method with a credential; an agent that rejects it or, with ``authPolicy``
    ``fail``, no credential: ``ACP_AUTH_REQUIRED``), run ``call`` on its connection, stop it.

    Raises ``ACP_CONTROL_TIMEOUT`` when a call exceeds the control timeout (``call`` bounds
    each of its own requests by it), ``ACP_CONTROL_FAILED`` for any other failure that is not
    already an :class:`AcpRuntimeError`.  The agent is always stopped."""
    spec = factory.agents.resolve(name)
    timeout = factory.config.control_timeout_seconds
    proc = make_agent_process(factory, f"agent-{what.replace('/', '-')}", spec,
                              cwd or factory.config.cwd)
    try:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(proc.run)
                connection = proc.connection
                assert connection is not None
                init = await initialize_agent(connection, factory.config)
                await authenticate_agent(connection, init.auth_methods, factory.config, spec,
                                         timeout, factory.log)
                return await call(connection, init)
            finally:
                with trio.CancelScope(shield=True):
                    await proc.aclose(f"{what} finished")
    except BaseException as exc:  # a nursery wraps even one error: judge the one inside
        raise _control_error(collapse_group(exc), spec.name, what, timeout) from None


def _control_error(error: BaseException, name: str, what: str,
                   timeout: float) -> BaseException:
    """What :func:`with_agent` raises for ``error``: a deadline is ``ACP_CONTROL_TIMEOUT``,
    an :class:`AcpRuntimeError` itself, any other :class:`AcpxError`
    ``ACP_CONTROL_FAILED``; anything else (a cancel) as it is."""
    if isinstance(error, trio.TooSlowError):
        timed_out = AcpRuntimeError("ACP_CONTROL_TIMEOUT",
                                    f"agent {name} did not answer within {timeout:g}s",
                                    retryable=True)
        timed_out.__cause__ = error
        return timed_out
    if isinstance(error, AcpxError) and not isinstance(error, AcpRuntimeError):
        failed = AcpRuntimeError("ACP_CONTROL_FAILED", f"{what} failed: {error.message}")
        failed.__cause__ = error
        return failed
    return error


def _unsupported(name: str, method: str) -> AcpRuntimeError:
    return AcpRuntimeError("ACP_BACKEND_UNSUPPORTED_CONTROL",
                           f"agent {name} does not support {method}")


async def list_agent_sessions(
    factory: SessionFactory, name: str, cwd: str | None
) -> list[AgentSession]:
    """Every session agent ``name`` lists (all pages), filtered by ``cwd`` when given.

    Raises ``ACP_BACKEND_UNSUPPORTED_CONTROL`` when the agent does not advertise
    ``sessionCapabilities.list``; otherwise as :func:`with_agent`."""
    timeout = factory.config.control_timeout_seconds

    async def call(connection: AcpConnection, init: InitializeResponse) -> list[AgentSession]:
        if init.agent_capabilities.session_capabilities.list_sessions is None:
            raise _unsupported(name, "session/list")
        found: list[AgentSession] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            with trio.fail_after(timeout):
                page = await connection.request(
                    "session/list", ListSessionsRequest(cwd=cwd, cursor=cursor),
                    ListSessionsResponse,
                )
            secrets = connection.redact_secrets  # a title may echo a credential
            found.extend(
                AgentSession(session_id=s.session_id, cwd=s.cwd,
                             title=None if s.title is None else redact(s.title, secrets),
                             updated_at=s.updated_at)
                for s in page.items()
            )
            cursor = page.next_cursor
            if not cursor:
                break
        return found

    return await with_agent(factory, name, cwd, "session/list", call)


async def delete_agent_session(factory: SessionFactory, name: str, session_id: str) -> None:
    """``session/delete`` of ``session_id`` at agent ``name`` (a session it does not know is
    deleted silently, as the spec says).  ``ACP_BACKEND_UNSUPPORTED_CONTROL`` when the agent
    does not advertise ``sessionCapabilities.delete``; otherwise as :func:`with_agent`."""
    timeout = factory.config.control_timeout_seconds

    async def call(connection: AcpConnection, init: InitializeResponse) -> None:
        if init.agent_capabilities.session_capabilities.delete is None:
            raise _unsupported(name, "session/delete")
        with trio.fail_after(timeout):
            await connection.request("session/delete",
                                     DeleteSessionRequest(session_id=session_id), EmptyResponse)

    await with_agent(factory, name, None, "session/delete", call)


async def logout_agent(factory: SessionFactory, name: str) -> None:
    """``logout`` at agent ``name`` (it ends its authenticated state: the next session needs
    ``authenticate`` again).  ``ACP_BACKEND_UNSUPPORTED_CONTROL`` when the agent does not
    advertise ``agentCapabilities.auth.logout``; otherwise as :func:`with_agent`."""
    timeout = factory.config.control_timeout_seconds

    async def call(connection: AcpConnection, init: InitializeResponse) -> None:
        if init.agent_capabilities.auth.logout is None:
            raise _unsupported(name, "logout")
        with trio.fail_after(timeout):
            await connection.request("logout", EmptyResponse(), EmptyResponse)

    await with_agent(factory, name, None, "logout", call)
