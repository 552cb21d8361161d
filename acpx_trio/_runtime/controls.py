"""Session controls a caller applies to a live session: its mode, a config option, its model.

Each is checked against what the agent advertised (:mod:`.config_opts`, credentials the agent
holds redacted from the choices an error names), sent under the control deadline, and the
session's state (and, for the mode, its record) changes only once the agent accepted it."""

from __future__ import annotations

from typing import Any

import msgspec
import trio

from acpx_trio._acp import (
    EmptyResponse,
    SetSessionConfigOptionRequest,
    SetSessionConfigOptionResponse,
    SetSessionModelRequest,
    SetSessionModeRequest,
)
from acpx_trio._errors import AcpConnectionClosedError, AcpRuntimeError, redact
from acpx_trio._runtime.config_opts import (
    checked_config_value,
    checked_legacy_model,
    checked_mode,
    model_option,
)
from acpx_trio._runtime.live_session import LiveSession
from acpx_trio._store.config import AcpxConfig
from acpx_trio._store.sessions import SessionStore

__all__ = ["apply_config_option", "apply_mode", "apply_model", "control_request"]


async def control_request(
    session: LiveSession, method: str, params: Any, config: AcpxConfig
) -> None:
    """A control call (``session/set_mode``, ``session/set_config_option``,
    ``session/set_model``) with a deadline; the options a ``set_config_option`` answer
    carries become the session's.

    Raises ``ACP_INVALID_RUNTIME_OPTION`` (agent said -32602), ``ACP_BACKEND_UNSUPPORTED_CONTROL``
    (-32601), ``ACP_CONTROL_TIMEOUT`` or ``ACP_CONTROL_FAILED``."""
    timeout = config.control_timeout_seconds
    result_type: type[Any] = (
        SetSessionConfigOptionResponse if method == "session/set_config_option" else EmptyResponse
    )
    try:
        with session.control_call(), trio.fail_after(timeout):
            result = await session.connection.request(method, params, result_type)
    except trio.TooSlowError as exc:
        raise AcpRuntimeError(
            "ACP_CONTROL_TIMEOUT", f"the agent did not answer {method} within {timeout:g}s",
            retryable=True,
        ) from exc
    except AcpRuntimeError as exc:
        code = {-32602: "ACP_INVALID_RUNTIME_OPTION", -32601: "ACP_BACKEND_UNSUPPORTED_CONTROL"}
        raise AcpRuntimeError(
            code.get(exc.rpc_code or 0, "ACP_CONTROL_FAILED"), f"{method} failed: {exc.message}",
            retryable=isinstance(exc, AcpConnectionClosedError),
            rpc_code=exc.rpc_code, rpc_data=exc.rpc_data,
        ) from exc
    if isinstance(result, SetSessionConfigOptionResponse) and result.config_options:
        session.config_options = result.config_options


async def apply_mode(session: LiveSession, mode: str, config: AcpxConfig,
                     store: SessionStore) -> None:
    """``session/set_mode`` with a mode the agent offers; then the session's current mode,
    and its record's (a record closed meanwhile is kept as it is)."""
    mode = checked_mode(session.modes, mode, session.secrets)
    params = SetSessionModeRequest(session_id=session.backend_session_id or "", mode_id=mode)
    await control_request(session, "session/set_mode", params, config)
    session.current_mode = mode
    if session.backend_session_id is not None:  # a close meanwhile keeps its record
        await store.set_current_mode(  # a record holds no credential
            session.session_key, session.backend_session_id, redact(mode, session.secrets))


async def apply_config_option(session: LiveSession, key: str, value: str | bool,
                              config: AcpxConfig) -> None:
    """``session/set_config_option`` with an option and value the agent offers."""
    value = checked_config_value(session.config_options, key, value, session.secrets)
    params = SetSessionConfigOptionRequest(
        session_id=session.backend_session_id or "", config_id=key, value=value,
        type="boolean" if isinstance(value, bool) else None,
    )
    await control_request(session, "session/set_config_option", params, config)


async def apply_model(session: LiveSession, model: str, config: AcpxConfig) -> None:
    """The config option of category ``model``, or for an agent that has none but lists
    legacy ``models``, ``session/set_model``; ``ACP_BACKEND_UNSUPPORTED_CONTROL`` when the
    agent offers no models."""
    option = model_option(session.config_options)
    if option is not None:
        await apply_config_option(session, option.id, model, config)
        return
    models = session.models
    if models is None:
        raise AcpRuntimeError("ACP_BACKEND_UNSUPPORTED_CONTROL", "agent offers no models")
    # the legacy selection (agents without a model config option, e.g. gemini-cli)
    model = checked_legacy_model(models, model, session.secrets)
    params = SetSessionModelRequest(session_id=session.backend_session_id or "", model_id=model)
    await control_request(session, "session/set_model", params, config)
    session.models = msgspec.structs.replace(models, current_model_id=model)
