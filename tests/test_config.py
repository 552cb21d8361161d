"""Config resolution: defaults, every validation error, legacy fields, config files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acpx_trio import AcpxConfig, ConfigError, PluginConfig, load_config_file, resolve_config
from acpx_trio._store.config import AgentEntry, McpServerEntry


def test_defaults(tmp_path: Path) -> None:
    cfg = resolve_config(None, tmp_path)
    assert isinstance(cfg, AcpxConfig)
    assert cfg.cwd == str(tmp_path.resolve())
    assert cfg.state_dir == str(tmp_path.resolve() / "state")
    assert cfg.agents == {}
    assert cfg.mcp_servers == ()
    assert cfg.permission_mode == "approve-reads"
    assert cfg.non_interactive_permissions == "fail"
    assert cfg.timeout_seconds is None
    assert cfg.control_timeout_seconds == 120.0
    assert cfg.probe_agent is None
    assert cfg.sweep_interval_seconds == 30.0
    assert cfg.kill_grace_seconds == 0.75
    assert cfg.ignored_legacy_fields == ()
    assert resolve_config({}, tmp_path) == cfg


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = resolve_config(None, tmp_path)
    with pytest.raises(AttributeError):
        cfg.cwd = "/elsewhere"  # type: ignore[misc]


def test_host_state_dir_default(tmp_path: Path) -> None:
    cfg = resolve_config(None, tmp_path / "ws", host_state_dir=tmp_path / "host")
    assert cfg.state_dir == str((tmp_path / "host" / "acpx" / "sessions").resolve())


def test_paths_resolve_against_workspace(tmp_path: Path) -> None:
    cfg = resolve_config({"cwd": " sub ", "stateDir": "st"}, tmp_path)
    assert cfg.cwd == str(tmp_path.resolve() / "sub")
    assert cfg.state_dir == str(tmp_path.resolve() / "st")
    assert Path(cfg.cwd).is_absolute()
    cfg = resolve_config({"cwd": "/abs/dir"}, tmp_path)
    assert cfg.cwd == "/abs/dir"


def test_values(tmp_path: Path) -> None:
    cfg = resolve_config(
        {
            "permissionMode": "approve-all",
            "nonInteractivePermissions": "deny",
            "timeoutSeconds": 2.5,
            "probeAgent": "  Codex ",
            "sweepIntervalSeconds": 5,
            "killGraceSeconds": 0,
            "agents": {
                "MyAgent": {"command": "npx my-agent --acp", "args": ["x y", "z"]},
                "short": "my-bin --flag",
            },
            "mcpServers": {
                "files": {"command": "mcp-files", "args": ["--root", "/"], "env": {"K": "v"}}
            },
        },
        tmp_path,
    )
    assert cfg.permission_mode == "approve-all"
    assert cfg.non_interactive_permissions == "deny"
    assert cfg.timeout_seconds == 2.5
    assert cfg.control_timeout_seconds == 2.5
    assert cfg.probe_agent == "codex"
    assert cfg.sweep_interval_seconds == 5.0
    assert cfg.kill_grace_seconds == 0.0
    assert cfg.agents == {
        "myagent": ("npx", "my-agent", "--acp", "x y", "z"),
        "short": ("my-bin", "--flag"),
    }
    (server,) = cfg.mcp_servers
    assert (server.name, server.command, server.args, server.env) == (
        "files", "mcp-files", ("--root", "/"), (("K", "v"),)
    )


def test_absolute_existing_agent_path_with_spaces_is_one_token(tmp_path: Path) -> None:
    binary = tmp_path / "my agent"
    binary.write_text("#!/bin/sh\n")
    cfg = resolve_config({"agents": {"a": {"command": str(binary)}}}, tmp_path)
    assert cfg.agents["a"] == (str(binary),)


@pytest.mark.parametrize(
    ("raw", "field", "hint"),
    [
        ({"cwd": ""}, "cwd", "non-empty string"),
        ({"cwd": "   "}, "cwd", "non-empty string"),
        ({"cwd": 3}, "cwd", "non-empty string"),
        ({"stateDir": ""}, "stateDir", "non-empty string"),
        ({"probeAgent": " "}, "probeAgent", "non-empty string"),
        ({"permissionMode": "yolo"}, "permissionMode", "approve-all, approve-reads, deny-all"),
        ({"nonInteractivePermissions": "ask"}, "nonInteractivePermissions", "deny, fail"),
        ({"timeoutSeconds": 0}, "timeoutSeconds", ">= 0.001"),
        ({"timeoutSeconds": -1}, "timeoutSeconds", ">= 0.001"),
        ({"timeoutSeconds": "10"}, "timeoutSeconds", "number"),
        ({"timeoutSeconds": True}, "timeoutSeconds", "number"),
        ({"timeoutSeconds": float("nan")}, "timeoutSeconds", "finite"),
        ({"timeoutSeconds": float("inf")}, "timeoutSeconds", "finite"),
        ({"sweepIntervalSeconds": 0}, "sweepIntervalSeconds", "> 0"),
        ({"killGraceSeconds": -0.5}, "killGraceSeconds", ">= 0"),
        ({"queueOwnerTtlSeconds": -1}, "queueOwnerTtlSeconds", ">= 0"),
        ({"strictWindowsCmdWrapper": "no"}, "strictWindowsCmdWrapper", "boolean"),
        ({"agents": []}, "agents", "object"),
        ({"agents": {"a": 3}}, "agents.a", "command string"),
        ({"agents": {"a": {"command": ""}}}, "agents.a.command", "non-empty string"),
        ({"agents": {"a": {"command": "x", "args": "y"}}}, "agents.a.args", "array of strings"),
        ({"agents": {"a": {"command": "x", "args": [1]}}}, "agents.a.args", "array of strings"),
        ({"agents": {"a": {"command": "x", "cwd": "/"}}}, "agents.a.cwd", "allowed keys"),
        ({"agents": {"a": {"command": "x 'unterminated"}}}, "agents.a.command", "valid command"),
        ({"agents": {" ": {"command": "x"}}}, "agents. ", "non-empty"),
        ({"mcpServers": []}, "mcpServers", "object"),
        ({"mcpServers": {"m": "cmd"}}, "mcpServers.m", "object"),
        ({"mcpServers": {"m": {"command": " "}}}, "mcpServers.m.command", "non-empty"),
        ({"mcpServers": {"m": {"command": "c", "args": [2]}}}, "mcpServers.m.args", "strings"),
        ({"mcpServers": {"m": {"command": "c", "env": {"K": 1}}}}, "mcpServers.m.env", "string"),
        ({"mcpServers": {"m": {"command": "c", "env": []}}}, "mcpServers.m.env", "string"),
        ({"mcpServers": {"m": {"type": "ws", "url": "x"}}}, "mcpServers.m.type", "http, sse"),
        ({"mcpServers": {"m": {"type": None}}}, "mcpServers.m.type", "stdio, http, sse"),
        ({"mcpServers": {"m": {"type": "http", "url": 5}}}, "mcpServers.m.url", "URL"),
        ({"mcpServers": {"m": {"type": "http", "url": "https://h", "headers": [1]}}},
         "mcpServers.m.headers", "header name"),
        ({"mcpServers": {"m": {"type": "sse", "url": "https://h", "headers": {"H": 1}}}},
         "mcpServers.m.headers", "header name"),
        ({"mcpServers": {"m": {"command": "c", "args": "a"}}}, "mcpServers.m.args", "strings"),
        ({"mcpServers": {"m": {"command": "c", "env": {"K": None}}}}, "mcpServers.m.env",
         "string"),
        ({"mcpServers": {"m": {"command": "c", "url": "https://h"}}}, "mcpServers.m.url",
         "http and sse"),
        ({"mcpServers": {"m": {"command": "c", "port": 1}}}, "mcpServers.m.port", "allowed keys"),
        ({"cwd": "a\x00b"}, "cwd", "usable path"),
        ({"stateDir": "~no-such-user-here/x"}, "stateDir", "usable path"),
        ({"codexHome": "x\x00"}, "codexHome", "usable path"),
        ({"commandArgs": ["x"]}, "commandArgs", "unknown config key"),
        ({"permissionmode": "approve-all"}, "permissionmode", "unknown config key"),
    ],
)
def test_invalid_values(tmp_path: Path, raw: dict[str, Any], field: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config(raw, tmp_path)
    err = info.value
    assert err.field == field
    assert err.code == "ACPX_CONFIG_INVALID"
    assert hint in str(err)
    assert field in str(err)
    # the offending value is named (its repr), so a user can find it in their file
    assert repr(err.value) in str(err)


def test_root_must_be_object(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config(["not", "an", "object"], tmp_path)  # type: ignore[arg-type]
    assert info.value.field == "<root>"


def test_none_values_mean_default(tmp_path: Path) -> None:
    cfg = resolve_config({"timeoutSeconds": None, "probeAgent": None}, tmp_path)
    assert cfg.timeout_seconds is None and cfg.probe_agent is None


@pytest.mark.parametrize(
    ("raw", "ignored"),
    [
        ({"strictWindowsCmdWrapper": False}, ("strictWindowsCmdWrapper=false",)),
        ({"strictWindowsCmdWrapper": True}, ()),
        (
            {"queueOwnerTtlSeconds": 5, "strictWindowsCmdWrapper": False},
            ("strictWindowsCmdWrapper=false",),
        ),
    ],
)
def test_legacy_fields_accepted_and_reported(
    tmp_path: Path, raw: dict[str, Any], ignored: tuple[str, ...]
) -> None:
    assert resolve_config(raw, tmp_path).ignored_legacy_fields == ignored


@pytest.mark.parametrize("ttl", [0, 0.1, 5, 7 * 86400])
def test_queue_owner_ttl_is_a_setting_not_legacy(tmp_path: Path, ttl: float) -> None:
    # DESIGN "Contract additions": queueOwnerTtlSeconds stops being legacy (warm owner TTL).
    cfg = resolve_config({"queueOwnerTtlSeconds": ttl}, tmp_path)
    assert cfg.queue_owner_ttl_seconds == ttl
    assert cfg.ignored_legacy_fields == ()


def test_new_field_defaults(tmp_path: Path) -> None:
    cfg = resolve_config(None, tmp_path)
    assert cfg.auth == {}
    assert cfg.auth_policy == "skip"
    assert cfg.codex_home is None
    assert cfg.queue_owner_ttl_seconds == 300.0
    assert cfg.transcript is True
    assert cfg.transcript_max_bytes == 64 * 1024 * 1024
    assert cfg.transcript_keep == 5


def test_new_field_values(tmp_path: Path) -> None:
    cfg = resolve_config(
        {
            "auth": {"openai-api-key": "sk-secret-123"},
            "authPolicy": "fail",
            "codexHome": "codex-home",
            "transcript": False,
            "transcriptMaxBytes": 1024,
            "transcriptKeep": 0,
        },
        tmp_path,
    )
    assert cfg.auth == {"openai-api-key": "sk-secret-123"}
    assert cfg.auth_policy == "fail"
    assert cfg.codex_home == str(tmp_path.resolve() / "codex-home")
    assert (cfg.transcript, cfg.transcript_max_bytes, cfg.transcript_keep) == (False, 1024, 0)


def test_credentials_never_in_repr(tmp_path: Path) -> None:
    cfg = resolve_config({"auth": {"openai-api-key": "sk-secret-123"}}, tmp_path)
    for text in (repr(cfg), str(cfg), f"{cfg}", f"{cfg!r}"):
        assert "sk-secret-123" not in text
        assert "openai-api-key" in text and "<redacted>" in text
    assert "sk-secret-123" not in repr(dict(cfg.__rich_repr__()))


@pytest.mark.parametrize(
    ("raw", "field", "hint"),
    [
        ({"killGraceSeconds": 61}, "killGraceSeconds", "<= 60"),
        ({"timeoutSeconds": 86401}, "timeoutSeconds", "<= 86400"),
        ({"sweepIntervalSeconds": 3601}, "sweepIntervalSeconds", "<= 3600"),
        ({"sweepIntervalSeconds": -1}, "sweepIntervalSeconds", "> 0"),
        ({"queueOwnerTtlSeconds": 7 * 86400 + 1}, "queueOwnerTtlSeconds", "<= 604800"),
        ({"queueOwnerTtlSeconds": float("inf")}, "queueOwnerTtlSeconds", "finite"),
        ({"transcriptMaxBytes": 0}, "transcriptMaxBytes", ">= 1"),
        ({"transcriptMaxBytes": 1.5}, "transcriptMaxBytes", "integer"),
        ({"transcriptKeep": -1}, "transcriptKeep", ">= 0"),
        ({"transcriptKeep": 1001}, "transcriptKeep", "<= 1000"),
        ({"transcript": "yes"}, "transcript", "boolean"),
        ({"authPolicy": "ask"}, "authPolicy", "skip, fail"),
        ({"auth": []}, "auth", "object"),
        ({"auth": {"m": 1}}, "auth", "credential string"),
        ({"auth": {" ": "x"}}, "auth", "non-empty"),
        ({"codexHome": ""}, "codexHome", "non-empty string"),
    ],
)
def test_new_fields_and_maxima_invalid(
    tmp_path: Path, raw: dict[str, Any], field: str, hint: str
) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config(raw, tmp_path)
    assert info.value.field == field
    assert hint in str(info.value)
    assert repr(info.value.value) in str(info.value)


def test_auth_credential_not_in_error_message(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config({"auth": {"m": 12345}}, tmp_path)
    assert "12345" not in str(info.value)


def test_load_config_file_json_and_toml(tmp_path: Path) -> None:
    j = tmp_path / "c.json"
    j.write_text('{"permissionMode": "deny-all", "timeoutSeconds": 3}')
    assert load_config_file(j) == {"permissionMode": "deny-all", "timeoutSeconds": 3}
    t = tmp_path / "c.toml"
    t.write_text('permissionMode = "deny-all"\n[agents.foo]\ncommand = "foo-acp"\n')
    raw = load_config_file(t)
    assert resolve_config(raw, tmp_path).agents == {"foo": ("foo-acp",)}


@pytest.mark.parametrize(
    ("name", "content", "hint"),
    [
        ("bad.json", "{not json", "valid JSON or TOML"),
        ("bad.toml", "= nope", "valid JSON or TOML"),
        ("list.json", "[1, 2]", "object at the top level"),
    ],
)
def test_load_config_file_errors(tmp_path: Path, name: str, content: str, hint: str) -> None:
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_config_file(p)
    assert hint in str(info.value)


def test_load_config_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_file(tmp_path / "nope.json")
    assert "readable" in str(info.value)


# -- properties: whatever JSON a config holds, it resolves or is a ConfigError naming where ----
#: integers of any size: a huge one must be a ConfigError, never an OverflowError (made a
#: float).  (Past 4,300 digits, which hypothesis cannot print: test_huge_ints_are_config_errors.)
_integers = st.integers() | st.integers(-(10**400), 10**400) | st.sampled_from(
    [2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**308, 10**309, 10**400, -(10**400)])
_json_values = st.recursive(
    st.none() | st.booleans() | _integers | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8,
)
#: JSON values plus ones that fit an MCP server's fields, so some entries resolve
_mcp_values = _json_values | st.sampled_from(
    ["stdio", "http", "sse", "ws", "https://mcp.example/x", "mcp-files", "", " ", [], {},
     ["--root", "."], {"K": "v"}, {"X-Team": "a"}])
_MCP_KEYS = [f.encode_name for f in msgspec.structs.fields(McpServerEntry)]
_CONFIG_KEYS = [f.encode_name for f in msgspec.structs.fields(PluginConfig)]
_VALID_SERVERS: list[dict[str, Any]] = [
    {"command": "mcp-files", "args": ["--root", "."], "env": {"K": "v"}},
    {"type": "http", "url": "https://mcp.example/docs", "headers": {"X-Team": "a"}},
    {"type": "sse", "url": "http://127.0.0.1:9/sse"},
]
_workspace = Path(__file__).resolve().parent


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(
    st.text(max_size=4),
    _mcp_values | st.dictionaries(st.sampled_from(_MCP_KEYS) | st.text(max_size=4), _mcp_values,
                                  max_size=5),
    max_size=3,
))
def test_any_mcp_servers_value_resolves_or_is_a_config_error(servers: dict[str, Any]) -> None:
    try:
        cfg = resolve_config({"mcpServers": servers}, _workspace)
    except ConfigError as exc:  # anything else (KeyError, TypeError...) fails the test
        assert exc.code == "ACPX_CONFIG_INVALID"
        assert exc.field == "mcpServers" or exc.field.startswith("mcpServers."), exc
        return
    assert [s.name for s in cfg.mcp_servers] == list(servers)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_VALID_SERVERS), st.sampled_from(_MCP_KEYS), _mcp_values)
def test_a_bad_mcp_server_field_is_named(base: dict[str, Any], key: str, value: Any) -> None:
    """One field of a valid entry set to any JSON value: it resolves, or the ConfigError names
    a field of that entry by its dotted path (the field itself when its value has the wrong
    type; another when the combination is wrong: a command on an http server)."""
    try:
        resolve_config({"mcpServers": {"s": {**base, key: value}}}, _workspace)
    except ConfigError as exc:
        assert exc.field in {f"mcpServers.s.{k}" for k in _MCP_KEYS}, exc
        assert str(exc).startswith(f"invalid config {exc.field}="), exc


_ATTRS = {f.encode_name: f.name for f in msgspec.structs.fields(PluginConfig)}
_RESOLVED_ATTRS = {f.name for f in msgspec.structs.fields(AcpxConfig)}
_NUMBER_KEYS = [f.encode_name for f in msgspec.structs.fields(PluginConfig)
                if f.type in (int, float, float | None)]


def _resolves_or_names(key: str, build: Any) -> None:
    """``build()`` returns, or raises a ConfigError naming ``key`` (anything else fails)."""
    try:
        build()
    except ConfigError as exc:
        assert exc.code == "ACPX_CONFIG_INVALID"
        assert exc.field == key or exc.field.startswith(f"{key}."), exc
        assert str(exc).startswith(f"invalid config {exc.field}="), exc


def _every_way(key: str, value: Any) -> None:
    """``value`` under ``key`` through resolve_config, PluginConfig(...) (built directly: a
    public name) and AcpxConfig(...) (the fields it shares)."""
    attr = _ATTRS[key]
    _resolves_or_names(key, lambda: resolve_config({key: value}, _workspace))
    _resolves_or_names(key, lambda: PluginConfig(**{attr: value}))
    if attr in _RESOLVED_ATTRS and attr not in ("cwd", "state_dir"):
        _resolves_or_names(key, lambda: AcpxConfig(cwd="/", state_dir="/s", **{attr: value}))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_CONFIG_KEYS), _json_values)
def test_any_config_value_resolves_or_is_a_config_error(key: str, value: Any) -> None:
    _every_way(key, value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_NUMBER_KEYS),
       _integers | st.floats() | st.booleans() | st.none() | _json_values)
def test_any_number_in_a_numeric_key_resolves_or_is_a_config_error(key: str, value: Any) -> None:
    _every_way(key, value)


def test_numeric_keys_are_all_covered() -> None:
    assert {"timeoutSeconds", "transcriptMaxBytes", "transcriptKeep",
            "killGraceSeconds", "ownerFrameMaxBytes"} <= set(_NUMBER_KEYS)


@pytest.mark.parametrize("value", [10**400, -(10**400), 10**5000], ids=["e400", "-e400", "e5000"])
@pytest.mark.parametrize("key", ["transcriptMaxBytes", "transcriptKeep", "killGraceSeconds",
                                 "timeoutSeconds", "ownerQueueMaxBytes"])
def test_huge_ints_are_config_errors(key: str, value: int) -> None:
    kwargs: dict[str, Any] = {_ATTRS[key]: value}
    for build in (lambda: resolve_config({key: value}, _workspace),
                  lambda: PluginConfig(**kwargs),
                  lambda: AcpxConfig(cwd="/", state_dir="/s", **kwargs)):
        with pytest.raises(ConfigError) as info:
            build()
        assert info.value.field == key


@pytest.mark.parametrize("raw", [{1: 0, "1": 0}, {"1": 0, 1: 0}, {10**5000: 0}, {(1,): 0}],
                         ids=["int-str", "str-int", "huge", "tuple"])
def test_unknown_keys_of_any_type_are_config_errors(raw: dict[Any, Any]) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config(raw, _workspace)
    assert "unknown config key" in str(info.value)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"cwd": {}}, "cwd"),
    ({"state_dir": 5}, "stateDir"),
    ({"timeout_seconds": []}, "timeoutSeconds"),
    ({"transcript_keep": True}, "transcriptKeep"),
    ({"transcript": "yes"}, "transcript"),
    ({"permission_mode": "bogus"}, "permissionMode"),
    ({"agents": {"a": {}}}, "agents.a.command"),
    ({"agents": {"a": {"command": 5}}}, "agents.a.command"),
    ({"agents": {"a": 5}}, "agents.a"),
    ({"agents": []}, "agents"),
    ({"mcp_servers": {"s": {"type": "ws"}}}, "mcpServers.s.type"),
    ({"auth": {"m": False}}, "auth"),
    ({"auth": None}, "auth"),
])
def test_plugin_config_built_directly_checks_types(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        PluginConfig(**kwargs)
    assert info.value.field == field


def test_plugin_config_built_directly_converts_entries() -> None:
    given: dict[str, Any] = {"agents": {"a": {"command": "run me"}, "b": "x"},
                             "mcp_servers": {"s": {"command": "m"}}, "kill_grace_seconds": 1}
    plugin = PluginConfig(**given)
    assert plugin.agents["a"] == AgentEntry(command="run me") and plugin.agents["b"] == "x"
    assert plugin.mcp_servers["s"] == McpServerEntry(command="m")
    assert plugin.kill_grace_seconds == 1.0 and isinstance(plugin.kill_grace_seconds, float)
    agents: Any = {"a": ["x", "y"]}
    resolved = AcpxConfig(cwd="/", state_dir="/s", agents=agents)
    assert resolved.agents == {"a": ("x", "y")}
