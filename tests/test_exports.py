"""The public API is a contract (DESIGN.md), in two tiers like ``trio`` / ``trio.lowlevel``:
``acpx_trio`` (the embedder's names, one list: ``acpx_trio/_api.py``) and
``acpx_trio.lowlevel`` (building blocks, one list: its own import lines).  Pin that each list
is the only one, that static tools and the runtime see the same names, that every name
imports, that ``__module__`` shows the public path, and that every public name is documented.
"""

from __future__ import annotations

import ast
import inspect
import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

import acpx_trio
from acpx_trio import lowlevel

PACKAGE = Path(acpx_trio.__file__).parent

#: Names DESIGN.md lists under "import from ``acpx_trio``" (checks outside the repository use
#: them).  ``AcpRuntime`` is there too, an alias (see test_the_design_contract_*).
CONTRACT = {
    # service
    "AcpxRuntimeService", "ServiceContext", "open_runtime_service",
    # backends
    "AcpRuntimeProtocol", "AcpRuntimeBackend", "BackendRegistry", "default_registry",
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
    # errors the README and DESIGN.md name
    "AcpxError", "AcpxUsageError", "SessionStoreError", "StateFileError", "LeaseStoreError",
    "LeaseValueError", "GatewayInstanceIdError", "AgentProcessError",
}
#: Building blocks DESIGN.md names at the top level: importable from both tiers, one object.
TOP_LEVEL_ALIASES = {
    "ProcessLease", "LeaseState", "LeaseStore", "new_lease_id", "hash_command",
    "reap_open_leases", "cleanup_owned_process_tree", "reap_stale_orphans",
    "ProcessCleanupDeps",
}


def _tier_names(path: Path) -> set[str]:
    """The names a static tool (mypy, an IDE) sees in a tier module, read from its source.

    A tier module is a docstring, ``from ... import Name as Name`` lines and the private
    ``publish`` call: anything else public would be a second list."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # the docstring
        if isinstance(stmt, ast.ImportFrom):
            for alias in stmt.names:
                public = alias.asname or alias.name
                if public.startswith("_"):
                    continue
                assert alias.asname == alias.name, (
                    f"{path.name}: import {alias.name} as {alias.name} (an explicit re-export)"
                )
                names.add(public)
            continue
        if isinstance(stmt, ast.Assign):
            targets = [t.id for t in stmt.targets if isinstance(t, ast.Name)]
            assert targets and all(t.startswith("_") for t in targets), ast.unparse(stmt)
            continue
        raise AssertionError(f"{path.name}: unexpected statement {ast.unparse(stmt)}")
    return names


def _init_static_extras() -> set[str]:
    """Names ``acpx_trio/__init__.py`` shows static tools beside the star import of _api."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom):
                    names.update(a.asname or a.name for a in stmt.names if a.name != "*")
                    if any(a.name == "*" for a in stmt.names):
                        assert stmt.module == "acpx_trio._api", "one star import: the tier"
                elif isinstance(stmt, ast.Assign):
                    names.update(t.id for t in stmt.targets if isinstance(t, ast.Name))
    return names


def test_static_list_is_the_runtime_list() -> None:
    """What mypy reads (the import lines) is what ``__all__`` says and ``import *`` gives,
    for both tiers: no second list to drift (SessionStoreError, PluginConfig and
    LazyAcpxRuntime once passed mypy and raised ImportError)."""
    assert _tier_names(PACKAGE / "_api.py") == set(acpx_trio.__all__)
    assert _tier_names(PACKAGE / "lowlevel.py") == set(lowlevel.__all__)
    # beside the tier, __init__ shows static tools only the submodule and DESIGN's aliases
    assert _init_static_extras() == {"lowlevel", *acpx_trio._ALIASES}
    assert set(lowlevel.__all__) >= TOP_LEVEL_ALIASES
    overlap = set(acpx_trio.__all__) & set(lowlevel.__all__)
    assert overlap == TOP_LEVEL_ALIASES, "only DESIGN.md's building blocks are in both tiers"


def test_contract_names_are_exported() -> None:
    missing = CONTRACT - set(acpx_trio.__all__)
    assert not missing, f"public names missing from acpx_trio: {sorted(missing)}"


def test_every_name_imports_in_a_fresh_interpreter() -> None:
    """Every name of both tiers imports at runtime, without a warning, and ``import *``
    gives exactly ``__all__``; nothing was imported before (a fresh interpreter)."""
    code = textwrap.dedent(
        """
        import warnings
        warnings.simplefilter("error")
        import acpx_trio, acpx_trio.lowlevel as ll
        for n in acpx_trio.__all__:
            getattr(acpx_trio, n)
        for n in ll.__all__:
            getattr(ll, n)
        from acpx_trio import SessionStoreError, StateFileError, PluginConfig, LazyAcpxRuntime
        from acpx_trio import AcpxUsageError, AcpRuntimeProtocol, lowlevel
        from acpx_trio.lowlevel import SyncLeaseStore, reap_gateway
        ns = {}
        exec("from acpx_trio import *", ns)
        assert set(ns) - {"__builtins__"} == set(acpx_trio.__all__)
        ns = {}
        exec("from acpx_trio.lowlevel import *", ns)
        assert set(ns) - {"__builtins__"} == set(ll.__all__)
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_static_tool_sees_all_symbols(tmp_path: Path) -> None:
    """mypy (the static tool CI runs) accepts every exported name of both tiers and refuses a
    name that is not exported: the module ``__getattr__`` is hidden from it, so a typo or a
    moved name is an error, not a silent ``Any``."""
    mypy_api = pytest.importorskip("mypy.api")
    good = tmp_path / "uses_every_name.py"
    good.write_text(
        "import acpx_trio\nimport acpx_trio.lowlevel\n"
        + "".join(f"acpx_trio.{n}\n" for n in sorted(acpx_trio.__all__))
        + "".join(f"acpx_trio.lowlevel.{n}\n" for n in sorted(lowlevel.__all__))
    )
    bad = tmp_path / "uses_missing_names.py"
    bad.write_text(
        "from acpx_trio import SyncLeaseStore\nfrom acpx_trio import does_not_exist\n"
        "from acpx_trio.lowlevel import AcpxRuntimeService\n"
    )
    repo = PACKAGE.parent
    args = ["--strict", "--no-error-summary", "--cache-dir", str(repo / ".mypy_cache")]
    stdout, _, status = mypy_api.run([*args, str(good)])
    assert status == 0, stdout
    stdout, _, status = mypy_api.run([*args, str(bad)])
    assert status == 1
    for name in ("SyncLeaseStore", "does_not_exist", "AcpxRuntimeService"):
        assert f'"{name}"' in stdout, stdout


def _public_objects() -> list[tuple[str, str, object]]:
    out: list[tuple[str, str, object]] = []
    for module in (acpx_trio, lowlevel):
        for name in module.__all__:
            out.append((module.__name__, name, getattr(module, name)))
    return out


def test_module_shows_the_public_path() -> None:
    """Like trio: ``repr``, tracebacks and pickles name ``acpx_trio.X`` or
    ``acpx_trio.lowlevel.X``, never the private module; and that path finds the object."""
    for module_name, name, value in _public_objects():
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        home = "acpx_trio.lowlevel" if name in lowlevel.__all__ else "acpx_trio"
        assert value.__module__ == home, (module_name, name, value.__module__)
        assert getattr(sys.modules[home], value.__qualname__) is value, name
    assert repr(acpx_trio.ConfigError) == "<class 'acpx_trio.ConfigError'>"


def test_published_structs_still_decode_and_pickle() -> None:
    """Moving ``__module__`` must not break what resolves annotations through it (msgspec,
    ``typing.get_type_hints``) nor pickling by public path."""
    import typing

    import msgspec

    lease = lowlevel.new_lease(gateway_instance_id="gw", session_key="k", wrapper_root="/w",
                               command="agent")
    raw = msgspec.json.encode(lease)
    assert msgspec.json.decode(raw, type=acpx_trio.ProcessLease) == lease
    assert pickle.loads(pickle.dumps(lease)) == lease
    assert pickle.loads(pickle.dumps(acpx_trio.LeaseState.CLOSING)) is acpx_trio.LeaseState.CLOSING
    hints = typing.get_type_hints(acpx_trio.AcpxConfig)
    assert hints["kill_grace_seconds"] is float
    config = acpx_trio.resolve_config({"permissionMode": "deny-all"}, "/tmp")
    assert config.permission_mode == "deny-all"


def test_the_design_contract_protocol_name_imports_without_a_warning() -> None:
    """``AcpRuntime`` (DESIGN.md's contract name, one letter from ``AcpxRuntime``) is the
    listed ``AcpRuntimeProtocol`` itself, and importing it warns of nothing (a contract name
    must not break a ``-W error`` run)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        alias = acpx_trio.AcpRuntime
        from acpx_trio import AcpRuntime
    assert alias is AcpRuntime is acpx_trio.AcpRuntimeProtocol
    assert "AcpRuntime" not in acpx_trio.__all__  # one listed name per object


def test_moved_building_block_warns_and_points_to_lowlevel() -> None:
    with pytest.warns(DeprecationWarning, match=r"acpx_trio\.lowlevel\.SyncLeaseStore"):
        moved = acpx_trio.SyncLeaseStore  # type: ignore[attr-defined]
    assert moved is lowlevel.SyncLeaseStore
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert acpx_trio.LeaseStore is lowlevel.LeaseStore  # a documented alias: no warning


def test_every_export_is_documented() -> None:
    for _, name, value in _public_objects():
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{name} has no docstring"


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="does_not_exist"):
        acpx_trio.does_not_exist  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(AttributeError):
        acpx_trio.__wrapped__  # type: ignore[attr-defined]  # noqa: B018


def test_error_classes_carry_codes() -> None:
    for _, name, value in _public_objects():
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
