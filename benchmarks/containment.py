"""Benchmark: what cgroup containment costs, against baselines measured in the same run.

    python benchmarks/containment.py [--spawns 40] [--closes 20] [--trees 200,1000]
        [--background N] [--owner-deaths 5]

1. ``spawn``: a real spawn + exit of ``/bin/true`` through ``trio.lowlevel.open_process``,
   direct against the same spawn through the shim that enters a leaf cgroup first (leaf made
   beforehand), and the whole per-launch cost (leaf made, shim spawn, leaf removed).
   Medians; target: the shim adds <= 1 ms.
2. ``close``: close of one idle agent (it exits at stdin EOF) with ``containment =
   "cgroup"`` and ``"process-group"`` against the raw floor (close stdin, wait for the exit).
   Medians; target: contained close <= 3x raw (also with ``--background 3000``).
3. ``reap``: ``reap_gateway`` of N cooperative trees (sh -> sh -> sleep, each in its own
   leaf and its own session as the runtime starts agents, leases whose owner is dead),
   target 1,000 trees <= 1 s.
4. ``owner-death``: an owner process (a service with one contained agent that ignores
   SIGTERM and stdin EOF) is SIGKILLed; the time until its leaf cgroup is empty and gone,
   against ``killGraceSeconds + 1 s``.

Every figure line carries the number of processes on the machine.  Everything started is
killed at the end (leaves with ``cgroup.kill``).  Skips (exit 0) where no cgroup is usable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgspec
import psutil
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import background, processes, result, skip
from reap import IDLE_AGENT, _sleeping, raw_close

from acpx_trio import LeaseStore
from acpx_trio._process.agent import AgentProcess, AgentSpawn
from acpx_trio._process.cgroup import (
    gateway_parent,
    make_leaf,
    probe_cgroup_kill,
    remove_empty_leaf,
    shim_argv,
)
from acpx_trio._process.gateway_reap import reap_gateway
from acpx_trio._process.identity import boot_id, process_info
from acpx_trio._process.leaf_end import kill_leaf
from acpx_trio._process.tags import lease_env
from acpx_trio._process.watchdog import WAIT_SCRIPT
from acpx_trio.lowlevel import SyncLeaseStore, new_lease

COOPERATIVE = 'sh -c "sleep 600 & wait" & wait'
GRACE = 0.5


def machine() -> str:
    return f"{processes()} processes on the machine"


async def _spawn(argv: list[str]) -> float:
    start = time.perf_counter()
    proc = await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL)
    await proc.wait()
    return time.perf_counter() - start


async def spawn_scenario(n: int, gateway: str, suffix: str = "") -> bool:
    direct: list[float] = []
    shimmed: list[float] = []
    whole: list[float] = []
    for i in range(n):
        direct.append(await _spawn(["/bin/true"]))
        leaf = make_leaf(gateway, f"spawn-{i}")
        assert leaf is not None
        shimmed.append(await _spawn(shim_argv(leaf, ["/bin/true"])))
        assert remove_empty_leaf(leaf)
        start = time.perf_counter()
        leaf = make_leaf(gateway, f"whole-{i}")
        assert leaf is not None
        proc = await trio.lowlevel.open_process(shim_argv(leaf, ["/bin/true"]),
                                                stdin=subprocess.DEVNULL)
        await proc.wait()
        assert remove_empty_leaf(leaf)
        whole.append(time.perf_counter() - start)
    d, s, w = (statistics.median(x) for x in (direct, shimmed, whole))
    ok = result(f"containment.spawn-shim{suffix}", f"{s * 1000:.2f} ms",
                f"direct spawn {d * 1000:.2f} ms", s / d, "adds <= 1 ms", s - d <= 0.001)
    result(f"containment.spawn-whole{suffix}", f"{w * 1000:.2f} ms",
           f"direct spawn {d * 1000:.2f} ms", w / d, "(leaf made + shim + leaf removed)", True)
    print(f"    medians of {n}; shim adds {(s - d) * 1000:.2f} ms, the whole leaf "
          f"{(w - d) * 1000:.2f} ms; {machine()}")
    return ok


async def _close_once(store: LeaseStore, d: str, mode: str) -> float:
    agent = AgentProcess(
        AgentSpawn(
            argv=tuple(IDLE_AGENT), cwd=d, session_key="bench",
            gateway_instance_id=f"gw-bench-{uuid.uuid4().hex}", kill_grace=GRACE,
            containment=mode,  # type: ignore[arg-type]
        ),
        lease_store=store,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        await agent.wait_recorded()
        assert agent.pid is not None and (agent.lease is not None)
        assert (agent.lease.cgroup is not None) == (mode == "cgroup")
        await _sleeping(agent.pid)
        start = time.perf_counter()
        await agent.aclose()
        return time.perf_counter() - start


async def close_scenario(n: int, suffix: str) -> bool:
    contained: list[float] = []
    group: list[float] = []
    raw: list[float] = []
    with tempfile.TemporaryDirectory(prefix="acpx-bench-cg-") as d:
        store = LeaseStore(Path(d) / "acpx")
        for _ in range(n):
            raw.append(await raw_close())
            contained.append(await _close_once(store, d, "cgroup"))
            group.append(await _close_once(store, d, "process-group"))
    c, g, r = (statistics.median(x) for x in (contained, group, raw))
    ok = result(f"containment.close{suffix}", f"{c * 1000:.2f} ms",
                f"raw stdin close + exit {r * 1000:.2f} ms", c / r, "<= 3.0x raw", c <= 3 * r)
    result(f"containment.close-process-group{suffix}", f"{g * 1000:.2f} ms",
           f"raw stdin close + exit {r * 1000:.2f} ms", g / r, "(for comparison)", True)
    print(f"    medians of {n}; {machine()}")
    return ok


async def _dead_owner() -> tuple[int, float]:
    """The identity of an owner that is dead (a process that ran and was reaped)."""
    proc = await trio.lowlevel.open_process(["sleep", "0"], stdin=subprocess.DEVNULL)
    info = await trio.to_thread.run_sync(process_info, proc.pid)
    await proc.wait()
    return proc.pid, info.create_time if info is not None else time.time()


def _setup_trees(
    n: int, gateway: str, d: str, owner: tuple[int, float],
    leaves: list[str], popens: list[subprocess.Popen[bytes]],
) -> None:
    """``n`` cooperative trees, each in its own leaf, with saved leases whose owner is dead;
    returns once every leaf holds its whole tree (3 processes).  Blocking."""
    sync = SyncLeaseStore(d)
    parent = gateway_parent(gateway)
    assert parent is not None
    for i in range(n):
        lease = new_lease(gateway_instance_id=gateway, session_key=f"bench-{i}",
                          wrapper_root=d, command=["sh", "-c", COOPERATIVE],
                          owner_pid=owner[0], owner_start_time=owner[1])
        lease = msgspec.structs.replace(lease, cgroup=str(parent / lease.lease_id))
        sync.save(lease)  # recorded first, made second, as a real launch
        leaf = make_leaf(gateway, lease.lease_id)
        assert leaf == lease.cgroup
        leaves.append(leaf)
        env = dict(os.environ) | lease_env(lease.lease_id, gateway)
        popen = subprocess.Popen(shim_argv(leaf, ["sh", "-c", COOPERATIVE]), env=env,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        popens.append(popen)
        info = process_info(popen.pid)
        sync.save(msgspec.structs.replace(
            lease, root_pid=popen.pid, boot_id=boot_id(), process_group_id=popen.pid,
            root_start_ticks=info.start_ticks if info else None,
            root_create_time=info.create_time if info else None))

    def count(leaf: str) -> int:
        with open(os.path.join(leaf, "cgroup.procs"), encoding="ascii") as fh:
            return len(fh.read().split())

    deadline = time.monotonic() + 120
    while min(count(x) for x in leaves) < 3:
        assert time.monotonic() < deadline, "trees did not start"
        time.sleep(0.05)


async def reap_scenario(n: int, suffix: str) -> bool:
    gateway = f"gw-bench-{uuid.uuid4().hex}"
    owner = await _dead_owner()
    leaves: list[str] = []
    popens: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="acpx-bench-cgreap-") as d:
        try:
            await trio.to_thread.run_sync(_setup_trees, n, gateway, d, owner, leaves, popens)
            start = time.perf_counter()
            report = await reap_gateway(gateway, LeaseStore(d), grace=GRACE)
            took = time.perf_counter() - start
            left = await trio.to_thread.run_sync(
                lambda: [leaf for leaf in leaves if os.path.exists(leaf)])
            ok = result(f"containment.reap{n}{suffix}", f"{took:.3f} s",
                        f"the 1 s target for {n} trees", took, "<= 1 s (1,000 trees)",
                        not left and report.ok and (n < 1000 or took <= 1.0))
            print(f"    {len(report.closed_lease_ids)} leases closed, {len(left)} leaves left; "
                  f"{machine()}")
            return ok
        finally:
            for leaf in leaves:
                await kill_leaf(leaf, 5)
            for popen in popens:
                popen.kill()
                popen.wait()


_OWNER = """
import json, sys, trio
from acpx_trio import BackendRegistry, LeaseStore, open_runtime_service
async def main(state, ws, agent, grace):
    config = {"agents": {"stubborn": agent}, "containment": "cgroup",
              "killGraceSeconds": float(grace)}
    async with open_runtime_service(workspace_dir=ws, state_dir=state,
                                    registry=BackendRegistry(), plugin_config=config) as svc:
        rt = svc.require_runtime()
        await rt.ensure_session(session_key="k", agent="stubborn")
        (lease,) = [x for x in await LeaseStore(state + "/acpx").list_all()
                    if not x.state.is_final]
        print(json.dumps({"cgroup": lease.cgroup}), flush=True)
        await trio.sleep_forever()
trio.run(main, *sys.argv[1:5])
"""


def owner_death_once(tmp: Path) -> float:
    agent = shlex.join([sys.executable, "-m", "acpx_trio.testing.mock_agent",
                        "--ignore-sigterm", "--ignore-stdin-eof"])
    env = {**os.environ, "OPENCLAW_ACPX_RUNTIME_STARTUP_PROBE": "0",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    env.pop("ACPX_TRIO_WATCHDOG", None)
    (tmp / "ws").mkdir(parents=True)
    owner = subprocess.Popen([sys.executable, "-c", _OWNER, str(tmp / "state"),
                              str(tmp / "ws"), agent, str(GRACE)],
                             stdout=subprocess.PIPE, env=env)
    try:
        assert owner.stdout is not None
        leaf = json.loads(owner.stdout.readline())["cgroup"]
        time.sleep(0.3)  # the watchdog is armed before the agent's lease is saved
        (watchdog,) = [p for p in psutil.Process(owner.pid).children()
                       if WAIT_SCRIPT in p.cmdline()]
        start = time.perf_counter()
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        deadline = start + 30
        while os.path.exists(leaf) and time.perf_counter() < deadline:
            time.sleep(0.005)
        took = time.perf_counter() - start
        # the tree is gone; the watchdog still records it (lease writes in the state dir)
        with contextlib.suppress(psutil.NoSuchProcess):
            watchdog.wait(timeout=30)
        return took
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


def owner_death_scenario(n: int, suffix: str = "") -> bool:
    times = []
    for i in range(n):
        with tempfile.TemporaryDirectory(prefix="acpx-bench-od-") as d:
            times.append(owner_death_once(Path(d) / str(i)))
    m = statistics.median(times)
    ok = result(f"containment.owner-death{suffix}", f"{m:.3f} s", f"killGraceSeconds + 1 s = "
                f"{GRACE + 1:.1f} s", m / (GRACE + 1), "<= grace + 1 s",
                max(times) <= GRACE + 1)
    print(f"    median of {n} (max {max(times):.3f} s), SIGTERM-ignoring agent; {machine()}")
    return ok


async def main(args: argparse.Namespace) -> int:
    probe = probe_cgroup_kill()
    if not probe.usable:
        skip("containment", probe.reason)
        return 0
    print(f"cgroup: {probe.path}; {os.cpu_count()} cpus")
    gateway = f"gw-bench-{uuid.uuid4().hex}"
    suffix = f"-bg{args.background}" if args.background else ""
    ok = True
    with background(args.background):
        print(f"    {machine()} ({args.background} idle background sleepers)")
        ok &= await spawn_scenario(args.spawns, gateway, suffix)
        ok &= await close_scenario(args.closes, suffix)
        for n in args.trees:
            ok &= await reap_scenario(n, suffix)
        if args.owner_deaths:
            ok &= await trio.to_thread.run_sync(owner_death_scenario, args.owner_deaths, suffix)
    parent = gateway_parent(gateway)
    if parent is not None:
        with contextlib.suppress(OSError):
            parent.rmdir()
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spawns", type=int, default=40)
    parser.add_argument("--closes", type=int, default=20)
    parser.add_argument("--trees", type=lambda s: [int(x) for x in s.split(",") if x],
                        default=[200, 1000])
    parser.add_argument("--background", type=int, default=0)
    parser.add_argument("--owner-deaths", type=int, default=5)
    sys.exit(trio.run(main, parser.parse_args()))
