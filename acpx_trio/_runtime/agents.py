"""Agent registry: which command starts which ACP agent.

Built-in names (:data:`AGENT_TABLE`: ``mock`` plus the 26 agents acpx 0.19.1 knows —
``codex``, ``claude``, ``gemini``, ``pi``, ``opencode``, ``cursor``, ``copilot``, ``qwen``,
``kimi``, ``fast-agent``, ...) can be replaced, and new names added, with the ``agents``
config section.  An installed adapter binary (``codex-acp``, ``claude-agent-acp``,
``opencode``, ``pi-acp``, ``kilo``) is preferred over ``npx`` when found.  Names are trimmed
and lower-cased.  An unknown name is an error that lists the known names and says how to add
one; it is never run as a raw command.
"""

from __future__ import annotations

import shutil
import sys
import sysconfig
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import msgspec
import trio

from acpx_trio._errors import AcpRuntimeError

__all__ = [
    "AGENT_TABLE",
    "BUILTIN_AGENTS",
    "AgentRegistry",
    "AgentRow",
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
    #: An installed binary's argv, used instead of ``command`` when found on ``PATH``.
    binary: tuple[str, ...] | None = None
    auth_methods: tuple[str, ...] = ()
    auth_hint: str | None = None

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


class AgentRow(msgspec.Struct, frozen=True, kw_only=True):
    """One built-in agent: the command acpx 0.19.1 uses, an installed binary preferred over
    ``npx``/``uvx`` when found, how to install it, and how it authenticates."""

    name: str
    command: tuple[str, ...]
    binary: tuple[str, ...] | None = None
    install: str | None = None
    #: Auth method ids whose credentials are placed in the agent's env at spawn time.
    auth_methods: tuple[str, ...] = ()
    #: What a person must do once (names of env vars / login commands, never values).
    auth_hint: str | None = None


def _npm(pkg: str) -> str:
    return f"npm install -g {pkg}"


#: The built-in table (facts from acpx 0.19.1's agent registry; rows written here).
AGENT_TABLE: tuple[AgentRow, ...] = (
    AgentRow(name="mock", command=_mock_command()),
    # acpx's pins ``pi-acp@^0.0.33`` and ``mux@^0.28.0`` match no published version (npm
    # view, 2026-12): pi-acp is pinned to a published one; the npm package ``mux`` is an
    # unrelated stream library, so mux runs only as an installed ``mux`` binary.
    AgentRow(name="pi", command=("npx", "-y", "pi-acp@^0.0.34"), binary=("pi-acp",),
             install=_npm("pi-acp"), auth_hint="pi's own login"),
    AgentRow(name="codex", command=("npx", "-y", "@agentclientprotocol/codex-acp@^1.1.5"),
             binary=("codex-acp",), install=_npm("@agentclientprotocol/codex-acp"),
             auth_methods=("api-key", "codex-api-key", "openai-api-key"),
             auth_hint="CODEX_API_KEY or OPENAI_API_KEY (method api-key; both are passed), "
                       "or `codex login`"),
    AgentRow(name="claude",
             command=("npx", "-y", "@agentclientprotocol/claude-agent-acp@^0.76.0"),
             binary=("claude-agent-acp",), install=_npm("@agentclientprotocol/claude-agent-acp"),
             auth_hint="ANTHROPIC_API_KEY, or `claude /login`"),
    AgentRow(name="gemini", command=("gemini", "--acp"), install=_npm("@google/gemini-cli"),
             auth_methods=("gemini-api-key", "vertex-ai"),
             auth_hint="GEMINI_API_KEY (method gemini-api-key), GOOGLE_API_KEY (vertex-ai), "
                       "or `gemini` login (oauth)"),
    AgentRow(name="opencode", command=("npx", "-y", "opencode-ai", "acp"),
             binary=("opencode", "acp"), install=_npm("opencode-ai"),
             auth_hint="`opencode auth login`"),
    AgentRow(name="mux", command=("mux", "acp"),
             install="install coder/mux (https://github.com/coder/mux) so `mux` is on PATH"),
    AgentRow(name="kilocode", command=("npx", "-y", "@kilocode/cli", "acp"),
             binary=("kilo", "acp"), install=_npm("@kilocode/cli")),
    AgentRow(name="fast-agent", command=("uvx", "fast-agent-mcp", "acp"),
             binary=("fast-agent", "acp"), install="uv tool install fast-agent-mcp",
             auth_hint="provider keys in fastagent.secrets.yaml or env"),
    AgentRow(name="openclaw", command=("openclaw", "acp"), install=_npm("openclaw")),
    AgentRow(name="cursor", command=("cursor-agent", "acp"),
             install="curl https://cursor.com/install -fsS | bash",
             auth_hint="CURSOR_API_KEY, or `cursor-agent login`"),
    AgentRow(name="copilot", command=("copilot", "--acp", "--stdio"),
             install=_npm("@github/copilot"), auth_hint="`copilot` /login or GH_TOKEN"),
    AgentRow(name="agy", command=("agy_acp_server.par",)),
    AgentRow(name="devin", command=("devin", "acp")),
    AgentRow(name="droid", command=("droid", "exec", "--output-format", "acp"),
             auth_hint="FACTORY_API_KEY"),
    AgentRow(name="fx", command=("fx", "acp")),
    AgentRow(name="grok", command=("grok", "agent", "stdio")),
    AgentRow(name="iflow", command=("iflow", "--experimental-acp"),
             install=_npm("@iflow-ai/iflow-cli")),
    AgentRow(name="junie", command=("junie", "--acp=true")),
    AgentRow(name="kimi", command=("kimi", "acp"), install="uv tool install kimi-cli"),
    AgentRow(name="kiro", command=("kiro-cli-chat", "acp")),
    AgentRow(name="mcode", command=("mcode", "acp")),
    AgentRow(name="pool", command=("pool", "acp")),
    AgentRow(name="qoder", command=("qodercli", "--acp")),
    AgentRow(name="qwen", command=("qwen", "--acp"), install=_npm("@qwen-code/qwen-code"),
             auth_hint="OPENAI_API_KEY (+ OPENAI_BASE_URL), or qwen oauth login"),
    AgentRow(name="trae", command=("traecli", "acp", "serve")),
    AgentRow(name="zeroclaw", command=("zeroclaw", "acp")),
)

#: Built-in agents: name -> (argv, install command).
BUILTIN_AGENTS: Mapping[str, tuple[tuple[str, ...], str | None]] = {
    row.name: (row.command, row.install) for row in AGENT_TABLE
}
_ROWS = {row.name: row for row in AGENT_TABLE}


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
            row.name: AgentSpec(
                name=row.name, command=row.command, install_command=row.install,
                binary=row.binary, auth_methods=row.auth_methods, auth_hint=row.auth_hint,
            )
            for row in AGENT_TABLE
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

    @staticmethod
    def program_path(program: str) -> str | None:
        """Where ``program`` is found: on ``PATH``, else in the running interpreter's scripts
        directory (a ``pip install`` into this environment), else ``None`` (blocking)."""
        found = shutil.which(program)
        if found is None and Path(program).name == program:
            scripts = sysconfig.get_path("scripts")
            found = shutil.which(program, path=scripts) if scripts else None
        return found

    def binary_command(self, spec: AgentSpec) -> tuple[str, ...] | None:
        """The argv of ``spec``'s installed binary when found (blocking): as written when it
        is on ``PATH``, by absolute path when only the interpreter's environment has it."""
        if spec.binary is None:
            return None
        program = spec.binary[0]
        found = self.program_path(program)
        if found is None:
            return None
        if shutil.which(program) is not None:
            return spec.binary
        return (found, *spec.binary[1:])

    def installed_binary(self, spec: AgentSpec) -> bool:
        """Whether the preferred installed binary of ``spec`` is found (blocking)."""
        return self.binary_command(spec) is not None

    async def prefer_installed(self, spec: AgentSpec) -> AgentSpec:
        """``spec`` launched through its installed binary when one is found (off the event
        loop), else ``spec`` unchanged (``npx``/``uvx``).  The one resolution both sessions
        and ``doctor`` use, so doctor checks the program a session runs."""
        if spec.binary is None:
            return spec
        binary = await trio.to_thread.run_sync(self.binary_command, spec)
        if binary is not None:
            return msgspec.structs.replace(spec, command=binary)
        return spec

    def is_installed(self, name_or_spec: str | AgentSpec) -> bool:
        """Whether the installed binary or the launcher (``argv[0]``; ``npx`` for
        npx-launched agents) is found.

        Blocking (a ``PATH`` lookup); async code should call :meth:`check_installed`.
        For npx-launched agents this only proves npx exists: the package may still be
        fetched on first start."""
        spec = name_or_spec if isinstance(name_or_spec, AgentSpec) else self.resolve(name_or_spec)
        return self.installed_binary(spec) or shutil.which(spec.launcher) is not None

    async def check_installed(self, name_or_spec: str | AgentSpec) -> bool:
        """:meth:`is_installed` off the event loop."""
        return await trio.to_thread.run_sync(self.is_installed, name_or_spec)
