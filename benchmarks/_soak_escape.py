"""Soak scenario ``escape``: processes that try to outlive their agent, and owners that die.

Each cycle:

1. **close**: one agent (``AgentProcess``) that starts a pid hopper (``setsid`` then
   ``fork``/``_exit`` forever), an ``env -i`` child in its own group and a ``setsid``
   double-fork daemon, and ignores SIGTERM; it is closed normally; everything must be gone.
2. **owner killed**: a gateway child process (``tests/_service_child.py``, watchdog on) with
   2 sessions of such agents (which also ignore stdin EOF) is SIGKILLed and **not**
   restarted; its watchdog must end every tree within ``killGrace + 1 s``; the time is
   recorded (``owner_death_cleanup_max``), the leases must all be final.

Each cycle runs in cgroup mode (where a cgroup is usable: every leaf cgroup must be gone
too) and in process-group mode.  Decoys with the escapers' very command lines (an untagged
twin, one tagged with another gateway's ids) must survive every cycle.  Prints
``escape: cycles=N leaked=K decoys_killed=D lost=L owner_death_cleanup_max_cgroup=S
owner_death_cleanup_max_process_group=S``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import trio
from _soak_common import REPO, ScenarioResult

from acpx_trio._process.agent import AgentProcess, AgentSpawn
from acpx_trio._process.cgroup import probe_cgroup_kill
from acpx_trio._process.scan import newest_pids
from acpx_trio._process.tags import lease_env
from acpx_trio._process.watchdog import WAIT_SCRIPT, WATCHDOG_ENV
from acpx_trio._store.config import ContainmentMode
from acpx_trio._store.lease_model import ProcessLease
from acpx_trio._store.leases import LeaseStore, SyncLeaseStore

CHILD = REPO / "tests" / "_service_child.py"
SLEEP = "import time\nwhile True: time.sleep(3600)\n"
#: Extra seconds allowed beyond ``grace + 1`` before a survivor counts as leaked (2 loaded
#: cores); the real figure is reported separately.
MARGIN = 4.0


def _marker() -> str:
    return f"acpx-escape-{uuid.uuid4().hex[:12]}"


def _stat(pid: int) -> tuple[str, int, int] | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
        fields = data[data.rfind(b")") + 1 :].split()
        return fields[0].decode(), int(fields[2]), int(fields[3])
    except (OSError, ValueError, IndexError):
        return None


def _is_process(pid: int) -> bool:
    try:
        for line in Path(f"/proc/{pid}/status").read_bytes().splitlines():
            if line.startswith(b"Tgid:"):
                return int(line.split()[1]) == pid
    except (OSError, ValueError):
        return False
    return False


def _pids() -> list[int]:
    listed = sorted((int(n) for n in os.listdir("/proc") if n.isdigit()), reverse=True)
    return list(dict.fromkeys([*newest_pids(), *listed, *newest_pids()]))


def marked(marker: str) -> list[int]:
    """Live processes whose last argv word is ``marker`` (agents and gateways excluded)."""
    tail = b"\0" + marker.encode() + b"\0"
    out = set()
    for pid in _pids():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if (cmd.endswith(tail) and b"mock_agent" not in cmd and b"_service_child" not in cmd
                and _is_process(pid) and (st := _stat(pid)) is not None and st[0] != "Z"):
            out.add(pid)
    return sorted(out)


def group_alive(pgid: int) -> bool:
    """Some live (non-zombie) process is in group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass
    return any((st := _stat(pid)) is not None and st[1] == pgid and st[0] != "Z"
               for pid in _pids())


def watchdogs_of(owner_pid: int) -> list[int]:
    """Live watchdog processes of ``owner_pid``."""
    out = []
    for proc in psutil.process_iter():
        try:
            cmd = proc.cmdline()
            if (WAIT_SCRIPT in cmd and str(owner_pid) in cmd
                    and proc.status() != psutil.STATUS_ZOMBIE):
                out.append(proc.pid)
        except psutil.Error:
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Escapers:
    """The markers of one agent's escape artists, and what was seen of them."""

    def __init__(self) -> None:
        self.hop, self.scrub, self.daemon = _marker(), _marker(), _marker()
        self.groups: set[int] = set()  # agents' and hoppers' process groups
        self.pids: set[int] = set()  # scrubbed children and daemons

    @property
    def markers(self) -> tuple[str, str, str]:
        return self.hop, self.scrub, self.daemon

    def agent_args(self) -> list[str]:
        return ["--ignore-sigterm", "--spawn-pid-hopper", self.hop,
                "--spawn-scrubbed-child", self.scrub, "--spawn-daemon", self.daemon]

    def observe(self, decoys: set[int], agents: set[int]) -> None:
        for pid in marked(self.hop):
            st = _stat(pid)
            if pid not in decoys and st is not None and st[1] == st[2] and st[1] not in (
                pid, *agents
            ):
                self.groups.add(st[1])
        self.pids.update(p for m in (self.scrub, self.daemon) for p in marked(m)
                         if p not in decoys)

    def hoppers(self, agents: set[int]) -> set[int]:
        return {g for g in self.groups - agents if group_alive(g)}

    def survivors(self) -> list[str]:
        return ([f"group {g}" for g in self.groups if group_alive(g)]
                + [f"pid {p}" for p in self.pids if _alive(p)])

    def kill_all(self) -> None:
        for g in self.groups:
            with contextlib.suppress(OSError):
                os.killpg(g, signal.SIGKILL)
        for _ in range(10):
            for m in self.markers:
                for pid in marked(m):
                    st = _stat(pid)
                    with contextlib.suppress(OSError):
                        if st is not None and st[1] > 1 and st[1] != os.getpgid(0):
                            os.killpg(st[1], signal.SIGKILL)
                        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def decoys_for(markers: tuple[str, ...]) -> Iterator[list[subprocess.Popen[bytes]]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OPENCLAW_")}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for m in markers:
            argv = [sys.executable, "-c", SLEEP, m]
            procs.append(subprocess.Popen(argv, env=base, start_new_session=True))
            procs.append(subprocess.Popen(
                argv, env={**base, **lease_env("lease-decoy", "gw-someone-else")},
                start_new_session=True))
        yield procs
    finally:
        for p in procs:
            with contextlib.suppress(OSError):
                p.kill()
            p.wait()


async def _poll(pred: Callable[[], bool], seconds: float) -> bool:
    """Whether ``pred`` came true within ``seconds`` (polled on the real clock)."""
    with trio.move_on_after(seconds):
        while True:
            if pred():
                return True
            await trio.sleep(0.005)
    return False


def _leaves_left(leases: list[ProcessLease]) -> list[str]:
    return [x.cgroup for x in leases if x.cgroup is not None and os.path.exists(x.cgroup)]


async def close_cycle(
    result: ScenarioResult, root: Path, grace: float, containment: ContainmentMode = "auto"
) -> None:
    esc = Escapers()
    store = LeaseStore(root / "close-state")
    agent = AgentProcess(
        AgentSpawn(
            argv=tuple([sys.executable, "-m", "acpx_trio.testing.mock_agent", *esc.agent_args()]),
            cwd=str(root), session_key="close", gateway_instance_id=f"gw-{uuid.uuid4().hex[:8]}",
            kill_grace=grace, containment=containment,
        ),
        lease_store=store,
    )
    with decoys_for(esc.markers) as decoys:
        decoy_pids = {p.pid for p in decoys}
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(agent.run)
                await agent.wait_recorded()
                assert agent.pid is not None
                agents = {agent.pid}
                esc.groups.add(agent.pid)

                def up() -> bool:
                    esc.observe(decoy_pids, agents)
                    return len(esc.hoppers(agents)) == 1 and len(esc.pids) >= 2

                if not await _poll(up, 20):
                    result.fail("close: the escapers did not start")
                await agent.aclose()
            if not await _poll(lambda: not esc.survivors(), 5):
                result.leaked += len(esc.survivors())
                result.fail(f"close ({containment}): survivors {esc.survivors()}")
            if agent.lease is not None and (agent.lease.cgroup is None) == (
                    containment == "cgroup"):
                result.fail(f"close ({containment}): lease cgroup {agent.lease.cgroup}")
            left = await trio.to_thread.run_sync(
                _leaves_left, [] if agent.lease is None else [agent.lease])
            if left:
                result.leaked += len(left)
                result.fail(f"close ({containment}): leaf cgroups left {left}")
            dead = [p.pid for p in decoys if p.poll() is not None]
            if dead:
                result.decoys_killed += len(dead)
                result.fail(f"close: decoys killed {dead}")
        finally:
            esc.kill_all()


async def owner_cycle(
    result: ScenarioResult, root: Path, grace: float, sessions: int,
    containment: ContainmentMode = "auto",
) -> float | None:
    """One SIGKILLed owner; returns the seconds until everything of it was gone."""
    state = root / f"owner-{uuid.uuid4().hex[:8]}"
    esc = Escapers()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop(WATCHDOG_ENV, None)
    argv = [sys.executable, str(CHILD), str(state), "--sessions", str(sessions), "--busy", "1",
            "--grandchildren", "1", "--containment", containment,
            *(f"--agent-arg={a}" for a in ["--ignore-stdin-eof", *esc.agent_args()])]
    with decoys_for(esc.markers) as decoys:
        decoy_pids = {p.pid for p in decoys}
        owner = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)  # noqa: ASYNC220
        try:
            assert owner.stdout is not None
            out = owner.stdout
            records = [json.loads(await trio.to_thread.run_sync(out.readline))
                       for _ in range(sessions + 1)]
            agents = {int(r["pid"]) for r in records if r["kind"] == "agent"}
            helpers = {int(r["pid"]) for r in records if r["kind"] == "grandchild"}
            esc.groups.update(agents)

            def up() -> bool:
                esc.observe(decoy_pids, agents)
                return (len(esc.hoppers(agents)) == sessions
                        and len(esc.pids) >= 2 * sessions)

            if not await _poll(up, 20):
                result.fail(f"owner: escapers did not start ({esc.groups}, {esc.pids})")
            t0 = time.monotonic()
            owner.send_signal(signal.SIGKILL)
            owner.wait()

            def gone() -> bool:
                return not esc.survivors() and not any(_alive(p) for p in agents | helpers)

            took: float | None = None
            if await _poll(gone, grace + 1 + MARGIN):
                took = time.monotonic() - t0
            else:
                left = esc.survivors() + [f"pid {p}" for p in agents | helpers if _alive(p)]
                result.leaked += len(left)
                result.fail(f"owner: survivors after {grace + 1 + MARGIN}s: {left}")
            if not await _poll(lambda: not watchdogs_of(owner.pid), 10):
                result.fail(f"owner: the watchdog of {owner.pid} did not exit")
            leases = await trio.to_thread.run_sync(
                lambda: SyncLeaseStore(state / "acpx").list_all())
            open_ = [x.lease_id for x in leases if not x.state.is_final]
            if open_ or not leases:
                result.lost += len(open_)
                result.fail(f"owner: leases not final after the watchdog: {open_ or 'none'}")
            if any((x.cgroup is None) == (containment == "cgroup") for x in leases):
                result.fail(f"owner ({containment}): leases not in the expected containment")
            left = await trio.to_thread.run_sync(_leaves_left, leases)
            if left:
                result.leaked += len(left)
                result.fail(f"owner ({containment}): leaf cgroups left {left}")
            dead = [p.pid for p in decoys if p.poll() is not None]
            if dead:
                result.decoys_killed += len(dead)
                result.fail(f"owner: decoys killed {dead}")
            return took
        finally:
            if owner.poll() is None:
                owner.kill()
                owner.wait()
            esc.kill_all()


async def run_escape(
    cycles: int, seed: int, *, kill_grace: float = 0.75, sessions: int = 2
) -> ScenarioResult:
    result = ScenarioResult("escape")
    rng = random.Random(seed)
    modes: list[ContainmentMode] = ["process-group"]
    if probe_cgroup_kill().usable:
        modes.insert(0, "cgroup")
    worst = dict.fromkeys(modes, 0.0)
    root = Path(tempfile.mkdtemp(prefix="acpx-soak-escape-"))
    os.chmod(root, 0o700)
    for _ in range(cycles):
        for mode in modes:
            await close_cycle(result, root, kill_grace, mode)
            took = await owner_cycle(result, root, kill_grace, rng.choice([1, sessions]), mode)
            if took is not None:
                worst[mode] = max(worst[mode], took)
        result.cycles += 1
    result.figures["owner_death_cleanup_max_cgroup"] = "unavailable"  # unless measured
    for mode, took in worst.items():
        result.figures[f"owner_death_cleanup_max_{mode.replace('-', '_')}"] = f"{took:.2f}"
    return result
