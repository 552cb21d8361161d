"""Scenario ``crash``: SIGKILL a gateway with live sessions at a random moment, restart, count.

Each cycle starts ``_soak_child.py`` on one state dir (kept for the whole run, so the lease
file ages across cycles) with five sessions opened concurrently: a busy turn, a
``/spawn-grandchild``, a ``/daemonize`` (setsid helper), an agent that ignores SIGTERM, an
idle one.  The child is SIGKILLed in one of four ways, picked by the seeded RNG:

* ``pending``: it kills itself right after the K-th pending lease (``rootPid 0``) is saved,
  before that spawn;
* ``spawn``: right after the K-th agent is spawned, before its lease records the pid;
* ``random``: the harness kills it after a random delay (possibly before the service is up);
* ``steady``: a random delay after every session is up.

Meanwhile the harness writes decoy leases into the same file (through the lock).  Then a fresh
service starts on the state dir in this process and its start-up reap runs.  Counted:

* ``leaked``: live processes tagged with our gateway id afterwards (must be 0);
* ``decoys_killed``: decoys dead or signalled (must be 0): two untagged processes with the
  agents' exact command lines, one of them named as the root of an open lease of ours with
  matching start ticks, the other with wrong ticks (a reused pid); a process tagged with
  another gateway id that is the verified root of that gateway's open lease; and a process
  tagged with another gateway id named as the root of a lease of ours;
* ``lost``: leases of ours still open/closing after the restart, or gone from the file.
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path

import trio
from _soak_common import (
    GATEWAY_KEY,
    LEASE_KEY,
    MOCK_ARGS,
    Decoy,
    ScenarioResult,
    child_env,
    decoys_cleaned,
    kill_all,
    make_state_dir,
    new_marker,
    private_mode_problems,
    scan,
    settle_decoy,
    spawn_decoy,
    sweep,
    tagged_alive,
)
from _soak_proc import fake_lease, gateway_child, lease_census, restart_service, summary

from acpx_trio._store.leases import SyncLeaseStore

ROLES = ["busy", "grandchild", "daemon", "stubborn", "idle"]
MODES = ["pending", "spawn", "random", "steady"]


async def _start_decoys(marker: str, other_gw: str) -> tuple[list[Decoy], str]:
    """The decoys (see the module docstring) and the lease id the tagged one carries."""
    agent = [sys.executable, *MOCK_ARGS]
    other_lease = str(uuid.uuid4())
    decoys = [
        spawn_decoy("same-cmdline", agent, child_env(marker)),
        spawn_decoy("reused-pid", [*agent, "--ignore-sigterm"], child_env(marker)),
        spawn_decoy("other-gateway", agent, child_env(
            marker, {LEASE_KEY: other_lease, GATEWAY_KEY: other_gw})),
        spawn_decoy("other-gateway-root-of-ours", agent, child_env(
            marker, {LEASE_KEY: str(uuid.uuid4()), GATEWAY_KEY: other_gw})),
    ]
    for decoy in decoys:
        await settle_decoy(decoy, Path(sys.executable).name)
    return decoys, other_lease


def _plant_leases(
    store: SyncLeaseStore, gw: str, decoys: list[Decoy], owner_pid: int, wrong_ticks: int
) -> None:
    """Per cycle: open leases of ours naming decoys as roots (owner: the doomed child)."""
    same, reused, _other, tagged_other = decoys
    store.save(fake_lease(gw, root_pid=same.pid, ticks=same.ticks, owner_pid=owner_pid))
    store.save(fake_lease(gw, root_pid=reused.pid, ticks=wrong_ticks, owner_pid=owner_pid))
    store.save(fake_lease(gw, root_pid=tagged_other.pid, ticks=tagged_other.ticks,
                          owner_pid=owner_pid))


async def run_crash(
    cycles: int, seed: int, *, kill_grace: float = 0.75, modes: list[str] | None = None
) -> ScenarioResult:
    """``cycles`` crash/restart cycles; ``modes`` forces the kill mode of each cycle in turn
    (default: a seeded random choice per cycle)."""
    result = ScenarioResult("crash", cycles=0)
    rng = random.Random(seed)
    marker = new_marker()
    other_gw = f"gw-soak-other-{uuid.uuid4().hex}"
    root = Path(tempfile.mkdtemp(prefix="acpx-soak-crash-"))
    state, workspace = root / "state", root / "workspace"
    workspace.mkdir()
    gw = make_state_dir(state)
    store = SyncLeaseStore(state / "acpx")
    used: Counter[str] = Counter()
    restarts: list[float] = []
    reaped = 0
    killed_decoys: set[int] = set()
    try:
        decoys, other_lease = await _start_decoys(marker, other_gw)
        with decoys_cleaned(decoys):
            other = decoys[2]
            store.save(fake_lease(other_gw, root_pid=other.pid, ticks=other.ticks,
                                  lease_id=other_lease, owner_pid=None))
            for cycle in range(cycles):
                mode = modes[cycle % len(modes)] if modes else rng.choice(MODES)
                used[mode] += 1
                roles = rng.sample(ROLES, len(ROLES))
                args = ["--roles", ",".join(roles), "--kill-grace", str(kill_grace),
                        "--agent-arg=--ignore-stdin-eof"]
                if mode == "pending":
                    args += ["--die-after-pending", str(rng.randint(1, len(roles)))]
                elif mode == "spawn":
                    args += ["--die-after-spawn", str(rng.randint(1, len(roles)))]
                async with trio.open_nursery() as nursery:
                    async with gateway_child(nursery, state, marker, args) as child:
                        wrong_ticks = (decoys[1].ticks or 0) + 1000
                        await trio.to_thread.run_sync(
                            _plant_leases, store, gw, decoys, child.pid, wrong_ticks
                        )
                        with trio.move_on_after(60) as waited:
                            if mode in ("pending", "spawn"):
                                await child.proc.wait()
                            elif mode == "random":
                                await trio.sleep(rng.uniform(0.0, 2.5))
                            else:
                                await child.ready.wait()
                                await trio.sleep(rng.uniform(0.0, 0.3))
                        if waited.cancelled_caught:
                            result.fail(f"cycle {cycle}: child ({mode}) did not get there in 60 s")
                        code = await child.kill()
                        if mode in ("pending", "spawn") and code != -9:
                            result.fail(f"cycle {cycle}: {mode} child exited {code}, not -9")
                    nursery.cancel_scope.cancel()
                before, _ = await trio.to_thread.run_sync(lease_census, store, gw)
                restart = await restart_service(state, workspace)
                restarts.append(restart.seconds)
                reaped += len(restart.reap.terminated_pids)
                if restart.reap.survived_pids:
                    result.fail(f"cycle {cycle}: survived SIGKILL {restart.reap.survived_pids}")
                decoy_pids = {d.pid for d in decoys}
                leaked = await trio.to_thread.run_sync(tagged_alive, [gw], decoy_pids)
                if leaked:
                    result.leaked += len(leaked)
                    result.fail(f"cycle {cycle} ({mode}): alive after restart: {leaked}")
                    await trio.to_thread.run_sync(
                        kill_all, [p for p in scan([gw]) if p.pid in leaked]
                    )
                for decoy in decoys:
                    hit = decoy.pid in restart.signals.pids() or not decoy.alive()
                    if hit and decoy.pid not in killed_decoys:
                        killed_decoys.add(decoy.pid)
                        result.fail(f"cycle {cycle}: decoy {decoy.label} signalled or dead")
                for problem in private_mode_problems(state):
                    result.fail(f"cycle {cycle}: {problem}")
                after, still_open = await trio.to_thread.run_sync(lease_census, store, gw)
                missing = before - after
                result.lost += len(still_open) + len(missing)
                if still_open or missing:
                    result.fail(f"cycle {cycle}: leases open {sorted(still_open)} "
                                f"missing {sorted(missing)}")
                result.cycles += 1
            result.decoys_killed = len(killed_decoys)
            _, other_open = await trio.to_thread.run_sync(lease_census, store, other_gw)
            if other_lease not in other_open:
                result.lost += 1
                result.fail("the other gateway's open lease was touched")
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(sweep, [gw, other_gw], marker)
        shutil.rmtree(root, ignore_errors=True)
    result.figures["modes"] = ",".join(f"{m}:{used[m]}" for m in MODES)
    result.figures["reaped"] = str(reaped)
    result.figures["restart_mean/max"] = summary(restarts)
    return result

