"""``fs/read_text_file`` cannot be raced outside the session cwd (issue 19 hole 1): while a
thread flips ``cwd/d`` between a real directory and a symlink to an outside directory, no read
returns the outside file.  Before the fix (check, then open) 221 of 2,000 reads did."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import trio
from _soak_security import flip_dir

from acpx_trio._acp._messages import ReadTextFileRequest, WriteTextFileRequest
from acpx_trio._errors import AcpRuntimeError
from acpx_trio._runtime.permissions import FsGate, PermissionPolicy, WorkDir, work_dir

#: reads per run in the default suite; ``ACPX_FS_RACE_READS=10000`` for the full measure
READS = int(os.environ.get("ACPX_FS_RACE_READS", "2000"))

def _cwd(path: Path) -> WorkDir:
    """``path`` as a session cwd (its identity taken now)."""
    wd = work_dir(str(path))
    assert wd is not None
    return wd



async def test_reads_never_leave_the_cwd_while_a_dir_flips_to_a_symlink(tmp_path: Path) -> None:
    cwd, outside = tmp_path / "cwd", tmp_path / "outside"
    (cwd / "d.real").mkdir(parents=True)
    outside.mkdir()
    (cwd / "d.real" / "hostname").write_text("inside")
    (outside / "hostname").write_text("OUTSIDE-SECRET")
    gate = FsGate(_cwd(cwd), PermissionPolicy("approve-reads", "fail"))
    request = ReadTextFileRequest(session_id="s", path=str(cwd / "d" / "hostname"))
    stop = threading.Event()
    flipper = threading.Thread(target=flip_dir, args=(cwd, outside, stop), daemon=True)
    flipper.start()
    inside = leaked = refused = 0
    try:
        for _ in range(READS):
            try:
                content = (await gate.read_text_file(request)).content
            except AcpRuntimeError:
                refused += 1
                continue
            if content == "OUTSIDE-SECRET":
                leaked += 1
            else:
                inside += 1
    finally:
        stop.set()
        await trio.to_thread.run_sync(flipper.join)
    print(f"reads={READS} inside={inside} refused={refused} outside={leaked}")
    assert leaked == 0, f"{leaked}/{READS} reads returned the file outside the cwd"
    assert inside > 0, "the race never let a read through: the test proves nothing"
    assert refused > 0, "the flip never showed a symlink: the test proves nothing"


async def test_writes_never_leave_the_cwd_through_a_symlinked_parent(tmp_path: Path) -> None:
    cwd, outside = tmp_path / "cwd", tmp_path / "outside"
    cwd.mkdir()
    outside.mkdir()
    (cwd / "link").symlink_to(outside)
    gate = FsGate(_cwd(cwd), PermissionPolicy("approve-all", "fail"))
    for path in (cwd / "link" / "new.txt", cwd / "link"):
        try:
            await gate.write_text_file(
                WriteTextFileRequest(session_id="s", path=str(path), content="x"))
        except AcpRuntimeError as exc:
            assert exc.rpc_code is not None
        else:
            raise AssertionError(f"write through {path} was allowed")
    assert list(outside.iterdir()) == []
    assert (cwd / "link").is_symlink()
    await gate.write_text_file(
        WriteTextFileRequest(session_id="s", path=str(cwd / "a" / "b" / "c.txt"), content="ok"))
    assert (cwd / "a" / "b" / "c.txt").read_text() == "ok"
