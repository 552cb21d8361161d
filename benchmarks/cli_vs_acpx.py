"""One-shot prompt latency: ``acpx-trio exec`` against a raw stdlib one-shot and the acpx CLI.

All run the same bundled mock agent (``python -m acpx_trio.testing.mock_agent``) for the same
prompt, from a cold process each time: ``python -m acpx_trio exec ...``;
``python benchmarks/raw_oneshot.py`` (stdlib only: spawn, initialize, session/new, prompt,
exit: the floor); ``acpx --agent "<cmd>" --approve-all --cwd DIR --format quiet exec ...``.
Runs alternate in one process so machine noise hits all alike.  Targets: ours <= 1.6x the raw
one-shot; ours <= 0.25x acpx.  Child Pythons run with bytecode caching ON
(``PYTHONDONTWRITEBYTECODE`` removed; the warm-up run writes the caches); ``--no-bytecode``
measures with it off (an empty ``PYTHONPYCACHEPREFIX``, nothing written: every run compiles).

acpx: a global ``acpx`` on PATH (``npm i -g acpx@0.19.1``), else installed from npm into a
temporary folder.  Without node/npm, or when the install or a warm-up run of acpx fails, that
comparison prints a ``SKIP`` line and the rest still runs.

Warm row (``warm.vs_acpx``): second and later prompts on one named session, each a new CLI
process, the agent kept warm by each tool's owner process: ``acpx-trio prompt --session bench``
(the state dir's warm owner) against ``acpx prompt -s bench`` (acpx's queue owner), after one
untimed first prompt each.  Target <= 0.5x acpx.  Without acpx it is reported against our own
cold ``exec`` (``warm.vs_cold_exec``, information only).  Both sessions are closed at the end
(owners and agents exit).

Run: ``python benchmarks/cli_vs_acpx.py [--n 10] [--acpx-version 0.19.1] [--no-bytecode]
[--warm-only]``.  Exits 1 if a target is missed or an output is wrong.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import result  # noqa: E402
from _report import skip as report_skip  # noqa: E402

PROMPT = "hello from the benchmark"
TARGET_VS_ACPX = 0.25
TARGET_VS_RAW = 1.6
WARM_TARGET_VS_ACPX = 0.5
SESSION = "bench"
RUN_TIMEOUT = 120.0
INSTALL_TIMEOUT = 600.0


class Skip(Exception):
    pass


def skip(why: str) -> NoReturn:
    raise Skip(why)


def install_acpx(prefix: Path, version: str) -> Path:
    """A global ``acpx``, else ``node_modules/.bin/acpx`` under ``prefix``; raises
    :class:`Skip` when it cannot be had."""
    found = shutil.which("acpx")
    if found is not None:
        return Path(found)
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
    parser.add_argument("--n", type=int, default=10, help="runs of each (default 10)")
    parser.add_argument("--acpx-version", default="0.19.1")
    parser.add_argument("--no-bytecode", action="store_true")
    parser.add_argument("--warm-only", action="store_true", help="only the warm row")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="acpx-bench-") as tmp_name:
        tmp = Path(tmp_name)
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
        if args.no_bytecode:  # no cache is read or written: every import compiles
            env["PYTHONDONTWRITEBYTECODE"] = "1"
            env["PYTHONPYCACHEPREFIX"] = str(tmp / "empty-pycache")
        else:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
        bytecode = "off" if args.no_bytecode else "on"
        agent_argv = [sys.executable, "-m", "acpx_trio.testing.mock_agent"]
        runs: dict[str, list[str]] = {
            "acpx-trio": [sys.executable, "-m", "acpx_trio", "--state-dir", str(tmp / "state"),
                          "exec", "--cwd", str(work), "--approve-all", PROMPT],
            "raw": [sys.executable, str(REPO_ROOT / "benchmarks" / "raw_oneshot.py"),
                    "--cwd", str(work), PROMPT],
            # not a baseline: the floor of any trio program (interpreter + ``import trio``)
            "import-trio": [sys.executable, "-c", f"import trio; print({PROMPT!r})"],
        }
        acpx_note = ""
        try:
            acpx = install_acpx(tmp / "npm", args.acpx_version)
            version = subprocess.run([str(acpx), "--version"], capture_output=True, text=True,
                                     env=env, timeout=RUN_TIMEOUT, check=False).stdout.strip()
            node = subprocess.run(["node", "--version"], capture_output=True, text=True,
                                  timeout=RUN_TIMEOUT, check=False).stdout.strip()
            runs["acpx"] = [str(acpx), "--agent", shlex.join(agent_argv), "--approve-all",
                            "--cwd", str(work), "--format", "quiet", "exec", PROMPT]
            acpx_note = f"acpx {version}, node {node}"
            _, out = timed(runs["acpx"], env, work)
            if PROMPT not in out:
                skip(f"acpx {version} printed {out!r}, not the echoed prompt")
        except (Skip, RuntimeError) as exc:
            runs.pop("acpx", None)
            acpx_note = str(exc)
        warm_times = warm_runs(runs.get("acpx"), agent_argv, env, work, tmp, args.n)
        if warm_times is None:
            return 1
        if args.warm_only:
            return 0 if warm_report(warm_times, None, acpx_note) else 1
        for name in ("acpx-trio", "raw", "import-trio"):  # warm-up (caches) + check
            _, out = timed(runs[name], env, work)
            if PROMPT not in out:
                print(f"FAIL: {name} printed {out!r}, not the echoed prompt")
                return 1
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.n):
            for name, argv in runs.items():
                elapsed, out = timed(argv, env, work)
                if PROMPT not in out:
                    print(f"FAIL: {name} printed {out!r}")
                    return 1
                times[name].append(elapsed)

    ours = statistics.median(times["acpx-trio"])
    raw = statistics.median(times["raw"])
    oks = [result(f"exec.vs_raw_stdlib (bytecode {bytecode})", f"{ours * 1e3:.1f} ms",
                  f"raw stdlib one-shot {raw * 1e3:.1f} ms", ours / raw,
                  f"<= {TARGET_VS_RAW}", ours / raw <= TARGET_VS_RAW)]
    floor = statistics.median(times["import-trio"])
    print(f"INFO exec floor: `python -c 'import trio'` alone {floor * 1e3:.1f} ms = "
          f"{floor / raw:.2f}x the raw one-shot (acpx-trio exec is {ours / floor:.2f}x it)")
    if "acpx" in times:
        theirs = statistics.median(times["acpx"])
        oks.append(result(f"exec.vs_acpx (bytecode {bytecode}; {acpx_note})",
                          f"{ours * 1e3:.1f} ms", f"acpx exec {theirs * 1e3:.1f} ms",
                          ours / theirs, f"<= {TARGET_VS_ACPX}", ours / theirs <= TARGET_VS_ACPX))
    else:
        report_skip("exec.vs_acpx", acpx_note)
    oks.append(warm_report(warm_times, ours, acpx_note))
    return 0 if all(oks) else 1


def warm_runs(acpx_exec: list[str] | None, agent_argv: list[str], env: dict[str, str],
              work: Path, tmp: Path, n: int) -> dict[str, list[float]] | None:
    """Timed 2nd..(n+1)th prompts on one session of each tool (alternating); ``None`` if an
    output is wrong.  ``acpx_exec``: the acpx command of the cold row (``None``: no acpx)."""
    state = tmp / "warm-state"
    runs = {"acpx-trio": [sys.executable, "-m", "acpx_trio", "--state-dir", str(state),
                          "prompt", "--session", SESSION, "--cwd", str(work), "--approve-all",
                          PROMPT]}
    closers = [[sys.executable, "-m", "acpx_trio", "--state-dir", str(state), "sessions",
                "close", SESSION]]
    if acpx_exec is not None:
        base = [acpx_exec[0], "--agent", shlex.join(agent_argv), "--approve-all", "--cwd",
                str(work), "--format", "quiet"]
        runs["acpx"] = [*base, "prompt", "-s", SESSION, PROMPT]
        closers.append([*base, "sessions", "close", SESSION])
    times: dict[str, list[float]] = {name: [] for name in runs}
    try:
        if acpx_exec is not None:
            timed([*base, "sessions", "new", "--name", SESSION], env, work)
        for argv in runs.values():  # the first prompt starts the owner and the agent
            timed(argv, env, work)
        for _ in range(n):
            for name, argv in runs.items():
                elapsed, out = timed(argv, env, work)
                if PROMPT not in out:
                    print(f"FAIL: warm {name} printed {out!r}")
                    return None
                times[name].append(elapsed)
    finally:
        for argv in closers:
            subprocess.run(argv, env=env, cwd=work, capture_output=True, timeout=RUN_TIMEOUT,
                           check=False)
    return times


def warm_report(times: dict[str, list[float]], cold_exec: float | None, acpx_note: str) -> bool:
    ours = statistics.median(times["acpx-trio"])
    if "acpx" in times:
        theirs = statistics.median(times["acpx"])
        return result(f"warm.vs_acpx (2nd+ prompt on one session; {acpx_note})",
                      f"{ours * 1e3:.1f} ms", f"acpx prompt -s {theirs * 1e3:.1f} ms",
                      ours / theirs, f"<= {WARM_TARGET_VS_ACPX}",
                      ours / theirs <= WARM_TARGET_VS_ACPX)
    report_skip("warm.vs_acpx", acpx_note)
    if cold_exec is not None:
        print(f"INFO warm.vs_cold_exec: warm prompt {ours * 1e3:.1f} ms = "
              f"{ours / cold_exec:.2f}x our cold exec ({cold_exec * 1e3:.1f} ms)")
    return True


if __name__ == "__main__":
    raise SystemExit(main())
