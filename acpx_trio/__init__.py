"""acpx-trio: a Trio-native runtime for ACP coding agents that never leaks an agent process.

Everything public is importable from here; submodules starting with ``_`` are private.
"""

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
from ._instance import (
    resolve_gateway_instance_id as resolve_gateway_instance_id,
)
from ._instance import (
    resolve_gateway_instance_id_sync as resolve_gateway_instance_id_sync,
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

__version__ = "0.1.0"

__all__ = [
    "AcpConnectionClosedError",
    "AcpProtocolError",
    "AcpRuntime",
    "AcpRuntimeBackend",
    "AcpRuntimeCapabilities",
    "AcpRuntimeError",
    "AcpRuntimeEvent",
    "AcpRuntimeHandle",
    "AcpRuntimeStatus",
    "AcpxConfig",
    "AcpxError",
    "AgentProcessError",
    "BackendRegistry",
    "ConfigError",
    "DoctorReport",
    "DoneEvent",
    "ErrorEvent",
    "GatewayInstanceIdError",
    "LeaseState",
    "LeaseStateError",
    "LeaseStore",
    "LeaseStoreError",
    "McpServerConfig",
    "ProcessLease",
    "StatusEvent",
    "SyncLeaseStore",
    "TextDeltaEvent",
    "ToolCallEvent",
    "default_registry",
    "hash_command",
    "load_config_file",
    "new_lease",
    "new_lease_id",
    "resolve_config",
    "resolve_gateway_instance_id",
    "resolve_gateway_instance_id_sync",
]
