"""The doctor probes: :func:`doctor_probe` (start the agent as a session would, run
``initialize``, stop it) and, for ``doctor --deep``, :func:`deep_probe` (open and close a real
session with the probe agent).

Initialize alone says OK for agents that cannot open a session (not logged in, adapter
crashing at ``session/new``); the deep probe runs the whole set-up — spawn, ``initialize``,
``authenticate``, ``session/new`` — then closes the session, kills the agent and forgets the
record.  A failure becomes a failed :class:`DoctorReport` whose ``code`` is the typed reason.
"""

from __future__ import annotations

import shlex
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

import msgspec
import trio

from acpx_trio._errors import (
    AcpConnectionClosedError,
    AcpRuntimeError,
    AcpxError,
    collapse_group,
    redact_argv,
)
from acpx_trio._events import AcpRuntimeHandle, DoctorReport
from acpx_trio._process.agent import AgentProcess
from acpx_trio._runtime.handshake import (
    PROBE_SESSION_KEY,
    initialize_agent,
    make_agent_process,
)
from acpx_trio._runtime.session_factory import SessionFactory
from acpx_trio._runtime.session_steps import auth_details
from acpx_trio._store.transcript import config_credentials

__all__ = ["DEEP_PROBE_KEY_PREFIX", "deep_probe", "doctor_probe"]

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


async def doctor_probe(factory: SessionFactory, name: str) -> DoctorReport:
    """Start agent ``name`` exactly as a session would (the same installed-binary preference:
    :meth:`~acpx_trio._runtime.agents.AgentRegistry.prefer_installed`), run ``initialize``
    under the control deadline, stop it.  The details name the program that ran
    (``path=``) and, when the agent dies before answering, how it ended (``exit=``) and its
    redacted stderr tail (``stderr:``)."""
    fail = "embedded ACP runtime probe failed"
    try:
        spec = factory.agents.resolve(name)
    except AcpRuntimeError as exc:
        return DoctorReport(ok=False, code="ACP_BACKEND_UNAVAILABLE", message=fail,
                            details=[f"agent={name}", exc.message])
    spec = await factory.agents.prefer_installed(spec)
    cwd = factory.config.cwd
    # the command as shown: a credential in its arguments reads [redacted]
    secrets = config_credentials(factory.config)
    details: list[Any] = [f"agent={spec.name}",
                          f"command={shlex.join(redact_argv(spec.command, secrets))}",
                          f"cwd={cwd}"]
    if not await factory.agents.check_installed(spec):
        return DoctorReport(
            ok=False, code="ACP_BACKEND_UNAVAILABLE", message=fail,
            install_command=spec.install_command,
            details=[*details, f'"{spec.launcher}" was not found on PATH', spec.install_hint()],
        )
    path = await trio.to_thread.run_sync(factory.agents.program_path, spec.launcher)
    details.append(f"path={path or spec.launcher}")
    timeout = factory.config.control_timeout_seconds
    proc = make_agent_process(factory, PROBE_SESSION_KEY, spec, cwd)
    problem: str
    exit_text: str | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(proc.run)
                assert proc.connection is not None
                init = await initialize_agent(proc.connection, factory.config)
                info = init.agent_info
                return DoctorReport(
                    ok=True, message="embedded ACP runtime ready",
                    details=[*details, f"protocolVersion={init.protocol_version}",
                             *auth_details(init.auth_methods, factory.config, spec.name,
                                           spec.command),
                             *([f"agentInfo={info.name} {info.version}".strip()] if info
                               else [])],
                )
            except trio.TooSlowError:
                problem = f"the agent did not answer initialize within {timeout:g}s"
            except AcpxError as exc:  # a lease store that cannot write (disk full) included
                problem = exc.message
                if isinstance(exc, AcpConnectionClosedError):
                    exit_text = await _await_exit(proc)
            except BaseExceptionGroup as group:  # the agent's own nursery wraps its start errors
                first = collapse_group(group)
                if not isinstance(first, AcpxError):
                    raise first from None
                problem = first.message
                if isinstance(first, AcpConnectionClosedError):
                    exit_text = await _await_exit(proc)
            finally:
                with trio.CancelScope(shield=True):
                    await proc.aclose("probe finished")
    except BaseExceptionGroup as group:  # a cancel (or a bug) out of the probe's nursery: one
        raise collapse_group(group) from None
    tail = proc.stderr_tail().strip()
    extra = [f"exit={exit_text}"] if exit_text else []
    extra += [f"stderr: {tail[-2000:]}"] if tail else []
    return DoctorReport(
        ok=False, code="ACP_BACKEND_UNAVAILABLE", message=fail,
        install_command=spec.install_command, details=[*details, problem, *extra],
    )


async def _await_exit(proc: AgentProcess) -> str:
    """How the agent ended, once its output closed: its exit is awaited for a moment (an
    agent that closed its output but lives on is described as such)."""
    with trio.move_on_after(1.0):
        await proc.exited.wait()
    return proc.describe_exit()
