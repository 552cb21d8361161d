"""The warm owner: one detached process per state dir that keeps every warm session's agent
alive between command-line invocations and is the single writer of each session.

Modules: the socket protocol (``wire``), files in the state dir and the socket's safety checks
(``paths``), the per-session FIFO queue (``queue``), bounded writes to a client
(``stream``), the owner's answer to signals (``signals``), the owner process (``server``,
run as ``python -m acpx_trio._owner``) and the client side that finds or starts the owner
(``client``).

Owns: the owner's socket, lock, pid and log files; the queue of turns of a warm session; the
owner's lifetime (idle TTL).
May import: the public surface of the service and runtime (``acpx_trio._service.service``,
``acpx_trio._runtime.runtime``), ``acpx_trio._store``, ``acpx_trio._errors``,
``acpx_trio._events``, and ``acpx_trio._acp.stream_tap`` (the transcript's hook).
The CLI imports it, never the other way round.
"""
