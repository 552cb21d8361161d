"""What starting an agent session needs, in one object the runtime owns and hands down.

:mod:`acpx_trio._runtime.handshake` builds agent processes and live sessions from a
:class:`SessionFactory`; it never sees the runtime (no import cycle, no reaching into the
runtime's attributes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import trio

from acpx_trio._errors import AcpRuntimeError
from acpx_trio._log import Logger
from acpx_trio._process.reaper import ProcessCleanupDeps
from acpx_trio._process.spare_leaf import SpareLeaves
from acpx_trio._runtime.agents import AgentRegistry
from acpx_trio._runtime.live_session import ElicitationHandler, LiveSession
from acpx_trio._store.config import AcpxConfig
from acpx_trio._store.leases import LeaseStore

__all__ = ["SessionFactory", "TurnFailureHook"]

#: Called when a permission policy ``fail`` ends a running turn (the runtime cancels it).
TurnFailureHook = Callable[[LiveSession, AcpRuntimeError], None]


@dataclass(frozen=True, kw_only=True)
class SessionFactory:
    """Everything needed to spawn an owned agent and open its ACP session.

    ``nursery`` is where agent processes run (the runtime's, i.e. the service's nursery);
    ``on_turn_failure`` is wired into every :class:`LiveSession` it creates."""

    config: AcpxConfig
    gateway_instance_id: str
    lease_store: LeaseStore
    nursery: trio.Nursery
    agents: AgentRegistry
    log: Logger
    process_cleanup: ProcessCleanupDeps | None
    on_turn_failure: TurnFailureHook
    #: launches already inside their leaf cgroup (``None``: always spawn directly)
    spare_leaves: SpareLeaves | None = None
    #: the host's ``elicitation/create`` answerer now (``None``: the non-interactive policy)
    elicitation_handler: Callable[[], ElicitationHandler | None] = lambda: None
    #: raises ``ACP_BACKEND_UNAVAILABLE`` once the runtime is shut down (its nursery then
    #: takes no new agent)
    check_open: Callable[[], None] = lambda: None
