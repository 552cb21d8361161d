"""Config resolution: defaults, every validation error, legacy fields, config files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from acpx_trio import AcpxConfig, ConfigError, load_config_file, resolve_config


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
