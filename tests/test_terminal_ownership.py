"""Terminals are owned like agents, with real processes: a terminal command that leaves a
pid hopper (``setsid`` + fork/exit forever, tags inherited) and an ``env -i`` child (no tags,
in the command's process group) behind is gone after ``terminal/kill``, after session close,
and after its owner is SIGKILLed (the owner-death watchdog, no restart); decoys with the same
command lines survive."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from _escape_helpers import Decoys, cleanup_marker, group_members, marked, new_marker, stat_ids
from _escape_helpers import alive as _alive
from _proc_helpers import poll_until
from _runtime_helpers import RuntimeEnv, output, run
from test_watchdog import watchdogs_of

from acpx_trio._process.watchdog import WATCHDOG_ENV
from acpx_trio._store.lease_model import LeaseState
from acpx_trio._store.leases import SyncLeaseStore

REPO = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).with_name("_terminal_child.py")

_HOP = (
    "import os, sys, time\n"
    "os.setsid()\n"
    "with open(sys.argv[1] + '.tmp', 'w') as f: f.write(str(os.getpid()))\n"
    "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
    "while True:\n"
    "    time.sleep(0.002)\n"
    "    if os.fork():\n"
    "        os._exit(0)\n"
)
_SLEEP = "import sys, time\nopen(sys.argv[1], 'w').close()\nwhile True: time.sleep(3600)\n"


class Escapers:
    """Markers, scripts and the shell line that starts a hopper and an ``env -i`` child, waits
    until both are up (ready files), prints ``$$`` and holds."""

    def __init__(self, tmp: Path) -> None:
        self.hop, self.scrub = new_marker(), new_marker()
        (tmp / "hop.py").write_text(_HOP)
        (tmp / "scrub.py").write_text(_SLEEP)
        r1, r2 = tmp / f"{self.hop}.ready", tmp / f"{self.scrub}.ready"
        self.hop_ready = r1
        py = shlex.quote(sys.executable)
        self.line = (
            f"{py} {tmp / 'hop.py'} {r1} {self.hop} & "
            f"env -i {py} {tmp / 'scrub.py'} {r2} {self.scrub} & "
            f"while [ ! -e {r1} ] || [ ! -e {r2} ]; do sleep 0.01; done; "
            "echo $$; exec sleep 30"
        )
        self.groups: set[int] = set()
        self.decoys: list[Decoys] = []

    def up(self) -> bool:
        """Both escapers run (the hopper's group, which outlives every hop, is its first pid:
        it wrote it once it had called ``setsid``)."""
        if self.hop_ready.exists():
            self.groups.add(int(self.hop_ready.read_text()))
        hoppers = [p for p in marked(self.hop) if p not in self.decoy_pids]
        self.groups.update(st[1] for p in hoppers if (st := stat_ids(p)) is not None)
        return bool(self.groups) and bool(set(marked(self.scrub)) - self.decoy_pids)

    @property
    def decoy_pids(self) -> set[int]:
        return {p for d in self.decoys for p in d.pids}

    def gone(self) -> bool:
        return (not any(group_members(g) for g in self.groups)
                and not (set(marked(self.scrub)) - self.decoy_pids)
                and not (set(marked(self.hop)) - self.decoy_pids))

    @contextlib.contextmanager
    def guarded(self) -> Iterator[None]:
        self.decoys = [Decoys(m, "lease-decoy") for m in (self.hop, self.scrub)]
        try:
            with cleanup_marker(self.hop, self.groups), cleanup_marker(self.scrub, ()):
                yield
                assert all(d.alive() for d in self.decoys), "a decoy was killed"
        finally:
            for d in self.decoys:
                d.close()


@contextlib.asynccontextmanager
async def _session(env: RuntimeEnv, tmp: Path) -> AsyncIterator[tuple[Escapers, Any, Any]]:
    """Escapers (decoys up, everything killed at the end), a runtime that allows terminals,
    and one mock-agent session; bounded in time."""
    esc = Escapers(tmp)
    with esc.guarded(), trio.fail_after(40):
        async with env.runtime(permissionMode="approve-all") as rt:
            yield esc, rt, await rt.ensure_session(session_key="t", agent="mock")


async def test_terminal_kill_takes_hopper_and_scrubbed_child(
    env: RuntimeEnv, tmp_path: Path
) -> None:
    async with _session(env, tmp_path) as (esc, rt, handle):
        # the command prints (and so is killed) only once both escapers are up
        text = output(await run(rt, handle, f"/terminal-kill {esc.line}"))
        assert re.fullmatch(r"first=\d+ signal=\w+ output=\d+", text), text
        esc.up()
        assert esc.groups, "the hopper never started"
        # the kill returned: nothing of the command's tree is left, at once
        assert esc.gone(), (esc.groups, marked(esc.hop), marked(esc.scrub))
        leases = [x for x in await _leases(env) if ":terminal:" in x.session_key]
        assert [x.state for x in leases] == [LeaseState.CLOSED]


@pytest.mark.parametrize("containment", ["auto", "process-group"])
async def test_terminal_killed_right_after_create_leaves_nothing(
    env: RuntimeEnv, containment: str
) -> None:
    """``terminal/kill`` at once after ``terminal/create`` (the agent waits for nothing): in
    cgroup mode the command's shim may not have entered its leaf yet; the kill must still
    take whatever the command starts.  It once found the leaf empty, signalled nothing, and
    the command's child lived on after the session closed (5 of 150; 33 of 150 leases left
    ``closing``)."""
    marker = new_marker()
    py = shlex.quote(sys.executable)
    line = f"{py} -c 'import time; time.sleep(600)' {marker}; true"
    trials = 30
    with cleanup_marker(marker, ()), trio.fail_after(90):
        async with env.runtime(permissionMode="approve-all", containment=containment) as rt:
            handle = await rt.ensure_session(session_key="t", agent="mock")
            text = output(await run(rt, handle, f"/terminal-kill-now {trials} {line}"))
            assert len(text.split()) == trials, text
            await rt.close(handle=handle, reason="test")
            assert marked(marker) == []
        assert marked(marker) == []
    terms = [x for x in await _leases(env) if ":terminal:" in x.session_key]
    assert len(terms) == trials
    assert {x.state for x in terms} == {LeaseState.CLOSED}, [x.state for x in terms]


async def _leases(env: RuntimeEnv) -> list[Any]:
    store = SyncLeaseStore(env.root / "leases")
    return await trio.to_thread.run_sync(store.list_all)


async def test_session_close_takes_hopper_and_scrubbed_child(
    env: RuntimeEnv, tmp_path: Path
) -> None:
    from acpx_trio._events import TextDeltaEvent

    async with _session(env, tmp_path) as (esc, rt, handle):
        started = trio.Event()

        async def hold() -> None:
            async with contextlib.aclosing(
                rt.run_turn(handle=handle, text=f"/terminal-hold {esc.line}")
            ) as events:
                async for event in events:
                    if isinstance(event, TextDeltaEvent) and "first=" in event.text:
                        started.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hold)
            await started.wait()
            await poll_until(esc.up, seconds=20, interval=0.002)
            await rt.close(handle=handle, reason="test")
        assert esc.gone(), (esc.groups, marked(esc.hop), marked(esc.scrub))
    leases = await _leases(env)
    assert leases and {x.state for x in leases} == {LeaseState.CLOSED}, leases


def _start_owner(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)


@pytest.mark.slow
async def test_sigkilled_owner_terminal_dies_by_watchdog(tmp_path: Path) -> None:
    """No restart: the owner's watchdog (armed before the terminal was spawned) kills the
    terminal's tree, hopper and ``env -i`` child included."""
    esc = Escapers(tmp_path)
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENCLAW_SKIP_ACPX_RUNTIME", "OPENCLAW_ACPX_RUNTIME_STARTUP_PROBE",
                        WATCHDOG_ENV)}
    state = tmp_path / "state"
    with esc.guarded(), trio.fail_after(60):
        owner = _start_owner(
            [sys.executable, str(CHILD), str(state), f"/terminal-hold {esc.line}"],
            {**env, "PYTHONPATH": path},
        )
        try:
            assert owner.stdout is not None
            line = await trio.to_thread.run_sync(owner.stdout.readline)
            assert line, "owner exited early"
            pid = json.loads(line)["pid"]
            await poll_until(esc.up, seconds=20, interval=0.002)
            assert len(watchdogs_of(owner.pid)) == 1
            owner.send_signal(signal.SIGKILL)
            owner.wait()
            await poll_until(lambda: not _alive(pid) and esc.gone(), seconds=10,
                             interval=0.005)
            await poll_until(lambda: watchdogs_of(owner.pid) == [], seconds=5)
        finally:
            if owner.poll() is None:
                owner.kill()
                owner.wait()
        leases = await trio.to_thread.run_sync(SyncLeaseStore(state / "acpx").list_all)
        terms = [x for x in leases if ":terminal:" in x.session_key]
        assert terms and all(x.state is LeaseState.CLOSED for x in terms), leases
