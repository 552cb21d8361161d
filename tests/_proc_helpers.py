"""Real-process helpers for reaper and identity tests.

:class:`ProcessLab` starts process trees from a small node script and guarantees that every
process it started is SIGKILLed when the test ends, pass or fail: processes are found by the
pids they report, by identity (start ticks), and by a per-lab environment marker that even
env-scrubbed and daemonised members keep.

A tree is described by a *spec* (a dict):

``role``          label written to the ready file
``ignore_term``   ignore SIGTERM
``children``      list of child specs
``fork``          start this child with ``os.fork`` (cheap; same command line as its parent)
                  instead of exec'ing a new interpreter
``daemon``        double fork + ``setsid`` (re-parented away from the tree at once)
``scrub_env``     exec this child without the two lease tag variables
``argv``          extra command-line arguments for an exec'd child (e.g. lease tag flags)
``comm``          set ``/proc/self/comm`` (e.g. a name with spaces and parentheses)
``exit``          exit right after reporting ready (to leave zombies or re-parented kids)
``setsid``        call ``setsid()`` first (leave the parent's process group and session)

Each process writes ``<readydir>/<pid>`` = ``{"role", "ticks", "ppid"}`` once it has set up its
signal handling and started its children, then sleeps until killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import trio

from acpx_trio._process.identity import read_start_ticks
from acpx_trio._process.spare_leaf import SPARE_MARK
from acpx_trio._process.tags import lease_args, lease_env

REPO_ROOT = Path(__file__).resolve().parent.parent
SCOPE_KEY = "ACPX_TEST_LAB_SCOPE"
TAG_KEYS = ("OPENCLAW_ACPX_LEASE_ID", "OPENCLAW_GATEWAY_INSTANCE_ID")

NODE_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys

    SCRIPT = os.path.abspath(__file__)
    TAG_KEYS = ("OPENCLAW_ACPX_LEASE_ID", "OPENCLAW_GATEWAY_INSTANCE_ID")
    KEEP = []

    def ticks():
        with open("/proc/self/stat", "rb") as fh:
            data = fh.read()
        return int(data[data.rfind(b")") + 1:].split()[19])

    def exec_argv(child, readydir):
        return [sys.executable, SCRIPT, json.dumps(child), readydir] + list(child.get("argv", []))

    def child_env(child):
        env = dict(os.environ)
        if child.get("scrub_env"):
            for key in TAG_KEYS:
                env.pop(key, None)
        return env

    def become(child, readydir):
        # in a fresh process: turn into the child node (never returns)
        try:
            if child.get("fork"):
                node(child, readydir)
            else:
                os.execve(sys.executable, exec_argv(child, readydir), child_env(child))
        finally:
            os._exit(1)

    def start_child(child, readydir):
        if child.get("daemon"):
            pid = os.fork()
            if pid == 0:
                os.setsid()
                if os.fork() == 0:
                    become(child, readydir)
                os._exit(0)
            os.waitpid(pid, 0)
        elif child.get("fork"):
            if os.fork() == 0:
                become(child, readydir)
        else:
            # keep the Popen alive: a collected Popen may reap its child (we want zombies)
            KEEP.append(subprocess.Popen(exec_argv(child, readydir), env=child_env(child),
                                         close_fds=True, stdin=subprocess.DEVNULL))

    def node(spec, readydir):
        if spec.get("setsid"):
            os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_IGN if spec.get("ignore_term") else signal.SIG_DFL)
        if spec.get("comm"):
            with open("/proc/self/comm", "w") as fh:
                fh.write(spec["comm"])
        for child in spec.get("children", []):
            start_child(child, readydir)
        me = os.getpid()
        tmp = os.path.join(readydir, ".%d.tmp" % me)
        with open(tmp, "w") as fh:
            json.dump({"role": spec.get("role", ""), "ticks": ticks(), "ppid": os.getppid()}, fh)
        os.rename(tmp, os.path.join(readydir, str(me)))
        if spec.get("exit"):
            os._exit(0)
        while True:
            signal.pause()

    if __name__ == "__main__":
        node(json.loads(sys.argv[1]), sys.argv[2])
    """
)

OWNER_SCRIPT = textwrap.dedent(
    """
    # A stand-in gateway: records leases, spawns tagged trees, then waits to be SIGKILLed.
    import json, os, signal, subprocess, sys
    import msgspec
    from acpx_trio._process.identity import boot_id, process_info, self_identity
    from acpx_trio._process.tags import lease_env
    from acpx_trio._store.lease_model import new_lease
    from acpx_trio._store.leases import SyncLeaseStore

    state_dir, gw, lab_dir, node_script, plan_json = sys.argv[1:6]
    plan = json.loads(plan_json)
    store = SyncLeaseStore(state_dir)
    me_pid, me_ct = self_identity()
    manifest = {"owner_pid": me_pid, "leases": {}}
    for i, item in enumerate(plan):
        lease = new_lease(gateway_instance_id=gw, session_key="s%d" % i, wrapper_root=lab_dir,
                          command=["node-script"], owner_pid=me_pid, owner_start_time=me_ct)
        store.save(lease)  # pending lease first, as the runtime does
        readydir = os.path.join(lab_dir, "owner-ready-%d" % i)
        os.mkdir(readydir)
        os.chmod(readydir, 0o777)
        env = dict(os.environ)
        env.update(lease_env(lease.lease_id, gw))
        if item["kind"] == "dead":
            proc = subprocess.Popen([sys.executable, "-c", "pass"], env=env)
            info = process_info(proc.pid)
            proc.wait()
        else:
            proc = subprocess.Popen([sys.executable, node_script, json.dumps(item["spec"]),
                                     readydir], env=env, stdin=subprocess.DEVNULL)
            info = process_info(proc.pid)
        if item["kind"] != "pending" and info is not None:
            store.save(msgspec.structs.replace(
                lease, root_pid=proc.pid, root_start_ticks=info.start_ticks,
                root_create_time=info.create_time, boot_id=boot_id()))
        manifest["leases"][lease.lease_id] = {"readydir": readydir, "kind": item["kind"]}
    tmp = os.path.join(lab_dir, "manifest.tmp")
    with open(tmp, "w") as fh:
        json.dump(manifest, fh)
    os.rename(tmp, os.path.join(lab_dir, "manifest.json"))
    while True:
        signal.pause()
    """
)


def count_nodes(spec: Mapping[str, Any]) -> int:
    """How many processes a spec reports ready (daemon intermediates do not report)."""
    return 1 + sum(count_nodes(c) for c in spec.get("children", []))


def tree_spec(
    *,
    ignore_term_child: bool = False,
    daemon: bool = False,
    fork: bool = True,
    grandchildren: int = 1,
    children: int = 2,
) -> dict[str, Any]:
    """root -> ``children`` children -> ``grandchildren`` each (+ an optional setsid daemon)."""
    kids: list[dict[str, Any]] = []
    for i in range(children):
        kids.append(
            {
                "role": f"child-{i}",
                "fork": fork,
                "ignore_term": ignore_term_child and i == 0,
                "children": [
                    {"role": f"grandchild-{i}-{j}", "fork": fork} for j in range(grandchildren)
                ],
            }
        )
    if daemon:
        kids.append({"role": "daemon", "daemon": True, "fork": fork})
    return {"role": "root", "children": kids}


@dataclass
class Member:
    pid: int
    role: str
    ticks: int
    ppid: int


@dataclass
class Spawned:
    popen: subprocess.Popen[bytes] | None
    readydir: Path
    expected: int
    members: dict[int, Member] = field(default_factory=dict)

    @property
    def pids(self) -> list[int]:
        return sorted(self.members)

    def by_role(self, role: str) -> Member:
        return next(m for m in self.members.values() if m.role == role)


def read_members(readydir: Path) -> dict[int, Member]:
    out: dict[int, Member] = {}
    for entry in readydir.iterdir():
        if entry.name.isdigit():
            try:
                data = json.loads(entry.read_text())
            except (OSError, ValueError):
                continue
            out[int(entry.name)] = Member(
                int(entry.name), data["role"], int(data["ticks"]), int(data["ppid"])
            )
    return out


def is_alive(pid: int, ticks: int | None = None) -> bool:
    """The process exists, is not a zombie and (if given) still has these start ticks."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.Error:
        return False
    return ticks is None or read_start_ticks(pid) == ticks


async def poll_until(
    predicate: Callable[[], bool], *, seconds: float = 20.0, interval: float = 0.01
) -> None:
    """Poll ``predicate`` on the real clock until it holds; ``trio.TooSlowError`` after
    ``seconds``."""
    with trio.fail_after(seconds):
        while True:
            if predicate():
                return
            await trio.sleep(interval)


async def wait_zombie(member: Member, parent: Member) -> None:
    """Wait until ``member`` exited and is a zombie (its parent never reaps it)."""

    def state(pid: int) -> str:
        try:
            data = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError as exc:
            return f"gone ({exc.__class__.__name__})"
        return data[data.rfind(b")") + 2 :].split()[0].decode()

    await poll_until(lambda: state(member.pid) != "S" and state(member.pid) != "R")
    if state(member.pid) != "Z":
        raise AssertionError(
            f"{member} is {state(member.pid)}, not a zombie; parent {parent} is "
            f"{state(parent.pid)}"
        )


def _wait_dead(procs: Sequence[psutil.Process], timeout: float) -> None:
    """Block until none of ``procs`` runs any more, event-driven (pidfd + poll, no sleeping).

    A pidfd turns readable when its process exits, before anyone reaps it: zombies count as
    dead (the container's init may be slow to reap them)."""
    fds: list[int] = []
    try:
        for proc in procs:
            try:
                fd = os.pidfd_open(proc.pid)
            except OSError:
                continue  # gone
            if _running(proc):  # psutil checks that the pid was not recycled
                fds.append(fd)
            else:
                os.close(fd)
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        pending = set(fds)
        while pending and (left := deadline - time.monotonic()) > 0:
            for fd, _event in poller.poll(left * 1000):
                pending.discard(fd)
                poller.unregister(fd)
    finally:
        for fd in fds:
            os.close(fd)


def _running(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


class ProcessLab:
    """Starts real process trees for one test and kills all of them afterwards."""

    def __init__(self) -> None:
        self.gateway_id = f"gw-test-{uuid.uuid4().hex}"
        self.scope = uuid.uuid4().hex
        self.dir = Path(tempfile.mkdtemp(prefix="acpx-lab-"))
        os.chmod(self.dir, 0o755)  # processes run as another user must reach their readydir
        self.script = self.dir / "node.py"
        self.script.write_text(NODE_SCRIPT)
        os.chmod(self.script, 0o644)
        self.spawned: list[Spawned] = []
        self.popens: list[subprocess.Popen[bytes]] = []
        self._n = 0

    # -- starting ------------------------------------------------------------------------
    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in TAG_KEYS}
        env[SCOPE_KEY] = self.scope
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        return env

    def new_readydir(self) -> Path:
        self._n += 1
        readydir = self.dir / f"ready-{self._n}"
        readydir.mkdir()
        os.chmod(readydir, 0o777)
        return readydir

    def spawn(
        self,
        spec: Mapping[str, Any],
        *,
        lease_id: str | None = None,
        gateway_id: str | None = None,
        env_tags: bool = True,
        argv_tags: bool = False,
        user: int | None = None,
    ) -> Spawned:
        """Start a tree.  With ``lease_id`` it is tagged (env and/or argv) with ``lease_id`` and
        ``gateway_id`` (default: this lab's gateway id)."""
        gw = gateway_id or self.gateway_id
        env = self.base_env()
        extra: list[str] = []
        if lease_id is not None:
            if env_tags:
                env.update(lease_env(lease_id, gw))
            if argv_tags:
                extra = lease_args(lease_id, gw)
        readydir = self.new_readydir()
        popen = subprocess.Popen(
            [sys.executable, str(self.script), json.dumps(spec), str(readydir), *extra],
            env=env,
            stdin=subprocess.DEVNULL,
            process_group=0,
            user=user,
        )
        self.popens.append(popen)
        spawned = Spawned(popen, readydir, count_nodes(spec))
        self.spawned.append(spawned)
        return spawned

    def spawn_command(
        self,
        argv: Sequence[str],
        *,
        lease_id: str | None = None,
        user: int | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start any command (tagged with ``lease_id`` for this lab's gateway if given)."""
        env = self.base_env()
        if lease_id is not None:
            env.update(lease_env(lease_id, self.gateway_id))
        env.update(extra_env or {})
        popen = subprocess.Popen(
            list(argv), env=env, stdin=subprocess.DEVNULL, process_group=0, user=user, cwd="/"
        )
        self.popens.append(popen)
        return popen

    async def wait_exec(self, popen: subprocess.Popen[bytes], name: str) -> None:
        """Wait until ``popen`` runs the program ``name`` (its exec is done)."""

        def done() -> bool:
            with contextlib.suppress(psutil.Error):
                cmd = psutil.Process(popen.pid).cmdline()
                return bool(cmd) and os.path.basename(cmd[0]) == name
            return False

        await poll_until(done)

    def spawn_owner(self, state_dir: Path, plan: Sequence[Mapping[str, Any]]) -> subprocess.Popen[
        bytes
    ]:
        """Start a stand-in gateway (see ``OWNER_SCRIPT``) that records leases in
        ``state_dir`` and spawns one tagged tree per plan item (``kind``: ``"normal"``,
        ``"pending"`` (lease never completed) or ``"dead"`` (root already exited))."""
        script = self.dir / "owner.py"
        script.write_text(OWNER_SCRIPT)
        popen = subprocess.Popen(
            [sys.executable, str(script), str(state_dir), self.gateway_id, str(self.dir),
             str(self.script), json.dumps(list(plan))],
            env=self.base_env(),
            stdin=subprocess.DEVNULL,
            process_group=0,
        )
        self.popens.append(popen)
        return popen

    async def owner_manifest(self) -> dict[str, Any]:
        path = self.dir / "manifest.json"
        await poll_until(path.exists, seconds=30.0)
        manifest: dict[str, Any] = json.loads(path.read_text())
        return manifest

    async def wait_ready(self, spawned: Spawned, seconds: float = 30.0) -> Spawned:
        """Wait until every member of ``spawned`` reported ready (real clock)."""

        def ready() -> bool:
            spawned.members = read_members(spawned.readydir)
            return len(spawned.members) >= spawned.expected

        await poll_until(ready, seconds=seconds)
        return spawned

    def track(self, readydir: Path, expected: int) -> Spawned:
        spawned = Spawned(None, readydir, expected)
        self.spawned.append(spawned)
        return spawned

    # -- inspecting ----------------------------------------------------------------------
    def scoped_processes(self) -> list[psutil.Process]:
        """Live processes carrying this lab's marker (env scrubbing keeps it)."""
        found = []
        for proc in psutil.process_iter():
            if proc.pid == os.getpid():
                continue
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                if proc.environ().get(SCOPE_KEY) == self.scope:
                    found.append(proc)
            except (psutil.Error, OSError):
                continue
        return found

    def tagged_alive(self, gateway_id: str | None = None) -> list[int]:
        """Pids of live lab processes tagged (env) with ``gateway_id`` (default: the lab's)."""
        gw = gateway_id or self.gateway_id
        out = []
        for proc in self.scoped_processes():
            try:
                env = proc.environ()
                cmd = proc.cmdline()
            except (psutil.Error, OSError):
                continue
            if env.get(TAG_KEYS[1]) == gw or gw in cmd:
                out.append(proc.pid)
        return out

    # -- cleaning up ---------------------------------------------------------------------
    def cleanup(self) -> None:
        """SIGKILL everything this lab started (identity-checked), wait, remove the lab dir."""
        victims: list[psutil.Process] = []
        for spawned in self.spawned:
            with contextlib.suppress(OSError):
                spawned.members.update(read_members(spawned.readydir))
            for m in spawned.members.values():
                if is_alive(m.pid, m.ticks):
                    with contextlib.suppress(psutil.Error):
                        victims.append(psutil.Process(m.pid))
        for sub in self.dir.glob("owner-ready-*"):
            for m in read_members(sub).values():
                if is_alive(m.pid, m.ticks):
                    with contextlib.suppress(psutil.Error):
                        victims.append(psutil.Process(m.pid))
        for _ in range(3):  # a member may fork while we kill: sweep by marker until quiet
            victims += self.scoped_processes()
            if not victims:
                break
            for proc in victims:
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(signal.SIGKILL)  # psutil refuses a recycled pid
            _wait_dead(victims, timeout=5.0)
            victims = []
        for popen in self.popens:
            with contextlib.suppress(OSError):
                popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired, ChildProcessError):
                popen.wait(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def process_lab() -> Iterator[ProcessLab]:
    lab = ProcessLab()
    try:
        yield lab
    finally:
        lab.cleanup()


def spares_of(pid: int) -> list[int]:
    """The spare launches (``spare_wait`` processes) among ``pid``'s children."""
    found = []
    for child in psutil.Process(pid).children():
        with contextlib.suppress(psutil.Error):
            if SPARE_MARK in child.cmdline():
                found.append(child.pid)
    return found
