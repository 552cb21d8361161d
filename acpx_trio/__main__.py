"""``python -m acpx_trio`` is the ``acpx-trio`` command."""

from acpx_trio._cli.entry import end_process, finished, hold_interrupts

hold_interrupts()  # before the command line's modules load (released before its loop)

from acpx_trio._cli.main import main  # noqa: E402

end_process(finished(main))
