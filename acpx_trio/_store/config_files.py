"""Config files of the command line (as acpx's): a user file and a project file, merged.

Layers, later over earlier: the user file ``config.toml`` in the platformdirs config dir of
``acpx-trio`` (``$XDG_CONFIG_HOME/acpx-trio/config.toml`` on Linux), the project file
``.acpx-trio.toml`` in the working directory, then ``--config FILE``.  Objects (``agents``,
``auth``, ``mcpServers``) merge key by key; any other value is replaced whole.  A missing
user or project file is no error; an unreadable or unparsable one is a
:class:`~acpx_trio.ConfigError` naming it.  Each file's values are validated by the plugin
config schema as the file is read, so an invalid value is a :class:`~acpx_trio.ConfigError`
naming its field and its file (``source``); the merged mapping is valid whenever every file is
(the schema checks each key, and each entry of ``agents``/``auth``/``mcpServers``, on its
own), and a run validates it again.

Guarantees: :func:`write_starter` never writes through a symlink and never replaces a file
unless asked; credentials (``auth`` values, ``mcpServers.*.env`` values) are masked by
:func:`describe`, and a file's credentials never appear in its error messages (the schema's
errors redact ``auth``).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from acpx_trio._errors import AcpxUsageError, ConfigError, StateFileError
from acpx_trio._store.config import (
    DEFAULT_AUTH_POLICY,
    DEFAULT_CONTAINMENT,
    DEFAULT_CONTROL_TIMEOUT_SECONDS,
    DEFAULT_NON_INTERACTIVE,
    DEFAULT_PERMISSION_MODE,
    DEFAULT_QUEUE_OWNER_TTL_SECONDS,
    decode_plugin_config,
    resolve_config,
)
from acpx_trio._store.config_entries import masked, masked_entry

__all__ = [
    "PROJECT_CONFIG_NAME",
    "STARTER_CONFIG",
    "USER_CONFIG_NAME",
    "ConfigLayers",
    "ConfigSetting",
    "check_cwd",
    "describe",
    "load_config_file",
    "load_layers",
    "project_config_path",
    "user_config_path",
    "write_starter",
]

USER_CONFIG_NAME = "config.toml"
PROJECT_CONFIG_NAME = ".acpx-trio.toml"
#: Keys whose entries merge (and are shown) one by one.
_OBJECT_KEYS = frozenset({"agents", "auth", "mcpServers"})
#: The starter ``config init`` writes.  Every commented ``key = value`` is the key's default
#: (the ``DEFAULT_*`` constants), except those whose comment says "for example": keys unset by
#: default, as are the tables at the end (a test checks both against ``resolve_config({})``).
STARTER_CONFIG = f"""\
# acpx-trio configuration (TOML).  Every key is optional.  A commented value is the default,
# except where its comment says "for example" (the key is unset by default).
# Layers: this user file, then .acpx-trio.toml in the project, then --config FILE.
# `acpx-trio config show` prints the effective values and where each came from.

# How agent permission requests are answered: approve-all, approve-reads, deny-all.
# permissionMode = "{DEFAULT_PERMISSION_MODE}"
# When a permission would need a person: "fail" (the turn fails) or "deny".
# nonInteractivePermissions = "{DEFAULT_NON_INTERACTIVE}"
# Bound of each turn and of agent start-up, in seconds.  Unset by default: turns are
# unbounded, start-up and control calls get {DEFAULT_CONTROL_TIMEOUT_SECONDS:g} s.  For example:
# timeoutSeconds = 600
# Advertise and serve fs/read_text_file and fs/write_text_file (--no-fs turns it off).
# fs = true
# Advertise and serve terminal/* (--no-terminal turns it off).
# terminal = true
# What to do when an agent needs auth and no credential is found: "skip" or "fail".
# authPolicy = "{DEFAULT_AUTH_POLICY}"
# How long an idle warm owner (prompt --session) stays up; 0 = forever.
# queueOwnerTtlSeconds = {DEFAULT_QUEUE_OWNER_TTL_SECONDS:g}
# How agents are contained: "auto" (a leaf cgroup each where usable, else the process
# group), "cgroup" (required: start fails when unusable) or "process-group".
# containment = "{DEFAULT_CONTAINMENT}"

# Credentials by auth method id (none by default).  Prefer environment variables (see
# `acpx-trio agents`); a credential written here stays in this file (created 0600).
# For example:
# [auth]
# "codex-api-key" = "your-api-key"

# Replace a built-in agent or add one (none by default).  For example:
# [agents.my-agent]
# command = "my-agent"
# args = ["--acp"]

# MCP servers handed to agents in session/new (none by default).  For example:
# [mcpServers.files]
# command = "mcp-files"
# args = []
"""


class ConfigSetting(msgspec.Struct, frozen=True, kw_only=True):
    """One effective value: dotted ``key``, ``value`` (masked if a credential) and
    ``source`` (a file path, or ``default``)."""

    key: str
    value: Any
    source: str


class ConfigLayers(msgspec.Struct, frozen=True, kw_only=True):
    """The merged raw config and, per dotted key, the file it came from."""

    raw: dict[str, Any]
    sources: dict[str, str]
    #: The files that were read, in merge order.
    files: tuple[str, ...] = ()


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML (by ``.toml`` suffix) config file into a raw mapping.

    Raises :class:`ConfigError` (field ``<file>``) if it cannot be read or parsed,
    :class:`~acpx_trio.AcpxUsageError` if ``path`` is not a path."""
    text = os.fspath(path) if isinstance(path, str | os.PathLike) else None
    if not isinstance(text, str) or "\0" in text:
        raise AcpxUsageError("path", path, "must be a path (str or os.PathLike, no NUL)")
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
    except RecursionError:  # both parsers recurse per nesting level
        raise ConfigError("<file>", str(p), "nests arrays or objects too deeply") from None
    if not isinstance(doc, dict):
        raise ConfigError("<file>", str(p), "must contain an object at the top level")
    return doc


def user_config_path() -> Path:
    """``config.toml`` in the per-user config dir of ``acpx-trio`` (platformdirs)."""
    import platformdirs

    return Path(platformdirs.user_config_dir("acpx-trio")) / USER_CONFIG_NAME


def project_config_path(cwd: Path) -> Path:
    """``.acpx-trio.toml`` in ``cwd``."""
    return cwd / PROJECT_CONFIG_NAME


def _read_optional(path: Path) -> dict[str, Any] | None:
    try:
        if not path.is_file():
            return None
    except OSError:
        return None
    return load_config_file(path)


def _checked(layer: dict[str, Any], path: Path, cwd: Path) -> dict[str, Any]:
    """``layer`` (the file ``path``) if the schema accepts it; else its :class:`ConfigError`
    with ``source`` set to the file."""
    try:
        resolve_config(layer, cwd)
    except ConfigError as exc:
        raise ConfigError(exc.field, exc.value, exc.allowed, source=str(path)) from None
    return layer


def _merge(raw: dict[str, Any], sources: dict[str, str], layer: Mapping[str, Any],
           source: str) -> None:
    for key, value in layer.items():
        old = raw.get(key)
        if key in _OBJECT_KEYS and isinstance(value, Mapping) and isinstance(old, Mapping):
            raw[key] = {**old, **value}
            sources.update({f"{key}.{name}": source for name in value})
        else:
            raw[key] = dict(value) if isinstance(value, Mapping) else value
            for stale in [k for k in sources if k.startswith(f"{key}.")]:
                del sources[stale]
            if key in _OBJECT_KEYS and isinstance(value, Mapping):
                sources.update({f"{key}.{name}": source for name in value})
            else:
                sources[key] = source


def load_layers(cwd: Path, explicit: Path | None, *, user: Path | None = None,
                check: bool = True) -> ConfigLayers:
    """The user file, the project file in ``cwd`` and ``explicit`` (``--config``), merged.
    Blocking (reads files).  Raises :class:`ConfigError` for a file that exists but cannot
    be read or parsed, for a missing ``explicit`` file, and, with ``check``, for a file with
    an invalid value (the error's ``source`` and message name the file).  Without ``check``
    the values are not judged (a command that uses none of them runs whatever they are)."""
    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}
    files: list[str] = []
    for path, optional in ((user or user_config_path(), True),
                           (project_config_path(cwd), True), (explicit, False)):
        if path is None:
            continue
        layer = _read_optional(path) if optional else load_config_file(path)
        if layer is None:
            continue
        _merge(raw, sources, _checked(layer, path, cwd) if check else layer, str(path))
        files.append(str(path))
    return ConfigLayers(raw=raw, sources=sources, files=tuple(files))


def check_cwd(layers: ConfigLayers, workspace: Path) -> None:
    """The ``cwd`` the config files set (if any), resolved against ``workspace`` as a run
    resolves it, is an existing directory; else :class:`ConfigError` (field ``cwd``, the
    configured value, ``source`` the file that set it).  Blocking (checks the disk)."""
    value = layers.raw.get("cwd")
    if value is None:
        return
    resolved = resolve_config({"cwd": value}, workspace).cwd
    if not os.path.isdir(resolved):  # False on any OSError (a name too long, ...)
        raise ConfigError("cwd", value, f"must be an existing directory ({resolved} is not)",
                          source=layers.sources.get("cwd"))


def describe(layers: ConfigLayers) -> list[ConfigSetting]:
    """Every effective setting (validated: raises :class:`ConfigError` like a run would),
    defaults included, credentials masked."""
    plugin = decode_plugin_config(layers.raw)
    effective: dict[str, Any] = msgspec.to_builtins(plugin)
    out: list[ConfigSetting] = []
    for key in sorted(effective):
        value = effective[key]
        if key in _OBJECT_KEYS and isinstance(value, Mapping) and value:
            for name in sorted(value):
                entry = value[name]
                entry = masked(key, entry) if key == "auth" else masked_entry(entry)
                out.append(ConfigSetting(key=f"{key}.{name}", value=entry,
                                         source=layers.sources.get(f"{key}.{name}", "default")))
            continue
        if value is None and key not in layers.sources:
            continue  # unset optional keys: nothing to show
        out.append(ConfigSetting(key=key, value=value,
                                 source=layers.sources.get(key, "default")))
    return out


def write_starter(path: Path, *, force: bool = False) -> None:
    """Write :data:`STARTER_CONFIG` to ``path`` (mode 0600; the parent is created 0700).

    Never writes through a symlink, nor into anything but a regular file (a FIFO in its
    place is refused, never waited on); an existing file is kept unless ``force``.  Raises
    :class:`ConfigError` (field ``<file>``) when the file exists or cannot be written."""
    from acpx_trio._store.fsio import open_private_file  # only here: config init

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:  # the state files' one opener: a regular file of ours, no link, no FIFO wait
        fd, _st = open_private_file(path, os.O_WRONLY | os.O_CREAT
                                    | (0 if force else os.O_EXCL))
    except FileExistsError as exc:
        raise ConfigError("<file>", str(path),
                          "already exists (pass --force to replace it)") from exc
    except StateFileError as exc:
        raise ConfigError("<file>", str(path), f"cannot be written ({exc})") from None
    except OSError as exc:
        raise ConfigError("<file>", str(path), f"cannot be written ({exc.strerror})") from exc
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.ftruncate(f.fileno(), 0)  # only once it is proved a file of ours
        os.fchmod(f.fileno(), 0o600)
        f.write(STARTER_CONFIG)
