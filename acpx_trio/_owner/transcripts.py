"""Attach session transcripts to the owner's runtime (see :mod:`acpx_trio._store.transcript`)."""

from __future__ import annotations

from typing import Any


def attach_transcripts(runtime: Any) -> None:
    """Placeholder: transcripts are wired in a later step."""
