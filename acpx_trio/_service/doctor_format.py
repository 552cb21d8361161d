"""Human-readable formatting of doctor reports, probe timeouts and errors for service logs.

Ported from the seed's ``formatDoctorDetail`` / ``formatDoctorFailureMessage``.  Details may
be of any type; formatting never raises.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import msgspec

__all__ = [
    "format_doctor_detail",
    "format_doctor_failure_message",
    "format_error_message",
    "format_seconds",
]


def format_error_message(exc: BaseException) -> str:
    """The exception's message, or its class name when the message is empty."""
    text = str(exc).strip()
    return text or type(exc).__name__


def format_seconds(seconds: float) -> str:
    """``120.0 -> "120"``, ``0.001 -> "0.001"`` (as JavaScript prints numbers)."""
    value = float(seconds)
    if math.isfinite(value) and value.is_integer():
        return str(int(value))
    return repr(value)


def format_doctor_detail(detail: Any) -> str | None:
    """One doctor detail as text, or ``None`` when it carries nothing.

    * falsy values (``None``, ``""``, ``0``, ``False``, empty containers) are dropped;
    * strings (and bytes, decoded as UTF-8) are trimmed, dropped when blank;
    * exceptions give their message;
    * booleans and numbers give ``str(value)``;
    * anything else (dicts, lists, Structs, dataclasses, objects) is compact JSON, falling back
      to ``repr`` when it cannot be encoded."""
    try:
        if not detail:
            return None
    except Exception:  # an object whose __bool__/__len__ raises is still worth printing
        pass
    if isinstance(detail, str):
        return detail.strip() or None
    if isinstance(detail, bytes | bytearray):
        return bytes(detail).decode("utf-8", errors="replace").strip() or None
    if isinstance(detail, BaseException):
        return format_error_message(detail)
    if isinstance(detail, bool | int | float | complex):
        return str(detail)
    try:
        return msgspec.json.encode(detail).decode("utf-8")
    except Exception:
        try:
            return repr(detail)
        except Exception:
            return f"<unprintable {type(detail).__name__}>"


def format_doctor_failure_message(message: str, details: Iterable[Any] | None = None) -> str:
    """``"<message> (<detail>; <detail>)"``, or just ``message`` when no detail has content."""
    parts = [text for text in map(format_doctor_detail, details or ()) if text]
    detail_text = "; ".join(parts).strip()
    return f"{message} ({detail_text})" if detail_text else message
