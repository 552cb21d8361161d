"""Validating session config options against what the agent advertised (pure functions)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from acpx_trio._acp import SessionConfigOption, SessionModelState, SessionModeState
from acpx_trio._errors import AcpRuntimeError, redact
from acpx_trio._runtime.update_map import config_option_info

__all__ = [
    "checked_config_value", "checked_legacy_model", "checked_mode", "legacy_models", "model_option",
]


def model_option(options: list[SessionConfigOption] | None) -> SessionConfigOption | None:
    """The config option of category ``model`` (the first one), if the agent has one."""
    return next((o for o in options or () if o.category == "model"), None)


def _invalid(message: str, secrets: Iterable[str]) -> AcpRuntimeError:
    """``ACP_INVALID_RUNTIME_OPTION``: its message names what the agent offers, which may
    echo a credential it holds (``secrets``): redacted."""
    return AcpRuntimeError("ACP_INVALID_RUNTIME_OPTION", redact(message, secrets))


def checked_config_value(
    options: list[SessionConfigOption] | None, key: str, value: str | bool,
    secrets: Iterable[str] = (),
) -> str | bool:
    """``value`` if the agent advertised option ``key`` with that value (any value when the
    agent advertised no options at all: the agent then decides).  Raises
    ``ACP_INVALID_RUNTIME_OPTION`` naming the valid ids or values otherwise (``secrets``
    redacted from it)."""
    if options is None:
        return value
    option = next((o for o in options if o.id == key), None)
    if option is None:
        ids = ", ".join(o.id for o in options) or "(none)"
        raise _invalid(f"unknown config option {key!r}; the agent offers: {ids}", secrets)
    if option.type == "boolean":
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise _invalid(f"config option {key!r} takes true or false, not {value!r}",
                           secrets)
        return value
    values = config_option_info(option).values
    if isinstance(value, bool) or (values and value not in values):
        raise _invalid(f"invalid value {value!r} for config option {key!r}; choices: "
                       f"{', '.join(values)}", secrets)
    return value


def checked_mode(modes: SessionModeState | None, mode: str,
                 secrets: Iterable[str] = ()) -> str:
    """``mode`` if the agent advertised it (any mode when it advertised none: the agent then
    decides).  Raises ``ACP_INVALID_RUNTIME_OPTION`` naming the modes it offers otherwise
    (``secrets`` redacted from it)."""
    offered = [m.id for m in modes.available_modes] if modes else []
    if offered and mode not in offered:
        raise _invalid(f"unknown mode {mode!r}; the agent offers: {', '.join(offered)}",
                       secrets)
    return mode


def legacy_models(raw: Any) -> SessionModelState | None:
    """The legacy ``models`` of a session response, or ``None`` (absent or malformed: the
    schema's default-on-error rule; never a failed session)."""
    if raw is None:
        return None
    try:
        return msgspec.convert(raw, SessionModelState)
    except msgspec.ValidationError:
        return None


def checked_legacy_model(models: SessionModelState, model: str,
                         secrets: Iterable[str] = ()) -> str:
    """``model`` if the agent listed it; else ``ACP_INVALID_RUNTIME_OPTION`` naming the
    models it offers (``secrets`` redacted from it)."""
    ids = [m.model_id for m in models.available_models]
    if ids and model not in ids:
        raise _invalid(f"unknown model {model!r}; the agent offers: {', '.join(ids)}", secrets)
    return model
