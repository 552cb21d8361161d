"""``terminal/*`` with real processes: lifecycle, output limits, permissions, kill, and no
terminal process outliving its session (close, cancellation, kill)."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import psutil
import trio
from _runtime_helpers import RuntimeEnv, output, pid_gone, run, wait_gone
from hypothesis import given
from hypothesis import strategies as st

from acpx_trio._events import ErrorEvent, TextDeltaEvent
from acpx_trio._runtime.terminals import OutputBuffer
from acpx_trio._store.lease_model import LeaseState


async def test_terminal_lifecycle(env: RuntimeEnv) -> None:
    with trio.fail_after(30):
        async with env.runtime(permissionMode="approve-all") as rt:
            handle = await rt.ensure_session(session_key="t", agent="mock")
            text = output(await run(rt, handle, "/terminal echo hello; echo oops >&2; exit 3"))
    assert text == "exit=3 truncated=False output=hello\noops\n"


async def test_terminal_runs_in_session_cwd_with_env(env: RuntimeEnv) -> None:
    with trio.fail_after(30):
        async with env.runtime(permissionMode="approve-all") as rt:
            handle = await rt.ensure_session(session_key="t", agent="mock")
            text = output(await run(rt, handle, "/terminal pwd; echo $MOCK_TERMINAL"))
    assert text == f"exit=0 truncated=False output={env.workspace.resolve()}\n1\n"


async def test_output_limit_keeps_newest_at_char_boundary(env: RuntimeEnv) -> None:
    with trio.fail_after(30):
        async with env.runtime(permissionMode="approve-all") as rt:
            handle = await rt.ensure_session(session_key="t", agent="mock")
            # "aé" * 5 = 15 bytes; the newest 4 start inside an "é": its tail byte is dropped
            text = output(await run(rt, handle, "/terminal-limit 4 printf 'aéaéaéaéaé'"))
    assert text == "exit=0 truncated=True output=aé"


@given(st.lists(st.text(max_size=20), max_size=12), st.integers(min_value=0, max_value=40))
def test_output_buffer_property(chunks: list[str], limit: int) -> None:
    buf = OutputBuffer(limit)
    data = b"".join(c.encode() for c in chunks)
    for i in range(0, len(data), 7):  # feed in pieces that split characters
        buf.add(data[i:i + 7])
    kept = bytes(buf.data)
    assert len(kept) <= limit
    assert data.endswith(kept)
    assert buf.truncated == (len(data) > limit)
    kept.decode()  # starts (and, since the input is complete, ends) on a character boundary
    assert len(data) - len(kept) < len(data) - limit + 4 or not buf.truncated


async def test_terminal_kill_leaves_no_sleep(env: RuntimeEnv) -> None:
    with trio.fail_after(30):
        async with env.runtime(permissionMode="approve-all") as rt:
            handle = await rt.ensure_session(session_key="t", agent="mock")
            text = output(await run(rt, handle, "/terminal-kill echo $$; exec sleep 30"))
            match = re.fullmatch(r"first=(\d+) signal=(\w+) output=\d+", text)
            assert match, text
            pid = int(match.group(1))
            assert pid_gone(pid)
            assert match.group(2) in ("SIGTERM", "SIGKILL")
            leases = await env.lease_store.list_open(env.gateway_id)
            assert [lease.session_key for lease in leases] == ["t"]  # the agent's only


CHILD = Path(__file__).with_name("_terminal_child.py")
REPO = Path(__file__).resolve().parent.parent
HOLD = "/terminal-hold echo $$; sh -c 'sleep 30' & exec sleep 30"


async def _hold(rt: Any, handle: Any, started: trio.Event, box: list[int]) -> None:
    async with contextlib.aclosing(rt.run_turn(handle=handle, text=HOLD)) as events:
        async for event in events:
            if isinstance(event, TextDeltaEvent) and event.text.startswith("first="):
                box.append(int(event.text.split("=")[1]))
                started.set()


def _tree(pid: int) -> list[int]:
    proc = psutil.Process(pid)
    return [pid, *(c.pid for c in proc.children(recursive=True))]


async def test_session_close_kills_terminal_tree(env: RuntimeEnv) -> None:
    with trio.fail_after(30):
        async with env.runtime(permissionMode="approve-all") as rt:
            handle = await rt.ensure_session(session_key="t", agent="mock")
            started, box = trio.Event(), []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_hold, rt, handle, started, box)
                await started.wait()
                pids = await trio.to_thread.run_sync(_tree, box[0])
                await rt.close(handle=handle, reason="test")
            for pid in pids:
                await wait_gone(pid)
        for lease in await env.lease_store.list_open(env.gateway_id):
            raise AssertionError(f"lease left open: {lease}")


async def test_cancelling_the_owning_scope_kills_terminal(env: RuntimeEnv) -> None:
    box: list[int] = []
    pids: list[int] = []
    with trio.fail_after(30):
        with trio.CancelScope() as scope:
            async with env.runtime(permissionMode="approve-all") as rt:
                handle = await rt.ensure_session(session_key="t", agent="mock")
                started = trio.Event()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_hold, rt, handle, started, box)
                    await started.wait()
                    pids = await trio.to_thread.run_sync(_tree, box[0])
                    scope.cancel()
        for pid in pids:
            await wait_gone(pid)
    leases = await _all_leases(env)
    assert len(leases) == 2  # the agent's and the terminal's
    assert {lease.state for lease in leases} == {LeaseState.CLOSED}


async def _all_leases(env: RuntimeEnv) -> list[Any]:
    from acpx_trio._store.leases import SyncLeaseStore

    store = SyncLeaseStore(env.root / "leases")
    return await trio.to_thread.run_sync(store.list_all)


async def test_refused_command_never_runs(env: RuntimeEnv) -> None:
    marker = env.workspace / "ran"
    with trio.fail_after(30):
        async with env.runtime(permissionMode="approve-reads",
                               nonInteractivePermissions="deny") as rt:
            handle = await rt.ensure_session(session_key="t", agent="mock")
            text = output(await run(rt, handle, f"/terminal touch {marker}"))
        assert "denied" in text and "error:" in text
        async with env.runtime(permissionMode="approve-reads",
                               nonInteractivePermissions="fail") as rt:
            handle = await rt.ensure_session(session_key="t2", agent="mock")
            events = await run(rt, handle, f"/terminal touch {marker}")
        assert isinstance(events[-1], ErrorEvent)
        assert events[-1].code == "ACP_PERMISSION_PROMPT_UNAVAILABLE"
        async with env.runtime(permissionMode="deny-all") as rt:
            handle = await rt.ensure_session(session_key="t3", agent="mock")
            await run(rt, handle, f"/terminal touch {marker}")
    assert not marker.exists()


async def test_terminal_cwd_is_confined(env: RuntimeEnv) -> None:
    from acpx_trio._acp import CreateTerminalRequest
    from acpx_trio._errors import AcpRuntimeError

    with trio.fail_after(30):
        async with env.runtime(permissionMode="approve-all") as rt:
            await rt.ensure_session(session_key="t", agent="mock")
            terms = rt._sessions["t"].terminals
            assert terms is not None
            for bad in ("/", str(env.root), "relative"):
                try:
                    await terms.create(CreateTerminalRequest(
                        session_id="x", command="true", cwd=bad))
                except AcpRuntimeError as exc:
                    assert exc.rpc_code == -32602
                else:
                    raise AssertionError(f"cwd {bad} accepted")


async def test_terminal_of_a_crashed_owner_is_reaped(tmp_path: Path) -> None:
    import json
    import os
    import signal
    import subprocess
    import sys

    from acpx_trio._service.backends import BackendRegistry
    from acpx_trio._service.open_service import open_runtime_service

    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENCLAW_SKIP_ACPX_RUNTIME", "OPENCLAW_ACPX_RUNTIME_STARTUP_PROBE")}
    state = tmp_path / "state"
    with trio.fail_after(60):
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(CHILD), str(state)], stdout=subprocess.PIPE,
            env={**env, "PYTHONPATH": path},
        )
        try:
            assert proc.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, "child exited early"
                line += chunk
            pid = json.loads(line)["pid"]
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        assert not pid_gone(pid)  # the owner is gone; its terminal lives on as an orphan
        async with open_runtime_service(
            workspace_dir=tmp_path, state_dir=state, registry=BackendRegistry()
        ) as svc:
            reap = svc.startup_reap
            assert reap is not None and pid in reap.terminated_pids
        await wait_gone(pid)


async def test_terminal_env_has_no_acpx_auth_credentials(
    env: RuntimeEnv, monkeypatch: Any
) -> None:
    monkeypatch.setenv("ACPX_AUTH_VERIFY_KEY", "terminal-must-not-see-this")
    with trio.fail_after(30):
        async with env.runtime(permissionMode="approve-all") as rt:
            handle = await rt.ensure_session(session_key="t", agent="mock")
            text = output(await run(rt, handle, "/terminal echo x${ACPX_AUTH_VERIFY_KEY}x"))
    assert text == "exit=0 truncated=False output=xx\n"


def test_output_buffer_cut_costs_at_most_one_character() -> None:
    """Output that is no UTF-8 (a run of continuation bytes) is cut at the limit plus at most
    three bytes, not searched to its end at every chunk (which held the event loop 1.5 s a
    16 MiB burst); the kept text still decodes (with replacement characters)."""
    buf = OutputBuffer(1000)
    for _ in range(50):
        buf.add(b"a" + b"\x80" * 4999)
        assert 997 <= len(buf.data) <= 1000, len(buf.data)
    assert buf.truncated
    buf.text()


async def test_concurrent_creates_respect_the_caps(tmp_path: Path) -> None:
    """Creates in flight together are counted by the terminal cap and the output budget:
    twenty at once with a budget for four get four terminals, sixteen refusals (they all
    passed the checks before any was recorded: twenty accepted)."""
    import msgspec

    from acpx_trio import AcpRuntimeError, LeaseStore
    from acpx_trio._acp._extra import CreateTerminalRequest
    from acpx_trio._runtime.permissions import PermissionPolicy, work_dir
    from acpx_trio._runtime.terminals import TerminalManager

    cwd = work_dir(str(tmp_path))
    assert cwd is not None
    store = LeaseStore(tmp_path / "leases")
    limit = 1 << 20
    accepted: list[str] = []
    refused: list[str] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            manager = TerminalManager(
                session_key="s", cwd=cwd, policy=PermissionPolicy("approve-all", "fail"),
                nursery=nursery, gateway_instance_id="gw-caps", lease_store=store,
                output_budget=4 * limit, containment="process-group",
            )
            raw = msgspec.Raw(msgspec.json.encode(CreateTerminalRequest(
                session_id="s", command="sleep", args=["30"], output_byte_limit=limit)))

            async def create() -> None:
                try:
                    made = await manager.handle("terminal/create", raw)
                    accepted.append(made.terminal_id)
                except AcpRuntimeError as exc:
                    refused.append(exc.message)

            try:
                async with trio.open_nursery() as creates:
                    for _ in range(20):
                        creates.start_soon(create)
            finally:
                await manager.aclose()
    assert len(accepted) == 4, (accepted, refused)
    assert len(refused) == 16 and all("terminal output budget" in m for m in refused), refused
    assert {x.state for x in await store.list_all()} == {LeaseState.CLOSED}
