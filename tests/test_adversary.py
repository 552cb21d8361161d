"""Attacks on acpx-trio's promises, with real processes (engineer ``adversary``).

Each test states the attack and the promise it checks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
import trio
from _proc_helpers import poll_until
from test_watchdog import (
    GRACE,
    MARGIN,
    _alive,
    _loaded,
    read_records,
    start_owner,
    watchdogs_of,
)

from acpx_trio._process.cgroup import probe_cgroup_kill
from acpx_trio._process.watchdog_wait import PRELOAD_SECONDS
from acpx_trio._store.lease_model import LeaseState
from acpx_trio._store.leases import SyncLeaseStore


def _proc_file(pid: int, name: str) -> bytes:
    with open(f"/proc/{pid}/{name}", "rb") as fh:
        return fh.read()


def _hold(pids: list[int]) -> list[psutil.Process]:
    """``pids`` as they are now (alive), so that a later kill never reaches a process that
    took a pid number after it was freed (other tests fork fast enough to wrap it)."""
    held = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            held.append(psutil.Process(pid))
    return held


def _kill_all(owner: subprocess.Popen[bytes], held: list[psutil.Process]) -> None:
    if owner.poll() is None:
        owner.kill()
        owner.wait()
    for proc in held:
        with contextlib.suppress(psutil.Error):
            proc.kill()  # (psutil refuses a pid reused since it was held)


@pytest.mark.slow
async def test_agent_that_kills_the_watchdog_still_dies_with_its_owner(tmp_path: Path) -> None:
    """Attack: the agent runs as our uid, so it can find the owner-death watchdog (its argv
    names the owner pid) and SIGKILL it, then wait for the owner to die.  Promise: no agent
    outlives its owner, without a restart.  The owner notices its watchdog died and arms a
    new one; when the owner is then SIGKILLed, its agent (which ignores SIGTERM and stdin
    EOF) is gone within grace + 1 s (plus margin)."""
    state = tmp_path / "state"
    owner = start_owner(state, 1, ["--ignore-stdin-eof", "--ignore-sigterm"])
    agents: list[int] = []
    held: list[psutil.Process] = []
    try:
        with trio.fail_after(60):
            records = await trio.to_thread.run_sync(read_records, owner, 2)
            agents = [int(str(r["pid"])) for r in records]
            held = _hold(agents)
            await poll_until(lambda: len(watchdogs_of(owner.pid)) == 1)
            first = watchdogs_of(owner.pid)[0]
            os.kill(first, signal.SIGKILL)  # what a hostile agent of ours can do
            try:
                await poll_until(lambda: [p for p in watchdogs_of(owner.pid)
                                          if p != first and _alive(p)] != [], seconds=10)
            except trio.TooSlowError:
                raise AssertionError("the owner did not re-arm a killed watchdog") from None
            second = next(p for p in watchdogs_of(owner.pid) if p != first)
            assert psutil.Process(second).status() != psutil.STATUS_ZOMBIE
            # the bound holds once the new watchdog has loaded its reap's modules (a just-armed
            # one is a bare interpreter that loads them in the background: watchdog_wait)
            await poll_until(lambda: _loaded(second, "_psutil_linux") and _loaded(
                second, "msgspec"), seconds=PRELOAD_SECONDS + 10)
            owner.send_signal(signal.SIGKILL)
            owner.wait()
            try:
                await poll_until(lambda: not any(_alive(p) for p in agents),
                                 seconds=GRACE + 1 + MARGIN, interval=0.005)
            except trio.TooSlowError:
                raise AssertionError(
                    f"agents {[p for p in agents if _alive(p)]} outlived their owner"
                ) from None
            await poll_until(lambda: watchdogs_of(owner.pid) == [], seconds=5)
            leases = SyncLeaseStore(state / "acpx").list_all()
            assert leases and all(x.state is LeaseState.CLOSED for x in leases), leases
    finally:
        _kill_all(owner, held)


# -- the error contract under a hostile environment -------------------------------------------

import errno  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402

from _runtime_helpers import RuntimeEnv, pid_gone, wait_gone  # noqa: E402
from test_error_contract import AGENTS, _walk  # noqa: E402

from acpx_trio._errors import AcpxError  # noqa: E402


async def test_state_dirs_deleted_mid_run_give_only_typed_errors(env: RuntimeEnv) -> None:
    """Attack: someone removes the state dir and the lease dir while a session is live.
    Promise: every public coroutine raises only ``AcpxError`` subclasses (or succeeds), none
    hangs, and the agent is gone at the end (the leak-checked gateway fixture checks it)."""
    async with env.runtime(agents=AGENTS, probeAgent="mock") as rt:
        handle = await rt.ensure_session(session_key="k", agent="mock")
        pid = handle.agent_pid
        assert pid is not None
        shutil.rmtree(env.state_dir)
        shutil.rmtree(env.root / "leases")
        await _walk(rt, handle)
    await wait_gone(pid)


async def test_disk_full_gives_only_typed_errors(
    env: RuntimeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: the disk fills up (every fsync fails with ENOSPC) while a session is live.
    Promise: only ``AcpxError`` subclasses, no hang, no agent left behind."""
    async with env.runtime(agents=AGENTS, probeAgent="mock") as rt:
        handle = await rt.ensure_session(session_key="k", agent="mock")
        pid = handle.agent_pid
        assert pid is not None

        def full(fd: int) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", full)
        outcomes = await _walk(rt, handle)
        monkeypatch.undo()
    assert any(isinstance(e, AcpxError) for e in outcomes.values()), outcomes
    await wait_gone(pid)


#: An agent that answers the handshake, then on ``session/prompt`` answers a request id it
#: never got and closes its stdout while it keeps running (stdin open, SIGTERM honoured).
ROGUE = r'''
import json, os, sys, time
def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n"); sys.stdout.flush()
for line in sys.stdin:
    msg = json.loads(line)
    method, mid = msg.get("method"), msg.get("id")
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": mid, "result": {"protocolVersion": 1,
              "agentCapabilities": {}, "authMethods": []}})
    elif method == "session/new":
        send({"jsonrpc": "2.0", "id": mid, "result": {"sessionId": "rogue-1"}})
    elif method == "session/prompt":
        send({"jsonrpc": "2.0", "id": 987654, "result": {"stopReason": "end_turn"}})
        send({"jsonrpc": "2.0", "id": "never-sent", "error": {"code": -1, "message": "x"}})
        sys.stdout.close(); os.close(1)
        while True:
            time.sleep(1)
'''


async def test_agent_that_answers_unknown_ids_and_closes_stdout(env: RuntimeEnv) -> None:
    """Attack: an agent answers request ids it never got, then closes stdout but stays alive.
    Promise: the turn ends with a typed ``error`` event (or an ``AcpxError``), bounded in time;
    the agent is killed by ``close``."""
    from acpx_trio._events import DoneEvent, ErrorEvent

    script = env.root / "rogue.py"
    script.write_text(ROGUE)
    agents = {"rogue": {"command": sys.executable, "args": [str(script)]}}
    async with env.runtime(agents=agents) as rt:
        handle = await rt.ensure_session(session_key="r", agent="rogue")
        pid = handle.agent_pid
        assert pid is not None
        events: list[object] = []
        try:
            with trio.fail_after(20):
                async with contextlib.aclosing(rt.run_turn(handle=handle, text="hi")) as turn:
                    async for event in turn:
                        events.append(event)
        except AcpxError as exc:
            events.append(exc)
        last = events[-1]
        assert isinstance(last, (ErrorEvent, AcpxError, DoneEvent)), events
        assert not isinstance(last, DoneEvent) or last.stop_reason != "end_turn", (
            "a response to an id never sent was taken as the prompt's answer")
        try:
            with trio.fail_after(20):
                await rt.close(handle=handle)
        except AcpxError:
            pass
        await wait_gone(pid)
        assert pid_gone(pid)


# -- credentials ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_watchdog_and_argv_carry_no_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: read every process's ``/proc/PID/cmdline`` (world-readable) and the
    watchdog's environment.  Promise: an ``ACPX_AUTH_*`` credential is in no command line
    and not in the watchdog's environment (it needs none); the agent still gets it."""
    secret = "SEKRIT-adversary-4242"
    monkeypatch.setenv("ACPX_AUTH_ADVERSARY_KEY", secret)
    state = tmp_path / "state"
    owner = start_owner(state, 1, [])
    agents: list[int] = []
    held: list[psutil.Process] = []
    try:
        with trio.fail_after(60):
            records = await trio.to_thread.run_sync(read_records, owner, 2)
            agents = [int(str(r["pid"])) for r in records]
            held = _hold(agents)
            await poll_until(lambda: len(watchdogs_of(owner.pid)) == 1)
            (watchdog,) = watchdogs_of(owner.pid)
            for pid in [owner.pid, watchdog, *agents]:
                assert secret.encode() not in _proc_file(pid, "cmdline"), pid
            assert secret.encode() not in _proc_file(watchdog, "environ")
            assert secret.encode() in _proc_file(agents[0], "environ")
    finally:
        _kill_all(owner, held)


# -- the warm owner ---------------------------------------------------------------------------


def test_connection_flood_past_the_fd_limit_does_not_stop_the_warm_owner(tmp_path: Path) -> None:
    """Attack: open more connections to ``owner.sock`` than the owner has descriptors (a
    flood of clients, or just many CLI invocations under a low ``ulimit -n``), sending
    nothing.  Promise: a connection problem never stops the owner: it keeps its warm session
    (same owner, same agent) and serves the next prompt once the flood ends."""
    import socket
    import time

    from _cli_helpers import run_cli
    from _warm_helpers import owner_info

    state = tmp_path / "state"
    first = run_cli("prompt", "--session", "k", "/pid", state_dir=state)
    assert first.returncode == 0, first.stderr
    info = owner_info(state)
    assert info is not None
    owner = psutil.Process(int(info["pid"]))
    limit = owner.num_fds() + 24
    owner.rlimit(psutil.RLIMIT_NOFILE, (limit, limit))
    socks: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 10
        while owner.num_fds() < limit and time.monotonic() < deadline:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(0.2)
            socks.append(s)
            with contextlib.suppress(OSError):  # backlog full: the owner is at its limit
                s.connect(str(state / "owner.sock"))
        assert owner.num_fds() >= limit - 2, "the flood did not reach the owner's fd limit"
        assert owner.is_running() and owner.status() != psutil.STATUS_ZOMBIE, "owner died"
    finally:
        for s in socks:
            s.close()
    try:
        second = run_cli("prompt", "--session", "k", "/pid", state_dir=state)
        assert second.returncode == 0, second.stderr
        assert second.stdout == first.stdout, "the warm agent was lost"
        info2 = owner_info(state)
        assert info2 is not None and int(info2["pid"]) == owner.pid
        assert "cannot accept connections" in (state / "owner.log").read_text()
    finally:
        run_cli("sessions", "close", "k", state_dir=state)


# -- escapes ----------------------------------------------------------------------------------

from _escape_helpers import Decoys, cleanup_marker, marked, new_marker  # noqa: E402

#: An agent wrapper (argv: MODE MARKER), then the mock agent.  ``reexec``: leave a child with
#: an empty environment in our group, then re-exec itself with an empty environment (the
#: root loses its tags).  ``vanish``: a child ``setsid()``s, forks a grandchild with an
#: empty environment (no tags, own session, re-parented to init) and exits.
ESCAPER = r'''
import os, sys
mode, marker = sys.argv[1], sys.argv[2]
SLEEP = "import time\nwhile True: time.sleep(3600)\n"
py = sys.executable
if mode == "reexec" and os.environ.get("OPENCLAW_ACPX_LEASE_ID"):
    if os.fork() == 0:
        os.execve(py, [py, "-c", SLEEP, marker], {})
    os.execve(py, [py, __file__, mode, marker], {})
if mode == "vanish":
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execve(py, [py, "-c", SLEEP, marker], {})
        os._exit(0)
    os.wait()
os.execv(py, [py, "-m", "acpx_trio.testing.mock_agent"])
'''


async def _escape_run(env: RuntimeEnv, mode: str) -> tuple[list[int], bool]:
    """Run the escaper agent in ``mode``, close it; returns (escapers left, decoys alive)."""
    marker = new_marker()
    script = env.root / "escaper.py"
    script.write_text(ESCAPER)
    agents = {"esc": {"command": sys.executable, "args": [str(script), mode, marker]}}
    decoys = Decoys(marker, "lease-decoy")
    groups: set[int] = set()
    try:
        with cleanup_marker(marker, groups), trio.fail_after(30):
            async with env.runtime(agents=agents) as rt:
                handle = await rt.ensure_session(session_key="e", agent="esc")
                assert handle.agent_pid is not None
                groups.add(handle.agent_pid)
                await poll_until(lambda: set(marked(marker)) - set(decoys.pids) != set())
                if mode == "reexec":
                    env_root = _proc_file(handle.agent_pid, "environ")
                    assert b"OPENCLAW_ACPX_LEASE_ID" not in env_root  # the attack happened
                await rt.close(handle=handle)
            left = sorted(set(marked(marker)) - set(decoys.pids))
            return left, decoys.alive()
    finally:
        decoys.close()


async def test_agent_that_reexecs_with_an_empty_environment_is_still_caught(
    env: RuntimeEnv,
) -> None:
    """Attack: the agent drops its tags (``execve`` with ``env={}``) and leaves an untagged
    child in its process group.  Promise: the verified root (pid + start time survive
    ``exec``) and its group are ours: both die on close; identical decoys survive."""
    left, decoys_alive = await _escape_run(env, "reexec")
    assert left == [], f"escaped: {left}"
    assert decoys_alive


@pytest.mark.xfail(not probe_cgroup_kill().usable, strict=True,
                   reason="known limit of process-group mode: an untagged process in its own "
                   "session, re-parented to init, cannot be proven ours without a leaf cgroup "
                   "(see README, Limits of containment)")
async def test_agent_child_that_setsids_scrubs_env_and_double_forks(env: RuntimeEnv) -> None:
    """Attack: a child of the agent ``setsid()``s, double-forks, and its grandchild runs with
    an empty environment.  Promise (README): no agent process outlives its owner.  It does:
    nothing links it to us any more (no tags, another session and group, parent init)."""
    left, decoys_alive = await _escape_run(env, "vanish")
    assert decoys_alive
    assert left == [], f"escaped: {left}"


# -- the state dir ----------------------------------------------------------------------------


def test_warm_prompt_on_an_unsafe_state_dir_names_the_reason(tmp_path: Path) -> None:
    """Attack: ``acpx/sessions`` is a symlink to a world-writable directory.  Promise: it is
    refused with a typed error naming the path and the fix — on the warm path too (the owner
    fails to start: the client quotes its reason, not a traceback line); nonzero exit."""
    from _cli_helpers import run_cli

    state = tmp_path / "state"
    (state / "acpx").mkdir(parents=True)
    for d in (state, state / "acpx"):
        d.chmod(0o700)
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    (state / "acpx" / "sessions").symlink_to(loose)
    for args in (("exec", "hi"), ("prompt", "--session", "k", "hi")):
        done = run_cli(*args, state_dir=state)
        assert done.returncode != 0, args
        assert "ACPX_STATE_FILE_UNSAFE" in done.stderr, (args, done.stderr)
        assert f"chmod 700 {state / 'acpx' / 'sessions'}" in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr and 'File "' not in done.stderr, done.stderr


# -- terminals --------------------------------------------------------------------------------


async def test_hostile_terminal_requests(env: RuntimeEnv) -> None:
    """Attack: ``terminal/create`` with a symlinked or ``..`` cwd leading outside the session
    cwd, NUL bytes and ``=`` in names (what ``execve`` cannot take), env entries that try to
    replace our ownership tags, a huge ``outputByteLimit``.  Promise: refusals are typed
    (``ACP_TERMINAL_REFUSED``/``ACP_FS_REFUSED``, invalid params), never a raw ``ValueError``,
    and leave no lease; the command always carries our real tags; output stays bounded."""
    from acpx_trio._acp import CreateTerminalRequest
    from acpx_trio._acp._messages import EnvVariable
    from acpx_trio._errors import AcpRuntimeError
    from acpx_trio._runtime.terminals import MAX_OUTPUT_LIMIT

    (env.workspace / "out").symlink_to(env.root)
    bad: dict[str, dict[str, object]] = {
        "symlink cwd": {"command": "true", "cwd": str(env.workspace / "out")},
        "dotdot cwd": {"command": "true", "cwd": str(env.workspace / "out" / ".." / "..")},
        "NUL command": {"command": "ec\0ho"},
        "NUL arg": {"command": "echo", "args": ["a\0b"]},
        "= in env name": {"command": "true", "env": [EnvVariable(name="A=B", value="x")]},
        "NUL in env": {"command": "true", "env": [EnvVariable(name="A", value="x\0y")]},
    }
    with trio.fail_after(30):
        async with env.runtime(permissionMode="approve-all") as rt:
            await rt.ensure_session(session_key="t", agent="mock")
            terms = rt._sessions["t"].terminals
            assert terms is not None
            before = len(await env.lease_store.list_all())
            for name, kw in bad.items():
                with pytest.raises(AcpRuntimeError) as info:
                    await terms.create(CreateTerminalRequest(session_id="x", **kw))  # type: ignore[arg-type]
                assert info.value.rpc_code == -32602, name
            assert len(await env.lease_store.list_all()) == before  # nothing was started
            evil = [EnvVariable(name=n, value="evil") for n in
                    ("OPENCLAW_ACPX_LEASE_ID", "OPENCLAW_GATEWAY_INSTANCE_ID")]
            made = await terms.create(CreateTerminalRequest(
                session_id="x", command="sh", output_byte_limit=10**18, env=evil,
                args=["-c", "echo $OPENCLAW_ACPX_LEASE_ID $OPENCLAW_GATEWAY_INSTANCE_ID"]))
            term = terms.terminals[made.terminal_id]
            await term.exited.wait()
            assert term.output.text() == f"{term.lease_id} {env.gateway_id}\n"
            assert term.output.limit == MAX_OUTPUT_LIMIT


@pytest.mark.slow
async def test_terminal_dies_with_its_sigkilled_owner_without_restart(tmp_path: Path) -> None:
    """Attack: SIGKILL the owner while an agent's terminal runs a detached ``sleep``.
    Promise: no process outlives its owner — the watchdog reaps the terminal (a lease of the
    dead owner) with no restart; an identical decoy survives."""
    import json

    from test_watchdog import REPO

    from acpx_trio._process.watchdog import WATCHDOG_ENV

    child = Path(__file__).with_name("_terminal_child.py")
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {k: v for k, v in os.environ.items() if k not in (
        "OPENCLAW_SKIP_ACPX_RUNTIME", "OPENCLAW_ACPX_RUNTIME_STARTUP_PROBE", WATCHDOG_ENV)}
    decoy = subprocess.Popen(["sleep", "60"], start_new_session=True)  # noqa: ASYNC220
    owner = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, str(child), str(tmp_path / "state")], stdout=subprocess.PIPE,
        env={**env, "PYTHONPATH": path})
    pid = 0
    held: list[psutil.Process] = []
    try:
        with trio.fail_after(60):
            assert owner.stdout is not None
            line = await trio.to_thread.run_sync(owner.stdout.readline)
            pid = int(json.loads(line)["pid"])
            held = _hold([pid])
            await poll_until(lambda: len(watchdogs_of(owner.pid)) == 1)
            owner.send_signal(signal.SIGKILL)
            owner.wait()
            try:
                await poll_until(lambda: not _alive(pid), seconds=GRACE + 1 + MARGIN)
            except trio.TooSlowError:
                raise AssertionError(f"terminal {pid} outlived its owner") from None
            assert decoy.poll() is None
    finally:
        _kill_all(owner, held)
        decoy.kill()
        decoy.wait()


@pytest.mark.slow
async def test_owner_and_watchdog_killed_together_next_start_up_reaps(tmp_path: Path) -> None:
    """Attack: the owner and its watchdog die together (an agent of our uid can do it; the
    owner is stopped first so it cannot re-arm).  Known limit: the agents live on until the
    next start-up.  Promise: that start-up reaps them (SIGTERM-ignoring agents included)."""
    from acpx_trio._service.backends import BackendRegistry
    from acpx_trio._service.open_service import open_runtime_service

    state = tmp_path / "state"
    owner = start_owner(state, 1, ["--ignore-stdin-eof", "--ignore-sigterm"])
    agents: list[int] = []
    held: list[psutil.Process] = []
    try:
        with trio.fail_after(60):
            records = await trio.to_thread.run_sync(read_records, owner, 2)
            agents = [int(str(r["pid"])) for r in records]
            held = _hold(agents)
            await poll_until(lambda: len(watchdogs_of(owner.pid)) == 1)
            (watchdog,) = watchdogs_of(owner.pid)
            owner.send_signal(signal.SIGSTOP)
            os.kill(watchdog, signal.SIGKILL)
            owner.send_signal(signal.SIGKILL)
            owner.wait()  # a SIGKILLed child: immediate
            assert all(_alive(p) for p in agents)  # nobody watched: they live on (for now)
            async with open_runtime_service(
                workspace_dir=tmp_path, state_dir=state, registry=BackendRegistry(),
                plugin_config={"killGraceSeconds": GRACE},
            ) as svc:
                reap = svc.startup_reap
                assert reap is not None
            await poll_until(lambda: not any(_alive(p) for p in agents), seconds=10)
    finally:
        _kill_all(owner, held)


def test_oversized_warm_prompt_is_a_typed_error_and_the_owner_lives(tmp_path: Path) -> None:
    """Attack: a prompt over the owner's 16 MiB frame limit on ``prompt --session``.
    Promise: a typed error (``ACPX_OWNER_PROTOCOL``, no traceback), nonzero exit; the owner
    and its warm session carry on."""
    from _cli_helpers import run_cli

    from acpx_trio._owner.wire import MAX_FRAME_BYTES

    state = tmp_path / "state"
    first = run_cli("prompt", "--session", "k", "/pid", state_dir=state)
    assert first.returncode == 0, first.stderr
    try:
        big = run_cli("prompt", "--session", "k", state_dir=state,
                      input="x" * (MAX_FRAME_BYTES + 1))
        assert big.returncode != 0
        assert "ACPX_OWNER_PROTOCOL" in big.stderr and "Traceback" not in big.stderr, big.stderr
        again = run_cli("prompt", "--session", "k", "/pid", state_dir=state)
        assert again.returncode == 0 and again.stdout == first.stdout, again.stderr
    finally:
        run_cli("sessions", "close", "k", state_dir=state)


#: An agent that accepts ``authenticate`` and answers every prompt with an error that echoes
#: the credentials it was given (``VERIFY_KEY`` from config ``auth``, ``ADV_SERVICE_TOKEN``
#: inherited from the owner), as upstream APIs do in "invalid key ..." messages.
ECHO_KEY = r'''
import json, os, sys
def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n"); sys.stdout.flush()
keys = os.environ.get("VERIFY_KEY", "") + " " + os.environ.get("ADV_SERVICE_TOKEN", "")
for line in sys.stdin:
    msg = json.loads(line)
    method, mid = msg.get("method"), msg.get("id")
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": mid, "result": {"protocolVersion": 1,
              "agentCapabilities": {}, "authMethods": [{"id": "verify-key", "name": "k"}]}})
    elif method == "authenticate":
        send({"jsonrpc": "2.0", "id": mid, "result": {}})
    elif method == "session/new":
        send({"jsonrpc": "2.0", "id": mid, "result": {"sessionId": "s-1"}})
    elif method == "session/prompt":
        send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32000,
              "message": f"upstream rejected {keys}",
              "data": {"details": f"401: {keys} invalid", keys: [keys]}}})
'''


async def test_credentials_echoed_in_agent_errors_are_redacted(
    env: RuntimeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: the agent answers with an error quoting the credentials it holds (config
    ``auth`` and a credential-like variable of the owner).  Promise: credential values never
    reach error messages, ``--json`` events (``message``, ``detail``, ``rpc_data``) or logs."""
    import msgspec

    from acpx_trio._events import ErrorEvent

    secrets = ("SEKRIT-config-5150", "SEKRIT-owner-env-6160")
    monkeypatch.setenv("ADV_SERVICE_TOKEN", secrets[1])
    script = env.root / "echo_key.py"
    script.write_text(ECHO_KEY)
    agents = {"echo": {"command": sys.executable, "args": [str(script)]}}
    with trio.fail_after(30):
        async with env.runtime(agents=agents, auth={"verify-key": secrets[0]}) as rt:
            handle = await rt.ensure_session(session_key="e", agent="echo")
            events: list[object] = []
            async with contextlib.aclosing(rt.run_turn(handle=handle, text="hi")) as turn:
                async for event in turn:
                    events.append(event)
            await rt.close(handle=handle)
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert errors, events
    shown = msgspec.json.encode(errors).decode() + repr(errors)
    assert "[redacted]" in shown
    for secret in secrets:
        assert secret not in shown, shown


#: On ``session/prompt``: 3,000 answers to ids never sent, each quoting the credential, then
#: a proper answer.
FLOOD_UNKNOWN = r'''
import json, os, sys
def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
key = os.environ.get("ADV_SERVICE_TOKEN", "")
for line in sys.stdin:
    msg = json.loads(line)
    method, mid = msg.get("method"), msg.get("id")
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": mid, "result": {"protocolVersion": 1,
              "agentCapabilities": {}, "authMethods": []}})
    elif method == "session/new":
        send({"jsonrpc": "2.0", "id": mid, "result": {"sessionId": "s-1"}})
    elif method == "session/prompt":
        for i in range(3000):
            send({"jsonrpc": "2.0", "id": 10**6 + i,
                  "error": {"code": -1, "message": f"key {key} rejected"}})
        send({"jsonrpc": "2.0", "id": mid, "result": {"stopReason": "end_turn"}})
    sys.stdout.flush()
'''


async def test_unknown_response_flood_is_bounded_and_redacted_in_logs(
    env: RuntimeEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Attack: the agent floods answers to request ids it never got, quoting a credential
    (each one is a warning in the owner's log, ``owner.log`` in warm mode).  Promise: logs
    never carry a credential, and an agent cannot grow the log without bound."""
    import logging

    from acpx_trio._events import DoneEvent

    secret = "SEKRIT-flood-7170"
    monkeypatch.setenv("ADV_SERVICE_TOKEN", secret)
    script = env.root / "flood.py"
    script.write_text(FLOOD_UNKNOWN)
    agents = {"flood": {"command": sys.executable, "args": [str(script)]}}
    caplog.set_level(logging.WARNING)
    with trio.fail_after(30):
        async with env.runtime(agents=agents) as rt:
            handle = await rt.ensure_session(session_key="f", agent="flood")
            events: list[object] = []
            async with contextlib.aclosing(rt.run_turn(handle=handle, text="hi")) as turn:
                async for event in turn:
                    events.append(event)
            await rt.close(handle=handle)
    assert isinstance(events[-1], DoneEvent), events
    lines = [r.getMessage() for r in caplog.records if "request id" in r.getMessage()
             or "further ones are dropped" in r.getMessage()]
    assert 1 <= len(lines) <= 101, len(lines)
    assert not [m for m in (r.getMessage() for r in caplog.records) if secret in m]
