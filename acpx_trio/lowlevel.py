"""Building blocks of acpx-trio, for tools that work below the service and the runtime.

Like ``trio.lowlevel``: the lease store, the reaper, process identity and tags, the session
store, the agent registry and the permission policy.  An embedder rarely needs them (the
service and :func:`acpx_trio.open_acpx_runtime` compose them); the contract is the same as the
top level's (typed :class:`~acpx_trio.AcpxError` subclasses, documented guarantees).  The
import lines below are this tier's only list of names.
"""

from acpx_trio._process.gateway_reap import GatewayReapReport as GatewayReapReport
from acpx_trio._process.gateway_reap import ReapAction as ReapAction
from acpx_trio._process.gateway_reap import reap_gateway as reap_gateway
from acpx_trio._process.identity import ProcessInfo as ProcessInfo
from acpx_trio._process.identity import snapshot_processes as snapshot_processes
from acpx_trio._process.reap_entry import ReapResult as ReapResult
from acpx_trio._process.reap_entry import cleanup_owned_process_tree as cleanup_owned_process_tree
from acpx_trio._process.reap_entry import reap_open_leases as reap_open_leases
from acpx_trio._process.reap_entry import reap_stale_orphans as reap_stale_orphans
from acpx_trio._process.reaper import CleanupResult as CleanupResult
from acpx_trio._process.reaper import ProcessCleanupDeps as ProcessCleanupDeps
from acpx_trio._process.reaper import default_cleanup_deps as default_cleanup_deps
from acpx_trio._process.reaper import terminate_trees as terminate_trees
from acpx_trio._process.tags import GATEWAY_ENV_KEY as GATEWAY_ENV_KEY
from acpx_trio._process.tags import LEASE_ENV_KEY as LEASE_ENV_KEY
from acpx_trio._process.tags import OWNER_ENV_KEY as OWNER_ENV_KEY
from acpx_trio._process.tags import lease_env as lease_env
from acpx_trio._public import publish as _publish
from acpx_trio._runtime.agents import AgentRegistry as AgentRegistry
from acpx_trio._runtime.agents import AgentSpec as AgentSpec
from acpx_trio._runtime.permissions import PermissionPolicy as PermissionPolicy
from acpx_trio._runtime.permissions import PermissionStats as PermissionStats
from acpx_trio._store.instance import (
    resolve_gateway_instance_id_sync as resolve_gateway_instance_id_sync,
)
from acpx_trio._store.lease_model import LeaseState as LeaseState
from acpx_trio._store.lease_model import ProcessLease as ProcessLease
from acpx_trio._store.lease_model import hash_command as hash_command
from acpx_trio._store.lease_model import new_lease as new_lease
from acpx_trio._store.lease_model import new_lease_id as new_lease_id
from acpx_trio._store.leases import LeaseStore as LeaseStore
from acpx_trio._store.leases import SyncLeaseStore as SyncLeaseStore
from acpx_trio._store.sessions import SessionRecord as SessionRecord
from acpx_trio._store.sessions import SessionStore as SessionStore

__all__ = list(_publish(__name__, globals()))
