"""CLI: agent errors with their reason (text and --json), auth errors, ``agents``, ``doctor``
with auth methods and ``--deep``."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from _cli_helpers import MOCK as MOCK_LINE
from _cli_helpers import json_lines, run_cli

MOCK = shlex.split(MOCK_LINE)
DETAIL = "Claude Code process exited with code 1"


def _cmd(*flags: str) -> str:
    return shlex.join([*MOCK, *flags])


def test_turn_error_detail_in_text_and_json(tmp_path: Path) -> None:
    text = run_cli("exec", f"/error-data {DETAIL}", state_dir=tmp_path)
    assert text.returncode == 1
    assert f"-32603: Internal error: {DETAIL}" in text.stderr
    done = run_cli("--json", "exec", f"/error-data {DETAIL}", state_dir=tmp_path)
    last = json_lines(done.stdout)[-1]
    assert last["type"] == "error" and last["rpc_code"] == -32603
    assert last["rpc_data"] == {"details": DETAIL} and last["detail"] == DETAIL


def test_setup_error_detail_in_text_and_json(tmp_path: Path) -> None:
    agent = _cmd("--error-data", DETAIL)
    text = run_cli("exec", "--agent-command", agent, "hi", state_dir=tmp_path)
    assert text.returncode != 0 and DETAIL in text.stderr
    done = run_cli("--json", "exec", "--agent-command", agent, "hi", state_dir=tmp_path)
    last = json_lines(done.stdout)[-1]
    assert last["code"] == "ACP_SESSION_INIT_FAILED" and last["detail"] == DETAIL
    assert last["rpc_code"] == -32603


def test_auth_required_names_env_vars_not_values(tmp_path: Path) -> None:
    agent = _cmd("--require-auth", "verify-key")
    done = run_cli("--json", "exec", "--agent-command", agent, "hi", state_dir=tmp_path)
    last = json_lines(done.stdout)[-1]
    assert last["code"] == "ACP_AUTH_REQUIRED"
    assert "VERIFY_KEY" in last["message"] and "ACPX_AUTH_VERIFY_KEY" in last["message"]
    ok = run_cli("exec", "--agent-command", agent, "hi", state_dir=tmp_path,
                 env={"VERIFY_KEY": "secret-value-xyz"})
    assert (ok.returncode, ok.stdout) == (0, "hi\n"), ok.stderr


def test_agents_lists_the_wide_registry(tmp_path: Path) -> None:
    done = run_cli("--json", "agents", state_dir=tmp_path)
    rows = {r["name"]: r for r in json_lines(done.stdout)}
    assert len(rows) >= 27 and rows["mock"]["installed"] is True
    assert rows["gemini"]["command"] == ["gemini", "--acp"]
    assert "authHint" in rows["codex"]


def test_doctor_reports_auth_methods_and_credentials(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "agents": {"authy": {"command": MOCK[0],
                             "args": [*MOCK[1:], "--require-auth", "verify-key"]}},
        "auth": {"verify-key": "secret-value-xyz"},
    }))
    done = run_cli("--json", "--config", str(config), "doctor", "--agent", "authy",
                   state_dir=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    row = json_lines(done.stdout)[0]
    assert row["auth_methods"] == ["verify-key"]
    assert row["credentials"] == {"verify-key": "config auth[verify-key]"}
    assert "secret-value-xyz" not in done.stdout + done.stderr


def test_doctor_deep_opens_a_session_and_fails_typed(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"agents": {
        "authy": {"command": MOCK[0], "args": [*MOCK[1:], "--require-auth", "verify-key"]},
        "broken": {"command": MOCK[0], "args": [*MOCK[1:], "--error-data", DETAIL]},
    }}))
    shallow = run_cli("--config", str(config), "doctor", "--agent", "authy", "--agent", "broken",
                      state_dir=tmp_path)
    assert shallow.returncode == 0, shallow.stdout  # initialize alone says ok
    deep = run_cli("--json", "--config", str(config), "doctor", "--deep", "--agent", "authy",
                   "--agent", "broken", "--agent", "mock", state_dir=tmp_path)
    assert deep.returncode == 1
    rows = {r["agent"]: r for r in json_lines(deep.stdout)}
    assert rows["mock"]["ok"] is True
    assert rows["authy"]["ok"] is False and rows["authy"]["code"] == "ACP_AUTH_REQUIRED"
    assert rows["broken"]["code"] == "ACP_SESSION_INIT_FAILED" and DETAIL in (
        rows["broken"]["message"])
