"""Command-line side of warm sessions: ``prompt --session K`` through the state dir's warm
owner, ``cancel``, ``status``, and the owner parts of ``sessions show|close``.

Guarantees of ``prompt --session K``: the turn runs in the warm owner (started if none is
alive); the reply streams to stdout as it arrives; Ctrl-C cancels this invocation's own turn
only (a queued turn is dropped from the queue, an active one gets ``session/cancel``) and a
second Ctrl-C or SIGTERM stops waiting; the agent stays warm for the next prompt until the
session's idle TTL runs out.  ``--no-wait`` queues the turn, prints its queue position and
returns.

Every call to the owner has a deadline: ``status``, ``cancel`` and ``sessions close`` end
with one ``ACPX_OWNER_UNRESPONSIVE`` line naming the owner's pid (exit 1) when it does not
answer (:data:`ASK_SECONDS`; ``close`` also waits for the agent's kill grace); ``prompt
--session`` bounds connect, send and the owner's ``accepted`` reply by :data:`ACCEPT_SECONDS`
(plus twice ``killGraceSeconds``), then the owner's silence by :data:`SILENCE_SECONDS` (the
owner sends a heartbeat every few seconds while the turn is queued or quiet), so a long turn
that streams or a long queue is fine, a stopped owner is not.  ``--timeout`` travels with the
prompt: the owner bounds this turn (not the queue wait) by it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import trio

from acpx_trio._cli.exits import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NO_SESSION,
    EXIT_OK,
    EXIT_USAGE,
    STOP_SIGNALS,
    event_exit,
    exit_code_for,
    signal_exit,
)
from acpx_trio._cli.options import UsageError
from acpx_trio._cli.output import (
    Output,
    TurnPrinter,
    finish_output,
    format_table,
    usage_text,
)
from acpx_trio._cli.text import first_line, printable
from acpx_trio._errors import AcpxError, ConfigError
from acpx_trio._events import AgentUsage, DoneEvent, ErrorEvent
from acpx_trio._owner.client import (
    ReplyReader,
    connect_or_start,
    connect_owner,
    send_request,
    unresponsive,
    verified_owner_pid,
)
from acpx_trio._owner.wire import (
    AcceptedFrame,
    CancelRequest,
    CancelResult,
    CloseRequest,
    CloseResult,
    ControlRequest,
    EventFrame,
    OwnerErrorFrame,
    OwnerLaunch,
    OwnerStreamCutError,
    PromptRequest,
    Reply,
    Request,
    SessionState,
    StatusRequest,
    StatusResult,
    config_fingerprint,
    credential_env_digests,
)
from acpx_trio._store.config import AcpxConfig, resolve_config

if TYPE_CHECKING:
    from acpx_trio._cli.options import Options

R = TypeVar("R", bound=Request)

__all__ = [
    "cancel_command",
    "close_warm_session",
    "flush_transcript",
    "owner_session_info",
    "status_command",
    "warm_prompt",
]

#: Prompts retried when the owner they reached was shutting down.
PROMPT_ATTEMPTS = 3
#: Bound of the cancel a client sends for its own turn.
CANCEL_SECONDS = 10.0
#: Bound of a ``status``/``cancel`` call (and of ``close`` beyond the agent's kill grace).
ASK_SECONDS = 15.0
#: Bound of connecting, sending a prompt and getting its ``accepted`` reply.
ACCEPT_SECONDS = 30.0
#: Longest silence of the owner during a waiting prompt (it heartbeats every 5 s).
SILENCE_SECONDS = 30.0
_encoder = msgspec.json.Encoder()


#: What the user calls each request field they give (for a usage error).
_OPTION_OF = {"session_key": "--session", "key": "KEY", "value": "VALUE", "model": "--model",
              "agent": "--agent", "cwd": "--cwd", "ttl_seconds": "--ttl",
              "timeout_seconds": "--timeout"}


def _problem(request: Request) -> tuple[str, str] | None:
    """The first field of ``request`` the owner would refuse, with why (the wire's own
    constraints, checked as the owner decodes them, each field on its own so a prompt's text
    is never copied; and a session key that is not blank, as the runtime requires)."""
    key = getattr(request, "session_key", None)
    if isinstance(key, str) and key and not key.strip():
        return "session_key", "a session key must not be blank"
    for name, kind in _checked_fields(type(request)):
        try:
            msgspec.convert(getattr(request, name), type=kind)
        except msgspec.ValidationError as exc:
            return name, str(exc)
    return None


@functools.cache
def _checked_fields(request_type: type[Request]) -> tuple[tuple[str, Any], ...]:
    """Each field of ``request_type`` and its type (constraints included), but a prompt's
    ``text`` (bounded by the frame size, not a field constraint).  Cached: reading a
    Struct's fields resolves its annotations (about 0.2 ms)."""
    return tuple((f.name, f.type) for f in msgspec.structs.fields(request_type)
                 if f.name != "text")


def checked(request: R, names: Mapping[str, str] | None = None) -> R:
    """``request`` when the owner would accept it (see :func:`_problem`); else a
    :class:`UsageError` (exit 2) naming the option (``names`` overrides what a field is
    called), before any owner is asked or started."""
    problem = _problem(request)
    if problem is not None:
        name, why = problem
        option = {**_OPTION_OF, **(names or {})}.get(name, name)
        raise UsageError(f"{option}: {why}")
    return request


# -- talking to the owner ---------------------------------------------------------------------
async def _ask(state_dir: Path, request: Request, seconds: float = ASK_SECONDS) -> Any:
    """One request to the live owner; ``None`` when no owner is alive, or when the owner
    could not be asked this (a session key the wire cannot carry names no warm session; the
    commands that take the key from the user refuse it first, see :func:`checked`).  An
    owner that does not answer within ``seconds`` raises ``ACPX_OWNER_UNRESPONSIVE`` (naming
    its pid)."""
    if _problem(request) is not None:
        return None
    with trio.move_on_after(seconds) as scope:
        stream = await connect_owner(state_dir)
        if stream is None:
            return None
        async with stream:
            replies = await send_request(stream, request)
            last: Any = None
            while (frame := await replies.next_reply()) is not None:
                last = frame
            return last
    assert scope.cancelled_caught
    raise await unresponsive(state_dir, type(request).__name__.removesuffix("Request").lower()
                             + " request", seconds)


async def owner_session_info(state_dir: Path, key: str) -> tuple[int | None,
                                                                 SessionState | None]:
    """The live owner's pid and its state of session ``key`` (``None`` where absent)."""
    try:
        result = await _ask(state_dir, StatusRequest(session_key=key))
    except AcpxError:
        return None, None
    if not isinstance(result, StatusResult):
        return None, None
    return result.owner_pid, next(iter(result.sessions), None)


async def flush_transcript(state_dir: Path, key: str) -> None:
    """Have the live owner (if any) write out ``key``'s buffered transcript."""
    with contextlib.suppress(AcpxError):  # no usable owner: the files are what there is
        await _ask(state_dir, StatusRequest(session_key=key, flush_transcript=True))


async def close_warm_session(state_dir: Path, key: str,
                             kill_grace: float = 0.0) -> CloseResult | None:
    """Ask the live owner to end ``key``'s agent; ``None`` when no owner is alive.  Bounded
    by :data:`ASK_SECONDS` plus twice the agents' ``kill_grace``."""
    result = await _ask(state_dir, CloseRequest(session_key=key),
                        ASK_SECONDS + 2 * kill_grace)
    return result if isinstance(result, CloseResult) else None


# -- prompt -----------------------------------------------------------------------------------
def _launch(raw: dict[str, Any], opts: Options) -> tuple[OwnerLaunch, AcpxConfig]:
    config = resolve_config(raw, opts.cwd, host_state_dir=opts.state_dir)  # ConfigError early
    return OwnerLaunch(raw_config=raw, workspace_dir=str(opts.cwd),
                       default_ttl_seconds=config.queue_owner_ttl_seconds,
                       credential_names=_auth_names(config)), config


def _auth_names(config: AcpxConfig) -> list[str]:
    """The environment names the auth lookup tries for the config's ``auth`` methods."""
    if not config.auth:
        return []
    # local: the runtime's imports (the ACP wire) would slow every warm client's start
    from acpx_trio._runtime.auth import credential_names

    return sorted({n for method in config.auth for n in credential_names(method)})


class _Client:
    """One prompt's client: its request, its signals, its cancel."""

    def __init__(self, state_dir: Path, request: PromptRequest, printer: TurnPrinter) -> None:
        self.state_dir = state_dir
        self.request = request
        self.printer = printer
        self.signum: int | None = None
        self.waiting = trio.CancelScope()
        #: The prompt frame may have reached the owner (from here on, cancel by request id).
        self.sent = False
        #: A cancel of our turn is wanted; ``cancel_confirmed``: the owner found the turn.
        self.cancel_wanted = False
        self.cancel_confirmed = False
        #: The turn is over (its output may still be on its way to stdout).
        self.finished = False
        #: A signal asked to stop waiting (not the first Ctrl-C's cancel): the wait for
        #: stdout is cut too, even when the signal came before it began.
        self.stopping = False

    async def send_cancel(self) -> None:
        """Cancel our turn (queued: dropped; active: ``session/cancel``).  Bounded."""
        self.cancel_wanted = True
        if self.cancel_confirmed:
            return
        with trio.move_on_after(CANCEL_SECONDS):  # noqa: ASYNC912 (_ask always connects)
            try:
                result = await _ask(self.state_dir, CancelRequest(
                    session_key=self.request.session_key, request_id=self.request.request_id))
                self.cancel_confirmed = isinstance(result, CancelResult) and result.cancelled
            except (AcpxError, OSError, trio.BrokenResourceError) as exc:
                self.printer.note(f"could not cancel the turn: {exc}")

    async def on_accepted(self) -> None:
        """A cancel that raced the prompt frame (the owner had not queued it yet) is sent
        again now that the turn is known to be queued."""
        if self.cancel_wanted and not self.cancel_confirmed:
            await self.send_cancel()

    async def watch(self, signals: Any) -> None:
        count = 0
        async for signum in signals:
            count += 1
            self.signum = self.signum or signum
            self.printer.output.unbound()  # the turn's end is read whatever stdout does
            if self.finished:  # the turn is over: stop waiting for stdout
                self.waiting.cancel()
                continue
            if not self.sent:  # nothing submitted yet: just stop
                self.printer.note("interrupted before the prompt was sent")
                self.stopping = True
                self.waiting.cancel()
                continue
            if signum == signal.SIGINT and count == 1:
                self.printer.note("interrupted: cancelling this turn (Ctrl-C again to stop "
                                  "waiting)")
                await self.send_cancel()
                continue
            self.printer.note("stopped waiting for the turn")
            self.stopping = True
            await self.send_cancel()
            self.waiting.cancel()




async def _next(client: _Client, replies: ReplyReader, seconds: float,
                what: str) -> list[Reply] | None:
    """The owner's next frames (``None``: it closed the connection), or
    ``ACPX_OWNER_UNRESPONSIVE`` after ``seconds`` of silence."""
    replies.silence = seconds
    try:
        return await replies.next_replies()
    except trio.TooSlowError:
        raise await unresponsive(client.state_dir, what, seconds) from None


async def _stream(client: _Client, launch: OwnerLaunch, opts: Options,
                  config: AcpxConfig) -> int:
    printer, req = client.printer, client.request
    limit = config.owner_frame_max_bytes
    # the owner may first finish closing the session's previous agent (kill grace)
    accept_seconds = ACCEPT_SECONDS + 2 * config.kill_grace_seconds
    for attempt in range(PROMPT_ATTEMPTS):
        stream = await connect_or_start(opts.state_dir, launch)
        async with stream:
            accepted = False
            owner_pid = 0
            client.sent = True
            replies: ReplyReader | None = None
            with trio.move_on_after(accept_seconds):
                replies = await send_request(stream, req, limit=limit)
            if replies is None:
                raise await unresponsive(opts.state_dir, "the prompt", accept_seconds)
            retry = False
            while not retry:
                try:
                    frames = await _next(client, replies, SILENCE_SECONDS if accepted
                                         else accept_seconds,
                                         "during the turn" if accepted else "the prompt")
                except OwnerStreamCutError:
                    if not accepted:
                        raise
                    frames = None  # cut mid-frame: the owner died, or dropped this command
                if frames is None:
                    break
                for frame in frames:
                    if isinstance(frame, EventFrame):  # the turn's stream: first
                        ev = frame.event
                        if (isinstance(ev, DoneEvent) and ev.stop_reason == "cancelled"
                                and not client.cancel_wanted):
                            printer.note("the turn was cancelled from outside this command "
                                         "(`acpx-trio cancel`, `sessions close`, or the "
                                         "warm owner stopping)")
                        ended = event_exit(ev, printer)
                        if ended is not None:  # the final frame: nothing follows it
                            return ended
                    elif isinstance(frame, OwnerErrorFrame):
                        if (frame.retryable and not accepted
                                and attempt + 1 < PROMPT_ATTEMPTS):
                            retry = True
                            break
                        _report(printer, frame.code, frame.message)
                        return (EXIT_USAGE if frame.code.endswith("CONFIG_MISMATCH")
                                else EXIT_ERROR)
                    elif isinstance(frame, AcceptedFrame):
                        accepted = True
                        owner_pid = frame.owner_pid
                        await client.on_accepted()
                        if not req.wait:
                            _queued(printer, frame)
                            return EXIT_OK
                        if opts.verbose:
                            printer.note(f"queued at position {frame.position} in owner "
                                         f"pid {frame.owner_pid}")
                if printer.output.full:  # stdout lags: read on once it took its share
                    await printer.output.wait_room()
            if accepted:
                await _report_lost(printer, opts.state_dir, owner_pid)
                return EXIT_ERROR
    _report(printer, "ACPX_OWNER_SHUTTING_DOWN", "no warm owner accepted the prompt")
    return EXIT_ERROR


def _queued(printer: TurnPrinter, frame: AcceptedFrame) -> None:
    if printer.json_mode:
        printer.json({"type": "queued", "request_id": frame.request_id,
                      "position": frame.position, "owner_pid": frame.owner_pid})
    else:
        printer.output.write(f"queued at position {frame.position} (request "
                             f"{frame.request_id}, owner pid {frame.owner_pid})\n")


def _owner_lives(state_dir: Path, owner_pid: int) -> bool:
    """Whether owner ``owner_pid`` still runs: it is the owner ``owner.json`` names and proves
    (:func:`~acpx_trio._owner.client.verified_owner_pid`: a pid reused since, or a new owner
    between binding its socket and writing its record, is not it), and it is not exiting (a
    SIGKILLed owner closes its connections while it exits, before it is a zombie, so the cut
    stream comes first).  Blocking."""
    from acpx_trio._process.identity import runs

    return verified_owner_pid(state_dir) == owner_pid and runs(owner_pid)


async def _report_lost(printer: TurnPrinter, state_dir: Path, owner_pid: int) -> None:
    """The stream of a turn that owner ``owner_pid`` accepted ended without its end: the
    owner went away, or it dropped this command, which stopped reading (suspended with
    Ctrl-Z) while the owner kept sending, so that no session waits on it."""
    if await trio.to_thread.run_sync(_owner_lives, state_dir, owner_pid):
        _report(printer, "ACPX_CLIENT_DROPPED",
                "the warm owner dropped this command's stream: it stopped reading "
                "(suspended?) while the turn went on; the turn carries on in the owner "
                "(`acpx-trio sessions history` shows how it ended)")
    else:
        _report(printer, "ACPX_OWNER_LOST", "the warm owner went away during the turn")


def _report(printer: TurnPrinter, code: str, message: str) -> None:
    if printer.json_mode:
        printer.json(ErrorEvent(code=code, message=message))
    printer.error(f"{code}: {first_line(message)}")


async def warm_prompt(ns: argparse.Namespace, opts: Options, *, raw: dict[str, Any],
                      agent: str, text: str) -> int:
    """``prompt --session K`` through the warm owner (see the module docstring).  ``raw`` and
    ``agent`` are the turn's plugin config and agent (from :mod:`.run`)."""
    launch, config = await trio.to_thread.run_sync(_launch, raw, opts)
    req = PromptRequest(request_id=uuid.uuid4().hex[:16], session_key=ns.session, agent=agent,
                        text=text, cwd=config.cwd, config_fingerprint=config_fingerprint(raw),
                        wait=not ns.no_wait, ttl_seconds=ns.ttl,
                        timeout_seconds=config.timeout_seconds,
                        credential_env=credential_env_digests(os.environ,
                                                              _auth_names(config)),
                        model=ns.model)
    checked(req)  # before an owner is started for it
    output = Output()
    printer = TurnPrinter(output, json_mode=opts.json, verbose=opts.verbose, quiet=opts.quiet)
    client = _Client(opts.state_dir, req, printer)
    code = EXIT_ERROR
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(output.run)
            nursery.start_soon(client.watch, signals)
            try:
                with client.waiting:
                    code = await _stream(client, launch, opts, config)
            except ConfigError as exc:
                _report(printer, exc.code, str(exc))
                code = EXIT_USAGE
            except AcpxError as exc:
                _report(printer, exc.code, str(exc))
                code = EXIT_ERROR
            if client.signum is not None and (
                    code in (EXIT_INTERRUPTED, EXIT_ERROR) or client.waiting.cancelled_caught):
                code = signal_exit(client.signum)
            printer.finish()
            client.finished = True
            client.waiting = trio.CancelScope()  # a signal now ends the wait for stdout
            if client.stopping:  # and so does one that came already (while the turn ended)
                client.waiting.cancel()
            with client.waiting:
                code = await finish_output(output, code)
            if client.signum is not None and (client.waiting.cancelled_caught
                                              or output.unwritten):
                code = signal_exit(client.signum)  # interrupted, the output not all out
                await output.flush_notes()
            nursery.cancel_scope.cancel()
    return code


# -- cancel / status --------------------------------------------------------------------------
async def cancel_command(session_key: str, opts: Options) -> int:
    """Cancel the session's running turn; no owner or nothing running is a success."""
    out = Output()
    result = await _ask(opts.state_dir, checked(CancelRequest(session_key=session_key)))
    cancelled = isinstance(result, CancelResult) and result.cancelled
    if opts.json:
        out.write(_encoder.encode({"session_key": session_key,
                                   "cancelled": cancelled}).decode() + "\n")
    else:
        out.write(("cancelled the running turn" if cancelled else "nothing to cancel")
                  + f" of {printable(session_key)}\n")
    await out.drain()
    return EXIT_OK


async def control_command(session_key: str, action: str, value: str, key: str | None,
                          opts: Options) -> int:
    """``set`` / ``set-mode`` on a warm session: 0 when applied; no owner or no such session
    exits 4, a key, value or mode the agent does not offer exits 2 (the message names the
    choices), an agent failure 1."""
    out = Output()
    request = checked(ControlRequest(session_key=session_key, action=action,  # type: ignore[arg-type]
                                     key=key, value=value),
                      {"value": "MODE"} if action == "mode" else None)
    result = await _ask(opts.state_dir, request)
    code = EXIT_OK
    if result is None:
        code = EXIT_NO_SESSION
        message = (f"no warm owner for {printable(str(opts.state_dir))}: start the session "
                   "with prompt --session first")
        out.write(f"acpx-trio: {message}\n", err=True)
    elif isinstance(result, OwnerErrorFrame):
        code = exit_code_for(result.code)
        out.write(f"acpx-trio: {result.code}: {printable(first_line(result.message))}\n",
                  err=True)
    elif opts.json:
        out.write(_encoder.encode({"session_key": session_key, "action": action, "key": key,
                                   "value": value, "applied": True}).decode() + "\n")
    else:
        what = {"mode": "mode", "model": "model"}.get(action, f"option {key}")
        out.write(f"set {what} = {printable(value)} on {printable(session_key)}\n")
    await out.drain()
    return code


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}s"


def _agent_usages(state_dir: Path, pids: list[int | None]) -> list[AgentUsage | None]:
    """The leaf-cgroup usage of each agent pid, found through its open lease in
    ``state_dir`` (``None``: no such lease).  Blocking."""
    from acpx_trio._process.cgroup import lease_usage
    from acpx_trio._store.leases import peek_leases

    leases, _problem = peek_leases(state_dir / "acpx")
    by_root = {x.root_pid: x for x in leases if not x.state.is_final and x.root_pid > 0}
    out: list[AgentUsage | None] = []
    for pid in pids:
        lease = by_root.get(pid or 0)
        out.append(None if lease is None else lease_usage(lease.cgroup))
    return out


async def status_command(session_key: str | None, opts: Options) -> int:
    """Owner pid and each warm session's agent pid, queue depth, idle time and TTL."""
    out = Output()
    result = await _ask(opts.state_dir, checked(StatusRequest(session_key=session_key)))
    if not isinstance(result, StatusResult):
        if opts.json:  # the shape of a StatusResult, with no owner
            out.write(_encoder.encode({"kind": "status_result", "owner_pid": None,
                                       "state_dir": str(opts.state_dir),
                                       "uptime_seconds": None, "sessions": []}).decode()
                      + "\n")
        else:
            out.write(f"no warm owner for {printable(str(opts.state_dir))}\n")
        await out.drain()
        return EXIT_OK
    usages = await trio.to_thread.run_sync(
        _agent_usages, opts.state_dir, [x.agent_pid for x in result.sessions])
    if opts.json:
        doc = msgspec.to_builtins(result)
        for row, usage in zip(doc["sessions"], usages, strict=True):
            row["usage"] = msgspec.to_builtins(usage)
        out.write(_encoder.encode(doc).decode() + "\n")
    else:
        out.write(f"owner pid {result.owner_pid} (up {_seconds(result.uptime_seconds)}) on "
                  f"{printable(result.state_dir)}\n")
        rows = [(printable(s.session_key), s.agent or "-", s.agent_pid or "-",
                 (s.active_request_id and "busy") or "idle", s.queue_depth,
                 _seconds(s.idle_seconds), "forever" if s.ttl_seconds == 0
                 else _seconds(s.ttl_seconds), usage_text(u))
                for s, u in zip(result.sessions, usages, strict=True)]
        if rows:
            out.write(format_table(rows, ("SESSION", "AGENT", "AGENT PID", "STATE", "QUEUED",
                                          "IDLE", "TTL", "USAGE")) + "\n")
        elif session_key is not None:
            out.write(f"no warm session {printable(session_key)}\n")
        else:
            out.write("no warm sessions\n")
    await out.drain()
    return EXIT_OK

