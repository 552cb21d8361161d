"""Scenario ``owners``: two gateways with different instance ids share one lease file.

The gateway id lives in ``<state_dir>/gateway-instance-id`` and the leases in
``<state_dir>/acpx/process-leases.json``, so two *installations* (different ids) share a lease
file only when their ``acpx`` dirs are one directory: gateway B's state dir gets
``acpx -> <state_a>/acpx``.  That is the interop case the design's file lock and gateway-id
filter exist for (an OpenClaw TypeScript gateway and this one on one lease file; two
installations on one mounted state volume).  Two processes of *one* installation share the id
and are told apart by owner liveness instead; ``crash`` and the service tests cover that.

Each cycle: gateways A and B (child processes, real services) open, prompt and close
``--churn`` sessions each at full speed on the shared file, then hold four live sessions (busy,
``/spawn-grandchild``, ``/daemonize``, idle; agents ignore stdin EOF so they outlive their
gateway).  Checked:

1. every lease each gateway started is present (none lost to a concurrent write), churned
   ones ``closed``, held ones ``open`` and owned by their gateway;
2. A is SIGKILLed; a fresh service of B starts on B's state dir while B runs: it must signal
   nothing (A's processes belong to another id, B's leases have a live owner);
3. A's restart reaps all of A's processes and signals none of B's;
4. B is SIGKILLed and restarted: nothing of B survives; every lease is final.

``decoys_killed`` counts the other gateway's processes that a start-up signalled or that died,
``leaked`` processes alive after their own gateway's restart, ``lost`` leases missing or not
final.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import trio
from _soak_common import (
    ScenarioResult,
    is_alive,
    make_state_dir,
    new_marker,
    sweep,
    tagged_alive,
)
from _soak_proc import Child, gateway_child, restart_service, summary

from acpx_trio._process.identity import read_start_ticks
from acpx_trio._store.fsio import ensure_private_dir
from acpx_trio._store.lease_model import LeaseState
from acpx_trio._store.leases import SyncLeaseStore

HELD = "busy,grandchild,daemon,idle"


def _alive_set(pids: list[int], ticks: dict[int, int | None]) -> set[int]:
    return {p for p in pids if is_alive(p, ticks.get(p))}


def _check_leases(
    result: ScenarioResult, store: SyncLeaseStore, gw: str, child: Child, cycle: int
) -> None:
    leases = [x for x in store.list_all() if x.gateway_instance_id == gw]
    held = {int(r["pid"]) for r in child.records if r.get("kind") == "agent"}
    opened = [x for x in leases if x.state is LeaseState.OPEN]
    missing = child.spawned - len(leases)
    bad_open = [x for x in opened if x.root_pid not in held or x.owner_pid != child.pid]
    not_closed = [x for x in leases if x.state not in (LeaseState.OPEN, LeaseState.CLOSED)]
    if missing or bad_open or not_closed or len(opened) != len(held):
        result.lost += max(missing, 0) + len(bad_open) + len(not_closed)
        result.fail(
            f"cycle {cycle} {gw[-6:]}: spawned={child.spawned} leases={len(leases)} "
            f"open={len(opened)} held={len(held)} not-closed={len(not_closed)}"
        )


async def _wait_ready(result: ScenarioResult, children: list[Child], cycle: int) -> bool:
    with trio.move_on_after(180):
        for child in children:
            await child.ready.wait()
        return True
    result.fail(f"cycle {cycle}: gateways not ready within 180 s")
    return False


async def run_owners(cycles: int, seed: int, *, churn: int = 40) -> ScenarioResult:
    result = ScenarioResult("owners")
    marker = new_marker()
    reap_times: list[float] = []
    reaped = 0
    gws: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="acpx-soak-owners-"))
    try:
        for cycle in range(cycles):
            state_a, state_b = root / f"a{cycle}", root / f"b{cycle}"
            gw_a, gw_b = make_state_dir(state_a), make_state_dir(state_b)
            gws += [gw_a, gw_b]
            ensure_private_dir(state_a / "acpx")
            os.symlink(state_a / "acpx", state_b / "acpx")
            store = SyncLeaseStore(state_a / "acpx")
            workspace = root / "workspace"
            workspace.mkdir(exist_ok=True)
            args = ["--churn", str(churn), "--concurrency", "4", "--roles", HELD,
                    "--agent-arg=--ignore-stdin-eof", "--kill-grace", "0.5"]
            async with trio.open_nursery() as nursery:
                async with (
                    gateway_child(nursery, state_a, marker, args) as a,
                    gateway_child(nursery, state_b, marker, args) as b,
                ):
                    if not await _wait_ready(result, [a, b], cycle):
                        nursery.cancel_scope.cancel()
                        break
                    for gw, child in ((gw_a, a), (gw_b, b)):
                        await trio.to_thread.run_sync(_check_leases, result, store, gw, child,
                                                      cycle)
                    ticks = {p: read_start_ticks(p) for p in a.pids() + b.pids()}
                    await a.kill()
                    a_alive = _alive_set(a.pids(), ticks)
                    b_alive = _alive_set(b.pids(), ticks)
                    # 2. B's second service: must touch nothing at all.
                    b2 = await restart_service(state_b, workspace)
                    hits = b2.signals.pids() | (a_alive - _alive_set(a.pids(), ticks))
                    hits |= b_alive - _alive_set(b.pids(), ticks)
                    if hits:
                        result.decoys_killed += len(hits)
                        result.fail(f"cycle {cycle}: B's second start-up hit {sorted(hits)}")
                    # 3. A's restart: reaps A's processes only.
                    ra = await restart_service(state_a, workspace)
                    reap_times.append(ra.seconds)
                    reaped += len(ra.reap.terminated_pids)
                    b_hits = (ra.signals.pids() & set(b.pids())) | (
                        b_alive - _alive_set(b.pids(), ticks)
                    )
                    if b_hits:
                        result.decoys_killed += len(b_hits)
                        result.fail(f"cycle {cycle}: A's restart hit B's {sorted(b_hits)}")
                    left = await trio.to_thread.run_sync(tagged_alive, [gw_a])
                    result.leaked += len(left)
                    if left:
                        result.fail(f"cycle {cycle}: A's processes alive after restart {left}")
                    # 4. B dies too; its restart reaps the rest.
                    await b.kill()
                    rb = await restart_service(state_b, workspace)
                    reap_times.append(rb.seconds)
                    reaped += len(rb.reap.terminated_pids)
                    left = await trio.to_thread.run_sync(tagged_alive, [gw_b])
                    result.leaked += len(left)
                    if left:
                        result.fail(f"cycle {cycle}: B's processes alive after restart {left}")
                    total = a.spawned + b.spawned
                    leases = await trio.to_thread.run_sync(store.list_all)
                    ours = [x for x in leases if x.gateway_instance_id in (gw_a, gw_b)]
                    unfinal = [x.lease_id for x in ours if not x.state.is_final]
                    result.lost += len(unfinal) + max(total - len(ours), 0)
                    if unfinal or total != len(ours):
                        result.fail(f"cycle {cycle}: {len(ours)}/{total} leases, "
                                    f"not final: {unfinal}")
                nursery.cancel_scope.cancel()
            result.cycles += 1
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(sweep, gws, marker)
        shutil.rmtree(root, ignore_errors=True)
    result.figures["churn"] = f"2x{churn}"
    result.figures["reaped"] = str(reaped)
    result.figures["restart_mean/max"] = summary(reap_times)
    return result

