"""The ``acpx-trio`` console script (``acpx_trio.cli:main``); the command line lives in
:mod:`acpx_trio._cli`."""

from __future__ import annotations

from acpx_trio._cli.main import main

__all__ = ["main"]
