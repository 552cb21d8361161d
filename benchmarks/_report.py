"""One-line benchmark results: ``RESULT name | ours | baseline | ratio | target | load | PASS``.

Every benchmark prints its figures through :func:`result`, so ``run_all.py`` (and a reader) can
collect them; :func:`load` is the 1-minute load average and the number of processes on the
machine at the time of the figure (the machine may be shared).  A benchmark exits 1 when one
of its targets is missed.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence

__all__ = ["load", "median", "processes", "result", "skip"]


def processes() -> int:
    """Processes on the machine now (the cost of a /proc pass grows with it)."""
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


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
