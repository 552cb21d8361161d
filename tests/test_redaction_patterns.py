"""Redaction guesses only unmistakable credential shapes (issue 23 item 4): real agents'
reasons stay readable, real key formats and known credentials never show."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _runtime_helpers import RuntimeEnv

from acpx_trio import AcpRuntimeError
from acpx_trio._errors import redact

REAL_MESSAGES = [
    "--dangerously-skip-permissions cannot be used with root/sudo privileges for security "
    "reasons",
    "skipping permissions check: sandbox mode is read-only",
    "Invalid params: sessionId: Field required",
    "npm error notarget No matching version found for pi-acp@^0.0.33.",
    "max tokens: 4096 exceeded; authMethods: terminal login required",
    "risk_assessment_disabled_for_this_workspace",
    "pkg_resources is deprecated as an API",
]


@pytest.mark.parametrize("message", REAL_MESSAGES)
def test_real_agent_reasons_are_not_redacted(message: str) -> None:
    assert redact(message) == message


@pytest.mark.parametrize("key", [
    "sk-ant-api03-" + "A1b2C3d4" * 4,
    "sk-proj-" + "Z9y8X7w6" * 5,
    "sk-" + "a1B2c3D4" * 5,
    "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "ghp_" + "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6",
    "github_pat_11ABCDEFG0123456789_abcdefghij",
    "xoxb-123456789012-abcdefghijkl",
    "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
    "AKIA" + "IOSFODNN7EXAMPLE",
])
def test_unmistakable_key_formats_are_redacted(key: str) -> None:
    out = redact(f"agent said: key {key} rejected")
    assert key not in out and "[redacted]" in out


def test_assignments_and_bearer_are_redacted() -> None:
    for text, secret in [
        ("OPENAI_API_KEY=abcd1234efgh", "abcd1234efgh"),
        ('{"access_token": "tok-9f8e7d6c"}', "tok-9f8e7d6c"),
        ("Authorization: Bearer abcdefghijklmnop1234", "abcdefghijklmnop1234"),
        ("password: hunter22", "hunter22"),
    ]:
        assert secret not in redact(text), text


def test_known_credentials_are_redacted_exactly_whatever_their_shape() -> None:
    assert redact("the key was plainword", ["plainword"]) == "the key was [redacted]"
    # the longest known secret wins where one contains another
    assert redact("xyzw-1234", ["xyzw", "xyzw-1234"]) == "[redacted]"


async def test_claude_reason_reaches_the_user_whole(tmp_path: Path, env: RuntimeEnv) -> None:
    """A real agent process that dies with claude's root/sudo reason: the error's detail
    carries it word for word (it once read ``--dangerously-[redacted]``); a real-format key
    on the next line is still redacted."""
    key = "sk-ant-api03-" + "Q7w8E9r0" * 4
    script = tmp_path / "claude-like.sh"
    script.write_text(
        "#!/bin/sh\n"
        "echo '--dangerously-skip-permissions cannot be used with root/sudo privileges "
        "for security reasons' >&2\n"
        f"echo 'ANTHROPIC_API_KEY={key}' >&2\nexit 1\n")
    script.chmod(0o755)
    with trio.fail_after(30):
        async with env.runtime(agents={"claude-like": {"command": str(script)}}) as rt:
            with pytest.raises(AcpRuntimeError) as info:
                await rt.ensure_session(session_key="a", agent="claude-like")
    text = str(info.value) + (info.value.detail or "")
    assert "--dangerously-skip-permissions cannot be used with root/sudo" in text, text
    assert key not in text and "[redacted]" in text
