"""Plugin configuration: validation and resolution into a frozen :class:`AcpxConfig`.

Field names are the seed's camelCase plugin-config keys.  Every invalid value raises
:class:`ConfigError` naming the field, the value and what is allowed; an unknown key is an
error too (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import math
import shlex
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from acpx_trio._errors import ConfigError

__all__ = [
    "DEFAULT_CONTROL_TIMEOUT_SECONDS",
    "AcpxConfig",
    "McpServerConfig",
    "load_config_file",
    "resolve_config",
]

PermissionMode = Literal["approve-all", "approve-reads", "deny-all"]
NonInteractivePolicy = Literal["deny", "fail"]
AuthPolicy = Literal["skip", "fail"]
AUTH_POLICIES: tuple[str, ...] = ("skip", "fail")
PERMISSION_MODES: tuple[str, ...] = ("approve-all", "approve-reads", "deny-all")
NON_INTERACTIVE: tuple[str, ...] = ("deny", "fail")
#: Deadline for agent start-up, handshake, probe and control calls when ``timeoutSeconds`` is unset.
DEFAULT_CONTROL_TIMEOUT_SECONDS = 120.0


class McpServerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """A stdio MCP server handed to agents in ``session/new``."""

    name: str
    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


class AcpxConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Resolved configuration.  Paths are absolute; agent names are lower-case."""

    cwd: str
    state_dir: str
    agents: dict[str, tuple[str, ...]] = {}
    mcp_servers: tuple[McpServerConfig, ...] = ()
    permission_mode: PermissionMode = "approve-reads"
    non_interactive_permissions: NonInteractivePolicy = "fail"
    #: Bounds turns, start-up and control calls; ``None``: turns are unbounded and start-up and
    #: control calls use :data:`DEFAULT_CONTROL_TIMEOUT_SECONDS`.
    timeout_seconds: float | None = None
    probe_agent: str | None = None
    sweep_interval_seconds: float = 30.0
    kill_grace_seconds: float = 0.75
    #: Auth method id -> credential (passed to the agent's environment, never persisted).
    auth: dict[str, str] = {}
    #: ``skip``: go on without ``authenticate`` when no credential matches; ``fail``: refuse.
    auth_policy: AuthPolicy = "skip"
    #: Isolated ``CODEX_HOME`` for the ``codex`` agent (created 0700).
    codex_home: str | None = None
    #: Legacy fields that were given: accepted for compatibility, ignored (the service warns).
    ignored_legacy_fields: tuple[str, ...] = ()

    @property
    def control_timeout_seconds(self) -> float:
        return self.timeout_seconds or DEFAULT_CONTROL_TIMEOUT_SECONDS


def _nonempty_str(field: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(field, value, "must be a non-empty string")
    return value.strip()


def _number(field: str, value: Any, *, minimum: float, strict: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum or (strict and value <= minimum):
        rel = ">" if strict else ">="
        raise ConfigError(field, value, f"must be a finite number {rel} {minimum:g}")
    return float(value)


def _str_list(field: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(field, value, "must be an array of strings")
    return tuple(value)


def _choice(field: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(field, value, "must be one of: " + ", ".join(allowed))
    return str(value)


def _agents(value: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, Mapping):
        raise ConfigError("agents", value, "must be an object of agent name -> {command, args}")
    out: dict[str, tuple[str, ...]] = {}
    for name, spec in value.items():
        key = str(name).strip().lower()
        field = f"agents.{name}"
        if not key:
            raise ConfigError(field, name, "agent names must be non-empty")
        if isinstance(spec, str):
            spec = {"command": spec}
        if not isinstance(spec, Mapping):
            raise ConfigError(field, spec, "must be a command string or {command, args}")
        extra = set(spec) - {"command", "args"}
        if extra:
            raise ConfigError(f"{field}.{sorted(extra)[0]}", spec, "allowed keys: command, args")
        command = _nonempty_str(f"{field}.command", spec.get("command"))
        args = _str_list(f"{field}.args", spec.get("args", []))
        try:
            # An existing absolute path stays one token even if it contains spaces.
            parts = [command] if Path(command).is_absolute() and Path(command).exists() else (
                shlex.split(command)
            )
        except ValueError as exc:
            raise ConfigError(
                f"{field}.command", command, f"must be a valid command line: {exc}"
            ) from exc
        out[key] = (*parts, *args)
    return out


def _mcp_servers(value: Any) -> tuple[McpServerConfig, ...]:
    if not isinstance(value, Mapping):
        raise ConfigError("mcpServers", value, "must be an object of name -> {command, args, env}")
    out: list[McpServerConfig] = []
    for name, spec in value.items():
        field = f"mcpServers.{name}"
        if not isinstance(spec, Mapping):
            raise ConfigError(field, spec, "must be an object {command, args?, env?}")
        command = _nonempty_str(f"{field}.command", spec.get("command"))
        args = _str_list(f"{field}.args", spec.get("args", []))
        env_raw = spec.get("env", {})
        if not isinstance(env_raw, Mapping) or not all(
            isinstance(v, str) for v in env_raw.values()
        ):
            raise ConfigError(f"{field}.env", env_raw, "must be an object of string values")
        env = tuple((str(k), str(v)) for k, v in env_raw.items())
        out.append(McpServerConfig(name=str(name), command=command, args=args, env=env))
    return tuple(out)


def _auth(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and k.strip() and isinstance(v, str) for k, v in value.items()
    ):
        # never echo the value: it holds credentials
        raise ConfigError("auth", "<redacted>", "must be an object of auth method id -> string")
    return {k.strip(): v for k, v in value.items()}


_LEGACY = ("queueOwnerTtlSeconds", "strictWindowsCmdWrapper")
_FIELDS: dict[str, Callable[[Any], Any]] = {
    "cwd": lambda v: _nonempty_str("cwd", v),
    "stateDir": lambda v: _nonempty_str("stateDir", v),
    "agents": _agents,
    "mcpServers": _mcp_servers,
    "permissionMode": lambda v: _choice("permissionMode", v, PERMISSION_MODES),
    "nonInteractivePermissions": lambda v: _choice(
        "nonInteractivePermissions", v, NON_INTERACTIVE
    ),
    "timeoutSeconds": lambda v: _number("timeoutSeconds", v, minimum=0.001),
    "probeAgent": lambda v: _nonempty_str("probeAgent", v).lower(),
    "sweepIntervalSeconds": lambda v: _number("sweepIntervalSeconds", v, minimum=0, strict=True),
    "killGraceSeconds": lambda v: _number("killGraceSeconds", v, minimum=0),
    "queueOwnerTtlSeconds": lambda v: _number("queueOwnerTtlSeconds", v, minimum=0),
    "strictWindowsCmdWrapper": lambda v: _bool("strictWindowsCmdWrapper", v),
    "auth": _auth,
    "authPolicy": lambda v: _choice("authPolicy", v, AUTH_POLICIES),
    "codexHome": lambda v: _nonempty_str("codexHome", v),
}


def _bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(field, value, "must be a boolean")
    return value


def resolve_config(
    raw: Mapping[str, Any] | None,
    workspace_dir: str | Path,
    *,
    host_state_dir: str | Path | None = None,
) -> AcpxConfig:
    """Validate ``raw`` (the plugin config object, ``None`` = all defaults) and resolve it.

    ``cwd`` defaults to ``workspace_dir``; relative paths resolve against ``workspace_dir``.
    ``stateDir`` (the session store) defaults to ``<host_state_dir>/acpx/sessions`` when a host
    state dir is given, else ``<workspace_dir>/state``.  Raises :class:`ConfigError` on the first
    invalid or unknown field."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError("<root>", raw, "plugin config must be an object")
    unknown = sorted(str(k) for k in raw if k not in _FIELDS)
    if unknown:
        raise ConfigError(
            unknown[0], raw[unknown[0]], "unknown config key; allowed: " + ", ".join(_FIELDS)
        )
    values = {key: _FIELDS[key](value) for key, value in raw.items() if value is not None}
    workspace = Path(str(workspace_dir).strip() or ".").expanduser().resolve()

    def absolute(value: str) -> str:
        return str((workspace / Path(value).expanduser()).resolve())

    cwd = absolute(values.get("cwd", str(workspace)))
    if "stateDir" in values:
        state_dir = absolute(values["stateDir"])
    elif host_state_dir is not None:
        state_dir = str(Path(host_state_dir).expanduser().resolve() / "acpx" / "sessions")
    else:
        state_dir = str(workspace / "state")
    ignored: list[str] = []
    if "queueOwnerTtlSeconds" in values:
        ignored.append("queueOwnerTtlSeconds")
    if values.get("strictWindowsCmdWrapper") is False:
        ignored.append("strictWindowsCmdWrapper=false")
    return AcpxConfig(
        cwd=cwd,
        state_dir=state_dir,
        agents=values.get("agents", {}),
        mcp_servers=values.get("mcpServers", ()),
        permission_mode=values.get("permissionMode", "approve-reads"),
        non_interactive_permissions=values.get("nonInteractivePermissions", "fail"),
        timeout_seconds=values.get("timeoutSeconds"),
        probe_agent=values.get("probeAgent"),
        sweep_interval_seconds=values.get("sweepIntervalSeconds", 30.0),
        kill_grace_seconds=values.get("killGraceSeconds", 0.75),
        auth=values.get("auth", {}),
        auth_policy=values.get("authPolicy", "skip"),
        codex_home=absolute(values["codexHome"]) if "codexHome" in values else None,
        ignored_legacy_fields=tuple(ignored),
    )


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML (by ``.toml`` suffix) config file into a raw mapping.

    Raises :class:`ConfigError` (field ``<file>``) if it cannot be read or parsed."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError("<file>", str(p), f"must be a readable file ({exc.strerror})") from exc
    try:
        text = data.decode()
        doc: Any = tomllib.loads(text) if p.suffix == ".toml" else msgspec.json.decode(data)
    except (msgspec.DecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("<file>", str(p), f"must be valid JSON or TOML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError("<file>", str(p), "must contain an object at the top level")
    return doc
