"""The end of a warm turn's stream, against real owners, agents and clients: a client still
reading a turn when the owner exits (``sessions close`` of its last session, SIGTERM) gets
the rest of its stream and the final frame, a second signal ends that wait; the command
ends at the final frame, and holds a bounded share of a turn its stdout takes slowly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _cli_helpers import (
    MOCK,
    assert_nothing_left,
    background_cli,
    cli_argv,
    cli_env,
    json_lines,
    run_cli,
)
from _warm_helpers import (
    alive,
    owner_pid,
    status,
    turn_state,
    wait_backed_up,
    wait_gone,
    wait_owner_log,
    wait_status,
)

from acpx_trio._cli.output import OUTPUT_HIGH_WATER
from acpx_trio._events import DoneEvent, TextDeltaEvent
from acpx_trio._owner.paths import OwnerPaths
from acpx_trio._owner.server import REQUEST_READ_SECONDS
from acpx_trio._owner.stream import CLIENT_SEND_SECONDS
from acpx_trio._owner.wire import AcceptedFrame, EventFrame, decode_request, encode_frame

#: Far more than the owner can hand a stopped client before its buffers fill.
CHUNKS = 3_000_000


def _agent_pid(state: Path) -> int:
    (session,) = status(state)["sessions"]
    assert session["agent_pid"] is not None, session
    return int(session["agent_pid"])


@pytest.mark.parametrize("how", ["close", "sigterm"])
def test_a_lagging_client_gets_its_stream_when_the_owner_exits(tmp_path: Path,
                                                               how: str) -> None:
    """The owner cancelled its connections as soon as the sessions were closed: a client
    that lagged (stopped a moment, or just behind) lost the frames the owner held for it
    and the final one, and reported the owner lost (13/13 stopped, 8/20 not stopped)."""
    state = tmp_path / "state"
    assert run_cli("prompt", "--session", "k", "hi", state_dir=state).returncode == 0
    owner, agent = owner_pid(state), _agent_pid(state)
    with background_cli("prompt", "--session", "k", f"/chunks {CHUNKS}",
                        state_dir=state) as client:
        wait_status(state, lambda s: turn_state(s, "k") == "active")
        client.signal(signal.SIGSTOP)  # Ctrl-Z: the owner's writes to it now wait
        try:
            wait_backed_up(agent)  # (so it holds some of the stream when it exits)
            if how == "close":
                done = run_cli("sessions", "close", "k", state_dir=state)
                assert done.returncode == 0, done.stderr
            else:
                os.kill(owner, signal.SIGTERM)
            wait_gone(agent)  # the session is closed: only the client's stream is left
        finally:
            client.signal(signal.SIGCONT)
        rc = client.wait()
        err = client.err()
        assert rc == 130, err
        assert "cancelled from outside this command" in err, err
        assert "ACPX_OWNER_LOST" not in err, err
        lines = client.out().splitlines()
        assert lines == [f"chunk {i}" for i in range(len(lines))]  # nothing lost on the way
        assert 0 < len(lines) < CHUNKS
    wait_gone(owner)


def test_a_second_signal_ends_the_wait_for_a_stopped_client(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert run_cli("prompt", "--session", "k", "hi", state_dir=state).returncode == 0
    owner = owner_pid(state)
    with background_cli("prompt", "--session", "k", f"/chunks {CHUNKS}",
                        state_dir=state) as client:
        wait_status(state, lambda s: turn_state(s, "k") == "active")
        client.signal(signal.SIGSTOP)  # stopped for good: it would hold the owner 15 s
        try:
            wait_backed_up(_agent_pid(state))
            os.kill(owner, signal.SIGTERM)
            wait_owner_log(state, "client(s) still connected", owner, client)
            start = time.monotonic()
            os.kill(owner, signal.SIGTERM)
            wait_gone(owner, timeout=CLIENT_SEND_SECONDS)
            assert time.monotonic() - start < CLIENT_SEND_SECONDS / 2
            assert "not waiting for clients" in (state / "owner.log").read_text()
        finally:
            client.signal(signal.SIGCONT)
        assert client.wait() == 1  # the rest of its stream was given up, and it says so
        assert "ACPX_OWNER_LOST" in client.err()


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_kills_the_agents_without_their_grace(tmp_path: Path,
                                                              second: int) -> None:
    """A second signal while the owner closed its sessions only ended the wait for clients
    that followed: an agent that ignores SIGTERM held the owner its whole
    ``killGraceSeconds``.  Now the agents' trees are killed at once (their leases proved
    first, as every reap does), a client still reading is not waited for, and nothing is
    left."""
    grace = 40
    config = tmp_path / "c.json"
    config.write_text(f'{{"killGraceSeconds": {grace}}}')
    agent = f"{MOCK} --ignore-sigterm --ignore-stdin-eof"
    state = tmp_path / "state"
    args = ("--config", str(config), "prompt", "--agent-command", agent, "--session", "k")
    first = run_cli(*args, "hi", state_dir=state)
    assert first.returncode == 0, first.stderr
    owner, agent_pid = owner_pid(state), _agent_pid(state)
    with background_cli(*args, "/hang", state_dir=state) as client:
        wait_status(state, lambda s: turn_state(s, "k") == "active")
        os.kill(owner, signal.SIGTERM)
        wait_owner_log(state, "shutting down", owner)
        start = time.monotonic()
        os.kill(owner, second)
        wait_gone(owner, timeout=grace + 30)
        elapsed = time.monotonic() - start
        assert elapsed < grace / 4, (elapsed, (state / "owner.log").read_text())
        assert "killing the agents now (no grace)" in (state / "owner.log").read_text()
        assert not alive(agent_pid)
        assert client.wait() != 0  # its turn did not end well, and it says so
    assert_nothing_left(state)


def test_the_command_ends_at_the_final_frame(tmp_path: Path) -> None:
    """The command read on after a turn's final frame until the owner closed the
    connection: an owner silent after it (stopped, say) made a finished turn wait 30 s and
    end as ``ACPX_OWNER_UNRESPONSIVE``, two final events in JSON.  An owner of our own here,
    that answers and then holds the connection open, silent."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(OwnerPaths(state).socket))
    listener.listen(1)
    held: list[socket.socket] = []

    def serve() -> None:
        conn, _ = listener.accept()
        held.append(conn)
        request = b""
        while not request.endswith(b"\n"):
            request += conn.recv(65536)
        rid = decode_request(request[:-1]).request_id
        conn.sendall(b"".join(encode_frame(f) for f in (
            AcceptedFrame(request_id=rid, position=0, owner_pid=os.getpid()),
            EventFrame(request_id=rid, event=TextDeltaEvent(text="answer")),
            EventFrame(request_id=rid, event=DoneEvent(stop_reason="end_turn")))))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        done = run_cli("--format", "json", "prompt", "--session", "k", "hi", state_dir=state,
                       timeout=20)  # under the 30 s of silence the command would wait
        assert done.returncode == 0, done.stderr
        types = [e["type"] for e in json_lines(done.stdout)]
        assert types[-2:] == ["text_delta", "done"] and "error" not in types, types
    finally:
        server.join(timeout=10)
        for conn in held:
            conn.close()
        listener.close()


_SLOW_READER = """
import resource, subprocess, sys, time
rate = float(sys.argv[1])
proc = subprocess.Popen(sys.argv[2:], stdout=subprocess.PIPE)
got, start = 0, time.monotonic()
while chunk := proc.stdout.read1(1 << 18):
    got += len(chunk)
    time.sleep(max(0.0, got / rate - (time.monotonic() - start)))  # a reader of RATE bytes/s
print(proc.wait(), got, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _read_slowly(state: Path, rate: float, text: str) -> tuple[int, int, int]:
    """(exit code, bytes read, peak RSS in KiB) of ``prompt --session k TEXT`` whose stdout
    is read at ``rate`` bytes/s."""
    done = subprocess.run([sys.executable, "-c", _SLOW_READER, str(rate),
                           *cli_argv("--state-dir", str(state), "prompt", "--session", "k",
                                     text)],
                          capture_output=True, text=True, env=cli_env(), timeout=120,
                          check=True)
    rc, got, peak = (int(x) for x in done.stdout.split())
    return rc, got, peak


def test_a_slow_stdout_does_not_make_the_command_hold_the_turn(tmp_path: Path) -> None:
    """The command read the owner's frames as fast as they came and queued their text for
    a stdout read at 30 MB/s: 107-116 MiB above its idle size for 150 MB of output (20-21
    MiB now).  It now
    stops reading past ``OUTPUT_HIGH_WATER`` (the owner's bounded buffer holds the rest), and
    everything still arrives."""
    state = tmp_path / "state"
    assert run_cli("prompt", "--session", "k", "hi", state_dir=state).returncode == 0
    try:
        _rc, _got, idle = _read_slowly(state, 30e6, "/chunks 1")
        rc, got, peak = _read_slowly(state, 30e6, "/huge 1000000 150")
        assert rc == 0 and got >= 149_000_000, (rc, got)
        assert peak - idle < (OUTPUT_HIGH_WATER + (16 << 20)) >> 10, (idle, peak)
    finally:
        run_cli("sessions", "close", "k", state_dir=state)


def test_a_connection_without_a_request_does_not_hold_the_owner_at_exit(
        tmp_path: Path) -> None:
    """The owner's exit waited for every connection, so one that had sent nothing (a client
    still connecting, a stray connection) held it for the 10 s request bound, and the next
    prompt waited as long for its lock (an outside review: 9.8-9.9 s, 3/3).  Only streams
    are waited for now."""
    state = tmp_path / "state"
    assert run_cli("prompt", "--session", "k", "hi", state_dir=state).returncode == 0
    owner = owner_pid(state)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.connect(str(OwnerPaths(state).socket))
        wait_status(state, lambda s: turn_state(s, "k") == "idle")  # it was accepted
        start = time.monotonic()
        os.kill(owner, signal.SIGTERM)
        wait_gone(owner)
        assert time.monotonic() - start < REQUEST_READ_SECONDS / 2


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``signum`` (``SigCgt``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def test_a_signal_while_the_owner_starts_stops_it_cleanly(tmp_path: Path) -> None:
    """A SIGTERM before the owner's signal receiver ran took the default action: the owner
    died half-way, its socket and ``owner.json`` left behind (6/6 at offset 0, an outside
    review), and so did a late one as it exited.  A signal from the first moment the owner
    can catch one is now acted on once it serves: it shuts down as for any SIGTERM."""
    from acpx_trio._owner.wire import OwnerLaunch

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    launch = OwnerLaunch(raw_config={}, workspace_dir=str(tmp_path), default_ttl_seconds=300.0)
    proc = subprocess.Popen([sys.executable, "-m", "acpx_trio._owner", "--state-dir",
                             str(state)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=cli_env())
    assert proc.stdin is not None and proc.stderr is not None
    try:
        proc.stdin.write(encode_frame(launch))
        proc.stdin.close()
        deadline = time.monotonic() + 30
        while not _catches(proc.pid, signal.SIGTERM):  # the owner's very first step
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.001)
        # still starting: it serves (and its receiver runs) only after owner.json is written
        assert not (state / "owner.json").exists()
        os.kill(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=30)
        err = proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()
    assert rc == 0, err
    assert "signal SIGTERM: shutting down" in err
    assert not (state / "owner.sock").exists() and not (state / "owner.json").exists()
