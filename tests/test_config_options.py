"""Config options and models (issue 21): kept per session, validated before the agent is asked,
and the model chosen through the option of category ``model``."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _cli_helpers import run_cli
from _runtime_helpers import RuntimeEnv

from acpx_trio import AcpRuntimeError


def _model(details: dict[str, object]) -> object:
    options = details["config_options"]
    assert isinstance(options, list)
    [model] = [o for o in options if o["category"] == "model"]
    return model


async def test_set_model_and_validation(env: RuntimeEnv) -> None:
    async with env.runtime() as rt:
        with trio.fail_after(30):
            handle = await rt.ensure_session(session_key="s", agent="mock")
            model = _model((await rt.get_status(handle=handle)).details)
            assert model["id"] == "model"  # type: ignore[index]
            assert list(model["values"]) == ["mock-small", "mock-large"]  # type: ignore[index]
            await rt.set_model(handle=handle, model="mock-large")
            model = _model((await rt.get_status(handle=handle)).details)
            assert model["current_value"] == "mock-large"  # type: ignore[index]
            with pytest.raises(AcpRuntimeError) as info:
                await rt.set_model(handle=handle, model="gpt-9")
            assert info.value.code == "ACP_INVALID_RUNTIME_OPTION"
            assert "mock-small, mock-large" in info.value.message
            with pytest.raises(AcpRuntimeError) as info:
                await rt.set_config_option(handle=handle, key="nope", value="x")
            assert info.value.code == "ACP_INVALID_RUNTIME_OPTION"
            assert "offers: model" in info.value.message
            with pytest.raises(AcpRuntimeError) as info:
                await rt.set_config_option(handle=handle, key="model", value=True)
            assert info.value.code == "ACP_INVALID_RUNTIME_OPTION"
            # the agent still has the model set before the rejected calls
            model = _model((await rt.get_status(handle=handle)).details)
            assert model["current_value"] == "mock-large"  # type: ignore[index]


def test_cli_model_option(tmp_path: Path) -> None:
    done = run_cli("exec", "--model", "mock-large", "/model", state_dir=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "model=mock-large"
    bad = run_cli("prompt", "--model", "gpt-9", "hi", state_dir=tmp_path)
    assert bad.returncode == 2
    assert "mock-small, mock-large" in bad.stderr
