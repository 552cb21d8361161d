"""Agent registry: which command starts which ACP agent.

Built-in names (``mock``, ``codex``, ``claude``, ``gemini``) can be replaced, and new names
added, with the ``agents`` config section.  Names are trimmed and lower-cased.  An unknown name
is an error that lists the known names and says how to add one; it is never run as a raw
command.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import msgspec
import trio

from acpx_trio._errors import AcpRuntimeError

__all__ = [
    "BUILTIN_AGENTS",
    "AgentRegistry",
    "AgentSpec",
    "normalize_agent_name",
]


class AgentSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One resolved agent: its name, the argv that starts it, and how to install it.

    ``install_command`` is a shell command a person can run (``None`` when nothing needs
    installing, e.g. the bundled mock agent).  ``builtin`` is false for config entries."""

    name: str
    command: tuple[str, ...]
    install_command: str | None = None
    builtin: bool = True

    @property
    def launcher(self) -> str:
        """``argv[0]`` (the program looked up on ``PATH``)."""
        return self.command[0]

    @property
    def uses_npx(self) -> bool:
        return Path(self.launcher).name in ("npx", "npx.cmd")

    def install_hint(self) -> str:
        """A sentence telling a person how to make this agent startable."""
        if self.uses_npx and shutil.which(self.launcher) is None:
            extra = f", then: {self.install_command}" if self.install_command else ""
            return f"Install Node.js (it provides npx){extra}."
        if self.install_command:
            return f"Install it with: {self.install_command}"
        return f'Make sure "{self.launcher}" is installed and on PATH.'


def _mock_command() -> tuple[str, ...]:
    return (sys.executable, "-m", "acpx_trio.testing.mock_agent")


#: Built-in agents: name -> (argv, install command).
BUILTIN_AGENTS: Mapping[str, tuple[tuple[str, ...], str | None]] = {
    "mock": (_mock_command(), None),
    "codex": (("npx", "@zed-industries/codex-acp"), "npm install -g @zed-industries/codex-acp"),
    "claude": (
        ("npx", "@agentclientprotocol/claude-agent-acp"),
        "npm install -g @agentclientprotocol/claude-agent-acp",
    ),
    "gemini": (("gemini", "--experimental-acp"), "npm install -g @google/gemini-cli"),
}


def normalize_agent_name(name: str) -> str:
    """Trimmed, lower-cased agent name."""
    return name.strip().lower()


def _npx_install_command(command: Sequence[str]) -> str | None:
    """``npm install -g <pkg>`` for ``npx [-y] <pkg> ...`` commands."""
    if not command or Path(command[0]).name not in ("npx", "npx.cmd"):
        return None
    package = next((part for part in command[1:] if not part.startswith("-")), None)
    return f"npm install -g {package}" if package else None


class AgentRegistry:
    """Agent name -> :class:`AgentSpec`.  Overrides replace built-ins of the same name.

    Immutable after construction; safe to share between tasks and threads."""

    def __init__(self, overrides: Mapping[str, Iterable[str]] | None = None) -> None:
        specs: dict[str, AgentSpec] = {
            name: AgentSpec(name=name, command=argv, install_command=install)
            for name, (argv, install) in BUILTIN_AGENTS.items()
        }
        for raw_name, argv in (overrides or {}).items():
            name = normalize_agent_name(raw_name)
            command = tuple(argv)
            if not name or not command:
                raise AcpRuntimeError(
                    "ACP_INVALID_RUNTIME_OPTION",
                    f"agent override {raw_name!r} needs a non-empty name and command",
                )
            specs[name] = AgentSpec(
                name=name,
                command=command,
                install_command=_npx_install_command(command),
                builtin=False,
            )
        self._specs = specs

    def names(self) -> list[str]:
        """Every known agent name, sorted."""
        return sorted(self._specs)

    def specs(self) -> list[AgentSpec]:
        """Every known agent, sorted by name."""
        return [self._specs[name] for name in self.names()]

    def resolve(self, name: str) -> AgentSpec:
        """The agent called ``name`` (trimmed, case-insensitive).

        Raises :class:`AcpRuntimeError` ``ACP_AGENT_UNKNOWN`` (listing the known names and how to
        add one) for a name that is neither built in nor configured."""
        key = normalize_agent_name(name)
        spec = self._specs.get(key)
        if spec is None:
            known = ", ".join(self.names())
            raise AcpRuntimeError(
                "ACP_AGENT_UNKNOWN",
                f'Unknown ACP agent "{key}". Known agents: {known}. To add one, configure '
                f'agents.{key or "<name>"} = {{"command": "<program>", "args": [...]}} '
                "in the acpx plugin config.",
            )
        return spec

    def is_installed(self, name_or_spec: str | AgentSpec) -> bool:
        """Whether the launcher (``argv[0]``; ``npx`` for npx-launched agents) is found.

        Blocking (a ``PATH`` lookup); async code should call :meth:`check_installed`.
        For npx-launched agents this only proves npx exists: the package may still be
        fetched on first start."""
        spec = name_or_spec if isinstance(name_or_spec, AgentSpec) else self.resolve(name_or_spec)
        return shutil.which(spec.launcher) is not None

    async def check_installed(self, name_or_spec: str | AgentSpec) -> bool:
        """:meth:`is_installed` off the event loop."""
        return await trio.to_thread.run_sync(self.is_installed, name_or_spec)
