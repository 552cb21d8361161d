"""A spare launch's program: enter its leaf cgroup, then wait for the one command it becomes.

Two forms of one program, with one frame format: :data:`PERL_PROGRAM` (``perl -e``, 1.5 ms
to start: the form used wherever ``perl`` is installed) and this module run as a script
(``python -I -S .../spare_wait.py MARK LEAF FD``: 7-9 ms to start, the fallback).  Either
form (see :class:`acpx_trio._process.spare_leaf.SpareLeaves`) first writes itself into
``LEAF/cgroup.procs`` (a failed write ends it having run nothing), then reads pipe ``FD`` to
its end and ``exec``s what it got: the working directory, ``argv`` and the whole
environment, so the agent starts as the direct path's shim shell starts it (``argv[0]``
searched on the environment's ``PATH``, a file without ``#!`` run by ``/bin/sh``, signal
dispositions restored as :mod:`subprocess` restores them, no descriptor but 0, 1 and 2).

The command travels as one frame (:func:`encode_frame`) on a private pipe from the process
that spawned this one, never on a command line (where another user or an audit log could
read a credential).  Anything but one complete frame of this version (an owner that died
mid-write: end of file early) runs nothing and exits 0.

Standard library only, and no import of ``acpx_trio``: it must run as a script under ``-S``.
"""

from __future__ import annotations

import errno
import os
import signal
import sys

__all__ = ["FRAME_TAG", "PERL_PROGRAM", "SPARE_MARK", "decode_frame", "encode_frame", "main"]

#: A spare's command line holds this word (its first argument): spares can be found by it.
SPARE_MARK = "acpx-trio-spare"
#: First field of every frame (a frame of another version runs nothing).
FRAME_TAG = b"acpx-spare-1"
_END = b"end"
_NOT_THERE = (errno.ENOENT, errno.ENOTDIR)


def encode_frame(cwd: bytes, argv: list[bytes], env: list[bytes]) -> bytes:
    """One frame: NUL-terminated fields ``TAG, cwd, argc, envc, *argv, *env, "end"`` (each
    ``env`` item ``NAME=value``).  The fields hold no NUL (the caller checks)."""
    fields = [FRAME_TAG, cwd, b"%d" % len(argv), b"%d" % len(env), *argv, *env, _END]
    return b"\0".join(fields) + b"\0"


def decode_frame(data: bytes) -> tuple[bytes, list[bytes], dict[bytes, bytes]] | None:
    """``(cwd, argv, env)`` of one complete frame, or ``None`` for anything else (a cut
    frame, another version, counts that do not add up, an empty command)."""
    fields = data.split(b"\0")
    if len(fields) < 6 or fields[0] != FRAME_TAG or fields[-2:] != [_END, b""]:
        return None
    if not (fields[2].isdigit() and fields[3].isdigit()):
        return None
    argc, envc = int(fields[2]), int(fields[3])
    if argc < 1 or len(fields) != 6 + argc + envc:
        return None
    argv = fields[4:4 + argc]
    env: dict[bytes, bytes] = {}
    for item in fields[4 + argc:4 + argc + envc]:
        name, eq, value = item.partition(b"=")
        if not name or not eq:
            return None
        env[name] = value
    return fields[1], argv, env


#: The same program in Perl (``perl -e PERL_PROGRAM -- MARK LEAF FD``): same steps, same
#: frame checks, same exits (1: cannot enter the leaf; 0: no complete frame; 127: cannot
#: enter the directory or run the command).  Core Perl only, no module loaded.
PERL_PROGRAM = r"""
my (undef, $leaf, $fd) = @ARGV;
my $p;
unless (open($p, '>', "$leaf/cgroup.procs") && defined(syswrite($p, '0')) && close($p)) {
    print STDERR "acpx-trio spare: cannot enter $leaf: $!\n"; exit 1;
}
my $in; open($in, '<&=', $fd) or exit 0; binmode $in;
my $d = ''; 1 while sysread($in, $d, 65536, length $d); close $in;
my @f = split /\0/, $d, -1;
exit 0 unless @f >= 6 && $f[0] eq 'acpx-spare-1' && $f[-2] eq 'end' && $f[-1] eq ''
    && $f[2] =~ /\A[0-9]+\z/ && $f[3] =~ /\A[0-9]+\z/ && $f[2] >= 1
    && @f == 6 + $f[2] + $f[3];
my ($cwd, $argc, $envc) = @f[1 .. 3];
my @args = @f[4 .. 3 + $argc];
my %env;
for my $kv (@f[4 + $argc .. 3 + $argc + $envc]) {
    my ($k, $v) = split /=/, $kv, 2;
    exit 0 unless length($k) && defined $v;
    $env{$k} = $v;
}
chdir($cwd) or do { print STDERR "acpx-trio spare: cannot enter '$cwd': $!\n"; exit 127 };
%ENV = %env;
$SIG{PIPE} = 'DEFAULT'; $SIG{XFSZ} = 'DEFAULT';
{ exec { $args[0] } @args; }
print STDERR "acpx-trio spare: cannot run '$args[0]': $!\n";
exit 127;
"""


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def main(argv: list[str]) -> int:
    """The Python form: ``argv`` is ``[script, MARK, LEAF, FD]``."""
    leaf, fd = argv[2], int(argv[3])
    try:
        with open(os.path.join(leaf, "cgroup.procs"), "w", encoding="ascii") as fh:
            fh.write("0")
    except OSError as exc:
        sys.stderr.write(f"acpx-trio spare: cannot enter {leaf}: {exc.strerror}\n")
        return 1
    data = _read_all(fd)
    os.close(fd)
    frame = decode_frame(data)
    if frame is None:
        return 0  # nothing, or half a frame: the owner is gone
    cwd, args, env = frame
    try:
        os.chdir(cwd)
    except OSError as exc:
        sys.stderr.write(f"acpx-trio spare: cannot enter {cwd!r}: {exc.strerror}\n")
        return 127
    for sig in ("SIGPIPE", "SIGXFSZ"):  # as subprocess's restore_signals
        if hasattr(signal, sig):
            signal.signal(getattr(signal, sig), signal.SIG_DFL)
    failure = _exec(args, env)
    sys.stderr.write(f"acpx-trio spare: cannot run {args[0]!r}: {failure.strerror}\n")
    return 127


def _exec(args: list[bytes], env: dict[bytes, bytes]) -> OSError:
    """``execvp(3)`` with ``env``, as the direct path's shim shell and Perl's ``exec`` run a
    command: the ``PATH`` of ``env`` searched (a name with a slash taken as is), and a file
    the kernel cannot execute (``ENOEXEC``: no ``#!`` line) run by ``/bin/sh``.  Returns the
    error only if nothing could be run."""
    program = args[0]
    if b"/" in program:
        candidates = [program]
    else:
        path = env.get(b"PATH", os.fsencode(os.defpath))
        candidates = [os.path.join(d or b".", program) for d in path.split(b":")]
    error: OSError | None = None
    for candidate in candidates:
        try:
            os.execve(candidate, args, env)
        except OSError as exc:
            if exc.errno == errno.ENOEXEC:
                try:
                    os.execve(b"/bin/sh", [b"/bin/sh", candidate, *args[1:]], env)
                except OSError as sh_exc:
                    return sh_exc
            if error is None or error.errno in _NOT_THERE:  # the telling error first
                error = exc
    return error or OSError(errno.ENOENT, os.strerror(errno.ENOENT))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
