"""The close path: lease moves (open -> closed only when the tree is proved gone), one shared
``/proc`` pass for concurrent cleanups, the session record's one-hop close mark."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import msgspec
import pytest
import trio
from _proc_helpers import poll_until
from _runtime_helpers import MOCK, RuntimeEnv

from acpx_trio._process import agent as agent_module
from acpx_trio._process.agent import AgentProcess, AgentSpawn
from acpx_trio._process.identity import ProcessInfo
from acpx_trio._process.owned import close_owned
from acpx_trio._process.reaper import ProcessCleanupDeps
from acpx_trio._process.shared_scan import pids_tagged, scan_passes, shared_scan
from acpx_trio._process.tags import GATEWAY_ENV_KEY, LEASE_ENV_KEY, lease_ids_in_environ
from acpx_trio._store.lease_model import LeaseState, ProcessLease, new_lease
from acpx_trio._store.leases import LeaseStore
from acpx_trio._store.sessions import SessionRecord, SessionStore

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")


class RecordingStore(LeaseStore):
    """A lease store that remembers every state move asked of it."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.moves: list[LeaseState] = []

    async def mark_state(self, lease_id: str, state: LeaseState | str) -> ProcessLease | None:
        self.moves.append(LeaseState(state))
        return await super().mark_state(lease_id, state)


async def _run_and_close(env: RuntimeEnv, argv: list[str]) -> tuple[AgentProcess, RecordingStore]:
    store = RecordingStore(env.root / "leases")
    agent = AgentProcess(
        AgentSpawn(
            argv=tuple(argv), cwd=str(env.workspace), session_key="k",
            gateway_instance_id=env.gateway_id, kill_grace=0.5,
        ),
        lease_store=store,
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            await agent.wait_recorded()
            await agent.aclose("test")
    return agent, store


async def test_clean_close_moves_the_lease_open_to_closed_directly(
    env: RuntimeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an agent that exits once its stdin ends is not signalled; closed as it starts, it may
    # need longer than the 0.2 s it is given to get there (Python's start on a loaded
    # machine), and is then rightly signalled: this close gives it the time it needs
    monkeypatch.setattr(agent_module, "STDIN_GRACE_SECONDS", 20.0)
    agent, store = await _run_and_close(env, MOCK)
    assert store.moves == [LeaseState.CLOSED]  # nothing had to be signalled: one write
    lease = await store.load(agent.lease_id or "")
    assert lease is not None and lease.state is LeaseState.CLOSED
    assert agent.returncode == 0 and agent.cleanup_result is not None
    assert agent.cleanup_result.terminated_pids == []


async def test_close_that_must_signal_goes_through_closing(env: RuntimeEnv) -> None:
    agent, store = await _run_and_close(env, [*MOCK, "--ignore-stdin-eof"])
    assert store.moves == [LeaseState.CLOSING, LeaseState.CLOSED]
    lease = await store.load(agent.lease_id or "")
    assert lease is not None and lease.state is LeaseState.CLOSED
    assert agent.pid is not None and agent.cleanup_result is not None
    assert agent.pid in agent.cleanup_result.terminated_pids


def test_lease_ids_in_environ_reads_every_complete_entry() -> None:
    key = LEASE_ENV_KEY.encode()
    env = b"A=1\0" + key + b"=one\0B=2\0" + key + b"=two\0" + key + b"=cut"
    assert lease_ids_in_environ(env) == {b"one", b"two"}  # the unterminated one is no entry
    assert lease_ids_in_environ(key + b"=first\0") == {b"first"}
    assert lease_ids_in_environ(b"X" + key + b"=no\0") == set()
    assert lease_ids_in_environ(b"") == set()


def _execed(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return LEASE_ENV_KEY.encode() in fh.read()
    except OSError:
        return False


async def shared_pids_tagged(lease_id: str, root_pid: int) -> list[ProcessInfo]:
    """The listing of one shared pass (:func:`shared_scan`)."""
    return (await shared_scan(lease_id, root_pid))[0]


async def test_concurrent_cleanups_share_one_proc_pass(tmp_path: Path) -> None:
    gateway = f"gw-{uuid.uuid4().hex[:8]}"
    leases = [str(uuid.uuid4()) for _ in range(3)]
    procs = []
    for lease in leases:
        env = {**os.environ, LEASE_ENV_KEY: lease, GATEWAY_ENV_KEY: gateway}
        procs.append(await trio.lowlevel.open_process(
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
            env=env, start_new_session=True,  # as agents are: their groups hold only them
        ))
    decoy = await trio.lowlevel.open_process(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
        env={**os.environ, LEASE_ENV_KEY: "someone-else", GATEWAY_ENV_KEY: gateway},
        start_new_session=True,
    )
    # every one past its exec: in the middle of one a process's environment reads empty,
    # and the scans then list it as an undecided candidate (read again later), tags or not
    await poll_until(lambda: all(_execed(p.pid) for p in [*procs, decoy]), seconds=10)
    try:
        results: dict[str, set[int]] = {}
        before = scan_passes()

        async def one(lease: str) -> None:
            found = await shared_pids_tagged(lease, 0)
            results[lease] = {p.pid for p in found if p.lease_id == lease}

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for lease in leases:
                    nursery.start_soon(one, lease)
        assert scan_passes() - before == 1  # one pass served all three
        for lease, proc in zip(leases, procs, strict=True):
            assert results[lease] == {proc.pid}
        # the union never lists an untagged or foreign-tagged process as a candidate
        listed = {p.pid for p in pids_tagged(leases, ())}
        assert decoy.pid not in listed and {p.pid for p in procs} <= listed
        # a request made after a pass finished gets a pass of its own
        assert procs[0].pid in {p.pid for p in await shared_pids_tagged(leases[0], 0)}
        assert scan_passes() - before == 2
    finally:
        for proc in [*procs, decoy]:
            assert proc.stdin is not None
            await proc.stdin.aclose()
            with trio.fail_after(10):
                await proc.wait()


async def test_session_mark_closed_is_one_read_modify_write(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "sessions")
    assert await store.mark_closed("missing") is False
    record = SessionRecord(session_key="k", agent="mock", cwd=str(tmp_path),
                           backend_session_id="s1", reset_on_next_ensure=True)
    await store.save(record)
    assert await store.mark_closed("k") is True
    loaded = await store.load("k")
    assert loaded is not None and loaded.closed and loaded.reset_on_next_ensure
    await store.save(SessionRecord(session_key="j", agent="mock", cwd=str(tmp_path),
                                   backend_session_id="s2"))
    assert await store.mark_closed("j", discard=True) is True
    other = await store.load("j")
    assert other is not None and other.closed and other.reset_on_next_ensure


async def test_a_close_whose_tree_cleanup_fails_leaves_the_lease_closing(
    tmp_path: Path,
) -> None:
    """Process-group mode: when the tree's cleanup itself fails (here its process listing),
    nothing proved the tree gone, so the lease stays ``closing`` for the next sweep (it used
    to end ``closed``); the direct child is still killed and reaped."""
    store = LeaseStore(tmp_path)
    lease = new_lease(gateway_instance_id="gw-fail", session_key="k", wrapper_root=str(tmp_path),
                      command=["sleep"])
    await store.save(lease)
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", "import signal; signal.pause()"], start_new_session=True,
        env={**os.environ, LEASE_ENV_KEY: lease.lease_id, GATEWAY_ENV_KEY: "gw-fail"})
    lease = msgspec.structs.replace(lease, root_pid=proc.pid, process_group_id=proc.pid)
    await store.save(lease)

    async def broken(*_: object) -> object:
        raise RuntimeError("the process listing failed")

    deps = ProcessCleanupDeps(list_processes=broken, kill_process=broken, wait_exit=broken,
                              self_pid=os.getpid(), self_uid=os.getuid())

    async def mark(state: LeaseState) -> object:
        return await store.mark_state(lease.lease_id, state)

    with trio.fail_after(20), trio.CancelScope(shield=True):
        result = await close_owned(proc, lease, mark=mark, create_time=None, start_ticks=None,
                                   grace=0.2, deps=deps, log=logging.getLogger("test"),
                                   what="agent")
    assert result is None and proc.returncode is not None
    (after,) = await store.list_all()
    assert after.state == LeaseState.CLOSING
