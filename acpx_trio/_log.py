"""The one logger type acpx-trio accepts: any :class:`logging.Logger` or ``LoggerAdapter``.

A host hands the service a :class:`ServiceLogger` (a ``logging`` logger, or any object with
the four methods); :func:`as_logger` makes it a ``logging`` logger every component (runtime,
lease and session stores) can log through, so their warnings reach the host."""

from __future__ import annotations

import logging
from typing import Any, Protocol, TypeAlias

__all__ = ["Logger", "ServiceLogger", "as_logger"]

#: What every acpx-trio component logs through (a host may pass an adapter carrying context).
Logger: TypeAlias = logging.Logger | logging.LoggerAdapter[Any]


class ServiceLogger(Protocol):
    """What the service logs through (the host's logger): any ``logging.Logger`` or
    ``LoggerAdapter`` fits, and so does any object with these four methods."""

    def debug(self, msg: str, /) -> object: ...
    def info(self, msg: str, /) -> object: ...
    def warning(self, msg: str, /) -> object: ...
    def error(self, msg: str, /) -> object: ...


class _ToHost(logging.Handler):
    """Hands each record, formatted (``msg % args``, traceback appended), to the host's
    method of its level (critical goes to ``error``)."""

    def __init__(self, host: ServiceLogger) -> None:
        super().__init__()
        self.host = host

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno >= logging.ERROR:
                self.host.error(text)
            elif record.levelno >= logging.WARNING:
                self.host.warning(text)
            elif record.levelno >= logging.INFO:
                self.host.info(text)
            else:
                self.host.debug(text)
        except Exception:  # a failing host logger must not fail the runtime: logging's rule
            self.handleError(record)


def as_logger(host: ServiceLogger, name: str = "acpx_trio") -> Logger:
    """``host`` itself when it is a ``logging`` logger or adapter; otherwise a private
    logger (not in ``logging``'s registry, not propagating to the root) whose every record
    goes to ``host``'s method of that level."""
    if isinstance(host, logging.Logger | logging.LoggerAdapter):
        return host
    bridge = logging.Logger(name)
    bridge.propagate = False
    bridge.addHandler(_ToHost(host))
    return bridge
