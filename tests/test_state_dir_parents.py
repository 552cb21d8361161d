"""A state directory under a directory someone else controls is refused, like ssh's
``StrictModes``: whoever can write a parent could move the state dir away and put theirs (its
lease file, its owner socket) in its place.  Every directory the path's lookup passes through,
links followed, must belong to root or to us and be writable by nobody else (sticky dirs such
as ``/tmp`` and this user's private group excepted).  Refused before anything is created,
through the public names, the service and the CLI alike; parents acpx-trio creates are 0700."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from _cli_helpers import run_cli, tagged_pids

from acpx_trio import (
    BackendRegistry,
    LeaseStore,
    SessionStoreError,
    StateFileError,
    open_acpx_runtime,
    open_runtime_service,
    resolve_config,
)

NOBODY = 65534


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A directory we own, whose mode each test sets."""
    path = tmp_path / "shared"
    path.mkdir(mode=0o700)
    yield path
    os.chmod(path, 0o700)


async def _start(state: Path, workspace: Path) -> None:
    with trio.fail_after(30):
        async with open_runtime_service(workspace_dir=workspace, state_dir=state,
                                        registry=BackendRegistry()):
            pass


def _refused_everywhere(state: Path, tmp_path: Path, culprit: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir(exist_ok=True)
    with pytest.raises(StateFileError) as info:
        trio.run(_start, state, workspace)
    assert info.value.code == "ACPX_STATE_FILE_UNSAFE"
    assert str(culprit) in str(info.value) and str(state) in str(info.value)
    assert not os.path.lexists(state)  # refused before the state dir was made
    cli = run_cli("leases", state_dir=state)
    assert cli.returncode != 0 and str(culprit) in cli.stderr
    prompt = run_cli("prompt", "hello", state_dir=state)
    assert prompt.returncode != 0 and str(culprit) in prompt.stderr
    assert not os.path.lexists(state)


@pytest.mark.parametrize("mode", [0o777, 0o757], ids=["0777", "0757"])
def test_a_parent_others_can_write_is_refused(tmp_path: Path, shared: Path, mode: int) -> None:
    os.chmod(shared, mode)
    _refused_everywhere(shared / "deep" / "state", tmp_path, shared)


def test_commands_that_never_use_the_state_dir_still_run(tmp_path: Path, shared: Path) -> None:
    os.chmod(shared, 0o777)
    state = shared / "state"
    for args in (("agents",), ("config", "show")):
        done = run_cli(*args, state_dir=state)
        assert done.returncode == 0, (args, done.stderr)
    assert run_cli("leases", state_dir=state).returncode != 0  # the others are refused
    assert not os.path.lexists(state)


def test_a_parent_of_another_user_is_refused(tmp_path: Path, shared: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    os.chown(shared, NOBODY, -1)
    try:
        _refused_everywhere(shared / "state", tmp_path, shared)
    finally:
        os.chown(shared, 0, -1)


def test_a_parent_a_shared_group_can_write_is_refused(tmp_path: Path, shared: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chgrp to a group we are not in needs root")
    os.chown(shared, -1, NOBODY)  # a group that is not our private group
    os.chmod(shared, 0o770)
    _refused_everywhere(shared / "state", tmp_path, shared)


def test_a_link_through_a_writable_directory_is_refused(tmp_path: Path, shared: Path) -> None:
    """The path as written has trusted parents only; its link leads through one others can
    write (the lookup is judged, not the spelling)."""
    real = shared / "real"
    real.mkdir(mode=0o700)
    os.chmod(shared, 0o777)
    trusted = tmp_path / "trusted"
    trusted.mkdir(mode=0o700)
    (trusted / "link").symlink_to(real)
    _refused_everywhere(trusted / "link" / "state", tmp_path, shared)


def test_a_sticky_world_writable_parent_is_accepted(tmp_path: Path, shared: Path) -> None:
    """Like ``/tmp``: others may write, but only an entry's owner may rename or remove it."""
    os.chmod(shared, 0o1777)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    trio.run(_start, shared / "state", workspace)
    assert (shared / "state" / "acpx").is_dir()
    done = run_cli("leases", state_dir=shared / "state")
    assert done.returncode == 0, done.stderr


def test_a_link_of_another_user_in_a_sticky_directory_is_refused(
    tmp_path: Path, shared: Path,
) -> None:
    """Like ``/tmp``: the sticky bit keeps others from replacing our entries, not theirs: a
    link another user put there (to our private directory, for now) is theirs to re-point."""
    if os.geteuid() != 0:
        pytest.skip("a link of another user needs root to make")
    os.chmod(shared, 0o1777)
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o700)
    link = shared / "their-link"
    link.symlink_to(ours)
    os.lchown(link, NOBODY, -1)
    _refused_everywhere(link / "state", tmp_path, link)
    os.lchown(link, os.geteuid(), -1)  # our own link there is fine
    workspace = tmp_path / "ws"
    trio.run(_start, link / "state", workspace)
    assert (ours / "state" / "acpx").is_dir()
    # theirs in a directory only we write: they cannot replace it, so it is fine too
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o755)
    theirs = closed / "their-link"
    theirs.symlink_to(ours)
    os.lchown(theirs, NOBODY, -1)
    trio.run(_start, theirs / "state2", workspace)
    assert run_cli("leases", state_dir=theirs / "state2").returncode == 0


def test_parents_it_creates_are_private_whatever_the_umask(tmp_path: Path) -> None:
    state = tmp_path / "a" / "b" / "state"
    workspace = tmp_path / "ws"
    workspace.mkdir()
    old = os.umask(0o002)
    try:
        trio.run(_start, state, workspace)
        trio.run(_start, state, workspace)  # and the next start accepts them
    finally:
        os.umask(old)
    for path in (tmp_path / "a", tmp_path / "a" / "b", state):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


@pytest.mark.parametrize("where", ["lease-dir", "session-dir"])
def test_the_runtime_without_a_service_refuses_too(
    tmp_path: Path, shared: Path, where: str
) -> None:
    """``open_acpx_runtime`` with a lease store or session dir of the embedder's choosing:
    the first write there refuses a dir under a writable parent (the lease store's before any
    spawn; the session store's after the handshake, which the ensure then undoes), nothing is
    created there and no agent is left."""
    os.chmod(shared, 0o777)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    leases = shared / "leases" if where == "lease-dir" else tmp_path / "leases"
    sessions = shared / "sessions" if where == "session-dir" else tmp_path / "sessions"
    config = resolve_config({"stateDir": str(sessions)}, str(workspace))
    gateway = f"gw-parents-{uuid.uuid4().hex}"  # (the other case may run at the same time)

    async def main() -> None:
        with trio.fail_after(30):
            async with open_acpx_runtime(config, gateway_instance_id=gateway,
                                         lease_store=LeaseStore(leases)) as runtime:
                refused = StateFileError if where == "lease-dir" else SessionStoreError
                with pytest.raises(refused) as info:
                    await runtime.ensure_session(session_key="k", agent="mock")
                assert str(shared) in str(info.value) and "writable by others" in str(info.value)

    trio.run(main)
    assert os.listdir(shared) == []
    assert tagged_pids(gateway) == []
