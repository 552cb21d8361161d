"""Agent authentication: finding credentials for advertised ``authMethods`` and
``authenticate``.

Lookup for an auth method id ``m`` (first match wins): the owner's environment under ``m``,
``UPPER_SNAKE(m)`` and ``ACPX_AUTH_<UPPER_SNAKE(m)>``, then config ``auth[m]``.  A credential
reaches the agent as environment variable ``UPPER_SNAKE(m)`` (method ``verify-key`` ->
``VERIFY_KEY``).

Known vendor methods (:data:`VENDOR_AUTH_ENV`, e.g. codex's ``api-key``) use the variables
the agent really reads instead of ``m``/``UPPER_SNAKE(m)``: they are looked up in that order
(then ``ACPX_AUTH_<UPPER_SNAKE(m)>`` and config ``auth[m]``), and the credential reaches the
agent under every one of them (codex-acp 1.x wants ``CODEX_API_KEY`` or ``OPENAI_API_KEY``
depending on the build, so both are set).

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
import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from acpx_trio._acp import AUTH_REQUIRED, AuthMethod
from acpx_trio._errors import MIN_SECRET_LENGTH, AcpRuntimeError

__all__ = [
    "AUTH_ENV_PREFIX",
    "VENDOR_AUTH_ENV",
    "AuthPlan",
    "auth_required_error",
    "choose_method",
    "credential_names",
    "describe_method",
    "find_credential",
    "is_auth_required",
    "spawn_env",
    "upper_snake",
    "vendor_env",
]

AUTH_ENV_PREFIX = "ACPX_AUTH_"
_AUTH_HINTS = ("authentication required", "auth required", "not authenticated",
               "unauthenticated", "login required", "please log in", "please login")


def upper_snake(method_id: str) -> str:
    """``verify-key`` -> ``VERIFY_KEY``; ``fastAgentKey`` -> ``FAST_AGENT_KEY``."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", method_id.strip())
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").upper()


#: agent name -> auth method id -> the environment variables that agent reads for it (in
#: lookup order).  From the adapters' source: codex-acp 1.x (``src/CodexAuthMethod.ts``,
#: ``readApiKeyFromEnv``) advertises ``api-key`` and reads ``CODEX_API_KEY``, then
#: ``OPENAI_API_KEY``; the 0.x binary advertised ``codex-api-key``/``openai-api-key`` (an
#: outside run, issue 23); gemini-cli's ``gemini-api-key`` (``AuthType.USE_GEMINI``) reads
#: ``GEMINI_API_KEY`` and ``vertex-ai`` ``GOOGLE_API_KEY``.  claude-agent-acp advertises only
#: ``type: "terminal"`` logins (and only to clients advertising ``auth.terminal``); the
#: Claude SDK reads ``ANTHROPIC_API_KEY`` from its environment, which it inherits.
VENDOR_AUTH_ENV: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "codex": {
        "api-key": ("CODEX_API_KEY", "OPENAI_API_KEY"),
        "codex-api-key": ("CODEX_API_KEY",),
        "openai-api-key": ("OPENAI_API_KEY",),
    },
    "gemini": {
        "gemini-api-key": ("GEMINI_API_KEY",),
        "vertex-ai": ("GOOGLE_API_KEY",),
    },
}


def vendor_env(method_id: str, agent: str | None) -> tuple[str, ...]:
    """The variables agent ``agent`` reads for ``method_id`` (empty: not a known method)."""
    if agent is None:
        return ()
    return VENDOR_AUTH_ENV.get(agent, {}).get(method_id, ())


def credential_names(method_id: str, agent: str | None = None) -> list[str]:
    """The owner environment variables looked up for ``method_id`` of ``agent``, in order."""
    snake = upper_snake(method_id)
    vendor = vendor_env(method_id, agent)
    if vendor:
        names = [*vendor, f"{AUTH_ENV_PREFIX}{snake}"]
    else:
        names = [method_id, snake, f"{AUTH_ENV_PREFIX}{snake}"] if snake else [method_id]
    return list(dict.fromkeys(n for n in names if n))


def find_credential(
    method_id: str, environ: Mapping[str, str], config_auth: Mapping[str, str],
    agent: str | None = None,
) -> tuple[str, str] | None:
    """``(credential, where)`` for ``method_id`` (``where`` is an env var name or
    ``config auth[m]``: a name, never the value), or ``None``."""
    for name in credential_names(method_id, agent):
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

    @property
    def too_short(self) -> list[str]:
        """Names of credentials too short to redact (1-3 characters)."""
        return sorted(k for k, v in self.env.items() if v and len(v) < MIN_SECRET_LENGTH)


def spawn_env(
    environ: Mapping[str, str],
    config_auth: Mapping[str, str],
    known_methods: Iterable[str] = (),
    agent: str | None = None,
) -> AuthPlan:
    """The credentials to place in a new agent's environment (see the module docstring)."""
    methods = list(dict.fromkeys([*config_auth, *known_methods,
                                  *VENDOR_AUTH_ENV.get(agent or "", {})]))
    methods += [
        name[len(AUTH_ENV_PREFIX):] for name in environ
        if name.startswith(AUTH_ENV_PREFIX) and len(name) > len(AUTH_ENV_PREFIX)
    ]
    env: dict[str, str] = {}
    for method in methods:
        # an ``ACPX_AUTH_<NAME>`` variable names its method in UPPER_SNAKE: match it back
        vendor_id = next((m for m in VENDOR_AUTH_ENV.get(agent or "", {})
                          if upper_snake(m) == upper_snake(method)), None)
        if vendor_id is not None:
            method = vendor_id
        targets = vendor_env(method, agent) or (upper_snake(method),)
        targets = tuple(t for t in targets if t and t not in env)
        if not targets:
            continue
        found = find_credential(method, environ, config_auth, agent)
        if found is None:
            continue
        for target in targets:
            if environ.get(target) != found[0]:
                env[target] = found[0]
    return AuthPlan(env=env)


def choose_method(
    methods: Sequence[AuthMethod], environ: Mapping[str, str], config_auth: Mapping[str, str],
    agent: str | None = None,
) -> AuthMethod | None:
    """The first advertised method with a credential, or ``None``."""
    for method in methods:
        if find_credential(method.id, environ, config_auth, agent) is not None:
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


def describe_method(
    method: AuthMethod, agent: str | None = None, command: Sequence[str] = (),
) -> str:
    """What satisfies ``method``: the variables to set (names only), or for a ``terminal``
    method the login to run in a terminal (the agent's ``command`` with the method's
    ``args``)."""
    label = f" ({method.name})" if method.name and method.name != method.id else ""
    if method.type == "terminal":
        argv = [*command, *(method.args or [])]
        run = f"`{shlex.join(argv)}`" if argv else "the agent's own login"
        return f"{method.id}{label}: log in once in a terminal: run {run}"
    names = credential_names(method.id, agent)
    if vendor_env(method.id, agent):
        env = " or ".join(vendor_env(method.id, agent))
    else:
        env = ", ".join(names[1:] if len(names) > 1 else names)
    return f"{method.id}{label}: set {env} or config auth[\"{method.id}\"]"


def auth_required_error(
    methods: Sequence[AuthMethod], cause: AcpRuntimeError | None = None,
    agent: str | None = None, command: Sequence[str] = (),
) -> AcpRuntimeError:
    """``ACP_AUTH_REQUIRED`` naming every advertised method and the variables that would
    satisfy it (names only)."""
    if methods:
        listed = "; ".join(describe_method(m, agent, command) for m in methods)
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
