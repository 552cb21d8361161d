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

Every check is a ``stat``, made at every start (no time window: a restart right after a
crash of another process on this state dir is exactly when the reap matters).  When only the
lease file changed, the kept store re-reads it; anything else runs ``prepare_sync`` again,
exactly as a first start (same errors).  Blocking: call it in a worker thread; one start at
a time (the service's lock).

The start-up orphan sweep (processes tagged with this gateway whose lease is unknown or
final) is skipped only on a proof that it has nothing to find: :class:`SweepMemo` (see its
docstring).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import trio

from acpx_trio._errors import AcpxUsageError
from acpx_trio._service.context import WRAPPER_DIR_NAME, ServiceContext
from acpx_trio._service.startup import Prepared, prepare_sync
from acpx_trio._store.fsio import DIR_MODE
from acpx_trio._store.instance import GATEWAY_ID_FILE_NAME
from acpx_trio._store.lease_snapshot import fingerprint
from acpx_trio._store.userpaths import state_dir_path

__all__ = ["PrepareCache", "SweepMemo", "cache_key"]


class SweepMemo:
    """Whether a start-up orphan sweep can have anything to find.

    Proof: a process carrying this gateway's tags is spawned only after its lease was
    written to the lease file (the pending lease is saved before the spawn), and every write
    changes the file's fingerprint (inode, size, mtime, ctime: a save replaces the file).  So
    when a sweep read the fingerprint *before* its scan, then killed everything it found
    with nothing surviving, and the fingerprint is still that one, no lease was written
    since: every tagged process alive now was alive at that scan, and either was killed or
    had an open lease then, still open now (which the start-up reap of open leases
    handles).  Any other case sweeps (after every write, a quarantined file, a failed or
    cancelled sweep)."""

    _UNSET: object = object()

    def __init__(self) -> None:
        self._clean_fp: object = SweepMemo._UNSET

    def due(self, lease_fp: object) -> bool:
        """Whether a sweep is needed, given the lease file's fingerprint read now."""
        return lease_fp is None or lease_fp != self._clean_fp

    def record(self, lease_fp: object, clean: bool) -> None:
        """A sweep whose scan came after ``lease_fp`` was read has finished; ``clean``:
        nothing it found survived."""
        self._clean_fp = lease_fp if clean and lease_fp is not None else SweepMemo._UNSET


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
        #: Starts served from the cache without reading any file but ``stat`` (for tests and
        #: benchmarks).
        self.hits = 0
        #: The start-up orphan sweep's proof (shared by every result of this cache).
        self.sweep_memo = SweepMemo()

    def _inputs_of(self, prepared: Prepared, state_dir: Path) -> tuple[object, ...]:
        dirs = (_dir_identity(Path(prepared.config.state_dir)),
                _dir_identity(state_dir / WRAPPER_DIR_NAME))
        if None in dirs:
            return (object(),)  # equal to nothing: check again next time
        return (*dirs, fingerprint(state_dir / GATEWAY_ID_FILE_NAME))

    async def prepare_async(
        self, plugin_config: Mapping[str, Any] | None, ctx: ServiceContext
    ) -> Prepared:
        """:meth:`prepare` in a worker thread."""
        return await trio.to_thread.run_sync(self.prepare, plugin_config, ctx)

    def prepare(self, plugin_config: Mapping[str, Any] | None, ctx: ServiceContext) -> Prepared:
        """The config, dirs and gateway id of a start (cached across restarts).  Bad
        arguments raise :class:`~acpx_trio.AcpxUsageError` naming them, before anything is
        read or created."""
        state_dir = state_dir_path(ctx.state_dir)  # "" is not "." (which a cache key holds)
        state_dir_path(ctx.workspace_dir, "workspace_dir")  # the same rule: a non-empty path
        if not all(callable(getattr(ctx.logger, level, None))
                   for level in ("debug", "info", "warning", "error")):
            raise AcpxUsageError("logger", ctx.logger,
                                 "must have debug, info, warning and error methods "
                                 "(a logging.Logger fits)")
        if isinstance(ctx.allowed_agents, str) or not isinstance(ctx.allowed_agents, Sequence) \
                or not all(isinstance(a, str) for a in ctx.allowed_agents):
            raise AcpxUsageError("allowed_agents", ctx.allowed_agents,
                                 "must be a sequence of agent names (str)")
        if not isinstance(ctx.nursery, trio.Nursery):
            raise AcpxUsageError("nursery", ctx.nursery, "must be the host's trio.Nursery")
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
                return kept
            needs_reap = (
                bool(store.sync.list_open(kept.gateway_instance_id))
                or bool(store.sync.quarantined)
                or store.sync.skipped_entries > 0
            )
            prepared = Prepared(
                config=kept.config, lease_store=store,
                gateway_instance_id=kept.gateway_instance_id, needs_reap=needs_reap,
                containment=kept.containment,
            )
        self._lease_fp = fingerprint(prepared.lease_store.path)
        prepared = dataclasses.replace(
            prepared, lease_fp=self._lease_fp, sweep_memo=self.sweep_memo
        )
        self._prepared = prepared
        return prepared
