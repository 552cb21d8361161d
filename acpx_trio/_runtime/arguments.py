"""The argument checks at the runtime's public boundary, in one place.

Every public method of :class:`~acpx_trio.AcpxRuntime` checks its arguments here before
anything is started, read, written or sent: a text argument (a session key, an agent name, a
cwd, a mode, a config key or value, an id) must be a ``str`` that UTF-8 can carry (no lone
surrogate: it goes to the agent as JSON and into our state files) and, where it becomes a path,
hold no NUL; a handle must be an :class:`~acpx_trio.AcpRuntimeHandle` whose session key and
session id are such text; a turn's ``_meta`` a JSON object nested at most
:data:`META_MAX_DEPTH` deep.  Otherwise :class:`AcpRuntimeError` ``ACP_INVALID_RUNTIME_OPTION``
naming the argument (the text rule itself is :func:`acpx_trio._errors.text_problem`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from acpx_trio._errors import AcpRuntimeError, AcpxUsageError, text_problem
from acpx_trio._events import AcpRuntimeHandle
from acpx_trio._runtime.agents import normalize_agent_name
from acpx_trio._store.config import AcpxConfig
from acpx_trio._store.leases import LeaseStore

__all__ = ["META_MAX_DEPTH", "agent_arg", "checked_meta", "close_args", "handle_arg",
           "optional_text_arg", "runtime_args", "text_arg", "turn_args", "validate_ensure_args"]

#: The code of every argument refused here.
INVALID = "ACP_INVALID_RUNTIME_OPTION"


def text_arg(name: str, value: object, *, path: bool = False) -> str:
    """``value`` if it is text (see the module docstring; ``path``: no NUL either), else
    ``ACP_INVALID_RUNTIME_OPTION`` naming ``name``."""
    problem = text_problem(value, nul=not path)
    if problem is not None or not isinstance(value, str):  # (the second: for the type checker)
        raise AcpRuntimeError(INVALID, f"{name} {problem}")
    return value


def optional_text_arg(name: str, value: object, *, path: bool = False) -> str | None:
    """:func:`text_arg`, with ``None`` let through (the argument's default)."""
    return None if value is None else text_arg(name, value, path=path)


def config_option_args(key: object, value: object) -> tuple[str, str | bool]:
    """A config option's ``key`` (text) and ``value`` (text, or a bool), else
    ``ACP_INVALID_RUNTIME_OPTION`` naming the argument."""
    return text_arg("key", key), value if isinstance(value, bool) else text_arg("value", value)


def runtime_args(config: object, gateway_instance_id: object, lease_store: object) -> None:
    """What a runtime is built from: an :class:`AcpxConfig`, a non-empty gateway id and a
    :class:`LeaseStore`, else :class:`~acpx_trio.AcpxUsageError` naming the argument (before
    anything starts: a wrong one used to fail at the first ``ensure_session``, untyped)."""
    if not isinstance(config, AcpxConfig):
        raise AcpxUsageError("config", config, "must be an AcpxConfig (see resolve_config)")
    if not isinstance(gateway_instance_id, str) or not gateway_instance_id.strip():
        raise AcpxUsageError("gateway_instance_id", gateway_instance_id,
                             "must be a non-empty string (see resolve_gateway_instance_id)")
    if not isinstance(lease_store, LeaseStore):
        raise AcpxUsageError("lease_store", lease_store, "must be a LeaseStore")


def close_args(reason: object, discard_persistent_state: object) -> tuple[str, bool]:
    """``close``'s ``reason`` (text) and ``discard_persistent_state`` (a bool: ``"yes"`` or
    ``0`` would be written into the session record, which could then not be read), else
    ``ACP_INVALID_RUNTIME_OPTION`` naming the argument."""
    if not isinstance(discard_persistent_state, bool):
        raise AcpRuntimeError(INVALID, "discard_persistent_state must be True or False, not "
                              f"{type(discard_persistent_state).__name__}")
    return text_arg("reason", reason), discard_persistent_state


def agent_arg(value: object) -> str:
    """An agent name as text, trimmed and lower-cased (an unknown one is the registry's
    ``ACP_AGENT_UNKNOWN``)."""
    return normalize_agent_name(text_arg("agent", value))


def handle_arg(handle: object) -> AcpRuntimeHandle:
    """``handle`` if it is a handle :meth:`~acpx_trio.AcpxRuntime.ensure_session` could have
    returned (an :class:`AcpRuntimeHandle` whose ``session_key`` and ``backend_session_id``
    are text); ``ACP_INVALID_RUNTIME_OPTION`` otherwise (``None``, a dict, a handle rebuilt
    with a number for its key)."""
    if not isinstance(handle, AcpRuntimeHandle):
        raise AcpRuntimeError(
            INVALID, "handle must be an AcpRuntimeHandle returned by ensure_session, not "
            f"{type(handle).__name__}")
    text_arg("handle.session_key", handle.session_key)
    text_arg("handle.backend_session_id", handle.backend_session_id)
    return handle


_SESSION_MODES = ("persistent", "oneshot")
_TURN_MODES = ("prompt", "steer")


def validate_ensure_args(session_key: object, agent: object, mode: str) -> str:
    """The trimmed session key; raises ``ACP_SESSION_INIT_FAILED`` for an empty (or ``None``)
    key or agent and ``ACP_INVALID_RUNTIME_OPTION`` for one that is not text (see
    :func:`text_arg`) or a mode other than persistent/oneshot."""
    key = text_arg("session_key", "" if session_key is None else session_key).strip()
    if not key:
        raise AcpRuntimeError("ACP_SESSION_INIT_FAILED", "ACP session key is required.")
    if not text_arg("agent", "" if agent is None else agent).strip():
        raise AcpRuntimeError("ACP_SESSION_INIT_FAILED", "ACP agent id is required.")
    if mode not in _SESSION_MODES:
        raise AcpRuntimeError(
            INVALID,
            f'Unsupported ACP runtime session mode "{mode}". Expected one of: '
            "persistent, oneshot.",
        )
    return key


def turn_args(text: object, mode: object, request_id: object) -> None:
    """A turn's ``text``, ``mode`` (prompt/steer) and ``request_id`` (text or ``None``);
    ``ACP_INVALID_RUNTIME_OPTION`` naming the one that is not."""
    if mode not in _TURN_MODES:
        raise AcpRuntimeError(
            INVALID, f'Unsupported ACP turn mode "{mode}". Expected one of: prompt, steer.')
    text_arg("text", text)
    optional_text_arg("request_id", request_id)


#: How deep a turn's ``_meta`` may nest (objects and arrays): metadata, not documents; a bound
#: that holds whatever the interpreter's recursion limit (and that any agent can parse).
META_MAX_DEPTH = 64


def _depth(value: Any) -> int:
    """How deep ``value`` nests (objects and arrays; a scalar is 0), counted without
    recursion and at most to one past :data:`META_MAX_DEPTH`."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping | list | tuple) and depth <= META_MAX_DEPTH:
            deepest = max(deepest, depth + 1)
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, Mapping)
                                                  else item))
    return deepest


def checked_meta(meta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``meta`` as a JSON object (a copy), or ``ACP_INVALID_RUNTIME_OPTION`` (also for one
    nested deeper than :data:`META_MAX_DEPTH`)."""
    if meta is None:
        return None
    try:
        if not isinstance(meta, Mapping) or not all(isinstance(k, str) for k in meta):
            raise TypeError("keys must be strings")
        obj = dict(meta)
        if _depth(obj) > META_MAX_DEPTH:
            raise ValueError(f"nested deeper than {META_MAX_DEPTH} levels")
        msgspec.json.encode(obj)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise AcpRuntimeError("ACP_INVALID_RUNTIME_OPTION",
                              f"meta must be a JSON object: {exc}") from exc
    return obj
