"""Kernel facts the cgroup mode must live with (no acpx-trio code involved): in a leaf
cgroup v2 directory created under ROOT, (1) a member that writes its own pid to another
``cgroup.procs`` (ROOT's) leaves the leaf, and ``cgroup.kill`` of the leaf misses it;
(2) a member that creates a sub-cgroup and moves into it is still killed by the leaf's
``cgroup.kill``, and the leaf's ``rmdir`` fails (EBUSY) until the sub-cgroup is removed.
Usage: ``python benchmarks/attack/cgroup_probe.py [ROOT] [TRIALS]`` (default
/sys/fs/cgroup/unified, 30); one JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

MIGRATE = ("import os, sys, time\n"
           "open(sys.argv[1] + '/cgroup.procs', 'w').write(str(os.getpid()))\n"
           "print('moved', flush=True)\n"
           "while True: time.sleep(3600)\n")
NEST = ("import os, sys, time\n"
        "sub = sys.argv[1] + '/sub'\n"
        "os.mkdir(sub)\n"
        "open(sub + '/cgroup.procs', 'w').write(str(os.getpid()))\n"
        "print('moved', flush=True)\n"
        "while True: time.sleep(3600)\n")


def populated(cg: Path) -> bool:
    return "populated 1" in (cg / "cgroup.events").read_text()


def run(root: Path, script: str, arg_of: str) -> tuple[bool, bool]:
    """One trial: ``(survived cgroup.kill, leaf rmdir failed while a sub-cgroup exists)``."""
    leaf = root / f"acpx-attack-probe-{uuid.uuid4().hex[:8]}"
    leaf.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(root) if arg_of == "root" else str(leaf)],
        stdout=subprocess.PIPE,
        preexec_fn=lambda: (leaf / "cgroup.procs").write_text(str(os.getpid())))
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"moved\n"
        (leaf / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + 5
        while populated(leaf) and time.monotonic() < deadline:
            time.sleep(0.001)
        survived = False
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            survived = True
        rmdir_busy = False
        if (leaf / "sub").exists():
            try:
                leaf.rmdir()
            except OSError:
                rmdir_busy = True
            (leaf / "sub").rmdir()
        return survived, rmdir_busy
    finally:
        proc.kill()
        proc.wait()
        if leaf.exists():
            leaf.rmdir()


def main(root: Path, n: int) -> None:
    out: dict[str, object] = {"root": str(root), "trials": n}
    esc = sum(run(root, MIGRATE, "root")[0] for _ in range(n))
    out["migrated_to_root_survives_leaf_kill"] = esc
    nested = [run(root, NEST, "leaf") for _ in range(n)]
    out["nested_sub_cgroup_survives_leaf_kill"] = sum(s for s, _ in nested)
    out["leaf_rmdir_busy_with_sub_cgroup"] = sum(b for _, b in nested)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/sys/fs/cgroup/unified"),
         int(sys.argv[2]) if len(sys.argv) > 2 else 30)
