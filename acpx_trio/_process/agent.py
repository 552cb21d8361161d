"""One agent process tree, its lease, and its ACP connection.

Guarantees of :class:`AgentProcess`:

* **Traced before it exists**: the lease is saved (``root_pid == 0``) before the spawn and
  completed with the pid, start time, start ticks, boot id and process group after it, so a
  crash at any moment leaves a record the next start-up can reap.
* **Nothing survives it**: when the process is closed, when its leader dies, when its connection
  breaks, and when the task running it is cancelled or fails, the whole owned tree is killed
  (the leader's tree and every process carrying the lease tags, daemons included), the direct
  child is reaped, and the lease is moved ``open -> closing -> closed`` (``lost`` when nothing
  was ever spawned; ``open -> closed`` directly when the scan after the leader's exit proves
  the tree gone, so nothing had to be signalled).  That cleanup is shielded from
  cancellation and bounded in time.
* **Liveness is the leader's exit**, not EOF on its stdout (a grandchild may hold stdout).
* **Its last words are kept**: stderr is drained continuously into a bounded tail used in
  error messages; it never blocks the agent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence

import msgspec
import trio

from acpx_trio._acp import DEFAULT_MAX_LINE_BYTES, AcpConnection, tap_streams
from acpx_trio._errors import (
    AcpProtocolError,
    AgentProcessError,
    LeaseStoreError,
    redact,
    text_problem,
)
from acpx_trio._log import Logger
from acpx_trio._process import held
from acpx_trio._process.cgroup import remove_empty_leaf
from acpx_trio._process.owned import (
    RootRecord,
    close_owned,
    complete_lease,
    save_pending_lease,
    spawn_owned,
    spawn_spare,
)
from acpx_trio._process.reaper import (
    CleanupResult,
    ProcessCleanupDeps,
)
from acpx_trio._process.scan import PidWindow, open_window
from acpx_trio._process.spare_leaf import SpareLeaves
from acpx_trio._process.tools import GatedReceiveStream
from acpx_trio._store.config import (
    DEFAULT_CONTAINMENT,
    DEFAULT_KILL_GRACE_SECONDS,
    ContainmentMode,
)
from acpx_trio._store.lease_model import LeaseState, ProcessLease
from acpx_trio._store.leases import LeaseStore

__all__ = ["STDERR_TAIL_BYTES", "AgentProcess", "AgentSpawn"]

STDERR_TAIL_BYTES = 16 * 1024
#: After closing stdin, how long the agent may take to exit on its own before signals.
STDIN_GRACE_SECONDS = 0.2
#: After the leader exits, how long its remaining stdout may take to arrive.
EXIT_DRAIN_SECONDS = 0.25
#: Upper bound of a cleanup beyond the kill grace (lease writes, scans, reaping).
CLEANUP_EXTRA_SECONDS = 10.0
_log = logging.getLogger("acpx_trio.agent")


def spawn_problem(argv: Sequence[str], cwd: str, env: Mapping[str, str]) -> str | None:
    """Why ``argv`` cannot be started in ``cwd`` with ``env`` whatever is on disk, or ``None``:
    an argument or the directory that is not text (:func:`~acpx_trio._errors.text_problem`:
    a lone surrogate our lease cannot record, a NUL no ``exec`` takes), an environment variable
    whose name is empty or holds ``=`` or a NUL, or whose value holds a NUL (never shown)."""
    if not argv:
        return "the command is empty"
    for i, word in enumerate(argv):
        if (problem := text_problem(word, nul=False)) is not None:
            return f"argument {i} {problem}"
    if (problem := text_problem(cwd, nul=False)) is not None:
        return f"the working directory {problem}"
    for name, value in env.items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            return f"environment variable {name!r} cannot be passed (a NUL, or a bad name)"
    return None


class AgentSpawn(msgspec.Struct, frozen=True, kw_only=True):
    """What an :class:`AgentProcess` starts, and how (data only; credentials are passed to
    the process separately and never kept here).

    ``kill_grace``: SIGTERM -> SIGKILL grace of its cleanup; ``cleanup_timeout``: bound of the
    shielded cleanup (default twice the grace plus :data:`CLEANUP_EXTRA_SECONDS`);
    ``containment``: the config's (a leaf cgroup where it gives one)."""

    argv: tuple[str, ...]
    cwd: str
    session_key: str
    gateway_instance_id: str
    kill_grace: float = DEFAULT_KILL_GRACE_SECONDS
    cleanup_timeout: float | None = None
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    install_hint: str | None = None
    containment: ContainmentMode = DEFAULT_CONTAINMENT


class AgentProcess:
    """A started agent (see the module docstring for guarantees).

    Create it, then ``await nursery.start(agent.run)``; the
    nursery task lives as long as the process.  :meth:`aclose` kills the tree and returns when
    the lease is final.  :attr:`connection` is usable once started.  Its lease records the
    lease store's directory as ``wrapperRoot`` (as the TypeScript gateway does)."""

    def __init__(
        self,
        spawn: AgentSpawn,
        *,
        lease_store: LeaseStore,
        cleanup_deps: ProcessCleanupDeps | None = None,
        on_connection: Callable[[AcpConnection], None] | None = None,
        receive_gate: Callable[[], Awaitable[None]] | None = None,
        logger: Logger | None = None,
        extra_env: Mapping[str, str] | None = None,
        secrets: Sequence[str] = (),
        spare_leaves: SpareLeaves | None = None,
    ) -> None:
        self.spawn = spawn
        self.argv = spawn.argv
        #: The config's ``containment`` (a leaf cgroup where it gives one).
        self.containment: ContainmentMode = spawn.containment
        #: Added to the inherited environment (credentials, ``CODEX_HOME``); never persisted.
        self._extra_env = dict(extra_env or {})
        #: Values redacted from :meth:`stderr_tail` (credentials handed to the agent).
        self._secrets = tuple(secrets)
        #: Where a launch already inside its leaf cgroup may be taken from (cgroup mode).
        self._spare_leaves = spare_leaves if spawn.containment != "process-group" else None
        self._spare_record: RootRecord | None = None
        #: opened right before a direct spawn (the close's proof looks only after it)
        self._window: PidWindow | None = None
        self.cwd = spawn.cwd
        self.session_key = spawn.session_key
        self.gateway_instance_id = spawn.gateway_instance_id
        self.lease_store = lease_store
        self.kill_grace = spawn.kill_grace
        #: Bound (Trio's clock) of the shielded cleanup.
        self.cleanup_timeout = (
            spawn.cleanup_timeout
            if spawn.cleanup_timeout is not None
            else spawn.kill_grace * 2 + CLEANUP_EXTRA_SECONDS
        )
        self.cleanup_deps = cleanup_deps
        self.max_line_bytes = spawn.max_line_bytes
        self.install_hint = spawn.install_hint
        self._on_connection = on_connection
        self._receive_gate = receive_gate
        self.log = logger or _log
        self.lease: ProcessLease | None = None
        self.process: trio.Process | None = None
        self.connection: AcpConnection | None = None
        self.create_time: float | None = None
        self.start_ticks: int | None = None
        #: Set when the leader's exit was observed (``returncode`` is known).
        self.exited = trio.Event()
        #: Set when cleanup finished (tree killed, child reaped, lease final or logged).
        self.closed = trio.Event()
        #: The fatal protocol error that ended the connection, if any.
        self.protocol_error: AcpProtocolError | None = None
        self.cleanup_result: CleanupResult | None = None
        self.close_reason: str | None = None
        self._stop = trio.Event()
        self._serve_done = trio.Event()
        self._lease_done = trio.Event()
        self._cleanup_started = False
        self._run_entered = False
        self._stderr = bytearray()
        #: the buffer lost its start (trimmed): its first line may be part of one
        self._stderr_cut = False

    # ------------------------------------------------------------------ state

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    @property
    def alive(self) -> bool:
        """True while the leader runs and no close has begun."""
        return (
            self.process is not None
            and self.process.returncode is None
            and not self._stop.is_set()
            and not self._cleanup_started
        )

    @property
    def secrets(self) -> tuple[str, ...]:
        """The credentials handed to the agent (to redact from what it says)."""
        return self._secrets

    @property
    def lease_id(self) -> str | None:
        return None if self.lease is None else self.lease.lease_id

    def stderr_tail(self) -> str:
        """The last (at most 16 KiB of) stderr, decoded leniently, with credentials redacted
        (the ones handed to the agent and anything that looks like one) before it is cut, so
        no cut leaves part of one: where the kept stderr lost its start, its first line (it
        may begin inside a credential) is dropped."""
        raw = bytes(self._stderr)
        if self._stderr_cut:
            newline = raw.find(b"\n")
            longest = max((len(s.encode()) for s in self._secrets), default=0)
            raw = raw[newline + 1:] if newline != -1 else raw[longest:]
        return redact(raw.decode("utf-8", "replace"), self._secrets)[-STDERR_TAIL_BYTES:]

    def describe_exit(self) -> str:
        """A sentence on how the agent ended (for error messages)."""
        code = self.returncode
        if self.protocol_error is not None:
            return f"the agent broke the protocol: {self.protocol_error.message}"
        if code is None:
            return "the agent closed its output"
        if code < 0:
            return f"the agent process {self.pid} was killed by signal {-code}"
        return f"the agent process {self.pid} exited with status {code}"

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Spawn, serve, and clean up.  Started with ``nursery.start``.

        Raises :class:`AgentProcessError` (``ACP_AGENT_SPAWN_FAILED``) only before it reports
        started; afterwards it never raises except ``Cancelled``."""
        self._run_entered = True
        try:
            await self._spawn()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._complete_lease)
                    nursery.start_soon(self._drain_stderr)
                    nursery.start_soon(self._serve)
                    nursery.start_soon(self._watch_exit)
                    task_status.started()
                    await self._stop.wait()
                    with trio.CancelScope(shield=True):
                        await self._cleanup()
                    with trio.move_on_after(EXIT_DRAIN_SECONDS):
                        await self._serve_done.wait()
                    nursery.cancel_scope.cancel()
            except Exception as exc:  # never take the owner's nursery down
                self.log.exception("agent process %s task failed: %r", self.pid, exc)
        finally:
            with trio.CancelScope(shield=True):
                await self._cleanup()

    async def wait_recorded(self) -> None:
        """Wait until the lease holds the root's identity (``create_time``/``start_ticks``
        are then known).  Bounded by the lease write."""
        await self._lease_done.wait()

    async def aclose(self, reason: str = "closed") -> None:
        """Kill the tree and finalise the lease; returns when done.  Idempotent.

        If the caller is cancelled the cleanup still completes in the process's own task."""
        if self.close_reason is None:
            self.close_reason = reason
        self._stop.set()
        if not self._run_entered:  # never started: nothing to clean up
            self._cleanup_started = True
            self.closed.set()
        await self.closed.wait()

    # ------------------------------------------------------------------ spawn

    async def _spawn(self) -> None:
        # watchdog armed, lease saved before the spawn, tags, own session: see _process.owned
        env = {**os.environ, **self._extra_env}
        problem = spawn_problem(self.argv, self.cwd, env)
        if problem is not None:  # refused before a lease is written or anything is started
            command = " ".join(map(str, self.argv))
            raise AgentProcessError(f"could not start the agent {command!r} in {self.cwd!r}: "
                                    f"{problem}", code="ACP_AGENT_SPAWN_FAILED")
        if self._spare_leaves is not None:
            spare = await spawn_spare(
                self._spare_leaves, self.lease_store, self.argv, env=env, cwd=self.cwd,
                gateway_instance_id=self.gateway_instance_id, session_key=self.session_key,
                log=self.log,
            )
            if spare is not None:
                self.process, self._spare_record = spare
                self.lease = self._spare_record.lease
                self.log.debug("agent %s: started in a ready leaf cgroup %s", self.process.pid,
                               self.lease.cgroup)
        if self.process is None:
            await self._spawn_direct(env)
        if self._spare_leaves is not None:  # started: the next launch is made while it starts up
            self._spare_leaves.refill()
        assert self.process is not None
        assert self.process.stdin is not None and self.process.stdout is not None
        stdin, stdout = tap_streams(self.process.stdin, self.process.stdout)
        if self._receive_gate is not None:
            stdout = GatedReceiveStream(stdout, self._receive_gate)
        self.connection = AcpConnection(
            stdin,
            stdout,
            max_line_bytes=self.max_line_bytes,
            on_warning=self._on_warning,
        )
        if self._on_connection is not None:
            self._on_connection(self.connection)

    async def _spawn_direct(self, env: dict[str, str]) -> None:
        lease = await save_pending_lease(
            self.lease_store,
            gateway_instance_id=self.gateway_instance_id,
            session_key=self.session_key,
            command=self.argv,
            log=self.log,
            containment=self.containment,
        )
        self.lease = lease
        self._window = open_window()  # before the spawn: see close_owned
        try:
            self.process = await spawn_owned(
                self.argv,
                lease,
                env=env,
                cwd=self.cwd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            hint = f" {self.install_hint}" if self.install_hint else ""
            reason = exc.strerror or str(exc)
            raise AgentProcessError(
                f"could not start the agent {' '.join(self.argv)!r} in {self.cwd}: {reason}.{hint}",
                code="ACP_AGENT_SPAWN_FAILED",
            ) from exc

    async def _complete_lease(self) -> None:
        """Record the root's identity in the lease (runs beside the handshake)."""
        try:
            assert self.process is not None and self.lease is not None
            record = self._spare_record  # a spare launch's lease was saved complete
            if record is None:
                record = await complete_lease(self.lease_store, self.lease, self.process,
                                              self.log)
            self.lease = record.lease
            self.create_time, self.start_ticks = record.create_time, record.start_ticks
        finally:
            self._lease_done.set()

    def _on_warning(self, warning: AcpProtocolError) -> None:
        self.log.warning("agent %s: %s", self.pid, warning.message)

    # ------------------------------------------------------------------ background tasks

    async def _drain_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        stream = self.process.stderr
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await stream.receive_some(65536):
                self._stderr += data
                if len(self._stderr) > 2 * STDERR_TAIL_BYTES:
                    del self._stderr[:-STDERR_TAIL_BYTES]
                    self._stderr_cut = True

    async def _serve(self) -> None:
        assert self.connection is not None
        try:
            await self.connection.serve()
        except AcpProtocolError as exc:
            self.protocol_error = exc
            self.log.warning("agent %s: fatal protocol error: %s", self.pid, exc.message)
        finally:
            self._serve_done.set()
            self._stop.set()  # no usable connection: the process has no purpose left

    async def _watch_exit(self) -> None:
        assert self.process is not None
        await self.process.wait()
        self.exited.set()
        with trio.move_on_after(EXIT_DRAIN_SECONDS):
            await self._serve_done.wait()
        self._stop.set()

    # ------------------------------------------------------------------ cleanup

    async def _mark(self, state: LeaseState) -> None:
        if self.lease is None:
            return
        try:
            updated = await self.lease_store.mark_state(self.lease.lease_id, state)
        except (LeaseStoreError, ValueError) as exc:
            self.log.error("lease %s: could not mark %s: %s", self.lease.lease_id, state, exc)
            return
        if updated is not None:
            self.lease = updated

    async def _cleanup(self) -> None:
        if self._cleanup_started:
            await self.closed.wait()
            return
        self._cleanup_started = True
        try:
            with trio.move_on_after(self.cleanup_timeout) as scope:
                await self._do_cleanup()
            if scope.cancelled_caught:
                self.log.error("agent %s: cleanup did not finish in time", self.pid)
        finally:
            self.closed.set()
        leaf = None if self.lease is None else self.lease.cgroup
        if leaf is not None:  # after the close is reported (only an empty leaf is removed)
            with trio.move_on_after(self.cleanup_timeout):
                await trio.to_thread.run_sync(remove_empty_leaf, leaf)

    async def _close_stdin_and_wait(self, proc: trio.Process) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.aclose()
        elif proc.stdin is not None:
            with contextlib.suppress(Exception):
                await proc.stdin.aclose()
        if proc.returncode is None:
            with trio.move_on_after(STDIN_GRACE_SECONDS):
                await proc.wait()

    async def _do_cleanup(self) -> None:
        proc = self.process
        if proc is None:  # spawn failed (or never happened): nothing can be running
            await self._mark(LeaseState.CLOSING)
            await self._mark(LeaseState.LOST)
            if self.lease is not None:
                held.release(self.lease.lease_id)
            return
        with trio.move_on_after(CLEANUP_EXTRA_SECONDS / 2):
            await self._lease_done.wait()  # the pid record lands before any state move
        await self._close_stdin_and_wait(proc)
        self.cleanup_result = await close_owned(
            proc, self.lease, mark=self._mark, create_time=self.create_time,
            start_ticks=self.start_ticks, grace=self.kill_grace, deps=self.cleanup_deps,
            log=self.log, what="agent", remove_leaf=False, window=self._window,
        )
        if proc.returncode is not None:
            self.exited.set()

