"""Memory caps of the warm owner and of terminals: defaults and bounds of their config keys
(one home; :mod:`acpx_trio._store.config` declares the fields).  See README "Warm sessions"
and "Configuration"."""

from __future__ import annotations

__all__ = [
    "CAP_BOUNDS",
    "CAP_FIELDS",
    "DEFAULT_OWNER_FRAME_MAX_BYTES",
    "DEFAULT_OWNER_PARTIAL_MAX_BYTES",
    "DEFAULT_OWNER_QUEUE_MAX_BYTES",
    "DEFAULT_OWNER_QUEUE_TOTAL_MAX_BYTES",
    "DEFAULT_TERMINAL_OUTPUT_MAX_BYTES",
    "TURN_OVERHEAD_BYTES",
]

#: Prompt bytes one warm session may hold queued.
DEFAULT_OWNER_QUEUE_MAX_BYTES = 64 * 1024 * 1024
#: Prompt bytes all warm sessions of an owner may hold queued.
DEFAULT_OWNER_QUEUE_TOTAL_MAX_BYTES = 256 * 1024 * 1024
#: What each queued prompt counts against those caps besides its text: the owner keeps about
#: 0.7 KiB for one (its request, channel and task), so a flood of empty prompts meets the
#: caps too (the smallest cap, 4 KiB, holds a few).
TURN_OVERHEAD_BYTES = 1024
#: Largest request frame (a prompt included) the owner reads.
DEFAULT_OWNER_FRAME_MAX_BYTES = 16 * 1024 * 1024
#: Bytes of unfinished request frames the owner buffers, all connections together.
DEFAULT_OWNER_PARTIAL_MAX_BYTES = 64 * 1024 * 1024
#: Terminal output one session may keep, all its terminals together.
DEFAULT_TERMINAL_OUTPUT_MAX_BYTES = 64 * 1024 * 1024

#: camelCase key -> (minimum, minimum is exclusive, maximum), integers (bytes).
CAP_BOUNDS: dict[str, tuple[float, bool, float]] = {
    "ownerQueueMaxBytes": (4096, False, 1 << 30),
    "ownerQueueTotalMaxBytes": (4096, False, 4 << 30),
    "ownerFrameMaxBytes": (4096, False, 256 << 20),
    "ownerPartialMaxBytes": (4096, False, 4 << 30),
    "terminalOutputMaxBytes": (0, False, 1 << 30),
}
#: camelCase key -> the config Structs' attribute.
CAP_FIELDS: tuple[tuple[str, str], ...] = (
    ("ownerQueueMaxBytes", "owner_queue_max_bytes"),
    ("ownerQueueTotalMaxBytes", "owner_queue_total_max_bytes"),
    ("ownerFrameMaxBytes", "owner_frame_max_bytes"),
    ("ownerPartialMaxBytes", "owner_partial_max_bytes"),
    ("terminalOutputMaxBytes", "terminal_output_max_bytes"),
)
