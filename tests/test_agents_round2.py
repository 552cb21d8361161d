"""Real agents, round two (issue 23): doctor runs what a session runs and says how an agent
died, vendor auth variables, turns that only report their failure in ``_meta``, ``rpc_data``
on the error line, registry pins that resolve, and exit 5 for a refused terminal."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from _cli_helpers import MOCK, json_lines, run_cli

from acpx_trio._acp import SessionInfoUpdate
from acpx_trio._runtime.agents import AGENT_TABLE, AgentRegistry
from acpx_trio._runtime.update_map import map_update

NPM_PIN_ERROR = "npm error notarget No matching version found for pi-acp@^0.0.33."


def _config(tmp_path: Path, doc: dict[str, object]) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    return str(path)


def _fake_binary(bin_dir: Path, name: str, marker: str) -> Path:
    """An installed adapter binary ``name`` that is the mock agent with ``MARK=marker``."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / name
    script.write_text(f"#!/bin/sh\nMARK={shlex.quote(marker)} exec {MOCK} \"$@\"\n")
    script.chmod(0o755)
    return script


# -- 2. doctor resolves the agent exactly as a session does ----------------------------------
def test_doctor_and_sessions_run_the_same_installed_binary(tmp_path: Path) -> None:
    binary = _fake_binary(tmp_path / "bin", "pi-acp", "installed-binary")
    env = {"PATH": f"{binary.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = run_cli("doctor", "--agent", "pi", "--json", state_dir=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json_lines(done.stdout)[0]
    assert report["command"] == ["pi-acp"] and report["path"] == str(binary)
    assert report["version"] == "acpx-trio-mock-agent 0.1.0"
    text = run_cli("doctor", "--agent", "pi", state_dir=tmp_path, env=env)
    assert f"ran: {binary} (agent reports acpx-trio-mock-agent 0.1.0)" in text.stdout
    turn = run_cli("exec", "--agent", "pi", "/env-path MARK", state_dir=tmp_path, env=env)
    assert turn.stdout == "MARK=installed-binary\n", turn.stderr


def test_a_pip_installed_agent_is_found_in_this_interpreters_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripts = tmp_path / "venv-bin"
    scripts.mkdir()
    program = scripts / "fast-agent"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    registry = AgentRegistry()
    spec = registry.resolve("fast-agent")
    assert not registry.installed_binary(spec)  # baseline: not on PATH, not in the env
    real = sysconfig.get_path
    monkeypatch.setattr(sysconfig, "get_path",
                        lambda name, *a, **k: str(scripts) if name == "scripts" else real(name))
    assert registry.binary_command(spec) == (str(program), "acp")
    assert registry.is_installed(spec)


# -- 3. doctor says why an agent died before initialize --------------------------------------
def test_doctor_shows_exit_status_and_stderr_of_an_agent_that_died(tmp_path: Path) -> None:
    script = f"import sys; sys.stderr.write({NPM_PIN_ERROR!r} + '\\n'); sys.exit(1)"
    config = _config(tmp_path, {"agents": {"pi": {"command": sys.executable,
                                                   "args": ["-c", script]}}})
    done = run_cli("doctor", "--agent", "pi", "--config", config, state_dir=tmp_path)
    assert done.returncode == 1
    assert "exited with status 1" in done.stdout and NPM_PIN_ERROR in done.stdout, done.stdout
    report = json_lines(run_cli("doctor", "--agent", "pi", "--config", config, "--json",
                                state_dir=tmp_path).stdout)[0]
    assert report["ok"] is False and report["exit"].endswith("exited with status 1")
    assert report["stderr"] == NPM_PIN_ERROR


# -- 5. vendor auth variables ----------------------------------------------------------------
def test_codex_api_key_method_uses_the_variables_codex_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("CODEX_API_KEY", "OPENAI_API_KEY", "API_KEY", "ACPX_AUTH_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    agent = [*shlex.split(MOCK), "--require-auth", "api-key", "--require-auth-env",
             "CODEX_API_KEY", "--require-auth-env", "OPENAI_API_KEY"]
    config = _config(tmp_path, {"agents": {"codex": {"command": agent[0], "args": agent[1:]}}})
    missing = run_cli("--json", "exec", "--agent", "codex", "--config", config, "hi",
                      state_dir=tmp_path)
    final = json_lines(missing.stdout)[-1]
    assert final["code"] == "ACP_AUTH_REQUIRED"
    assert "set CODEX_API_KEY or OPENAI_API_KEY" in final["message"]
    assert "set API_KEY" not in final["message"]
    for given in ("CODEX_API_KEY", "OPENAI_API_KEY"):
        other = "OPENAI_API_KEY" if given == "CODEX_API_KEY" else "CODEX_API_KEY"
        ok = run_cli("exec", "--agent", "codex", "--config", config, f"/env {other}",
                     state_dir=tmp_path, env={given: "codex-credential-1"})
        assert (ok.returncode, ok.stdout) == (0, f"{other}=set(18)\n"), ok.stderr
        assert "codex-credential-1" not in ok.stdout + ok.stderr
    rows = {r["name"]: r for r in json_lines(run_cli("agents", "--json").stdout)}
    assert rows["codex"]["authEnv"]["api-key"] == ["CODEX_API_KEY", "OPENAI_API_KEY"]
    assert rows["gemini"]["authEnv"]["gemini-api-key"] == ["GEMINI_API_KEY"]


def test_terminal_auth_methods_say_what_to_run(tmp_path: Path) -> None:
    agent = [*shlex.split(MOCK), "--terminal-auth", "--login now"]
    config = _config(tmp_path, {"agents": {"tauth": {"command": agent[0], "args": agent[1:]}},
                                "authPolicy": "fail"})
    run = shlex.join([*agent, "--login", "now"])
    doctor = run_cli("doctor", "--agent", "tauth", "--config", config, state_dir=tmp_path)
    assert f"mock-terminal-login (Log in): log in once in a terminal: run `{run}`" in (
        doctor.stdout), doctor.stdout
    turn = run_cli("exec", "--agent", "tauth", "--config", config, "hi", state_dir=tmp_path)
    assert turn.returncode == 1 and "ACP_AUTH_REQUIRED" in turn.stderr
    assert f"run `{run}`" in turn.stderr


# -- 6. a turn that never ends says why ------------------------------------------------------
@pytest.mark.slow
def test_a_stalled_turn_reports_the_agents_meta_error(tmp_path: Path) -> None:
    reason = "stream disconnected before completion: offline"
    # (the bound covers the agent's start too: room for a slow start on a loaded machine)
    done = run_cli("exec", "--timeout", "8", f"/stall-meta-error {reason}", state_dir=tmp_path)
    assert done.returncode == 3
    lines = done.stderr.splitlines()
    assert f"[status] agent error: {reason}" in lines
    assert not any(line.strip() in ("[status] session:", "[status]") for line in lines)
    assert f"acpx-trio:   the agent reported: {reason}" in lines, done.stderr
    assert any("ERROR codex_core" in line for line in lines)  # the stderr tail, too
    final = json_lines(run_cli("--json", "exec", "--timeout", "8", f"/stall-meta-error {reason}",
                               state_dir=tmp_path).stdout)[-1]
    assert final["code"] == "ACP_TURN_TIMEOUT" and reason in final["detail"]


def test_empty_session_info_is_no_status_line() -> None:
    assert map_update(SessionInfoUpdate(title="")) is None
    shown = map_update(SessionInfoUpdate(title="", meta={"codex": {"error": {"message": "x"}}}))
    assert shown is not None and shown.text == "agent error: x"
    titled = map_update(SessionInfoUpdate(title="Fix the tests"))
    assert titled is not None and titled.text == "session: Fix the tests"


# -- 7. rpc_data, pins, refused terminals ----------------------------------------------------
def test_the_error_line_shows_a_short_form_of_rpc_data(tmp_path: Path) -> None:
    done = run_cli("exec", "/invalid-params sessionId", state_dir=tmp_path)
    assert done.returncode == 1
    assert "acpx-trio:   data: sessionId: Field required" in done.stderr.splitlines()


@pytest.mark.parametrize(("config", "code"), [
    ({}, 5), ({"nonInteractivePermissions": "deny"}, 5), ({"permissionMode": "approve-all"}, 0),
])
def test_a_refused_terminal_exits_5_whatever_the_agent_does(
    tmp_path: Path, config: dict[str, str], code: int
) -> None:
    path = _config(tmp_path, config)
    for directive in ("/terminal echo hi", "/terminal-strict echo hi"):
        done = run_cli("exec", "--config", path, directive, state_dir=tmp_path)
        if directive == "/terminal echo hi" and config.get("nonInteractivePermissions"):
            assert done.returncode == 0  # the agent carried on: "deny" does not fail a turn
        else:
            assert done.returncode == code, (directive, done.stderr)


@pytest.mark.slow
def test_the_registry_npx_pins_resolve() -> None:
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed")
    pins = [next(p for p in row.command[1:] if not p.startswith("-"))
            for row in AGENT_TABLE if Path(row.command[0]).name == "npx"]
    assert pins
    for pin in pins:
        try:
            done = subprocess.run([npm, "view", pin, "version", "--json"], capture_output=True,
                                  text=True, timeout=120, check=False)
        except subprocess.TimeoutExpired:
            pytest.skip("the npm registry did not answer")
        # only the registry's own answer that the pin does not exist fails the test; any
        # other failure (no network, a reset, a rate limit, a registry error) says nothing
        # about the pin
        missing = any(w in done.stderr for w in ("E404", "ETARGET", "notarget"))
        if done.returncode != 0 and not missing:
            pytest.skip(f"the npm registry could not be asked: {done.stderr.strip()[:200]}")
        assert done.returncode == 0 and json.loads(done.stdout), (pin, done.stderr)


def test_vendor_variables_for_known_methods_generic_names_for_the_rest() -> None:
    from acpx_trio._runtime.auth import credential_names, spawn_env

    assert credential_names("api-key", "codex") == [
        "CODEX_API_KEY", "OPENAI_API_KEY", "ACPX_AUTH_API_KEY"]
    assert credential_names("api-key", "other") == ["api-key", "API_KEY", "ACPX_AUTH_API_KEY"]
    # codex: the credential found under one name reaches the agent under both
    assert spawn_env({"OPENAI_API_KEY": "k1"}, {}, (), "codex").env == {"CODEX_API_KEY": "k1"}
    assert spawn_env({"ACPX_AUTH_API_KEY": "k2"}, {}, (), "codex").env == {
        "CODEX_API_KEY": "k2", "OPENAI_API_KEY": "k2"}
    assert spawn_env({}, {"api-key": "k3"}, (), "codex").env == {
        "CODEX_API_KEY": "k3", "OPENAI_API_KEY": "k3"}
    # any other agent keeps DESIGN's generic rule: UPPER_SNAKE(method)
    assert spawn_env({}, {"api-key": "k4"}, (), "other").env == {"API_KEY": "k4"}
