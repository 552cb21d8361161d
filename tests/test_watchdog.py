"""Owner-death watchdog, with real processes: SIGKILL an owner whose agents ignore SIGTERM
and stdin EOF and leave escape artists behind (pid hopper, env-scrubbed group member,
setsid double-fork daemon, a grandchild on /dev/null): everything is gone within
``killGraceSeconds + 1 s`` (plus a margin for a loaded 2-core machine) with no restart;
decoys with the same command lines survive; a normal stop makes the watchdog exit without
killing anything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import trio
from _escape_helpers import Decoys, cleanup_marker, group_members, marked, new_marker, stat_ids
from _proc_helpers import poll_until

from acpx_trio._process.cgroup import probe_cgroup_kill
from acpx_trio._process.watchdog import WAIT_SCRIPT, WATCHDOG_ENV, WATCHDOG_LOG_ENV
from acpx_trio._store.lease_model import LeaseState
from acpx_trio._store.leases import SyncLeaseStore

CHILD = Path(__file__).with_name("_service_child.py")
REPO = Path(__file__).resolve().parent.parent
GRACE = 0.75
#: Assertion bound on top of grace + 1 s: the suite runs on 2 shared cores.
MARGIN = 4.0
PROBE = probe_cgroup_kill()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def watchdogs_of(owner_pid: int) -> list[int]:
    out = []
    for proc in psutil.process_iter():
        try:
            cmd = proc.cmdline()
        except psutil.Error:
            continue
        if WAIT_SCRIPT in cmd and str(owner_pid) in cmd:
            out.append(proc.pid)
    return out


def start_owner(
    state: Path, sessions: int, agent_args: list[str], *, watchdog: bool = True,
    containment: str | None = None,
) -> subprocess.Popen[bytes]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, WATCHDOG_LOG_ENV: str(state.parent / "wd.log")}
    env.pop(WATCHDOG_ENV, None)
    if not watchdog:
        env[WATCHDOG_ENV] = "0"
    argv = [sys.executable, str(CHILD), str(state), "--sessions", str(sessions), "--busy", "1",
            "--grandchildren", "1", *(f"--agent-arg={a}" for a in agent_args)]
    if containment is not None:
        argv += ["--containment", containment]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)


def read_records(proc: subprocess.Popen[bytes], count: int) -> list[dict[str, object]]:
    assert proc.stdout is not None
    out = []
    while len(out) < count:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"owner exited early after {out}")
        out.append(json.loads(line))
    return out


@pytest.mark.slow
async def test_sigkilled_owner_leaves_nothing_without_restart(tmp_path: Path) -> None:
    hop, scrub, daemon = new_marker(), new_marker(), new_marker()
    sessions = 2
    state = tmp_path / "state"
    args = ["--ignore-stdin-eof", "--ignore-sigterm", "--spawn-pid-hopper", hop,
            "--spawn-scrubbed-child", scrub, "--spawn-daemon", daemon]
    decoys = [Decoys(m, "lease-decoy") for m in (hop, scrub, daemon)]
    groups: set[int] = set()
    hopper_groups = groups  # every hopper group seen, killed at the end whatever happens
    owner = start_owner(state, sessions, args)
    try:
        with cleanup_marker(hop, groups), cleanup_marker(scrub, groups), \
                cleanup_marker(daemon, groups), trio.fail_after(60):
            records = await trio.to_thread.run_sync(read_records, owner, sessions + 1)
            agents = [int(str(r["pid"])) for r in records if r["kind"] == "agent"]
            helpers = [int(str(r["pid"])) for r in records if r["kind"] == "grandchild"]
            groups.update(agents)

            decoy_pids = {p for d in decoys for p in d.pids}

            def hopper_groups_now() -> set[int]:
                return {st[1] for p in marked(hop) if p not in decoy_pids
                        and (st := stat_ids(p)) is not None
                        and st[1] == st[2] and st[1] not in (p, *agents)}

            def escapers_up() -> bool:  # (a hopper may be missed mid-hop: collect them)
                hopper_groups.update(hopper_groups_now())
                hoppers = {g for g in hopper_groups - set(agents) if group_members(g)}
                seen[:] = [len(hoppers), len(marked(scrub)), len(marked(daemon))]
                return (len(hoppers) == sessions
                        and len(set(marked(scrub)) - decoy_pids) == sessions
                        and len(set(marked(daemon)) - decoy_pids) >= sessions)

            seen: list[int] = []
            try:
                await poll_until(escapers_up, seconds=20)
            except trio.TooSlowError:
                raise AssertionError(f"escapers not up: {seen}") from None
            assert len(watchdogs_of(owner.pid)) == 1
            mine = set(marked(scrub) + marked(daemon)) - decoy_pids
            t0 = time.monotonic()
            owner.send_signal(signal.SIGKILL)
            owner.wait()

            def all_gone() -> bool:
                return (not any(_alive(p) for p in [*agents, *helpers, *mine])
                        and not any(group_members(g) for g in groups))

            try:
                await poll_until(all_gone, seconds=GRACE + 1 + MARGIN, interval=0.005)
            except trio.TooSlowError:
                left = ([p for p in [*agents, *helpers, *mine] if _alive(p)],
                        {g: group_members(g) for g in groups},
                        SyncLeaseStore(state / "acpx").list_all(), watchdogs_of(owner.pid))
                raise AssertionError(f"survivors: {left}") from None
            elapsed = time.monotonic() - t0
            await poll_until(lambda: watchdogs_of(owner.pid) == [], seconds=5)
            log = (tmp_path / "wd.log").read_text()
            sys.stderr.write(f"owner-death cleanup took {elapsed:.3f}s; watchdog: {log}\n")
            assert all(d.alive() for d in decoys)
            leases = SyncLeaseStore(state / "acpx").list_all()
            assert leases and all(x.state is LeaseState.CLOSED for x in leases), leases
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        for d in decoys:
            d.close()


@pytest.mark.parametrize("containment", [
    pytest.param("cgroup", marks=pytest.mark.skipif(
        not PROBE.usable, reason=f"no usable cgroup: {PROBE.reason}")),
    "process-group",
])
async def test_a_setsid_hopper_dies_with_its_dead_owner_and_the_lease_closes(
    tmp_path: Path, containment: str,
) -> None:
    """Three agents that ignore SIGTERM, each running a hopper that leaves its session at
    every hop (no ``killpg`` reaches its next hop).  Cgroup mode: the watchdog ran its pid
    waves first (3.5 s of them cannot outrun such a hopper on a busy ``/proc``) and only then
    ``cgroup.kill``ed the leaf, and left the leases ``closing``; the leaves are now ended
    beside the waves.  Process-group mode: the hoppers outlived the watchdog (and the next
    start); a re-scan now kills a doomed lease's process the moment it reads it."""
    hop = new_marker()
    state = tmp_path / "state"
    sessions = 3
    owner = start_owner(state, sessions, ["--ignore-stdin-eof", "--ignore-sigterm",
                                          "--spawn-setsid-hopper", hop],
                        containment=containment)
    groups: set[int] = set()
    try:
        with cleanup_marker(hop, groups), trio.fail_after(60):
            records = await trio.to_thread.run_sync(read_records, owner, sessions + 1)
            agents = {int(str(r["pid"])) for r in records if r["kind"] == "agent"}
            groups.update(agents)
            leaves = [x.cgroup for x in SyncLeaseStore(state / "acpx").list_all()
                      if x.root_pid in agents and x.cgroup is not None]
            assert len(leaves) == (sessions if containment == "cgroup" else 0)
            await poll_until(lambda: len(marked(hop)) >= sessions, seconds=20)  # hopping
            assert len(watchdogs_of(owner.pid)) == 1
            t0 = time.monotonic()
            owner.send_signal(signal.SIGKILL)
            owner.wait()
            await poll_until(lambda: watchdogs_of(owner.pid) == [],
                             seconds=GRACE + 1 + MARGIN, interval=0.005)
            elapsed = time.monotonic() - t0
            leases = SyncLeaseStore(state / "acpx").list_all()
            assert leases and all(x.state is LeaseState.CLOSED for x in leases), (
                leases, (tmp_path / "wd.log").read_text())
            assert not await trio.to_thread.run_sync(
                lambda: any(os.path.exists(x) for x in leaves))
            for _ in range(20):  # a hopper is easy to miss once: look several times
                assert marked(hop) == [], "a hopper outlived its owner's watchdog"
            sys.stderr.write(f"watchdog done {elapsed:.3f}s after the owner's SIGKILL\n")
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


@pytest.mark.slow
async def test_second_owner_on_the_same_state_dir_is_left_alone(tmp_path: Path) -> None:
    state = tmp_path / "state"
    owners = [start_owner(state, 1, ["--ignore-stdin-eof"]) for _ in range(2)]
    try:
        with trio.fail_after(60):
            agents = []
            for owner in owners:
                recs = await trio.to_thread.run_sync(read_records, owner, 2)
                agents.append(next(int(str(r["pid"])) for r in recs if r["kind"] == "agent"))
            await poll_until(lambda: all(len(watchdogs_of(o.pid)) == 1 for o in owners))
            owners[0].send_signal(signal.SIGKILL)
            owners[0].wait()
            try:
                await poll_until(lambda: not _alive(agents[0]), seconds=GRACE + 1 + MARGIN)
            except trio.TooSlowError:
                log = tmp_path / "wd.log"
                raise AssertionError(
                    f"agent {agents[0]} of the killed owner lives; watchdogs "
                    f"{watchdogs_of(owners[0].pid)}; log {log.read_text() if log.exists() else ''}"
                    f"; leases {SyncLeaseStore(state / 'acpx').list_all()}"
                ) from None
            await poll_until(lambda: watchdogs_of(owners[0].pid) == [], seconds=5)
            assert _alive(agents[1]), "the live owner's agent was killed"
            assert len(watchdogs_of(owners[1].pid)) == 1
            leases = SyncLeaseStore(state / "acpx").list_all()
            states = {(x.owner_pid, x.state) for x in leases}
            assert states == {(owners[0].pid, LeaseState.CLOSED), (owners[1].pid, LeaseState.OPEN)}
            owners[1].send_signal(signal.SIGKILL)  # its own watchdog cleans up after it
            owners[1].wait()
            await poll_until(lambda: not _alive(agents[1]), seconds=GRACE + 1 + MARGIN)
    finally:
        for owner in owners:
            if owner.poll() is None:
                owner.kill()
                owner.wait()


async def test_normal_stop_ends_the_watchdog_and_kills_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No watchdog until the first agent starts; a normal stop ends it (without killing
    anything: the agents were closed by the runtime first, a bystander lives on)."""
    from acpx_trio._service.backends import BackendRegistry
    from acpx_trio._service.open_service import open_runtime_service

    monkeypatch.setenv(WATCHDOG_ENV, "1")
    me = os.getpid()
    agent = {"command": sys.executable, "args": ["-m", "acpx_trio.testing.mock_agent"]}
    bystander = subprocess.Popen(  # noqa: ASYNC220 (a decoy, started before any wait)
        [sys.executable, "-c", "import time; time.sleep(3600)"]
    )
    try:
        with trio.fail_after(30):
            async with open_runtime_service(
                workspace_dir=tmp_path, state_dir=tmp_path / "state", registry=BackendRegistry(),
                plugin_config={"agents": {"mock": agent}},
            ) as service:
                assert watchdogs_of(me) == []  # lazy: nothing to protect yet
                assert service.runtime is not None
                await service.runtime.ensure_session(session_key="s", agent="mock")
                (dog,) = watchdogs_of(me)  # armed before the agent was spawned
            # stop waited for the watchdog: it exited (and was reaped) before stop returned
            assert not _alive(dog)
            assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def _loaded(pid: int, library: str) -> bool:
    """Whether the process ``pid`` has mapped a file whose name contains ``library``."""
    return library in Path(f"/proc/{pid}/maps").read_text()


async def test_the_watchdog_loads_the_reap_once_its_owner_has_lived_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A just-armed watchdog is a bare interpreter (the agent's start is not slowed by an
    import of Trio and psutil beside it); once its owner has lived
    ``PRELOAD_SECONDS`` it has loaded what the reap needs (psutil's and msgspec's
    extensions mapped), so the reap after a death starts at once.  A normal stop still
    ends it without killing anything."""
    from acpx_trio import open_runtime_service
    from acpx_trio._process.watchdog_wait import PRELOAD_SECONDS

    monkeypatch.setenv(WATCHDOG_ENV, "1")
    me = os.getpid()
    agent = {"command": sys.executable, "args": ["-m", "acpx_trio.testing.mock_agent"]}
    with trio.fail_after(30):
        async with open_runtime_service(
            workspace_dir=tmp_path, state_dir=tmp_path / "state",
            plugin_config={"agents": {"mock": agent}},
        ) as service:
            runtime = service.require_runtime()
            started = time.monotonic()
            handle = await runtime.ensure_session(session_key="s", agent="mock")
            (dog,) = watchdogs_of(me)
            early = not _loaded(dog, "_psutil_linux")
            if time.monotonic() - started < PRELOAD_SECONDS / 2:  # (a slow machine: skip)
                assert early, "the watchdog loaded the reap as soon as it armed"
            await poll_until(lambda: _loaded(dog, "_psutil_linux")
                             and _loaded(dog, "msgspec"), seconds=PRELOAD_SECONDS + 10)
            assert time.monotonic() - started >= PRELOAD_SECONDS * 0.9
            await runtime.close(handle=handle, reason="done")
            assert _alive(dog)  # loading is not reaping: it still waits
        assert not _alive(dog)  # the normal stop ended it


@pytest.mark.parametrize("end", ["stop", "death"])
def test_a_stop_during_the_preload_is_read_at_once_and_a_death_waits_for_it(
    monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    """The preload runs beside the wait: the owner's ``stop`` is read while it runs (the
    owner's stop does not wait for an import); the owner's death returns only once it is
    over (the reap needs its modules, and two threads importing them could deadlock)."""
    import threading

    from acpx_trio._process import watchdog_wait

    monkeypatch.setattr(watchdog_wait, "PRELOAD_SECONDS", 0.0)
    started, release = threading.Event(), threading.Event()

    def preload() -> None:
        started.set()
        release.wait(30)

    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    read_fd, write_fd = os.pipe()
    out: list[bool] = []
    ticks = _start_ticks(owner.pid)
    waiter = threading.Thread(target=lambda: out.append(
        watchdog_wait.wait_owner_gone(read_fd, owner.pid, ticks, preload)))
    try:
        waiter.start()
        assert started.wait(10), "the preload did not start"
        if end == "stop":
            os.write(write_fd, watchdog_wait.STOP)
            waiter.join(5)
            assert out == [False], "a stop waited for the preload"
        else:
            owner.kill()
            owner.wait()
            waiter.join(0.3)
            assert out == [], "the death was reported before the preload was over"
            release.set()
            waiter.join(5)
            assert out == [True]
    finally:
        release.set()
        waiter.join(5)
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        os.close(read_fd)
        os.close(write_fd)


def _start_ticks(pid: int) -> int:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return int(data[data.rfind(b")") + 1:].split()[19])


@pytest.mark.slow
@pytest.mark.parametrize("cleaner", ["cli-reap", "start-up"])
async def test_pid_hopper_of_a_killed_owner_dies_at_reap_and_start_up(
    tmp_path: Path, cleaner: str
) -> None:
    """Without a watchdog, the hopper and the scrubbed member outlive their SIGKILLed owner;
    ``acpx-trio reap`` / the next start-up kill them (by group), decoys survive."""
    from _cli_helpers import run_cli

    from acpx_trio._service.backends import BackendRegistry
    from acpx_trio._service.open_service import open_runtime_service

    hop, scrub = new_marker(), new_marker()
    state = tmp_path / "state"
    args = ["--ignore-stdin-eof", "--ignore-sigterm", "--spawn-pid-hopper", hop,
            "--spawn-scrubbed-child", scrub]
    decoys = [Decoys(hop, "lease-decoy"), Decoys(scrub, "lease-decoy")]
    decoy_pids = {p for d in decoys for p in d.pids}
    groups: set[int] = set()
    owner = start_owner(state, 1, args, watchdog=False)
    try:
        with cleanup_marker(hop, groups), cleanup_marker(scrub, groups), trio.fail_after(60):
            recs = await trio.to_thread.run_sync(read_records, owner, 2)
            agent = next(int(str(r["pid"])) for r in recs if r["kind"] == "agent")
            groups.add(agent)

            def hopping() -> bool:
                groups.update(st[1] for p in marked(hop) if p not in decoy_pids
                              and (st := stat_ids(p)) is not None
                              and st[1] == st[2] and st[1] not in (p, agent))
                return len(groups) == 2 and len(set(marked(scrub)) - decoy_pids) == 1

            await poll_until(hopping, seconds=20)
            owner.send_signal(signal.SIGKILL)
            owner.wait()
            # no watchdog: all still there (a scan can miss a hopper mid-hop: look again)
            await poll_until(lambda: all(group_members(g) for g in groups), seconds=5)
            if cleaner == "cli-reap":
                result = await trio.to_thread.run_sync(
                    lambda: run_cli("reap", state_dir=state))
                assert result.returncode == 0, result.stderr
            else:
                async with open_runtime_service(
                    workspace_dir=tmp_path, state_dir=state, registry=BackendRegistry()
                ):
                    pass
            await poll_until(lambda: not any(group_members(g) for g in groups), seconds=5)
            assert all(d.alive() for d in decoys)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        for d in decoys:
            d.close()


def test_the_stopped_check_never_raises_when_descriptors_run_out() -> None:
    """Out of file descriptors (a client holding a thousand owner connections), reading
    ``/proc`` raised ``OSError: Too many open files`` out of the watchdog check, which
    crashed the warm owner's service: every later prompt failed until the owner's TTL."""
    script = (
        "import os, resource, psutil\n"
        "from acpx_trio._process.watchdog import _stopped\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit("
        "resource.RLIMIT_NOFILE)[1]))\n"
        "held = []\n"
        "try:\n"
        "    while True:\n"
        "        held.append(os.open(os.devnull, os.O_RDONLY))\n"
        "except OSError:\n"
        "    pass\n"
        "print(_stopped(os.getpid()))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
