"""BackendRegistry: the seed's registry contract (openclaw src/acp/runtime/registry.ts)."""

from __future__ import annotations

import threading

import pytest
from _service_helpers import StubRuntime

from acpx_trio._errors import AcpRuntimeError
from acpx_trio._service.backends import (
    AcpRuntimeBackend,
    AcpRuntimeProtocol,
    BackendRegistry,
    default_registry,
)


def test_register_normalizes_ids_and_get_finds_them() -> None:
    reg = BackendRegistry()
    rt = StubRuntime()
    reg.register(AcpRuntimeBackend("  ACPX ", rt))
    assert reg.ids() == ["acpx"]
    for key in ("acpx", "ACPX", " acpx  "):
        backend = reg.get(key)
        assert backend is not None and backend.runtime is rt
    assert reg.get("other") is None


@pytest.mark.parametrize("bad_id", ["", "   "])
def test_register_requires_an_id(bad_id: str) -> None:
    with pytest.raises(AcpRuntimeError) as info:
        BackendRegistry().register(AcpRuntimeBackend(bad_id, StubRuntime()))
    assert info.value.code == "ACP_BACKEND_MISSING"
    assert str(info.value) == "ACP runtime backend id is required"


def test_register_requires_a_runtime() -> None:
    with pytest.raises(AcpRuntimeError) as info:
        BackendRegistry().register(AcpRuntimeBackend("Acpx", None))
    assert str(info.value) == 'ACP runtime backend "acpx" is missing runtime implementation'


def test_register_same_id_replaces() -> None:
    reg = BackendRegistry()
    first, second = StubRuntime(), StubRuntime()
    reg.register(AcpRuntimeBackend("acpx", first))
    reg.register(AcpRuntimeBackend("ACPX", second))
    backend = reg.get("acpx")
    assert backend is not None and backend.runtime is second and reg.ids() == ["acpx"]


def test_unregister() -> None:
    reg = BackendRegistry()
    rt = StubRuntime()
    reg.register(AcpRuntimeBackend("acpx", rt))
    assert reg.unregister("") is False  # empty id: no-op
    assert reg.unregister("nope") is False
    assert reg.unregister(" ACPX ") is True
    assert reg.get("acpx") is None
    assert reg.unregister("acpx") is False


def test_unregister_with_runtime_removes_only_that_runtime() -> None:
    reg = BackendRegistry()
    old, new = StubRuntime(), StubRuntime()
    reg.register(AcpRuntimeBackend("acpx", new))
    assert reg.unregister("acpx", runtime=old) is False
    backend = reg.get("acpx")
    assert backend is not None and backend.runtime is new
    assert reg.unregister("acpx", runtime=new) is True
    assert reg.get("acpx") is None


def test_get_without_id_prefers_the_first_healthy_backend() -> None:
    reg = BackendRegistry()
    assert reg.get() is None
    sick, well = StubRuntime(), StubRuntime()
    reg.register(AcpRuntimeBackend("sick", sick, healthy=lambda: False))
    assert reg.get() is not None and reg.get().runtime is sick  # type: ignore[union-attr]
    reg.register(AcpRuntimeBackend("well", well, healthy=lambda: True))
    backend = reg.get()
    assert backend is not None and backend.runtime is well


def test_health_rules() -> None:
    def boom() -> bool:
        raise RuntimeError("health check crashed")

    assert AcpRuntimeBackend("a", StubRuntime()).is_healthy()  # no callback: healthy
    assert not AcpRuntimeBackend("a", StubRuntime(), healthy=lambda: False).is_healthy()
    assert not AcpRuntimeBackend("a", StubRuntime(), healthy=boom).is_healthy()


def test_require_errors() -> None:
    reg = BackendRegistry()
    with pytest.raises(AcpRuntimeError) as info:
        reg.require()
    assert info.value.code == "ACP_BACKEND_MISSING"
    assert "not configured" in str(info.value)
    with pytest.raises(AcpRuntimeError) as info:
        reg.require("Codex")
    assert info.value.code == "ACP_BACKEND_MISSING"
    assert str(info.value) == 'ACP runtime backend "codex" is not registered.'

    state = {"ok": False}
    rt = StubRuntime()
    reg.register(AcpRuntimeBackend("acpx", rt, healthy=lambda: state["ok"]))
    with pytest.raises(AcpRuntimeError) as info:
        reg.require("acpx")
    assert info.value.code == "ACP_BACKEND_UNAVAILABLE" and info.value.retryable
    assert str(info.value) == (
        "ACP runtime backend is currently unavailable. Try again in a moment."
    )
    state["ok"] = True
    assert reg.require("acpx").runtime is rt
    assert reg.require().runtime is rt


def test_registry_is_thread_safe() -> None:
    reg = BackendRegistry()
    rts = [StubRuntime() for _ in range(8)]

    def churn(i: int) -> None:
        for _ in range(500):
            reg.register(AcpRuntimeBackend(f"b{i}", rts[i]))
            reg.get()
            reg.unregister(f"b{i}", runtime=rts[i])

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reg.ids() == []


def test_default_registry_and_protocol() -> None:
    assert isinstance(default_registry, BackendRegistry)
    assert isinstance(StubRuntime(), AcpRuntimeProtocol)
    assert not isinstance(object(), AcpRuntimeProtocol)
    assert "acpx" in repr(AcpRuntimeBackend("acpx", StubRuntime()))
