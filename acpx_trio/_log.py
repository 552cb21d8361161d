"""The one logger type acpx-trio accepts: any :class:`logging.Logger` or ``LoggerAdapter``."""

from __future__ import annotations

import logging
from typing import Any, TypeAlias

__all__ = ["Logger"]

#: What every acpx-trio component logs through (a host may pass an adapter carrying context).
Logger: TypeAlias = logging.Logger | logging.LoggerAdapter[Any]
