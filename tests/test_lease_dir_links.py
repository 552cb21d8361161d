"""A symlinked ``acpx/`` (lease dir) or ``acpx/sessions/`` to another user's or a looser
directory is refused with a typed error naming the path and the fix: nothing is created
inside the link's target, nothing is ``chmod``-ed through it; the CLI commands that open
these dirs exit nonzero with the same error and no traceback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio
from _cli_helpers import run_cli

from acpx_trio._errors import StateFileError
from acpx_trio._service.context import ServiceContext
from acpx_trio._service.startup import prepare_sync
from acpx_trio._store.fsio import ensure_private_dir


class _Quiet:
    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


def _layout(tmp_path: Path, which: str, target_kind: str) -> tuple[Path, Path, Path]:
    """A state dir whose ``which`` (``acpx`` or ``acpx/sessions``) links to a directory:
    ours with mode 0755 (``own``) or nobody's 0755 (``other``)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    target = tmp_path / "target"
    target.mkdir()
    target.chmod(0o755)
    if target_kind == "other":
        if os.geteuid() != 0:
            pytest.skip("chown to another user needs root")
        os.chown(target, 65534, 65534)
    if which == "acpx/sessions":
        (state / "acpx").mkdir(mode=0o700)
    link = state / which
    link.symlink_to(target)
    return state, link, target


@pytest.mark.parametrize("target_kind", ["own", "other"])
@pytest.mark.parametrize("which", ["acpx", "acpx/sessions"])
async def test_service_start_refuses_a_linked_lease_dir(
    tmp_path: Path, which: str, target_kind: str
) -> None:
    state, link, target = _layout(tmp_path, which, target_kind)
    ctx = ServiceContext(workspace_dir=str(tmp_path), state_dir=str(state),
                         logger=_Quiet(), nursery=None)  # type: ignore[arg-type]
    with pytest.raises(StateFileError) as info:
        await trio.to_thread.run_sync(prepare_sync, None, ctx)
    assert info.value.code == "ACPX_STATE_FILE_UNSAFE"
    assert str(link) in str(info.value)
    assert list(target.iterdir()) == []  # no acpx/sessions (or lock) created through the link
    assert target.stat().st_mode & 0o777 == 0o755  # never chmod-ed through the link


def test_strict_link_takes_only_a_link_to_a_0700_dir_of_ours(tmp_path: Path) -> None:
    """A link to a looser dir of ours is refused (it could never be tightened: no chmod
    through a link); one to a 0700 dir of ours (two installations sharing a lease dir) is
    used as it is; a new dir is created 0700."""
    target = tmp_path / "real"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(StateFileError, match="symbolic link") as info:
        ensure_private_dir(tmp_path / "link", strict_link=True)
    assert f"chmod 700 {target}" in str(info.value)
    assert target.stat().st_mode & 0o777 == 0o755
    ensure_private_dir(tmp_path / "link")  # without strict_link (a host state dir): used
    target.chmod(0o700)
    assert ensure_private_dir(tmp_path / "link", strict_link=True) == tmp_path / "link"
    fresh = ensure_private_dir(tmp_path / "a" / "b", strict_link=True)
    assert fresh.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("which", ["acpx", "acpx/sessions"])
def test_cli_commands_refuse_a_linked_lease_dir(tmp_path: Path, which: str) -> None:
    state, link, target = _layout(tmp_path, which, "own")
    for args in (("leases",), ("sessions", "list"), ("reap",), ("reap", "--dry-run"),
                 ("prompt", "--session", "k", "hi")):
        done = run_cli(*args, state_dir=state)
        assert done.returncode != 0, (args, done.stdout)
        assert "ACPX_STATE_FILE_UNSAFE" in done.stderr, (args, done.stderr)
        assert str(link) in done.stderr and "symbolic link" in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr and 'File "' not in done.stderr, done.stderr
        assert list(target.iterdir()) == [], args
