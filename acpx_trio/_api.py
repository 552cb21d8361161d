"""The embedder tier, ``acpx_trio``: the one list of its names.

What a Trio application embedding acpx-trio uses: the service, the runtime and its protocol,
handles, events, errors and config.  Building blocks (lease store, reaper, identity) live in
:mod:`acpx_trio.lowlevel`; the few of them DESIGN.md names at the top level are re-exported
here from there.  Every line is ``from ... import Name as Name``; nothing else here is
public, so this list is the tier (``acpx_trio/__init__.py`` serves it lazily, static tools
read it through a star import).  ``tests/test_exports.py`` pins that.
"""

from acpx_trio._errors import AcpConnectionClosedError as AcpConnectionClosedError
from acpx_trio._errors import AcpProtocolError as AcpProtocolError
from acpx_trio._errors import AcpRuntimeError as AcpRuntimeError
from acpx_trio._errors import AcpxError as AcpxError
from acpx_trio._errors import AcpxUsageError as AcpxUsageError
from acpx_trio._errors import AgentProcessError as AgentProcessError
from acpx_trio._errors import ConfigError as ConfigError
from acpx_trio._errors import ContainmentError as ContainmentError
from acpx_trio._errors import GatewayInstanceIdError as GatewayInstanceIdError
from acpx_trio._errors import LeaseStateError as LeaseStateError
from acpx_trio._errors import LeaseStoreError as LeaseStoreError
from acpx_trio._errors import LeaseValueError as LeaseValueError
from acpx_trio._errors import SessionStoreError as SessionStoreError
from acpx_trio._errors import StateFileError as StateFileError
from acpx_trio._events import AcpRuntimeCapabilities as AcpRuntimeCapabilities
from acpx_trio._events import AcpRuntimeEvent as AcpRuntimeEvent
from acpx_trio._events import AcpRuntimeHandle as AcpRuntimeHandle
from acpx_trio._events import AcpRuntimeStatus as AcpRuntimeStatus
from acpx_trio._events import AgentSession as AgentSession
from acpx_trio._events import AgentUsage as AgentUsage
from acpx_trio._events import CommandInfo as CommandInfo
from acpx_trio._events import ConfigOptionInfo as ConfigOptionInfo
from acpx_trio._events import DoctorReport as DoctorReport
from acpx_trio._events import DoneEvent as DoneEvent
from acpx_trio._events import ElicitationAnswer as ElicitationAnswer
from acpx_trio._events import ElicitationRequest as ElicitationRequest
from acpx_trio._events import ErrorEvent as ErrorEvent
from acpx_trio._events import PlanItem as PlanItem
from acpx_trio._events import SessionInfo as SessionInfo
from acpx_trio._events import StatusEvent as StatusEvent
from acpx_trio._events import TextDeltaEvent as TextDeltaEvent
from acpx_trio._events import TokenUsage as TokenUsage
from acpx_trio._events import ToolCallEvent as ToolCallEvent
from acpx_trio._events import UsageInfo as UsageInfo
from acpx_trio._log import ServiceLogger as ServiceLogger
from acpx_trio._process.cgroup import Containment as Containment
from acpx_trio._public import publish as _publish
from acpx_trio._runtime.open_runtime import open_acpx_runtime as open_acpx_runtime
from acpx_trio._runtime.runtime import AcpxRuntime as AcpxRuntime
from acpx_trio._service.backends import AcpRuntimeBackend as AcpRuntimeBackend
from acpx_trio._service.backends import AcpRuntimeProtocol as AcpRuntimeProtocol
from acpx_trio._service.backends import AcpxRuntimeProtocol as AcpxRuntimeProtocol
from acpx_trio._service.backends import BackendRegistry as BackendRegistry
from acpx_trio._service.backends import default_registry as default_registry
from acpx_trio._service.context import ServiceAlreadyStartedError as ServiceAlreadyStartedError
from acpx_trio._service.context import ServiceStoppedError as ServiceStoppedError
from acpx_trio._service.health import ServiceHealth as ServiceHealth
from acpx_trio._service.health import ServiceHealthState as ServiceHealthState
from acpx_trio._service.lazy_runtime import LazyAcpxRuntime as LazyAcpxRuntime
from acpx_trio._service.lazy_runtime import RuntimeFactoryParams as RuntimeFactoryParams
from acpx_trio._service.open_service import open_runtime_service as open_runtime_service
from acpx_trio._service.service import AcpxRuntimeService as AcpxRuntimeService
from acpx_trio._service.service import ServiceContext as ServiceContext
from acpx_trio._store.config import AcpxConfig as AcpxConfig
from acpx_trio._store.config import McpServerConfig as McpServerConfig
from acpx_trio._store.config import PluginConfig as PluginConfig
from acpx_trio._store.config import resolve_config as resolve_config
from acpx_trio._store.config_files import load_config_file as load_config_file
from acpx_trio._store.instance import resolve_gateway_instance_id as resolve_gateway_instance_id
from acpx_trio.lowlevel import LeaseState as LeaseState
from acpx_trio.lowlevel import LeaseStore as LeaseStore
from acpx_trio.lowlevel import ProcessCleanupDeps as ProcessCleanupDeps
from acpx_trio.lowlevel import ProcessLease as ProcessLease
from acpx_trio.lowlevel import cleanup_owned_process_tree as cleanup_owned_process_tree
from acpx_trio.lowlevel import hash_command as hash_command
from acpx_trio.lowlevel import new_lease_id as new_lease_id
from acpx_trio.lowlevel import reap_open_leases as reap_open_leases
from acpx_trio.lowlevel import reap_stale_orphans as reap_stale_orphans

_NAMES = _publish("acpx_trio", globals())
