"""The embedded runtime service: backends and the registry (``backends``), the lazily built
default runtime (``lazy_runtime``), health (``health``), what the host hands in and the
service's errors (``context``), the blocking/reaping part of start (``startup``), background
work and crash reports (``tasks``), doctor/probe message formatting (``doctor_format``), the
second signal's grace-free kill of this process's launches (``kill_now``, for the command
line and the warm owner),
:class:`AcpxRuntimeService` (``service``) and ``open_runtime_service`` (``open_service``).

Owns: the service's task tree (one task in the host nursery owning everything else),
start-up reaping, registration, crash reporting, stop.
May import: ``acpx_trio._runtime`` (only lazily, for the default runtime), ``acpx_trio._process``,
``acpx_trio._store``, ``acpx_trio._events``, ``acpx_trio._errors``, ``acpx_trio._log``.  Never
the CLI.
"""
