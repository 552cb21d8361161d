"""acpx-trio: a Trio-native runtime for ACP coding agents that never leaks an agent process.

Everything public is importable from here; modules starting with ``_`` are private.  Names are
loaded on first use, so ``python -m acpx_trio.testing.mock_agent`` (the bundled agent) starts
without importing Trio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ._agents import (
        AgentRegistry as AgentRegistry,
    )
    from ._agents import (
        AgentSpec as AgentSpec,
    )
    from ._backends import (
        AcpRuntime as AcpRuntime,
    )
    from ._backends import (
        AcpRuntimeBackend as AcpRuntimeBackend,
    )
    from ._backends import (
        BackendRegistry as BackendRegistry,
    )
    from ._backends import (
        default_registry as default_registry,
    )
    from ._config import (
        AcpxConfig as AcpxConfig,
    )
    from ._config import (
        McpServerConfig as McpServerConfig,
    )
    from ._config import (
        load_config_file as load_config_file,
    )
    from ._config import (
        resolve_config as resolve_config,
    )
    from ._errors import (
        AcpConnectionClosedError as AcpConnectionClosedError,
    )
    from ._errors import (
        AcpProtocolError as AcpProtocolError,
    )
    from ._errors import (
        AcpRuntimeError as AcpRuntimeError,
    )
    from ._errors import (
        AcpxError as AcpxError,
    )
    from ._errors import (
        AgentProcessError as AgentProcessError,
    )
    from ._errors import (
        ConfigError as ConfigError,
    )
    from ._errors import (
        GatewayInstanceIdError as GatewayInstanceIdError,
    )
    from ._errors import (
        LeaseStateError as LeaseStateError,
    )
    from ._errors import (
        LeaseStoreError as LeaseStoreError,
    )
    from ._events import (
        AcpRuntimeCapabilities as AcpRuntimeCapabilities,
    )
    from ._events import (
        AcpRuntimeEvent as AcpRuntimeEvent,
    )
    from ._events import (
        AcpRuntimeHandle as AcpRuntimeHandle,
    )
    from ._events import (
        AcpRuntimeStatus as AcpRuntimeStatus,
    )
    from ._events import (
        DoctorReport as DoctorReport,
    )
    from ._events import (
        DoneEvent as DoneEvent,
    )
    from ._events import (
        ErrorEvent as ErrorEvent,
    )
    from ._events import (
        StatusEvent as StatusEvent,
    )
    from ._events import (
        TextDeltaEvent as TextDeltaEvent,
    )
    from ._events import (
        ToolCallEvent as ToolCallEvent,
    )
    from ._health import (
        ServiceHealth as ServiceHealth,
    )
    from ._health import (
        ServiceHealthState as ServiceHealthState,
    )
    from ._identity import (
        GATEWAY_ENV_KEY as GATEWAY_ENV_KEY,
    )
    from ._identity import (
        LEASE_ENV_KEY as LEASE_ENV_KEY,
    )
    from ._identity import (
        ProcessInfo as ProcessInfo,
    )
    from ._identity import (
        lease_env as lease_env,
    )
    from ._identity import (
        snapshot_processes as snapshot_processes,
    )
    from ._instance import (
        resolve_gateway_instance_id as resolve_gateway_instance_id,
    )
    from ._instance import (
        resolve_gateway_instance_id_sync as resolve_gateway_instance_id_sync,
    )
    from ._lazy_runtime import (
        RuntimeFactoryParams as RuntimeFactoryParams,
    )
    from ._leases import (
        LeaseState as LeaseState,
    )
    from ._leases import (
        LeaseStore as LeaseStore,
    )
    from ._leases import (
        ProcessLease as ProcessLease,
    )
    from ._leases import (
        SyncLeaseStore as SyncLeaseStore,
    )
    from ._leases import (
        hash_command as hash_command,
    )
    from ._leases import (
        new_lease as new_lease,
    )
    from ._leases import (
        new_lease_id as new_lease_id,
    )
    from ._permissions import (
        PermissionPolicy as PermissionPolicy,
    )
    from ._permissions import (
        PermissionStats as PermissionStats,
    )
    from ._reaper import (
        CleanupResult as CleanupResult,
    )
    from ._reaper import (
        ProcessCleanupDeps as ProcessCleanupDeps,
    )
    from ._reaper import (
        ReapResult as ReapResult,
    )
    from ._reaper import (
        cleanup_owned_process_tree as cleanup_owned_process_tree,
    )
    from ._reaper import (
        default_cleanup_deps as default_cleanup_deps,
    )
    from ._reaper import (
        reap_open_leases as reap_open_leases,
    )
    from ._reaper import (
        reap_stale_orphans as reap_stale_orphans,
    )
    from ._reaper import (
        terminate_trees as terminate_trees,
    )
    from ._runtime import (
        AcpxRuntime as AcpxRuntime,
    )
    from ._runtime import (
        open_acpx_runtime as open_acpx_runtime,
    )
    from ._service import (
        AcpxRuntimeService as AcpxRuntimeService,
    )
    from ._service import (
        ServiceAlreadyStartedError as ServiceAlreadyStartedError,
    )
    from ._service import (
        ServiceContext as ServiceContext,
    )
    from ._service import (
        ServiceStoppedError as ServiceStoppedError,
    )
    from ._service import (
        open_runtime_service as open_runtime_service,
    )
    from ._sessions import (
        SessionRecord as SessionRecord,
    )
    from ._sessions import (
        SessionStore as SessionStore,
    )

#: public name -> private module that defines it
_EXPORTS: dict[str, str] = {
    "AcpRuntime": "._backends",
    "AcpRuntimeBackend": "._backends",
    "BackendRegistry": "._backends",
    "default_registry": "._backends",
    "AcpxConfig": "._config",
    "McpServerConfig": "._config",
    "load_config_file": "._config",
    "resolve_config": "._config",
    "AcpConnectionClosedError": "._errors",
    "AcpProtocolError": "._errors",
    "AcpRuntimeError": "._errors",
    "AcpxError": "._errors",
    "AgentProcessError": "._errors",
    "ConfigError": "._errors",
    "GatewayInstanceIdError": "._errors",
    "LeaseStateError": "._errors",
    "LeaseStoreError": "._errors",
    "AcpRuntimeCapabilities": "._events",
    "AcpRuntimeEvent": "._events",
    "AcpRuntimeHandle": "._events",
    "AcpRuntimeStatus": "._events",
    "DoctorReport": "._events",
    "DoneEvent": "._events",
    "ErrorEvent": "._events",
    "StatusEvent": "._events",
    "TextDeltaEvent": "._events",
    "ToolCallEvent": "._events",
    "resolve_gateway_instance_id": "._instance",
    "resolve_gateway_instance_id_sync": "._instance",
    "LeaseState": "._leases",
    "LeaseStore": "._leases",
    "ProcessLease": "._leases",
    "SyncLeaseStore": "._leases",
    "hash_command": "._leases",
    "new_lease": "._leases",
    "new_lease_id": "._leases",
    "GATEWAY_ENV_KEY": "._identity",
    "LEASE_ENV_KEY": "._identity",
    "ProcessInfo": "._identity",
    "lease_env": "._identity",
    "snapshot_processes": "._identity",
    "CleanupResult": "._reaper",
    "ProcessCleanupDeps": "._reaper",
    "ReapResult": "._reaper",
    "cleanup_owned_process_tree": "._reaper",
    "default_cleanup_deps": "._reaper",
    "reap_open_leases": "._reaper",
    "reap_stale_orphans": "._reaper",
    "terminate_trees": "._reaper",
    "AgentRegistry": "._agents",
    "AgentSpec": "._agents",
    "SessionRecord": "._sessions",
    "SessionStore": "._sessions",
    "PermissionPolicy": "._permissions",
    "PermissionStats": "._permissions",
    "AcpxRuntime": "._runtime",
    "open_acpx_runtime": "._runtime",
    "RuntimeFactoryParams": "._lazy_runtime",
    "ServiceHealth": "._health",
    "ServiceHealthState": "._health",
    "AcpxRuntimeService": "._service",
    "ServiceAlreadyStartedError": "._service",
    "ServiceContext": "._service",
    "ServiceStoppedError": "._service",
    "open_runtime_service": "._service",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
