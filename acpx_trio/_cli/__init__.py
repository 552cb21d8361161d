"""The ``acpx-trio`` command line: argument parsing and the exit status (``main``, which loads
no Trio), the dispatch and the turn commands (``run``, loaded by ``main`` once the arguments
are parsed), global options (``options``), text and NDJSON output (``output``; the
terminal-safe text helpers it shares with the entry in ``text``, which loads no Trio), the
inspection commands (``info``), ``reap`` (``reap``), warm sessions through the warm owner
(``warm``), ``sessions history`` (``history``), exit codes (``exits``), and what the
process does at its start and end (``entry``, the one module the entry points import first:
Ctrl-C held while all that loads, the exit without the interpreter's teardown).
``main`` imports ``run``, which imports the others; none imports ``main``.

Owns: exit codes, signals of a terminal user, what is printed.
May import: everything public in ``acpx_trio`` and its private subpackages.  Nothing imports it
but ``acpx_trio.cli`` and ``acpx_trio.__main__``.
"""
