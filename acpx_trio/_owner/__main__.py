"""``python -m acpx_trio._owner --state-dir DIR [--lock-fd N] [--ready-fd N]``: run the warm
owner of DIR.  The launch payload (:class:`~acpx_trio._owner.wire.OwnerLaunch`, JSON) is read
from stdin.  ``--lock-fd``: an inherited descriptor of ``owner.lock`` whose ``flock`` the
starting client took for us; without it the owner takes the lock itself and exits 3 if another
owner holds it.  ``--ready-fd``: a pipe on which ``ready`` is written once the socket listens.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import sys
from pathlib import Path

import msgspec
import trio

from acpx_trio._errors import AcpxError, collapse_group
from acpx_trio._owner.paths import OwnerPaths, open_lock_fd
from acpx_trio._owner.server import run_owner
from acpx_trio._owner.signals import ignore_late_signals, record_early_signals
from acpx_trio._owner.wire import OwnerLaunch

EXIT_LOCKED = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m acpx_trio._owner")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--lock-fd", type=int, default=None)
    parser.add_argument("--ready-fd", type=int, default=None)
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s owner %(process)d: %(message)s")
    launch = msgspec.json.decode(sys.stdin.buffer.read(), type=OwnerLaunch)
    state_dir = ns.state_dir.resolve()
    lock_fd = ns.lock_fd if ns.lock_fd is not None else open_lock_fd(OwnerPaths(state_dir).lock)
    try:
        # Re-locking through the inherited descriptor succeeds (same open file description);
        # anything else means another owner is alive.
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("acpx-trio owner: another owner holds the lock of this state dir", file=sys.stderr)
        return EXIT_LOCKED
    os.set_inheritable(lock_fd, False)
    ready_fd = ns.ready_fd

    def ready() -> None:
        nonlocal ready_fd
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
            ready_fd = None

    early = record_early_signals()
    try:
        trio.run(lambda: run_owner(state_dir, launch, ready=ready, early_signals=early))
    except (AcpxError, BaseExceptionGroup) as exc:
        # a typed reason (an unsafe state dir, a bad config) is the last line of owner.log,
        # which the client quotes: one clear line, not a traceback
        first = collapse_group(exc)
        if not isinstance(first, AcpxError):
            raise
        print(f"acpx-trio owner: {first.code}: {first}", file=sys.stderr)
        return 1
    finally:
        # done (sessions closed, files removed): the interpreter's exit would give a signal
        # now the default action, ending the process by it instead of its exit status
        ignore_late_signals()
    return 0


if __name__ == "__main__":
    sys.exit(main())
