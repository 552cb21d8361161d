"""Test helpers for acpx-trio users and its own test suite.

- ``python -m acpx_trio.testing.mock_agent``: the bundled ACP v1 agent with fault injection
  (see :mod:`acpx_trio.testing.mock_agent`).
- :class:`StubRuntime` (with script items :class:`Delay`, :class:`Hang`, :class:`Fail` and the
  call record :class:`StubCall`): an in-memory ``AcpRuntimeProtocol`` with scripted turns that runs
  under ``trio.testing.MockClock`` (see :mod:`acpx_trio.testing.stub_runtime`).
- The pytest plugin :mod:`acpx_trio.testing.pytest_plugin` (fixtures ``acpx_service``,
  ``acpx_runtime``, a leak guard), registered through the ``pytest11`` entry point.
- :func:`check_gateway_leaks` (returns a :class:`LeakReport`): the plugin's leak guard, scoped
  to one gateway instance id, for other test runners.

Keep this module free of heavy imports: the mock agent is imported through it and must start
fast, so the names above are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from acpx_trio.testing.leak_guard import LeakReport as LeakReport
    from acpx_trio.testing.leak_guard import check_gateway_leaks as check_gateway_leaks
    from acpx_trio.testing.stub_runtime import Delay as Delay
    from acpx_trio.testing.stub_runtime import Fail as Fail
    from acpx_trio.testing.stub_runtime import Hang as Hang
    from acpx_trio.testing.stub_runtime import StubCall as StubCall
    from acpx_trio.testing.stub_runtime import StubRuntime as StubRuntime

__all__ = [
    "Delay",
    "Fail",
    "Hang",
    "LeakReport",
    "StubCall",
    "StubRuntime",
    "check_gateway_leaks",
]

_LAZY = {name: "acpx_trio.testing.stub_runtime" for name in __all__}
_LAZY.update(dict.fromkeys(("LeakReport", "check_gateway_leaks"), "acpx_trio.testing.leak_guard"))


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
