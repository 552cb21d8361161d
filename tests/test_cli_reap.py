"""``acpx-trio reap [--dry-run]`` against real orphans of a state dir's gateway."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

from _cli_helpers import (
    MOCK,
    background_cli,
    cli_env,
    is_alive,
    json_lines,
    kill_gateway_processes,
    run_cli,
    tagged_pids,
)

from acpx_trio._process.tags import lease_env
from acpx_trio._store.instance import resolve_gateway_instance_id_sync
from acpx_trio._store.lease_model import LeaseState, ProcessLease, new_lease
from acpx_trio._store.leases import SyncLeaseStore

SLEEPER = "import signal\nprint('ready', flush=True)\nwhile True: signal.pause()\n"


def _rows(done: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    assert done.returncode == 0, done.stdout + done.stderr
    return json_lines(done.stdout)


def _lease_states(state_dir: Path) -> dict[str, str]:
    return {x.lease_id: x.state.value for x in SyncLeaseStore(state_dir / "acpx").list_all()}


def _closed_lease(state_dir: Path, session_key: str) -> tuple[str, ProcessLease]:
    """The state dir's gateway id and a lease of it, saved and marked ``closed``."""
    gw = resolve_gateway_instance_id_sync(state_dir)
    lease = new_lease(gateway_instance_id=gw, session_key=session_key, wrapper_root=state_dir,
                      command=["sleeper"])
    store = SyncLeaseStore(state_dir / "acpx")
    store.save(lease)
    store.mark_state(lease.lease_id, LeaseState.CLOSED)
    return gw, lease


@contextlib.contextmanager
def _tagged_sleeper(lease_id: str, gateway: str,
                    argv: list[str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    env = cli_env(lease_env(lease_id, gateway))
    proc = subprocess.Popen(argv or [sys.executable, "-c", SLEEPER], env=env,
                            executable=sys.executable, stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"  # running (EOF if it died)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)


def test_reap_orphan_of_killed_cli(tmp_path: Path) -> None:
    """A CLI SIGKILLed mid-turn leaves its agent (which ignores stdin EOF) and an open lease
    with a dead owner: dry-run lists it and kills nothing; reap kills it and closes the lease."""
    agent = f"{MOCK} --ignore-stdin-eof"
    try:
        # no owner-death watchdog: this test is about what ``acpx-trio reap`` does
        with background_cli("-v", "prompt", "--agent-command", agent, "/sleep 60000",
                            state_dir=tmp_path, env={"ACPX_TRIO_WATCHDOG": "0"}) as cli:
            cli.wait_stderr("turn started")
            cli.popen.send_signal(signal.SIGKILL)
            cli.popen.wait(timeout=30)
            (lease,) = json_lines(run_cli("leases", "--json", state_dir=tmp_path).stdout)
            agent_pid = lease["rootPid"]
            assert lease["state"] == "open" and lease["alive"] is True
            assert lease["ownerAlive"] is False
            # dry run: listed with its reason, nothing signalled, nothing written
            before = (tmp_path / "acpx" / "process-leases.json").read_bytes()
            rows = _rows(run_cli("reap", "--dry-run", "--json", state_dir=tmp_path))
            would = [r for r in rows if r["action"] == "would-terminate"]
            assert [r["pid"] for r in would] == [agent_pid]
            assert "owner" in str(would[0]["reason"]) and would[0]["leaseId"] == lease["leaseId"]
            assert any(r["action"] == "would-close-lease" for r in rows)
            assert is_alive(agent_pid)
            assert (tmp_path / "acpx" / "process-leases.json").read_bytes() == before
            table = run_cli("reap", "--dry-run", state_dir=tmp_path).stdout
            assert "would-terminate" in table and str(agent_pid) in table
            assert is_alive(agent_pid)
            # the real thing
            rows = _rows(run_cli("reap", "--json", state_dir=tmp_path))
            assert [r["pid"] for r in rows if r["action"] == "terminated"] == [agent_pid]
            assert not is_alive(agent_pid)
            assert _lease_states(tmp_path)[lease["leaseId"]] == "closed"
            assert tagged_pids(lease["gatewayInstanceId"]) == []
            again = run_cli("reap", state_dir=tmp_path)
            assert again.returncode == 0 and "nothing to reap" in again.stdout
    finally:
        kill_gateway_processes(tmp_path)


def test_reap_stale_tagged_process_and_leave_others(tmp_path: Path) -> None:
    """A live process tagged with our gateway and a closed lease is an orphan; one tagged with
    another gateway, and a pending lease of a dead owner with nothing alive, are handled as
    such: the first is killed, the second left alone, the third marked lost."""
    gw, closed = _closed_lease(tmp_path, "s-closed")
    other_gw = f"other-{uuid.uuid4().hex}"
    store = SyncLeaseStore(tmp_path / "acpx")
    dead_owner = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                capture_output=True, text=True, check=True, timeout=30)
    pending = new_lease(gateway_instance_id=gw, session_key="s-pending", wrapper_root=tmp_path,
                        command=["never"], owner_pid=int(dead_owner.stdout), owner_start_time=1.0)
    store.save(pending)
    try:
        with _tagged_sleeper(closed.lease_id, gw) as orphan, \
                _tagged_sleeper(closed.lease_id, other_gw) as foreign:
            rows = _rows(run_cli("reap", "--dry-run", "--json", state_dir=tmp_path))
            would = {r["pid"]: r for r in rows if r["action"] == "would-terminate"}
            assert set(would) == {orphan.pid}
            assert "lease is closed" in str(would[orphan.pid]["reason"])
            assert {r["leaseId"]: r["action"] for r in rows if "pid" not in r} == {
                pending.lease_id: "would-mark-lost"}
            assert is_alive(orphan.pid) and is_alive(foreign.pid)
            assert _lease_states(tmp_path)[pending.lease_id] == "open"

            rows = _rows(run_cli("reap", "--json", state_dir=tmp_path))
            assert [r["pid"] for r in rows if r["action"] == "terminated"] == [orphan.pid]
            assert orphan.wait(timeout=10) == -signal.SIGTERM
            assert is_alive(foreign.pid)
            assert _lease_states(tmp_path) == {closed.lease_id: "closed",
                                               pending.lease_id: "lost"}
    finally:
        kill_gateway_processes(tmp_path, [other_gw])


def test_reap_leaves_live_cli_agent_alone(tmp_path: Path) -> None:
    """The agent of a prompt running right now (owner alive) is neither listed nor killed."""
    with background_cli("-v", "prompt", "/sleep 60000", state_dir=tmp_path) as cli:
        cli.wait_stderr("turn started")
        (lease,) = json_lines(run_cli("leases", "--json", state_dir=tmp_path).stdout)
        assert lease["ownerAlive"] is True and lease["ownerPid"] == cli.popen.pid
        for args in (["reap", "--dry-run", "--json"], ["reap", "--json"]):
            rows = _rows(run_cli(*args, state_dir=tmp_path))
            assert not [r for r in rows if "terminate" in str(r["action"])]
            assert any(r["action"] == "lease-left-alone" and r["leaseId"] == lease["leaseId"]
                       and "owner-alive" in str(r["reason"]) for r in rows), rows
            assert is_alive(lease["rootPid"])
        cli.signal(signal.SIGINT)
        assert cli.wait() == 130
    assert not is_alive(lease["rootPid"])


def test_reap_dry_run_on_fresh_state_dir_creates_nothing(tmp_path: Path) -> None:
    state = tmp_path / "fresh"
    done = run_cli("reap", "--dry-run", state_dir=state)
    assert done.returncode == 0 and "nothing would be reaped" in done.stdout
    assert not state.exists() or not any(state.iterdir())


def test_reap_never_shows_a_credential_of_the_command_line(tmp_path: Path) -> None:
    """``reap`` and ``reap --dry-run`` printed an orphan's command line as it was, a
    credential passed as an argument included (3 of 3, an outside review); the session
    record and ``agents`` redacted it.  Now redacted (before the line is cut to fit)."""
    secret = "Zq9sEcReTvAlUe77"
    gw, closed = _closed_lease(tmp_path, "s")
    # argv[0] "py": the line's length does not depend on where Python is; the secret
    # starts at character 85 and straddles the cut at 97 ("[redacted]" fits before it)
    head = f"py -c {SLEEPER} --key "
    argv = ["py", "-c", SLEEPER, "x" * (85 - len(head) - 1), "--key", secret]
    env = {"MY_API_KEY": secret}
    config = tmp_path / "cfg.json"  # a config ``auth`` value: known without the environment
    config.write_text(json.dumps({"auth": {"mock-key": secret}}))
    try:
        with _tagged_sleeper(closed.lease_id, gw, argv) as orphan:
            for args in (("reap", "--dry-run"), ("reap", "--dry-run", "--json")):
                done = run_cli(*args, state_dir=tmp_path, env=env)
                assert done.returncode == 0, done.stderr
                assert secret[:4] not in done.stdout and "[redacted]" in done.stdout, done.stdout
            done = run_cli("reap", "--dry-run", "--config", str(config), state_dir=tmp_path)
            assert done.returncode == 0, done.stderr
            assert secret[:4] not in done.stdout and "[redacted]" in done.stdout, done.stdout
            done = run_cli("reap", "--json", state_dir=tmp_path, env=env)
            assert [r["pid"] for r in _rows(done) if r["action"] == "terminated"] == [orphan.pid]
            assert secret[:4] not in done.stdout and "[redacted]" in done.stdout
    finally:
        kill_gateway_processes(tmp_path)
