"""CLI commands that call an agent outside our sessions (issue 21): ``sessions list --agent
NAME`` (``session/list``), ``sessions delete ID --agent NAME`` (``session/delete``) and
``logout --agent NAME``."""

from __future__ import annotations

import argparse
import logging
import shlex
from typing import Any

import msgspec

from acpx_trio._cli.exits import EXIT_OK, EXIT_USAGE, exit_code_for
from acpx_trio._cli.options import Options
from acpx_trio._cli.output import Output, format_table
from acpx_trio._errors import AcpRuntimeError, AcpxError, ConfigError

__all__ = ["agent_sessions_command", "wants_agent_list"]

_log = logging.getLogger("acpx_trio.cli")
_AGENT = "custom"


def wants_agent_list(ns: argparse.Namespace) -> bool:
    """``sessions list|delete --agent ...`` and ``logout``: calls on the agent itself."""
    if ns.command == "logout":
        return True
    return ns.command == "sessions" and ns.action in ("list", "delete") and bool(
        getattr(ns, "list_agent", None) or getattr(ns, "list_agent_command", None))


async def agent_sessions_command(ns: argparse.Namespace, opts: Options) -> int:
    """``sessions list --agent``: the agent's sessions (all pages), a table or one JSON object
    a line.  ``sessions delete ID --agent``: ``session/delete``.  ``logout --agent``:
    ``logout``.  Exit 0; 2 for a bad agent, argument or config; 1 (or the code's exit) when
    the agent does not support the method or fails."""
    from acpx_trio._runtime.runtime import AcpxRuntime
    from acpx_trio._service.lazy_runtime import LazyAcpxRuntime
    from acpx_trio._service.open_service import open_runtime_service

    out = Output()
    raw: dict[str, Any] = dict(opts.raw_config)
    agent: str = ns.list_agent or _AGENT
    action = "logout" if ns.command == "logout" else ns.action
    if action == "delete" and not ns.key:
        await out.emit("acpx-trio: sessions delete needs the agent's session id", err=True)
        return EXIT_USAGE
    if ns.list_agent_command is not None:
        try:
            argv = shlex.split(ns.list_agent_command)
        except ValueError as exc:
            await out.emit(f"acpx-trio: --agent-command: {exc}", err=True)
            return EXIT_USAGE
        if not argv:
            await out.emit("acpx-trio: --agent-command must not be empty", err=True)
            return EXIT_USAGE
        agents = raw.get("agents")
        raw["agents"] = {**(agents if isinstance(agents, dict) else {}),
                         _AGENT: {"command": argv[0], "args": argv[1:]}}
    elif action == "logout" and ns.list_agent is None:
        await out.emit("acpx-trio: logout needs --agent NAME or --agent-command CMD", err=True)
        return EXIT_USAGE
    if opts.cwd_given or "cwd" not in raw:
        raw["cwd"] = str(opts.cwd)
    listed: list[Any] = []
    try:
        async with open_runtime_service(workspace_dir=opts.cwd, state_dir=opts.state_dir,
                                        plugin_config=raw, logger=_log) as service:
            runtime = service.require_runtime()
            if not isinstance(runtime, (AcpxRuntime, LazyAcpxRuntime)):
                raise AcpRuntimeError("ACP_BACKEND_UNSUPPORTED_CONTROL",
                                      "this runtime cannot call an agent outside a session")
            if action == "delete":
                await runtime.delete_session(agent=agent, session_id=ns.key)
            elif action == "logout":
                await runtime.logout(agent=agent)
            else:
                listed = await runtime.list_sessions(
                    agent=agent, cwd=str(opts.cwd) if opts.cwd_given else None)
    except ConfigError as exc:
        await out.emit(f"acpx-trio: {exc.message}", err=True)
        return EXIT_USAGE
    except AcpxError as exc:
        await out.emit(f"acpx-trio: {exc.code}: {exc.message}", err=True)
        return exit_code_for(exc.code)
    if action == "delete":
        out.write(f"deleted agent session {ns.key} at {agent}\n")
    elif action == "logout":
        out.write(f"logged out of {agent}\n")
    elif opts.json:
        for item in listed:
            out.write(msgspec.json.encode(item).decode() + "\n")
    elif not listed:
        out.write(f"agent {agent} lists no sessions\n")
    else:
        rows = [(s.session_id, s.updated_at or "-", s.title or "-", s.cwd) for s in listed]
        out.write(format_table(rows, ("ACP SESSION", "UPDATED", "TITLE", "CWD")) + "\n")
    await out.drain()
    return EXIT_OK
