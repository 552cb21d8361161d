"""pytest plugin: an acpx runtime service per test, and a leak guard scoped to its gateway.

Registered through the ``pytest11`` entry point, so it is active as soon as ``acpx-trio`` is
installed (next to ``pytest-trio``, which runs the async fixtures); disable it with
``-p no:acpx_trio``.  This module imports nothing but pytest at load time (pytest loads it in
every run of every project that has acpx-trio installed); Trio, psutil and the service are
imported by the fixtures that need them.

Fixtures (function scope):

``acpx_service``
    An :class:`~acpx_trio.AcpxRuntimeService` started (with
    :func:`~acpx_trio.open_runtime_service`) on ``acpx_state_dir`` and ``acpx_workspace``, and
    stopped after the test.  Config: the ``acpx_config`` fixture, updated by the keys of an
    ``@pytest.mark.acpx_config({...})`` marker (closest marker wins).  Runtime: the
    ``acpx_runtime_factory`` fixture (``None``: the real, lazily built runtime).  Registry: the
    ``acpx_registry`` fixture (``None``: :data:`~acpx_trio.default_registry`).

    After the service stopped, the **leak guard** scans for live processes tagged with the
    service's gateway instance id.  If any are left (after a short, bounded moment for
    processes already exiting), the test fails naming their pids and command lines, and they
    are killed with the reaper's proofs, so the next test starts clean.  Processes of other
    gateway ids (other tests, other runs, a production gateway on the same machine) are never
    reported or touched.
``acpx_runtime``
    ``acpx_service.runtime``.
``acpx_config``
    The plugin config (a dict of the camelCase keys :func:`~acpx_trio.resolve_config` reads);
    ``{}`` by default.  Override it in a ``conftest.py`` for a whole directory.
``acpx_runtime_factory``
    ``None`` by default; override it to return e.g. ``lambda params: StubRuntime()``.
``acpx_registry``
    ``None`` by default (the process-wide default registry).
``acpx_state_dir`` / ``acpx_workspace``
    Per-test directories under ``tmp_path``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from acpx_trio._service.backends import AcpRuntimeProtocol, BackendRegistry
    from acpx_trio._service.service import AcpxRuntimeService, RuntimeFactory

__all__ = [
    "acpx_config",
    "acpx_registry",
    "acpx_runtime",
    "acpx_runtime_factory",
    "acpx_service",
    "acpx_state_dir",
    "acpx_workspace",
]

MARKER = "acpx_config"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(config): plugin config keys (a dict) for the acpx_service fixture, "
        "applied over the acpx_config fixture",
    )


def _marker_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    # iter_markers yields the closest first: apply the farthest first so the closest wins.
    for marker in reversed(list(request.node.iter_markers(MARKER))):
        if marker.args:
            if len(marker.args) != 1 or not isinstance(marker.args[0], dict):
                raise pytest.UsageError(
                    f"@pytest.mark.{MARKER} takes one dict (or keyword arguments)"
                )
            merged.update(marker.args[0])
        merged.update(marker.kwargs)
    return merged


@pytest.fixture
def acpx_config() -> dict[str, Any]:
    """Plugin config for ``acpx_service`` (marker keys are applied on top).  Override me."""
    return {}


@pytest.fixture
def acpx_runtime_factory() -> RuntimeFactory | None:
    """Runtime factory for ``acpx_service``; ``None`` builds the real runtime.  Override me."""
    return None


@pytest.fixture
def acpx_registry() -> BackendRegistry | None:
    """Registry ``acpx_service`` registers its backend in; ``None``: the default registry."""
    return None


@pytest.fixture
def acpx_state_dir(tmp_path: Path) -> Path:
    """The per-test state directory of ``acpx_service``."""
    return tmp_path / "acpx-state"


@pytest.fixture
def acpx_workspace(tmp_path: Path) -> Path:
    """The per-test workspace directory of ``acpx_service`` (created)."""
    path = tmp_path / "workspace"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
async def acpx_service(
    request: pytest.FixtureRequest,
    acpx_config: dict[str, Any],
    acpx_runtime_factory: RuntimeFactory | None,
    acpx_registry: BackendRegistry | None,
    acpx_state_dir: Path,
    acpx_workspace: Path,
) -> AsyncIterator[AcpxRuntimeService]:
    """A started :class:`~acpx_trio.AcpxRuntimeService`; stopped after the test, then the
    leak guard runs (see the module docstring)."""
    import trio

    from acpx_trio._service.open_service import open_runtime_service
    from acpx_trio.testing.leak_guard import check_gateway_leaks

    config = {**acpx_config, **_marker_config(request)}
    gateway: str | None = None
    async with open_runtime_service(
        workspace_dir=acpx_workspace,
        state_dir=acpx_state_dir,
        plugin_config=config,
        runtime_factory=acpx_runtime_factory,
        registry=acpx_registry,
    ) as service:
        gateway = service.gateway_instance_id
        yield service
    if gateway is None:  # OPENCLAW_SKIP_ACPX_RUNTIME=1: nothing was started
        return
    report = await trio.to_thread.run_sync(check_gateway_leaks, gateway)
    if report:
        pytest.fail(report.describe(), pytrace=False)


@pytest.fixture
async def acpx_runtime(acpx_service: AcpxRuntimeService) -> AcpRuntimeProtocol:
    """The runtime of ``acpx_service`` (fails the test if the service did not start one)."""
    runtime = acpx_service.runtime
    if runtime is None:
        pytest.fail("acpx_service has no runtime (is OPENCLAW_SKIP_ACPX_RUNTIME=1 set?)")
    return runtime
