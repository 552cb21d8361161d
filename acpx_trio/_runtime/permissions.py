"""Answering agent requests: ``session/request_permission`` and ``fs/*`` inside the session cwd.

Guarantees:

* A permission request is always answered (never left pending): by the permission mode, or
  ``cancelled`` while the turn is being cancelled, or ``cancelled`` when no non-interactive
  answer exists (policy ``fail``, which also fails the turn with
  ``ACP_PERMISSION_PROMPT_UNAVAILABLE``).  A ``reject_*`` option is never chosen as approval.
* File access is confined to the session cwd: a path must be absolute, free of NUL bytes, and
  stay inside the cwd after ``..`` normalisation *and* after resolving symlinks.  Anything else
  is refused with a JSON-RPC error (:class:`AcpRuntimeError` with ``rpc_code``) that says why.
* File I/O runs in worker threads; a cancelled call leaves no partial state beyond what the OS
  call already did.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from typing import Literal

import msgspec
import trio

from acpx_trio._acp._messages import (
    CancelledOutcome,
    EmptyResponse,
    PermissionOption,
    ReadTextFileRequest,
    ReadTextFileResponse,
    RequestPermissionRequest,
    RequestPermissionResponse,
    SelectedOutcome,
    WriteTextFileRequest,
)
from acpx_trio._errors import AcpRuntimeError
from acpx_trio._runtime.beneath import BeneathError, open_beneath, open_dir_beneath
from acpx_trio._store.config import NonInteractivePolicy, PermissionMode

__all__ = [
    "INVALID_PARAMS",
    "PERMISSION_DENIED_RPC",
    "RESOURCE_NOT_FOUND",
    "FsGate",
    "PermissionDecision",
    "PermissionPolicy",
    "PermissionStats",
    "WorkDir",
    "confined_relative",
    "open_dir_in_cwd",
    "open_in_cwd",
    "prompt_unavailable_error",
    "work_dir",
]

INVALID_PARAMS = -32602
RESOURCE_NOT_FOUND = -32002
#: JSON-RPC code of a refusal by permission mode (ACP defines none; -32603 is what SDKs send).
PERMISSION_DENIED_RPC = -32603
#: Largest file ``fs/read_text_file`` returns (bounds memory and the response line).
MAX_READ_BYTES = 4 * 1024 * 1024

_READ_KINDS = frozenset({"read", "search"})
_READ_TITLE_WORDS = ("read", "cat", "view", "open", "list", "ls", "search", "find", "grep",
                     "glob", "fetch")

Verdict = Literal["approved", "denied", "cancelled"]


class PermissionStats(msgspec.Struct, kw_only=True):
    """Counters of permission requests and their outcomes (per session)."""

    requested: int = 0
    approved: int = 0
    denied: int = 0
    cancelled: int = 0


class PermissionDecision(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to send, how it counts, and (policy ``fail``) the error that fails the turn."""

    response: RequestPermissionResponse
    verdict: Verdict
    fail_turn: AcpRuntimeError | None = None


def prompt_unavailable_error(what: str) -> AcpRuntimeError:
    """The turn failure raised when a permission would need a person (policy ``fail``)."""
    return AcpRuntimeError(
        "ACP_PERMISSION_PROMPT_UNAVAILABLE",
        f"The agent asked for permission ({what}) but an embedded runtime cannot prompt a "
        'person. Set permissionMode "approve-all" to allow it, or nonInteractivePermissions '
        '"deny" to refuse such requests without failing the turn.',
    )


def _first(options: list[PermissionOption], kinds: tuple[str, ...]) -> PermissionOption | None:
    return next((o for o in options if o.kind in kinds), None)


def _looks_like_read(kind: str | None, title: str | None) -> bool:
    if kind:
        return kind in _READ_KINDS
    words = (title or "").strip().lower().split()
    return bool(words) and any(words[0].startswith(w) for w in _READ_TITLE_WORDS)


def _selected(option: PermissionOption) -> RequestPermissionResponse:
    return RequestPermissionResponse(outcome=SelectedOutcome(option_id=option.option_id))


_CANCELLED = RequestPermissionResponse(outcome=CancelledOutcome())


class PermissionPolicy:
    """Decides permission requests by ``permission_mode`` and ``non_interactive_permissions``.

    Pure and synchronous; keeps :attr:`stats`."""

    def __init__(self, mode: PermissionMode, non_interactive: NonInteractivePolicy) -> None:
        self.mode = mode
        self.non_interactive = non_interactive
        self.stats = PermissionStats()

    def _count(self, verdict: Verdict) -> None:
        if verdict == "approved":
            self.stats.approved += 1
        elif verdict == "denied":
            self.stats.denied += 1
        else:
            self.stats.cancelled += 1

    def _deny(self, options: list[PermissionOption]) -> tuple[RequestPermissionResponse, Verdict]:
        reject = _first(options, ("reject_once", "reject_always"))
        if reject is None:
            return _CANCELLED, "cancelled"
        return _selected(reject), "denied"

    def decide(self, request: RequestPermissionRequest, *, cancelling: bool) -> PermissionDecision:
        """The answer to ``request``.  ``cancelling``: the turn is being cancelled."""
        self.stats.requested += 1
        options = request.options
        fail: AcpRuntimeError | None = None
        response: RequestPermissionResponse
        verdict: Verdict
        if cancelling or not options:
            response, verdict = _CANCELLED, "cancelled"
        elif self.mode == "approve-all":
            allow = _first(options, ("allow_once", "allow_always")) or options[0]
            response = _selected(allow)
            verdict = "denied" if allow.kind.startswith("reject") else "approved"
        elif self.mode == "deny-all":
            response, verdict = self._deny(options)
        elif _looks_like_read(request.tool_call.kind, request.tool_call.title):
            read_allow = _first(options, ("allow_once", "allow_always"))
            if read_allow is not None:
                response, verdict = _selected(read_allow), "approved"
            else:
                response, verdict = self._deny(options)
        elif self.non_interactive == "deny":
            response, verdict = self._deny(options)
        else:
            title = request.tool_call.title or request.tool_call.kind or "a tool call"
            response, verdict = _CANCELLED, "cancelled"
            fail = prompt_unavailable_error(title)
        self._count(verdict)
        return PermissionDecision(response=response, verdict=verdict, fail_turn=fail)

    def write_allowed(self) -> tuple[bool, AcpRuntimeError | None]:
        """Whether ``fs/write_text_file`` may proceed, and the turn failure if policy ``fail``."""
        if self.mode == "approve-all":
            return True, None
        if self.mode == "approve-reads" and self.non_interactive == "fail":
            return False, prompt_unavailable_error("write a file")
        return False, None


    def terminal_allowed(self, command: str) -> tuple[bool, AcpRuntimeError | None]:
        """Whether ``terminal/create`` may run ``command`` (an execute-kind permission:
        allowed only under ``approve-all``), and the turn failure under policy ``fail``.
        Counted in :attr:`stats`."""
        self.stats.requested += 1
        if self.mode == "approve-all":
            self.stats.approved += 1
            return True, None
        self.stats.denied += 1
        if self.mode == "approve-reads" and self.non_interactive == "fail":
            return False, prompt_unavailable_error(f"run a command: {command}")
        return False, None


def _refuse(message: str, code: int = INVALID_PARAMS) -> AcpRuntimeError:
    return AcpRuntimeError("ACP_FS_REFUSED", message, rpc_code=code)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def confined_relative(raw: str, cwd: str) -> str:
    """``raw`` (absolute) as a path relative to ``cwd``, if it lies inside ``cwd`` lexically
    (after ``..``); no file system access.  The open itself must then go through
    :func:`open_in_cwd`, which resolves beneath ``cwd`` in one step.

    Raises :class:`AcpRuntimeError` (``rpc_code`` -32602) for a relative path, a NUL byte or
    a ``..`` that leaves ``cwd``."""
    if not isinstance(raw, str) or not raw:
        raise _refuse("path must be a non-empty absolute path")
    if "\0" in raw:
        raise _refuse("path contains a NUL byte")
    if not os.path.isabs(raw):
        raise _refuse(f"path must be absolute (got {raw!r}); it must lie inside {cwd}")
    lexical = os.path.normpath(raw)
    for root in (os.path.normpath(cwd), os.path.realpath(cwd)):
        if _inside(lexical, root):
            return os.path.relpath(lexical, root)
    raise _refuse(f"path {raw!r} is outside the session working directory {cwd}")


class WorkDir(msgspec.Struct, frozen=True):
    """A session's working directory as the session started in it: the path, and the
    identity (device, inode) of the directory the path named then.  Every file and terminal
    request of the session is confined beneath it, and refused once the path names another
    directory (the agent renamed it away and put a symlink, or another directory, in its
    place).  Made by :func:`work_dir`."""

    path: str
    dev: int
    ino: int


def work_dir(path: str) -> WorkDir | None:
    """``path`` with the identity of the directory it names now (a symlink followed), or
    ``None`` if it names none.  Blocking."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return WorkDir(path, st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def open_in_cwd(raw: str, cwd: WorkDir, flags: int, *, mode: int = 0o644,
                make_parents: bool = False) -> int:
    """An fd for ``raw`` opened beneath ``cwd`` in one step (see :mod:`.beneath`): a symlink
    or ``..`` that would leave ``cwd`` — even one swapped in while we open — is refused
    (``ACP_FS_REFUSED``), never followed, and so is everything once ``cwd.path`` names
    another directory than the session started in.  ``make_parents`` creates missing
    directories, each beneath its parent.  Blocking."""
    rel = confined_relative(raw, cwd.path)
    parent, name = os.path.split(rel)
    try:
        root = os.open(cwd.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _refuse(f"session working directory {cwd.path}: {exc.strerror}") from None
    try:
        st = os.fstat(root)
        if (st.st_dev, st.st_ino) != (cwd.dev, cwd.ino):
            raise _refuse(f"session working directory {cwd.path} is no longer the directory "
                          "the session started in (it was replaced)")
        if not make_parents or not parent:
            return open_beneath(root, rel, flags, mode)
        dirfd = open_dir_beneath(root, parent, create=True)
        try:
            return open_beneath(dirfd, name, flags, mode)
        finally:
            os.close(dirfd)
    except BeneathError:
        raise _refuse(
            f"path {raw!r} resolves (through a symlink or '..') outside the session working "
            f"directory {cwd.path}"
        ) from None
    finally:
        os.close(root)


def open_dir_in_cwd(raw: str, cwd: WorkDir) -> int:
    """A directory fd for ``raw`` beneath ``cwd`` (as :func:`open_in_cwd`).  Blocking."""
    try:
        return open_in_cwd(raw, cwd, os.O_RDONLY | os.O_DIRECTORY)
    except NotADirectoryError:
        raise _refuse(f"{raw!r} is not a directory") from None
    except FileNotFoundError:
        raise _refuse(f"directory not found: {raw}", RESOURCE_NOT_FOUND) from None


def _checked_regular(fd: int, raw: str) -> int:
    """``fd`` if it is a regular file (now blocking again), else closed and refused: a FIFO
    or device in the cwd would otherwise park a worker thread forever (uncancellable)."""
    try:
        kind = os.fstat(fd).st_mode
        if stat.S_ISDIR(kind):
            raise IsADirectoryError(raw)
        if not stat.S_ISREG(kind):
            raise _refuse(f"path is not a regular file: {raw}")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_slice(raw: str, cwd: WorkDir, line: int | None, limit: int | None) -> str:
    try:
        fd = _checked_regular(open_in_cwd(raw, cwd, os.O_RDONLY | os.O_NONBLOCK), raw)
        with os.fdopen(fd, "rb") as fh:
            # the size is checked first and the read bounded too: the file may grow between
            too_big = os.fstat(fd).st_size > MAX_READ_BYTES
            data = b"" if too_big else fh.read(MAX_READ_BYTES + 1)
            if too_big or len(data) > MAX_READ_BYTES:
                raise _refuse(
                    f"file {raw} is larger than {MAX_READ_BYTES} bytes; read it in parts",
                    INVALID_PARAMS,
                )
        # as a text-mode read decodes it (universal newlines)
        text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace").read()
    except FileNotFoundError:
        raise _refuse(f"file not found: {raw}", RESOURCE_NOT_FOUND) from None
    except IsADirectoryError:
        raise _refuse(f"path is a directory, not a file: {raw}") from None
    except OSError as exc:
        raise _refuse(f"cannot read {raw}: {exc.strerror}", PERMISSION_DENIED_RPC) from None
    if line is None and limit is None:
        return text
    lines = text.splitlines(keepends=True)
    start = (line or 1) - 1
    end = len(lines) if limit is None else start + limit
    return "".join(lines[start:end])


def _write(raw: str, cwd: WorkDir, content: str) -> None:
    try:
        # O_TRUNC only after the regular-file check (a FIFO or device is refused untouched).
        fd = _checked_regular(open_in_cwd(raw, cwd, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK,
                                          make_parents=True), raw)
        os.ftruncate(fd, 0)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
    except FileNotFoundError:
        raise _refuse(f"directory not found for {raw}", RESOURCE_NOT_FOUND) from None
    except IsADirectoryError:
        raise _refuse(f"path is a directory, not a file: {raw}") from None
    except OSError as exc:
        raise _refuse(f"cannot write {raw}: {exc.strerror}", PERMISSION_DENIED_RPC) from None


class FsGate:
    """Serves ``fs/read_text_file`` and ``fs/write_text_file`` for one session.

    ``on_turn_failure`` is called with the error when a write needs a person under policy
    ``fail`` (the runtime fails the running turn with it)."""

    def __init__(
        self,
        cwd: WorkDir,
        policy: PermissionPolicy,
        *,
        on_turn_failure: Callable[[AcpRuntimeError], None] | None = None,
    ) -> None:
        #: the session cwd (:func:`work_dir`): every request is confined beneath it
        self.cwd = cwd
        self.policy = policy
        self._on_turn_failure = on_turn_failure

    async def read_text_file(self, request: ReadTextFileRequest) -> ReadTextFileResponse:
        """File content (``line`` 1-based, ``limit`` lines); refused under ``deny-all``."""
        if self.policy.mode == "deny-all":
            raise _refuse(
                "reading files is denied (permissionMode deny-all)", PERMISSION_DENIED_RPC
            )
        if request.line is not None and request.line < 1:
            raise _refuse(f"line must be >= 1 (1-based), got {request.line}")
        if request.limit is not None and request.limit < 0:
            raise _refuse(f"limit must be >= 0, got {request.limit}")
        content = await trio.to_thread.run_sync(
            _read_slice, request.path, self.cwd, request.line, request.limit)
        return ReadTextFileResponse(content=content)

    async def write_text_file(self, request: WriteTextFileRequest) -> EmptyResponse:
        """Writes the file (creating parent directories inside the cwd) when the mode allows."""
        # a path outside is refused before asking (in a thread: realpath may touch the disk)
        await trio.to_thread.run_sync(confined_relative, request.path, self.cwd.path)
        allowed, fail = self.policy.write_allowed()
        if not allowed:
            if fail is not None and self._on_turn_failure is not None:
                self._on_turn_failure(fail)
            raise _refuse(
                f"writing {request.path} is denied (permissionMode {self.policy.mode}, "
                f"nonInteractivePermissions {self.policy.non_interactive}); set permissionMode "
                '"approve-all" to allow writes',
                PERMISSION_DENIED_RPC,
            )
        await trio.to_thread.run_sync(_write, request.path, self.cwd, request.content)
        return EmptyResponse()
