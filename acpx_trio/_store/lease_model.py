"""The lease record and its state machine (see :mod:`acpx_trio._store.leases`)."""

from __future__ import annotations

import enum
import hashlib
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import msgspec

from acpx_trio._errors import AcpxUsageError, LeaseStateError, LeaseValueError

__all__ = ["LeaseState", "ProcessLease", "check_transition", "hash_command", "lease_state",
           "new_lease", "new_lease_id"]


class LeaseState(enum.StrEnum):
    """Lifecycle of a lease.  Every API also accepts the plain strings."""

    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    LOST = "lost"

    @property
    def is_final(self) -> bool:
        return self in (LeaseState.CLOSED, LeaseState.LOST)


def lease_state(value: object, argument: str = "state") -> LeaseState:
    """``value`` (a :class:`LeaseState` or its text) as a :class:`LeaseState`; anything else
    raises :class:`~acpx_trio.AcpxUsageError` naming ``argument``."""
    if isinstance(value, LeaseState):
        return value
    if isinstance(value, str) and value in LeaseState.__members__.values():
        return LeaseState(value)
    raise AcpxUsageError(argument, value, "must be one of " + ", ".join(LeaseState))


def lease_id_arg(value: object, argument: str = "lease_id") -> str:
    """``value`` if it is a non-empty string (a lease or gateway id), else
    :class:`~acpx_trio.AcpxUsageError` naming ``argument``."""
    if not isinstance(value, str) or not value.strip():
        raise AcpxUsageError(argument, value, "must be a non-empty string")
    return value


_ALLOWED: frozenset[tuple[LeaseState, LeaseState]] = frozenset(
    {
        (LeaseState.OPEN, LeaseState.CLOSING),
        (LeaseState.OPEN, LeaseState.CLOSED),
        (LeaseState.CLOSING, LeaseState.CLOSED),
        (LeaseState.CLOSING, LeaseState.LOST),
    }
)


def check_transition(lease_id: str, current: LeaseState | str, requested: LeaseState | str) -> None:
    """Raise :class:`LeaseStateError` unless ``current -> requested`` is allowed.

    Staying in the same state is always allowed (idempotent)."""
    cur, req = lease_state(current, "current"), lease_state(requested)
    if cur is req or (cur, req) in _ALLOWED:
        return
    raise LeaseStateError(lease_id, cur.value, req.value)


def _pid_or_none(value: object) -> bool:
    return value is None or (type(value) is int and value >= 0)


class ProcessLease(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True, frozen=True):
    """One agent launch.  Encoded camelCase (``leaseId``, ``rootPid``, ...) as the seed does.

    The seed's fields are required (a file without them is not a lease file); the fields we
    add are optional and omitted when unset, so the TypeScript gateway reads our file as-is.

    ``root_pid == 0`` means *pending*: written before spawn, no pid recorded yet.
    ``root_create_time`` (psutil create time) and ``root_start_ticks``/``boot_id`` (Linux
    ``/proc/PID/stat`` field 22 and ``/proc/sys/kernel/random/boot_id``) guard against pid
    reuse.  ``owner_pid``/``owner_start_time`` identify the gateway process that holds the lease,
    so start-up reaping can leave the leases of a live owner alone."""

    lease_id: str
    gateway_instance_id: str
    session_key: str
    wrapper_root: str
    wrapper_path: str
    root_pid: int
    process_group_id: int | None = None
    command_hash: str
    started_at: int
    state: LeaseState
    root_create_time: float | None = None
    root_start_ticks: int | None = None
    boot_id: str | None = None
    owner_pid: int | None = None
    owner_start_time: float | None = None
    #: the launch's leaf cgroup (cgroup containment); omitted when unused
    cgroup: str | None = None

    def __post_init__(self) -> None:
        """A lease a reader would drop is refused here, at construction (typed, naming the
        field); a ``state`` given as text becomes a :class:`LeaseState`."""
        # The shape of every valid lease, checked in one expression (this runs for each entry
        # of a decoded lease file); anything else gets the field-by-field check below.
        if (
            type(self.state) is LeaseState
            and type(self.lease_id) is str and self.lease_id != ""
            and type(self.gateway_instance_id) is str and self.gateway_instance_id != ""
            and type(self.root_pid) is int and self.root_pid >= 0
            and type(self.started_at) is int and self.started_at >= 0
            and type(self.session_key) is str and type(self.wrapper_root) is str
            and type(self.wrapper_path) is str and type(self.command_hash) is str
            and _pid_or_none(self.process_group_id) and _pid_or_none(self.root_start_ticks)
            and _pid_or_none(self.owner_pid)
        ):
            return
        self._check_fields()

    def _check_fields(self) -> None:
        if not isinstance(self.state, LeaseState):
            try:
                msgspec.structs.force_setattr(self, "state", LeaseState(self.state))
            except ValueError:
                raise LeaseValueError("state", self.state, "one of " + ", ".join(
                    x.value for x in LeaseState)) from None
        for name in ("lease_id", "gateway_instance_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise LeaseValueError(name, value, "a non-empty string")
        for name in ("session_key", "wrapper_root", "wrapper_path", "command_hash"):
            if not isinstance(getattr(self, name), str):
                raise LeaseValueError(name, getattr(self, name), "a string")
        for name in ("root_pid", "started_at"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise LeaseValueError(name, value, "an integer >= 0")
        for name in ("process_group_id", "root_start_ticks", "owner_pid"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 0):
                raise LeaseValueError(name, value, "an integer >= 0 or None")

    def with_state(self, state: LeaseState | str) -> ProcessLease:
        """Return a copy in ``state`` after checking that the move is legal."""
        check_transition(self.lease_id, self.state, state)
        return msgspec.structs.replace(self, state=LeaseState(state))


def new_lease_id() -> str:
    """A fresh random lease id (UUID4 text)."""
    return str(uuid.uuid4())


def hash_command(command: str | Iterable[str]) -> str:
    """sha256 hex of the agent command (argv parts joined by single spaces).  A command that
    is not text or a list of text (a lone surrogate, which UTF-8 cannot carry, included)
    raises :class:`~acpx_trio.AcpxUsageError`."""
    try:
        text = command if isinstance(command, str) else " ".join(command)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()
    except (TypeError, UnicodeEncodeError):
        raise AcpxUsageError("command", command, "must be a string or a list of strings "
                             "(UTF-8 text)") from None


def _now_ms() -> int:
    return int(time.time() * 1000)


def new_lease(
    *,
    gateway_instance_id: str,
    session_key: str,
    wrapper_root: str | Path,
    command: str | Iterable[str],
    owner_pid: int | None = None,
    owner_start_time: float | None = None,
    wrapper_path: str = "",
) -> ProcessLease:
    """A pending (``root_pid == 0``) lease for a launch about to happen."""
    return ProcessLease(
        lease_id=new_lease_id(),
        gateway_instance_id=gateway_instance_id,
        session_key=session_key,
        wrapper_root=str(wrapper_root),
        wrapper_path=wrapper_path,
        root_pid=0,
        command_hash=hash_command(command),
        started_at=_now_ms(),
        state=LeaseState.OPEN,
        owner_pid=owner_pid,
        owner_start_time=owner_start_time,
    )
