"""Observable health of the runtime service: a typed facade over ``trio_util.AsyncValue``."""

from __future__ import annotations

import enum
from collections.abc import Callable

from trio_util import AsyncValue

__all__ = ["ServiceHealth", "ServiceHealthState"]


class ServiceHealth(enum.StrEnum):
    """Where the service is in its life.

    ``REGISTERED`` means the backend is registered and no startup probe runs (health is not
    tracked; the registry treats the backend as healthy).  With the probe enabled the value moves
    ``PROBING -> HEALTHY | UNHEALTHY``."""

    STOPPED = "stopped"
    STARTING = "starting"
    REGISTERED = "registered"
    PROBING = "probing"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class ServiceHealthState:
    """The current :class:`ServiceHealth` plus cancellable waits for changes.

    As with any observable value, it may have changed again by the time a waiter runs."""

    __slots__ = ("_value",)

    def __init__(self, initial: ServiceHealth = ServiceHealth.STOPPED) -> None:
        self._value: AsyncValue = AsyncValue(initial)

    @property
    def value(self) -> ServiceHealth:
        current: ServiceHealth = self._value.value
        return current

    def set(self, value: ServiceHealth) -> None:
        """Publish ``value``; waiters whose condition now holds wake up."""
        self._value.value = value

    async def wait_value(
        self, value: ServiceHealth | Callable[[ServiceHealth], bool]
    ) -> ServiceHealth:
        """Wait until the health equals ``value`` (or satisfies the predicate); return it.

        Returns at once if it already does."""
        result: ServiceHealth = await self._value.wait_value(value)
        return result

    async def wait_transition(self) -> tuple[ServiceHealth, ServiceHealth]:
        """Wait for the next change; return ``(new, old)``."""
        new, old = await self._value.wait_transition()
        return new, old

    def __repr__(self) -> str:
        return f"ServiceHealthState({self.value.value})"
