"""The public API is a contract (DESIGN.md): pin it, and check every public name is documented."""

from __future__ import annotations

import inspect
import subprocess
import sys

import acpx_trio

CONTRACT = {
    # service
    "AcpxRuntimeService", "ServiceContext", "open_runtime_service",
    # backends
    "AcpRuntime", "AcpRuntimeBackend", "BackendRegistry", "default_registry",
    # runtime and events
    "AcpxRuntime", "AcpRuntimeHandle", "AcpRuntimeEvent", "TextDeltaEvent", "StatusEvent",
    "ToolCallEvent", "DoneEvent", "ErrorEvent", "DoctorReport", "AcpRuntimeError",
    # leases
    "ProcessLease", "LeaseState", "LeaseStore", "LeaseStateError", "new_lease_id",
    "hash_command",
    # reaper
    "reap_open_leases", "cleanup_owned_process_tree", "reap_stale_orphans",
    "ProcessCleanupDeps",
    # config and identity
    "resolve_config", "ConfigError", "resolve_gateway_instance_id",
}


def test_contract_names_are_exported() -> None:
    missing = CONTRACT - set(acpx_trio.__all__)
    assert not missing, f"public names missing from acpx_trio: {sorted(missing)}"


def test_every_export_resolves_and_is_documented() -> None:
    for name in acpx_trio.__all__:
        value = getattr(acpx_trio, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"acpx_trio.{name} has no docstring"


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        acpx_trio.does_not_exist  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "does_not_exist" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_error_classes_carry_codes() -> None:
    for name in acpx_trio.__all__:
        value = getattr(acpx_trio, name)
        if inspect.isclass(value) and issubclass(value, acpx_trio.AcpxError):
            assert isinstance(value.code, str) and value.code.isupper(), name


def test_bundled_agent_starts_without_importing_trio() -> None:
    code = (
        "import sys, acpx_trio.testing.mock_agent; "
        "print('trio' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "False"


def _static_names() -> set[str]:
    """The names a static tool (mypy, an IDE) sees: the ``TYPE_CHECKING`` imports."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(acpx_trio.__file__).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom):
                    names.update(alias.asname or alias.name for alias in stmt.names)
    return names


def test_static_tool_sees_all_symbols() -> None:
    """The static list and the runtime list are the same, so a name mypy accepts never
    raises ImportError at runtime (SessionStoreError, PluginConfig and LazyAcpxRuntime once
    did), in a fresh interpreter where nothing was imported before."""
    assert _static_names() == set(acpx_trio.__all__)
    code = (
        "import acpx_trio\n"
        "for n in acpx_trio.__all__:\n"
        "    getattr(acpx_trio, n)\n"
        "from acpx_trio import SessionStoreError, PluginConfig, LazyAcpxRuntime\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
