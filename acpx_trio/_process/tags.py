"""The ownership tags of a launch: what every process acpx-trio starts carries, and how a
reader finds them again in what ``/proc`` shows.

Every launch is tagged twice, with the seed's names: environment variables
``OPENCLAW_ACPX_LEASE_ID`` / ``OPENCLAW_GATEWAY_INSTANCE_ID`` (inherited by every descendant
unless a tool scrubs its environment) and command-line flags ``--openclaw-acpx-lease-id ID
--openclaw-gateway-instance-id ID``.  A third variable, ``OPENCLAW_ACPX_OWNER``
(``PID:TICKS:CREATE``, see :mod:`acpx_trio._process.owner_tag`), names the owner process that
spawned it, so a tag sweep can leave a live owner's processes alone even when their lease
record was lost.

Guarantees: an empty or multi-line id is refused (``ValueError``: an empty tag could never
prove ownership); a reader of an environment block looks at the three tag variables only, no
other variable is kept or returned.  Pure: no I/O (the reading of ``/proc`` is
:mod:`acpx_trio._process.identity`'s).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = [
    "GATEWAY_ARG",
    "GATEWAY_ENV_KEY",
    "LEASE_ARG",
    "LEASE_ENV_KEY",
    "OWNER_ENV_KEY",
    "environ_entries",
    "gateway_in_environ",
    "lease_args",
    "lease_env",
    "lease_ids_in_environ",
    "tags_from_cmdline",
    "tags_from_environ",
    "tags_from_mapping",
]

LEASE_ENV_KEY = "OPENCLAW_ACPX_LEASE_ID"
GATEWAY_ENV_KEY = "OPENCLAW_GATEWAY_INSTANCE_ID"
#: Names the owner process (pid, start ticks, create time) of a launch (``owner_tag``).
OWNER_ENV_KEY = "OPENCLAW_ACPX_OWNER"
LEASE_ARG = "--openclaw-acpx-lease-id"
GATEWAY_ARG = "--openclaw-gateway-instance-id"
_LEASE_ENV_B = LEASE_ENV_KEY.encode() + b"="
_GATEWAY_ENV_B = GATEWAY_ENV_KEY.encode() + b"="
_OWNER_ENV_B = OWNER_ENV_KEY.encode() + b"="


def _check_id(name: str, value: str) -> str:
    if not isinstance(value, str) or not value.strip() or any(c in value for c in "\0\n"):
        raise ValueError(f"{name} must be a non-empty single-line string, got {value!r}")
    return value


def lease_env(
    lease_id: str, gateway_instance_id: str, owner: str | None = None
) -> dict[str, str]:
    """The two tag variables to add to an agent's environment, plus the owner tag
    (:func:`acpx_trio._process.owner_tag.owner_tag`) when ``owner`` is given.

    Raises ``ValueError`` for an empty id (an empty tag could never prove ownership)."""
    env = {
        LEASE_ENV_KEY: _check_id("lease_id", lease_id),
        GATEWAY_ENV_KEY: _check_id("gateway_instance_id", gateway_instance_id),
    }
    if owner is not None:
        env[OWNER_ENV_KEY] = _check_id("owner", owner)
    return env


def lease_args(lease_id: str, gateway_instance_id: str) -> list[str]:
    """The tag flags to append to an agent's argv (seed order: lease id, then gateway id).

    Raises ``ValueError`` for an empty id."""
    return [
        LEASE_ARG,
        _check_id("lease_id", lease_id),
        GATEWAY_ARG,
        _check_id("gateway_instance_id", gateway_instance_id),
    ]


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def tags_from_cmdline(cmdline: Sequence[str]) -> tuple[str | None, str | None]:
    """``(lease_id, gateway_instance_id)`` from argv flags ``--flag VALUE`` or ``--flag=VALUE``.

    The last occurrence of each flag wins; a flag without a value, or with an empty one, does
    not count."""
    lease: str | None = None
    gateway: str | None = None
    n = len(cmdline)
    for i, arg in enumerate(cmdline):
        for flag, is_lease in ((LEASE_ARG, True), (GATEWAY_ARG, False)):
            value: str | None
            if arg == flag:
                value = _clean(cmdline[i + 1]) if i + 1 < n else None
            elif arg.startswith(flag + "="):
                value = _clean(arg[len(flag) + 1 :])
            else:
                continue
            if value is not None:
                if is_lease:
                    lease = value
                else:
                    gateway = value
    return lease, gateway


def environ_entries(data: bytes, key: bytes) -> list[tuple[bytes, bool]]:
    """Every entry of a raw environment block (``/proc/PID/environ``: ``NAME=value\\0`` ...)
    that starts with ``key`` (``b"NAME="``), in block order, as ``(value, complete)``:
    ``complete`` when its NUL ends it (a block's unterminated tail is not).  An entry
    starts at the block's start or right after a NUL, so ``key`` inside another variable's
    value is no entry.  The one home of that rule for every tag reader."""
    found: list[tuple[bytes, bool]] = []
    padded = b"\0" + data
    needle = b"\0" + key
    at = padded.find(needle)
    while at >= 0:
        start = at + len(needle)
        end = padded.find(b"\0", start)
        if end < 0:
            found.append((padded[start:], False))
            break
        found.append((padded[start:end], True))
        at = padded.find(needle, end)
    return found


def lease_ids_in_environ(data: bytes) -> set[bytes]:
    """Every value of ``LEASE_ENV_KEY`` in a raw ``/proc/PID/environ`` block (an
    environment may repeat a name: any of its complete ``KEY=value\\0`` entries counts)."""
    if _LEASE_ENV_B not in data:
        return set()
    return {value for value, complete in environ_entries(data, _LEASE_ENV_B) if complete}


def gateway_in_environ(environ: bytes, value: bytes) -> bool | None:
    """Whether ``environ`` has a complete ``GATEWAY_ENV_KEY=value`` entry; ``None`` when it
    has no entry of that variable at all (the command line may still carry the tag)."""
    if _GATEWAY_ENV_B not in environ:
        return None
    entries = environ_entries(environ, _GATEWAY_ENV_B)
    if not entries:
        return None
    return any(found == value for found, complete in entries if complete)


def _tag_value(data: bytes, key: bytes) -> str | None:
    entries = environ_entries(data, key)  # a repeated variable: the last entry counts
    return _clean(entries[-1][0].decode("utf-8", "replace")) if entries else None


def tags_from_environ(data: bytes) -> tuple[str | None, str | None, str | None]:
    """``(lease, gateway, owner)`` tag values (of each variable its last entry, the
    unterminated tail included); every other variable is skipped unread."""
    return (_tag_value(data, _LEASE_ENV_B), _tag_value(data, _GATEWAY_ENV_B),
            _tag_value(data, _OWNER_ENV_B))


def tags_from_mapping(env: Mapping[str, str]) -> tuple[str | None, str | None, str | None]:
    """``(lease, gateway, owner)`` tag values of an environment read as a mapping (where
    ``/proc`` is not there to read the block)."""
    return (_clean(env.get(LEASE_ENV_KEY)), _clean(env.get(GATEWAY_ENV_KEY)),
            _clean(env.get(OWNER_ENV_KEY)))
