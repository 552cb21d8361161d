"""Benchmark: start-up reaping of many leased process trees in one call.

    python benchmarks/reap.py [--leases 200] [--stubborn 10] [--measure-seed] [--seed-n 4]
        [--background N] [--scale]

Scenario 1: ``--leases`` open leases, each a real tree of 3 processes (sh -> sh -> sleep, in a
session of its own, as the runtime starts agents) that exit on SIGTERM, reaped by one
``reap_gateway`` call (the start-up / ``acpx-trio reap`` operation: the leases, then the orphan
sweep, from one snapshot).
Scenario 2: ``--stubborn`` trees that ignore SIGTERM (so SIGKILL after the grace period).

Beside each time it prints the seed design's figure for the same work: leases one at a time,
each with a fixed 0.75 s sleep between SIGTERM and SIGKILL (n x 0.75 s), and the ratio.
``--measure-seed`` also *runs* that seed-style loop on ``--seed-n`` fresh trees (a small N: the
loop costs 0.75 s a lease), in the same run, and scales it per lease.  Target for the
cooperative scenario: <= 0.3 s for 200 trees.

``--background N``: a busy machine: N idle ``sleep`` processes (each its own session, started
before the trees, so older than every lease root) stay alive during every scenario; the
number of processes on the machine is printed with every figure.  ``--scale``: the
cooperative scenario at 50, 200 and 1,000 trees (target for 1,000: <= 1 s, also with
``--background 3000``; the same 1 s bound is applied to 50 and 200).  ``--close N``: close of
one agent against a raw stdin close + exit, N times each, medians (target <= 3x raw).

Everything the benchmark starts carries a unique gateway id and is SIGKILLed at the end, even
on error or Ctrl+C (the background sleepers too).
"""

from __future__ import annotations

import argparse
import contextlib
import os
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
from _report import background, processes
from _report import result as report_result

from acpx_trio._process.agent import AgentProcess, AgentSpawn
from acpx_trio._process.gateway_reap import reap_gateway
from acpx_trio._process.identity import boot_id, process_info, read_stat_state, snapshot_processes
from acpx_trio._process.reaper import DEFAULT_GRACE
from acpx_trio._process.tags import lease_env
from acpx_trio._store.lease_model import ProcessLease, new_lease
from acpx_trio._store.leases import LeaseStore, SyncLeaseStore

SEED_SLEEP = 0.75  # the seed sleeps this long per lease, whatever the processes do
COOPERATIVE = 'sh -c "sleep 600 & wait" & wait'
STUBBORN = 'trap "" TERM; sh -c "sleep 600 & wait" & wait'  # ignored signals are inherited


class Fleet:
    """Tagged trees of one benchmark run, and the guarantee to kill them all."""

    def __init__(self, gateway_id: str) -> None:
        self.gateway_id = gateway_id
        self.popens: list[subprocess.Popen[bytes]] = []

    def spawn(self, store: SyncLeaseStore, n: int, script: str) -> list[ProcessLease]:
        leases = []
        for i in range(n):
            lease = new_lease(
                gateway_instance_id=self.gateway_id, session_key=f"bench-{i}",
                wrapper_root="/tmp", command=["sh", "-c", script],
            )
            env = dict(os.environ) | lease_env(lease.lease_id, self.gateway_id)
            popen = subprocess.Popen(
                ["sh", "-c", script], env=env, stdin=subprocess.DEVNULL, start_new_session=True
            )
            self.popens.append(popen)
            info = process_info(popen.pid)
            leases.append(
                msgspec.structs.replace(
                    lease,
                    root_pid=popen.pid,
                    root_start_ticks=info.start_ticks if info else None,
                    root_create_time=info.create_time if info else None,
                    boot_id=boot_id(),
                )
            )
        for lease in leases:
            store.save(lease)
        return leases

    async def wait_ready(self, leases: list[ProcessLease], per_tree: int = 3) -> None:
        wanted = {x.lease_id for x in leases}
        with trio.fail_after(60):
            while True:
                table = await trio.to_thread.run_sync(snapshot_processes)
                counts: dict[str, int] = {}
                for p in table:
                    if p.gateway_instance_id == self.gateway_id and p.lease_id in wanted:
                        counts[p.lease_id] = counts.get(p.lease_id, 0) + 1
                if len(counts) == len(wanted) and min(counts.values()) >= per_tree:
                    return
                await trio.sleep(0.05)

    def tagged_alive(self) -> list[int]:
        return [
            p.pid
            for p in snapshot_processes()
            if p.gateway_instance_id == self.gateway_id and not p.zombie
        ]

    def kill_all(self) -> None:
        for _ in range(3):
            pids = self.tagged_alive()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).kill()
            psutil.wait_procs([p for p in map(_proc, pids) if p is not None], timeout=5)
        for popen in self.popens:
            with contextlib.suppress(OSError):
                popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired, ChildProcessError):
                popen.wait(timeout=5)


def _proc(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


async def seed_style(leases: list[ProcessLease], gateway_id: str) -> None:
    """The seed's loop: per lease, SIGTERM its tree, sleep 0.75 s, SIGKILL what is alive."""
    for lease in leases:
        table = await trio.to_thread.run_sync(snapshot_processes)
        pids = [p.pid for p in table if p.lease_id == lease.lease_id
                and p.gateway_instance_id == gateway_id and not p.zombie]
        for pid in reversed(pids):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        await trio.sleep(SEED_SLEEP)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


async def scenario(
    name: str, n: int, script: str, target: float, measure_seed: bool, seed_n: int = 4
) -> bool:
    gateway_id = f"gw-bench-{uuid.uuid4().hex}"
    fleet = Fleet(gateway_id)
    with tempfile.TemporaryDirectory(prefix="acpx-bench-") as state_dir:
        try:
            leases = fleet.spawn(SyncLeaseStore(state_dir), n, script)
            await fleet.wait_ready(leases)
            start = time.perf_counter()
            result = await reap_gateway(gateway_id, LeaseStore(state_dir))
            took = time.perf_counter() - start
            left = fleet.tagged_alive()
            seed_figure = n * SEED_SLEEP
            ok = (
                not left
                and len(result.closed_lease_ids) == n
                and len(result.terminated_pids) == 3 * n
                and took < target
            )
            report_result(
                f"reap.{name}", f"{took:.3f} s",
                f"seed design (computed: {n} x {SEED_SLEEP} s) {seed_figure:.2f} s",
                took / seed_figure, f"<= {target:.2f} s", ok,
            )
            print(
                f"    {len(result.terminated_pids)} processes confirmed gone, "
                f"{len(result.closed_lease_ids)} leases closed, {len(left)} tagged left alive"
            )
            if measure_seed:
                seed_fleet = Fleet(f"{gateway_id}-seed")
                try:
                    with tempfile.TemporaryDirectory(prefix="acpx-bench-seed-") as seed_dir:
                        seed_leases = seed_fleet.spawn(SyncLeaseStore(seed_dir), seed_n, script)
                        await seed_fleet.wait_ready(seed_leases)
                        start = time.perf_counter()
                        await seed_style(seed_leases, seed_fleet.gateway_id)
                        seed_took = time.perf_counter() - start
                    per_lease = seed_took / seed_n
                    print(f"    seed-style loop measured on {seed_n} trees: {seed_took:.3f} s "
                          f"({per_lease:.3f} s a lease; x{n} = {per_lease * n:.2f} s, "
                          f"{per_lease * n / took:.0f}x our time)")
                finally:
                    seed_fleet.kill_all()
            return ok
        finally:
            fleet.kill_all()


IDLE_AGENT = [sys.executable, "-c", "import sys; sys.stdin.buffer.read()"]


async def _sleeping(pid: int) -> None:
    """Wait until ``pid`` blocks (state ``S``: it is up and reading its stdin)."""
    with trio.fail_after(30):
        while True:
            info = await trio.to_thread.run_sync(read_stat_state, pid)
            if info is not None and info[0] == "S":
                return
            await trio.sleep(0.002)


async def raw_close() -> float:
    """The floor of a close: an idle process started, then timed from its stdin close to its
    exit (seconds)."""
    proc = await trio.lowlevel.open_process(IDLE_AGENT, stdin=subprocess.PIPE)
    await _sleeping(proc.pid)
    start = time.perf_counter()
    assert proc.stdin is not None
    await proc.stdin.aclose()
    await proc.wait()
    return time.perf_counter() - start


async def close_scenario(n: int, suffix: str) -> bool:
    """Close of one agent (an idle process that exits at stdin EOF), ``n`` times each:
    ours (``AgentProcess.aclose``: stdin close, exit, the tree's proof of death, the lease
    writes) against the raw floor (close stdin, wait for the exit).  Medians; target
    ours <= 3x raw."""
    ours: list[float] = []
    raw: list[float] = []
    with tempfile.TemporaryDirectory(prefix="acpx-bench-close-") as d:
        store = LeaseStore(Path(d) / "acpx")
        for _ in range(n):
            raw.append(await raw_close())
            agent = AgentProcess(
                AgentSpawn(
                    argv=tuple(IDLE_AGENT), cwd=d, session_key="bench",
                    gateway_instance_id=f"gw-bench-{uuid.uuid4().hex}", kill_grace=0.5,
                ),
                lease_store=store,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(agent.run)
                await agent.wait_recorded()
                assert agent.pid is not None
                await _sleeping(agent.pid)
                start = time.perf_counter()
                await agent.aclose()
                ours.append(time.perf_counter() - start)
    o, r = statistics.median(ours), statistics.median(raw)
    ok = o <= 3 * r
    report_result(f"reap.close1{suffix}", f"{o * 1000:.2f} ms",
                  f"raw stdin close + exit {r * 1000:.2f} ms", o / r, "<= 3.0x raw", ok)
    print(f"    medians of {n}; ours min/max {min(ours) * 1000:.1f}/{max(ours) * 1000:.1f} ms, "
          f"raw {min(raw) * 1000:.1f}/{max(raw) * 1000:.1f} ms; "
          f"{processes()} processes on the machine")
    return ok


async def main(args: argparse.Namespace) -> int:
    print(f"python {sys.version.split()[0]}, trio {trio.__version__}, psutil {psutil.__version__}, "
          f"{os.cpu_count()} cpus, grace {DEFAULT_GRACE} s")
    with background(args.background):
        print(f"    {processes()} processes on the machine "
              f"({args.background} idle background sleepers)")
        return await _scenarios(args)


async def _scenarios(args: argparse.Namespace) -> int:
    suffix = f"-bg{args.background}" if args.background else ""
    ok = True
    if args.close:
        ok &= await close_scenario(args.close, suffix)
    if args.scale:
        for n, target in ((50, 1.0), (200, 1.0), (1000, 1.0)):
            ok &= await scenario(f"scale.cooperative{n}{suffix}", n, COOPERATIVE, target, False)
            print(f"    {processes()} processes on the machine after it")
        return 0 if ok else 1
    ok &= await scenario(
        f"cooperative{args.leases}{suffix}", args.leases, COOPERATIVE, 0.3, args.measure_seed,
        args.seed_n,
    )
    ok &= await scenario(
        f"stubborn{args.stubborn}{suffix}", args.stubborn, STUBBORN, DEFAULT_GRACE + 0.3,
        args.measure_seed, args.seed_n,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=200)
    parser.add_argument("--stubborn", type=int, default=10)
    parser.add_argument("--measure-seed", action="store_true")
    parser.add_argument("--seed-n", type=int, default=4, help="trees for --measure-seed")
    parser.add_argument("--background", type=int, default=0,
                        help="idle background processes (a busy machine)")
    parser.add_argument("--scale", action="store_true", help="50 / 200 / 1,000 trees")
    parser.add_argument("--close", type=int, default=0, metavar="N",
                        help="also: close of one agent vs raw stdin close + exit, N times")
    sys.exit(trio.run(main, parser.parse_args()))
