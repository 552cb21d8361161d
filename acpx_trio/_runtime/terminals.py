"""``terminal/*``: commands an agent runs through the client, owned like agents.

Guarantees of :class:`TerminalManager` (one per session):

* **Permission first**: ``terminal/create`` is an execute-kind permission — allowed under
  ``approve-all``, otherwise refused (``nonInteractivePermissions: fail`` also fails the
  running turn with ``ACP_PERMISSION_PROMPT_UNAVAILABLE``).  A refused command never runs.
* **Confined**: the working directory must lie inside the session cwd (after ``..`` and
  symlink resolution); default is the session cwd.  The command inherits the owner's
  environment minus ``ACPX_AUTH_*`` (acpx-trio's own credential variables), plus the
  request's ``env``.
* **Owned like an agent**: a lease is saved (``root_pid == 0``) before the spawn and
  completed after it; the process carries the lease tags in its environment (inherited by
  its children) and runs in its own process group (``start_new_session``).  Its tree is
  killed on ``terminal/kill``, ``terminal/release``, session close, cancellation of the
  nursery that runs it, and — through the lease and tags — by the start-up reaper after a
  crash of the owner.
* **Bounded output**: stdout and stderr are merged; at most ``outputByteLimit`` bytes
  (default :data:`DEFAULT_OUTPUT_LIMIT`, at most :data:`MAX_OUTPUT_LIMIT`) of the newest
  output are kept, cut at a UTF-8 character boundary (``truncated`` says so).  The output
  limits of a session's terminals together stay within its ``output_budget`` (config
  ``terminalOutputMaxBytes``): a ``terminal/create`` past it is refused (-32602, "terminal
  output budget"), so one session never holds more terminal output than that.

The spawn, the kill and the lease bookkeeping are :mod:`acpx_trio._process.owned`, shared
with agents: the service's owner-death watchdog is armed before the spawn, so a SIGKILLed
owner's terminals die without a restart, and the kill takes the command's process group and
session (untagged members included) and every process with its tags, in waves.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import trio

from acpx_trio._acp import (
    CreateTerminalRequest,
    CreateTerminalResponse,
    EmptyResponse,
    RequestKind,
    TerminalExitStatus,
    TerminalOutputRequest,
    TerminalOutputResponse,
)
from acpx_trio._errors import AcpRuntimeError, redact_argv
from acpx_trio._process import held
from acpx_trio._process.owned import (
    close_owned,
    complete_lease,
    mark_lease,
    save_pending_lease,
    spawn_owned,
)
from acpx_trio._process.reaper import ProcessCleanupDeps
from acpx_trio._process.scan import PidWindow, open_window
from acpx_trio._runtime.auth import AUTH_ENV_PREFIX
from acpx_trio._runtime.permissions import (
    INVALID_PARAMS,
    PERMISSION_DENIED_RPC,
    PermissionPolicy,
    WorkDir,
    open_dir_in_cwd,
)
from acpx_trio._store.caps import DEFAULT_TERMINAL_OUTPUT_MAX_BYTES
from acpx_trio._store.config import DEFAULT_CONTAINMENT, ContainmentMode
from acpx_trio._store.lease_model import LeaseState, ProcessLease
from acpx_trio._store.leases import LeaseStore

__all__ = [
    "DEFAULT_OUTPUT_LIMIT",
    "MAX_OUTPUT_LIMIT",
    "TERMINAL_KINDS",
    "OutputBuffer",
    "Terminal",
    "TerminalManager",
]

#: Each ``terminal/*`` method, with what its handler does (see
#: :data:`~acpx_trio._acp._answers.RequestKind`): output is a large read, the exit a wait,
#: the rest changes that run to their end once started.
TERMINAL_KINDS: dict[str, RequestKind] = {
    "terminal/create": "work", "terminal/output": "heavy", "terminal/wait_for_exit": "wait",
    "terminal/kill": "work", "terminal/release": "work",
}
#: Output kept when the agent gives no ``outputByteLimit``.
DEFAULT_OUTPUT_LIMIT = 1024 * 1024
#: Largest ``outputByteLimit`` honoured (bounds memory per terminal).
MAX_OUTPUT_LIMIT = 16 * 1024 * 1024
#: Terminals one session may hold at once.
MAX_TERMINALS = 64
#: After the command exits, how long its remaining output may take to arrive.
_DRAIN_SECONDS = 0.25
_CLEANUP_SECONDS = 10.0
_log = logging.getLogger("acpx_trio.terminals")
Logger = logging.Logger | logging.LoggerAdapter[Any]


class OutputBuffer:
    """The newest ``limit`` bytes of a byte stream, starting at a UTF-8 character boundary."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self.data = bytearray()
        self.truncated = False

    def add(self, chunk: bytes | bytearray) -> None:
        self.data += chunk
        excess = max(0, len(self.data) - self.limit)
        if excess:
            self.truncated = True
        if self.truncated:
            # cut, then skip continuation bytes (also the rest of a character whose head was
            # cut by an earlier chunk) so the kept text starts a character: at most three (a
            # character has four bytes at most; a longer run is no UTF-8 anyway, and the
            # search must not cost the whole buffer at every chunk)
            end = min(len(self.data), excess + 3)
            while excess < end and (self.data[excess] & 0xC0) == 0x80:
                excess += 1
            del self.data[:excess]

    def text(self) -> str:
        return bytes(self.data).decode("utf-8", "replace")


def _refuse(message: str, code: int = INVALID_PARAMS) -> AcpRuntimeError:
    return AcpRuntimeError("ACP_TERMINAL_REFUSED", message, rpc_code=code)


def _argv(request: CreateTerminalRequest) -> list[str]:
    """``[command, *args]``; a lone command line with spaces (no args) runs via ``/bin/sh -c``."""
    if not request.command.strip():
        raise _refuse("command must be a non-empty string")
    if any("\0" in a for a in (request.command, *request.args)):
        raise _refuse("command and args must not contain NUL bytes")
    for var in request.env:  # what execve cannot take: refused, never a raw ValueError
        if "=" in var.name or "\0" in var.name or "\0" in var.value:
            raise _refuse(f"env: {var.name!r} is not a valid variable ('=' in its name, or NUL)")
    if not request.args and any(c.isspace() for c in request.command.strip()):
        return ["/bin/sh", "-c", request.command]
    return [request.command, *request.args]


def _open_cwd(raw: str | None, cwd: WorkDir) -> int:
    """A directory fd of the terminal's cwd, opened beneath the session cwd in one step; the
    command is started in *that* directory (``/proc/self/fd/N``), so swapping a directory
    for a symlink after this check cannot move it outside."""
    return open_dir_in_cwd(cwd.path if raw is None else raw, cwd)


class Terminal:
    """One command run for the agent (see the module docstring)."""

    def __init__(
        self, *, terminal_id: str, argv: list[str], cwd_fd: int, env: dict[str, str],
        output_limit: int, owner: TerminalManager,
    ) -> None:
        self.id = terminal_id
        self.argv = argv
        #: the confined cwd, open; the child changes into it through its own fd table
        #: before it executes anything, and we close it once the spawn returned
        self._cwd_fd = cwd_fd
        self._env = env
        self.output = OutputBuffer(output_limit)
        self._owner = owner
        self.lease: ProcessLease | None = None
        self.process: trio.Process | None = None
        self._window: PidWindow | None = None  # opened right before the spawn
        self.create_time: float | None = None
        self.start_ticks: int | None = None
        self.exit_status: TerminalExitStatus | None = None
        self.exited = trio.Event()
        self.closed = trio.Event()
        self._stop = trio.Event()
        self._lease_done = trio.Event()
        self._output_done = trio.Event()
        self._kill_lock = trio.Lock()
        self._killed = False

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Spawn (raises ``ACP_TERMINAL_SPAWN_FAILED`` before started), then serve until
        released; the tree is killed and the lease finalised on the way out, always."""
        try:
            await self._spawn()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._complete_lease)
                nursery.start_soon(self._read_output)
                nursery.start_soon(self._watch_exit)
                task_status.started()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._close()

    async def _spawn(self) -> None:
        # watchdog armed, lease saved before the spawn, tags, own session: see _process.owned
        owner = self._owner
        self.lease = await save_pending_lease(
            owner.lease_store, gateway_instance_id=owner.gateway_instance_id,
            session_key=f"{owner.session_key}:terminal:{self.id}",
            command=self.argv,
            log=owner.log,
            containment=owner.containment,
        )
        self._window = open_window()  # before the spawn: the close's proof looks after it
        try:
            self.process = await spawn_owned(
                self.argv, self.lease, env=self._env, cwd=f"/proc/self/fd/{self._cwd_fd}",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )
        except OSError as exc:
            self._lease_done.set()
            raise AcpRuntimeError(
                "ACP_TERMINAL_SPAWN_FAILED",
                f"could not run {shlex.join(self.argv)!r}: {exc.strerror or exc}",
                rpc_code=PERMISSION_DENIED_RPC,
            ) from exc

    async def _complete_lease(self) -> None:
        try:
            assert self.process is not None and self.lease is not None
            record = await complete_lease(self._owner.lease_store, self.lease, self.process,
                                          self._owner.log, "terminal lease")
            self.lease = record.lease
            self.create_time, self.start_ticks = record.create_time, record.start_ticks
        finally:
            self._lease_done.set()

    async def _read_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        try:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while data := await self.process.stdout.receive_some(65536):
                    self.output.add(data)
        finally:
            self._output_done.set()

    async def _watch_exit(self) -> None:
        assert self.process is not None
        code = await self.process.wait()
        with trio.move_on_after(_DRAIN_SECONDS):
            await self._output_done.wait()
        self._set_exit(code)

    def _set_exit(self, code: int) -> None:
        if self.exit_status is not None:
            return
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            self.exit_status = TerminalExitStatus(exit_code=None, signal=name)
        else:
            self.exit_status = TerminalExitStatus(exit_code=code, signal=None)
        self.exited.set()

    async def _mark(self, state: LeaseState) -> None:
        if self.lease is not None:
            self.lease = await mark_lease(self._owner.lease_store, self.lease, state,
                                          self._owner.log, "terminal lease")

    async def kill(self) -> None:
        """Kill the command's tree (output stays readable); idempotent; lease final."""
        async with self._kill_lock:
            if self._killed:
                return
            self._killed = True
            with trio.CancelScope(shield=True), trio.move_on_after(
                self._owner.kill_grace * 2 + _CLEANUP_SECONDS
            ):
                await self._kill_tree()

    async def _kill_tree(self) -> None:
        proc, owner = self.process, self._owner
        if proc is None:
            await self._mark(LeaseState.CLOSING)
            await self._mark(LeaseState.LOST)
            if self.lease is not None:
                held.release(self.lease.lease_id)
            return
        with trio.move_on_after(_CLEANUP_SECONDS / 2):
            await self._lease_done.wait()
        await close_owned(
            proc, self.lease, mark=self._mark, create_time=self.create_time,
            start_ticks=self.start_ticks, grace=owner.kill_grace, deps=owner.cleanup_deps,
            log=owner.log, what="terminal", window=self._window,
        )
        if proc.returncode is not None:
            with trio.move_on_after(_DRAIN_SECONDS):
                await self._output_done.wait()
            self._set_exit(proc.returncode)

    @property
    def lease_id(self) -> str | None:
        return None if self.lease is None else self.lease.lease_id

    async def _close(self) -> None:
        try:
            await self.kill()
        finally:
            self.closed.set()

    async def release(self) -> None:
        """Kill if running, stop serving, forget; returns when the lease is final."""
        self._stop.set()
        await self.kill()
        await self.closed.wait()


class TerminalManager:
    """The terminals of one session (see the module docstring)."""

    def __init__(
        self, *, session_key: str, cwd: WorkDir, policy: PermissionPolicy, nursery: trio.Nursery,
        gateway_instance_id: str, lease_store: LeaseStore,
        kill_grace: float = 0.75, cleanup_deps: ProcessCleanupDeps | None = None,
        on_turn_failure: Callable[[AcpRuntimeError], None] | None = None,
        logger: Logger | None = None,
        output_budget: int = DEFAULT_TERMINAL_OUTPUT_MAX_BYTES,
        containment: ContainmentMode = DEFAULT_CONTAINMENT,
        secrets: Sequence[str] = (),
    ) -> None:
        self.output_budget = output_budget
        #: the credentials the agent holds: never in a log line of ours
        self.secrets = tuple(secrets)
        self.containment: ContainmentMode = containment
        self.session_key = session_key
        #: the session cwd: a terminal's cwd is opened beneath it (refused once replaced)
        self.cwd = cwd
        self.policy = policy
        self.nursery = nursery
        self.gateway_instance_id = gateway_instance_id
        self.lease_store = lease_store
        self.kill_grace = kill_grace
        self.cleanup_deps = cleanup_deps
        self._on_turn_failure = on_turn_failure
        self.log: Logger = logger or _log
        self.terminals: dict[str, Terminal] = {}
        #: terminal id -> output limit of the terminals being started (counted by the caps)
        self._starting: dict[str, int] = {}
        self._closed = False

    def _get(self, terminal_id: str) -> Terminal:
        term = self.terminals.get(terminal_id)
        if term is None:
            raise _refuse(f"unknown terminal: {terminal_id}")
        return term

    async def handle(self, method: str, raw: msgspec.Raw) -> Any:
        """Serve one ``terminal/*`` request (already checked to be for this session)."""
        if method == "terminal/create":
            return await self.create(msgspec.json.decode(raw, type=CreateTerminalRequest))
        request = msgspec.json.decode(raw, type=TerminalOutputRequest)
        term = self._get(request.terminal_id)
        if method == "terminal/output":
            return TerminalOutputResponse(
                output=term.output.text(), truncated=term.output.truncated,
                exit_status=term.exit_status,
            )
        if method == "terminal/wait_for_exit":
            await term.exited.wait()
            assert term.exit_status is not None
            return term.exit_status
        if method == "terminal/kill":
            await term.kill()
            return EmptyResponse()
        if method == "terminal/release":
            self.terminals.pop(term.id, None)
            await term.release()
            return EmptyResponse()
        raise _refuse(f"Method not found: {method}", -32601)

    async def create(self, request: CreateTerminalRequest) -> CreateTerminalResponse:
        """Check permission and cwd, then start the command (see the module docstring)."""
        if self._closed:
            raise _refuse("the session is closing", PERMISSION_DENIED_RPC)
        argv = _argv(request)
        allowed, fail = self.policy.terminal_allowed(shlex.join(argv))
        if not allowed:
            if fail is not None and self._on_turn_failure is not None:
                self._on_turn_failure(fail)
            raise _refuse(
                f"running {shlex.join(argv)!r} is denied (permissionMode {self.policy.mode}, "
                f"nonInteractivePermissions {self.policy.non_interactive}); set "
                'permissionMode "approve-all" to allow commands', PERMISSION_DENIED_RPC,
            )
        # the terminals still starting count too: concurrent creates all pass the checks
        # before any of them is in ``terminals``
        if len(self.terminals) + len(self._starting) >= MAX_TERMINALS:
            raise _refuse(f"too many terminals (at most {MAX_TERMINALS}); release some")
        limit = DEFAULT_OUTPUT_LIMIT if request.output_byte_limit is None else (
            min(max(0, request.output_byte_limit), MAX_OUTPUT_LIMIT))
        held = sum(t.output.limit for t in self.terminals.values()) + sum(
            self._starting.values())
        if held + limit > self.output_budget:
            raise _refuse(
                f"terminal output budget: this session's terminals may keep {held} bytes of "
                f"output; {limit} more would pass terminalOutputMaxBytes "
                f"({self.output_budget}); release a terminal or ask a smaller outputByteLimit")
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(AUTH_ENV_PREFIX)}
        env = {**inherited, **{v.name: v.value for v in request.env}}
        terminal_id = f"term_{uuid.uuid4().hex[:16]}"
        self._starting[terminal_id] = limit  # reserved until it is in ``terminals``
        try:
            cwd_fd = await trio.to_thread.run_sync(_open_cwd, request.cwd, self.cwd)
            term = Terminal(terminal_id=terminal_id, argv=argv, cwd_fd=cwd_fd, env=env,
                            output_limit=limit, owner=self)
            try:
                await self.nursery.start(term.run)
            finally:
                os.close(cwd_fd)  # the child is in it (or never started)
            self.terminals[term.id] = term
        finally:
            del self._starting[terminal_id]
        if self._closed:  # closed while starting: never leave it running
            await self.aclose()
            raise _refuse("the session is closing", PERMISSION_DENIED_RPC)
        self.log.debug("terminal %s: pid %s runs %s", term.id, term.pid,
                       shlex.join(redact_argv(argv, self.secrets)))  # nor any credential
        return CreateTerminalResponse(terminal_id=term.id)

    async def aclose(self) -> None:
        """Release every terminal (trees killed, leases final); later creates are refused."""
        self._closed = True
        terms = list(self.terminals.values())
        self.terminals.clear()
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for term in terms:
                    nursery.start_soon(term.release)
