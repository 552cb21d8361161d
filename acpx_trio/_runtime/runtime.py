"""``AcpxRuntime``: start ACP agents, run prompt turns, cancel, close — never leak a process.

Guarantees (beyond the :class:`~acpx_trio.AcpRuntimeProtocol` protocol):

* Every agent process runs as a task of the runtime's nursery; when that task ends for any
  reason (close, crash, protocol error, timeout, cancellation of the nursery) the agent's
  whole owned tree is killed and its lease finalised.
* A session is reused only while its agent process is verifiably alive; a dead one is replaced
  (``session/load`` of the recorded ACP session when the agent supports it), never waited on.
* Every handshake and control call is bounded by ``config.control_timeout_seconds``; turns by
  ``config.timeout_seconds`` when set; a cancel waits at most :data:`CANCEL_WAIT_SECONDS` for
  the agent before killing it.
* Errors are :class:`AcpRuntimeError` with a stable ``code``; turn failures arrive as a final
  :class:`ErrorEvent` instead.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Mapping
from pathlib import PurePath
from typing import Any, Literal

import msgspec
import trio

from acpx_trio._errors import AcpRuntimeError, collapse_group
from acpx_trio._events import (
    AcpRuntimeCapabilities,
    AcpRuntimeEvent,
    AcpRuntimeHandle,
    AcpRuntimeStatus,
    AgentSession,
    DoctorReport,
)
from acpx_trio._log import Logger
from acpx_trio._process.cgroup import Containment, lease_usage, resolve_containment
from acpx_trio._process.reaper import ProcessCleanupDeps
from acpx_trio._process.spare_leaf import SpareLeaves, runtime_pool
from acpx_trio._runtime.agent_sessions import (
    delete_agent_session,
    list_agent_sessions,
    logout_agent,
)
from acpx_trio._runtime.agents import AgentRegistry, normalize_agent_name
from acpx_trio._runtime.arguments import (
    agent_arg,
    checked_meta,
    close_args,
    config_option_args,
    handle_arg,
    optional_text_arg,
    runtime_args,
    text_arg,
    turn_args,
    validate_ensure_args,
)
from acpx_trio._runtime.controls import apply_config_option, apply_mode, apply_model
from acpx_trio._runtime.deep_doctor import deep_probe, doctor_probe
from acpx_trio._runtime.handshake import (
    close_acp_session,
    resolve_dir,
    start_live_session,
)
from acpx_trio._runtime.key_locks import KeyedLocks
from acpx_trio._runtime.live_session import ElicitationHandler, LiveSession
from acpx_trio._runtime.session_factory import SessionFactory
from acpx_trio._runtime.turns import CANCEL_WAIT_SECONDS, send_cancel, settle_abandoned, stream_turn
from acpx_trio._store.config import DEFAULT_PROBE_AGENT, AcpxConfig
from acpx_trio._store.leases import LeaseStore
from acpx_trio._store.sessions import SessionStore
from acpx_trio._store.transcript import config_credentials

__all__ = ["CANCEL_WAIT_SECONDS", "AcpxRuntime"]


class AcpxRuntime:
    """The embedded ACP runtime.  See the module docstring for guarantees.

    ``nursery`` hosts agent processes and turn drivers; it must outlive the runtime's use
    (close the runtime with :meth:`aclose` before the nursery ends; :func:`open_acpx_runtime`
    does both).  Not thread-safe: use it from one Trio run.  (``_spare_leaves`` is internal:
    the service's lazy runtime hands over the pool it started while this module loaded, and
    the runtime closes it as its own.)"""

    backend_id = "acpx"

    def __init__(
        self,
        config: AcpxConfig,
        *,
        gateway_instance_id: str,
        lease_store: LeaseStore,
        nursery: trio.Nursery,
        logger: Logger | None = None,
        process_cleanup: ProcessCleanupDeps | None = None,
        session_store: SessionStore | None = None,
        agent_registry: AgentRegistry | None = None,
        _spare_leaves: SpareLeaves | None = None,
    ) -> None:
        runtime_args(config, gateway_instance_id, lease_store)  # AcpxUsageError
        self.config = config
        self.gateway_instance_id = gateway_instance_id
        self.lease_store = lease_store
        self._nursery = nursery
        self.log: Logger = logger or logging.getLogger("acpx_trio.runtime")
        self.process_cleanup = process_cleanup
        self.session_store = session_store or SessionStore(config.state_dir, logger=self.log)
        self.agents = agent_registry or AgentRegistry(config.agents)
        self._sessions: dict[str, LiveSession] = {}
        #: Per-session-key locks, present only while someone holds or waits for one.
        self._key_locks = KeyedLocks()
        self._healthy = False
        self._closed = False
        self._closing_done = trio.Event()
        self._elicitation_handler: ElicitationHandler | None = None
        #: one launch kept inside its leaf cgroup ahead of need (cgroup containment)
        self._spare_leaves = _spare_leaves if _spare_leaves is not None else runtime_pool(
            nursery, containment=config.containment, gateway_instance_id=gateway_instance_id,
            lease_dir=lease_store.path.parent, log=self.log)
        self._factory = SessionFactory(
            config=config,
            gateway_instance_id=gateway_instance_id,
            lease_store=lease_store,
            nursery=nursery,
            agents=self.agents,
            log=self.log,
            process_cleanup=process_cleanup,
            on_turn_failure=self.on_turn_failure,
            elicitation_handler=lambda: self._elicitation_handler,
            spare_leaves=self._spare_leaves,
            check_open=self._check_open,
        )

    @property
    def containment(self) -> Containment:
        """The mechanism containing this runtime's agents and terminals (config
        ``containment``): ``"cgroup"`` with its path or ``"process-group"`` with the reason.
        Raises :class:`~acpx_trio.ContainmentError` for ``"cgroup"`` where it is unusable.
        (Probed once per process; :func:`~acpx_trio.open_acpx_runtime` does it in a worker
        thread, so that reading this never blocks.)"""
        return resolve_containment(self.config.containment)

    # ------------------------------------------------------------------ helpers

    def _check_open(self, cause: BaseException | None = None) -> None:
        if self._closed:  # chained to what the close cut off, if anything
            raise AcpRuntimeError("ACP_BACKEND_UNAVAILABLE", "ACP runtime is shut down.") from cause

    def _live(self, handle: AcpRuntimeHandle) -> LiveSession | None:
        """The live session ``handle`` names, or ``None``; ``ACP_INVALID_RUNTIME_OPTION`` for
        a handle that is not one (every method taking a handle comes here first)."""
        handle = handle_arg(handle)
        session = self._sessions.get(handle.session_key)
        if session is None or session.backend_session_id != handle.backend_session_id:
            return None
        return session

    def _require_live(self, handle: AcpRuntimeHandle) -> LiveSession:
        self._check_open()
        session = self._live(handle)
        if session is None or not session.alive:
            raise AcpRuntimeError(
                "ACP_SESSION_NOT_FOUND",
                f'ACP session "{handle.session_key}" is not running (closed, replaced or its '
                "agent died); call ensure_session again.",
                retryable=True,
            )
        return session

    @property
    def nursery(self) -> trio.Nursery:
        """Where agent processes and turn drivers run."""
        return self._nursery

    # No cancel point may come before the shielded kill (callers run it while cancelled).
    async def _retire(self, session: LiveSession, reason: str) -> None:  # noqa: ASYNC910
        """Kill the session's tree (lease final) and forget it.  Shielded and bounded."""
        if self._sessions.get(session.session_key) is session:
            del self._sessions[session.session_key]
        if session.turn is not None and session.turn.closed_reason is None:
            session.turn.closed_reason = reason
        with trio.CancelScope(shield=True):
            await close_acp_session(session)  # terminals released, session/close if advertised
            if session.process is not None:
                await session.process.aclose(reason)

    # ------------------------------------------------------------------ sessions

    async def ensure_session(
        self,
        *,
        session_key: str,
        agent: str,
        mode: Literal["persistent", "oneshot"] = "persistent",
        cwd: str | None = None,
        resume_session_id: str | None = None,
    ) -> AcpRuntimeHandle:
        """A handle to a live session for ``session_key``, starting an agent if needed.

        Reuses the live session when its agent is alive and agent/cwd/resume id match; else
        starts a new agent and loads the recorded (or ``resume_session_id``) ACP session when
        the agent supports it — falling back to a new session only if the agent says it does
        not know it — or creates a new one.  On any failure nothing keeps running.
        Raises ``ACP_SESSION_INIT_FAILED`` (an empty key or agent, a cwd that is no directory),
        ``ACP_INVALID_RUNTIME_OPTION`` (an unknown mode, or an argument that is not text: not
        a str, a lone surrogate UTF-8 cannot carry, a NUL in ``cwd``; nothing is started),
        ``ACP_AGENT_UNKNOWN``, ``ACP_AGENT_SPAWN_FAILED`` or ``ACP_BACKEND_UNAVAILABLE``."""
        self._check_open()
        key = validate_ensure_args(session_key, agent, mode)
        cwd = optional_text_arg("cwd", cwd, path=True)
        resume_session_id = optional_text_arg("resume_session_id", resume_session_id)
        spec = self.agents.resolve(agent)
        resolved = await trio.to_thread.run_sync(resolve_dir, self.config.cwd, cwd)
        if resolved is None:
            wanted = str(PurePath(self.config.cwd, cwd or ""))
            raise AcpRuntimeError(
                "ACP_SESSION_INIT_FAILED",
                f"ACP session cwd {wanted!r} is not a directory"
                + ("." if cwd is None else f" (cwd={cwd!r} under {self.config.cwd!r})."),
            )
        async with self._key_locks(key):
            if (live := self._sessions.get(key)) is not None:  # a turn left early: its cancel
                await settle_abandoned(live)  # (or its agent's kill) first, then reuse or not
            self._check_open()
            live = self._sessions.get(key)
            if live is not None and live.cwd == resolved.path and live.fs.cwd != resolved:
                # its path was given a new directory while the session ran (renamed away, a
                # symlink or another directory in its place): never followed by a restart
                raise AcpRuntimeError(
                    "ACP_SESSION_INIT_FAILED",
                    f"ACP session cwd {resolved.path!r} is no longer the directory session "
                    f"{key!r} started in (it was replaced while the session ran); close the "
                    "session to start anew there.",
                )
            if live is not None:
                reusable = (
                    live.alive
                    and not live.fresh_requested
                    and live.spec.name == spec.name
                    and live.fs.cwd == resolved  # same path, same directory (none put in its place)
                    and resume_session_id in (None, live.backend_session_id)
                )
                if reusable:
                    return live.handle()
                await self._retire(live, "replaced")
            record = await self.session_store.load(key)
            load_id = resume_session_id
            if load_id is None and record is not None and mode == "persistent":
                same = record.agent == spec.name and record.cwd == resolved.path
                if same and not record.reset_on_next_ensure:
                    load_id = record.backend_session_id
            try:
                session = await start_live_session(self._factory, key, spec, mode, resolved,
                                                   load_id)
            except AcpRuntimeError as exc:  # the runtime closed meanwhile: that is the cause
                if self._closed:  # (the caller's own cancel, if it was cancelled)
                    await trio.lowlevel.checkpoint_if_cancelled()
                self._check_open(exc)
                raise
            try:
                await self.session_store.save(session.record())
                if self._closed:  # shut down meanwhile: a cancelled caller sees its cancel
                    await trio.lowlevel.checkpoint_if_cancelled()
                self._check_open()
            except BaseException:
                await self._retire(session, "ensure failed")
                raise
            self._sessions[key] = session
            return session.handle()

    async def prepare_fresh_session(self, *, session_key: str) -> None:
        """Make the next :meth:`ensure_session` of this key start a new ACP session, even after
        a restart (persisted in the session record).  ``ACP_INVALID_RUNTIME_OPTION`` for a
        key that is not text (not a str, or a lone surrogate UTF-8 cannot carry)."""
        self._check_open()
        session_key = text_arg("session_key", session_key)
        live = self._sessions.get(session_key)
        if live is not None:
            live.fresh_requested = True
        await self.session_store.mark_fresh(session_key)

    async def close(
        self,
        *,
        handle: AcpRuntimeHandle,
        reason: str = "closed",
        discard_persistent_state: bool = False,
    ) -> None:
        """Kill the session's agent tree (lease closed) and mark its record closed; with
        ``discard_persistent_state`` the next ensure starts a new ACP session.  A running turn
        ends with ``DoneEvent(stop_reason="cancelled")``.  Idempotent.  Cancelled while it
        runs, it finishes the close, then raises :class:`trio.Cancelled`.
        ``ACP_INVALID_RUNTIME_OPTION`` for a handle that is not one, a reason that is not
        text or a ``discard_persistent_state`` that is not a bool."""
        self._check_open()
        session = self._live(handle)
        reason, discard = close_args(reason, discard_persistent_state)

        async def mark_record() -> None:
            # one locked read-modify-write (one hop), not a load then a save
            await self.session_store.mark_closed(
                handle.session_key, discard=discard
            )

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(mark_record)
                if session is not None:
                    await self._retire(session, reason)
        except BaseExceptionGroup as group:
            raise collapse_group(group) from None
        await trio.lowlevel.checkpoint_if_cancelled()  # the caller's cancel, once closed

    # ------------------------------------------------------------------ turns

    # An async generator by the AcpRuntimeProtocol contract (consumed under ``aclosing``); it never
    # yields inside a nursery or cancel scope, which is what ASYNC900 guards against.
    async def run_turn(  # noqa: ASYNC900
        self,
        *,
        handle: AcpRuntimeHandle,
        text: str,
        mode: Literal["prompt", "steer"] = "prompt",
        request_id: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> AsyncGenerator[AcpRuntimeEvent, None]:
        """Prompt the agent; yields events in wire order, ending with one ``DoneEvent`` or
        ``ErrorEvent`` (``ACP_TURN_FAILED``, ``ACP_TURN_TIMEOUT``, ``ACP_SESSION_BUSY``,
        ``ACP_PERMISSION_PROMPT_UNAVAILABLE``, ``ACP_LINE_TOO_LONG``, ...).

        Use it as ``async with contextlib.aclosing(runtime.run_turn(...)) as events``.  If the
        consumer stops early or its scope is cancelled, it leaves at once; the turn is cancelled
        at the agent in the background (killed after :data:`CANCEL_WAIT_SECONDS` if it does
        not stop; a oneshot session closed), and the session's next turn or ensure waits for
        that first (bounded, cancellable).
        ``mode="steer"`` is sent as a normal prompt (ACP v1 has no steering).  For turns that
        stream thousands of chunks, :meth:`run_turn_batches` is the same in batches.

        Error rule: problems of the *turn itself* (the agent failed, timed out, was busy with
        another turn, asked for a permission that cannot be granted, ...) arrive as the final
        :class:`ErrorEvent`; problems of the *call* raise :class:`AcpRuntimeError` before the
        first event: a closed runtime (``ACP_BACKEND_UNAVAILABLE``), a handle whose session is
        not running (closed, replaced or its agent died: ``ACP_SESSION_NOT_FOUND``, retryable
        after ``ensure_session``), or a bad argument (``ACP_INVALID_RUNTIME_OPTION``: an unknown
        ``mode``, a handle that is not one, ``text`` or ``request_id`` that is not text, e.g. a
        lone surrogate UTF-8 cannot carry, ``meta`` that is no JSON object; the session is
        untouched and the next prompt on it works).  ``meta`` is sent as the prompt's
        ``_meta`` (e.g. ``{"traceparent": ...}``); it must be a JSON object."""
        async with contextlib.aclosing(await self._stream(handle, mode, text, request_id,
                                                          meta)) as batches:
            async for batch in batches:
                for event in batch:
                    # One batch's events go out back to back; the batch stream checkpoints.
                    yield event  # noqa: ASYNC911

    async def run_turn_batches(  # noqa: ASYNC900
        self,
        *,
        handle: AcpRuntimeHandle,
        text: str,
        mode: Literal["prompt", "steer"] = "prompt",
        request_id: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> AsyncGenerator[list[AcpRuntimeEvent], None]:
        """:meth:`run_turn`, yielding the events in non-empty lists (all that arrived since
        the last step, in wire order); the last list ends with the final event.  Same errors,
        cancel and abandon guarantees.  Prefer it for turns that stream thousands of chunks:
        one await per read batch instead of one per event."""
        async with contextlib.aclosing(await self._stream(handle, mode, text, request_id,
                                                          meta)) as batches:
            async for batch in batches:
                yield batch

    async def _stream(self, handle: AcpRuntimeHandle, mode: str, text: str,
                      request_id: str | None, meta: Mapping[str, Any] | None,
                      ) -> AsyncGenerator[list[AcpRuntimeEvent]]:
        """The turn's batch stream on the live session ``handle`` names; raises the call's
        errors (see :meth:`run_turn`) before any event."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        turn_args(text, mode, request_id)
        session = self._live(handle)
        if session is not None:  # a turn left early by its consumer: its cancel settles first
            await settle_abandoned(session)
        session = self._require_live(handle)
        proc = session.process
        return stream_turn(
            session, text, nursery=self._nursery, turn_timeout=self.config.timeout_seconds,
            retire=self._retire, log=self.log, meta=checked_meta(meta),
            secrets=[*config_credentials(self.config), *(proc.secrets if proc else ())])

    def on_turn_failure(self, session: LiveSession, error: AcpRuntimeError) -> None:
        """Fail the session's running turn with ``error`` (policy ``fail``) and cancel it."""
        turn = session.turn
        if turn is not None and turn.accepting and turn.fail(error, CANCEL_WAIT_SECONDS):
            self._nursery.start_soon(send_cancel, session, turn)

    async def cancel(self, *, handle: AcpRuntimeHandle, reason: str | None = None) -> None:
        """Cancel the running turn: ``session/cancel`` is sent and permission requests are
        answered ``cancelled``; the turn ends with ``DoneEvent(stop_reason="cancelled")``.  If
        the agent does not answer within :data:`CANCEL_WAIT_SECONDS` its tree is killed (the
        next ensure replaces it).  Returns without waiting for the turn; no-op when idle.
        ``ACP_INVALID_RUNTIME_OPTION`` for a handle that is not one or a reason that is not
        text."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        session = self._live(handle)
        reason = optional_text_arg("reason", reason)
        if session is None or session.turn is None:
            return
        self.log.debug("cancelling turn of %s (%s)", handle.session_key, reason or "no reason")
        await send_cancel(session, session.turn)

    # ------------------------------------------------------------------ controls

    async def get_capabilities(
        self, *, handle: AcpRuntimeHandle | None = None
    ) -> AcpRuntimeCapabilities:
        """Controls the session supports (all of them when no handle is given); errors as
        :meth:`set_mode` for a handle (``ACP_SESSION_NOT_FOUND``, ``ACP_INVALID_RUNTIME_OPTION``
        for a handle that is not one)."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        if handle is None:
            return AcpRuntimeCapabilities(
                controls=("session/set_mode", "session/set_config_option", "session/status")
            )
        return self._require_live(handle).capabilities()

    async def get_status(self, *, handle: AcpRuntimeHandle) -> AcpRuntimeStatus:
        """What is known about the session now; ``alive=False`` when it is not running.
        ``usage``: the agent tree's CPU seconds (and memory and process count where those
        cgroup controllers are delegated) from its leaf cgroup; a measure that is not
        available says why, never a made-up zero.  ``ACP_INVALID_RUNTIME_OPTION`` for a handle
        that is not one."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        session = self._live(handle)
        if session is None:
            return AcpRuntimeStatus(summary="not running")
        status = session.status()
        lease = None if session.process is None else session.process.lease
        if lease is None or not status.alive:
            return status
        return msgspec.structs.replace(
            status, usage=await trio.to_thread.run_sync(lease_usage, lease.cgroup))

    async def set_mode(self, *, handle: AcpRuntimeHandle, mode: str) -> None:
        """``session/set_mode``; raises ``ACP_INVALID_RUNTIME_OPTION`` for a mode the agent
        rejects or that is not text (not a str, a lone surrogate UTF-8 cannot carry) and for a
        handle that is not one, ``ACP_SESSION_NOT_FOUND`` for a session that is not running,
        ``ACP_BACKEND_UNSUPPORTED_CONTROL`` if unsupported."""
        session = self._require_live(handle)
        await apply_mode(session, text_arg("mode", mode), self.config, self.session_store)

    async def set_config_option(
        self, *, handle: AcpRuntimeHandle, key: str, value: str | bool
    ) -> None:
        """``session/set_config_option`` (errors as :meth:`set_mode`); a key or value the agent
        did not advertise, or that is not text (a value may also be a bool):
        ``ACP_INVALID_RUNTIME_OPTION`` naming the choices or the argument."""
        session = self._require_live(handle)
        await apply_config_option(session, *config_option_args(key, value), self.config)

    async def set_model(self, *, handle: AcpRuntimeHandle, model: str) -> None:
        """Sets the config option of category ``model``, or for an agent that has none but
        lists legacy ``models``, calls ``session/set_model``; errors as
        :meth:`set_config_option` (an unknown model names the choices),
        ``ACP_BACKEND_UNSUPPORTED_CONTROL`` when the agent offers no models."""
        session = self._require_live(handle)
        await apply_model(session, text_arg("model", model), self.config)

    async def list_sessions(self, *, agent: str, cwd: str | None = None) -> list[AgentSession]:
        """The agent's own sessions (``session/list``, all pages; the agent is started for the
        call, authenticated as for a session, and stopped); ``ACP_BACKEND_UNSUPPORTED_CONTROL``
        when not advertised, ``ACP_AUTH_REQUIRED`` when the agent refuses our credential,
        ``ACP_INVALID_RUNTIME_OPTION`` for an agent or cwd that is not text (not a str, a lone
        surrogate UTF-8 cannot carry, a NUL in ``cwd``)."""
        self._check_open()
        name, cwd = agent_arg(agent), optional_text_arg("cwd", cwd, path=True)
        return await list_agent_sessions(self._factory, name, cwd)

    def set_elicitation_handler(self, handler: ElicitationHandler | None) -> None:
        """Answer agents' ``elicitation/create`` with ``handler`` (an async function taking an
        :class:`~acpx_trio.ElicitationRequest` and returning an
        :class:`~acpx_trio.ElicitationAnswer`; it is cancelled if the agent cancels the
        request).  ``None`` (the default): ``nonInteractivePermissions`` decides (``deny``:
        ``decline``; ``fail``: ``cancel`` and the turn fails with
        ``ACP_ELICITATION_UNAVAILABLE``).  Applies to running sessions at once."""
        if handler is not None and not callable(handler):
            raise AcpRuntimeError("ACP_INVALID_RUNTIME_OPTION",
                                  "the elicitation handler must be an async function or None")
        self._elicitation_handler = handler

    async def delete_session(self, *, agent: str, session_id: str) -> None:
        """``session/delete`` of the agent's own session ``session_id`` (it no longer appears
        in :meth:`list_sessions`; an unknown id is deleted silently); the agent is started for
        the call and stopped.  ``ACP_BACKEND_UNSUPPORTED_CONTROL`` when not advertised;
        ``ACP_INVALID_RUNTIME_OPTION`` for an agent or id that is not text or an empty id."""
        self._check_open()
        name = agent_arg(agent)
        if not text_arg("session_id", session_id).strip():
            raise AcpRuntimeError("ACP_INVALID_RUNTIME_OPTION",
                                  "session_id must be a non-empty string")
        await delete_agent_session(self._factory, name, session_id)

    async def logout(self, *, agent: str) -> None:
        """``logout`` at the agent: it ends its authenticated state (its next session needs
        credentials again); the agent is started for the call and stopped.
        ``ACP_BACKEND_UNSUPPORTED_CONTROL`` when not advertised, ``ACP_INVALID_RUNTIME_OPTION``
        for an agent name that is not text."""
        self._check_open()
        await logout_agent(self._factory, agent_arg(agent))

    # ------------------------------------------------------------------ health

    async def doctor(self, *, deep: bool = False) -> DoctorReport:
        """Start the probe agent (``config.probe_agent``, default ``codex``), run
        ``initialize`` (reporting its auth methods and which credentials are present, by name),
        stop it.  ``deep``: then also open and close a real session (authenticate included),
        failing with the typed reason (e.g. ``ACP_AUTH_REQUIRED``).  Sets health from the
        result.  Never leaves a process."""
        self._check_open()
        name = normalize_agent_name(self.config.probe_agent or DEFAULT_PROBE_AGENT)
        report = await doctor_probe(self._factory, name)
        if deep and report.ok:
            report = await deep_probe(self, self.session_store.delete, name, report)
        self._healthy = report.ok
        return report

    async def probe_availability(self) -> None:
        """Run :meth:`doctor` and record health; never raises for an unavailable agent."""
        await self.doctor()

    def is_healthy(self) -> bool:
        return self._healthy and not self._closed

    # ------------------------------------------------------------------ lifecycle

    async def sweep_dead_sessions(self) -> int:
        """Forget sessions whose agent died: reap their trees and finalise their leases.

        Returns how many were swept.  Sessions with a running turn are left to the turn."""
        await trio.lowlevel.checkpoint()
        count = 0
        for session in list(self._sessions.values()):
            if not session.alive and session.turn is None:
                await self._retire(session, "agent died")
                count += 1
        return count

    async def aclose(self) -> None:
        """Close every live session (trees killed, leases final).  Idempotent; afterwards
        every call raises ``ACP_BACKEND_UNAVAILABLE`` "ACP runtime is shut down."."""
        if self._closed:
            await self._closing_done.wait()
            return
        self._closed = True
        self._healthy = False
        try:
            with trio.CancelScope(shield=True):
                async with trio.open_nursery() as nursery:
                    for session in list(self._sessions.values()):
                        nursery.start_soon(self._retire, session, "runtime shut down")
                    if self._spare_leaves is not None:
                        nursery.start_soon(self._spare_leaves.aclose)
        except BaseExceptionGroup as group:
            raise collapse_group(group) from None
        finally:
            self._closing_done.set()
