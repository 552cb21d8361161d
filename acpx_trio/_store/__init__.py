"""Everything acpx-trio keeps on disk: private dirs, safe reads and atomic writes (``fsio``,
``dirs``), file locks (``flock``: blocking primitives; ``locks``: the in-process FIFO in front
of them and group commit), the lease record and its state moves (``lease_model``), the lease
file and its store (``leases``; the file held in memory between locked operations:
``lease_snapshot``; the change log: ``lease_log``), session records (``sessions``),
transcripts (``transcript``, ``transcript_history``), the gateway instance id
(``instance``), the paths callers hand us (``userpaths``) and the plugin config (``config``;
the entries of its ``agents`` and ``mcpServers`` and what of it may be shown:
``config_entries``; its files: ``config_files``; its memory caps: ``caps``).

Owns: file formats, atomic writes, locks, quarantine of damaged files, permission checks.
May import: ``acpx_trio._errors`` and ``acpx_trio._log`` only (plus the standard library,
msgspec and trio for the async facades).  Nothing here knows about processes, the ACP wire,
the runtime or the service.
"""
