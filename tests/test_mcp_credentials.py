"""The MCP servers of the config hand credentials to the agent (``env`` values such as
``GH_TOKEN``, ``Authorization`` headers): they are redacted like every other known credential
from what the agent says, from transcripts and ``sessions history``; never shown by a
``repr``, a config error or ``config show``; and an entry an agent could not take (a blank
name, an env name with ``=``, a header that would inject another) is a ``ConfigError``
naming the field.  Real agents (the bundled mock repeats the servers it was handed when
asked ``/mcp given``, in 3-character pieces)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from _cli_helpers import run_cli
from _runtime_helpers import RuntimeEnv, output, run

from acpx_trio import AcpxConfig, ConfigError, PluginConfig, resolve_config
from acpx_trio._errors import REDACTED
from acpx_trio._store.config_files import ConfigLayers, describe
from acpx_trio._store.transcript import transcript_path

ENV_SECRET = "ghp-env-secret-0123456789"
HEADER_TOKEN = "sk-header-token-987654321"
HEADER = f"Bearer {HEADER_TOKEN}"
AUTH = "auth-credential-5555555"
PLAIN = "plain-visible-value"
SECRETS = (ENV_SECRET, HEADER_TOKEN, AUTH)
MOCK_HTTP = [sys.executable, "-m", "acpx_trio.testing.mock_agent", "--mcp-http"]

SERVERS: dict[str, Any] = {
    "files": {"command": "mcp-files", "env": {"GH_TOKEN": ENV_SECRET, "MODE": PLAIN}},
    "docs": {"type": "http", "url": "https://mcp.example/docs",
             "headers": {"Authorization": HEADER, "X-Team": PLAIN}},
}


def _raw() -> dict[str, Any]:
    return {"mcpServers": SERVERS, "auth": {"api-key": AUTH},
            "agents": {"mockh": {"command": MOCK_HTTP[0], "args": MOCK_HTTP[1:]}}}


def _leaks(text: str) -> list[str]:
    return [s for s in (*SECRETS, HEADER) if s in text]


# -- what an agent could not take is refused, naming the field -------------------------------


@pytest.mark.parametrize(("servers", "field"), [
    ({"": {"command": "c"}}, "mcpServers."),
    ({" ": {"command": "c"}}, "mcpServers. "),
    ({"s": {"command": "c", "env": {"A=B": "x"}}}, "mcpServers.s.env"),
    ({"s": {"command": "c", "env": {"": "x"}}}, "mcpServers.s.env"),
    ({"s": {"command": "c", "env": {"K": "a\x00b"}}}, "mcpServers.s.env.K"),
    ({"s": {"command": "c\x00d"}}, "mcpServers.s.command"),
    ({"s": {"command": "c", "args": ["a\x00"]}}, "mcpServers.s.args"),
    ({"s": {"type": "http", "url": "https://h/a b"}}, "mcpServers.s.url"),
    ({"s": {"type": "http", "url": "https://h/\r\nX: y"}}, "mcpServers.s.url"),
    ({"s": {"type": "http", "url": "https://h", "headers": {"": "v"}}}, "mcpServers.s.headers"),
    ({"s": {"type": "http", "url": "https://h", "headers": {"X Y": "v"}}},
     "mcpServers.s.headers"),
    ({"s": {"type": "http", "url": "https://h", "headers": {"X:": "v"}}},
     "mcpServers.s.headers"),
    ({"s": {"type": "sse", "url": "https://h", "headers": {"X": "v\r\nEvil: 1"}}},
     "mcpServers.s.headers.X"),
    ({"s": {"type": "sse", "url": "https://h", "headers": {"X": "v\nw"}}},
     "mcpServers.s.headers.X"),
])
def test_an_mcp_entry_an_agent_could_not_take_is_a_config_error(
    tmp_path: Path, servers: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_config({"mcpServers": servers}, tmp_path)
    assert caught.value.field == field, caught.value
    assert "\r" not in str(caught.value) and "v\nw" not in str(caught.value)


def test_well_formed_entries_still_resolve(tmp_path: Path) -> None:
    cfg = resolve_config({"mcpServers": {
        "s": {"command": "c", "env": {"PATH_EXTRA": "a=b c", "T": "x\ty"}},
        "h": {"type": "http", "url": "https://h/p?q=1",
              "headers": {"X-Api-Key": "k\tv", "Accept": "*/*"}}}}, tmp_path)
    assert [s.name for s in cfg.mcp_servers] == ["h", "s"] or [
        s.name for s in cfg.mcp_servers] == ["s", "h"]


# -- never shown -----------------------------------------------------------------------------


def test_no_repr_str_or_config_show_of_a_config_carries_a_credential(tmp_path: Path) -> None:
    plugin = PluginConfig(**{"mcp_servers": SERVERS, "auth": {"api-key": AUTH}})
    resolved = resolve_config(_raw(), tmp_path)
    assert isinstance(resolved, AcpxConfig)
    shown = [repr(plugin), str(plugin), repr(resolved), str(resolved),
             *(repr(s) for s in resolved.mcp_servers),
             *(repr(e) for e in plugin.mcp_servers.values()),
             json.dumps([[s.key, s.value] for s in describe(ConfigLayers(raw=_raw(),
                                                                         sources={}))])]
    for text in shown:
        assert not _leaks(text), text
        # the names stay (the mask is not a drop), and what is no credential stays readable
        assert any(name in text for name in ("GH_TOKEN", "Authorization", "api-key")), text
        assert "mcp-files" in text or "mcp.example" in text, text


@pytest.mark.parametrize("bad", [
    {"mcpServers": {"s": {"command": "c", "env": {"GH_TOKEN": ENV_SECRET, "N": 1}}}},
    {"mcpServers": {"s": {"command": "c", "env": [f"GH_TOKEN={ENV_SECRET}"]}}},
    {"mcpServers": {"s": {"command": "c", "env": {"GH_TOKEN": ENV_SECRET}, "port": 1}}},
    {"mcpServers": {"s": {"type": "http", "url": "https://h",
                          "headers": {"Authorization": HEADER, "X": 2}}}},
    {"mcpServers": {"s": {"type": "http", "url": "https://h",
                          "headers": {"Authorization": HEADER + "\r\n"}}}},
    {"mcpServers": {"s": {"command": "c", "env": {"GH_TOKEN": ENV_SECRET}}, "t": 5}},
    {"mcpServers": {"s": {"command": "c", "env": {"GH_TOKEN": ENV_SECRET}}, 5: {}}},
    {"auth": {"api-key": AUTH, "other": 5}},
    {"auth": {"api-key": 123456789012}},
])
def test_a_config_error_never_shows_a_credential(tmp_path: Path, bad: dict[Any, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_config(bad, tmp_path)
    text = f"{caught.value} {caught.value!r} {caught.value.value!r}"
    assert not _leaks(text) and "123456789012" not in text, text


def test_config_show_masks_header_and_env_values(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps(_raw()))
    for argv in (["config", "show", "--config", str(config)],
                 ["config", "show", "--json", "--config", str(config)]):
        done = run_cli(*argv, state_dir=tmp_path / "state")
        assert done.returncode == 0, done.stderr
        assert not _leaks(done.stdout + done.stderr), done.stdout
        assert "Authorization" in done.stdout and "GH_TOKEN" in done.stdout
        assert PLAIN not in done.stdout or "X-Team" in done.stdout


# -- what the agent repeats ------------------------------------------------------------------


async def test_an_agent_repeating_its_mcp_credentials_reveals_none(env: RuntimeEnv) -> None:
    """The agent streams each server it was handed, env and headers included, in 3-character
    pieces: every credential reads ``[redacted]``, the rest of the text is intact."""
    async with env.runtime(**_raw()) as rt:
        handle = await rt.ensure_session(session_key="k", agent="mockh")
        said = output(await run(rt, handle, "/mcp given"))
    assert not _leaks(said), said
    assert said.count(REDACTED) >= 2 and PLAIN in said and "GH_TOKEN" in said


def test_warm_transcript_and_history_keep_no_mcp_credential(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = tmp_path / "c.json"
    config.write_text(json.dumps(_raw()))
    common = ["--config", str(config), "--agent", "mockh"]
    done = run_cli("prompt", "--session", "k", *common, "--json", "/mcp given",
                   state_dir=state)
    try:
        assert done.returncode == 0, done.stderr
        assert not _leaks(done.stdout) and REDACTED in done.stdout
        history = [run_cli("sessions", "history", "k", *flags, "--config", str(config),
                           state_dir=state) for flags in ([], ["--json"])]
    finally:
        run_cli("sessions", "close", "k", "--config", str(config), state_dir=state)
    for shown in history:
        assert shown.returncode == 0, shown.stderr
        assert not _leaks(shown.stdout) and PLAIN in shown.stdout
    files = list(transcript_path(state / "acpx" / "sessions", "k").parent.glob("transcript-*"))
    data = b"".join(p.read_bytes() for p in files)
    assert data and PLAIN.encode() in data  # the session/new request and the reply are there
    for secret in (*SECRETS, HEADER):
        assert secret.encode() not in data, secret


# -- an agent command that carries a credential ------------------------------------------------


def test_agents_and_doctor_never_show_a_credential_in_an_agents_arguments(
    tmp_path: Path,
) -> None:
    """``agents`` and ``doctor`` printed a configured agent's command whole, so an auth value,
    a credential environment variable or an MCP credential given as an argument was shown
    (and went into every pasted bug report)."""
    env_token = "sk-envtoken-123456789"
    argv = [*MOCK_HTTP, "--x", AUTH, "--y", env_token, "--z", ENV_SECRET]
    config = tmp_path / "c.json"
    config.write_text(json.dumps({**_raw(), "agents": {"tok": {"command": argv[0],
                                                               "args": argv[1:]}}}))
    common = ["--config", str(config)]
    outputs = [run_cli(*cmd, *common, state_dir=tmp_path / "state",
                       env={"MY_SERVICE_TOKEN": env_token})
               for cmd in (["agents"], ["agents", "--json"], ["doctor", "--agent", "tok"],
                           ["doctor", "--agent", "tok", "--json"])]
    for done in outputs:
        text = done.stdout + done.stderr
        assert "mock_agent" in text, text  # the command is shown
        assert not _leaks(text) and env_token not in text, text
        assert "[redacted]" in text


async def test_the_runtimes_doctor_report_names_no_credential(env: RuntimeEnv) -> None:
    argv = [*MOCK_HTTP, "--x", AUTH, "--z", ENV_SECRET]
    async with env.runtime(**{**_raw(), "probeAgent": "tok",
                              "agents": {"tok": {"command": argv[0], "args": argv[1:]}}}) as rt:
        report = await rt.doctor()
    text = " ".join(map(str, report.details))
    assert "command=" in text and "mock_agent" in text, text
    assert not _leaks(text), text
