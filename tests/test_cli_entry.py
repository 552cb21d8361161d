"""The command line's process end (``acpx_trio._cli.entry``): the exit without the
interpreter's teardown loses no output and skips no ``atexit`` handler; where it cannot show
that cheaply, or a profiler, tracer or ``python -i`` runs the command, the interpreter's own
exit runs.  An output that cannot be written ends the command with a typed error."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _cli_helpers import CLI_TIMEOUT, REPO_ROOT, assert_nothing_left, cli_env

CHUNKS = 20_000  # "chunk N\n" each: ~229 KiB, far beyond a pipe's and stdout's buffers


def _buffered_env() -> dict[str, str]:
    """The command line's environment with stdout and stderr buffered, as a user's are (a
    ``PYTHONUNBUFFERED`` of the machine running the tests would hide a lost buffer)."""
    env = cli_env()
    env.pop("PYTHONUNBUFFERED", None)
    return env


def _entry_points() -> list[list[str]]:
    points = [[sys.executable, "-m", "acpx_trio"]]
    script = Path(sys.executable).with_name("acpx-trio")
    if script.exists():  # the console script of an installed checkout
        points.append([str(script)])
    return points


@pytest.mark.parametrize("entry", _entry_points(), ids=lambda argv: Path(argv[-1]).name)
def test_a_one_shot_exec_loses_no_output_at_its_fast_exit(tmp_path: Path,
                                                          entry: list[str]) -> None:
    """Through a pipe (stdout block-buffered), the whole reply arrives, the last partial
    buffer included, and the exit status is the command's."""
    (tmp_path / "ws").mkdir()
    done = subprocess.run(
        [*entry, "--state-dir", str(tmp_path / "state"), "exec", "--cwd", str(tmp_path / "ws"),
         "--approve-all", f"/chunks {CHUNKS}"],
        capture_output=True, env=_buffered_env(), timeout=CLI_TIMEOUT, cwd=REPO_ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines == [f"chunk {i}" for i in range(CHUNKS)]
    assert_nothing_left(tmp_path / "state")


def _child(body: str, tmp_path: Path, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    script = tmp_path / "child.py"
    script.write_text("from acpx_trio._cli.entry import end_process\n" + textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script)], env=_buffered_env(), timeout=CLI_TIMEOUT,
                          check=False, **kwargs)  # type: ignore[call-overload,no-any-return]


def test_end_process_runs_the_atexit_handlers_and_flushes_both_streams(tmp_path: Path) -> None:
    marker = tmp_path / "atexit"
    done = _child(f"""
        import atexit, logging, pathlib, sys
        logging.basicConfig(format="%(message)s")
        atexit.register(pathlib.Path({str(marker)!r}).write_text, "ran")
        print("out", end="")
        sys.stderr.write("err")
        logging.getLogger("x").warning("logged")
        end_process(7)
        print("never")
        """, tmp_path, capture_output=True)
    assert done.returncode == 7
    assert done.stdout == b"out"
    assert done.stderr == b"errlogged\n"
    assert marker.read_text() == "ran"


def test_end_process_leaves_a_running_non_daemon_thread_to_the_interpreter(
        tmp_path: Path) -> None:
    """The interpreter waits for such a thread: so does the exit (its work, which takes a
    while on purpose, lands)."""
    marker = tmp_path / "thread"
    done = _child(f"""
        import pathlib, threading, time
        def work():
            time.sleep(0.3)  # still working when the main thread ends the process
            pathlib.Path({str(marker)!r}).write_text("done")
        threading.Thread(target=work).start()
        end_process(3)
        """, tmp_path)
    assert done.returncode == 3
    assert marker.read_text() == "done"


def test_end_process_leaves_a_failed_flush_to_the_interpreter(tmp_path: Path) -> None:
    """A reader that closed stdout: the interpreter reports the broken pipe and exits 120,
    as it does without the fast exit."""
    script = tmp_path / "child.py"
    script.write_text("from acpx_trio._cli.entry import end_process\n"
                      "import sys\n"
                      "sys.stdin.read()\n"  # until the reader below has gone
                      "print('buffered, never delivered')\n"
                      "end_process(0)\n")
    child = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=_buffered_env())
    assert child.stdout is not None and child.stdin is not None and child.stderr is not None
    child.stdout.close()
    child.stdin.close()
    try:
        assert child.wait(timeout=CLI_TIMEOUT) == 120
        assert b"BrokenPipeError" in child.stderr.read()
    finally:
        child.stderr.close()


def test_a_profiled_command_line_leaves_the_end_to_its_profiler(tmp_path: Path) -> None:
    """``python -m cProfile -m acpx_trio ...``: the profiler prints its report (it runs after
    the module, so a fast exit would lose it)."""
    done = subprocess.run(
        [sys.executable, "-m", "cProfile", "-m", "acpx_trio", "--state-dir",
         str(tmp_path / "state"), "status"],
        capture_output=True, text=True, env=_buffered_env(), timeout=CLI_TIMEOUT, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "function calls" in done.stdout and "Ordered by" in done.stdout


def test_python_i_gets_its_prompt_after_the_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-i", "-m", "acpx_trio", "--state-dir", str(tmp_path / "state"),
         "status"], input="print('in the repl')\n",
        capture_output=True, text=True, env=_buffered_env(), timeout=CLI_TIMEOUT, check=False,
    )
    assert "in the repl" in done.stdout, (done.stdout, done.stderr)


@pytest.mark.parametrize("hook", ["sys.settrace", "sys.setprofile"])
def test_end_process_under_a_tracer_or_profiler_leaves_the_end_to_the_interpreter(
        tmp_path: Path, hook: str) -> None:
    """Coverage, ``pdb`` and ``trace`` set a trace function: the interpreter's exit runs,
    with its teardown (a finalizer that only the teardown runs is seen)."""
    done = _child(f"""
        import os, sys
        class Finalized:
            def __del__(self, write=os.write):
                write(1, b"finalized")
        keep = Finalized()
        {hook}(lambda *args: None)
        end_process(5)
        """, tmp_path, capture_output=True)
    assert done.returncode == 5
    assert done.stdout == b"finalized"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("unbuffered", [False, True])
def test_an_output_that_cannot_be_written_ends_the_command_with_a_typed_error(
        tmp_path: Path, unbuffered: bool) -> None:
    """stdout on a full device: the turn stops, its agent is closed, the command says why in
    one line and exits 1 (no traceback, no "Exception ignored" at the exit)."""
    (tmp_path / "ws").mkdir()
    env = _buffered_env() | ({"PYTHONUNBUFFERED": "1"} if unbuffered else {})
    state = str(tmp_path / "state")
    for args in (["exec", "--cwd", str(tmp_path / "ws"), "--approve-all", f"/chunks {CHUNKS}"],
                 ["leases", "--all"]):
        with open("/dev/full", "w") as full:
            done = subprocess.run(
                [sys.executable, "-m", "acpx_trio", "--state-dir", state, *args], stdout=full,
                stderr=subprocess.PIPE, text=True, env=env, timeout=CLI_TIMEOUT, cwd=REPO_ROOT,
                check=False,
            )
        assert done.returncode == 1, done.stderr
        assert done.stderr == ("acpx-trio: ACPX_OUTPUT_FAILED: cannot write to stdout: No space "
                               "left on device\n")
    assert_nothing_left(tmp_path / "state")
