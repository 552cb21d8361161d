"""The version of acpx-trio (one home: the package, ``initialize``'s ``clientInfo`` and
``acpx-trio --version`` read it here; ``pyproject.toml`` carries the same string)."""

__version__ = "0.1.0"
