"""Plugin configuration: a msgspec schema (:class:`PluginConfig`) resolved into a frozen
:class:`AcpxConfig`.

The plugin config keys are camelCase (the seed's names); :class:`PluginConfig` declares them
as snake_case fields renamed to camelCase, forbids unknown keys (a typo must not silently fall
back to a default) and checks every value in ``__post_init__``.  Every invalid value raises
:class:`ConfigError` naming the field (dotted path), the value and what is allowed.

This module is the one home of every configurable default (``DEFAULT_*``): nothing else in
the package writes those numbers.
"""

from __future__ import annotations

import functools
import math
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from acpx_trio._errors import (
    MIN_SECRET_LENGTH,
    AcpxUsageError,
    ConfigError,
)
from acpx_trio._store import caps
from acpx_trio._store.config_entries import (
    MCP_TRANSPORTS,
    AgentEntry,
    McpServerConfig,
    McpServerEntry,
    check_argv,
    check_mcp_server,
    check_nonempty,
    masked,
    masked_entry,
    masked_repr,
    masked_rich_repr,
)
from acpx_trio._store.userpaths import resolve_path, resolve_state_dir

__all__ = [
    "DEFAULT_AUTH_POLICY",
    "DEFAULT_CONTAINMENT",
    "DEFAULT_CONTROL_TIMEOUT_SECONDS",
    "DEFAULT_KILL_GRACE_SECONDS",
    "DEFAULT_NON_INTERACTIVE",
    "DEFAULT_PERMISSION_MODE",
    "DEFAULT_PROBE_AGENT",
    "DEFAULT_QUEUE_OWNER_TTL_SECONDS",
    "DEFAULT_STOP_TIMEOUT_SECONDS",
    "DEFAULT_SWEEP_INTERVAL_SECONDS",
    "DEFAULT_TRANSCRIPT",
    "DEFAULT_TRANSCRIPT_KEEP",
    "DEFAULT_TRANSCRIPT_MAX_BYTES",
    "AcpxConfig",
    "ContainmentMode",
    "McpServerConfig",
    "PluginConfig",
    "resolve_config",
]

PermissionMode = Literal["approve-all", "approve-reads", "deny-all"]
NonInteractivePolicy = Literal["deny", "fail"]
AuthPolicy = Literal["skip", "fail"]
PERMISSION_MODES: tuple[str, ...] = ("approve-all", "approve-reads", "deny-all")
NON_INTERACTIVE: tuple[str, ...] = ("deny", "fail")
AUTH_POLICIES: tuple[str, ...] = ("skip", "fail")
#: How agents and terminals are contained: ``"auto"`` (a leaf cgroup each where usable, else
#: the process group), ``"cgroup"`` (required: start fails when unusable),
#: ``"process-group"``.
ContainmentMode = Literal["auto", "cgroup", "process-group"]
CONTAINMENT_MODES: tuple[str, ...] = ("auto", "cgroup", "process-group")

# ---------------------------------------------------------------- defaults (the only home)
#: Deadline for agent start-up, handshake, probe and control calls when ``timeoutSeconds`` is unset.
DEFAULT_CONTROL_TIMEOUT_SECONDS = 120.0
DEFAULT_PERMISSION_MODE: PermissionMode = "approve-reads"
DEFAULT_NON_INTERACTIVE: NonInteractivePolicy = "fail"
DEFAULT_AUTH_POLICY: AuthPolicy = "skip"
DEFAULT_CONTAINMENT: ContainmentMode = "auto"
#: Agent the doctor/probe starts when ``probeAgent`` is unset.
DEFAULT_PROBE_AGENT = "codex"
DEFAULT_SWEEP_INTERVAL_SECONDS = 30.0
#: SIGTERM -> SIGKILL grace when killing an agent's tree.
DEFAULT_KILL_GRACE_SECONDS = 0.75
#: How long an idle warm queue owner stays up; ``0`` means forever.
DEFAULT_QUEUE_OWNER_TTL_SECONDS = 300.0
#: Bound of each shielded clean-up phase when a service or CLI command stops.
DEFAULT_STOP_TIMEOUT_SECONDS = 30.0
DEFAULT_TRANSCRIPT = True
DEFAULT_TRANSCRIPT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_TRANSCRIPT_KEEP = 5

# ---------------------------------------------------------------- numeric bounds
# field -> (minimum, minimum is exclusive, maximum)
_BOUNDS: dict[str, tuple[float, bool, float]] = {
    "timeoutSeconds": (0.001, False, 86_400),
    "sweepIntervalSeconds": (0, True, 3_600),
    "killGraceSeconds": (0, False, 60),
    "queueOwnerTtlSeconds": (0, False, 7 * 86_400),
    "transcriptMaxBytes": (1, False, 1 << 40),
    "transcriptKeep": (0, False, 1_000),
}
_BOUNDS.update(caps.CAP_BOUNDS)  # memory caps (see _store/caps.py)
_INT_FIELDS = frozenset(f for f in _BOUNDS if f.startswith("transcript") or f.endswith("Bytes"))


def _number_allowed(field: str) -> str:
    low, strict, high = _BOUNDS[field]
    kind = "an integer" if field in _INT_FIELDS else "a finite number"
    return f"must be {kind} {'>' if strict else '>='} {low:g} and <= {high:g}"


_ALLOWED: dict[str, str] = {
    "cwd": "must be a non-empty string",
    "stateDir": "must be a non-empty string",
    "codexHome": "must be a non-empty string",
    "probeAgent": "must be a non-empty string",
    "agents": "must be an object of agent name -> {command, args}",
    "mcpServers": "must be an object of name -> {command, args?, env?} (stdio) or "
                  "{type: http|sse, url, headers?}",
    "permissionMode": "must be one of: " + ", ".join(PERMISSION_MODES),
    "nonInteractivePermissions": "must be one of: " + ", ".join(NON_INTERACTIVE),
    "authPolicy": "must be one of: " + ", ".join(AUTH_POLICIES),
    "containment": "must be one of: " + ", ".join(CONTAINMENT_MODES),
    "auth": "must be an object of auth method id -> credential string",
    "transcript": "must be a boolean",
    "fs": "must be a boolean",
    "terminal": "must be a boolean",
    "strictWindowsCmdWrapper": "must be a boolean",
    **{field: _number_allowed(field) for field in _BOUNDS},
}


# ---------------------------------------------------------------- the schema


def _check_number(field: str, value: float) -> None:
    """``value`` (an ``int`` or ``float``, types checked before) within the bounds of
    ``field``.  An ``int`` is compared as it is (exactly, whatever its size): never made a
    ``float``, which overflows past about 1e308."""
    low, strict, high = _BOUNDS[field]
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(field, value, _number_allowed(field))
    if value < low or (strict and value <= low) or value > high:
        raise ConfigError(field, value, _number_allowed(field))


#: camelCase field -> attribute, for every bounded number (both config Structs share them)
_NUMBER_FIELDS: tuple[tuple[str, str], ...] = (
    ("timeoutSeconds", "timeout_seconds"),
    ("sweepIntervalSeconds", "sweep_interval_seconds"),
    ("killGraceSeconds", "kill_grace_seconds"),
    ("queueOwnerTtlSeconds", "queue_owner_ttl_seconds"),
    ("transcriptMaxBytes", "transcript_max_bytes"),
    ("transcriptKeep", "transcript_keep"),
    *caps.CAP_FIELDS,
)


def _check_numbers(config: object) -> None:
    """Every bounded number of ``config`` (``None`` means its default)."""
    for field, attr in _NUMBER_FIELDS:
        value = getattr(config, attr)
        if value is not None:
            _check_number(field, value)


class PluginConfig(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    """The plugin config object as the host gives it (camelCase keys).

    A key given as ``null`` means its default.  ``__post_init__`` checks every value and
    raises :class:`ConfigError` naming the camelCase field.  Its ``repr`` masks credentials
    (``auth``, MCP env and header values)."""

    __repr__ = __str__ = masked_repr
    __rich_repr__ = masked_rich_repr

    cwd: str | None = None
    state_dir: str | None = None
    agents: dict[str, str | AgentEntry] = {}
    mcp_servers: dict[str, McpServerEntry] = {}
    permission_mode: PermissionMode = DEFAULT_PERMISSION_MODE
    non_interactive_permissions: NonInteractivePolicy = DEFAULT_NON_INTERACTIVE
    timeout_seconds: float | None = None
    probe_agent: str | None = None
    sweep_interval_seconds: float = DEFAULT_SWEEP_INTERVAL_SECONDS
    kill_grace_seconds: float = DEFAULT_KILL_GRACE_SECONDS
    auth: dict[str, str] = {}
    auth_policy: AuthPolicy = DEFAULT_AUTH_POLICY
    codex_home: str | None = None
    queue_owner_ttl_seconds: float = DEFAULT_QUEUE_OWNER_TTL_SECONDS
    containment: ContainmentMode = DEFAULT_CONTAINMENT
    transcript: bool = DEFAULT_TRANSCRIPT
    transcript_max_bytes: int = DEFAULT_TRANSCRIPT_MAX_BYTES
    transcript_keep: int = DEFAULT_TRANSCRIPT_KEEP
    #: Advertise and serve ``fs/*`` (``--no-fs``) and ``terminal/*`` (``--no-terminal``).
    fs: bool = True
    terminal: bool = True
    #: Legacy (accepted, ignored; ``false`` is reported).
    strict_windows_cmd_wrapper: bool | None = None
    # memory caps
    owner_queue_max_bytes: int = caps.DEFAULT_OWNER_QUEUE_MAX_BYTES
    owner_queue_total_max_bytes: int = caps.DEFAULT_OWNER_QUEUE_TOTAL_MAX_BYTES
    owner_frame_max_bytes: int = caps.DEFAULT_OWNER_FRAME_MAX_BYTES
    owner_partial_max_bytes: int = caps.DEFAULT_OWNER_PARTIAL_MAX_BYTES
    terminal_output_max_bytes: int = caps.DEFAULT_TERMINAL_OUTPUT_MAX_BYTES

    def __post_init__(self) -> None:
        """Built directly (it is public), a value of the wrong type (``cwd={}``,
        ``timeout_seconds=[]``, ``agents={"a": {}}``) raises :class:`ConfigError` naming the
        camelCase field, as decoding it would; an ``agents``/``mcpServers`` entry given as
        an object becomes its entry Struct."""
        _check_types(self)
        check_nonempty("cwd", self.cwd)
        check_nonempty("stateDir", self.state_dir)
        check_nonempty("codexHome", self.codex_home)
        check_nonempty("probeAgent", self.probe_agent)
        for name, spec in self.agents.items():
            field = f"agents.{name}"
            if not name.strip():
                raise ConfigError(field, name, "agent names must be non-empty")
            command = spec if isinstance(spec, str) else spec.command
            check_nonempty(f"{field}.command", command)
            check_argv(f"{field}.command", command)
            check_argv(f"{field}.args", () if isinstance(spec, str) else spec.args)
        for name, server in self.mcp_servers.items():
            check_mcp_server(name, server)
        for method, credential in self.auth.items():
            if not method.strip():
                raise ConfigError("auth", method, "auth method ids must be non-empty")
            if len(credential) < MIN_SECRET_LENGTH:  # the value itself is never shown
                raise ConfigError(f"auth.{method}", f"<{len(credential)} characters>",
                                  f"a credential must have at least {MIN_SECRET_LENGTH} "
                                  "characters (a shorter one cannot be redacted from "
                                  "transcripts and output)")
        _check_numbers(self)


class AcpxConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Resolved configuration.  Paths are absolute; agent names are lower-case.

    ``auth`` holds credentials: its values never appear in ``repr`` (nor in logs, which only
    ever print the repr)."""

    cwd: str
    state_dir: str
    agents: dict[str, tuple[str, ...]] = {}
    mcp_servers: tuple[McpServerConfig, ...] = ()
    permission_mode: PermissionMode = DEFAULT_PERMISSION_MODE
    non_interactive_permissions: NonInteractivePolicy = DEFAULT_NON_INTERACTIVE
    #: Bounds turns, start-up and control calls; ``None``: turns are unbounded and start-up and
    #: control calls use :data:`DEFAULT_CONTROL_TIMEOUT_SECONDS`.
    timeout_seconds: float | None = None
    probe_agent: str | None = None
    sweep_interval_seconds: float = DEFAULT_SWEEP_INTERVAL_SECONDS
    kill_grace_seconds: float = DEFAULT_KILL_GRACE_SECONDS
    #: Auth method id -> credential (secret: redacted in ``repr``).
    auth: dict[str, str] = {}
    #: What to do when the agent requires auth and no credential is found.
    auth_policy: AuthPolicy = DEFAULT_AUTH_POLICY
    #: ``CODEX_HOME`` for codex agents (absolute), ``None``: inherit.
    codex_home: str | None = None
    #: Idle TTL of a warm queue owner; ``0`` = forever.
    queue_owner_ttl_seconds: float = DEFAULT_QUEUE_OWNER_TTL_SECONDS
    #: How agents and terminals are contained (see :data:`ContainmentMode`).
    containment: ContainmentMode = DEFAULT_CONTAINMENT
    transcript: bool = DEFAULT_TRANSCRIPT
    transcript_max_bytes: int = DEFAULT_TRANSCRIPT_MAX_BYTES
    transcript_keep: int = DEFAULT_TRANSCRIPT_KEEP
    #: ``false``: the capability is not advertised and the agent's requests are refused.
    fs: bool = True
    terminal: bool = True
    #: Legacy fields that were given: accepted for compatibility, ignored (the service warns).
    ignored_legacy_fields: tuple[str, ...] = ()
    # memory caps (bytes; see the ``DEFAULT_*`` constants)
    owner_queue_max_bytes: int = caps.DEFAULT_OWNER_QUEUE_MAX_BYTES
    owner_queue_total_max_bytes: int = caps.DEFAULT_OWNER_QUEUE_TOTAL_MAX_BYTES
    owner_frame_max_bytes: int = caps.DEFAULT_OWNER_FRAME_MAX_BYTES
    owner_partial_max_bytes: int = caps.DEFAULT_OWNER_PARTIAL_MAX_BYTES
    terminal_output_max_bytes: int = caps.DEFAULT_TERMINAL_OUTPUT_MAX_BYTES

    def __post_init__(self) -> None:
        """The resolved config an embedder may build directly is checked like the plugin
        config: a value of the wrong type (``permission_mode="bogus"``, ``transcript_keep=2.5``)
        or out of bounds (``kill_grace_seconds=-5``, NaN) raises :class:`ConfigError` naming
        the camelCase field."""
        _check_types(self)
        _check_numbers(self)

    @property
    def control_timeout_seconds(self) -> float:
        return self.timeout_seconds or DEFAULT_CONTROL_TIMEOUT_SECONDS

    __repr__ = __str__ = masked_repr
    __rich_repr__ = masked_rich_repr


# ---------------------------------------------------------------- validation, field by field
# Each value is converted on its own (``msgspec.convert`` against that field's type), so the
# field a bad value belongs to is known from the call, never read back out of an error message.

#: Per entry Struct, what each of its fields must be (every field: a bad value of any of them
#: is reported by :func:`_entry_error`, which looks its text up here), and the entry's shape.
_ENTRY_ALLOWED: dict[type[msgspec.Struct], dict[str, str]] = {
    AgentEntry: {
        "command": "must be a non-empty string",
        "args": "must be an array of strings",
    },
    McpServerEntry: {
        "type": "must be one of: " + ", ".join(MCP_TRANSPORTS),
        "command": "must be a non-empty string",
        "args": "must be an array of strings",
        "env": "must be an object of string values",
        "url": "must be an http(s):// URL string",
        "headers": "must be an object of header name -> string value",
    },
}
_ENTRY_SHAPE: dict[str, str] = {
    "agents": "must be a command string or {command, args?}",
    "mcpServers": "must be an object {command, args?, env?} (stdio) or "
                  "{type: http|sse, url, headers?}",
}


@functools.cache
def _fields(struct: type[msgspec.Struct]) -> tuple[msgspec.structs.FieldInfo, ...]:
    return msgspec.structs.fields(struct)


@functools.cache
def _config_key(attr: str) -> str:
    """The config key (camelCase) of a config attribute (itself when only AcpxConfig has it)."""
    return {f.name: f.encode_name for f in _fields(PluginConfig)}.get(attr, attr)


def _shown(key: str, value: Any) -> Any:
    """``value`` of config key ``key`` as an error may show it: credentials :func:`masked`."""
    if key == "mcpServers" and isinstance(value, Mapping):
        return {name: masked_entry(spec) for name, spec in value.items()}
    return masked(key, value)


def _converted(key: str, value: Any, type_: Any, *, entries: bool = True) -> Any:
    """``value`` converted to the type of config key ``key``; :class:`ConfigError` naming the
    key (or, with ``entries``, the entry and field inside ``agents``/``mcpServers`` as the
    plugin config has them) otherwise."""
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError:
        pass
    if entries and key in ("agents", "mcpServers") and isinstance(value, Mapping):
        raise _entry_error(key, value)
    raise ConfigError(key, _shown(key, value), _ALLOWED.get(key, f"must be of type {type_}"))


def _entry_error(section: str, raw: Mapping[Any, Any]) -> ConfigError:
    """The :class:`ConfigError` for the first bad entry of ``agents``/``mcpServers``, found
    by checking each entry's keys and fields one by one."""
    entry_type = AgentEntry if section == "agents" else McpServerEntry
    allowed_values = _ENTRY_ALLOWED[entry_type]
    shape = _ENTRY_SHAPE[section]
    fields = _fields(entry_type)
    for name, spec in raw.items():
        if not isinstance(name, str):
            break
        field = f"{section}.{name}"
        if (section == "agents" and isinstance(spec, str)) or isinstance(spec, entry_type):
            continue
        if not isinstance(spec, Mapping):
            return ConfigError(field, spec, shape)
        allowed_keys = [f.encode_name for f in fields]
        for key in spec:
            if key not in allowed_keys:
                allowed = "allowed keys: " + ", ".join(allowed_keys)
                return ConfigError(f"{field}.{key}", masked_entry(spec), allowed)
        for f in fields:
            if f.encode_name not in spec:
                if f.required:
                    return ConfigError(f"{field}.{f.encode_name}", None, allowed_values[f.name])
                continue
            try:
                msgspec.convert(spec[f.encode_name], f.type)
            except msgspec.ValidationError:
                return ConfigError(f"{field}.{f.encode_name}",
                                   masked(f.encode_name, spec[f.encode_name]),
                                   allowed_values[f.name])
    return ConfigError(section, _shown(section, raw), _ALLOWED[section])


def _check_types(config: PluginConfig | AcpxConfig) -> None:
    """Every field of a directly built config has its declared type (msgspec checks none of
    them in a constructor): each value is converted against its field's annotation, as
    decoding would, and kept as converted (an entry object becomes its Struct, a list a
    tuple); :class:`ConfigError` naming the camelCase field otherwise (the entry's field
    inside a :class:`PluginConfig`'s ``agents``/``mcpServers``)."""
    entries = isinstance(config, PluginConfig)
    for f in _fields(type(config)):
        value = getattr(config, f.name)
        converted = _converted(_config_key(f.name), value, f.type, entries=entries)
        if converted is not value:
            msgspec.structs.force_setattr(config, f.name, converted)


def _key_name(key: object) -> str:
    """A config key as an error names it (a key that is no string: its text, if it has one)."""
    if isinstance(key, str):
        return key
    try:
        return str(key)
    except Exception:  # an int past the digit limit of str(), a hostile __str__
        return f"<{type(key).__name__} key>"


def decode_plugin_config(raw: Mapping[str, Any] | None) -> PluginConfig:
    """``raw`` validated into a :class:`PluginConfig` (``None`` and ``null`` values: defaults).

    Raises :class:`ConfigError` for an unknown key or an invalid value."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError("<root>", raw, "plugin config must be an object")
    by_key = {f.encode_name: f for f in _fields(PluginConfig)}
    # the first unknown key by name; keys of other types may share one (1 and "1")
    unknown = [(_key_name(k), type(k).__name__, k) for k in raw if k not in by_key]
    if unknown:
        shown, _, key = min(unknown, key=lambda u: u[:2])
        raise ConfigError(shown, raw[key], "unknown config key; allowed: " + ", ".join(by_key))
    values = {
        by_key[key].name: _converted(key, value, by_key[key].type)
        for key, value in raw.items()
        if value is not None
    }
    return PluginConfig(**values)  # __post_init__: non-empty strings, names, bounds


# ---------------------------------------------------------------- resolution


def _command_line(field: str, command: str, args: list[str]) -> tuple[str, ...]:
    command = command.strip()
    try:
        # An existing absolute path stays one token even if it contains spaces.
        parts = [command] if Path(command).is_absolute() and Path(command).exists() else (
            shlex.split(command)
        )
    except ValueError as exc:
        raise ConfigError(
            f"{field}.command", command, f"must be a valid command line: {exc}"
        ) from exc
    return (*parts, *args)


def resolve_config(
    raw: Mapping[str, Any] | None,
    workspace_dir: str | Path,
    *,
    host_state_dir: str | Path | None = None,
) -> AcpxConfig:
    """Validate ``raw`` (the plugin config object, ``None`` = all defaults) and resolve it.

    ``cwd`` defaults to ``workspace_dir``; relative paths (``cwd``, ``stateDir``,
    ``codexHome``) resolve against ``workspace_dir``.  ``stateDir`` (the session store)
    defaults to ``<host_state_dir>/acpx/sessions`` when a host state dir is given, else
    ``<workspace_dir>/state``.  Raises :class:`ConfigError` on the first invalid or unknown
    field (also a path field that cannot be resolved: a symbolic link loop, an unknown
    ``~user``, a NUL byte); such a ``workspace_dir`` is :class:`AcpxUsageError`, such a
    ``host_state_dir`` :class:`StateFileError`."""
    if not isinstance(workspace_dir, str | os.PathLike):
        raise AcpxUsageError("workspace_dir", workspace_dir, "must be a path")
    plugin = decode_plugin_config(raw)
    given = Path(str(workspace_dir).strip() or ".")
    workspace = resolve_path(given, lambda why: AcpxUsageError("workspace_dir", given, why))

    def absolute(field: str, value: str) -> str:
        return str(resolve_path(Path(value.strip()), lambda why: ConfigError(
            field, value, f"must be a usable path (it {why})"), base=workspace))

    cwd = absolute("cwd", plugin.cwd) if plugin.cwd is not None else str(workspace)
    if plugin.state_dir is not None:
        state_dir = absolute("stateDir", plugin.state_dir)
    elif host_state_dir is not None:
        state_dir = str(resolve_state_dir(Path(host_state_dir)) / "acpx" / "sessions")
    else:
        state_dir = str(workspace / "state")
    agents: dict[str, tuple[str, ...]] = {}
    for name, spec in plugin.agents.items():
        entry = AgentEntry(command=spec) if isinstance(spec, str) else spec
        agents[name.strip().lower()] = _command_line(f"agents.{name}", entry.command, entry.args)
    servers = tuple(
        McpServerConfig(
            name=name, command=(server.command or "").strip(), args=tuple(server.args),
            env=tuple(server.env.items()), type=server.type, url=server.url,
            headers=tuple(server.headers.items()),
        )
        for name, server in plugin.mcp_servers.items()
    )
    legacy_false = plugin.strict_windows_cmd_wrapper is False
    ignored = ["strictWindowsCmdWrapper=false"] if legacy_false else []
    return AcpxConfig(
        cwd=cwd,
        state_dir=state_dir,
        agents=agents,
        mcp_servers=servers,
        permission_mode=plugin.permission_mode,
        non_interactive_permissions=plugin.non_interactive_permissions,
        timeout_seconds=plugin.timeout_seconds,
        probe_agent=None if plugin.probe_agent is None else plugin.probe_agent.strip().lower(),
        sweep_interval_seconds=plugin.sweep_interval_seconds,
        kill_grace_seconds=plugin.kill_grace_seconds,
        auth={method.strip(): credential for method, credential in plugin.auth.items()},
        auth_policy=plugin.auth_policy,
        codex_home=(None if plugin.codex_home is None
                    else absolute("codexHome", plugin.codex_home)),
        queue_owner_ttl_seconds=plugin.queue_owner_ttl_seconds,
        containment=plugin.containment,
        transcript=plugin.transcript,
        transcript_max_bytes=plugin.transcript_max_bytes,
        transcript_keep=plugin.transcript_keep,
        fs=plugin.fs,
        terminal=plugin.terminal,
        ignored_legacy_fields=tuple(ignored),
        **{attr: getattr(plugin, attr) for _field, attr in caps.CAP_FIELDS},
    )
