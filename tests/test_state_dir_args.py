"""State dirs and working directories as callers give them: an empty state dir is refused
before anything is created (``Path("")`` is ``.``: the current directory would become the
state dir and be ``chmod``-ed 0700), and a path that cannot be used or resolved (a regular
file, a directory below one, a symbolic link loop, an unknown ``~user``, a NUL byte) gives a
typed error — a one-line refusal on the command line, never a traceback."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest
import trio
from _cli_helpers import REPO_ROOT, run_cli
from hypothesis import example, given, settings
from hypothesis import strategies as st

from acpx_trio import (
    AcpxUsageError,
    ConfigError,
    StateFileError,
    open_runtime_service,
)
from acpx_trio.lowlevel import LeaseStore, SessionStore, resolve_gateway_instance_id_sync

#: The commands that read the state dir (the warm-owner ones first: they used to crash).
STATE_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("status",), ("cancel", "--session", "z"), ("set", "K", "V", "--session", "z"),
    ("set-mode", "M", "--session", "z"), ("leases",), ("sessions",), ("reap",),
)


def _one_line_refusal(done: object, code: int, *needles: str) -> None:
    import subprocess

    assert isinstance(done, subprocess.CompletedProcess)
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and 'File "' not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("acpx-trio: "), done.stderr
    for needle in needles:
        assert needle in lines[0], (needle, done.stderr)


def _snapshot(directory: Path) -> tuple[int, list[str]]:
    return stat.S_IMODE(os.stat(directory).st_mode), sorted(os.listdir(directory))


# -- 1. an empty state dir ---------------------------------------------------------------------
@pytest.mark.parametrize("empty", ["", "   "])
def test_cli_refuses_an_empty_state_dir_and_touches_nothing(tmp_path: Path, empty: str) -> None:
    work = tmp_path / "project"
    work.mkdir()
    work.chmod(0o755)
    (work / "keep.txt").write_text("mine")
    before = _snapshot(work)
    for args in (("exec", "hi"), ("prompt", "--session", "k", "hi"), *STATE_COMMANDS):
        done = run_cli(*args, "--state-dir", empty, cwd=work)
        _one_line_refusal(done, 2, "--state-dir", "must be a non-empty path")
        assert _snapshot(work) == before, args  # mode 755 kept, no acpx/ nor gateway id


async def test_api_refuses_an_empty_state_dir_and_touches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    work = tmp_path / "project"
    work.mkdir()
    work.chmod(0o755)
    monkeypatch.chdir(work)
    before = _snapshot(work)
    for empty in ("", " "):
        with pytest.raises(AcpxUsageError) as info:
            async with open_runtime_service(workspace_dir=".", state_dir=empty):
                raise AssertionError("started on an empty state dir")
        assert info.value.argument == "state_dir" and info.value.code == "ACPX_USAGE"
        with pytest.raises(AcpxUsageError):
            LeaseStore(empty)
        with pytest.raises(AcpxUsageError) as info:
            SessionStore(empty)
        assert info.value.argument == "directory"
        with pytest.raises(AcpxUsageError):
            resolve_gateway_instance_id_sync(empty)
        assert _snapshot(work) == before


async def test_api_refuses_a_state_dir_with_a_nul_byte(tmp_path: Path) -> None:
    bad = str(tmp_path / "st\0ate")
    with pytest.raises(AcpxUsageError) as info:
        async with open_runtime_service(workspace_dir=tmp_path, state_dir=bad):
            raise AssertionError("started")
    assert "NUL" in str(info.value)
    for make in (LeaseStore, SessionStore, resolve_gateway_instance_id_sync):
        with pytest.raises(AcpxUsageError):
            make(bad)
    assert os.listdir(tmp_path) == []


# -- 2. a state dir that is a file, or below one -----------------------------------------------
@pytest.mark.parametrize("below", [False, True])
def test_every_command_refuses_a_file_as_state_dir_in_one_line(
    tmp_path: Path, below: bool,
) -> None:
    blocker = tmp_path / "somefile"
    blocker.write_text("not a directory")
    state = blocker / "sub" if below else blocker
    for args in STATE_COMMANDS:
        done = run_cli(*args, state_dir=state)
        _one_line_refusal(done, 1, "ACPX_STATE_FILE_UNSAFE", str(state))
    assert blocker.read_text() == "not a directory"


# -- 3. paths that cannot be resolved ----------------------------------------------------------
def _loop(tmp_path: Path) -> Path:
    loop = tmp_path / "L"
    loop.symlink_to(loop)
    return loop


def test_cli_refuses_a_link_loop_or_unknown_user_naming_the_option(tmp_path: Path) -> None:
    loop = _loop(tmp_path)
    nobody = "~no-such-user-acpx-trio/state"
    for args in (("leases",), ("status",), ("exec", "hi")):
        for value in (str(loop), str(loop / "below"), nobody):
            done = run_cli(*args, "--state-dir", value, cwd=tmp_path)
            _one_line_refusal(done, 2, f"--state-dir {value}")
        done = run_cli(*args, "--cwd", str(loop), state_dir=tmp_path / "state")
        _one_line_refusal(done, 2, f"--cwd {loop}", "symbolic link loop")
    # as a nonexistent --cwd does
    _one_line_refusal(run_cli("leases", "--cwd", str(tmp_path / "missing"),
                              state_dir=tmp_path / "state"), 2, "--cwd")
    assert sorted(os.listdir(tmp_path)) == ["L"]


def test_cli_refuses_a_link_loop_from_the_environment(tmp_path: Path) -> None:
    loop = _loop(tmp_path)
    done = run_cli("leases", env={"ACPX_TRIO_STATE_DIR": str(loop)}, cwd=tmp_path)
    _one_line_refusal(done, 2, f"$ACPX_TRIO_STATE_DIR {loop}", "symbolic link loop")


async def test_api_gives_typed_errors_for_unresolvable_paths(tmp_path: Path) -> None:
    loop = _loop(tmp_path)
    with pytest.raises(StateFileError) as state_info:
        async with open_runtime_service(workspace_dir=tmp_path, state_dir=loop):
            raise AssertionError("started on a link loop")
    assert str(loop) in str(state_info.value)
    with pytest.raises(AcpxUsageError) as usage_info:
        async with open_runtime_service(workspace_dir=loop, state_dir=tmp_path / "state"):
            raise AssertionError("started in a link loop")
    assert usage_info.value.argument == "workspace_dir"
    for field in ("cwd", "stateDir", "codexHome"):
        with pytest.raises(ConfigError) as config_info:
            async with open_runtime_service(workspace_dir=tmp_path, state_dir=tmp_path / "s2",
                                            plugin_config={field: str(loop)}):
                raise AssertionError("started with a link loop in the config")
        assert field in str(config_info.value)
    with pytest.raises(StateFileError):
        resolve_gateway_instance_id_sync(loop)
    await trio.lowlevel.checkpoint()


# -- the command line's parse/resolve step over odd path strings -------------------------------
#: Stands for a directory of the test's own (a link loop ``L`` and a regular ``file`` in it).
ODD = "<odd>"
_PIECES = st.sampled_from(["", " ", "a", "/", ".", "..", "~", "~no-such-user-acpx", "\0",
                           "a" * 300, ODD + "/L", ODD + "/file", "L", "\n", "é"])
_PATHS = st.lists(_PIECES, max_size=6).map("".join)


@pytest.fixture(scope="module")
def odd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    odd = tmp_path_factory.mktemp("odd")
    (odd / "L").symlink_to(odd / "L")
    (odd / "file").write_text("x")
    return odd


@settings(max_examples=150, deadline=None)
@given(state_dir=st.none() | _PATHS, cwd=st.none() | _PATHS)
@example(state_dir="", cwd=None)
@example(state_dir=ODD + "/L", cwd=None)
@example(state_dir=None, cwd=ODD + "/L")
@example(state_dir="~no-such-user-acpx/x", cwd="a\0b")
def test_resolve_options_raises_only_usage_or_state_dir_errors(
    odd_dir: Path, state_dir: str | None, cwd: str | None,
) -> None:
    """Only what the command line prints as one line: a usage error (exit 2), or a state dir
    it refuses to use (``ACPX_STATE_FILE_UNSAFE``, naming it: a name too long to look up)."""
    from acpx_trio._cli.options import UsageError, resolve_options

    state_dir, cwd = (None if p is None else p.replace(ODD, str(odd_dir))
                      for p in (state_dir, cwd))
    ns = argparse.Namespace()
    if state_dir is not None:
        ns.state_dir = state_dir
    if cwd is not None:
        ns.cwd = cwd
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CONFIG_HOME", str(REPO_ROOT / "tests" / "no-user-config"))
        patch.setenv("ACPX_TRIO_STATE_DIR", str(odd_dir / "state"))
        try:
            opts = resolve_options(ns)
        except UsageError as exc:
            assert str(exc)
            return
        except StateFileError as exc:  # the one refusal these paths can earn: a long name
            assert state_dir is not None and "File name too long" in str(exc), exc
            return
    assert opts.state_dir.is_absolute() and opts.cwd.is_dir()
    assert state_dir is None or state_dir.strip()
