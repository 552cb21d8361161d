"""Session set-up steps beyond the basic handshake: the agent's extra environment
(credentials, ``CODEX_HOME``), ``authenticate``, ``session/resume``, ``session/close`` and the
auth lines of the doctor report.  Every agent call here has a deadline."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import trio

from acpx_trio._acp import (
    AcpConnection,
    AuthenticateRequest,
    AuthMethod,
    CloseSessionRequest,
    EmptyResponse,
    McpServer,
    ResumeSessionRequest,
    ResumeSessionResponse,
)
from acpx_trio._errors import AcpConnectionClosedError, AcpProtocolError, AcpRuntimeError
from acpx_trio._log import Logger
from acpx_trio._runtime.agents import AgentSpec
from acpx_trio._runtime.auth import (
    AuthPlan,
    auth_required_error,
    choose_method,
    describe_method,
    find_credential,
    is_auth_required,
    spawn_env,
)
from acpx_trio._runtime.config_opts import legacy_models
from acpx_trio._runtime.live_session import LiveSession
from acpx_trio._store.config import AcpxConfig

__all__ = [
    "SESSION_CLOSE_SECONDS",
    "agent_env",
    "auth_details",
    "authenticate_agent",
    "close_acp_session",
    "prepare_codex_home",
    "resume_session",
]

#: Bound on ``session/close`` when a session is retired (the agent is killed right after).
SESSION_CLOSE_SECONDS = 2.0


def agent_env(config: AcpxConfig, spec: AgentSpec) -> tuple[dict[str, str], AuthPlan]:
    """Extra environment for spawning ``spec``: credentials (see :mod:`.auth`) and, for the
    ``codex`` agent with ``codexHome`` set, ``CODEX_HOME``.  Plus the auth plan (secrets)."""
    plan = spawn_env(os.environ, config.auth, spec.auth_methods, spec.name)
    env = dict(plan.env)
    if config.codex_home and spec.name == "codex":
        env["CODEX_HOME"] = config.codex_home
    return env, plan


def prepare_codex_home(config: AcpxConfig, spec: AgentSpec) -> None:
    """Create ``codexHome`` (mode 0700) for the codex agent; blocking."""
    if config.codex_home and spec.name == "codex":
        os.makedirs(config.codex_home, mode=0o700, exist_ok=True)
        os.chmod(config.codex_home, 0o700)



async def authenticate_agent(
    connection: AcpConnection, methods: Sequence[AuthMethod], config: AcpxConfig,
    spec: AgentSpec, deadline: float, log: Logger,
) -> str | None:
    """``authenticate`` with the first advertised method that has a credential; returns its
    id, or ``None`` when the agent advertises none or (``authPolicy`` ``skip``, the default)
    no credential matches.

    Raises ``ACP_AUTH_REQUIRED`` when the agent rejects it, or when no credential matches and
    ``authPolicy`` is ``fail``."""
    if not methods:
        await trio.lowlevel.checkpoint()
        return None
    agent, command = spec.name, spec.command
    method = choose_method(methods, os.environ, config.auth, agent)
    if method is None:
        if config.auth_policy == "fail":
            raise auth_required_error(methods, agent=agent, command=command)
        log.debug(
            "agent advertises auth methods %s; no credential found (authPolicy skip)",
            [m.id for m in methods],
        )
        await trio.lowlevel.checkpoint()
        return None
    try:
        with trio.fail_after(deadline):
            await connection.request(
                "authenticate", AuthenticateRequest(method_id=method.id), EmptyResponse
            )
    except (AcpConnectionClosedError, AcpProtocolError):
        raise
    except AcpRuntimeError as exc:
        raise auth_required_error(methods, exc, agent, command) from exc
    log.debug("authenticated with auth method %s", method.id)
    return method.id


async def resume_session(
    session: LiveSession, load_id: str, mcp: list[McpServer], deadline: float
) -> bool:
    """``session/resume``; False when the agent could not resume (then load/new is tried)."""
    try:
        with trio.fail_after(deadline):
            resumed = await session.connection.request(
                "session/resume",
                ResumeSessionRequest(session_id=load_id, cwd=session.cwd, mcp_servers=mcp),
                ResumeSessionResponse,
            )
    except (AcpConnectionClosedError, AcpProtocolError):
        raise
    except AcpRuntimeError as exc:
        if is_auth_required(exc):
            raise
        session.log.info("agent could not resume ACP session %s (%s)", load_id, exc.message)
        return False
    session.backend_session_id = load_id
    session.modes = resumed.modes
    session.config_options = resumed.config_options
    session.models = legacy_models(resumed.models)
    if resumed.modes is not None:
        session.current_mode = resumed.modes.current_mode_id
    return True


async def close_acp_session(session: LiveSession) -> None:
    """Release the session's terminals and, when the agent advertises
    ``sessionCapabilities.close`` and is alive, send ``session/close`` (bounded by
    :data:`SESSION_CLOSE_SECONDS`; errors ignored).  Never raises except ``Cancelled``."""
    if session.terminals is not None:
        await session.terminals.aclose()
    init = session.init
    proc = session.process
    if (
        init is None or init.agent_capabilities.session_capabilities.close is None
        or session.backend_session_id is None or proc is None or not proc.alive
        or session.turn is not None  # a turn still running: the agent is being torn down
    ):
        return
    with trio.move_on_after(SESSION_CLOSE_SECONDS), contextlib.suppress(AcpRuntimeError):
        await session.connection.request(
            "session/close", CloseSessionRequest(session_id=session.backend_session_id),
            EmptyResponse,
        )



def auth_details(
    methods: list[AuthMethod], config: AcpxConfig, agent: str | None = None,
    command: Sequence[str] = (),
) -> list[str]:
    """``authMethods=a,b``, one ``credential:<method>=<where>`` per method with a credential
    (where: an env var name or ``config auth[m]``; never the value) and one
    ``authHow:<method>=<what satisfies it>`` per method (variables to set, or the login to
    run in a terminal)."""
    if not methods:
        return []
    out = [f"authMethods={','.join(m.id for m in methods)}"]
    for method in methods:
        found = find_credential(method.id, os.environ, config.auth, agent)
        if found is not None:
            out.append(f"credential:{method.id}={found[1]}")
    out += [f"authHow:{m.id}={describe_method(m, agent, command)}" for m in methods]
    return out


