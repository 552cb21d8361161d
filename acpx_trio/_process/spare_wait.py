"""A spare launch's process: enter its leaf cgroup, then wait for the one command it becomes.

Run by path (``python -I -S .../spare_wait.py LEAF FD``, see
:class:`acpx_trio._process.spare_leaf.SpareLeaves`), it first writes itself into
``LEAF/cgroup.procs`` (a failed write ends it having run nothing), then reads pipe ``FD`` to
its end and ``exec``s what it got: the working directory, ``argv`` and the *whole*
environment, so the agent starts exactly as a direct spawn would start it (signal
dispositions restored as :mod:`subprocess` restores them; no descriptor but 0, 1 and 2).
The command travels as one :mod:`marshal` frame on a private pipe from the process that
spawned this one (never on a command line, where another user or an audit log could read a
credential); anything but one complete frame of this version (an owner that died
mid-write: end of file early) runs nothing and exits 0.

Standard library only, and no import of ``acpx_trio``: it must run as a script, and start as
cheaply as a bare ``python -S``.
"""

from __future__ import annotations

import marshal
import os
import signal
import sys

__all__ = ["FRAME_VERSION", "main"]

#: First item of every frame (a frame of another version runs nothing).
FRAME_VERSION = 1


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def main(argv: list[str]) -> int:
    leaf, fd = argv[1], int(argv[2])
    try:
        with open(os.path.join(leaf, "cgroup.procs"), "w", encoding="ascii") as fh:
            fh.write("0")
    except OSError as exc:
        sys.stderr.write(f"acpx-trio spare: cannot enter {leaf}: {exc.strerror}\n")
        return 1
    data = _read_all(fd)
    os.close(fd)
    try:
        version, cwd, args, env = marshal.loads(data)
    except (EOFError, ValueError, TypeError):
        return 0  # nothing, or half a frame: the owner is gone
    if version != FRAME_VERSION or not args:
        return 0
    try:
        os.chdir(cwd)
    except OSError as exc:
        sys.stderr.write(f"acpx-trio spare: cannot enter {cwd!r}: {exc.strerror}\n")
        return 127
    for sig in ("SIGPIPE", "SIGXFZ", "SIGXFSZ"):  # as subprocess's restore_signals
        if hasattr(signal, sig):
            signal.signal(getattr(signal, sig), signal.SIG_DFL)
    try:
        os.execvpe(args[0], args, env)
    except OSError as exc:
        sys.stderr.write(f"acpx-trio spare: cannot run {args[0]!r}: {exc.strerror}\n")
        return 127
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))
