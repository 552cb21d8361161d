"""Benchmark: what the owner-death watchdog costs, against a bare interpreter measured in the
same run.

    python benchmarks/watchdog.py [--runs 10]

* ``start``: wall time of a watchdog that starts, arms (pidfd + poll) and is told to stop at
  once, versus ``python -c pass`` and ``python -S -c pass`` (the baselines), and versus the
  same watchdog started without ``-S``.
* ``rss``: resident memory of an armed, idle watchdog, versus an idle bare ``python -S``;
  then once its owner has lived ``PRELOAD_SECONDS`` and it has loaded the reap's modules.
* ``owner-death``: from SIGKILL of an owner with no open lease to the watchdog's exit (pidfd
  wake-up, import of the reaper, one lease-file read).

Everything it starts is killed at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from acpx_trio._process.identity import read_start_ticks, self_identity
from acpx_trio._process.watchdog import STOP, _child_env, watchdog_argv
from acpx_trio._process.watchdog_wait import PRELOAD_SECONDS

SLEEPER = "import time\ntime.sleep(3600)\n"


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def time_cmd(argv: list[str], env: dict[str, str], runs: int) -> float:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdin=subprocess.DEVNULL)
        out.append(time.perf_counter() - t)
    return _median(out)


def _spawn_watchdog(lease_dir: str, *, site: bool, owner: int | None = None
                    ) -> tuple[subprocess.Popen[bytes], int]:
    r, w = os.pipe()
    pid = owner if owner is not None else os.getpid()
    start = self_identity()[1] if owner is None else 0.0
    argv = watchdog_argv(r, pid, read_start_ticks(pid), start, lease_dir, "gw-bench", 0.75)
    if site:
        argv.remove("-S")
    proc = subprocess.Popen(argv, pass_fds=(r,), env=_child_env(), start_new_session=True,
                            stdin=subprocess.DEVNULL)
    os.close(r)
    return proc, w


def time_watchdog(lease_dir: str, runs: int, *, site: bool) -> float:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        proc, w = _spawn_watchdog(lease_dir, site=site)
        os.write(w, STOP)
        os.close(w)
        proc.wait()
        out.append(time.perf_counter() - t)
    return _median(out)


def _armed(pid: int) -> bool:
    """Blocked in poll (sleeping, its pidfd open)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    return "State:\tS" in status and any(
        os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[pidfd]" for fd in fds
    )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wait_until(pred: object, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    env = _child_env()
    lease_dir = tempfile.mkdtemp(prefix="acpx-wd-bench-")
    load = os.getloadavg()[0]
    bare = time_cmd([sys.executable, "-c", "pass"], env, args.runs)
    bare_s = time_cmd([sys.executable, "-S", "-c", "pass"], env, args.runs)
    dog = time_watchdog(lease_dir, args.runs, site=False)
    dog_site = time_watchdog(lease_dir, args.runs, site=True)
    print(f"machine: {os.cpu_count()} cores, load average {load:.2f}")
    print(f"start: watchdog -S {dog * 1000:.1f} ms; python -c pass {bare * 1000:.1f} ms "
          f"(ratio {dog / bare:.2f}); python -S -c pass {bare_s * 1000:.1f} ms "
          f"(ratio {dog / bare_s:.2f}); watchdog without -S {dog_site * 1000:.1f} ms")

    procs: list[subprocess.Popen[bytes]] = []
    try:
        idle = subprocess.Popen([sys.executable, "-S", "-c", SLEEPER], env=env)
        procs.append(idle)
        proc, w = _spawn_watchdog(lease_dir, site=False)
        procs.append(proc)
        wait_until(lambda: _armed(proc.pid))
        wait_until(lambda: rss_kib(idle.pid) > 0)
        dog_rss, idle_rss = rss_kib(proc.pid), rss_kib(idle.pid)
        print(f"rss: armed watchdog {dog_rss} KiB; idle python -S {idle_rss} KiB "
              f"(ratio {dog_rss / idle_rss:.2f})")
        wait_until(lambda: "_psutil_linux" in Path(f"/proc/{proc.pid}/maps").read_text(),
                   PRELOAD_SECONDS + 10)
        print(f"rss: the same watchdog once it loaded the reap ({PRELOAD_SECONDS:.1f} s after "
              f"it armed) {rss_kib(proc.pid)} KiB")
        os.write(w, STOP)
        os.close(w)
        proc.wait()

        for loaded in (False, True):
            deaths = []
            for _ in range(max(3, args.runs // 2)):
                owner = subprocess.Popen([sys.executable, "-S", "-c", SLEEPER], env=env)
                procs.append(owner)
                wait_until(lambda o=owner: read_start_ticks(o.pid) is not None)
                dog_proc, w = _spawn_watchdog(lease_dir, site=False, owner=owner.pid)
                procs.append(dog_proc)
                wait_until(lambda d=dog_proc: _armed(d.pid))
                if loaded:
                    wait_until(lambda d=dog_proc: "_psutil_linux"
                               in Path(f"/proc/{d.pid}/maps").read_text(), PRELOAD_SECONDS + 10)
                t = time.perf_counter()
                owner.send_signal(signal.SIGKILL)
                owner.wait()
                dog_proc.wait()
                deaths.append(time.perf_counter() - t)
                os.close(w)
            what = ("after it loaded the reap: detection + one lease-file read" if loaded
                    else "just armed: detection + the reap's import + one lease-file read")
            print(f"owner-death: watchdog exit {_median(deaths) * 1000:.1f} ms after SIGKILL "
                  f"(median of {len(deaths)}; no lease to reap; {what})")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


if __name__ == "__main__":
    main()
