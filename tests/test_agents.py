"""Agent registry: built-ins, config overrides, name normalisation, install hints."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from acpx_trio._errors import AcpRuntimeError
from acpx_trio._runtime.agents import BUILTIN_AGENTS, AgentRegistry, AgentSpec
from acpx_trio._store.config import resolve_config


def test_builtins() -> None:
    registry = AgentRegistry()
    names = registry.names()
    assert {"claude", "codex", "gemini", "mock", "pi", "opencode", "cursor", "copilot", "qwen",
            "kimi", "fast-agent"} <= set(names)
    assert len(names) == 27  # acpx 0.19.1's 26 built-ins plus the bundled mock
    mock = (sys.executable, "-m", "acpx_trio.testing.mock_agent")
    assert registry.resolve("mock").command == mock
    assert registry.resolve("codex").command == (
        "npx", "-y", "@agentclientprotocol/codex-acp@^1.1.5")
    assert registry.resolve("codex").binary == ("codex-acp",)
    assert registry.resolve("claude").command == (
        "npx", "-y", "@agentclientprotocol/claude-agent-acp@^0.76.0")
    assert registry.resolve("gemini").command == ("gemini", "--acp")
    assert registry.resolve("codex").install_command == (
        "npm install -g @agentclientprotocol/codex-acp")
    assert registry.resolve("mock").install_command is None
    assert all(spec.builtin for spec in registry.specs())
    assert set(BUILTIN_AGENTS) == set(registry.names())


async def test_installed_binary_is_preferred_over_npx(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = AgentRegistry()
    codex = registry.resolve("codex")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert (await registry.prefer_installed(codex)).command == codex.command
    binary = tmp_path / "codex-acp"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert (await registry.prefer_installed(codex)).command == ("codex-acp",)
    assert registry.is_installed(codex)


def test_names_are_trimmed_and_lower_cased() -> None:
    registry = AgentRegistry({" MyAgent ": ["my-agent", "--acp"]})
    assert registry.resolve("  CODEX ").name == "codex"
    spec = registry.resolve("myagent")
    assert spec == AgentSpec(name="myagent", command=("my-agent", "--acp"), builtin=False)


def test_overrides_replace_and_add() -> None:
    registry = AgentRegistry({"codex": ["/opt/codex-acp"], "pi": ["npx", "-y", "pi-acp"]})
    assert registry.resolve("codex").command == ("/opt/codex-acp",)
    assert not registry.resolve("codex").builtin
    assert registry.resolve("codex").install_command is None
    assert registry.resolve("pi").install_command == "npm install -g pi-acp"
    assert "pi" in registry.names() and "mock" in registry.names()


def test_overrides_from_config(tmp_path: object) -> None:
    config = resolve_config(
        {"agents": {"Local": {"command": "python3 -m my_agent", "args": ["--x"]}}}, str(tmp_path)
    )
    registry = AgentRegistry(config.agents)
    assert registry.resolve("local").command == ("python3", "-m", "my_agent", "--x")


def test_unknown_agent_error_lists_names_and_how_to_add() -> None:
    with pytest.raises(AcpRuntimeError) as info:
        AgentRegistry().resolve(" Nope ")
    err = info.value
    assert err.code == "ACP_AGENT_UNKNOWN"
    assert '"nope"' in err.message
    for name in ("claude", "codex", "gemini", "mock"):
        assert name in err.message
    assert "agents.nope" in err.message and "command" in err.message


def test_empty_override_is_rejected() -> None:
    with pytest.raises(AcpRuntimeError):
        AgentRegistry({"x": []})
    with pytest.raises(AcpRuntimeError):
        AgentRegistry({"  ": ["cmd"]})


async def test_is_installed() -> None:
    registry = AgentRegistry({"ghost": ["/nonexistent/ghost-acp"], "sh": ["sh", "-c", "x"]})
    assert registry.is_installed("mock")
    assert await registry.check_installed("sh")
    assert not registry.is_installed("ghost")
    assert not await registry.check_installed(registry.resolve("ghost"))


def test_install_hints(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = AgentRegistry({"ghost": ["/nonexistent/ghost-acp"]})
    assert "ghost-acp" in registry.resolve("ghost").install_hint()
    monkeypatch.setenv("PATH", "/nonexistent")
    hint = registry.resolve("codex").install_hint()
    assert "Node.js" in hint and "npm install -g @agentclientprotocol/codex-acp" in hint
    assert registry.resolve("gemini").install_hint() == (
        "Install it with: npm install -g @google/gemini-cli"
    )
