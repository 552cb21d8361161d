"""Run every benchmark once, collect their ``RESULT`` lines, and exit non-zero when a target
is missed (or a benchmark fails).

Run: ``python benchmarks/run_all.py [--quick] [--out results.md]``.  ``--quick`` uses smaller
sizes (for a smoke run; its figures are not the README's).  ``--out`` writes a Markdown table
of the results with the machine, its load and the date.  Before each benchmark it waits
(at most 3 minutes) until the machine is quiet (:func:`settle`), and says so in the notes
when that took more than 2 s.  The soak (``soak.py``) is not part of
it: it is a reliability run, not a speed figure.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
#: At most this many other runnable tasks (a median over one second) counts as quiet.
QUIET_RUNNABLE = 0.5
#: Seconds :func:`settle` waits for a quiet machine at most before a benchmark.
SETTLE_LIMIT = 180.0

BENCHMARKS: list[tuple[str, list[str], list[str]]] = [
    # (script, full args, quick args); "-bg3000": the same on a busy machine (3,000 idle
    # background processes), the scale series: reap 50/200/1,000 trees, sessions 10/50/200
    ("turns.py", ["--n", "20"], ["--n", "6", "--chunks", "2000"]),
    ("turns.py", ["--n", "20", "--containment", "process-group", "--lifecycle-only"],
     ["--n", "4", "--containment", "process-group", "--lifecycle-only"]),
    ("turns.py", ["--n", "10", "--background", "3000", "--lifecycle-only"],
     ["--n", "4", "--background", "300", "--lifecycle-only"]),
    ("turns.py", ["--n", "10", "--background", "3000", "--lifecycle-only", "--containment",
                  "process-group"],
     ["--n", "4", "--background", "300", "--lifecycle-only", "--containment",
      "process-group"]),
    ("lease_store.py", ["--rounds", "30"], ["--rounds", "9", "--leases", "2000"]),
    ("cli_import.py", ["--n", "15"], ["--n", "5"]),
    ("cli_vs_acpx.py", ["--n", "10"], ["--n", "3"]),
    ("warm_stream.py", ["--n", "7"], ["--n", "3", "--chunks", "5000"]),
    ("reap.py", ["--measure-seed"], ["--leases", "40", "--stubborn", "4"]),
    ("reap.py", ["--scale", "--close", "20"], ["--leases", "40", "--stubborn", "4"]),
    ("reap.py", ["--scale", "--close", "20", "--background", "3000"],
     ["--leases", "40", "--stubborn", "4", "--background", "300"]),
    ("churn.py", ["--cycles", "20000", "--skip-runtime"], ["--cycles", "3000",
                                                           "--skip-runtime"]),
    ("sdk_peer.py", ["--reps", "7"], ["--reps", "3", "--chunks", "2000"]),
    ("transcript.py", ["--n", "20"], ["--n", "6", "--chunks", "2000"]),
    ("containment.py", [], ["--spawns", "10", "--closes", "5", "--trees", "50",
                            "--owner-deaths", "2"]),
    ("containment.py", ["--background", "3000"],
     ["--spawns", "10", "--closes", "5", "--trees", "50", "--owner-deaths", "2",
      "--background", "300"]),
    # last: 200 agents at once leave the load average high for minutes (figures taken
    # after it would be taken on a loaded machine)
    ("concurrency.py", ["--reps", "3", "--sessions", "10", "50", "200"],
     ["--reps", "2", "--sessions", "10"]),
]


def _runnable_others() -> int:
    """Tasks running or ready to run on the machine now, this process excluded
    (``procs_running`` of ``/proc/stat``)."""
    with open("/proc/stat", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("procs_running"):
                return max(0, int(line.split()[1]) - 1)
    return 0


def _zombies() -> int:
    count = 0
    for proc in psutil.process_iter(["status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            count += 1
    return count


def settle(zombie_floor: int = 0, limit: float = SETTLE_LIMIT) -> tuple[float, bool]:
    """Wait until the machine is quiet before the next benchmark: for one whole second no more
    zombies than ``zombie_floor`` (those the machine had before the first benchmark: some
    parent may never reap its own) and at most :data:`QUIET_RUNNABLE` other runnable task
    (median of ten samples). A benchmark that ends thousands of processes (the reap series)
    leaves pid 1 reaping them and the kernel tearing them down for a while after it
    returns; what ran next then ran on a loaded machine. The 1-minute load average cannot
    tell: it lags by minutes. Returns the seconds waited and whether the machine was quiet
    (``False``: ``limit`` ran out)."""
    start = time.monotonic()
    while True:
        samples = []
        for _ in range(10):
            samples.append(_runnable_others())
            time.sleep(0.1)
        if statistics.median(samples) <= QUIET_RUNNABLE and _zombies() <= zombie_floor:
            return time.monotonic() - start, True
        if time.monotonic() - start >= limit:
            return time.monotonic() - start, False


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.system()} {platform.release()}, {os.cpu_count()} cpus ({cpu}), "
            f"Python {platform.python_version()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--only", nargs="*", help="script names to run (default: all)")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()
    zombie_floor = _zombies()
    rows: list[str] = []
    infos: list[str] = []
    failed: list[str] = []
    for script, full, quick in BENCHMARKS:
        if args.only and script not in args.only:
            continue
        argv = [sys.executable, str(HERE / script), *(quick if args.quick else full)]
        waited, quiet = settle(zombie_floor)
        print(f"== {script} {' '.join(argv[2:])} (after {waited:.1f} s settling"
              f"{'' if quiet else ', NOT quiet'})", flush=True)
        if waited > 2.0 or not quiet:
            infos.append(f"run_all | {script} {' '.join(argv[2:])} started after {waited:.0f} s "
                         f"of waiting for a quiet machine"
                         f"{'' if quiet else ' (still not quiet: ran anyway)'}")
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        out = done.stdout + done.stderr
        lines = [ln for ln in out.splitlines() if ln.startswith(("RESULT", "INFO"))]
        for line in lines:
            print(line, flush=True)
        rows += [ln for ln in lines if ln.startswith("RESULT")]
        infos += [ln.removeprefix("INFO").strip() for ln in lines if ln.startswith("INFO")]
        if done.returncode != 0:
            failed.append(script)
            if not any(ln.startswith("RESULT") for ln in lines):
                print(out[-2000:], flush=True)
    load_after = os.getloadavg()
    commit = subprocess.run(["git", "-C", str(HERE), "describe", "--always", "--dirty"],
                            capture_output=True, text=True, check=False).stdout.strip()
    header = (f"Machine: {machine()}.  Commit {commit or '?'}.  Run: {started}, load average "
              f"{load_before[0]:.2f}/{load_before[1]:.2f} before, "
              f"{load_after[0]:.2f}/{load_after[1]:.2f} after"
              f"{' (quick sizes)' if args.quick else ''}.")
    print(header)
    if args.out is not None:
        table = ["| benchmark | ours | baseline | ratio | target | load at the time | result |",
                 "|---|---|---|---|---|---|---|"]
        for row in rows:
            cells = [c.strip() for c in row.removeprefix("RESULT").split("|")]
            if len(cells) >= 8:
                name, ours, base, ratio, target, load, _when, verdict = cells[:8]
                table.append(f"| {name} | {ours} | {base.removeprefix('baseline ')} | "
                             f"{ratio.removeprefix('ratio ')} | {target.removeprefix('target ')}"
                             f" | {load.removeprefix('load ')} | {verdict} |")
            elif len(cells) >= 2:
                table.append(f"| {cells[0]} | {cells[1]} | | | | | SKIP |")
        notes = "".join(f"* {line}\n" for line in infos)
        args.out.write_text(header + "\n\n" + "\n".join(table) + "\n\n" + notes)
    if failed:
        print(f"targets missed or benchmark failed: {', '.join(failed)}")
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
