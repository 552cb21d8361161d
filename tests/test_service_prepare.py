"""PrepareCache: restarts of one service object re-read only what changed."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import trio

from acpx_trio._service import prepare as prepare_module
from acpx_trio._service.context import ServiceContext
from acpx_trio._service.prepare import PrepareCache
from acpx_trio._service.startup import Prepared
from acpx_trio.lowlevel import SyncLeaseStore, new_lease
from acpx_trio.testing.logger import ListLogger


async def test_restart_reuses_everything_until_something_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ws").mkdir()
    full: list[Prepared] = []
    real = prepare_module.prepare_sync  # type: ignore[attr-defined]

    def counting(plugin: Any, ctx: ServiceContext) -> Prepared:
        full.append(real(plugin, ctx))
        return full[-1]

    monkeypatch.setattr(prepare_module, "prepare_sync", counting)
    cache = PrepareCache()
    plugin: dict[str, object] = {}
    async with trio.open_nursery() as nursery:
        ctx = ServiceContext(workspace_dir=tmp_path / "ws", state_dir=tmp_path / "state",
                             logger=ListLogger(), nursery=nursery)
        first = cache.prepare(plugin, ctx)
        assert len(full) == 1 and not first.needs_reap
        assert cache.prepare(plugin, ctx) is first and len(full) == 1 and cache.hits == 1
        # another writer adds an open lease of this gateway: the lease file is read again
        SyncLeaseStore(first.lease_store.path.parent).save(new_lease(
            gateway_instance_id=first.gateway_instance_id, session_key="k", wrapper_root="/w",
            command="a"))
        again = cache.prepare(plugin, ctx)
        assert again.needs_reap and again.lease_store is first.lease_store and len(full) == 1
        # the plugin config is mutated in place: a full prepare
        plugin["timeoutSeconds"] = 7
        assert cache.prepare(plugin, ctx).config.timeout_seconds == 7 and len(full) == 2
        # the state dir vanishes: dirs and gateway id come back as on a first start
        shutil.rmtree(tmp_path / "state")
        fresh = cache.prepare(plugin, ctx)
        assert len(full) == 3 and (tmp_path / "state" / "acpx").is_dir()
        assert fresh.gateway_instance_id != first.gateway_instance_id and not fresh.needs_reap
