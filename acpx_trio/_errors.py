"""Typed errors.  Every error acpx-trio raises is an :class:`AcpxError` with a stable ``code``.

Codes are upper-case strings meant for programs (``except`` by class, branch on ``code``);
messages are meant for people and say what to do next.
"""

from __future__ import annotations

import os
import re
import reprlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import msgspec

__all__ = [
    "CREDENTIAL_NAME", "MIN_SECRET_LENGTH", "REDACTED", "AcpConnectionClosedError",
    "AcpProtocolError", "AcpRuntimeError", "AcpxError", "AcpxUsageError", "AgentProcessError",
    "ConfigError", "ContainmentError", "GatewayInstanceIdError", "LeaseStateError",
    "LeaseStoreError", "LeaseValueError", "RawSecrets", "SessionStoreError", "StateFileError",
    "StreamRedactor", "collapse_group", "environment_credentials", "is_body_exception",
    "number_holds_secret", "redact", "redact_argv", "redact_value", "replace_secrets",
    "rpc_error_detail", "text_problem"
]

#: Only unmistakable shapes are guessed (issue 23: a guess on ordinary words turned claude's
#: ``--dangerously-skip-permissions`` into ``--dangerously-[redacted]``); the credentials we
#: know (configured, environment, ``authenticate`` params) are redacted exactly, by value.
_SECRET_PATTERNS = (
    # NAME=value / "name": "value" where the name ends in a credential word
    re.compile(
        r"(?i)(\b(?:[a-z0-9]+[_-])*(?:api[_-]?key|access[_-]?token|auth[_-]?token|"
        r"refresh[_-]?token|bearer[_-]?token|token|secret|password|passwd)"
        r"[\"']?\s*[:=]\s*[\"']?)([^\s\"',;]{4,})"
    ),
    re.compile(r"(?i)(bearer\s+)([A-Za-z0-9._~+/=-]{16,})"),
    # vendor key formats: Anthropic/OpenAI, Stripe, GitHub, Slack, Google, AWS
    re.compile(
        r"()\b(sk-ant-[A-Za-z0-9_-]{20,}|sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{32,}"
        r"|[spr]k_(?:live|test)_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{36,}"
        r"|github_pat_[A-Za-z0-9_]{22,}|xox[abpr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}"
        r"|AKIA[0-9A-Z]{16})\b"
    ),
)


#: Known credentials shorter than this are not searched for: a value of 1-3 characters would
#: redact ordinary text everywhere.  Config ``auth`` refuses such values (``ConfigError``); an
#: environment credential that short is used but warned about (it cannot be redacted).
MIN_SECRET_LENGTH = 4
#: What a redacted credential reads as.
REDACTED = "[redacted]"
#: Names (environment variables, HTTP headers) whose values are credentials: ``ACPX_AUTH_*``
#: and names that look like one (provider keys such as ``OPENAI_API_KEY``, tokens, secrets,
#: passwords; ``Authorization`` and ``Cookie`` headers).
CREDENTIAL_NAME = re.compile(
    r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|^ACPX_AUTH_|AUTHORIZATION|COOKIE)",
    re.IGNORECASE)


def environment_credentials(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of the environment variables whose names look like credentials
    (:data:`CREDENTIAL_NAME`), of ``environ`` or this process's environment."""
    env = os.environ if environ is None else environ
    return [v for k, v in env.items() if CREDENTIAL_NAME.search(k)]


def _known(secrets: Iterable[str]) -> tuple[str, ...]:
    """The searchable secrets, longest first (a credential inside another goes whole)."""
    return tuple(sorted({s for s in secrets if isinstance(s, str)
                         and len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True))


#: The significant decimal digits a JSON float is sure to keep once decoded (an IEEE double
#: carries 15 to 17): of a credential of digits longer than this, only its first
#: ``FLOAT_DIGITS`` survive in a number, so those alone count as the credential.
FLOAT_DIGITS = 15


def _digit_needles(known: tuple[str, ...]) -> tuple[str, ...]:
    """What of each credential of digits a number can carry: all of it, or for one longer
    than :data:`FLOAT_DIGITS`, its first :data:`FLOAT_DIGITS` (a float rounds the rest)."""
    return tuple(x[:FLOAT_DIGITS] for x in known if x.isdigit())


#: How deep :func:`replace_secrets` and :func:`redact_value` look into nested JSON; what
#: lies deeper is replaced whole by :data:`TOO_DEEP` (it cannot be checked: fail closed).
MAX_REDACT_DEPTH = 64
#: What a value nested deeper than :data:`MAX_REDACT_DEPTH` reads as.
TOO_DEEP = "[nested too deeply to check for credentials]"


#: What :func:`replace_secrets` makes of a number whose text holds a credential (an agent
#: may send a credential of digits as a JSON number): ``"text"`` the redacted text (raw
#: JSON), ``"none"`` ``None`` (typed events, whose number fields are all optional: the value
#: is withheld), ``"keep"`` the number (numbers that are ours, such as our own timestamps).
NumberRule = Literal["text", "none", "keep"]


def replace_secrets(value: Any, secrets: Iterable[str], *, numbers: NumberRule = "text") -> Any:
    """Every known secret (exactly, by value) replaced by :data:`REDACTED` in every string of
    decoded JSON, keys included, and in numbers as ``numbers`` says; a text that holds a
    credential of digits with points among them, or the first :data:`FLOAT_DIGITS` digits of
    a longer one (what a float keeps of it), is replaced whole; nothing else is guessed at; a
    list or object nested deeper than :data:`MAX_REDACT_DEPTH` is replaced by
    :data:`TOO_DEEP`.  Returns ``value`` itself when there is no secret to look for."""
    known = _known(secrets)
    if not known:
        return value
    return _map_strings(value, _known_replacer(known), 0, numbers)


def _known_replacer(known: tuple[str, ...]) -> Callable[[str], str]:
    """The one rule for known credentials in a text: each replaced by :data:`REDACTED`, and
    the whole text replaced when it holds a credential of digits with points among them (a
    float: ``9.8765432e+27``) or the first :data:`FLOAT_DIGITS` digits of a longer one (what
    a float keeps of it)."""
    digits = _digit_needles(known)

    def replace(text: str) -> str:
        for secret in known:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if digits and any(x in text.replace(".", "") for x in digits):
            return REDACTED
        return text

    return replace


def _map_strings(value: Any, fn: Callable[[str], str], depth: int,
                 numbers: NumberRule = "text") -> Any:
    """``fn`` applied to every string of decoded JSON (object keys too) and, unless
    ``numbers`` is ``"keep"``, to the text of every number: one that ``fn`` changes becomes
    the changed text (``"text"``) or ``None`` (``"none"``); a list or object nested deeper
    than :data:`MAX_REDACT_DEPTH` is replaced by :data:`TOO_DEEP`."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, int | float) and not isinstance(value, bool) and numbers != "keep":
        for text in _number_texts(value):
            mapped = fn(text)
            if mapped != text:
                return mapped if numbers == "text" else None
        return value
    if isinstance(value, list | tuple | dict) and depth >= MAX_REDACT_DEPTH:
        return TOO_DEEP
    if isinstance(value, list | tuple):
        return [_map_strings(v, fn, depth + 1, numbers) for v in value]
    if isinstance(value, dict):
        return {_map_strings(k, fn, depth + 1, numbers): _map_strings(v, fn, depth + 1, numbers)
                for k, v in value.items()}
    return value


def _number_texts(value: int | float) -> tuple[str, ...]:
    """The texts a number's digits may be read in: Python's and the JSON written for it
    (which differ for floats: ``9.8765432e-05`` against ``0.000098765432``); the points
    among a float's digits are the text rule's (:func:`_known_replacer`)."""
    if isinstance(value, int):
        return (str(value),)
    return (repr(value), msgspec.json.encode(value).decode())


class RawSecrets:
    """Whether an encoded JSON message may hold one of the known credentials, checked on its
    bytes before it is decoded: as the credential is, JSON-escaped as an encoder escapes it,
    or (a credential of digits) with points among its digits, as a float carries it
    (``9.8765432e27``; of one longer than :data:`FLOAT_DIGITS`, its first digits).  False
    means it certainly holds none."""

    def __init__(self, secrets: Iterable[str]) -> None:
        known = _known(secrets)
        self.needles = tuple(sorted({x.encode() for x in known}
                                    | {msgspec.json.encode(x)[1:-1] for x in known},
                                    key=len, reverse=True))
        self.digits = tuple(x.encode() for x in _digit_needles(known))

    def __bool__(self) -> bool:
        return bool(self.needles)

    def __call__(self, raw: bytes) -> bool:
        if any(x in raw for x in self.needles):
            return True
        if not self.digits:
            return False
        dotless = raw.replace(b".", b"") if b"." in raw else raw
        return any(x in dotless for x in self.digits)


def number_holds_secret(value: int | float, secrets: Iterable[str]) -> bool:
    """Whether a known secret is among the digits of ``value`` (an agent may send a
    credential of digits as a number: an error code, a protocol version)."""
    return replace_secrets(value, secrets, numbers="none") is None  # the one number rule


def _tail_start(text: str, secrets: tuple[str, ...], keep: int) -> int | None:
    """Where the longest end of ``text`` that is a non-empty proper prefix of a secret
    starts (at most ``keep`` characters back), or ``None``.  Linear in what it looks at,
    whatever a secret's length (a regex of nested optional groups, one per character,
    overflowed the regex compiler's recursion from about 490 characters)."""
    start = len(text)
    low = max(0, len(text) - keep)
    for secret in secrets:
        first = secret[0]
        i = text.find(first, low)
        while i != -1 and i < start:
            tail = text[i:]
            if len(tail) < len(secret) and secret.startswith(tail):
                start = i
                break
            i = text.find(first, i + 1)
    return None if start == len(text) else start


class StreamRedactor:
    """Redacts known secrets from text that arrives in pieces (an agent's streamed reply), so
    that no concatenation of what it emits contains a secret, whole or split.

    :meth:`feed` returns what is safe to emit now: the text so far with every complete secret
    replaced, minus the shortest tail that could still be the start of one (held back until
    the next piece decides; nothing is held when no tail could be).  :meth:`flush` returns
    the held tail (the stream ended: it was not a secret).  Without secrets it returns every
    piece unchanged."""

    __slots__ = ("_buf", "_keep", "_secrets")

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = _known(secrets)
        self._buf = ""
        self._keep = max((len(s) - 1 for s in self._secrets), default=0)

    def __bool__(self) -> bool:
        return bool(self._secrets)

    @property
    def held(self) -> str:
        return self._buf

    def feed(self, piece: str) -> str:
        if not self._secrets:
            return piece
        buf = self._buf + piece if self._buf else piece
        for secret in self._secrets:
            if secret in buf:
                buf = buf.replace(secret, REDACTED)
        start = _tail_start(buf, self._secrets, self._keep)
        if start is None:
            self._buf = ""
            return buf
        self._buf = buf[start:]
        return buf[:start]

    def clean(self, text: str) -> bool:
        """Whether ``text``, fed now, would come out unchanged and hold nothing back (no
        secret in it and no tail that could start one; nothing held from before)."""
        if self._buf:
            return False
        if any(secret in text for secret in self._secrets):
            return False
        return _tail_start(text, self._secrets, self._keep) is None

    def flush(self) -> str:
        out, self._buf = self._buf, ""
        return out


def redact_value(value: Any, secrets: Iterable[str] = ()) -> Any:
    """:func:`redact` applied to every string inside decoded JSON (dicts, lists; keys too);
    a list or object nested deeper than :data:`MAX_REDACT_DEPTH` reads as :data:`TOO_DEEP`."""
    return _map_strings(value, _redactor(secrets), 0)


def redact_argv(argv: Iterable[str], secrets: Iterable[str] = ()) -> tuple[str, ...]:
    """A command line as it may be shown or stored: :func:`redact` of each word (a
    credential passed as an argument, ``--api-key sk-...``, reads ``[redacted]``)."""
    known = tuple(secrets)
    return tuple(redact(word, known) for word in argv)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret value (4 characters or more; by the one rule of
    :func:`replace_secrets`, a credential of digits carried as a float included) and every
    unmistakable credential shape (``OPENAI_API_KEY=...``, ``Bearer ...``, ``sk-ant-...``,
    ``ghp_...``, ``AKIA...``) replaced by ``[redacted]``; ordinary words are never guessed
    at."""
    return _redactor(secrets)(text)


def _redactor(secrets: Iterable[str]) -> Callable[[str], str]:
    known = _known_replacer(_known(secrets))

    def redact_text(text: str) -> str:
        text = known(text)
        for pattern in _SECRET_PATTERNS:
            text = pattern.sub(lambda m: f"{m.group(1)}[redacted]", text)
        return text

    return redact_text


def rpc_error_detail(data: Any) -> str | None:
    """The human reason an agent put in a JSON-RPC error's ``data``: ``data.details``, else
    ``data.message``, else ``data`` itself when it is a string (``None`` when there is none)."""
    if isinstance(data, str):
        return data.strip() or None
    if isinstance(data, Mapping):
        for key in ("details", "message", "detail", "reason"):
            value = data.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


def text_problem(value: object, *, nul: bool = True) -> str | None:
    """Why ``value`` cannot be handed on as text, or ``None`` when it can: not a ``str``; a
    lone surrogate (UTF-8, hence JSON to an agent and our state files, cannot carry it); with
    ``nul=False`` (a path or an argv word) a NUL character, which no path or argument holds.
    The one rule for text arguments: the runtime's public methods, the config and the agent
    spawn each turn it into their own typed error.  The reason names no value but the
    offending character and its position (the text may be a credential)."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"cannot be encoded as UTF-8 ({exc.reason}: "
                f"{exc.object[exc.start:exc.end]!r} at position {exc.start})")
    if not nul and "\0" in value:
        return f"must not contain a NUL character (at position {value.index(chr(0))})"
    return None


class _ValueRepr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        try:
            return super().repr_int(x, level)
        except ValueError:  # past the digit limit of int -> str (sys.get_int_max_str_digits)
            return f"<int of {x.bit_length()} bits>"


#: Values shown in error messages: bounded in depth and length, so a hostile or huge value
#: (a config nested 100,000 levels deep, an int of 5,000 digits) gives a short message, never
#: a RecursionError or ValueError.
_VALUE_REPR = _ValueRepr()
_VALUE_REPR.maxlevel = 4
_VALUE_REPR.maxstring = _VALUE_REPR.maxother = 160


def _shown(value: object) -> str:
    return _VALUE_REPR.repr(value)


class AcpxError(Exception):
    """Base class of every acpx-trio error.  ``code`` is stable; ``message`` is for people."""

    code: str = "ACPX_ERROR"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class ConfigError(AcpxError, ValueError):
    """A configuration value is invalid.  ``field`` names it (dotted path), ``value`` is what
    was given, ``allowed`` says what would be accepted; ``source``, when known, is the config
    file the value came from, and the message then begins ``in <source>: ``."""

    code = "ACPX_CONFIG_INVALID"

    def __init__(
        self, field: str, value: Any, allowed: str, *, source: str | None = None
    ) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        self.source = source
        where = "" if source is None else f"in {source}: "
        super().__init__(f"{where}invalid config {field}={_shown(value)}: {allowed}")


class AcpxUsageError(AcpxError, ValueError):
    """A public call got a bad argument (an empty id, a negative grace or pid, an unknown
    state name).  Raised before anything is read, written or signalled; ``argument`` names
    the parameter.  A ``ValueError`` too, so callers that caught one keep working."""

    code = "ACPX_USAGE"

    def __init__(self, argument: str, value: object, allowed: str) -> None:
        self.argument = argument
        self.value = value
        super().__init__(f"{argument}={_shown(value)}: {allowed}")


class ContainmentError(ConfigError):
    """Config ``containment = "cgroup"`` where no usable cgroup is available; the message says
    why (no cgroup v2, not writable/delegated, no ``cgroup.kill``)."""

    code = "ACPX_CONTAINMENT_UNAVAILABLE"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__("containment", "cgroup", f"cgroup containment is unusable here: "
                         f"{reason}")


class GatewayInstanceIdError(AcpxError):
    """The gateway instance id file exists but cannot be trusted or recovered.

    Raised instead of silently minting a new id, which would orphan every lease of the old one.
    """

    code = "ACPX_GATEWAY_ID_INVALID"


class LeaseStoreError(AcpxError):
    """The lease file could not be read or written."""

    code = "ACPX_LEASE_STORE_FAILED"


class SessionStoreError(AcpxError):
    """The session store (its directory or a record file) could not be read or written.

    ``path`` names the file or directory; the message says what failed and what to check."""

    code = "ACPX_SESSION_STORE"

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(message)


class LeaseStateError(AcpxError, ValueError):
    """An illegal lease state move (e.g. ``closed -> open``) was requested."""

    code = "ACPX_LEASE_STATE_INVALID"

    def __init__(self, lease_id: str, current: str, requested: str) -> None:
        self.lease_id = lease_id
        self.current = current
        self.requested = requested
        super().__init__(
            f"lease {lease_id}: illegal state move {current} -> {requested} "
            "(allowed: open->closing, open->closed, closing->closed, closing->lost; "
            "closed and lost are final)"
        )


class LeaseValueError(AcpxError, ValueError):
    """A :class:`~acpx_trio.ProcessLease` built with a field a reader would drop (a bad
    ``state``, a non-integer pid, an empty id): refused at construction, never written."""

    code = "ACPX_LEASE_INVALID"

    def __init__(self, field: str, value: object, allowed: str) -> None:
        super().__init__(f"lease field {field}={_shown(value)} is invalid: {allowed}")
        self.field = field


class AgentProcessError(AcpxError):
    """An agent process could not be started or died.  ``stderr_tail`` holds its last words."""

    code = "ACP_AGENT_PROCESS_FAILED"

    def __init__(self, message: str, *, code: str | None = None, stderr_tail: str = "") -> None:
        self.stderr_tail = stderr_tail
        if stderr_tail.strip():
            message = f"{message}\n--- agent stderr (tail) ---\n{stderr_tail.rstrip()}"
        super().__init__(message, code=code)


class AcpRuntimeError(AcpxError):
    """A runtime operation failed.  ``code`` follows OpenClaw's ACP runtime codes
    (``ACP_SESSION_INIT_FAILED``, ``ACP_TURN_FAILED``, ``ACP_AUTH_REQUIRED``,
    ``ACP_BACKEND_UNAVAILABLE``, ...) or carries the agent's JSON-RPC error
    (``rpc_code``/``rpc_data``).  ``detail`` is the reason behind it: the agent's
    ``data.details``/``data.message`` (derived from ``rpc_data`` when not given), or a
    redacted stderr tail when a session could not be set up; the message always includes it.
    ``retryable`` tells whether the same call may succeed if tried again."""

    code = "ACP_RUNTIME_ERROR"

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        rpc_code: int | None = None,
        rpc_data: Any = None,
        detail: str | None = None,
    ) -> None:
        if detail is None:
            detail = rpc_error_detail(rpc_data)
        if detail and detail not in message:
            message = f"{message}: {detail}" if "\n" not in detail else f"{message}\n{detail}"
        super().__init__(message, code=code)
        self.retryable = retryable
        self.rpc_code = rpc_code
        self.rpc_data = rpc_data
        self.detail = detail


class AcpProtocolError(AcpRuntimeError):
    """The agent broke the protocol (non-JSON line, oversized line, bad message shape).

    Like :class:`trio.BrokenResourceError`: the connection is unusable afterwards."""

    def __init__(self, message: str, *, code: str = "ACP_PROTOCOL_ERROR") -> None:
        super().__init__(code, message, retryable=False)


class AcpConnectionClosedError(AcpRuntimeError):
    """The agent closed its stdout (or died) while a request was waiting for its answer."""

    def __init__(self, message: str, *, code: str = "ACP_CONNECTION_CLOSED") -> None:
        super().__init__(code, message, retryable=True)


class StateFileError(AcpxError):
    """A state file or the state directory cannot be trusted: a FIFO, a device, a directory
    or a symbolic link where a regular file belongs, a file larger than its cap, or a state
    directory that is not a directory, belongs to another user, is group/world-writable or
    lies under a directory another user owns or could write.
    ``path`` names it; the message says how to fix it.  Nothing was read, written or
    ``chmod``-ed through it."""

    code = "ACPX_STATE_FILE_UNSAFE"

    def __init__(self, path: str, problem: str, fix: str) -> None:
        self.path = path
        super().__init__(f"{path}: {problem}; {fix}")


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def is_body_exception(exc: BaseException, body: BaseException | None) -> bool:
    """Whether ``exc``, one of a nursery's exceptions, is what its body raised (``body``):
    that very exception, or the copy of a group the nursery derived from it (it keeps every
    leaf of the original and may drop some)."""
    if body is None:
        return False
    if exc is body:
        return True
    if not (isinstance(exc, BaseExceptionGroup) and isinstance(body, BaseExceptionGroup)):
        return False
    originals = {id(leaf) for leaf in _leaves(body)}
    return all(id(leaf) in originals for leaf in _leaves(exc))


def collapse_group(exc: BaseException) -> BaseException:
    r"""The one exception a caller should see for what an internal nursery raised.

    Internal nurseries (``strict_exception_groups``) wrap even a single error in an
    ``ExceptionGroup``; public coroutines of acpx-trio promise plain :class:`AcpxError`\ s.
    Rules: a non-group is returned as is; ``KeyboardInterrupt`` wins; otherwise the first leaf
    that is not :class:`trio.Cancelled` (the others are attached as notes); of a group of only
    cancellations, its first :class:`trio.Cancelled` (the cancel scope that asked for it
    catches it as it would the group; a host's ``except trio.Cancelled`` sees it)."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves = _leaves(exc)
    for leaf in leaves:
        if isinstance(leaf, KeyboardInterrupt):
            return leaf
    import trio  # local: this module stays importable without Trio (the mock agent)

    errors = [leaf for leaf in leaves if not isinstance(leaf, trio.Cancelled)]
    if not errors:
        return leaves[0]
    first = errors[0]
    for other in errors[1:]:
        first.add_note(f"also raised concurrently: {type(other).__name__}: {other}")
    return first
