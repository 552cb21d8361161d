"""``import acpx_trio.cli`` in a fresh interpreter (what the console script does first).

Target: <= 60 ms (median of ``--n`` cold interpreters, bytecode caching on).  Baseline in the
same run: ``import argparse`` (what any stdlib command line pays).  A second line reports
what ``main()`` loads: the parser's modules (``acpx_trio._cli.main``: all that ``--help``,
``--version`` or a usage error loads), and those with Trio (what every command that runs
loads before its own modules).

Run: ``python benchmarks/cli_import.py [--n 15]``; exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import result

REPO_ROOT = Path(__file__).resolve().parent.parent


def import_time(module: str, env: dict[str, str]) -> float:
    code = (f"import time; t = time.perf_counter(); import {module}; "
            "print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True, timeout=60).stdout
    return float(out.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=15)
    args = parser.parse_args()
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    samples: dict[str, list[float]] = {"acpx_trio.cli": [], "argparse": [],
                                       "acpx_trio._cli.main": [], "acpx_trio._cli.main, trio": []}
    for module in samples:
        import_time(module, env)  # warm-up: writes the bytecode caches
    for _ in range(args.n):
        for module, times in samples.items():
            times.append(import_time(module, env))
    ours = statistics.median(samples["acpx_trio.cli"])
    base = statistics.median(samples["argparse"])
    parser_only = statistics.median(samples["acpx_trio._cli.main"])
    with_trio = statistics.median(samples["acpx_trio._cli.main, trio"])
    ok = result("cli.import (bytecode on)", f"import acpx_trio.cli {ours * 1e3:.1f} ms",
                f"import argparse {base * 1e3:.1f} ms", ours / base, "<= 60 ms", ours <= 0.060)
    print(f"INFO cli.import: what main() loads: the parser's modules {parser_only * 1e3:.1f} ms "
          f"(all of --help, --version or a usage error), with Trio {with_trio * 1e3:.1f} ms "
          "(every command that runs, before its own modules)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
