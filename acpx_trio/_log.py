"""The one logger type acpx-trio accepts: any :class:`logging.Logger` or ``LoggerAdapter``."""

from __future__ import annotations

import logging
from typing import Any, Protocol, TypeAlias

__all__ = ["Logger", "ServiceLogger"]

#: What every acpx-trio component logs through (a host may pass an adapter carrying context).
Logger: TypeAlias = logging.Logger | logging.LoggerAdapter[Any]


class ServiceLogger(Protocol):
    """What the service logs through (the host's logger): any ``logging.Logger`` or
    ``LoggerAdapter`` fits, and so does any object with these four methods."""

    def debug(self, msg: str, /) -> object: ...
    def info(self, msg: str, /) -> object: ...
    def warning(self, msg: str, /) -> object: ...
    def error(self, msg: str, /) -> object: ...
