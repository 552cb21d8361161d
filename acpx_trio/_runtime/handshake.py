"""ACP handshake (``initialize``, ``session/load`` or ``session/new``), control calls and the
doctor probe.  Every call here has a deadline; failures are typed :class:`AcpRuntimeError`\\ s
that carry the agent's stderr tail."""

from __future__ import annotations

import os
import re
from typing import Literal

import trio

from acpx_trio._acp import (
    PROTOCOL_VERSION,
    AcpConnection,
    ClientCapabilities,
    EnvVariable,
    FileSystemCapability,
    HttpHeader,
    Implementation,
    InitializeRequest,
    InitializeResponse,
    LoadSessionRequest,
    LoadSessionResponse,
    McpCapabilities,
    McpServer,
    McpServerHttp,
    McpServerSse,
    McpServerStdio,
    NewSessionRequest,
    NewSessionResponse,
)
from acpx_trio._errors import (
    MIN_SECRET_LENGTH,
    REDACTED,
    AcpConnectionClosedError,
    AcpProtocolError,
    AcpRuntimeError,
    AgentProcessError,
    collapse_group,
    number_holds_secret,
)
from acpx_trio._process.agent import AgentProcess, AgentSpawn
from acpx_trio._runtime.agents import AgentSpec
from acpx_trio._runtime.auth import auth_required_error, is_auth_required
from acpx_trio._runtime.config_opts import legacy_models
from acpx_trio._runtime.live_session import LiveSession
from acpx_trio._runtime.permissions import PermissionPolicy, WorkDir, work_dir
from acpx_trio._runtime.session_factory import SessionFactory
from acpx_trio._runtime.session_steps import (
    agent_env,
    authenticate_agent,
    close_acp_session,
    prepare_codex_home,
    resume_session,
)
from acpx_trio._runtime.terminals import TerminalManager
from acpx_trio._store.config import AcpxConfig
from acpx_trio._store.transcript import config_credentials
from acpx_trio._version import __version__

__all__ = [
    "PROBE_SESSION_KEY",
    "agent_env",
    "authenticate_agent",
    "close_acp_session",
    "initialize_agent",
    "initialize_request",
    "is_load_not_found",
    "make_agent_process",
    "open_acp_session",
    "resolve_dir",
    "start_live_session",
]

PROBE_SESSION_KEY = "openclaw:acpx:probe"
_NOT_FOUND_CODES = frozenset({-32002, -32001, -32601})
#: One clause: no sentence or clause break (a ``.``, ``;``, ``:`` or ``,`` followed by a
#: space) within it; an id such as ``ses_1.2`` or ``a:b`` stays inside.
_CLAUSE = r"(?:(?![.;:,]\s).)"
#: Texts that say the *session* (a codex thread, its rollout) is unknown, or loading
#: unsupported: a hint counts only next to the word within one clause ("Session not found:
#: x", "No previous sessions found", "unknown session", "loadSession is not supported",
#: codex's "thread not found: x" and "no rollout found for thread id x", gemini's "Invalid
#: session identifier"), never "ripgrep binary not found".
_NOT_FOUND_TEXT = re.compile(
    r"\b(?:unknown|no such|no previous|no|could not find|invalid)\s+(?:sessions?|threads?)"
    r"\b"
    rf"|\b(?:sessions?|threads?)\b{_CLAUSE}{{0,60}}?\b(?:not found|does not exist|"
    r"not supported)"
    rf"|\bload\s*session\b{_CLAUSE}{{0,30}}?\bnot supported"
    rf"|\bno rollout found for thread\b",
    re.IGNORECASE)


def _version() -> str:
    """The package version (no ``importlib.metadata``: it costs ~10 ms at start-up)."""
    return __version__


def initialize_request(*, fs: bool = True, terminal: bool = True) -> InitializeRequest:
    """Protocol version 1; fs read/write and terminal capabilities unless turned off (config
    ``fs``/``terminal``, ``--no-fs``/``--no-terminal``)."""
    return InitializeRequest(
        protocol_version=PROTOCOL_VERSION,
        client_capabilities=ClientCapabilities(
            fs=FileSystemCapability(read_text_file=fs, write_text_file=fs), terminal=terminal,
            elicitation={"form": {}, "url": {}},
            session={"configOptions": {"boolean": {}}},
        ),
        client_info=Implementation(name="acpx-trio", version=_version()),
    )


def is_load_not_found(exc: AcpRuntimeError) -> bool:
    """Whether a ``session/load`` error proves the session is unknown to the agent (the only
    case where falling back to ``session/new`` cannot lose a conversation)."""
    if isinstance(exc, AcpConnectionClosedError | AcpProtocolError):
        return False
    if exc.rpc_code in _NOT_FOUND_CODES:
        return True
    return _NOT_FOUND_TEXT.search(f"{exc.message} {exc.rpc_data!r}") is not None


def _tail(proc: AgentProcess | None) -> str:
    tail = proc.stderr_tail().strip() if proc is not None else ""
    return f"\n--- agent stderr (tail) ---\n{tail[-4000:]}" if tail else ""


def _tail_detail(proc: AgentProcess | None) -> str | None:
    """The last lines of the agent's (redacted) stderr, for ``detail``."""
    tail = proc.stderr_tail().strip() if proc is not None else ""
    return "\n".join(tail[-2000:].splitlines()[-10:]) or None


def _mcp_servers(config: AcpxConfig, caps: McpCapabilities) -> list[McpServer]:
    """The configured MCP servers as the agent takes them.  An ``http`` / ``sse`` server for an
    agent that does not advertise that transport is ``ACP_MCP_TRANSPORT_UNSUPPORTED`` naming
    the server (never dropped silently: the session would lack a tool the user expects)."""
    servers: list[McpServer] = []
    for s in config.mcp_servers:
        if s.type == "stdio":
            servers.append(McpServerStdio(
                name=s.name, command=s.command, args=list(s.args),
                env=[EnvVariable(name=k, value=v) for k, v in s.env]))
            continue
        if not (caps.http if s.type == "http" else caps.sse):
            raise AcpRuntimeError(
                "ACP_MCP_TRANSPORT_UNSUPPORTED",
                f"MCP server {s.name!r} uses {s.type}, which this agent does not support "
                f"(it does not advertise mcpCapabilities.{s.type}); remove it from "
                "mcpServers or use a stdio server")
        headers = [HttpHeader(name=k, value=v) for k, v in s.headers]
        cls = McpServerHttp if s.type == "http" else McpServerSse
        servers.append(cls(type=s.type, name=s.name, url=s.url or "", headers=headers))
    return servers


async def initialize_agent(connection: AcpConnection, config: AcpxConfig) -> InitializeResponse:
    """``initialize`` with the capabilities ``config`` allows (:func:`initialize_request`),
    bounded by ``config.control_timeout_seconds`` (``trio.TooSlowError`` past it: the caller
    names the step).  An agent answering another protocol version than 1:
    ``ACP_SESSION_INIT_FAILED``; an error answer or a dead agent: as
    :meth:`AcpConnection.request`."""
    with trio.fail_after(config.control_timeout_seconds):
        init = await connection.request(
            "initialize", initialize_request(fs=config.fs, terminal=config.terminal),
            InitializeResponse,
        )
    if init.protocol_version != PROTOCOL_VERSION:
        hidden = number_holds_secret(init.protocol_version, connection.redact_secrets)
        shown = REDACTED if hidden else init.protocol_version  # a credential of digits
        raise AcpRuntimeError(
            "ACP_SESSION_INIT_FAILED",
            f"the agent answered ACP protocol version {shown}; acpx-trio "
            f"supports only version {PROTOCOL_VERSION}",
        )
    return init


def resolve_dir(base: str, cwd: str | None) -> WorkDir | None:
    """``cwd`` made absolute against ``base``, with the identity of the directory it names
    now (every file and terminal request of a session started there is refused once it
    names another); ``None`` if it is not a directory (blocking)."""
    return work_dir(os.path.normpath(os.path.join(base, cwd or base)))


def make_agent_process(
    factory: SessionFactory, session_key: str, spec: AgentSpec, cwd: str,
    live: LiveSession | None = None,
) -> AgentProcess:
    """An (unstarted) agent process configured from ``factory`` (wired to ``live``)."""
    env, plan = agent_env(factory.config, spec)
    if plan.too_short:  # named, never shown: it cannot be redacted from what the agent says
        factory.log.warning("credential %s is shorter than %d characters: it is handed to the "
                            "agent but cannot be redacted from transcripts and output",
                            ", ".join(plan.too_short), MIN_SECRET_LENGTH)
    # what the agent holds: its auth plan, config ``auth``, credential-like owner variables
    # and the credentials of the MCP servers it is handed
    secrets = tuple(dict.fromkeys([*plan.secrets, *config_credentials(factory.config)]))

    def wire(connection: AcpConnection) -> None:
        connection.redact_secrets = secrets  # errors the agent answers never carry them
        if live is not None:
            live.install(connection)

    spawn = AgentSpawn(
        argv=tuple(spec.command), cwd=cwd, session_key=session_key,
        gateway_instance_id=factory.gateway_instance_id,
        kill_grace=factory.config.kill_grace_seconds, install_hint=spec.install_hint(),
        containment=factory.config.containment,
    )
    return AgentProcess(
        spawn, lease_store=factory.lease_store, cleanup_deps=factory.process_cleanup,
        on_connection=wire, receive_gate=None if live is None else live.wait_room,
        logger=factory.log, extra_env=env, secrets=secrets, spare_leaves=factory.spare_leaves,
    )


async def start_live_session(
    factory: SessionFactory, key: str, spec: AgentSpec, mode: Literal["persistent", "oneshot"],
    cwd: WorkDir, load_id: str | None,
) -> LiveSession:
    """Spawn the agent in the factory's nursery and open its ACP session.

    On any failure (or cancellation) the agent is killed before the error propagates; a spawn
    failure raises ``ACP_AGENT_SPAWN_FAILED``."""
    policy = PermissionPolicy(
        factory.config.permission_mode, factory.config.non_interactive_permissions
    )
    spec = await factory.agents.prefer_installed(spec)
    if factory.config.codex_home and spec.name == "codex":  # else a no-op: skip the hop
        await trio.to_thread.run_sync(prepare_codex_home, factory.config, spec)
    session = LiveSession(
        session_key=key, spec=spec, mode=mode, cwd=cwd, policy=policy,
        on_turn_failure=factory.on_turn_failure, logger=factory.log,
    )
    proc = make_agent_process(factory, key, spec, cwd.path, session)
    session.process = proc
    session.elicitation_handler = factory.elicitation_handler
    session.fs_enabled = factory.config.fs
    session.terminals = None if not factory.config.terminal else TerminalManager(
        session_key=key, cwd=cwd, policy=policy, nursery=factory.nursery,
        gateway_instance_id=factory.gateway_instance_id, lease_store=factory.lease_store,
        kill_grace=factory.config.kill_grace_seconds,
        cleanup_deps=factory.process_cleanup, on_turn_failure=session.fail_turn,
        logger=factory.log,
        output_budget=factory.config.terminal_output_max_bytes,
        containment=factory.config.containment, secrets=proc.secrets,
    )
    # a runtime shut down meanwhile takes no new agent (and a cancelled caller, whose cancel
    # may be what shut it down, sees its cancel); no schedule point from here to the start
    await trio.lowlevel.checkpoint_if_cancelled()
    factory.check_open()
    try:
        await factory.nursery.start(proc.run)
    except (AgentProcessError, BaseExceptionGroup) as caught:
        # a cancel that lands as the agent starts comes out of its own nursery as a group
        exc = collapse_group(caught)
        if isinstance(exc, AgentProcessError):
            raise AcpRuntimeError(exc.code, exc.message) from exc
        raise exc from None
    try:
        await open_acp_session(session, factory.config, load_id=load_id)
        await proc.wait_recorded()
    except BaseException:
        with trio.CancelScope(shield=True):
            await proc.aclose("handshake failed")
        raise
    return session


async def open_acp_session(
    session: LiveSession, config: AcpxConfig, *, load_id: str | None
) -> None:
    """``initialize``, ``authenticate`` (first advertised method with a credential, see
    :mod:`.auth`), then — when ``load_id`` is given — ``session/resume`` (if advertised; on
    failure go on), ``session/load`` (if supported; falls back to ``session/new`` only on a
    not-found answer), else ``session/new``.  Fills in the session's id, capabilities, modes
    and config options.  An auth-required answer raises ``ACP_AUTH_REQUIRED``.

    Each step is bounded by ``config.control_timeout_seconds``.  Raises
    ``ACP_SESSION_INIT_FAILED`` (with the stderr tail) on a timeout, an agent error, a protocol
    version other than 1, or an agent that died; the caller kills the agent."""
    timeout = config.control_timeout_seconds
    conn = session.connection
    step = "initialize"
    try:
        init = session.init = await initialize_agent(conn, config)
        step = "authenticate"
        session.auth_method = await authenticate_agent(
            conn, init.auth_methods, config, session.spec, timeout, session.log)
        caps = init.agent_capabilities
        mcp = _mcp_servers(config, caps.mcp_capabilities)
        if load_id and caps.session_capabilities.resume is not None:
            step = "session/resume"
            if await resume_session(session, load_id, mcp, timeout):
                return
        if load_id and caps.load_session:
            step = "session/load"
            session.backend_session_id = load_id  # replayed updates: tracked, never turn events
            try:
                with trio.fail_after(timeout):
                    loaded = await conn.request(
                        "session/load",
                        LoadSessionRequest(session_id=load_id, cwd=session.cwd, mcp_servers=mcp),
                        LoadSessionResponse,
                    )
            except AcpRuntimeError as exc:
                if not is_load_not_found(exc):
                    raise
                session.log.info(
                    "agent does not know ACP session %s (%s); starting a new one",
                    load_id, exc.message,
                )
                session.backend_session_id = None
            else:
                session.modes = loaded.modes
                session.config_options = loaded.config_options
                session.models = legacy_models(loaded.models)
                if loaded.modes is not None:
                    session.current_mode = loaded.modes.current_mode_id
                return
        step = "session/new"
        with trio.fail_after(timeout):
            created = await conn.request(
                "session/new", NewSessionRequest(cwd=session.cwd, mcp_servers=mcp),
                NewSessionResponse,
            )
        session.backend_session_id = created.session_id
        session.modes = created.modes
        session.config_options = created.config_options
        session.models = legacy_models(created.models)
        if created.modes is not None:
            session.current_mode = created.modes.current_mode_id
    except trio.TooSlowError as exc:
        raise AcpRuntimeError(
            "ACP_SESSION_INIT_FAILED",
            f"the agent did not answer {step} within {timeout:g}s{_tail(session.process)}",
            retryable=True, detail=_tail_detail(session.process),
        ) from exc
    except AcpRuntimeError as exc:
        if exc.code in ("ACP_AUTH_REQUIRED", "ACP_MCP_TRANSPORT_UNSUPPORTED"):
            raise
        methods = [] if session.init is None else session.init.auth_methods
        if is_auth_required(exc):
            raise auth_required_error(
                methods, exc, session.spec.name, session.spec.command
            ) from exc
        if exc.code == "ACP_SESSION_INIT_FAILED":
            raise AcpRuntimeError(
                exc.code, exc.message + _tail(session.process),
                detail=exc.detail or _tail_detail(session.process),
            ) from exc
        proc = session.process
        detail = ""
        if isinstance(exc, AcpConnectionClosedError) and proc is not None:
            with trio.move_on_after(1.0):
                await proc.exited.wait()
            detail = f" ({proc.describe_exit()})"
        raise AcpRuntimeError(
            "ACP_SESSION_INIT_FAILED",
            f"ACP {step} failed: {exc.message}{detail}{_tail(proc)}",
            retryable=isinstance(exc, AcpConnectionClosedError),
            rpc_code=exc.rpc_code,
            rpc_data=exc.rpc_data,
            detail=exc.detail or _tail_detail(proc),
        ) from exc
