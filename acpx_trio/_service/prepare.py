"""The blocking part of a service start (config, private dirs, gateway id, lease store, "is
there anything to reap"), cached across restarts of one service object.

:class:`PrepareCache` redoes each piece only when its input changed:

* the resolved config, while the key (the plugin config's content, workspace dir, state dir,
  allowed agents) is the same;
* the directories' 0700 check, while both directories keep their inode and mode;
* the gateway id, while its file keeps its fingerprint (inode, size, mtime, ctime);
* the lease store object (it keeps the decoded lease file between locked operations), and
  the "no open lease of this gateway" answer while the lease file keeps its fingerprint.

Every check is a ``stat``; a changed or missing file is read again exactly as on a first
start.  Blocking: run :meth:`PrepareCache.prepare` in a worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from acpx_trio._store.config import AcpxConfig
from acpx_trio._store.fsio import DIR_MODE, ensure_private_dir
from acpx_trio._store.instance import GATEWAY_ID_FILE_NAME, resolve_gateway_instance_id_sync
from acpx_trio._store.lease_snapshot import fingerprint
from acpx_trio._store.leases import LeaseStore

__all__ = ["PrepareCache", "Prepared", "cache_key"]

Prepared = tuple[AcpxConfig, LeaseStore, str, bool]
"""(config, lease store, gateway instance id, whether start-up has leases to reap)."""


def _dir_identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if (st.st_mode & 0o777) != DIR_MODE:
        return None
    return (st.st_dev, st.st_ino, st.st_mode)


class PrepareCache:
    """See the module docstring.  Not thread-safe: one start at a time (the service's lock)."""

    def __init__(self) -> None:
        self._reset()
        #: How many starts were served without re-reading anything (for tests, benchmarks).
        self.hits = 0

    def _reset(self) -> None:
        self._key: object = None
        self._config: AcpxConfig | None = None
        self._dirs: tuple[object, ...] | None = None
        self._gateway_id: str | None = None
        self._gateway_fp: object = None
        self._lease_store: LeaseStore | None = None
        self._lease_fp: object = None
        self._no_open = False

    def prepare(
        self, key: object, build_config: Callable[[], AcpxConfig], state_dir: Path,
        wrapper_root: Path,
    ) -> Prepared:
        if self._config is None or key != self._key:
            self._reset()  # a new key: forget everything
            self._config = build_config()
            self._key = key
        config = self._config
        dirs = (_dir_identity(Path(config.state_dir)), _dir_identity(wrapper_root))
        if None in dirs or dirs != self._dirs:
            ensure_private_dir(Path(config.state_dir))
            ensure_private_dir(wrapper_root)
            self._dirs = (_dir_identity(Path(config.state_dir)), _dir_identity(wrapper_root))
        gateway_fp = fingerprint(Path(state_dir) / GATEWAY_ID_FILE_NAME)
        if self._gateway_id is None or gateway_fp is None or gateway_fp != self._gateway_fp:
            self._gateway_id = resolve_gateway_instance_id_sync(state_dir)
            self._gateway_fp = fingerprint(Path(state_dir) / GATEWAY_ID_FILE_NAME)
        gateway_id = self._gateway_id
        store = self._lease_store
        if store is None or store.sync.state_dir != wrapper_root:
            store = self._lease_store = LeaseStore(wrapper_root)
            self._lease_fp = None
        store.sync.quarantined.clear()  # report only what this start moves aside
        lease_fp = fingerprint(store.path)
        if self._no_open and lease_fp == self._lease_fp:
            self.hits += 1
            return config, store, gateway_id, False
        # Reap when a previous life left open leases, or when the lease file was damaged
        # (quarantined or with unreadable entries): tagged processes may have lost their lease.
        needs_reap = (
            bool(store.sync.list_open(gateway_id))
            or bool(store.sync.quarantined)
            or store.sync.skipped_entries > 0
        )
        self._no_open = not needs_reap
        self._lease_fp = fingerprint(store.path)
        return config, store, gateway_id, needs_reap


def cache_key(
    plugin_config: Mapping[str, Any] | None, workspace_dir: object, state_dir: object,
    allowed_agents: Sequence[str],
) -> object:
    """What the resolved config depends on: the plugin config's content (not its identity: a
    dict mutated between restarts must not reuse a stale config), the dirs, the allowed
    agents.  A config that does not encode as JSON gets a key equal to nothing (no caching)."""
    try:
        content = msgspec.json.encode(plugin_config)
    except (TypeError, ValueError, OverflowError):
        return object()
    return (content, str(workspace_dir), str(state_dir), tuple(allowed_agents))
