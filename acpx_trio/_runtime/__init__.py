"""The ACP runtime: agents (``agents``), what starting a session needs
(``session_factory``: the :class:`SessionFactory` the runtime owns and hands down), the
handshake and doctor probe built on it (``handshake``), a live session (``live_session``)
and the controls a caller applies to it: mode, config options, model (``controls``), turns
(``turns``), what agents may ask of us (``permissions``), update mapping to events
(``update_map``), per-key locks (``key_locks``), :class:`AcpxRuntime` itself (``runtime``)
and ``open_acpx_runtime`` (``open_runtime``).

Owns: sessions and turns, and every ACP request an agent sends us.
May import: ``acpx_trio._process``, ``acpx_trio._acp``, ``acpx_trio._store``,
``acpx_trio._events``, ``acpx_trio._errors``, ``acpx_trio._log``.  Never the service or the
CLI.  Inside: ``handshake`` never imports ``runtime`` (it gets a ``SessionFactory``).
"""
