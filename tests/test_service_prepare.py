"""PrepareCache: restarts of one service object re-read only what changed."""

from __future__ import annotations

import shutil
from pathlib import Path

from acpx_trio import SyncLeaseStore, new_lease
from acpx_trio._service.prepare import PrepareCache, cache_key
from acpx_trio._store.config import AcpxConfig, resolve_config


def prepare(cache: PrepareCache, tmp: Path, plugin: dict[str, object]) -> tuple[object, ...]:
    built: list[AcpxConfig] = []

    def build() -> AcpxConfig:
        built.append(resolve_config(plugin, tmp / "ws", host_state_dir=tmp / "state"))
        return built[-1]

    key = cache_key(plugin, tmp / "ws", tmp / "state", ())
    return (*cache.prepare(key, build, tmp / "state", tmp / "state" / "acpx"), len(built))


def test_restart_reuses_everything_until_something_changes(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    cache = PrepareCache()
    plugin: dict[str, object] = {}
    config, store, gw, needs_reap, built = prepare(cache, tmp_path, plugin)
    assert built == 1 and needs_reap is False
    again = prepare(cache, tmp_path, plugin)
    assert again[:4] == (config, store, gw, False) and again[4] == 0 and cache.hits == 1
    # another writer adds an open lease of this gateway: the fingerprint changes, re-read
    SyncLeaseStore(tmp_path / "state" / "acpx").save(
        new_lease(gateway_instance_id=str(gw), session_key="k", wrapper_root="/w", command="a"))
    assert prepare(cache, tmp_path, plugin)[3] is True
    # the plugin config is mutated in place: the config is rebuilt
    plugin["timeoutSeconds"] = 7
    assert prepare(cache, tmp_path, plugin)[4] == 1
    # the state dir vanishes: dirs and gateway id come back as on a first start
    shutil.rmtree(tmp_path / "state")
    _, _, gw2, needs, _ = prepare(cache, tmp_path, plugin)
    assert (tmp_path / "state" / "acpx").is_dir() and gw2 != gw and needs is False
