"""Everything acpx-trio keeps on disk: private dirs, safe reads and atomic writes (``fsio``,
``dirs``), file locks (``flock``: blocking primitives; ``locks``: the in-process FIFO in front
of them and group commit), the lease record and its state moves (``lease_model``), the lease
file and its store (``leases``),
session records (``sessions``), transcripts (``transcript``, ``transcript_history``), the
gateway instance id (``instance``) and the plugin config (``config``; its memory caps:
``caps``).

Owns: file formats, atomic writes, locks, quarantine of damaged files, permission checks.
May import: ``acpx_trio._errors`` and ``acpx_trio._log`` only (plus the standard library,
msgspec and trio for the async facades).  Nothing here knows about processes, the ACP wire,
the runtime or the service.
"""
