"""One-shot prompt latency: ``acpx-trio exec`` against the acpx CLI (npm ``acpx``).

Both run the same bundled mock agent (``python -m acpx_trio.testing.mock_agent``) for the same
prompt, from a cold process each time: ``python -m acpx_trio exec ...`` and
``acpx --agent "<cmd>" --approve-all --cwd DIR --format quiet exec ...``.  Runs alternate
(ours, acpx, ours, ...) in one process so machine noise hits both alike.  Target: the median
of ours <= acpx's (ratio <= 1.0).

acpx is installed from npm into a temporary folder (``npm install --prefix TMP acpx@VERSION``,
falling back to ``acpx@latest``), which is removed afterwards.  Without node/npm, or when the
install or a warm-up run of acpx fails, the benchmark prints ``SKIP: <why>`` and exits 0.

Warm row: second and later prompts on one named session, each a new CLI process, with the
agent kept warm by each tool's owner process: ``acpx-trio prompt --session bench`` (the state
dir's warm owner) against ``acpx prompt -s bench`` (acpx's queue owner), after one untimed
first prompt each.  Target: median ratio <= 0.5.  Both sessions are closed at the end (owners
and agents exit).

Run: ``python benchmarks/cli_vs_acpx.py [--n 10] [--acpx-version 0.19.1] [--skip-cold]``.
Prints both medians and the ratio of each row; exits 1 if a target is missed or an output is
wrong.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMPT = "hello from the benchmark"
TARGET_RATIO = 1.0
WARM_TARGET_RATIO = 0.5
SESSION = "bench"
RUN_TIMEOUT = 120.0
INSTALL_TIMEOUT = 600.0


def skip(why: str) -> NoReturn:
    print(f"SKIP: {why}")
    raise SystemExit(0)


def install_acpx(prefix: Path, version: str) -> Path:
    """``node_modules/.bin/acpx`` under ``prefix``; skips (exit 0) when it cannot be had."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        skip("node and npm are needed to install the acpx CLI (npm package `acpx`)")
    errors = []
    for spec in dict.fromkeys([f"acpx@{version}", "acpx@latest"]):
        try:
            done = subprocess.run(
                [npm, "install", "--prefix", str(prefix), spec, "--no-audit", "--no-fund",
                 "--loglevel=error"],
                capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False,
            )
        except subprocess.TimeoutExpired:
            errors.append(f"{spec}: npm install timed out")
            continue
        binary = prefix / "node_modules" / ".bin" / "acpx"
        if done.returncode == 0 and binary.exists():
            return binary
        errors.append(f"{spec}: {(done.stderr or done.stdout).strip()[-300:]}")
    skip("npm install of acpx failed: " + " | ".join(errors))


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=RUN_TIMEOUT, check=False, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv[:4])}... exited {done.returncode}: "
                           f"{done.stderr.strip()[-500:]}")
    return elapsed, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="runs of each CLI (default 10)")
    parser.add_argument("--acpx-version", default="0.19.1")
    parser.add_argument("--skip-cold", action="store_true", help="only the warm row")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="acpx-bench-") as tmp_name:
        tmp = Path(tmp_name)
        acpx = install_acpx(tmp / "npm", args.acpx_version)
        work = tmp / "work"
        work.mkdir()
        home = tmp / "home"  # acpx keeps its sessions under $HOME/.acpx
        home.mkdir()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
        env["HOME"] = str(home)
        env["NO_COLOR"] = "1"
        env.pop("ACPX_TRIO_STATE_DIR", None)
        agent = shlex.join([sys.executable, "-m", "acpx_trio.testing.mock_agent"])
        ours = [sys.executable, "-m", "acpx_trio", "--state-dir", str(tmp / "state"),
                "exec", "--cwd", str(work), "--approve-all", PROMPT]
        theirs = [str(acpx), "--agent", agent, "--approve-all", "--cwd", str(work),
                  "--format", "quiet", "exec", PROMPT]
        version = subprocess.run([str(acpx), "--version"], capture_output=True, text=True,
                                 env=env, timeout=RUN_TIMEOUT, check=False).stdout.strip()
        node = subprocess.run(["node", "--version"], capture_output=True, text=True,
                              timeout=RUN_TIMEOUT, check=False).stdout.strip()
        try:  # warm-up (file caches, npm's first start) and a correctness check of both
            for argv in (ours, theirs):
                _, out = timed(argv, env, work)
                if PROMPT not in out:
                    print(f"FAIL: {argv[0]} printed {out!r}, not the echoed prompt")
                    return 1
        except RuntimeError as exc:
            if "acpx" in str(exc) and str(acpx) in str(exc):
                skip(f"acpx {version} does not run here: {exc}")
            raise
        warm_ok = warm_row(acpx, agent, env, work, tmp, args.n)
        if args.skip_cold:
            return 0 if warm_ok else 1
        times: dict[str, list[float]] = {"acpx-trio": [], "acpx": []}
        for _ in range(args.n):
            for name, argv in (("acpx-trio", ours), ("acpx", theirs)):
                elapsed, out = timed(argv, env, work)
                if PROMPT not in out:
                    print(f"FAIL: {name} printed {out!r}")
                    return 1
                times[name].append(elapsed)

    ours_med = statistics.median(times["acpx-trio"])
    theirs_med = statistics.median(times["acpx"])
    ratio = ours_med / theirs_med
    print(f"one-shot exec of the mock agent, n={args.n} each, alternating "
          f"(acpx {version}, node {node})")
    print(f"  acpx-trio exec  median {ours_med * 1000:8.1f} ms  "
          f"(min {min(times['acpx-trio']) * 1000:.1f}, max {max(times['acpx-trio']) * 1000:.1f})")
    print(f"  acpx exec       median {theirs_med * 1000:8.1f} ms  "
          f"(min {min(times['acpx']) * 1000:.1f}, max {max(times['acpx']) * 1000:.1f})")
    verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    print(f"  ratio acpx-trio/acpx = {ratio:.2f} (target <= {TARGET_RATIO:.2f}): {verdict}")
    return 0 if verdict == "PASS" and warm_ok else 1


def warm_row(acpx: Path, agent: str, env: dict[str, str], work: Path, tmp: Path,
             n: int) -> bool:
    """Second and later prompts of one session, both tools keeping the agent warm."""
    state = tmp / "warm-state"
    ours = [sys.executable, "-m", "acpx_trio", "--state-dir", str(state), "prompt",
            "--session", SESSION, "--cwd", str(work), "--approve-all", PROMPT]
    acpx_base = [str(acpx), "--agent", agent, "--approve-all", "--cwd", str(work),
                 "--format", "quiet"]
    theirs = [*acpx_base, "prompt", "-s", SESSION, PROMPT]
    times: dict[str, list[float]] = {"acpx-trio": [], "acpx": []}
    try:
        timed([*acpx_base, "sessions", "new", "--name", SESSION], env, work)
        first = {name: timed(argv, env, work)[0]
                 for name, argv in (("acpx-trio", ours), ("acpx", theirs))}
        for _ in range(n):
            for name, argv in (("acpx-trio", ours), ("acpx", theirs)):
                elapsed, out = timed(argv, env, work)
                if PROMPT not in out:
                    print(f"FAIL: warm {name} printed {out!r}")
                    return False
                times[name].append(elapsed)
    finally:
        for argv in ([sys.executable, "-m", "acpx_trio", "--state-dir", str(state), "sessions",
                      "close", SESSION], [*acpx_base, "sessions", "close", SESSION]):
            subprocess.run(argv, env=env, cwd=work, capture_output=True, timeout=RUN_TIMEOUT,
                           check=False)
    ours_med = statistics.median(times["acpx-trio"])
    theirs_med = statistics.median(times["acpx"])
    ratio = ours_med / theirs_med
    verdict = "PASS" if ratio <= WARM_TARGET_RATIO else "FAIL"
    print(f"warm prompts on one session (2nd and later), n={n} each, alternating")
    print(f"  acpx-trio prompt --session  median {ours_med * 1000:8.1f} ms  (first prompt "
          f"{first['acpx-trio'] * 1000:.0f} ms)")
    print(f"  acpx prompt -s              median {theirs_med * 1000:8.1f} ms  (first prompt "
          f"{first['acpx'] * 1000:.0f} ms)")
    print(f"  ratio acpx-trio/acpx = {ratio:.2f} (target <= {WARM_TARGET_RATIO:.2f}): {verdict}")
    return verdict == "PASS"


if __name__ == "__main__":
    raise SystemExit(main())
