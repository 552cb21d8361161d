"""The owner socket path is refused unless it is a socket of our uid."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from _cli_helpers import run_cli


def _prompt(tmp_path: Path) -> tuple[int, str]:
    done = run_cli("prompt", "--session", "k", "hi", state_dir=tmp_path)
    return done.returncode, done.stderr


def test_regular_file_at_socket_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "owner.sock").write_text("not a socket")
    code, err = _prompt(tmp_path)
    assert code == 1 and "ACPX_OWNER_SOCKET_UNSAFE" in err and "not a socket" in err
    assert (tmp_path / "owner.sock").read_text() == "not a socket"  # left alone


def test_symlink_at_socket_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.sock"
    (tmp_path / "owner.sock").symlink_to(target)
    code, err = _prompt(tmp_path)
    assert code == 1 and "symlink" in err
    assert (tmp_path / "owner.sock").is_symlink() and not target.exists()
    status = run_cli("status", state_dir=tmp_path)
    assert status.returncode == 1 and "symlink" in status.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to another uid")
def test_socket_of_another_uid_is_refused(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody").pw_uid
    path = tmp_path / "owner.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        sock.listen(1)
        os.chown(path, nobody, -1, follow_symlinks=False)
        code, err = _prompt(tmp_path)
        assert code == 1 and f"owned by uid {nobody}" in err
        cancel = run_cli("cancel", "--session", "k", state_dir=tmp_path)
        assert cancel.returncode == 1 and "owned by uid" in cancel.stderr
    finally:
        sock.close()
    assert path.exists()  # never removed


def test_socket_and_dir_modes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    done = run_cli("prompt", "--session", "k", "hi", state_dir=state)
    assert done.returncode == 0, done.stderr
    assert (state.stat().st_mode & 0o777) == 0o700
    assert ((state / "owner.sock").stat().st_mode & 0o777) == 0o600
    for name in ("owner.lock", "owner.json", "owner.log"):
        assert ((state / name).stat().st_mode & 0o777) == 0o600, name
    assert run_cli("sessions", "close", "k", state_dir=state).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
def test_owner_refuses_a_peer_of_another_uid(tmp_path: Path) -> None:
    """Even if the socket were reachable (modes loosened by hand), the owner checks the
    peer's uid with SO_PEERCRED and answers nothing to another uid."""
    # pytest's tmp_path sits under a 0700 dir: use one another uid can traverse
    outer = Path(tempfile.mkdtemp(prefix="acpx-peer-", dir="/tmp"))
    try:
        _peer_check(outer / "state")
    finally:
        shutil.rmtree(outer, ignore_errors=True)


def _peer_check(state: Path) -> None:
    assert run_cli("prompt", "--session", "k", "hi", state_dir=state).returncode == 0
    sock_path = state / "owner.sock"
    os.chmod(state.parent, 0o711)
    os.chmod(state, 0o711)
    os.chmod(sock_path, 0o666)
    nobody = pwd.getpwnam("nobody").pw_uid
    probe = (
        "import os, socket, sys\n"
        f"os.setgid({nobody}); os.setuid({nobody})\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        f"s.connect({str(sock_path)!r})\n"
        "try:\n"
        "    s.sendall(b'{\"kind\":\"status\"}\\n')\n"
        "    data = s.recv(65536)\n"
        "except (BrokenPipeError, ConnectionResetError):\n"
        "    data = b''\n"
        "print(repr(data))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "b''"  # connection closed without an answer
    log = (state / "owner.log").read_text()
    assert f"refused a connection from uid {nobody}" in log
    os.chmod(state, 0o700)
    assert run_cli("status", "--json", state_dir=state).returncode == 0  # we still get one
    assert run_cli("sessions", "close", "k", state_dir=state).returncode == 0


def test_previous_owner_log_is_kept_as_owner_log_1(tmp_path: Path) -> None:
    """A crashed owner's log survives the next owner's start as ``owner.log.1`` (0600); a
    symlink planted at ``owner.log.1`` is replaced, never written through."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "owner.log").write_text("Traceback (most recent call last): the old crash\n")
    (state / "owner.log").chmod(0o644)
    sentinel = tmp_path / "sentinel"
    sentinel.write_text("untouched")
    (state / "owner.log.1").symlink_to(sentinel)
    done = run_cli("prompt", "--session", "k", "hi", state_dir=state)
    assert done.returncode == 0, done.stderr
    kept = state / "owner.log.1"
    assert not kept.is_symlink() and sentinel.read_text() == "untouched"
    assert "the old crash" in kept.read_text()
    assert (kept.stat().st_mode & 0o777) == 0o600
    assert "the old crash" not in (state / "owner.log").read_text()
    assert run_cli("sessions", "close", "k", state_dir=state).returncode == 0
