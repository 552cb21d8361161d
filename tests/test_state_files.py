"""Hostile state files and state directories: a FIFO, a device (a ``/dev/zero`` symlink and a
real ``mknod``), a huge file, a directory or a symbolic link where a state file belongs; a
state dir that is a regular file, belongs to another user, or is group/world-writable.
Each gets a clear :class:`StateFileError` (or, for the lease file, a quarantine with a
warning), never a hang or a raw traceback; nothing is chmod-ed through a link; the CLI does
not print "none" with exit 0."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from _cli_helpers import run_cli

from acpx_trio._errors import StateFileError
from acpx_trio._store.fsio import ensure_private_dir, read_private_file
from acpx_trio._store.instance import (
    peek_gateway_instance_id,
    resolve_gateway_instance_id_sync,
)
from acpx_trio._store.leases import LEASE_FILE_NAME, SyncLeaseStore, peek_leases
from acpx_trio._store.sessions import SyncSessionStore

KINDS = ["fifo", "dev-zero-link", "mknod", "huge", "directory", "symlink"]


def make_hostile(path: Path, kind: str, *, huge_bytes: int) -> Path | None:
    """Put a hostile ``kind`` at ``path``; returns a symlink's target (to check it is
    untouched), else ``None``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "dev-zero-link":
        path.symlink_to("/dev/zero")
    elif kind == "mknod":
        if os.geteuid() != 0:
            pytest.skip("mknod of a device needs root")
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # a /dev/zero twin
    elif kind == "huge":
        with open(path, "wb") as fh:
            fh.truncate(huge_bytes + 1)  # sparse: cheap, yet st_size is over the cap
        os.chmod(path, 0o600)
    elif kind == "directory":
        path.mkdir(mode=0o700)
    elif kind == "symlink":
        target = path.parent.parent / f"elsewhere-{path.name}"
        target.write_text("3c5c8f0e-6c1b-4a51-9b8e-8d6f3b2f6d11\n")
        os.chmod(target, 0o644)
        path.symlink_to(target)
        return target
    return None


async def no_hang(fn: Callable[[], object]) -> object:
    with trio.fail_after(10):
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


@pytest.mark.parametrize("kind", KINDS)
async def test_gateway_id_file(tmp_path: Path, kind: str) -> None:
    state = tmp_path / "state"
    path = state / "gateway-instance-id"
    target = make_hostile(path, kind, huge_bytes=4096)
    for fn in (lambda: resolve_gateway_instance_id_sync(state),
               lambda: peek_gateway_instance_id(state)):
        with pytest.raises(StateFileError) as info:
            await no_hang(fn)
        assert str(path) in str(info.value) and info.value.code == "ACPX_STATE_FILE_UNSAFE"
    if target is not None:  # never chmod-ed (or written) through the link
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
    cli = await no_hang(lambda: run_cli("leases", state_dir=state))
    assert cli.returncode != 0 and str(path) in cli.stderr  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", KINDS)
async def test_lease_file_is_moved_aside_and_cli_fails(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    lease_dir = state / "acpx"
    path = lease_dir / LEASE_FILE_NAME
    target = make_hostile(path, kind, huge_bytes=64 * 1024 * 1024)
    leases, problem = await no_hang(lambda: peek_leases(lease_dir))  # type: ignore[misc]
    assert leases == [] and problem is not None and str(path) in problem
    cli = await no_hang(lambda: run_cli("leases", state_dir=state))
    assert cli.returncode != 0, cli  # type: ignore[attr-defined]
    assert str(path) in cli.stderr and "no open leases" not in cli.stdout  # type: ignore[attr-defined]
    store = SyncLeaseStore(lease_dir)
    with caplog.at_level(logging.WARNING):
        assert await no_hang(store.list_all) == []
    assert len(store.quarantined) == 1 and str(path) in caplog.text
    assert not await no_hang(lambda: os.path.lexists(path))  # moved aside, not followed
    if target is not None:
        assert target.read_text().startswith("3c5c8f0e")
        assert stat.S_IMODE(target.stat().st_mode) == 0o644


@pytest.mark.parametrize("kind", KINDS)
async def test_session_file(tmp_path: Path, kind: str) -> None:
    state = tmp_path / "state"
    store = SyncSessionStore(state / "acpx" / "sessions")
    path = store.path_for("my-session")
    make_hostile(path, kind, huge_bytes=16 * 1024 * 1024)
    with pytest.raises(StateFileError, match=str(path)):
        await no_hang(lambda: store.load("my-session"))
    with pytest.raises(StateFileError):
        await no_hang(store.list)
    cli = await no_hang(lambda: run_cli("sessions", "list", state_dir=state))
    assert cli.returncode != 0 and str(path) in cli.stderr  # type: ignore[attr-defined]
    assert "no sessions" not in cli.stdout  # type: ignore[attr-defined]


@pytest.mark.parametrize("problem", ["regular-file", "other-owner", "group-writable",
                                     "world-writable"])
async def test_untrusted_state_dir_is_refused(tmp_path: Path, problem: str) -> None:
    state = tmp_path / "state"
    if problem == "regular-file":
        state.write_text("not a directory")
    else:
        state.mkdir(mode=0o700)
        if problem == "other-owner":
            if os.geteuid() != 0:
                pytest.skip("chown to another user needs root")
            os.chown(state, 65534, 65534)  # nobody
        else:
            os.chmod(state, 0o770 if problem == "group-writable" else 0o707)
    mode_before = state.stat().st_mode
    with pytest.raises(StateFileError) as info:
        await no_hang(lambda: ensure_private_dir(state))
    assert str(state) in str(info.value)
    with pytest.raises(StateFileError):
        await no_hang(lambda: resolve_gateway_instance_id_sync(state))
    assert state.stat().st_mode == mode_before  # refused, not "fixed"
    cli = await no_hang(lambda: run_cli("sessions", "list", state_dir=state))
    assert cli.returncode != 0 and str(state) in cli.stderr  # type: ignore[attr-defined]


def test_read_private_file_reads_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    assert read_private_file(path, 100) == b"x" * 100
    with pytest.raises(StateFileError, match="more than the 99 allowed"):
        read_private_file(path, 99)
    with pytest.raises(FileNotFoundError):
        read_private_file(tmp_path / "missing", 10)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "huge"])
async def test_transcript_file(tmp_path: Path, kind: str) -> None:
    """``sessions history`` on a transcript that was a symlink, a FIFO or a directory said
    "no recorded turns" and exited 0 (an outside review): the user was told a session had no
    history when its file was unsafe.  A typed refusal naming the file now."""
    from acpx_trio._store.sessions import SessionRecord
    from acpx_trio._store.transcript import read_transcript, transcript_path

    state = tmp_path / "state"
    sessions = state / "acpx" / "sessions"
    SyncSessionStore(sessions).save(SessionRecord(session_key="my-session", agent="mock"))
    path = transcript_path(sessions, "my-session")
    target = make_hostile(path, kind, huge_bytes=0)
    with pytest.raises(StateFileError, match=str(path)):
        await no_hang(lambda: list(read_transcript(path)))
    cli = await no_hang(lambda: run_cli("sessions", "history", "my-session", state_dir=state))
    assert cli.returncode != 0 and str(path) in cli.stderr  # type: ignore[attr-defined]
    assert "no recorded turns" not in cli.stdout  # type: ignore[attr-defined]
    if target is not None:
        assert stat.S_IMODE(target.stat().st_mode) == 0o644


async def test_files_we_append_to_are_made_private_again(tmp_path: Path) -> None:
    """A transcript, the lease change log and the lock files, loosened to 0666 by someone,
    stayed 0666 through our appends (an outside review): files replaced whole went back to
    0600, these did not."""
    from acpx_trio._store.flock import open_lock_file
    from acpx_trio._store.lease_model import new_lease
    from acpx_trio._store.transcript import TranscriptWriter

    state = tmp_path / "state"
    store = SyncLeaseStore(state / "acpx")
    for key in ("a", "b"):  # the second save appends to the change log
        store.save(new_lease(gateway_instance_id="gw", session_key=key, command=["x"],
                             wrapper_root=str(state / "acpx")))
    changes = [p for p in (state / "acpx").iterdir() if p.name.endswith((".changes", ".lock"))]
    transcript = state / "t.ndjson"
    lock = state / "x.lock"
    transcript.write_text("")
    lock.write_text("")
    for path in [*changes, transcript, lock]:
        os.chmod(path, 0o666)
    writer = TranscriptWriter(transcript)
    writer.on_message("in", b'{"jsonrpc":"2.0","method":"x"}')
    await writer.aclose()
    os.close(open_lock_file(lock))
    SyncLeaseStore(state / "acpx").save(new_lease(
        gateway_instance_id="gw", session_key="c", command=["x"],
        wrapper_root=str(state / "acpx")))
    assert len(changes) == 2, changes
    for path in [*changes, transcript, lock]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
