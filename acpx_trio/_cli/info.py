"""Inspection commands of the command line: ``sessions``, ``agents``, ``doctor``, ``leases``.

Each returns the process exit code and writes through :class:`~acpx_trio._cli.output.Output`
(so no write blocks the event loop); file and process-table work runs in worker threads.
``doctor`` is the only one that starts agents, each through its own runtime service, and none
is left running when it returns.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from acpx_trio._cli.exits import EXIT_ERROR, EXIT_NO_SESSION, EXIT_OK, EXIT_USAGE
from acpx_trio._cli.options import Options
from acpx_trio._cli.output import Output, format_table, usage_text
from acpx_trio._cli.text import first_line, printable
from acpx_trio._errors import AcpxError, ContainmentError, GatewayInstanceIdError, redact_argv
from acpx_trio._events import AgentUsage
from acpx_trio._store.config import AcpxConfig, ContainmentMode, resolve_config
from acpx_trio._store.transcript import config_credentials

if TYPE_CHECKING:
    from acpx_trio._store.sessions import SessionRecord

__all__ = ["agents_command", "doctor_command", "leases_command", "sessions_command"]

#: Per-agent deadline of ``doctor`` when neither ``--timeout`` nor ``timeoutSeconds`` is set.
DOCTOR_DEFAULT_TIMEOUT = 60.0
_encoder = msgspec.json.Encoder()


async def _resolve(raw: dict[str, Any], opts: Options) -> AcpxConfig:
    """:func:`resolve_config` in a worker thread (it resolves paths on disk)."""
    return await trio.to_thread.run_sync(
        lambda: resolve_config(raw, opts.cwd, host_state_dir=opts.state_dir))


def _json_line(obj: Any) -> str:
    return _encoder.encode(obj).decode()


def _ago(epoch_seconds: float) -> str:
    if epoch_seconds <= 0:
        return "-"
    delta = max(0.0, time.time() - epoch_seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{int(delta // size)}{unit} ago"
    return f"{int(delta)}s ago"


# -- sessions ---------------------------------------------------------------------------------
def _check_state_dir(state_dir: Path) -> None:
    """Refuse an untrusted state dir (and its ``acpx`` dir) before reading anything in it:
    :class:`~acpx_trio.StateFileError`, so the command exits nonzero with the path and fix."""
    from acpx_trio._store.dirs import check_lease_dirs

    check_lease_dirs(state_dir)  # and neither ``acpx`` nor ``acpx/sessions`` a link


def _started_in(records: list[SessionRecord], cwd: Path) -> list[SessionRecord]:
    """The records whose cwd is the directory ``cwd`` names (by path, or the same directory
    through another path).  Blocking."""
    def same(path: str) -> bool:
        try:
            return path == str(cwd) or os.path.samefile(path, cwd)
        except OSError:
            return False
    return [r for r in records if same(r.cwd)]


async def sessions_command(action: str, key: str | None, opts: Options) -> int:
    """``list`` every record (with ``--cwd DIR``: those started in DIR); ``show KEY`` one
    (exit 4 if unknown); ``close KEY``: mark it
    closed so the next prompt of KEY starts a new ACP session (agents of a CLI invocation
    never outlive it, so there is no process to stop)."""
    from acpx_trio._store.sessions import SessionStore

    out = Output()
    await trio.to_thread.run_sync(_check_state_dir, opts.state_dir)
    config = await _resolve(opts.raw_config, opts)
    store = SessionStore(config.state_dir)
    if action == "list":
        records = await store.list()
        if opts.cwd_given:  # only the sessions started in that directory
            records = await trio.to_thread.run_sync(_started_in, records, opts.cwd)
        if opts.json:
            for r in records:
                out.write(_json_line(r) + "\n")
        elif not records:
            where = f" started in {opts.cwd}" if opts.cwd_given else ""
            out.write(f"no sessions{where} in {config.state_dir}\n")
        else:
            rows = [(r.session_key, r.agent, r.mode, "closed" if r.closed else "open",
                     r.backend_session_id or "-", _ago(r.updated_at), r.cwd) for r in records]
            header = ("SESSION", "AGENT", "MODE", "STATE", "ACP SESSION", "UPDATED", "CWD")
            out.write(format_table(rows, header) + "\n")
        await out.drain()
        return EXIT_OK
    if not key:
        await out.emit(f"acpx-trio: sessions {action} needs a session KEY", err=True)
        return EXIT_USAGE
    record = await store.load(key)
    if record is None:
        await out.emit(f"acpx-trio: no session {key!r} in {config.state_dir}", err=True)
        return EXIT_NO_SESSION
    if action == "history":
        from acpx_trio._cli.history import history_command

        return await history_command(opts.state_dir, config, key, opts.json, out)
    if action == "show":
        from acpx_trio._cli.warm import owner_session_info

        owner_pid, warm = await owner_session_info(opts.state_dir, key)
        body = _encoder.encode({**msgspec.to_builtins(record), "owner_pid": owner_pid,
                                "agent_pid": None if warm is None else warm.agent_pid})
        text = body if opts.json else msgspec.json.format(body, indent=2)
        await out.emit(text.decode())
        return EXIT_OK
    from acpx_trio._cli.warm import close_warm_session

    # ends its warm agent (and idle owner)
    await close_warm_session(opts.state_dir, key, config.kill_grace_seconds)
    closed = msgspec.structs.replace(record, closed=True, reset_on_next_ensure=True)
    await store.save(closed)
    if opts.json:
        await out.emit(_json_line({"sessionKey": key, "closed": True}))
    else:
        await out.emit(f"closed session {printable(key)} (its next prompt starts a new ACP "
                       "session)")
    return EXIT_OK


# -- agents -----------------------------------------------------------------------------------
async def agents_command(opts: Options) -> int:
    """Every built-in and configured agent: command, source, whether its launcher is found,
    how it authenticates (``authEnv``: method -> the variables the agent reads)."""
    from acpx_trio._runtime.agents import AgentRegistry
    from acpx_trio._runtime.auth import VENDOR_AUTH_ENV

    out = Output()
    config = await _resolve(opts.raw_config, opts)
    registry = AgentRegistry(config.agents)
    secrets = config_credentials(config)
    rows = []
    for spec in registry.specs():
        installed = await registry.check_installed(spec)
        launch = await registry.prefer_installed(spec)  # what a session would run
        binary = launch.command != spec.command
        command = redact_argv(launch.command, secrets)
        via_npx = spec.uses_npx and not binary
        if opts.json:
            out.write(_json_line({
                "name": spec.name, "command": list(command), "builtin": spec.builtin,
                "installed": installed, "viaNpx": via_npx, "binary": binary,
                "installCommand": spec.install_command,
                "authMethods": list(spec.auth_methods), "authHint": spec.auth_hint,
                "authEnv": {m: list(v) for m, v in VENDOR_AUTH_ENV.get(spec.name, {}).items()
                            if spec.builtin},
            }) + "\n")
            continue
        found = ("yes (binary)" if binary else "yes (npx)" if via_npx else "yes") \
            if installed else "no"
        rows.append((spec.name, found, "built-in" if spec.builtin else "config",
                     shlex.join(command), spec.auth_hint or "-",
                     "-" if installed else (spec.install_command or spec.install_hint())))
    if not opts.json:
        out.write(format_table(
            rows, ("AGENT", "INSTALLED", "SOURCE", "COMMAND", "AUTH", "INSTALL")) + "\n")
    await out.drain()
    return EXIT_OK


# -- doctor -----------------------------------------------------------------------------------
class _DoctorResult(msgspec.Struct, kw_only=True):
    agent: str
    ok: bool
    found: bool
    command: list[str]
    message: str
    seconds: float
    version: str | None = None
    protocol_version: int | None = None
    install_command: str | None = None
    code: str | None = None
    #: Auth methods the agent advertised, and method -> where a credential was found (a
    #: variable name or ``config auth[m]``; never a value).
    auth_methods: list[str] = []
    credentials: dict[str, str] = {}
    #: Method -> what satisfies it (variables to set, or the login to run in a terminal).
    auth_how: dict[str, str] = {}
    #: The program that ran (after the installed-binary preference, as sessions resolve it).
    path: str | None = None
    #: How the agent ended when it died before answering, and its redacted stderr tail.
    exit: str | None = None
    stderr: str | None = None
    details: list[str] = []


def _detail(details: list[Any], prefix: str) -> str | None:
    for d in details:
        if isinstance(d, str) and d.startswith(prefix):
            return d[len(prefix):]
    return None


async def _doctor_one(
    name: str, raw: dict[str, Any], opts: Options, deep: bool = False
) -> _DoctorResult:
    from acpx_trio._runtime.agents import AgentRegistry
    from acpx_trio._service.lazy_runtime import LazyAcpxRuntime
    from acpx_trio._service.open_service import open_runtime_service

    config = await _resolve(raw, opts)
    registry = AgentRegistry(config.agents)
    spec = await registry.prefer_installed(registry.resolve(name))  # as a session resolves it
    found = await registry.check_installed(spec)
    start = trio.current_time()
    async with open_runtime_service(workspace_dir=opts.cwd, state_dir=opts.state_dir,
                                    plugin_config={**raw, "probeAgent": name}) as service:
        runtime = service.require_runtime()
        if deep:  # the CLI always runs the default (lazy) runtime, which knows deep probes
            assert isinstance(runtime, LazyAcpxRuntime)
            report = await runtime.doctor(deep=True)
        else:
            report = await runtime.doctor()
    details = [str(d) for d in report.details]
    protocol = _detail(details, "protocolVersion=")
    message = report.message
    if not report.ok:
        skip = ("agent=", "command=", "cwd=", "path=", "exit=", "stderr: ", "authMethods=",
                "credential:", "authHow:", "protocolVersion=", "agentInfo=", "session=",
                "detail=")
        problems = [d for d in details if not d.startswith(skip)]
        message = problems[0] if problems else report.message
    methods = _detail(details, "authMethods=")
    credentials = {
        d.split("=", 1)[0][len("credential:"):]: d.split("=", 1)[1]
        for d in details if d.startswith("credential:") and "=" in d
    }
    auth_how = {
        d.split("=", 1)[0][len("authHow:"):]: d.split("=", 1)[1]
        for d in details if d.startswith("authHow:") and "=" in d
    }
    command = _detail(details, "command=")
    if not report.ok and deep and report.code not in (None, "ACP_BACKEND_UNAVAILABLE"):
        message = f"{report.code}: {first_line(report.message)}"
    return _DoctorResult(
        agent=name, ok=report.ok, found=found, message=message,
        command=shlex.split(command) if command else list(spec.command),
        code=report.code, auth_methods=methods.split(",") if methods else [],
        credentials=credentials, auth_how=auth_how, path=_detail(details, "path="),
        exit=_detail(details, "exit="), stderr=_detail(details, "stderr: "),
        seconds=round(trio.current_time() - start, 3),
        version=_detail(details, "agentInfo="),
        protocol_version=int(protocol) if protocol and protocol.isdigit() else None,
        install_command=_install_advice(report.ok, found, _detail(details, "exit=") is not None,
                                        report.install_command or spec.install_command,
                                        spec.install_hint()),
        details=details,
    )


def _install_advice(ok: bool, found: bool, exited: bool, command: str | None,
                    hint: str) -> str | None:
    """What doctor suggests installing: the install command (else the hint) when the agent's
    program was not found; its install command when the program ran but the agent exited
    before answering (an adapter missing under ``npx``); nothing when it is fine, or failed
    for another reason (a deadline, a protocol error, an unusable state dir): installing
    would not help there."""
    if ok:
        return None
    if not found:
        return command or hint
    return command if exited else None


async def doctor_command(
    agents: list[str] | None, deadline_seconds: float | None, opts: Options, *,
    deep: bool = False,
) -> int:
    """For each agent (all known ones by default, checked concurrently): is its launcher
    found, does it start and answer ``initialize`` within the deadline, its version; the
    install command when it fails.  Exit 0 when every checked agent is ok, else 1."""
    from acpx_trio._runtime.agents import AgentRegistry

    out = Output()
    raw = dict(opts.raw_config)
    if deadline_seconds is not None:
        raw["timeoutSeconds"] = deadline_seconds
    elif raw.get("timeoutSeconds") is None:
        raw["timeoutSeconds"] = DOCTOR_DEFAULT_TIMEOUT
    if opts.cwd_given or "cwd" not in raw:
        raw["cwd"] = str(opts.cwd)
    config = await _resolve(raw, opts)
    registry = AgentRegistry(config.agents)
    names = [registry.resolve(n).name for n in agents] if agents else registry.names()
    names = list(dict.fromkeys(names))
    results: dict[str, _DoctorResult] = {}

    async def check(name: str) -> None:
        try:
            results[name] = await _doctor_one(name, raw, opts, deep)
        except AcpxError as exc:  # before the agent ran (its state dir, its config)
            spec = await registry.prefer_installed(registry.resolve(name))
            found = await registry.check_installed(spec)
            results[name] = _DoctorResult(
                agent=name, ok=False, found=found,
                command=list(redact_argv(spec.command, config_credentials(config))),
                message=f"{exc.code}: {first_line(str(exc))}", seconds=0.0, code=exc.code,
                install_command=_install_advice(False, found, False, spec.install_command,
                                                spec.install_hint()),
            )

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(check, name)
    for name in names:
        r = results[name]
        if opts.json:
            out.write(_json_line(r) + "\n")
            continue
        for line in _doctor_lines(r, deep):
            out.write(line + "\n")
    contained, line = await trio.to_thread.run_sync(containment_line, config.containment)
    if not opts.json:
        out.write(line + "\n")
    await out.drain()
    return EXIT_OK if contained and all(r.ok for r in results.values()) else EXIT_ERROR


def containment_line(mode: ContainmentMode = "auto") -> tuple[bool, str]:
    """``containment: cgroup (<path>)`` when each agent gets a leaf cgroup under ``path``
    (killed with ``cgroup.kill``), else ``containment: process-group (<reason>)``; with
    config ``containment = "cgroup"`` where it is unusable, ``(False, "containment: cgroup
    required but unusable (<reason>)")``.  Blocking."""
    from acpx_trio._process.cgroup import resolve_containment

    try:
        used = resolve_containment(mode)
    except ContainmentError as exc:
        return False, f"containment: cgroup required but unusable ({exc.reason})"
    if used.mechanism == "cgroup":
        return True, f"containment: cgroup ({used.path})"
    return True, f"containment: process-group ({used.reason})"


#: Lines of the stderr tail shown under a failed agent.
DOCTOR_STDERR_LINES = 10


def _doctor_lines(r: _DoctorResult, deep: bool) -> list[str]:
    """One agent's text report: a status line, then indented ``label: value`` lines (add a
    line here to report more)."""
    name = r.agent
    if r.ok:
        what = ", ".join(x for x in (r.version, f"ACP v{r.protocol_version}"
                                     if r.protocol_version else None) if x)
        step = "session opened and closed" if deep else "initialize answered"
        lines = [f"ok    {name}: {step} in {r.seconds:.2f}s{f' ({what})' if what else ''}"]
    else:
        lines = [f"FAIL  {name}: {'not found: ' if not r.found else ''}{r.message}"]
    ran = r.path or (r.command[0] if r.command else "?")
    lines.append(f"      command: {shlex.join(r.command)}")
    lines.append(f"      ran: {ran}{f' (agent reports {r.version})' if r.version else ''}")
    if r.exit:
        lines.append(f"      exit: {r.exit}")
    if r.stderr:
        tail = r.stderr.strip().splitlines()[-DOCTOR_STDERR_LINES:]
        lines.append("      stderr (tail, redacted):")
        lines += [f"        {line.rstrip()}" for line in tail]
    if r.auth_methods:
        have = ", ".join(f"{m} ({w})" for m, w in r.credentials.items()) or "none found"
        lines.append(f"      auth methods: {', '.join(r.auth_methods)}; credentials: {have}")
        lines += [f"        {how}" for how in r.auth_how.values()]
    if not r.ok and r.install_command:
        lines.append(f"      install: {r.install_command}")
    return lines


# -- leases -----------------------------------------------------------------------------------
def _read_gateway_id(state_dir: Path) -> str | None:
    """The gateway id for marking "ours" in the table; ``None`` if absent or unusable."""
    from acpx_trio._store.instance import peek_gateway_instance_id

    try:
        return peek_gateway_instance_id(state_dir)
    except (OSError, GatewayInstanceIdError):
        return None


def _liveness(leases: list[Any]) -> list[tuple[bool, bool | None]]:
    """(root alive, owner alive or None when unknown) per lease, from one process snapshot."""
    from acpx_trio._process.identity import boot_id, snapshot_processes
    from acpx_trio._process.reap_plan import LeaseTarget, owner_alive, root_matches

    pids = {x.root_pid for x in leases if x.root_pid > 0}
    pids |= {x.owner_pid for x in leases if x.owner_pid}
    by_pid = {p.pid: p for p in snapshot_processes(pids)}
    this_boot = boot_id()
    out: list[tuple[bool, bool | None]] = []
    for lease in leases:
        root = by_pid.get(lease.root_pid) if lease.root_pid > 0 else None
        alive = (
            root is not None and not root.zombie
            and root_matches(root, LeaseTarget.from_lease(lease), this_boot)
        )
        owner = owner_alive(lease, by_pid, os.getpid()) if lease.owner_pid else None
        out.append((alive, owner))
    return out


def _usages(leases: list[Any]) -> list[AgentUsage | None]:
    """Each open lease's leaf-cgroup usage (``None``: final, or no leaf).  Blocking."""
    from acpx_trio._process.cgroup import leaf_usage

    return [None if x.state.is_final else leaf_usage(x.cgroup) for x in leases]


async def leases_command(include_final: bool, opts: Options) -> int:
    """Leases of this state dir (open and closing; ``--all``: final ones too), each with
    whether its agent process (identity-checked) and its owner are alive."""
    from acpx_trio._store.leases import peek_leases

    out = Output()
    await trio.to_thread.run_sync(_check_state_dir, opts.state_dir)
    lease_dir = opts.state_dir / "acpx"
    leases, problem = await trio.to_thread.run_sync(peek_leases, lease_dir)
    if problem:
        out.write(f"acpx-trio: {problem}\n", err=True)
        if not leases and "invalid entries" not in problem:  # the file itself is unusable:
            await out.drain()  # never "no leases" with exit 0
            return EXIT_ERROR
    if not include_final:
        leases = [x for x in leases if not x.state.is_final]
    ours = await trio.to_thread.run_sync(_read_gateway_id, opts.state_dir)
    states = await trio.to_thread.run_sync(_liveness, leases)
    usages = await trio.to_thread.run_sync(_usages, leases)
    rows = []
    for lease, (alive, owner), usage in zip(leases, states, usages, strict=True):
        if opts.json:
            out.write(_json_line({**msgspec.to_builtins(lease), "alive": alive,
                                  "ownerAlive": owner,
                                  "thisGateway": lease.gateway_instance_id == ours,
                                  "usage": msgspec.to_builtins(usage)}) + "\n")
            continue
        owner_text = "-" if owner is None else f"{lease.owner_pid} ({'alive' if owner else 'dead'})"
        gateway = lease.gateway_instance_id[:8] + ("" if lease.gateway_instance_id == ours
                                                   else " (other)")
        rows.append((lease.lease_id[:8], lease.state.value, str(lease.root_pid or "pending"),
                     "yes" if alive else "no", owner_text, printable(lease.session_key),
                     _ago(lease.started_at / 1000), usage_text(usage), gateway))
    if not opts.json:
        if rows:
            out.write(format_table(rows, ("LEASE", "STATE", "PID", "ALIVE", "OWNER", "SESSION",
                                          "STARTED", "USAGE", "GATEWAY")) + "\n")
        else:
            out.write(f"no {'' if include_final else 'open '}leases in {lease_dir}\n")
    await out.drain()
    return EXIT_OK
