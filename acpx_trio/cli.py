"""The ``acpx-trio`` console script (``acpx_trio.cli:run``); the command line lives in
:mod:`acpx_trio._cli`.

Importing this module is cheap on purpose (no trio, no msgspec): the command line's modules
load when :func:`main` runs, so ``acpx-trio --version`` and start-up stay fast."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

__all__ = ["main", "run"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit code.
    Ctrl-C is ignored once it returns (the caller's process is expected to exit next)."""
    from acpx_trio._cli.entry import finished, hold_interrupts

    hold_interrupts()  # before the command line's modules load (released before its loop)
    from acpx_trio._cli.main import main as cli_main

    return finished(lambda: cli_main(argv))  # the process exits next: a late Ctrl-C is moot


def run() -> NoReturn:
    """The console script: the command line on ``sys.argv[1:]``, then the process ends with
    its exit code, output flushed, without the interpreter's teardown (see
    :func:`acpx_trio._cli.entry.end_process`)."""
    from acpx_trio._cli.entry import end_process

    end_process(main())
