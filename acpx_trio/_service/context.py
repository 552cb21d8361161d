"""What the host hands the service (:class:`ServiceContext`), the service's ids, env switches
and errors."""

from __future__ import annotations

import enum
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

from acpx_trio._errors import AcpxError
from acpx_trio._log import ServiceLogger
from acpx_trio._service.backends import AcpRuntimeProtocol
from acpx_trio._service.lazy_runtime import RuntimeFactoryParams
from acpx_trio._store.config import AcpxConfig

__all__ = [
    "BACKEND_ID",
    "SERVICE_ID",
    "SKIP_PROBE_ENV",
    "SKIP_RUNTIME_ENV",
    "STARTUP_PROBE_ENV",
    "WRAPPER_DIR_NAME",
    "Duty",
    "Phase",
    "Running",
    "RuntimeFactory",
    "ServiceAlreadyStartedError",
    "ServiceContext",
    "ServiceStoppedError",
    "startup_probe_enabled",
]

SERVICE_ID = "acpx-runtime"
BACKEND_ID = "acpx"
SKIP_RUNTIME_ENV = "OPENCLAW_SKIP_ACPX_RUNTIME"
STARTUP_PROBE_ENV = "OPENCLAW_ACPX_RUNTIME_STARTUP_PROBE"
SKIP_PROBE_ENV = "OPENCLAW_SKIP_ACPX_RUNTIME_PROBE"
WRAPPER_DIR_NAME = "acpx"

#: Builds the service's runtime; may return the runtime or an awaitable of it.
RuntimeFactory = Callable[
    [RuntimeFactoryParams], AcpRuntimeProtocol | Awaitable[AcpRuntimeProtocol]
]


class ServiceStoppedError(AcpxError):
    """The service is not running: :meth:`~AcpxRuntimeService.stop` ran while
    :meth:`~AcpxRuntimeService.start` was still starting (that start was aborted and left
    nothing registered or running), or a call needing a running service came while it was
    stopped (:meth:`~AcpxRuntimeService.require_runtime`)."""

    code = "ACPX_SERVICE_STOPPED"


class ServiceAlreadyStartedError(AcpxError):
    """:meth:`AcpxRuntimeService.start` was called while the service is started or starting."""

    code = "ACPX_SERVICE_ALREADY_STARTED"


@dataclass(frozen=True, slots=True)
class ServiceContext:
    """What the host gives the service.

    ``nursery`` is the host's root nursery: the service starts exactly one task there (with
    ``nursery.start``), which owns a nursery of its own where every task of the service and
    its runtime runs.  ``allowed_agents`` is the host's ACP allow-list; its first non-blank
    entry is the probe agent when the config names none."""

    workspace_dir: str | os.PathLike[str]
    state_dir: str | os.PathLike[str]
    logger: ServiceLogger
    nursery: trio.Nursery
    allowed_agents: Sequence[str] = ()


class Phase(enum.Enum):
    """Where a service is in its life (guarded by its lock)."""

    STOPPED = "stopped"
    STARTING = "starting"
    STARTED = "started"
    STOPPING = "stopping"


#: One periodic duty of the service: a pass that logs its own failures and raises nothing but
#: :class:`trio.Cancelled`.
Duty = Callable[[], Awaitable[object]]


@dataclass(slots=True, kw_only=True)
class Running:
    """What a started service holds."""

    ctx: ServiceContext
    config: AcpxConfig
    runtime: AcpRuntimeProtocol
    #: The service nursery (child of the host's): runtime tasks and the watchdog.
    nursery: trio.Nursery
    #: The service task's own nursery inside it: probe, orphan sweeps, passes of the periodic
    #: duties and ``AcpxRuntimeService._spawn_background`` tasks.
    background: trio.Nursery
    background_done: trio.Event
    run_done: trio.Event
    #: The periodic duties (dead-session sweep, watchdog check, second-net orphan sweep),
    #: run every sweep interval by the service task (``tasks.run_duties``).
    duties: list[Duty] = field(default_factory=list)
    #: The stop's last sweep, once the runtime closed (``tasks.sweep_left_behind``).
    last_sweep: Duty | None = None


def startup_probe_enabled() -> bool:
    return (
        os.environ.get(STARTUP_PROBE_ENV) == "1" and os.environ.get(SKIP_PROBE_ENV) != "1"
    )
