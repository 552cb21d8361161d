"""The owner process: one runtime service on a state dir, serving warm sessions on a socket.

Guarantees:

* One Trio run, one root nursery: the runtime service (and so every agent process and the
  service's own watchdog and sweeps), the socket's accept loop, every client connection and
  every session's worker live under it.  When the owner ends — idle TTL, ``shutdown``, the last
  ``close``, SIGTERM/SIGINT/SIGHUP — the socket is unlinked first (new clients start a new
  owner, which waits for this one's lock), then every session is closed (every agent is gone
  then), then the clients still connected get what is left of their streams, up to each
  turn's final frame (at most ``CLIENT_SEND_SECONDS``), then the service stops: no agent
  process is left.  A further signal waits for nothing (see :mod:`acpx_trio._owner.signals`:
  the agents' trees are killed without grace, clients are not waited for).
* It serves only peers with its own uid (``SO_PEERCRED``); the socket is 0600 in a 0700 dir.
* A session is closed when it has been idle past its TTL (0 = never); the owner exits when no
  session is left (or when none arrived within :data:`EMPTY_GRACE_SECONDS` of its start).
* A client never stalls a session: every write to a client is bounded (see
  :mod:`acpx_trio._owner.stream`; the turn's frames wait in the queue's ``CLIENT_BUFFER``); a
  client that does not read loses its stream (the connection is dropped), the turn goes on,
  so ``cancel``, the TTL and the next prompt work.  A waiting client gets a
  :class:`~acpx_trio._owner.wire.HeartbeatFrame` after ``stream.HEARTBEAT_SECONDS`` without a
  frame, so it can bound the owner's silence.
* Memory is bounded: request frames by config ``ownerFrameMaxBytes``, unfinished frames of
  all connections together by ``ownerPartialMaxBytes``, queued prompt text by
  ``ownerQueueMaxBytes`` per session and ``ownerQueueTotalMaxBytes`` in all; past a cap the
  request gets a typed error reply (``ACPX_OWNER_PROTOCOL``, ``ACPX_OWNER_QUEUE_FULL``) and
  the owner serves on.
* A prompt whose credential-relevant environment (names and digests, see
  :func:`~acpx_trio._owner.wire.credential_env_digests`) differs from the owner's is refused
  with ``ACPX_OWNER_CONFIG_MISMATCH`` naming the variables, never their values: an agent of
  this owner never runs with credentials the sender's shell does not have.
* Requires the caller to hold ``owner.lock`` (see :mod:`acpx_trio._owner.paths`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from acpx_trio._errors import AcpxError
from acpx_trio._owner.paths import (
    OwnerPaths,
    OwnerSocketError,
    check_socket_path,
    peer_uid,
    read_owner_info,
    remove_socket_file,
    write_owner_info,
)
from acpx_trio._owner.queue import QueuedTurn, WarmSession
from acpx_trio._owner.signals import OwnerSignals
from acpx_trio._owner.stream import (
    CLIENT_SEND_SECONDS,
    ClientStalled,
    send_bounded,
    stream_turn,
)
from acpx_trio._owner.wire import (
    MAX_FRAME_BYTES,
    AcceptedFrame,
    CancelRequest,
    CancelResult,
    CloseRequest,
    CloseResult,
    ControlRequest,
    ControlResult,
    FrameBudget,
    FrameReader,
    OwnerErrorFrame,
    OwnerLaunch,
    OwnerProtocolError,
    PromptRequest,
    Reply,
    Request,
    SessionState,
    ShutdownRequest,
    StatusRequest,
    StatusResult,
    config_fingerprint,
    credential_env_mismatch,
    decode_request,
    encode_frame,
)
from acpx_trio._store.caps import (
    DEFAULT_OWNER_PARTIAL_MAX_BYTES,
    DEFAULT_OWNER_QUEUE_MAX_BYTES,
    DEFAULT_OWNER_QUEUE_TOTAL_MAX_BYTES,
)
from acpx_trio._store.config import AcpxConfig
from acpx_trio._store.transcript import TranscriptWriter, config_credentials, transcript_path

__all__ = ["EMPTY_GRACE_SECONDS", "Owner", "bind_socket", "run_owner"]

#: How long a new owner waits for its first session before exiting.
EMPTY_GRACE_SECONDS = 10.0
#: Bound for a client to send its request frame after connecting.
REQUEST_READ_SECONDS = 10.0
#: After ``accept`` fails for lack of descriptors or memory: pause before the next try.
ACCEPT_RETRY_SECONDS = 0.05
#: Bound of a control call (mode, config option, model) on a warm session.
CONTROL_SECONDS = 60.0
_ACCEPT_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_log = logging.getLogger("acpx_trio.owner")


def bind_socket(paths: OwnerPaths) -> socket.socket:
    """Bind and listen on ``owner.sock`` (0600).  A socket left there is stale (the caller
    holds ``owner.lock``) and is replaced; anything else at the path is refused (blocking)."""
    paths.check_length()
    if check_socket_path(paths.socket):
        remove_socket_file(paths.socket)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(str(paths.socket))
        finally:
            os.umask(old)
        os.chmod(paths.socket, 0o600, follow_symlinks=False)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


class Owner:
    """The warm sessions of one state dir (see the module docstring)."""

    def __init__(self, runtime: Any, paths: OwnerPaths, launch: OwnerLaunch,
                 config: AcpxConfig | None = None,
                 kill_now: Callable[[], Awaitable[object]] | None = None,
                 early_signals: list[int] | None = None) -> None:
        self.runtime = runtime
        self.signals = OwnerSignals(stop=self.request_stop,
                                    sessions_left=lambda: bool(self.sessions),
                                    kill_now=kill_now, early=early_signals)
        self.config = config
        self.paths = paths
        self.launch = launch
        self.fingerprint = config_fingerprint(launch.raw_config)
        self.frame_limit = MAX_FRAME_BYTES if config is None else config.owner_frame_max_bytes
        self.partial_budget = FrameBudget(
            DEFAULT_OWNER_PARTIAL_MAX_BYTES if config is None else config.owner_partial_max_bytes)
        self.queue_limit = (DEFAULT_OWNER_QUEUE_MAX_BYTES if config is None
                            else config.owner_queue_max_bytes)
        self.queue_total_limit = (DEFAULT_OWNER_QUEUE_TOTAL_MAX_BYTES if config is None
                                  else config.owner_queue_total_max_bytes)
        self.sessions: dict[str, WarmSession] = {}
        self._closed_sessions: dict[str, trio.Event] = {}
        self._changed = trio.Event()
        self._stop_requested = False
        self.stopping = False
        self._clients = 0
        #: connections whose request is being read (cancelled when the owner exits)
        self._reading: set[trio.CancelScope] = set()
        self._had_session = False
        self._started = trio.current_time()
        self._nursery: trio.Nursery | None = None

    # -- bookkeeping ------------------------------------------------------------------------
    def changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def request_stop(self) -> None:
        self._stop_requested = True
        self.changed()

    def _session(self, req: PromptRequest) -> WarmSession:
        session = self.sessions.get(req.session_key)
        if session is None:
            assert self._nursery is not None
            session = WarmSession(key=req.session_key, runtime=self.runtime,
                                  ttl_seconds=self.launch.default_ttl_seconds,
                                  on_change=self.changed,
                                  transcript=self._transcript(req.session_key))
            self.sessions[req.session_key] = session
            self._had_session = True
            self._nursery.start_soon(session.worker)
        if req.ttl_seconds is not None:
            session.ttl_seconds = req.ttl_seconds
        return session

    def _transcript(self, key: str) -> TranscriptWriter | None:
        config = self.config
        if config is None or not config.transcript:
            return None
        return TranscriptWriter(
            transcript_path(config.state_dir, key), max_bytes=config.transcript_max_bytes,
            keep=config.transcript_keep,
            credentials=config_credentials(config),
            nursery=self._nursery, logger=_log)

    async def close_session(self, session: WarmSession) -> None:
        if session.closing:
            await self._closed_sessions.setdefault(session.key, trio.Event()).wait()
            return
        done = self._closed_sessions.setdefault(session.key, trio.Event())
        try:
            with trio.CancelScope(shield=True):
                await session.close()
        finally:
            if self.sessions.get(session.key) is session:
                del self.sessions[session.key]
            del self._closed_sessions[session.key]
            done.set()
            self.changed()

    async def state(self, session: WarmSession) -> SessionState:
        """The session as clients see it; ``agent_pid`` only while that agent is alive."""
        idle = None if session.busy else max(0.0, trio.current_time() - session.idle_since)
        handle = session.handle
        agent_pid = session.agent_pid
        if handle is not None:
            try:
                status = await self.runtime.get_status(handle=handle)
                agent_pid = status.agent_pid if status.alive else None
            except AcpxError:
                agent_pid = None
        return SessionState(
            session_key=session.key, agent=session.agent, agent_pid=agent_pid,
            backend_session_id=None if handle is None else handle.backend_session_id,
            queue_depth=len(session.queue),
            active_request_id=None if session.active is None else session.active.request_id,
            turn_state="idle" if session.active is None else session.active.state,
            idle_seconds=idle, ttl_seconds=session.ttl_seconds)

    # -- lifetime ---------------------------------------------------------------------------
    async def lifetime(self) -> None:
        """Return when the owner should exit: stop requested, or no session left."""
        while not self._stop_requested:
            changed = self._changed
            now = trio.current_time()
            # a session being closed (``sessions close``) is not expiring: its close ends
            # with a change, which wakes this loop
            open_ = [s for s in self.sessions.values() if not s.closing]
            expired = [s for s in open_ if s.expires_at() <= now]
            if expired:
                async with trio.open_nursery() as nursery:
                    for session in expired:
                        why = (f"idle for {session.ttl_seconds:g}s" if session.handle
                               else "its agent never started")
                        _log.info(f"session {session.key}: {why}, closing it")
                        nursery.start_soon(self.close_session, session)
                continue
            if not self.sessions:
                deadline = self._started + EMPTY_GRACE_SECONDS
                if self._had_session or deadline <= now:
                    return
            else:
                deadline = min((s.expires_at() for s in open_), default=math.inf)
            if deadline <= now:
                continue
            with trio.move_on_at(deadline if math.isfinite(deadline) else math.inf):
                await changed.wait()

    async def run(self, listener: trio.SocketListener) -> None:
        """Serve until :meth:`lifetime` returns, then shut down (see the module docstring).
        Clients still connected then get the rest of their streams, up to each turn's final
        frame, for :data:`~acpx_trio._owner.stream.CLIENT_SEND_SECONDS` at most."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.signals.watch, nursery)
            try:
                async with trio.open_nursery() as connections:
                    accept_scope = trio.CancelScope()
                    connections.start_soon(self._accept_loop, listener, accept_scope,
                                           connections)
                    try:
                        await self.lifetime()
                    finally:
                        with trio.CancelScope(shield=True):
                            await self._shutdown(accept_scope, listener)
                        # the sessions are closed (every agent gone): what their clients
                        # have not read yet is still theirs, within the bound of a write
                        connections.cancel_scope.deadline = (trio.current_time()
                                                             + CLIENT_SEND_SECONDS)
                        self.signals.draining = connections.cancel_scope
                        if self.signals.hurry:
                            connections.cancel_scope.cancel()
                        elif self._clients:
                            _log.info(f"{self._clients} client(s) still connected: up to "
                                      f"{CLIENT_SEND_SECONDS:g}s to read the rest")
            finally:
                nursery.cancel_scope.cancel()

    async def _shutdown(self, accept_scope: trio.CancelScope,
                        listener: trio.SocketListener) -> None:
        self.stopping = True
        accept_scope.cancel()
        for reading in self._reading:
            reading.cancel()
        await trio.to_thread.run_sync(self._remove_files)
        await listener.aclose()
        async with trio.open_nursery() as nursery:
            for session in list(self.sessions.values()):
                nursery.start_soon(self.close_session, session)

    def _remove_files(self) -> None:
        with contextlib.suppress(OSError, OwnerSocketError):
            remove_socket_file(self.paths.socket)
        info = read_owner_info(self.paths)
        if info is not None and info.pid == os.getpid():
            with contextlib.suppress(OSError):
                self.paths.info.unlink()

    async def _accept_loop(self, listener: trio.SocketListener, scope: trio.CancelScope,
                           connections: trio.Nursery) -> None:
        with scope:
            warned = False
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    # out of descriptors or memory (a connection flood, a low `ulimit -n`):
                    # never a reason to stop serving the warm sessions; wait for a handler
                    # to finish (each is bounded) and accept again
                    if exc.errno not in _ACCEPT_RESOURCE_ERRNOS:
                        raise
                    if not warned:
                        _log.warning(f"cannot accept connections for now: {exc}")
                        warned = True
                    await trio.sleep(ACCEPT_RETRY_SECONDS)
                    continue
                warned = False
                connections.start_soon(self._handle, stream)

    # -- one connection ---------------------------------------------------------------------
    async def _handle(self, stream: trio.SocketStream) -> None:
        self._clients += 1
        try:
            await self._serve(stream)
        finally:
            self._clients -= 1

    async def _serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            reader = FrameReader(stream, limit=self.frame_limit, budget=self.partial_budget)
            try:
                uid = peer_uid(stream.socket)  # type: ignore[arg-type]
                if uid != os.geteuid():
                    _log.warning(f"refused a connection from uid {uid}")
                    return
                line = None
                # a connection whose request is not read yet has no stream to finish: the
                # owner's exit ends it (see ``_shutdown``) instead of waiting for it
                with trio.CancelScope() as reading:
                    self._reading.add(reading)
                    if self.stopping:
                        reading.cancel()
                    try:
                        with trio.fail_after(REQUEST_READ_SECONDS):
                            line = await reader.receive()
                    finally:
                        self._reading.discard(reading)
                        reader.release()  # the request is read: its bytes leave the budget
                if line is None:
                    return
                request = decode_request(line)
                del line  # a waiting prompt holds its text, not its frame (nor its escapes)
                await self._dispatch(request, stream)
            except (OwnerProtocolError, trio.TooSlowError) as exc:
                with trio.move_on_after(CLIENT_SEND_SECONDS), contextlib.suppress(
                        trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    await stream.send_all(encode_frame(OwnerErrorFrame(
                        code=OwnerProtocolError.code, message=str(exc) or "request too slow")))
            except ClientStalled:
                _log.info("dropped a client that stopped reading (its turn goes on)")
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass  # the client went away (a connection problem never stops the owner)

    async def _reply(self, stream: trio.SocketStream, frame: Reply) -> None:
        await send_bounded(stream, encode_frame(frame))

    async def _dispatch(self, req: Request, stream: trio.SocketStream) -> None:
        if isinstance(req, PromptRequest):
            await self._prompt(req, stream)
        elif isinstance(req, CancelRequest):
            session = self.sessions.get(req.session_key)
            cancelled = session is not None and await session.cancel(req.request_id)
            await self._reply(stream, CancelResult(cancelled=cancelled))
        elif isinstance(req, ControlRequest):
            await self._reply(stream, await self._control(req))
        elif isinstance(req, StatusRequest):
            warm = self.sessions.get(req.session_key or "")
            if req.flush_transcript and warm is not None and warm.transcript is not None:
                await warm.transcript.flush()
            sessions = [await self.state(s) for k, s in sorted(self.sessions.items())
                        if req.session_key in (None, k)]
            await self._reply(stream, StatusResult(
                owner_pid=os.getpid(), state_dir=str(self.paths.state_dir),
                uptime_seconds=trio.current_time() - self._started, sessions=sessions))
        elif isinstance(req, CloseRequest):
            session = self.sessions.get(req.session_key)
            if session is not None:
                await self.close_session(session)
            exiting = self._stop_requested or (self._had_session and not self.sessions)
            await self._reply(stream, CloseResult(closed=session is not None,
                                                  owner_exiting=exiting))
        elif isinstance(req, ShutdownRequest):
            self.request_stop()
            await self._reply(stream, CloseResult(closed=bool(self.sessions),
                                                  owner_exiting=True))

    async def _control(self, req: ControlRequest) -> ControlResult | OwnerErrorFrame:
        """Apply a mode, config option or model to a running warm session; the runtime's
        typed error comes back as an error frame (its code, its message naming choices)."""
        session = self.sessions.get(req.session_key)
        handle = None if session is None or session.closing else session.handle
        if session is None or handle is None:
            return OwnerErrorFrame(code="ACP_SESSION_NOT_FOUND",
                                   message=f"no running warm session {req.session_key!r} "
                                   "(prompt --session starts one)")
        try:
            with trio.fail_after(CONTROL_SECONDS):
                if req.action == "mode":
                    await session.runtime.set_mode(handle=handle, mode=req.value)
                elif req.action == "model":
                    await session.runtime.set_model(handle=handle, model=req.value)
                else:
                    await session.runtime.set_config_option(handle=handle, key=req.key or "",
                                                            value=req.value)
        except AcpxError as exc:
            return OwnerErrorFrame(code=exc.code, message=str(exc))
        except trio.TooSlowError:
            return OwnerErrorFrame(code="ACP_TURN_TIMEOUT", message=f"the agent did not "
                                   f"answer within {CONTROL_SECONDS:g}s")
        return ControlResult(applied=True, agent_pid=handle.agent_pid)

    async def _prompt(self, req: PromptRequest, stream: trio.SocketStream) -> None:
        if req.config_fingerprint != self.fingerprint:
            await self._reply(stream, OwnerErrorFrame(
                code="ACPX_OWNER_CONFIG_MISMATCH",
                message=f"the warm owner (pid {os.getpid()}) of {self.paths.state_dir} runs "
                "with a different configuration (agents, permissions, ...); close its "
                "sessions (`acpx-trio sessions close KEY`) or use another --state-dir"))
            return
        differ = credential_env_mismatch(os.environ, self.launch.credential_names,
                                         req.credential_env)
        if differ:
            await self._reply(stream, OwnerErrorFrame(
                code="ACPX_OWNER_CONFIG_MISMATCH",
                message=f"the warm owner (pid {os.getpid()}) of {self.paths.state_dir} runs "
                f"with other credentials: {', '.join(differ)} differ from this shell's (set "
                "or unset, or another value); close its sessions (`acpx-trio sessions close "
                "KEY`) or use another --state-dir"))
            return
        while (old := self.sessions.get(req.session_key)) is not None and old.closing:
            await self.close_session(old)  # waits for the close in progress
        if self.stopping or self._stop_requested:
            await self._reply(stream, OwnerErrorFrame(
                code="ACPX_OWNER_SHUTTING_DOWN", retryable=True,
                message="the warm owner is shutting down; retry to start a new one"))
            return
        turn = QueuedTurn(req)
        full = self._queue_full(req.session_key, turn.size)
        if full is not None:
            await self._reply(stream, OwnerErrorFrame(code="ACPX_OWNER_QUEUE_FULL",
                                                      message=full))
            return
        position = self._session(req).enqueue(turn)
        await self._reply(stream, AcceptedFrame(request_id=req.request_id, position=position,
                                                owner_pid=os.getpid()))
        if turn.receive is None:
            return
        try:
            async with turn.receive:
                await stream_turn(turn.receive, stream, turn.taken)
        finally:
            turn.taken(None)  # the client is gone or done: the worker never waits for it

    def _queue_full(self, key: str, size: int) -> str | None:
        """Why a prompt of ``size`` bytes may not be queued now (``None``: it may)."""
        session = self.sessions.get(key)
        mine = 0 if session is None else session.queued_bytes
        total = sum(s.queued_bytes for s in self.sessions.values())
        if mine + size > self.queue_limit:
            return (f"session {key!r} already holds {mine} bytes of queued prompts; this "
                    f"{size}-byte prompt would pass ownerQueueMaxBytes ({self.queue_limit}); "
                    "wait for the queue to drain")
        if total + size > self.queue_total_limit:
            return (f"the warm owner already holds {total} bytes of queued prompts; this "
                    f"{size}-byte prompt would pass ownerQueueTotalMaxBytes "
                    f"({self.queue_total_limit}); wait for the queues to drain")
        return None


async def run_owner(state_dir: Path, launch: OwnerLaunch, *,
                    ready: Callable[[], None] | None = None,
                    early_signals: list[int] | None = None) -> None:
    """Run an owner on ``state_dir`` until it decides to exit (the caller holds the lock).

    ``ready`` is called once the socket listens and ``owner.json`` is written;
    ``early_signals``: what :func:`~acpx_trio._owner.signals.record_early_signals`
    recorded."""
    from acpx_trio._service.kill_now import kill_own_launches
    from acpx_trio._service.lazy_runtime import RuntimeFactoryParams, build_default_runtime
    from acpx_trio._service.open_service import open_runtime_service

    paths = OwnerPaths(state_dir)

    async def factory(params: RuntimeFactoryParams) -> Any:
        # The real runtime, not the lazy wrapper: its ``run_turn`` registers the turn without
        # a checkpoint, which the queue's cancel-while-starting guarantee relies on.  An owner
        # is started for a prompt: its first start's leaf is made while the runtime loads.
        return await build_default_runtime(params, for_start=True)

    # turns are bounded per prompt (``PromptRequest.timeout_seconds``), never by the
    # first client's ``timeoutSeconds``; control calls keep their default bound
    plugin_config = {k: v for k, v in launch.raw_config.items() if k != "timeoutSeconds"}
    async with open_runtime_service(
        workspace_dir=launch.workspace_dir, state_dir=state_dir,
        plugin_config=plugin_config, logger=_log, runtime_factory=factory,
    ) as service:
        sock = await trio.to_thread.run_sync(bind_socket, paths)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        gateway = service.gateway_instance_id
        kill_now = (None if gateway is None
                    else functools.partial(kill_own_launches, state_dir, gateway))
        owner = Owner(service.runtime, paths, launch, config=service.config,
                      kill_now=kill_now, early_signals=early_signals)
        await trio.to_thread.run_sync(write_owner_info, paths)
        if ready is not None:
            ready()

        async def stop_on_crash() -> None:
            # a crashed service has closed its runtime: serving on would fail every prompt
            # until the TTL; exiting lets the next prompt start a fresh owner
            await service.wait_crash()
            _log.error("the runtime service crashed; the owner exits (the next prompt "
                       "starts a new one)")
            owner.request_stop()

        async with trio.open_nursery() as watch:
            watch.start_soon(stop_on_crash)
            await owner.run(listener)
            watch.cancel_scope.cancel()
