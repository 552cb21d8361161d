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
    from acpx_trio._errors import (
        AcpConnectionClosedError as AcpConnectionClosedError,
    )
    from acpx_trio._errors import (
        AcpProtocolError as AcpProtocolError,
    )
    from acpx_trio._errors import (
        AcpRuntimeError as AcpRuntimeError,
    )
    from acpx_trio._errors import (
        AcpxError as AcpxError,
    )
    from acpx_trio._errors import (
        AgentProcessError as AgentProcessError,
    )
    from acpx_trio._errors import (
        ConfigError as ConfigError,
    )
    from acpx_trio._errors import (
        ContainmentError as ContainmentError,
    )
    from acpx_trio._errors import (
        GatewayInstanceIdError as GatewayInstanceIdError,
    )
    from acpx_trio._errors import (
        LeaseStateError as LeaseStateError,
    )
    from acpx_trio._errors import (
        LeaseStoreError as LeaseStoreError,
    )
    from acpx_trio._errors import (
        LeaseValueError as LeaseValueError,
    )
    from acpx_trio._errors import (
        SessionStoreError as SessionStoreError,
    )
    from acpx_trio._errors import (
        StateFileError as StateFileError,
    )
    from acpx_trio._events import (
        AcpRuntimeCapabilities as AcpRuntimeCapabilities,
    )
    from acpx_trio._events import (
        AcpRuntimeEvent as AcpRuntimeEvent,
    )
    from acpx_trio._events import (
        AcpRuntimeHandle as AcpRuntimeHandle,
    )
    from acpx_trio._events import (
        AcpRuntimeStatus as AcpRuntimeStatus,
    )

    # protocol (issue 21): typed data carried on StatusEvent / DoneEvent
    from acpx_trio._events import (
        AgentSession as AgentSession,
    )
    from acpx_trio._events import (
        AgentUsage as AgentUsage,
    )
    from acpx_trio._events import (
        CommandInfo as CommandInfo,
    )
    from acpx_trio._events import (
        ConfigOptionInfo as ConfigOptionInfo,
    )
    from acpx_trio._events import (
        DoctorReport as DoctorReport,
    )
    from acpx_trio._events import (
        DoneEvent as DoneEvent,
    )
    from acpx_trio._events import (
        ErrorEvent as ErrorEvent,
    )
    from acpx_trio._events import (
        PlanItem as PlanItem,
    )
    from acpx_trio._events import (
        SessionInfo as SessionInfo,
    )
    from acpx_trio._events import (
        StatusEvent as StatusEvent,
    )
    from acpx_trio._events import (
        TextDeltaEvent as TextDeltaEvent,
    )
    from acpx_trio._events import (
        TokenUsage as TokenUsage,
    )
    from acpx_trio._events import (
        ToolCallEvent as ToolCallEvent,
    )
    from acpx_trio._events import (
        UsageInfo as UsageInfo,
    )
    from acpx_trio._log import (
        ServiceLogger as ServiceLogger,
    )
    from acpx_trio._process.cgroup import (
        Containment as Containment,
    )
    from acpx_trio._process.identity import (
        GATEWAY_ENV_KEY as GATEWAY_ENV_KEY,
    )
    from acpx_trio._process.identity import (
        LEASE_ENV_KEY as LEASE_ENV_KEY,
    )
    from acpx_trio._process.identity import (
        OWNER_ENV_KEY as OWNER_ENV_KEY,
    )
    from acpx_trio._process.identity import (
        ProcessInfo as ProcessInfo,
    )
    from acpx_trio._process.identity import (
        lease_env as lease_env,
    )
    from acpx_trio._process.identity import (
        snapshot_processes as snapshot_processes,
    )
    from acpx_trio._process.reaper import (
        CleanupResult as CleanupResult,
    )
    from acpx_trio._process.reaper import (
        ProcessCleanupDeps as ProcessCleanupDeps,
    )
    from acpx_trio._process.reaper import (
        ReapResult as ReapResult,
    )
    from acpx_trio._process.reaper import (
        cleanup_owned_process_tree as cleanup_owned_process_tree,
    )
    from acpx_trio._process.reaper import (
        default_cleanup_deps as default_cleanup_deps,
    )
    from acpx_trio._process.reaper import (
        reap_open_leases as reap_open_leases,
    )
    from acpx_trio._process.reaper import (
        reap_stale_orphans as reap_stale_orphans,
    )
    from acpx_trio._process.reaper import (
        terminate_trees as terminate_trees,
    )
    from acpx_trio._runtime.agents import (
        AgentRegistry as AgentRegistry,
    )
    from acpx_trio._runtime.agents import (
        AgentSpec as AgentSpec,
    )
    from acpx_trio._runtime.open_runtime import (
        open_acpx_runtime as open_acpx_runtime,
    )
    from acpx_trio._runtime.permissions import (
        PermissionPolicy as PermissionPolicy,
    )
    from acpx_trio._runtime.permissions import (
        PermissionStats as PermissionStats,
    )
    from acpx_trio._runtime.runtime import (
        AcpxRuntime as AcpxRuntime,
    )
    from acpx_trio._service.backends import (
        AcpRuntime as AcpRuntime,
    )
    from acpx_trio._service.backends import (
        AcpRuntimeBackend as AcpRuntimeBackend,
    )
    from acpx_trio._service.backends import (
        BackendRegistry as BackendRegistry,
    )
    from acpx_trio._service.backends import (
        default_registry as default_registry,
    )
    from acpx_trio._service.health import (
        ServiceHealth as ServiceHealth,
    )
    from acpx_trio._service.health import (
        ServiceHealthState as ServiceHealthState,
    )
    from acpx_trio._service.lazy_runtime import (
        LazyAcpxRuntime as LazyAcpxRuntime,
    )
    from acpx_trio._service.lazy_runtime import (
        RuntimeFactoryParams as RuntimeFactoryParams,
    )
    from acpx_trio._service.open_service import (
        open_runtime_service as open_runtime_service,
    )
    from acpx_trio._service.service import (
        AcpxRuntimeService as AcpxRuntimeService,
    )
    from acpx_trio._service.service import (
        ServiceAlreadyStartedError as ServiceAlreadyStartedError,
    )
    from acpx_trio._service.service import (
        ServiceContext as ServiceContext,
    )
    from acpx_trio._service.service import (
        ServiceStoppedError as ServiceStoppedError,
    )
    from acpx_trio._store.config import (
        AcpxConfig as AcpxConfig,
    )
    from acpx_trio._store.config import (
        McpServerConfig as McpServerConfig,
    )
    from acpx_trio._store.config import (
        PluginConfig as PluginConfig,
    )
    from acpx_trio._store.config import (
        load_config_file as load_config_file,
    )
    from acpx_trio._store.config import (
        resolve_config as resolve_config,
    )
    from acpx_trio._store.instance import (
        resolve_gateway_instance_id as resolve_gateway_instance_id,
    )
    from acpx_trio._store.instance import (
        resolve_gateway_instance_id_sync as resolve_gateway_instance_id_sync,
    )
    from acpx_trio._store.leases import (
        LeaseState as LeaseState,
    )
    from acpx_trio._store.leases import (
        LeaseStore as LeaseStore,
    )
    from acpx_trio._store.leases import (
        ProcessLease as ProcessLease,
    )
    from acpx_trio._store.leases import (
        SyncLeaseStore as SyncLeaseStore,
    )
    from acpx_trio._store.leases import (
        hash_command as hash_command,
    )
    from acpx_trio._store.leases import (
        new_lease as new_lease,
    )
    from acpx_trio._store.leases import (
        new_lease_id as new_lease_id,
    )
    from acpx_trio._store.sessions import (
        SessionRecord as SessionRecord,
    )
    from acpx_trio._store.sessions import (
        SessionStore as SessionStore,
    )

#: public name -> private module that defines it
_EXPORTS: dict[str, str] = {
    "AcpRuntime": "._service.backends",
    "AcpRuntimeBackend": "._service.backends",
    "BackendRegistry": "._service.backends",
    "default_registry": "._service.backends",
    "AcpxConfig": "._store.config",
    "McpServerConfig": "._store.config",
    "PluginConfig": "._store.config",
    "load_config_file": "._store.config",
    "resolve_config": "._store.config",
    "AcpConnectionClosedError": "._errors",
    "AcpProtocolError": "._errors",
    "AcpRuntimeError": "._errors",
    "AcpxError": "._errors",
    "AgentProcessError": "._errors",
    "ConfigError": "._errors",
    "GatewayInstanceIdError": "._errors",
    "ContainmentError": "._errors",
    "AgentUsage": "._events",
    "Containment": "._process.cgroup",
    "LeaseStateError": "._errors",
    "LeaseStoreError": "._errors",
    "LeaseValueError": "._errors",
    "SessionStoreError": "._errors",
    "StateFileError": "._errors",
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
    "resolve_gateway_instance_id": "._store.instance",
    "resolve_gateway_instance_id_sync": "._store.instance",
    "LeaseState": "._store.leases",
    "LeaseStore": "._store.leases",
    "ProcessLease": "._store.leases",
    "SyncLeaseStore": "._store.leases",
    "hash_command": "._store.leases",
    "new_lease": "._store.leases",
    "new_lease_id": "._store.leases",
    "GATEWAY_ENV_KEY": "._process.identity",
    "LEASE_ENV_KEY": "._process.identity",
    "OWNER_ENV_KEY": "._process.identity",
    "ProcessInfo": "._process.identity",
    "lease_env": "._process.identity",
    "snapshot_processes": "._process.identity",
    "CleanupResult": "._process.reaper",
    "ProcessCleanupDeps": "._process.reaper",
    "ReapResult": "._process.reaper",
    "cleanup_owned_process_tree": "._process.reaper",
    "default_cleanup_deps": "._process.reaper",
    "reap_open_leases": "._process.reaper",
    "reap_stale_orphans": "._process.reaper",
    "terminate_trees": "._process.reaper",
    "AgentRegistry": "._runtime.agents",
    "AgentSpec": "._runtime.agents",
    "SessionRecord": "._store.sessions",
    "SessionStore": "._store.sessions",
    "PermissionPolicy": "._runtime.permissions",
    "PermissionStats": "._runtime.permissions",
    "AcpxRuntime": "._runtime.runtime",
    "open_acpx_runtime": "._runtime.open_runtime",
    "LazyAcpxRuntime": "._service.lazy_runtime",
    "RuntimeFactoryParams": "._service.lazy_runtime",
    "ServiceHealth": "._service.health",
    "ServiceHealthState": "._service.health",
    "AcpxRuntimeService": "._service.service",
    "ServiceAlreadyStartedError": "._service.service",
    "ServiceContext": "._service.service",
    "ServiceStoppedError": "._service.service",
    "open_runtime_service": "._service.open_service",
    "ServiceLogger": "._log",
    # protocol (issue 21): typed data carried on StatusEvent / DoneEvent
    "AgentSession": "._events",
    "CommandInfo": "._events",
    "ConfigOptionInfo": "._events",
    "PlanItem": "._events",
    "SessionInfo": "._events",
    "TokenUsage": "._events",
    "UsageInfo": "._events",
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
