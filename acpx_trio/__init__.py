"""acpx-trio: a Trio-native runtime for ACP coding agents that never leaks an agent process.

Two tiers, like ``trio`` / ``trio.lowlevel``:

* ``acpx_trio``: what an embedder uses (the service, the runtime and its protocol, handles,
  events, errors, config).  Its one list of names is ``acpx_trio/_api.py``.
* ``acpx_trio.lowlevel``: the building blocks (lease store, reaper, identity, session store).

Modules starting with ``_`` are private.  Names are loaded on first use, so
``python -m acpx_trio.testing.mock_agent`` (the bundled agent) starts without importing Trio.
"""

from typing import TYPE_CHECKING, Any

from acpx_trio._version import __version__ as __version__

if TYPE_CHECKING:
    from acpx_trio import lowlevel as lowlevel
    from acpx_trio._api import *  # noqa: F403  (the embedder tier's one list)

    AcpRuntime = AcpRuntimeProtocol  # noqa: F405  (DESIGN.md's name: see _ALIASES)

#: DESIGN.md's contract names kept beside the name the embedder tier lists (``AcpRuntime``,
#: one letter from the implementation ``AcpxRuntime``, lists as ``AcpRuntimeProtocol``):
#: the same object, no warning (a contract name never breaks a ``-W error`` run)
_ALIASES: dict[str, str] = {"AcpRuntime": "AcpRuntimeProtocol"}


def _getattr(name: str) -> Any:
    if name.startswith("__") and name != "__all__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    import warnings

    # import_module, not ``from acpx_trio import x``: that would ask this hook again
    if name == "lowlevel":
        return importlib.import_module("acpx_trio.lowlevel")
    _api = importlib.import_module("acpx_trio._api")

    if name == "__all__":
        return list(_api._NAMES)
    if name in _api._NAMES:
        value = getattr(_api, name)
        globals()[name] = value
        return value
    if name in _ALIASES:
        value = getattr(_api, _ALIASES[name])
        globals()[name] = value
        return value
    lowlevel = importlib.import_module("acpx_trio.lowlevel")
    if name in lowlevel.__all__:
        warnings.warn(
            f"acpx_trio.{name} moved to acpx_trio.lowlevel.{name} (a building block)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(lowlevel, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _dir() -> list[str]:
    return sorted({*globals(), *_getattr("__all__"), "lowlevel"})


if not TYPE_CHECKING:
    # Hidden from static tools: a module ``__getattr__`` would make them accept any name.
    __getattr__ = _getattr
    __dir__ = _dir
