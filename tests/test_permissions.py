"""Permission decisions by mode and policy, and fs confinement to the session cwd."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from acpx_trio._acp import (
    CancelledOutcome,
    PermissionOption,
    PermissionToolCall,
    ReadTextFileRequest,
    RequestPermissionRequest,
    SelectedOutcome,
    WriteTextFileRequest,
)
from acpx_trio._errors import AcpRuntimeError
from acpx_trio._runtime.permissions import (
    FsGate,
    PermissionPolicy,
    WorkDir,
    confined_relative,
    open_in_cwd,
    work_dir,
)

ALLOW = PermissionOption(option_id="a", name="Allow", kind="allow_once")
ALWAYS = PermissionOption(option_id="aa", name="Always", kind="allow_always")
REJECT = PermissionOption(option_id="r", name="Reject", kind="reject_once")


def _cwd(path: Path) -> WorkDir:
    """``path`` as a session cwd (its identity taken now)."""
    wd = work_dir(str(path))
    assert wd is not None
    return wd


def request(
    kind: str | None = "execute",
    title: str | None = "run tests",
    options: list[PermissionOption] | None = None,
) -> RequestPermissionRequest:
    return RequestPermissionRequest(
        session_id="s",
        tool_call=PermissionToolCall(tool_call_id="t1", kind=kind, title=title),
        options=[REJECT, ALLOW] if options is None else options,
    )


def selected(decision: object) -> str | None:
    outcome = decision.response.outcome  # type: ignore[attr-defined]
    return outcome.option_id if isinstance(outcome, SelectedOutcome) else None


def test_approve_all_picks_first_allow_option() -> None:
    policy = PermissionPolicy("approve-all", "fail")
    decision = policy.decide(request(), cancelling=False)
    assert selected(decision) == "a" and decision.verdict == "approved"
    assert selected(policy.decide(request(options=[ALWAYS, ALLOW]), cancelling=False)) == "aa"
    # no allow option: the first option, which here is a reject: counted as denied
    only_reject = policy.decide(request(options=[REJECT]), cancelling=False)
    assert selected(only_reject) == "r" and only_reject.verdict == "denied"
    assert policy.stats.requested == 3 and policy.stats.approved == 2
    assert policy.stats.denied == 1


def test_deny_all_picks_reject_or_cancels() -> None:
    policy = PermissionPolicy("deny-all", "fail")
    decision = policy.decide(request(kind="read"), cancelling=False)
    assert selected(decision) == "r" and decision.verdict == "denied"
    decision = policy.decide(request(options=[ALLOW]), cancelling=False)
    assert isinstance(decision.response.outcome, CancelledOutcome)
    assert decision.verdict == "cancelled" and decision.fail_turn is None
    assert policy.stats.denied == 1 and policy.stats.cancelled == 1


@pytest.mark.parametrize(
    ("kind", "title"),
    [("read", "x"), ("search", "x"), (None, "Read file foo.py"), (None, "grep TODO")],
)
def test_approve_reads_allows_reads(kind: str | None, title: str) -> None:
    policy = PermissionPolicy("approve-reads", "fail")
    decision = policy.decide(request(kind=kind, title=title), cancelling=False)
    assert selected(decision) == "a" and decision.fail_turn is None


def test_approve_reads_non_interactive_deny() -> None:
    policy = PermissionPolicy("approve-reads", "deny")
    decision = policy.decide(request(kind="edit"), cancelling=False)
    assert selected(decision) == "r" and decision.fail_turn is None
    decision = policy.decide(request(kind="edit", options=[ALLOW]), cancelling=False)
    assert isinstance(decision.response.outcome, CancelledOutcome)


def test_approve_reads_non_interactive_fail() -> None:
    policy = PermissionPolicy("approve-reads", "fail")
    decision = policy.decide(request(kind="execute", title="rm -rf build"), cancelling=False)
    assert isinstance(decision.response.outcome, CancelledOutcome)
    assert decision.fail_turn is not None
    assert decision.fail_turn.code == "ACP_PERMISSION_PROMPT_UNAVAILABLE"
    assert "approve-all" in decision.fail_turn.message
    assert "nonInteractivePermissions" in decision.fail_turn.message
    # a title that does not look like a read, without a kind
    assert policy.decide(request(kind=None, title="write x"), cancelling=False).fail_turn


@pytest.mark.parametrize("mode", ["approve-all", "approve-reads", "deny-all"])
def test_cancelling_or_no_options_answers_cancelled(mode: str) -> None:
    policy = PermissionPolicy(mode, "fail")  # type: ignore[arg-type]
    decision = policy.decide(request(kind="read"), cancelling=True)
    assert isinstance(decision.response.outcome, CancelledOutcome)
    assert decision.fail_turn is None
    decision = policy.decide(request(kind="read", options=[]), cancelling=False)
    assert isinstance(decision.response.outcome, CancelledOutcome)
    assert policy.stats.cancelled == 2


# --------------------------------------------------------------------------- fs confinement


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    cwd = tmp_path / "cwd"
    (cwd / "sub").mkdir(parents=True)
    (cwd / "a.txt").write_text("l1\nl2\nl3\nl4\n")
    (tmp_path / "outside.txt").write_text("secret")
    (cwd / "escape").symlink_to(tmp_path)
    (cwd / "inner-link").symlink_to(cwd / "sub")
    return cwd


def refused(path: str, cwd: Path) -> AcpRuntimeError:
    with pytest.raises(AcpRuntimeError) as info:
        os.close(open_in_cwd(path, _cwd(cwd), os.O_RDONLY))
    assert info.value.rpc_code == -32602
    return info.value


def opened(path: str, cwd: Path) -> Path:
    """The file an fd opened beneath ``cwd`` really is."""
    fd = open_in_cwd(path, _cwd(cwd), os.O_RDONLY)
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    finally:
        os.close(fd)


def test_confinement(tree: Path) -> None:
    (tree / "sub" / "x").write_text("x")
    (tree / "rel-link").symlink_to("sub")
    real = tree.resolve()
    assert opened(str(tree / "a.txt"), tree) == real / "a.txt"
    assert opened(str(tree / "sub/../a.txt"), tree) == real / "a.txt"
    assert confined_relative(str(tree / "new/file"), str(tree)) == "new/file"
    # a relative link that stays inside is followed; an absolute one is not (it could be
    # re-pointed anywhere, and the kernel resolves beneath the cwd only)
    assert opened(str(tree / "rel-link/x"), tree) == real / "sub/x"
    assert "symlink" in refused(str(tree / "inner-link/x"), tree).message
    assert "outside" in refused(str(tree / "../outside.txt"), tree).message
    assert "outside" in refused(str(tree.parent / "outside.txt"), tree).message
    assert "outside" in refused("/etc/passwd", tree).message
    assert "outside" in refused(str(tree) + "-sibling/x", tree).message
    assert "symlink" in refused(str(tree / "escape/outside.txt"), tree).message
    assert "NUL" in refused(str(tree / "a.txt") + "\0", tree).message
    assert "absolute" in refused("a.txt", tree).message
    assert "absolute" in refused("./a.txt", tree).message
    refused("", tree)


async def test_reads_honour_line_and_limit(tree: Path) -> None:
    gate = FsGate(_cwd(tree), PermissionPolicy("approve-reads", "fail"))

    async def read(line: int | None = None, limit: int | None = None) -> str:
        req = ReadTextFileRequest(session_id="s", path=str(tree / "a.txt"), line=line, limit=limit)
        return (await gate.read_text_file(req)).content

    assert await read() == "l1\nl2\nl3\nl4\n"
    assert await read(line=2) == "l2\nl3\nl4\n"
    assert await read(line=2, limit=2) == "l2\nl3\n"
    assert await read(limit=1) == "l1\n"
    assert await read(line=10) == ""
    with pytest.raises(AcpRuntimeError) as info:
        await read(line=0)
    assert info.value.rpc_code == -32602
    with pytest.raises(AcpRuntimeError) as info:
        await gate.read_text_file(ReadTextFileRequest(session_id="s", path=str(tree / "nope")))
    assert info.value.rpc_code == -32002


async def test_a_file_that_grows_after_its_size_check_is_still_capped(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The size is checked, then the file read: one that grew in between (an agent writing
    to it once it sees the open) was returned whole, 16 times the cap (7 of 30 races).
    Here the size check sees the file as it was before it grew."""
    from acpx_trio._runtime import permissions

    big = tree / "grows.txt"
    big.write_bytes(b"x" * (permissions.MAX_READ_BYTES + 10))
    real_fstat = os.fstat

    def before_it_grew(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        if st.st_size <= permissions.MAX_READ_BYTES:
            return st
        fields = list(st)
        fields[6] = 10  # st_size
        return os.stat_result(fields)

    monkeypatch.setattr(os, "fstat", before_it_grew)
    gate = FsGate(_cwd(tree), PermissionPolicy("approve-reads", "fail"))
    with pytest.raises(AcpRuntimeError) as info:
        await gate.read_text_file(ReadTextFileRequest(session_id="s", path=str(big)))
    assert "larger than" in info.value.message
    monkeypatch.undo()
    small = tree / "crlf.txt"
    small.write_bytes(b"a\r\nb\rc\n\xff")  # read as a text-mode read decodes it
    content = (await gate.read_text_file(
        ReadTextFileRequest(session_id="s", path=str(small)))).content
    assert content == "a\nb\nc\n\ufffd"


async def test_reads_denied_under_deny_all(tree: Path) -> None:
    gate = FsGate(_cwd(tree), PermissionPolicy("deny-all", "deny"))
    with pytest.raises(AcpRuntimeError) as info:
        await gate.read_text_file(ReadTextFileRequest(session_id="s", path=str(tree / "a.txt")))
    assert "deny-all" in info.value.message


async def test_writes_by_mode(tree: Path) -> None:
    target = tree / "deep" / "dir" / "out.txt"
    req = WriteTextFileRequest(session_id="s", path=str(target), content="hi")
    await FsGate(_cwd(tree), PermissionPolicy("approve-all", "fail")).write_text_file(req)
    assert target.read_text() == "hi"
    target.unlink()
    for mode, policy in (("deny-all", "fail"), ("approve-reads", "deny")):
        failures: list[AcpRuntimeError] = []
        gate = FsGate(_cwd(tree), PermissionPolicy(mode, policy),  # type: ignore[arg-type]
                      on_turn_failure=failures.append)
        with pytest.raises(AcpRuntimeError) as info:
            await gate.write_text_file(req)
        assert "denied" in info.value.message and not failures
    failures = []
    gate = FsGate(_cwd(tree), PermissionPolicy("approve-reads", "fail"),
                  on_turn_failure=failures.append)
    with pytest.raises(AcpRuntimeError):
        await gate.write_text_file(req)
    assert [f.code for f in failures] == ["ACP_PERMISSION_PROMPT_UNAVAILABLE"]
    assert not target.exists()


async def test_writes_refuse_escapes(tree: Path) -> None:
    gate = FsGate(_cwd(tree), PermissionPolicy("approve-all", "fail"))
    for path in (
        str(tree / "../evil.txt"),
        str(tree / "escape/evil.txt"),
        "evil.txt",
        str(tree / "evil\0.txt"),
    ):
        with pytest.raises(AcpRuntimeError) as info:
            await gate.write_text_file(WriteTextFileRequest(session_id="s", path=path, content="x"))
        assert info.value.rpc_code == -32602
    assert not (tree.parent / "evil.txt").exists()
    assert sorted(os.listdir(tree.parent)) == ["cwd", "outside.txt"]
