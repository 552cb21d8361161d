"""Agent authentication: finding credentials for advertised ``authMethods`` and
``authenticate``.

Lookup for an auth method id ``m`` (first match wins): the owner's environment under ``m``,
``UPPER_SNAKE(m)`` and ``ACPX_AUTH_<UPPER_SNAKE(m)>``, then config ``auth[m]``.  A credential
reaches the agent as environment variable ``UPPER_SNAKE(m)`` (method ``verify-key`` ->
``VERIFY_KEY``).

The agent is spawned before ``initialize`` tells us its methods, so :func:`spawn_env`
places, at spawn time, every credential that can be found for a method id that is *known*
then: each key of config ``auth``, each ``ACPX_AUTH_<NAME>`` variable of the owner (as
``<NAME>``), and the auth method ids of the agent's registry row.  Variables already named
``UPPER_SNAKE(m)`` in the owner's environment are inherited anyway.  After ``initialize``,
:func:`choose_method` picks the first advertised method that has a credential and the
handshake calls ``authenticate {methodId}`` before ``session/new|load|resume``.

Guarantees: credential values are never logged, never written to leases, session records or
``--json`` output; they live only in the agent's environment and in :class:`AuthPlan`, whose
``repr`` hides them.  Error messages name environment variables, never values.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from acpx_trio._acp import AUTH_REQUIRED, AuthMethod
from acpx_trio._errors import AcpRuntimeError

__all__ = [
    "AUTH_ENV_PREFIX",
    "AuthPlan",
    "auth_required_error",
    "choose_method",
    "credential_names",
    "find_credential",
    "is_auth_required",
    "spawn_env",
    "upper_snake",
]

AUTH_ENV_PREFIX = "ACPX_AUTH_"
_AUTH_HINTS = ("authentication required", "auth required", "not authenticated",
               "unauthenticated", "login required", "please log in", "please login")


def upper_snake(method_id: str) -> str:
    """``verify-key`` -> ``VERIFY_KEY``; ``fastAgentKey`` -> ``FAST_AGENT_KEY``."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", method_id.strip())
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").upper()


def credential_names(method_id: str) -> list[str]:
    """The owner environment variables looked up for ``method_id``, in order."""
    snake = upper_snake(method_id)
    names = [method_id, snake, f"{AUTH_ENV_PREFIX}{snake}"] if snake else [method_id]
    return list(dict.fromkeys(n for n in names if n))


def find_credential(
    method_id: str, environ: Mapping[str, str], config_auth: Mapping[str, str]
) -> tuple[str, str] | None:
    """``(credential, where)`` for ``method_id`` (``where`` is an env var name or
    ``config auth[m]``: a name, never the value), or ``None``."""
    for name in credential_names(method_id):
        value = environ.get(name)
        if value:
            return value, name
    value = config_auth.get(method_id)
    if value:
        return value, f"config auth[{method_id}]"
    return None


@dataclasses.dataclass(frozen=True)
class AuthPlan:
    """What the spawn adds to the agent's environment for authentication (in-memory only,
    never encoded).  ``env`` maps variable names to credentials; ``repr`` shows only names."""

    env: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every credential value (for redaction)."""
        return tuple(v for v in self.env.values() if v)

    @property
    def names(self) -> list[str]:
        return sorted(self.env)


def spawn_env(
    environ: Mapping[str, str],
    config_auth: Mapping[str, str],
    known_methods: Iterable[str] = (),
) -> AuthPlan:
    """The credentials to place in a new agent's environment (see the module docstring)."""
    methods = list(dict.fromkeys([*config_auth, *known_methods]))
    methods += [
        name[len(AUTH_ENV_PREFIX):] for name in environ
        if name.startswith(AUTH_ENV_PREFIX) and len(name) > len(AUTH_ENV_PREFIX)
    ]
    env: dict[str, str] = {}
    for method in methods:
        target = upper_snake(method)
        if not target or target in env:
            continue
        found = find_credential(method, environ, config_auth)
        if found is not None and environ.get(target) != found[0]:
            env[target] = found[0]
    return AuthPlan(env=env)


def choose_method(
    methods: Sequence[AuthMethod], environ: Mapping[str, str], config_auth: Mapping[str, str]
) -> AuthMethod | None:
    """The first advertised method with a credential, or ``None``."""
    for method in methods:
        if find_credential(method.id, environ, config_auth) is not None:
            return method
    return None


def is_auth_required(exc: AcpRuntimeError) -> bool:
    """Whether an agent's error means "authenticate first" (-32000, or the usual wording, or
    ``data.authRequired``/``data.methodId``/``data.methods``)."""
    if exc.rpc_code == AUTH_REQUIRED:
        return True
    data: Any = exc.rpc_data
    if isinstance(data, Mapping) and any(
        k in data for k in ("authRequired", "methodId", "methods", "authMethods")
    ):
        return True
    text = f"{exc.message} {exc.detail or ''}".lower()
    return any(hint in text for hint in _AUTH_HINTS)


def _describe(method: AuthMethod) -> str:
    names = credential_names(method.id)
    env = ", ".join(names[1:] if len(names) > 1 else names)
    label = f" ({method.name})" if method.name and method.name != method.id else ""
    return f"{method.id}{label}: set {env} or config auth[\"{method.id}\"]"


def auth_required_error(
    methods: Sequence[AuthMethod], cause: AcpRuntimeError | None = None
) -> AcpRuntimeError:
    """``ACP_AUTH_REQUIRED`` naming every advertised method and the variables that would
    satisfy it (names only)."""
    if methods:
        listed = "; ".join(_describe(m) for m in methods)
        what = f"Advertised auth methods: {listed}."
    else:
        what = "The agent advertised no auth methods; log in with the agent's own tool."
    why = f" The agent said: {cause.message}." if cause is not None else ""
    return AcpRuntimeError(
        "ACP_AUTH_REQUIRED",
        f"The agent requires authentication.{why} {what}",
        retryable=False,
        rpc_code=None if cause is None else cause.rpc_code,
        rpc_data=None if cause is None else cause.rpc_data,
        detail=None if cause is None else cause.detail,
    )
