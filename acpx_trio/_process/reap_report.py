"""What a gateway reap reports (:class:`GatewayReapReport`, one :class:`ReapAction` per thing
it did or left alone, with the reason) and what its plugged-in steps are given
(:class:`ReapStepRequest`).  Data only; no process is read here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec

from acpx_trio._process.owner_tag import OwnerTag
from acpx_trio._store.lease_model import ProcessLease

__all__ = ["UNPROVEN", "GatewayReapReport", "ReapAction", "ReapFigures", "ReapStep",
           "ReapStepRequest", "owned_by"]

#: A lease left ``closing`` because the scans kept finding processes until the time budget
#: ran out (nothing proves its tree gone).
UNPROVEN = "unproven"


class ReapAction(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """One thing a reap did or would do, and why.  ``action``: ``terminated``,
    ``would-terminate``, ``survived``, ``skipped`` (a process left alone),
    ``lease-closed`` / ``lease-lost`` (final state written), ``would-close-lease`` /
    ``would-mark-lost`` (dry run), ``lease-left-alone``, ``lease-file-problem``, or an
    action of a plugged-in step."""

    action: str
    reason: str
    pid: int | None = None
    lease_id: str | None = None
    command: str | None = None


class ReapFigures(msgspec.Struct, frozen=True, kw_only=True):
    """What a reap of leases did: the pids inspected, terminated (confirmed gone) and
    surviving SIGKILL, the leases moved to ``closed`` / ``lost``, and those left alone with
    the reason (lease id -> ``"owner-alive"``, ``"protected"``, ``"survived"``, ...)."""

    inspected_pids: list[int] = []
    terminated_pids: list[int] = []
    survived_pids: list[int] = []
    closed_lease_ids: list[str] = []
    lost_lease_ids: list[str] = []
    left_alone: dict[str, str] = {}


class GatewayReapReport(ReapFigures, frozen=True, kw_only=True):
    """What :func:`reap_gateway` did (or, with ``dry_run``, would do).

    ``actions``: one entry per process or lease acted on or left alone, with its reason.
    The figures repeat them.  ``left_alone`` may also say ``"unproven"`` (with
    ``"survived"``: those stay ``closing`` and are retried next time).  ``unproven``: the
    scans were still finding processes when the time budget ran out."""

    gateway_instance_id: str
    dry_run: bool = False
    actions: list[ReapAction] = []
    unproven: bool = False

    @property
    def ok(self) -> bool:
        """Nothing survived (no process, no leaf cgroup) and nothing is left unproven."""
        return (not self.survived_pids and not self.unproven
                and not any(a.action == "survived" for a in self.actions))


class ReapStepRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What a plugged-in reap step is asked to do (see :data:`DEFAULT_STEPS`)."""

    gateway_instance_id: str
    lease_dir: str | None
    dry_run: bool
    owner: OwnerTag | None
    grace: float
    #: reads the lease file afresh: open/closing leases not being reaped here (live owners',
    #: and the caller's protected ones), whose leaf cgroups are in use
    live_lease_ids: Callable[[], Awaitable[frozenset[str]]] | None = None
    #: every lease record this reap read, by id (a leaf's lease says whose it is)
    known_leases: dict[str, ProcessLease] = {}


#: A step run after the lease reap and the orphan sweep; returns its actions.
ReapStep = Callable[[ReapStepRequest], Awaitable[list[ReapAction]]]


def owned_by(lease: ProcessLease, owner: OwnerTag | None) -> bool:
    """Whether ``lease`` is ``owner``'s (its pid and start time); any lease when ``owner`` is
    ``None``."""
    if owner is None:
        return True
    return (
        lease.owner_pid == owner.pid and lease.owner_start_time is not None
        and abs(lease.owner_start_time - owner.create_time) <= 0.5
    )
