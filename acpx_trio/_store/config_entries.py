"""The entries of a config's ``agents`` and ``mcpServers`` (:class:`AgentEntry`,
:class:`McpServerEntry`; the resolved :class:`McpServerConfig` handed to agents), the checks
that make each one something an ``exec`` and an agent can take, and what of a config may be
shown: the one masking of credential values (``auth``, an MCP server's ``env`` and
``headers``) for errors, ``repr`` and ``config show``, and which MCP values are credentials
to redact.  Every bad value raises :class:`ConfigError` naming the field.

May import: ``acpx_trio._errors`` only (and msgspec)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, Literal, get_args

import msgspec

from acpx_trio._errors import CREDENTIAL_NAME, MIN_SECRET_LENGTH, ConfigError, text_problem

__all__ = [
    "MCP_TRANSPORTS",
    "AgentEntry",
    "McpServerConfig",
    "McpServerEntry",
    "McpTransport",
    "check_argv",
    "check_mcp_server",
    "check_nonempty",
    "masked",
    "masked_entry",
    "masked_repr",
    "masked_rich_repr",
]

#: The transport of an MCP server: ``stdio`` (a command the agent starts), ``http`` or ``sse``.
McpTransport = Literal["stdio", "http", "sse"]
MCP_TRANSPORTS: tuple[str, ...] = get_args(McpTransport)

#: what is shown in place of a credential value (errors, ``repr``, ``config show``)
_MASKED: Final = "<redacted>"
#: the fields whose values may be credentials: the auth credentials (keyed by method id), an
#: MCP server's environment and HTTP headers (keyed by name)
_SECRET_FIELDS: Final = frozenset({"auth", "env", "headers"})


def masked(field: str, value: Any) -> Any:
    """``value`` of ``field`` as anything shown to a person may hold it: for a credential
    field (``auth``, ``env``, ``headers``), every string and number in it replaced by
    ``<redacted>`` (a credential may be all digits; booleans, nulls, the shape and the names
    of name/value pairs kept); any other field as it is."""
    if field not in _SECRET_FIELDS:
        return value
    if isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in value):
        return tuple((k, _MASKED) for k, _ in value)
    return _masked_value(value)


def _masked_value(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, Mapping):
        return {k: _masked_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked_value(v) for v in value]
    return _MASKED


def masked_entry(entry: Any) -> Any:
    """An ``agents``/``mcpServers`` entry (an object) with its credential fields
    :func:`masked`; anything else as it is."""
    if not isinstance(entry, Mapping):
        return entry
    return {k: masked(k, v) if isinstance(k, str) else v for k, v in entry.items()}


def _masked_fields(config: msgspec.Struct) -> list[tuple[str, Any]]:
    return [(name, masked(name, getattr(config, name))) for name in config.__struct_fields__]


def masked_repr(config: msgspec.Struct) -> str:
    """The ``repr`` of the config Structs: credentials :func:`masked` (a config in a log
    line, a traceback or an assertion message must not carry them)."""
    fields = ", ".join(f"{name}={value!r}" for name, value in _masked_fields(config))
    return f"{type(config).__name__}({fields})"


def masked_rich_repr(config: msgspec.Struct) -> Any:  # rich/pretty must not bypass the mask
    yield from _masked_fields(config)


class AgentEntry(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``agents.<name>`` in its object form (the string form is just the command)."""

    command: str
    args: list[str] = []


class McpServerEntry(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``mcpServers.<name>``: ``type`` ``stdio`` (the default: ``command``, ``args``,
    ``env``), or ``http`` / ``sse`` (``url``, ``headers``; handed only to agents that
    advertise that transport).  Its ``repr`` masks the env and header values."""

    __repr__ = __str__ = masked_repr
    __rich_repr__ = masked_rich_repr

    type: McpTransport = "stdio"
    command: str | None = None
    args: list[str] = []
    env: dict[str, str] = {}
    url: str | None = None
    headers: dict[str, str] = {}


#: an HTTP field name (RFC 9110 ``token``)
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: what no HTTP field value (nor a URL) may hold: control characters but the tab (a CR or
#: LF would let a value inject another header into the agent's request)
_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def check_mcp_server(name: str, server: McpServerEntry) -> None:
    """One ``mcpServers`` entry as an agent must receive it: a non-blank name, a command or
    URL for its transport, env names an ``exec`` can set, HTTP header names and values that
    cannot inject anything.  Env and header values are never shown in the error (they may
    be credentials)."""
    field = f"mcpServers.{name}"
    if not name.strip() or text_problem(name) is not None:
        raise ConfigError(field, name, "MCP server names must be non-empty UTF-8 text")
    if server.type == "stdio":
        if server.command is None:
            raise ConfigError(f"{field}.command", None, "a stdio MCP server needs a command")
        check_nonempty(f"{field}.command", server.command)
        check_argv(f"{field}.command", server.command)
        check_argv(f"{field}.args", server.args)
        for key, value in server.env.items():
            if not key or "=" in key or text_problem(key, nul=False) is not None:
                raise ConfigError(f"{field}.env", key, "environment variable names must be "
                                  "non-empty, without '=' or NUL")
            if text_problem(value, nul=False) is not None:
                raise ConfigError(f"{field}.env.{key}", _MASKED,
                                  "must be UTF-8 text without NUL")
        if server.url is not None or server.headers:
            raise ConfigError(f"{field}.url", server.url, "only http and sse servers have a url")
        return
    if server.command is not None or server.args or server.env:
        raise ConfigError(f"{field}.command", server.command,
                          f"an {server.type} MCP server has a url, not a command")
    if (server.url is None or not server.url.startswith(("http://", "https://"))
            or text_problem(server.url) is not None or _CONTROL.search(server.url)
            or " " in server.url):
        raise ConfigError(f"{field}.url", server.url, "an http(s):// URL")
    for key, value in server.headers.items():
        if _HEADER_NAME.fullmatch(key) is None:
            raise ConfigError(f"{field}.headers", key, "header names must be HTTP tokens "
                              "(letters, digits and !#$%&'*+-.^_`|~)")
        if text_problem(value) is not None or _CONTROL.search(value):
            raise ConfigError(f"{field}.headers.{key}", _MASKED,
                              "header values must be UTF-8 text without control characters")


def check_nonempty(field: str, value: str | None) -> None:
    if value is not None and not value.strip():
        raise ConfigError(field, value, "must be a non-empty string")


def check_argv(field: str, value: str | list[str] | tuple[()]) -> None:
    """An agent's command or args as an ``exec`` takes them and a lease records them: UTF-8
    text (no lone surrogate) without NUL (the rule of :func:`~acpx_trio._errors.text_problem`)."""
    for word in [value] if isinstance(value, str) else value:
        if (problem := text_problem(word, nul=False)) is not None:
            raise ConfigError(field, value, f"every word {problem}")


class McpServerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """An MCP server handed to agents in ``session/new|load|resume``: ``stdio`` (``command``,
    ``args``, ``env``), or ``http`` / ``sse`` (``url``, ``headers``)."""

    __repr__ = __str__ = masked_repr
    __rich_repr__ = masked_rich_repr

    name: str
    command: str = ""
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    type: McpTransport = "stdio"
    url: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def credentials(self) -> list[str]:
        """The values handed to the agent for this server that are credentials, to redact
        from whatever the agent says and from transcripts: env values and header values of
        credential-like names (``*TOKEN*``, ``*KEY*``, ``Authorization``, ...), and the
        token of a ``<scheme> <token>`` header value (``Bearer ...``) on its own."""
        found = [v for k, v in self.env if CREDENTIAL_NAME.search(k)]
        for name, value in self.headers:
            if CREDENTIAL_NAME.search(name):
                token = value.strip().partition(" ")[2].strip()
                found.extend((value, token) if token else (value,))
        return [v for v in found if len(v) >= MIN_SECRET_LENGTH]
