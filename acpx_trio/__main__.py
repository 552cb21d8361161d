"""``python -m acpx_trio`` is the ``acpx-trio`` command."""

from .cli import main

raise SystemExit(main())
