"""The ``acpx-trio`` console script (``acpx_trio.cli:main``); the command line lives in
:mod:`acpx_trio._cli`.

Importing this module is cheap on purpose (no trio, no msgspec): the command line's modules
load when :func:`main` runs, so ``acpx-trio --version`` and start-up stay fast."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    from acpx_trio._cli.interrupts import finished, hold_interrupts

    hold_interrupts()  # before the command line's modules load (released before its loop)
    from acpx_trio._cli.main import main as cli_main

    return finished(lambda: cli_main(argv))  # the process exits next: a late Ctrl-C is moot
