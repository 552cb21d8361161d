"""Validating session config options against what the agent advertised (pure functions)."""

from __future__ import annotations

from acpx_trio._acp import SessionConfigOption
from acpx_trio._errors import AcpRuntimeError
from acpx_trio._runtime.update_map import config_option_info

__all__ = ["checked_config_value", "model_option"]


def model_option(options: list[SessionConfigOption] | None) -> SessionConfigOption | None:
    """The config option of category ``model`` (the first one), if the agent has one."""
    return next((o for o in options or () if o.category == "model"), None)


def checked_config_value(
    options: list[SessionConfigOption] | None, key: str, value: str | bool
) -> str | bool:
    """``value`` if the agent advertised option ``key`` with that value (any value when the
    agent advertised no options at all: the agent then decides).  Raises
    ``ACP_INVALID_RUNTIME_OPTION`` naming the valid ids or values otherwise."""
    if options is None:
        return value
    option = next((o for o in options if o.id == key), None)
    if option is None:
        ids = ", ".join(o.id for o in options) or "(none)"
        raise AcpRuntimeError("ACP_INVALID_RUNTIME_OPTION",
                              f"unknown config option {key!r}; the agent offers: {ids}")
    if option.type == "boolean":
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise AcpRuntimeError("ACP_INVALID_RUNTIME_OPTION",
                                  f"config option {key!r} takes true or false, not {value!r}")
        return value
    values = config_option_info(option).values
    if isinstance(value, bool) or (values and value not in values):
        raise AcpRuntimeError(
            "ACP_INVALID_RUNTIME_OPTION",
            f"invalid value {value!r} for config option {key!r}; choices: {', '.join(values)}",
        )
    return value
