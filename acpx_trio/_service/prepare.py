"""The blocking part of a service start (:func:`~acpx_trio._service.startup.prepare_sync`:
config, private dirs, gateway id, lease store, "is there anything to reap"), cached across
restarts of one service object.

:meth:`PrepareCache.prepare` returns the previous result while nothing it depends on changed:

* the key: the plugin config's content (not its identity: a dict mutated between restarts
  gets a new config), the workspace and state dirs, the allowed agents;
* both private directories: same inode, mode still 0700;
* the gateway id file: same fingerprint (device, inode, size, mtime, ctime);
* the lease file: same fingerprint, and the previous answer was "nothing to reap" (the lease
  store object is kept too, with its decoded file).

Every check is a ``stat``.  When only the lease file changed, the kept store re-reads it;
anything else runs ``prepare_sync`` again, exactly as a first start (same errors).
Blocking: call it in a worker thread; one start at a time (the service's lock).

:meth:`PrepareCache.recent` is the non-blocking shortcut for a start/stop loop: within
:data:`RECHECK_SECONDS` of the last check, when that check found nothing to reap, the same
key, and no lease was written through the kept store since (our own runtime's writes always
force a check), it returns the kept result without touching the disk.  A change made by
*another* process in that window (a lease of a dead owner, a deleted directory) is seen by
the first start after the window; dead owners' agents are meanwhile covered by their own
owner-death watchdog.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import trio

from acpx_trio._service.context import WRAPPER_DIR_NAME, ServiceContext
from acpx_trio._service.startup import Prepared, prepare_sync
from acpx_trio._store.fsio import DIR_MODE
from acpx_trio._store.instance import GATEWAY_ID_FILE_NAME
from acpx_trio._store.lease_snapshot import fingerprint

__all__ = ["RECHECK_SECONDS", "PrepareCache", "cache_key"]

#: How long a start may reuse the previous check without a ``stat`` (see the module docstring).
RECHECK_SECONDS = 0.25


def cache_key(
    plugin_config: Mapping[str, Any] | None, workspace_dir: object, state_dir: object,
    allowed_agents: Sequence[str],
) -> object:
    """What the resolved config depends on.  A config that does not encode as JSON gets a key
    equal to nothing (no caching)."""
    try:
        content = msgspec.json.encode(plugin_config)
    except (TypeError, ValueError, OverflowError):
        return object()
    return (content, str(workspace_dir), str(state_dir), tuple(allowed_agents))


def _dir_identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if (st.st_mode & 0o777) != DIR_MODE:
        return None
    return (st.st_dev, st.st_ino, st.st_mode)


class PrepareCache:
    """See the module docstring."""

    def __init__(self) -> None:
        self._key: object = None
        self._prepared: Prepared | None = None
        self._inputs: tuple[object, ...] = ()
        self._lease_fp: object = None
        #: Starts served from the cache without reading any file (for tests and benchmarks).
        self.hits = 0
        #: Of those, starts served by :meth:`recent` (no ``stat`` either).
        self.recent_hits = 0
        self._checked_at = -1e300
        self._commits = -1

    def recent(
        self, plugin_config: Mapping[str, Any] | None, ctx: ServiceContext,
        *, now: float | None = None,
    ) -> Prepared | None:
        """The kept result if the last check is recent enough to skip even the ``stat``s
        (see the module docstring), else ``None``.  Non-blocking (no file access)."""
        kept = self._prepared
        if kept is None or kept.needs_reap:
            return None
        now = time.monotonic() if now is None else now
        if not 0 <= now - self._checked_at < RECHECK_SECONDS:
            return None
        store = kept.lease_store
        if store.commits != self._commits or store.sync.quarantined or store.sync.skipped_entries:
            return None
        key = cache_key(plugin_config, ctx.workspace_dir, Path(ctx.state_dir), ctx.allowed_agents)
        if key != self._key:
            return None
        self.hits += 1
        self.recent_hits += 1
        return kept

    def _inputs_of(self, prepared: Prepared, state_dir: Path) -> tuple[object, ...]:
        dirs = (_dir_identity(Path(prepared.config.state_dir)),
                _dir_identity(state_dir / WRAPPER_DIR_NAME))
        if None in dirs:
            return (object(),)  # equal to nothing: check again next time
        return (*dirs, fingerprint(state_dir / GATEWAY_ID_FILE_NAME))

    async def prepare_async(
        self, plugin_config: Mapping[str, Any] | None, ctx: ServiceContext
    ) -> Prepared:
        """:meth:`recent` when it answers (no I/O, no thread hop), else :meth:`prepare` in a
        worker thread."""
        recent = self.recent(plugin_config, ctx)
        if recent is not None:  # the service's task checkpointed just before
            return recent  # noqa: ASYNC910
        return await trio.to_thread.run_sync(self.prepare, plugin_config, ctx)

    def prepare(self, plugin_config: Mapping[str, Any] | None, ctx: ServiceContext) -> Prepared:
        state_dir = Path(ctx.state_dir)
        key = cache_key(plugin_config, ctx.workspace_dir, state_dir, ctx.allowed_agents)
        kept = self._prepared
        if kept is None or key != self._key or self._inputs_of(kept, state_dir) != self._inputs:
            self._prepared = None
            prepared = prepare_sync(plugin_config, ctx)
            self._key = key
            self._inputs = self._inputs_of(prepared, state_dir)
        else:
            store = kept.lease_store
            store.sync.quarantined.clear()  # report only what this start moves aside
            if not kept.needs_reap and fingerprint(store.path) == self._lease_fp:
                self.hits += 1
                self._commits = store.commits
                self._checked_at = time.monotonic()
                return kept
            needs_reap = (
                bool(store.sync.list_open(kept.gateway_instance_id))
                or bool(store.sync.quarantined)
                or store.sync.skipped_entries > 0
            )
            prepared = Prepared(
                config=kept.config, lease_store=store,
                gateway_instance_id=kept.gateway_instance_id, needs_reap=needs_reap,
            )
        self._lease_fp = fingerprint(prepared.lease_store.path)
        self._prepared = prepared
        self._commits = prepared.lease_store.commits
        self._checked_at = time.monotonic()
        return prepared
