"""The warm owner's cost per streamed chunk, against the embedded runtime's, in the same run.

A warm turn (``acpx-trio prompt --session bench "/chunks N"`` against the bundled mock agent,
a new command-line process each time, the agent kept by the state dir's warm owner) makes the
owner read the agent's N update lines, map them to events, hand them to the client as frames
on its socket (and, with transcripts on, record every line).  The figure is the **owner
process's CPU time** for one such turn (``psutil``: user + system, before and after the
command), against the client CPU an embedding application spends on the same turn through
``run_turn_batches`` in-process (``time.process_time``), the two measured alternately and
averaged over the runs (``psutil`` counts in clock ticks, 10 ms: a mean over several turns
of 50,000 chunks keeps that below 2%).

* ``warm.stream{N}k.owner_cpu``: transcripts off; target <= 2.0 (the owner does the
  runtime's work, plus one frame encoded and written per event).
* ``warm.stream{N}k.owner_cpu.transcript``: transcripts on (the default), for comparison:
  the owner also records every line (redacting credentials split across chunks, which
  decodes each chunk when the environment holds any), which the embedded turn does not.

The command line's own CPU (start-up included) is printed as ``INFO``.

Run: ``python benchmarks/warm_stream.py [--n 7] [--chunks 50000]``.  Prints one ``RESULT``
line per figure (see ``_report.py``); exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

import psutil
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_runtime import bench_runtime, stream_chunks
from _report import median, result

from acpx_trio._runtime.runtime import AcpxRuntime


class WarmCli:
    """``acpx-trio`` on one state dir and workspace (a config file for ``transcript``)."""

    def __init__(self, root: Path, name: str, transcript: bool) -> None:
        self.state = root / f"state-{name}"
        self.cwd = root / "ws"
        self.config = root / f"config-{name}.json"
        self.config.write_text(json.dumps({"transcript": transcript}))
        self.owner: psutil.Process | None = None

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "acpx_trio", "--state-dir", str(self.state),
             "--config", str(self.config), "--cwd", str(self.cwd), *args],
            capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"acpx-trio {' '.join(args)}: {done.stderr[-500:]}")
        return done

    def start(self) -> None:
        self.run("prompt", "--session", "bench", "hi")
        pid = json.loads(self.run("status", "--json").stdout)["owner_pid"]
        self.owner = psutil.Process(pid)

    def turn(self, chunks: int) -> tuple[float, float]:
        """(the owner's CPU, the command's own CPU) for one ``/chunks`` turn, seconds."""
        assert self.owner is not None
        before = self.owner.cpu_times()
        mine = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = self.run("prompt", "--session", "bench", f"/chunks {chunks}").stdout
        after = self.owner.cpu_times()
        mine_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if out.count("chunk") < chunks:
            raise RuntimeError(f"the warm turn printed {out.count('chunk')} chunks")
        owner = (after.user - before.user) + (after.system - before.system)
        client = (mine_after.ru_utime - mine.ru_utime) + (mine_after.ru_stime - mine.ru_stime)
        return owner, client

    def close(self) -> None:
        self.run("sessions", "close", "bench")


async def embedded_turn(rt: AcpxRuntime, chunks: int, n: int) -> float:
    handle = await rt.ensure_session(session_key=f"warm-{n}", agent="mock")
    try:
        cpu = time.process_time()
        await stream_chunks(rt, handle, chunks, batches=True)
        return time.process_time() - cpu
    finally:
        await rt.close(handle=handle, reason="bench")


def main(n: int, chunks: int) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "ws").mkdir()
        clis = {"": WarmCli(root, "plain", False), ".transcript": WarmCli(root, "tr", True)}
        owner_cpu: dict[str, list[float]] = {name: [] for name in clis}
        client_cpu: list[float] = []
        embedded: list[float] = []

        async def embedded_turns() -> None:
            async with bench_runtime(root / "embedded") as rt:
                await embedded_turn(rt, chunks, -1)  # warm-up
                for i in range(n):
                    embedded.append(await embedded_turn(rt, chunks, i))
                    for name, cli in clis.items():
                        owner, client = await trio.to_thread.run_sync(cli.turn, chunks)
                        owner_cpu[name].append(owner)
                        client_cpu.append(client)

        (root / "embedded").mkdir()
        try:
            for cli in clis.values():
                cli.start()
                cli.turn(chunks)  # warm-up
            trio.run(embedded_turns)
        finally:
            for cli in clis.values():
                if cli.owner is not None:
                    cli.close()
        base = mean(embedded)
        oks = []
        for name, target in (("", 2.0), (".transcript", None)):
            ours = mean(owner_cpu[name])
            oks.append(result(f"warm.stream{chunks // 1000}k.owner_cpu{name}",
                              f"{ours * 1000:.1f} ms ({ours / chunks * 1e6:.1f} us/chunk)",
                              f"{base * 1000:.1f} ms embedded run_turn_batches", ours / base,
                              "(for comparison)" if target is None else f"<= {target}",
                              target is None or ours / base <= target))
        print(f"INFO warm.stream{chunks // 1000}k | the command line's own CPU per warm turn "
              f"(start-up included): {median(client_cpu) * 1000:.0f} ms; "
              f"{os.cpu_count()} cpus", flush=True)
    return all(oks)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=7)
    parser.add_argument("--chunks", type=int, default=50_000)
    args = parser.parse_args()
    sys.exit(0 if main(args.n, args.chunks) else 1)
