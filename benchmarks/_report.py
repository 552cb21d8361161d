"""One-line benchmark results: ``RESULT name | ours | baseline | ratio | target | load | PASS``.

Every benchmark prints its figures through :func:`result`, so ``run_all.py`` (and a reader) can
collect them; :func:`load` is the 1-minute load average and the number of processes on the
machine at the time of the figure (the machine may be shared).  A benchmark exits 1 when one
of its targets is missed.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import time
from collections.abc import Iterator, Sequence

__all__ = ["background", "load", "median", "processes", "result", "skip"]


def processes() -> int:
    """Processes on the machine now (the cost of a /proc pass grows with it)."""
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


@contextlib.contextmanager
def background(n: int) -> Iterator[None]:
    """A busy machine for the duration: ``n`` idle ``sleep`` processes (each in its own
    session); all SIGKILLed and reaped at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL,
                                          start_new_session=True))
        yield
    finally:
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.kill()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired, ChildProcessError):
                proc.wait(timeout=5)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f} on {os.cpu_count()} cpus, {processes()} processes"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def result(
    name: str, ours: str, baseline: str, ratio: float, target: str, ok: bool
) -> bool:
    """Prints one result line; returns ``ok``."""
    print(
        f"RESULT {name} | {ours} | baseline {baseline} | ratio {ratio:.3f} | "
        f"target {target} | {load()} | {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} | "
        f"{'PASS' if ok else 'FAIL'}",
        flush=True,
    )
    return ok


def skip(name: str, why: str) -> None:
    print(f"RESULT {name} | SKIP: {why} | {load()}", flush=True)
