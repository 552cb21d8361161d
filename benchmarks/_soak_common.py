"""Shared parts of the soak scenarios (``benchmarks/soak.py``): results, the process census,
decoys, a signal-recording reaper, and the guaranteed final clean-up.

Every process a scenario starts carries a per-run marker (env ``ACPX_SOAK_MARKER``) or a
gateway id created for the run, so the census and the clean-up only ever look at our own
processes (other test runs and engineers on the machine are left alone).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import trio

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from acpx_trio._process.identity import ProcessInfo, read_start_ticks  # noqa: E402
from acpx_trio._process.reaper import ProcessCleanupDeps, default_cleanup_deps  # noqa: E402
from acpx_trio._store.fsio import FILE_MODE, ensure_private_dir  # noqa: E402
from acpx_trio._store.instance import GATEWAY_ID_FILE_NAME  # noqa: E402
from acpx_trio.testing.logger import ListLogger as ListLogger  # noqa: E402 (re-exported)

MARKER_KEY = "ACPX_SOAK_MARKER"
LEASE_KEY = "OPENCLAW_ACPX_LEASE_ID"
GATEWAY_KEY = "OPENCLAW_GATEWAY_INSTANCE_ID"
MOCK_ARGS = ["-m", "acpx_trio.testing.mock_agent"]


@dataclass
class ScenarioResult:
    """What one scenario found.  ``ok`` only when nothing leaked, was lost or wrongly killed
    and no check failed (``failures`` lists the broken expectations, for the report)."""

    name: str
    cycles: int = 0
    leaked: int = 0
    decoys_killed: int = 0
    lost: int = 0
    failures: list[str] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.leaked or self.decoys_killed or self.lost or self.failures)

    def line(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.figures.items())
        return (
            f"{self.name}: cycles={self.cycles} leaked={self.leaked} "
            f"decoys_killed={self.decoys_killed} lost={self.lost}{extra}"
        )

    def fail(self, message: str) -> None:
        if len(self.failures) < 50:
            self.failures.append(message)


def new_marker() -> str:
    return f"soak-{uuid.uuid4().hex}"


def child_env(marker: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment without lease tags, plus the run marker and the repo on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in (LEASE_KEY, GATEWAY_KEY)}
    env[MARKER_KEY] = marker
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def make_state_dir(path: Path, gateway_id: str | None = None) -> str:
    """Create a 0700 state dir whose ``gateway-instance-id`` is ``gateway_id`` (a fresh one
    by default), so the census knows the id before any service starts."""
    gw = gateway_id or f"gw-soak-{uuid.uuid4().hex}"
    ensure_private_dir(path)
    target = path / GATEWAY_ID_FILE_NAME
    target.write_text(gw + "\n")
    os.chmod(target, FILE_MODE)
    return gw


def rss_mib() -> float:
    """Resident set size of this process now, MiB."""
    return float(psutil.Process().memory_info().rss) / 2**20


class RssSampler:
    """Samples this process's RSS every ``interval`` seconds while running (the process-wide
    ``ru_maxrss`` would include earlier scenarios of the same run)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.baseline = rss_mib()
        self.peak = self.baseline

    async def run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mib())
            await trio.sleep(self.interval)


def private_mode_problems(state_dir: Path) -> list[str]:
    """Directories under ``state_dir`` (itself included) that are not 0700 and files that
    are not 0600 (symlinks are not followed)."""
    problems = []
    for path in [state_dir, *state_dir.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode & 0o777
        want = 0o700 if path.is_dir() else 0o600
        if mode != want:
            problems.append(f"{path.relative_to(state_dir.parent)} is {oct(mode)}")
    return problems


# ------------------------------------------------------------------------------ census


def _env_of(proc: psutil.Process) -> dict[str, str] | None:
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.environ()
    except (psutil.Error, OSError):
        return None


def scan(gateway_ids: Collection[str] = (), marker: str | None = None) -> list[psutil.Process]:
    """Live processes (not us, not zombies) tagged with one of ``gateway_ids`` or carrying
    ``marker``."""
    found: list[psutil.Process] = []
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        env = _env_of(proc)
        if env is None:
            continue
        if env.get(GATEWAY_KEY) in gateway_ids or (marker and env.get(MARKER_KEY) == marker):
            found.append(proc)
    return found


def tagged_alive(gateway_ids: Collection[str], exclude: Collection[int] = ()) -> list[int]:
    """Pids of live processes carrying a lease tag of one of ``gateway_ids``."""
    out = []
    for proc in scan(gateway_ids):
        env = _env_of(proc)
        if env is not None and LEASE_KEY in env and proc.pid not in exclude:
            out.append(proc.pid)
    return sorted(out)


def is_alive(pid: int, ticks: int | None) -> bool:
    """``pid`` still runs (not a zombie) and is the same process (start ticks)."""
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.Error:
        return False
    return ticks is None or read_start_ticks(pid) == ticks


def kill_all(procs: Iterable[psutil.Process], timeout: float = 5.0) -> None:
    """SIGKILL ``procs`` (psutil refuses recycled pids) and wait for them (bounded)."""
    victims = list(procs)
    for proc in victims:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=timeout)


def sweep(gateway_ids: Collection[str], marker: str | None) -> int:
    """Final clean-up: SIGKILL everything of this run; returns how many were still alive."""
    total = 0
    for _ in range(3):  # something may fork while we kill: repeat until quiet
        victims = scan(gateway_ids, marker)
        if not victims:
            break
        total += len(victims)
        kill_all(victims)
    return total


# ------------------------------------------------------------------------------ decoys


@dataclass
class Decoy:
    """A process the soak must never signal."""

    label: str
    popen: subprocess.Popen[bytes]
    ticks: int | None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None and is_alive(self.pid, self.ticks)

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()


def spawn_decoy(
    label: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    prefix: Sequence[str] = (),
) -> Decoy:
    """Start ``prefix + argv`` with ``env``; stdin is a pipe we hold, so an agent look-alike
    never sees EOF.  ``prefix`` (e.g. ``setpriv ...``) may change user; the decoy's pid is
    then the exec'd program's (setpriv execs)."""
    popen = subprocess.Popen(
        [*prefix, *argv],
        env=dict(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        process_group=0,
        cwd="/",
    )
    return Decoy(label, popen, read_start_ticks(popen.pid))


async def settle_decoy(decoy: Decoy, argv0: str, seconds: float = 10.0) -> None:
    """Wait until the decoy's exec is done (its argv[0] base name is ``argv0``), then record
    its start ticks (they do not change across exec)."""
    with trio.fail_after(seconds):
        while True:
            with contextlib.suppress(psutil.Error, IndexError):
                if os.path.basename(psutil.Process(decoy.pid).cmdline()[0]) == argv0:
                    decoy.ticks = read_start_ticks(decoy.pid)
                    return
            await trio.sleep(0.01)


@contextlib.contextmanager
def decoys_cleaned(decoys: list[Decoy]) -> Iterator[list[Decoy]]:
    try:
        yield decoys
    finally:
        for decoy in decoys:
            decoy.kill()


# ------------------------------------------------------------------------------ signals


@dataclass
class SignalLog:
    """Every signal a reaper sent (or tried to), as ``(pid, signal)``."""

    sent: list[tuple[int, int]] = field(default_factory=list)

    def pids(self) -> set[int]:
        return {pid for pid, _sig in self.sent}


def recording_deps(log: SignalLog) -> ProcessCleanupDeps:
    """The real reaper dependencies, with every ``kill_process`` call recorded first."""
    real = default_cleanup_deps()

    async def kill_process(info: ProcessInfo, sig: int) -> bool:
        log.sent.append((info.pid, sig))
        return await real.kill_process(info, sig)

    return ProcessCleanupDeps(
        list_processes=real.list_processes,
        kill_process=kill_process,
        wait_exit=real.wait_exit,
        self_pid=real.self_pid,
        self_uid=real.self_uid,
        boot_id=real.boot_id,
    )


class CapturedLogs(logging.Handler):
    """Captures stdlib log records of ``acpx_trio`` (the lease store logs there)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def warnings(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.WARNING]

    def clear(self) -> None:
        self.records.clear()


@contextlib.contextmanager
def captured_logs() -> Iterator[CapturedLogs]:
    handler = CapturedLogs()
    logger = logging.getLogger("acpx_trio")
    old_level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
