"""Spare leaves (#22): from a runtime's third agent start on, the agent becomes a spare launch
that was already inside its own leaf cgroup (the cgroup move, 5-11 ms of kernel wait, is paid
before the start is asked for).  What must not change: the agent's environment, working
directory and descriptors; the lease saved before the agent runs anything; nothing left
behind by a close, a stop, a reap or an owner's SIGKILL; nothing escaping.  Real processes
throughout."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import trio
from _attack_helpers import seen_running, still_marked
from _cli_helpers import run_cli
from _escape_helpers import Decoys, cleanup_marker, new_marker
from _proc_helpers import poll_until, spares_of
from hypothesis import given
from hypothesis import strategies as st
from test_containment import ALL_VARIANTS, SOAK, _start_owner, needs_cgroup, soak
from test_watchdog import watchdogs_of

from acpx_trio import BackendRegistry, LeaseStore, open_runtime_service
from acpx_trio._process.cgroup import gateway_parent, leaf_members, shim_argv
from acpx_trio._process.spare_leaf import (
    PERL_PATHS,
    SPARES,
    SpareLeaves,
    frameable,
    shell_pwd,
    spare_command,
    spare_frame,
)
from acpx_trio._process.spare_wait import decode_frame
from acpx_trio._service.lazy_runtime import LazyAcpxRuntime, RuntimeFactoryParams
from acpx_trio._store.config import resolve_config
from acpx_trio._store.lease_model import LeaseState
from acpx_trio.lowlevel import reap_gateway

MOCK = f"{sys.executable} -m acpx_trio.testing.mock_agent"
TAGS = ("OPENCLAW_ACPX_LEASE_ID", "OPENCLAW_GATEWAY_INSTANCE_ID")


def _environ(pid: int) -> dict[str, str]:
    env = psutil.Process(pid).environ()
    return {k: v for k, v in env.items() if k not in TAGS}


def _fds(pid: int) -> list[str]:
    return sorted(os.listdir(f"/proc/{pid}/fd"), key=int)


def _service(tmp: Path, mode: str = "cgroup"):  # type: ignore[no-untyped-def]
    return open_runtime_service(
        workspace_dir=tmp, state_dir=tmp / "state", registry=BackendRegistry(),
        plugin_config={"containment": mode, "agents": {"mock": MOCK}},
    )


async def _two_starts(runtime) -> None:  # type: ignore[no-untyped-def]
    for key in ("one", "two"):
        handle = await runtime.ensure_session(session_key=key, agent="mock")
        await runtime.close(handle=handle, reason="test")


def test_a_command_a_direct_spawn_would_refuse_takes_the_direct_path() -> None:
    env = {"PATH": "/usr/bin", "MULTI": "a\nb 'c' $HOME `x`", "BASH_FUNC_f%%": "() { :; }"}
    assert frameable(["agent", "--x=1"], env, "/w")
    assert frameable(["A=1"], env, "/w")  # no shell, no env(1): a program may hold "="
    assert not frameable([], env, "/w")
    assert not frameable([""], env, "/w")
    assert not frameable(["agent"], {"X": "a\0b"}, "/w")
    assert not frameable(["agent"], {"": "x"}, "/w")
    assert not frameable(["agent"], {"A=B": "x"}, "/w")
    with pytest.raises(ValueError):
        spare_frame(["agent"], {"A=B": "x"}, "/w")


_words = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)))
_names = _words.filter(lambda k: bool(k) and "=" not in k)


@given(argv=st.lists(_words, min_size=1).filter(lambda a: bool(a[0])),
       env=st.dictionaries(_names, _words), cwd=_words)
def test_a_frame_carries_the_command_exactly_and_any_cut_of_it_carries_nothing(
    argv: list[str], env: dict[str, str], cwd: str,
) -> None:
    frame = spare_frame(argv, env, cwd)
    decoded = decode_frame(frame)
    assert decoded is not None
    assert decoded == (os.fsencode(cwd), [os.fsencode(a) for a in argv],
                       {os.fsencode(k): os.fsencode(v) for k, v in env.items()})
    for cut in {0, 1, len(frame) // 2, len(frame) - 1}:
        assert decode_frame(frame[:cut]) is None
    assert decode_frame(frame + b"x\0") is None
    assert decode_frame(frame.replace(b"acpx-spare-1", b"acpx-spare-2", 1)) is None


_DUMP = ("import os, sys; sys.stdout.buffer.write(repr((sys.argv, os.getcwdb(), "
         "sorted(os.environb.items()), sorted(os.listdir('/proc/self/fd')))).encode())")


def _run_form(leaf: Path, form: str | None, argv: list[str], env: dict[str, str],
              cwd: str, cut: int | None = None) -> tuple[int, bytes]:
    """Run ``argv`` the way ``form`` does: ``"shim"`` (the direct path's shell), a perl
    path (the Perl spare) or ``None`` (the Python spare); its exit status and output."""
    if form == "shim":
        proc = subprocess.run(shim_argv(str(leaf), argv), env=env, cwd=cwd,
                              capture_output=True, timeout=30, check=False)
        return proc.returncode, proc.stdout
    read_end, write_end = os.pipe()
    spare = subprocess.Popen(spare_command(str(leaf), read_end, form), pass_fds=(read_end,),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"X": "y"},
                             cwd="/")
    os.close(read_end)
    frame = spare_frame(argv, shell_pwd(env, cwd), cwd)
    # a spare that could not enter its leaf has exited already: nothing reads the frame
    with contextlib.suppress(BrokenPipeError):
        os.write(write_end, frame if cut is None else frame[:cut])
    os.close(write_end)
    out, _ = spare.communicate(timeout=30)
    return spare.returncode, out


#: The system's perl (the spare's Perl form), or None (only the Python form is used).
PERL = next((p for p in PERL_PATHS if os.access(p, os.X_OK)), None)


def test_both_spare_forms_run_a_command_as_the_direct_path_does(tmp_path: Path) -> None:
    """The Python and (where there is a system perl) the Perl spare, given one frame, run
    the very argv, working directory, environment (values with newlines, ``=``, quotes,
    bytes that are not UTF-8; ``PWD`` as the shim's shell sets it, whatever was inherited)
    and descriptors the direct path's shim runs; a file without ``#!`` by ``/bin/sh`` as the
    shim does; given a cut frame, nothing."""
    (tmp_path / "leaf").mkdir()  # not a cgroup: entering it only writes a file
    work = tmp_path / "w d"
    work.mkdir()
    script = work / "no-shebang"
    script.write_text('echo "plain script: $1"\n')
    script.chmod(0o755)
    env = {"PATH": f"{work}:{os.environ['PATH']}", "EMPTY": "", "EQ": "k=v=w",
           "LINES": "a\nb 'c' $HOME `x`", "RAW": os.fsdecode(b"\xff\xfe")}
    spares = (None,) if PERL is None else (None, PERL)  # the Python form, the Perl form
    forms = ("shim", *spares)
    commands = [[sys.executable, "-c", _DUMP, "", "two words", os.fsdecode(b"\xff")],
                ["no-shebang", "arg"]]
    (tmp_path / "link").symlink_to(work)
    pwds = ({}, {"PWD": str(tmp_path)}, {"PWD": str(tmp_path / "link")})
    for argv, pwd in [(c, p) for c in commands for p in pwds]:
        runs = [_run_form(tmp_path / "leaf", form, argv, env | pwd, str(work)) for form in forms]
        assert runs[0][0] == 0 and all(run == runs[0] for run in runs), runs
    assert runs[0][1] == b"plain script: arg\n"
    # a name that is no shell identifier: the shim's shell drops it, the spare (as a
    # process-group spawn) passes the environment whole
    odd = env | {"BASH_FUNC_f%%": "() { :; }"}
    spared = [_run_form(tmp_path / "leaf", form, commands[0], odd, str(work))
              for form in spares]
    assert all(run == spared[0] for run in spared) and b"BASH_FUNC_f%%" in spared[0][1]
    for form in spares:
        assert _run_form(tmp_path / "leaf", form, commands[0], env, str(work), cut=30) == (
            0, b"")
        assert _run_form(tmp_path / "leaf", form, ["no-such-agent-xyz"], env,
                         str(work))[0] == 127
        # cannot enter its leaf (gone): runs nothing, exits 1
        assert _run_form(tmp_path / "gone", form, commands[0], env, str(work)) == (1, b"")


@needs_cgroup
async def test_third_start_becomes_the_spare_with_the_direct_environment(
    tmp_path: Path,
) -> None:
    async with _service(tmp_path) as svc:
        runtime = svc.require_runtime()
        handle = await runtime.ensure_session(session_key="one", agent="mock")
        await runtime.close(handle=handle, reason="test")
        assert spares_of(os.getpid()) == []  # a one-shot caller never pays for a spare
        direct = await runtime.ensure_session(session_key="two", agent="mock")
        await poll_until(lambda: len(spares_of(os.getpid())) == SPARES)
        spares = spares_of(os.getpid())
        assert all(psutil.Process(x).cmdline()[0] == (PERL or sys.executable) for x in spares)
        spared = await runtime.ensure_session(session_key="three", agent="mock")
        direct_pid = (await runtime.get_status(handle=direct)).agent_pid
        spared_pid = (await runtime.get_status(handle=spared)).agent_pid
        assert spared_pid in spares and direct_pid is not None
        # the very environment, directory and descriptors a direct spawn gives
        assert _environ(spared_pid) == _environ(direct_pid)
        assert psutil.Process(spared_pid).environ()["OPENCLAW_ACPX_LEASE_ID"] != (
            psutil.Process(direct_pid).environ()["OPENCLAW_ACPX_LEASE_ID"])
        assert psutil.Process(spared_pid).cwd() == psutil.Process(direct_pid).cwd()
        assert _fds(spared_pid) == _fds(direct_pid)
        leases = {x.root_pid: x for x in await LeaseStore(tmp_path / "state" / "acpx").list_all()}
        lease = leases[spared_pid]
        assert lease.state is LeaseState.OPEN and lease.cgroup is not None
        assert lease.root_create_time == psutil.Process(spared_pid).create_time()
        procs = await trio.Path(lease.cgroup, "cgroup.procs").read_text(encoding="ascii")
        assert procs.split() == [str(spared_pid)]
        await poll_until(lambda: len(spares_of(os.getpid())) == SPARES)  # refilled, after
        waiting = spares_of(os.getpid())
        parent = Path(lease.cgroup).parent
        await runtime.close(handle=spared, reason="test")
        assert (await LeaseStore(tmp_path / "state" / "acpx").load(lease.lease_id)) is not None
        await runtime.close(handle=direct, reason="test")
    # the service's stop discards the waiting spares and every leaf goes
    for pid in waiting:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    assert not parent.exists()


@needs_cgroup
async def test_the_next_launch_is_made_while_an_agent_starts_up(tmp_path: Path) -> None:
    """The pool refills as soon as a launch has started, while the start still waits on its
    agent (not once the start is over: a move into a leaf then would run beside the close
    that often follows it and hold up that agent's exit)."""
    slow = f"{MOCK} --slow-start 600000"  # answers nothing for ten minutes
    async with open_runtime_service(
        workspace_dir=tmp_path, state_dir=tmp_path / "state", registry=BackendRegistry(),
        plugin_config={"containment": "cgroup", "agents": {"mock": MOCK, "slow": slow}},
    ) as svc:
        runtime = svc.require_runtime()
        handle = await runtime.ensure_session(session_key="one", agent="mock")
        await runtime.close(handle=handle, reason="test")
        assert spares_of(os.getpid()) == []
        finished = False

        async def start() -> None:
            nonlocal finished
            try:
                await runtime.ensure_session(session_key="two", agent="slow")
            finally:
                finished = True

        async with trio.open_nursery() as nursery:
            nursery.start_soon(start)
            await poll_until(lambda: len(spares_of(os.getpid())) == SPARES)
            assert not finished  # still waiting on the agent's answer
            nursery.cancel_scope.cancel()


@needs_cgroup
async def test_process_group_mode_keeps_no_spare(tmp_path: Path) -> None:
    async with _service(tmp_path, "process-group") as svc:
        runtime = svc.require_runtime()
        await _two_starts(runtime)
        await _two_starts(runtime)
        assert spares_of(os.getpid()) == []


@needs_cgroup
async def test_reaps_leave_a_live_owners_spare_alone(tmp_path: Path) -> None:
    async with _service(tmp_path) as svc:
        runtime = svc.require_runtime()
        await _two_starts(runtime)
        await poll_until(lambda: len(spares_of(os.getpid())) == SPARES)
        spares = spares_of(os.getpid())
        # this process's own reap of its gateway, then another process's (the CLI)
        store = LeaseStore(tmp_path / "state" / "acpx")
        report = await reap_gateway(svc.gateway_instance_id, store,
                                    lease_dir=str(tmp_path / "state" / "acpx"))
        assert report.ok and not set(spares) & set(report.terminated_pids)
        done = await trio.to_thread.run_sync(lambda: run_cli("reap", state_dir=tmp_path / "state"))
        assert done.returncode == 0, done.stdout + done.stderr
        assert spares_of(os.getpid()) == spares
        handle = await runtime.ensure_session(session_key="three", agent="mock")
        assert (await runtime.get_status(handle=handle)).agent_pid in spares


@needs_cgroup
@pytest.mark.parametrize("perl", [True, False])
@pytest.mark.parametrize("cut", [0, 1, 20, -1])
async def test_a_half_sent_command_runs_nothing(tmp_path: Path, cut: int, perl: bool) -> None:
    """The owner dies while sending the command (``cut`` bytes of the frame arrive, then
    end of file): the spare (either form) runs nothing of it."""
    marker = tmp_path / "ran"
    async with trio.open_nursery() as nursery:
        pool = SpareLeaves(nursery, gateway_instance_id=f"gw-half-{cut + 1}-{perl}", perl=perl)
        for _ in range(2):
            assert await pool.take() is None
        pool.refill()
        await poll_until(lambda: pool.has_spare)
        spare = await pool.take()
        assert spare is not None
        frame = spare_frame(["/bin/sh", "-c", f"echo x > {marker}"], dict(os.environ),
                            str(tmp_path))
        await spare.become(frame[:cut])
        await spare.process.wait()
        assert spare.process.returncode == 0 and not await trio.Path(marker).exists()
        await spare.discard()
        assert not await trio.Path(spare.leaf).exists()
        # the whole frame runs it
        pool.refill()
        await poll_until(lambda: pool.has_spare)
        spare = await pool.take()
        assert spare is not None
        await spare.become(frame)
        await spare.process.wait()
        assert spare.process.returncode == 0 and await trio.Path(marker).exists()
        await spare.discard()
        await pool.aclose()


@needs_cgroup
async def test_no_credential_reaches_a_command_line(tmp_path: Path) -> None:
    """The spare's environment travels on its pipe: while it becomes the agent, no command
    line on the machine shows the credential."""
    secret = f"sk-test-{os.urandom(12).hex()}"
    seen: list[str] = []
    async with trio.open_nursery() as nursery:
        pool = SpareLeaves(nursery, gateway_instance_id="gw-secret")
        for _ in range(2):
            await pool.take()
        pool.refill()
        await poll_until(lambda: pool.has_spare)
        spare = await pool.take()
        assert spare is not None
        frame = spare_frame(["sleep", "1"], {**os.environ, "API_KEY": secret}, str(tmp_path))
        await spare.become(frame)
        for _ in range(50):
            for p in psutil.process_iter(["cmdline"]):
                seen.append(" ".join(p.info["cmdline"] or ()))
            if psutil.Process(spare.process.pid).cmdline()[:1] == ["sleep"]:
                break
            await trio.sleep(0.001)
        assert psutil.Process(spare.process.pid).environ()["API_KEY"] == secret
        assert not any(secret in line for line in seen)
        await spare.discard()
        await pool.aclose()


async def _owner_with_spare(tmp: Path, variant: str, marker: str) -> tuple[
        subprocess.Popen[bytes], dict[str, str]]:
    owner = _start_owner(tmp, variant, marker, "cgroup", watchdog=True, spares=True)
    try:
        assert owner.stdout is not None
        record = json.loads(await trio.to_thread.run_sync(owner.stdout.readline))
    except BaseException:  # the owner failed to start its agent: nothing of it stays
        owner.kill()
        owner.wait()
        raise
    return owner, record


@needs_cgroup
@pytest.mark.parametrize("variant", ("hopper-setsid-each", "daemon-emptyenv"))
async def test_owner_sigkilled_with_a_spare_launched_agent_and_a_spare_waiting(
    tmp_path: Path, variant: str,
) -> None:
    """The agent (an escaper) started from a spare, a new spare waiting: the owner is
    SIGKILLed; its watchdog kills both leaves, nothing of the variant survives."""
    await _owner_death_with_spares(tmp_path, variant)


@needs_cgroup
@pytest.mark.slow
@soak
@pytest.mark.parametrize("variant", ("hopper-setsid-each", "daemon-emptyenv"))
async def test_owner_sigkilled_with_spares_30(tmp_path: Path, variant: str) -> None:
    for i in range(SOAK):
        (tmp_path / str(i)).mkdir()
        await _owner_death_with_spares(tmp_path / str(i), variant)


async def _owner_death_with_spares(tmp_path: Path, variant: str) -> None:
    marker = new_marker()
    decoys = Decoys(marker, "lease-decoy")
    owner: subprocess.Popen[bytes] | None = None
    try:
        with cleanup_marker(marker, ()), trio.fail_after(90):
            # inside: a failed start leaves no decoy behind (two once outlived a failed run)
            owner, record = await _owner_with_spare(tmp_path, variant, marker)
            assert record["spare_launched"], "the agent did not start from a spare"
            await seen_running(marker, "hopper" in variant, set(decoys.pids))
            await poll_until(lambda: len(spares_of(owner.pid)) == SPARES)
            spares = spares_of(owner.pid)
            await poll_until(lambda: len(watchdogs_of(owner.pid)) == 1)
            owner.send_signal(signal.SIGKILL)
            owner.wait()
            leaves = [record["cgroup"], str(Path(record["cgroup"]).parent)]
            await poll_until(lambda: not any(os.path.exists(p) for p in leaves)
                             and not any(map(psutil.pid_exists, spares)), seconds=15)
            assert not await still_marked(marker, set(decoys.pids))
            assert decoys.alive()
    finally:
        if owner is not None and owner.poll() is None:
            owner.kill()
            owner.wait()
        decoys.close()


@needs_cgroup
@pytest.mark.parametrize("variant", ALL_VARIANTS)
async def test_nothing_escapes_the_close_of_a_spare_launched_agent(
    tmp_path: Path, variant: str,
) -> None:
    await _close_spare_launched(tmp_path, variant, 1)


@needs_cgroup
@pytest.mark.slow
@soak
@pytest.mark.parametrize("variant", ALL_VARIANTS)
async def test_nothing_escapes_the_close_of_a_spare_launched_agent_30(
    tmp_path: Path, variant: str,
) -> None:
    await _close_spare_launched(tmp_path, variant, SOAK)


async def _close_spare_launched(tmp_path: Path, variant: str, trials: int) -> None:
    """``trials`` escapers, each started from a spare of one runtime and closed."""
    marker = new_marker()
    decoys = Decoys(marker, "lease-decoy")
    attack = Path(__file__).with_name("_attack_agent.py")
    try:
        with cleanup_marker(marker, ()), trio.fail_after(90 + 5 * trials):
            async with open_runtime_service(
                workspace_dir=tmp_path, state_dir=tmp_path / "state",
                registry=BackendRegistry(),
                plugin_config={"containment": "cgroup", "killGraceSeconds": 0.3, "agents": {
                    "mock": MOCK,
                    "attack": f"{sys.executable} {attack} {variant} {marker}"}},
            ) as svc:
                runtime = svc.require_runtime()
                await _two_starts(runtime)
                for i in range(trials):
                    await poll_until(lambda: len(spares_of(os.getpid())) == SPARES)
                    spares = spares_of(os.getpid())
                    handle = await runtime.ensure_session(session_key=f"attack-{i}",
                                                          agent="attack")
                    assert (await runtime.get_status(handle=handle)).agent_pid in spares
                    await seen_running(marker, "hopper" in variant, set(decoys.pids))
                    await runtime.close(handle=handle, reason="test")
                    assert not await still_marked(marker, set(decoys.pids)), f"trial {i}"
            assert decoys.alive()
    finally:
        decoys.close()



@needs_cgroup
async def test_a_primed_pool_makes_one_launch_that_a_start_at_once_waits_for() -> None:
    """:meth:`SpareLeaves.prime` makes one launch with no request yet; a ``take`` right
    after it (before the pool's task has run) waits for that launch instead of taking the
    direct path, and a single request refills nothing."""
    gateway = f"gw-primed-{os.urandom(4).hex()}"  # its own: only this pool's leaves count
    async with trio.open_nursery() as nursery:
        pool = SpareLeaves(nursery, gateway_instance_id=gateway)
        pool.prime()
        spare = await pool.take()
        assert spare is not None and spare.alive()
        assert spare.process.pid in spares_of(os.getpid())
        made = [os.path.basename(spare.leaf)]
        assert _gateway_leaves(gateway) == made  # one, not SPARES
        pool.refill()  # one request: a one-shot caller pays for nothing more
        await trio.lowlevel.checkpoint()
        assert not pool.has_spare and _gateway_leaves(gateway) == made
        assert await spare.discard()
        await pool.aclose()
        assert spare.process.pid not in spares_of(os.getpid())
        assert _gateway_leaves(gateway) == []


@needs_cgroup
async def test_a_services_first_start_takes_the_leaf_made_while_its_runtime_loaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="acpx_trio")
    async with _service(tmp_path) as svc:
        runtime = svc.require_runtime()
        assert spares_of(os.getpid()) == []  # a started service holds none
        handle = await runtime.ensure_session(session_key="one", agent="mock")
        pid = (await runtime.get_status(handle=handle)).agent_pid
        assert f"agent {pid}: started in a ready leaf cgroup" in caplog.text
        await runtime.close(handle=handle, reason="test")
        assert spares_of(os.getpid()) == []  # a one-shot caller is left no spare
    gateway = (tmp_path / "state" / "gateway-instance-id").read_text().strip()
    assert not _gateway_leaves(gateway)


@needs_cgroup
async def test_a_build_that_fails_leaves_no_primed_leaf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The runtime cannot be built after its start's leaf was primed: the build closes the
    pool (its nursery, which nothing cancels here, then ends), and no spare or leaf is
    left."""
    monkeypatch.setattr("acpx_trio._service.lazy_runtime.RUNTIME_MODULE",
                        "acpx_trio._no_such_module")
    (tmp_path / "ws").mkdir()
    config = resolve_config({"stateDir": str(tmp_path / "state"), "containment": "cgroup",
                             "agents": {"mock": MOCK}}, str(tmp_path / "ws"))
    gateway = "gw-primed-unbuilt"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            lazy = LazyAcpxRuntime(RuntimeFactoryParams(
                config=config, gateway_instance_id=gateway,
                lease_store=LeaseStore(tmp_path / "state" / "acpx"),
                logger=logging.getLogger("acpx_trio.test"), nursery=nursery))
            with pytest.raises(ModuleNotFoundError):
                await lazy.ensure_session(session_key="one", agent="mock")
            assert lazy.built is None
            await lazy.aclose()
    assert spares_of(os.getpid()) == []
    assert not _gateway_leaves(gateway)


def _gateway_leaves(gateway: str) -> list[str]:
    parent = gateway_parent(gateway)
    if parent is None or not parent.exists():
        return []
    return [e.name for e in os.scandir(parent) if e.is_dir()]


@needs_cgroup
async def test_a_process_group_service_primes_nothing(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="acpx_trio")
    async with _service(tmp_path, "process-group") as svc:
        runtime = svc.require_runtime()
        handle = await runtime.ensure_session(session_key="one", agent="mock")
        assert spares_of(os.getpid()) == []
        assert "ready leaf cgroup" not in caplog.text
        await runtime.close(handle=handle, reason="test")


_FAILED_FIRST_START_OWNER = """
import sys, trio
from acpx_trio import AcpRuntimeError, BackendRegistry, open_runtime_service

async def main(state, work, mock):
    async with open_runtime_service(
            workspace_dir=work, state_dir=state, registry=BackendRegistry(),
            plugin_config={"containment": "cgroup", "agents": {"mock": mock}}) as svc:
        try:  # primes a leaf for itself, then fails: the leaf waits for the next start
            await svc.require_runtime().ensure_session(session_key="k", agent="no-such-agent")
        except AcpRuntimeError:
            pass
        print("READY", flush=True)
        await trio.sleep_forever()

trio.run(main, *sys.argv[1:])
"""


@needs_cgroup
async def test_an_owner_killed_with_a_primed_leaf_is_reaped_by_its_watchdog(
    tmp_path: Path,
) -> None:
    """A first start primed a leaf, then failed (an unknown agent): the primed launch waits
    in the pool.  The owner is SIGKILLed: its watchdog, armed before that leaf was made,
    removes the leaf; the spare exits having run nothing."""
    (tmp_path / "ws").mkdir()
    owner = await trio.lowlevel.open_process(
        [sys.executable, "-c", _FAILED_FIRST_START_OWNER, str(tmp_path / "state"),
         str(tmp_path / "ws"), MOCK], stdout=subprocess.PIPE,
        env={**os.environ, "ACPX_TRIO_WATCHDOG": "1"})
    try:
        assert owner.stdout is not None
        said = b""
        while not said.endswith(b"\n"):
            said += await owner.stdout.receive_some(64)
        assert said == b"READY\n"
        gateway = (tmp_path / "state" / "gateway-instance-id").read_text().strip()
        await poll_until(lambda: len(spares_of(owner.pid)) == 1, seconds=15)
        spares = spares_of(owner.pid)
        assert len(_gateway_leaves(gateway)) == 1 and watchdogs_of(owner.pid)
        owner.kill()
        await owner.wait()
        await poll_until(lambda: not _gateway_leaves(gateway), seconds=15)
        assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                       for p in spares)
    finally:
        with trio.CancelScope(shield=True):
            if owner.returncode is None:
                owner.kill()
                await owner.wait()


@needs_cgroup
async def test_a_spare_is_handed_out_only_once_inside_its_leaf() -> None:
    """Until its spare has moved in, a spare's leaf is empty and has no lease record, so
    another process's reap may remove it: a pool hands a spare out only once it is a member
    of its leaf (taken at once after a prime, it used to be still outside)."""
    gateway = f"gw-inside-{os.urandom(4).hex()}"
    async with trio.open_nursery() as nursery:
        pool = SpareLeaves(nursery, gateway_instance_id=gateway)
        for _ in range(5):
            pool.prime()
            spare = await pool.take()
            assert spare is not None and spare.alive()
            assert leaf_members(spare.leaf) == [spare.process.pid]
            assert await spare.discard()
        await pool.aclose()
    assert _gateway_leaves(gateway) == []


#: Another process's reap of the gateway, in a loop until ``go`` is removed; prints how many
#: reaps it made, how many leaves it killed and any report that was not ok.
_REAPER = """
import os, sys, trio
from acpx_trio.lowlevel import LeaseStore, reap_gateway
async def main():
    reaps = killed = 0
    while os.path.exists(sys.argv[3]):
        report = await reap_gateway(sys.argv[1], LeaseStore(sys.argv[2]), grace=0.5)
        reaps += 1
        killed += sum(a.action == "killed-cgroup" for a in report.actions)
        if not report.ok:
            print("not ok:", report, flush=True)
    print(f"{reaps} {killed}", flush=True)
trio.run(main)
"""


@needs_cgroup
async def test_another_processs_reaps_never_kill_a_live_owners_spares(tmp_path: Path) -> None:
    """Another process reaps the gateway without pause (``acpx-trio reap``, another
    owner's start-up reap) while a live runtime starts and closes agents from spares: a
    spare's leaf is empty and unleased until the spare has moved in, and a reap that read
    it empty used to kill what entered it (the spare, or the agent it had just become) or
    remove it under the spare.  Measured before the fix with two tasks of 20 starts and a
    turn each: 3 of 10 runs failed a start, 59 live leaves killed; after it, 0 of 30 and
    none."""
    go = tmp_path / "go"
    go.touch()
    async with _service(tmp_path) as svc:
        runtime = svc.require_runtime()
        lease_dir = tmp_path / "state" / "acpx"
        report = tmp_path / "reaper.out"
        with report.open("wb") as out:
            reaper = await trio.lowlevel.open_process(
                [sys.executable, "-c", _REAPER, svc.gateway_instance_id, str(lease_dir),
                 str(go)], stdout=out)
        try:
            async def starts(worker: int) -> None:
                for i in range(15):
                    handle = await runtime.ensure_session(session_key=f"k{worker}-{i}",
                                                          agent="mock")
                    await runtime.close(handle=handle)

            async with trio.open_nursery() as nursery:
                for worker in range(2):
                    nursery.start_soon(starts, worker)
        finally:
            go.unlink()
            with trio.fail_after(60):
                await reaper.wait()
        printed = report.read_text()
        reaps, killed = (int(x) for x in printed.split()[-2:])
        assert reaps > 0 and "not ok" not in printed, printed
        assert killed == 0, f"another process's reap killed {killed} of a live owner's leaves"
