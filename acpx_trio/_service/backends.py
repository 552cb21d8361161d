"""The runtime protocol every backend implements, and the registry hosts look backends up in."""

from __future__ import annotations

import threading
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, Literal, Protocol, runtime_checkable

from acpx_trio._errors import AcpRuntimeError, AcpxUsageError
from acpx_trio._events import (
    AcpRuntimeCapabilities,
    AcpRuntimeEvent,
    AcpRuntimeHandle,
    AcpRuntimeStatus,
    AgentSession,
    DoctorReport,
)
from acpx_trio._process.cgroup import Containment

__all__ = [
    "AcpRuntimeBackend",
    "AcpRuntimeProtocol",
    "AcpxRuntimeProtocol",
    "BackendRegistry",
    "default_registry",
]


@runtime_checkable
class AcpRuntimeProtocol(Protocol):
    """What a backend runtime offers.  All calls take keyword arguments.

    ``run_turn`` returns an async generator: consume it inside ``contextlib.aclosing`` so that
    abandoning a turn early cleans up at once.

    Implementations promise: every call is cancellable; cancelling ``run_turn``'s consumer
    or the surrounding scope ends every agent process of that turn's session unless the
    session is persistent and still healthy (the acpx runtimes do it in their own nursery,
    bounded, so the consumer leaves at once); errors are :class:`AcpRuntimeError` with a
    code."""

    async def ensure_session(
        self,
        *,
        session_key: str,
        agent: str,
        mode: Literal["persistent", "oneshot"] = "persistent",
        cwd: str | None = None,
        resume_session_id: str | None = None,
    ) -> AcpRuntimeHandle: ...

    def run_turn(
        self,
        *,
        handle: AcpRuntimeHandle,
        text: str,
        mode: Literal["prompt", "steer"] = "prompt",
        request_id: str | None = None,
    ) -> AsyncGenerator[AcpRuntimeEvent, None]: ...

    async def cancel(self, *, handle: AcpRuntimeHandle, reason: str | None = None) -> None: ...

    async def close(
        self,
        *,
        handle: AcpRuntimeHandle,
        reason: str = "closed",
        discard_persistent_state: bool = False,
    ) -> None: ...

    async def get_capabilities(
        self, *, handle: AcpRuntimeHandle | None = None
    ) -> AcpRuntimeCapabilities: ...

    async def get_status(self, *, handle: AcpRuntimeHandle) -> AcpRuntimeStatus: ...

    async def set_mode(self, *, handle: AcpRuntimeHandle, mode: str) -> None: ...

    async def set_config_option(
        self, *, handle: AcpRuntimeHandle, key: str, value: str | bool
    ) -> None: ...

    async def prepare_fresh_session(self, *, session_key: str) -> None: ...

    async def doctor(self) -> DoctorReport: ...

    async def probe_availability(self) -> None: ...

    def is_healthy(self) -> bool: ...

    async def sweep_dead_sessions(self) -> int:
        """Forget sessions whose agent died (trees reaped, leases final); how many.  Must not
        start anything (the service calls it periodically)."""
        ...

    async def aclose(self) -> None:
        """Close every session and refuse further calls (they raise an :class:`AcpxError`).
        Idempotent; when it returns no agent process of this runtime is alive."""
        ...


@runtime_checkable
class AcpxRuntimeProtocol(AcpRuntimeProtocol, Protocol):
    """:class:`AcpRuntimeProtocol` plus what acpx runtimes add (:class:`~acpx_trio.AcpxRuntime`
    and the service's default :class:`~acpx_trio.LazyAcpxRuntime` have all of it): a turn's
    ``meta``, ``run_turn_batches``, ``set_model``, ``list_sessions``, ``delete_session``,
    ``logout``, ``set_elicitation_handler``, ``doctor(deep=True)`` and ``containment``.  What
    :meth:`~acpx_trio.AcpxRuntimeService.require_acpx_runtime` returns, so typed code
    (``mypy --strict``) can call them.  The calls and their errors are
    :class:`~acpx_trio.AcpxRuntime`'s."""

    def run_turn(
        self,
        *,
        handle: AcpRuntimeHandle,
        text: str,
        mode: Literal["prompt", "steer"] = "prompt",
        request_id: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> AsyncGenerator[AcpRuntimeEvent, None]: ...

    def run_turn_batches(
        self,
        *,
        handle: AcpRuntimeHandle,
        text: str,
        mode: Literal["prompt", "steer"] = "prompt",
        request_id: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> AsyncGenerator[list[AcpRuntimeEvent], None]: ...

    async def set_model(self, *, handle: AcpRuntimeHandle, model: str) -> None: ...

    async def list_sessions(self, *, agent: str, cwd: str | None = None
                            ) -> list[AgentSession]: ...

    async def delete_session(self, *, agent: str, session_id: str) -> None: ...

    async def logout(self, *, agent: str) -> None: ...

    def set_elicitation_handler(self, handler: Any) -> None: ...

    async def doctor(self, *, deep: bool = False) -> DoctorReport: ...

    @property
    def containment(self) -> Containment: ...


class AcpRuntimeBackend:
    """A registered backend: an id, its runtime, and an optional ``healthy`` callback.

    A backend without ``healthy`` counts as always healthy; a callback that raises counts as
    unhealthy."""

    __slots__ = ("healthy", "id", "runtime")

    def __init__(
        self, id: str, runtime: AcpRuntimeProtocol, healthy: Callable[[], bool] | None = None
    ) -> None:
        self.id = id
        self.runtime = runtime
        self.healthy = healthy

    def is_healthy(self) -> bool:
        if self.healthy is None:
            return True
        try:
            return bool(self.healthy())
        except Exception:
            return False

    def __repr__(self) -> str:
        return f"AcpRuntimeBackend(id={self.id!r}, runtime={self.runtime!r})"


def _normalize_id(backend_id: object, argument: str = "backend_id") -> str:
    """A backend id trimmed and lower-cased; one that is not text is
    :class:`~acpx_trio.AcpxUsageError` naming ``argument``."""
    if not isinstance(backend_id, str):
        raise AcpxUsageError(argument, backend_id, "must be a string")
    return backend_id.strip().lower()


class BackendRegistry:
    """Backends by id (ids are trimmed and lower-cased).  Thread-safe.

    Registering an id again replaces the previous backend."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._backends: dict[str, AcpRuntimeBackend] = {}

    def register(self, backend: AcpRuntimeBackend) -> None:
        """Add or replace ``backend``.

        Raises :class:`AcpRuntimeError` if it has no id or no runtime,
        :class:`~acpx_trio.AcpxUsageError` if it has not an :class:`AcpRuntimeBackend`'s
        ``id``, ``runtime`` and ``is_healthy``, or its id is not text."""
        if not all(hasattr(backend, a) for a in ("id", "runtime", "is_healthy")):
            raise AcpxUsageError("backend", backend, "must be an AcpRuntimeBackend (or have "
                                 "its id, runtime and is_healthy)")
        key = _normalize_id(backend.id or "", "backend.id")
        if not key:
            raise AcpRuntimeError("ACP_BACKEND_MISSING", "ACP runtime backend id is required")
        if backend.runtime is None:
            raise AcpRuntimeError(
                "ACP_BACKEND_MISSING",
                f'ACP runtime backend "{key}" is missing runtime implementation',
            )
        with self._lock:
            self._backends[key] = backend

    def unregister(self, backend_id: str, *, runtime: AcpRuntimeProtocol | None = None) -> bool:
        """Remove a backend; with ``runtime``, only if it still holds that runtime.

        Returns whether something was removed.  An empty id is a no-op; one that is not
        text is :class:`~acpx_trio.AcpxUsageError`."""
        key = _normalize_id(backend_id or "")
        with self._lock:
            current = self._backends.get(key)
            if current is None or (runtime is not None and current.runtime is not runtime):
                return False
            del self._backends[key]
            return True

    def get(self, backend_id: str | None = None) -> AcpRuntimeBackend | None:
        """The backend with this id; without an id, the first healthy one, else the first one.
        An id that is not text is :class:`~acpx_trio.AcpxUsageError`."""
        key = None if backend_id is None else _normalize_id(backend_id)
        with self._lock:
            backends = dict(self._backends)
        if key is not None:
            return backends.get(key)
        for backend in backends.values():
            if backend.is_healthy():
                return backend
        return next(iter(backends.values()), None)

    def require(self, backend_id: str | None = None) -> AcpRuntimeBackend:
        """Like :meth:`get` but raises a typed error saying what to do when nothing fits."""
        backend = self.get(backend_id)
        if backend is None:
            if backend_id is not None:
                raise AcpRuntimeError(
                    "ACP_BACKEND_MISSING",
                    f'ACP runtime backend "{_normalize_id(backend_id)}" is not registered.',
                )
            raise AcpRuntimeError(
                "ACP_BACKEND_MISSING",
                "ACP runtime backend is not configured. Start an AcpxRuntimeService first.",
            )
        if not backend.is_healthy():
            raise AcpRuntimeError(
                "ACP_BACKEND_UNAVAILABLE",
                "ACP runtime backend is currently unavailable. Try again in a moment.",
                retryable=True,
            )
        return backend

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._backends)


#: The process-wide registry used when a service is given none.
default_registry = BackendRegistry()
