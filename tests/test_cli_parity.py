"""CLI parity with acpx (issue 21): global options anywhere, ``-f/--file``, ``--format``,
``--no-fs``/``--no-terminal``, user/project config files and ``config show|init``."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from _cli_helpers import json_lines, run_cli

from acpx_trio._store.config_files import STARTER_CONFIG


def _xdg(tmp_path: Path) -> dict[str, str]:
    return {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}


@pytest.mark.parametrize("argv", [
    ["sessions", "close", "K", "--state-dir", "{sd}"],
    ["sessions", "close", "--state-dir", "{sd}", "K"],
    ["sessions", "--state-dir", "{sd}", "show", "K"],
    ["--state-dir", "{sd}", "sessions", "close", "K"],
])
def test_global_options_before_or_after_the_command(tmp_path: Path, argv: list[str]) -> None:
    sd = str(tmp_path / "state")
    done = run_cli(*[a.replace("{sd}", sd) for a in argv])
    # exit 4 "no such session", in the given state dir (never 2: refused arguments)
    assert done.returncode == 4, done.stderr
    assert sd in done.stderr


def test_options_between_words_and_words_after_double_dash(tmp_path: Path) -> None:
    mixed = run_cli("exec", "hello", "--json", "world", state_dir=tmp_path)
    assert json_lines(mixed.stdout)[0]["text"] == "hello world", mixed.stderr
    literal = run_cli("exec", "--", "-v is a word", state_dir=tmp_path)
    assert (literal.returncode, literal.stdout) == (0, "-v is a word\n"), literal.stderr


def test_json_and_format_anywhere_for_every_command(tmp_path: Path) -> None:
    sd = str(tmp_path / "state")
    for argv in (["leases", "--state-dir", sd, "--json"], ["leases", "--format", "json",
                 "--state-dir", sd], ["sessions", "list", "--json", "--state-dir", sd],
                 ["agents", "--format", "json"], ["config", "show", "--json"],
                 ["doctor", "--agent", "mock", "--json", "--state-dir", sd]):
        done = run_cli(*argv, env=_xdg(tmp_path))
        assert done.returncode == 0, (argv, done.stderr)
        assert all(isinstance(x, dict) for x in json_lines(done.stdout)), argv


def test_prompt_from_file_and_stdin(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("from a file\n")
    done = run_cli("exec", "-f", str(prompt), state_dir=tmp_path)
    assert (done.returncode, done.stdout) == (0, "from a file\n"), done.stderr
    piped = run_cli("exec", "--file", "-", input="from stdin\n", state_dir=tmp_path)
    assert (piped.returncode, piped.stdout) == (0, "from stdin\n"), piped.stderr
    both = run_cli("exec", "-f", str(prompt), "and text", state_dir=tmp_path)
    assert both.returncode == 2 and "not both" in both.stderr
    missing = run_cli("exec", "-f", str(tmp_path / "nope.txt"), state_dir=tmp_path)
    assert missing.returncode == 2 and "nope.txt" in missing.stderr


def test_format_quiet_prints_the_reply_only(tmp_path: Path) -> None:
    loud = run_cli("exec", "/think pondering", state_dir=tmp_path)
    assert "[thought] pondering" in loud.stderr  # the baseline shows the thought
    quiet = run_cli("exec", "--format", "quiet", "/think pondering", state_dir=tmp_path)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "pondering\n", "")
    tool = run_cli("--format", "quiet", "exec", "/tool", state_dir=tmp_path)
    assert tool.returncode == 0 and tool.stderr == "", tool.stderr


def test_format_json_is_json_and_contradictions_are_refused(tmp_path: Path) -> None:
    a = run_cli("exec", "--format", "json", "hello", state_dir=tmp_path)
    b = run_cli("exec", "--json", "hello", state_dir=tmp_path)
    assert json_lines(a.stdout) == json_lines(b.stdout) and json_lines(a.stdout)[-1] == {
        "type": "done", "stop_reason": "end_turn"}
    bad = run_cli("exec", "--json", "--format", "quiet", "hello", state_dir=tmp_path)
    assert bad.returncode == 2 and "--json" in bad.stderr


def test_no_fs_and_no_terminal_are_not_advertised_and_refused(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("content\n")
    caps = run_cli("exec", "--cwd", str(tmp_path), "/client-caps", state_dir=tmp_path)
    # issue 21: elicitation (both modes) and boolean config options are advertised too
    also = {"elicitation": {"form": {}, "url": {}},
            "session": {"configOptions": {"boolean": {}}}}
    assert json.loads(caps.stdout) == {"fs": {"readTextFile": True, "writeTextFile": True},
                                       "terminal": True, **also}
    off = run_cli("exec", "--no-fs", "--no-terminal", "--cwd", str(tmp_path), "/client-caps",
                  state_dir=tmp_path)
    assert json.loads(off.stdout) == {"fs": {"readTextFile": False, "writeTextFile": False},
                                      "terminal": False, **also}
    read = run_cli("exec", "--cwd", str(tmp_path), f"/read {tmp_path / 'f.txt'}",
                   state_dir=tmp_path)
    assert read.stdout == "content\n"
    refused = run_cli("exec", "--no-fs", "--cwd", str(tmp_path), f"/read {tmp_path / 'f.txt'}",
                      state_dir=tmp_path)
    assert refused.stdout.startswith("error: -32601") and "content" not in refused.stdout
    term = run_cli("exec", "--approve-all", "--no-terminal", "/terminal echo hi",
                   state_dir=tmp_path)
    assert term.stdout.startswith("error: -32601") and "output=hi" not in term.stdout


def test_config_files_merge_and_show_where_each_value_came_from(tmp_path: Path) -> None:
    user = tmp_path / "xdg" / "acpx-trio" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text('timeoutSeconds = 7\npermissionMode = "deny-all"\n'
                    '[auth]\nuser-key = "user-secret-1"\n')
    project = tmp_path / "proj"
    project.mkdir()
    (project / ".acpx-trio.toml").write_text('permissionMode = "approve-all"\n'
                                              '[auth]\nproj-key = "proj-secret-2"\n')
    explicit = tmp_path / "explicit.json"
    explicit.write_text(json.dumps({"timeoutSeconds": 9, "terminal": False}))
    done = run_cli("config", "show", "--json", "--cwd", str(project), "--config",
                   str(explicit), env=_xdg(tmp_path))
    assert done.returncode == 0, done.stderr
    rows = {r["key"]: r for r in json_lines(done.stdout)}
    assert rows["permissionMode"] == {"key": "permissionMode", "value": "approve-all",
                                      "source": str(project / ".acpx-trio.toml")}
    assert rows["timeoutSeconds"]["value"] == 9.0
    assert rows["timeoutSeconds"]["source"] == str(explicit)
    assert rows["terminal"]["value"] is False
    assert rows["auth.user-key"]["source"] == str(user)
    assert rows["auth.proj-key"]["source"] == str(project / ".acpx-trio.toml")
    assert rows["killGraceSeconds"]["source"] == "default"
    text = run_cli("config", "show", "--cwd", str(project), env=_xdg(tmp_path))
    for shown in (done.stdout, text.stdout, text.stderr):
        assert "user-secret-1" not in shown and "proj-secret-2" not in shown
    # the merged config is what a turn runs with: deny-all from the user file (no project)
    turn = run_cli("exec", "--cwd", str(tmp_path), "/permission execute", state_dir=tmp_path,
                   env=_xdg(tmp_path))
    assert turn.stdout == "permission outcome=selected:reject\n", turn.stderr


def test_a_bad_value_in_a_config_file_names_the_field(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / ".acpx-trio.toml").write_text('permissionMode = "sometimes"\n')
    done = run_cli("config", "show", "--cwd", str(project), env=_xdg(tmp_path))
    assert done.returncode == 2 and "permissionMode" in done.stderr
    # ...and the file it is in, in one line
    assert done.stderr.splitlines() == [
        f"acpx-trio: in {project / '.acpx-trio.toml'}: invalid config "
        "permissionMode='sometimes': must be one of: approve-all, approve-reads, deny-all"]
    broken = project / ".acpx-trio.toml"
    broken.write_text("this is = = not toml")
    done = run_cli("exec", "--cwd", str(project), "hi", state_dir=tmp_path, env=_xdg(tmp_path))
    assert done.returncode == 2 and str(broken) in done.stderr


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a refused command (exit 2; no traceback)."""
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("acpx-trio: ") and "Traceback" not in done.stderr
    return line


@pytest.mark.parametrize(("server", "field"), [
    ({"type": "ws", "url": "x"}, "mcpServers.s.type='ws'"),
    ({"type": "http", "url": 5}, "mcpServers.s.url=5"),
    # header and env values may be credentials: the error shows the shape, never a value
    ({"type": "http", "url": "https://h", "headers": [1]},
     "mcpServers.s.headers=['<redacted>']"),
    ({"command": "c", "env": ["K=v"]}, "mcpServers.s.env=['<redacted>']"),
    ({"command": "c", "args": "--root"}, "mcpServers.s.args='--root'"),
])
def test_a_malformed_mcp_server_in_a_config_file_exits_2_naming_field_and_file(
    tmp_path: Path, server: dict[str, object], field: str,
) -> None:
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"mcpServers": {"s": server}}))
    for argv in (["exec", "--config", str(config), "hi"],
                 ["config", "show", "--config", str(config)]):
        done = run_cli(*argv, state_dir=tmp_path, env=_xdg(tmp_path))
        line = _one_error_line(done)
        assert line.startswith(f"acpx-trio: in {config}: invalid config {field}: "), line


def test_a_bad_value_in_the_user_file_names_the_user_file(tmp_path: Path) -> None:
    user = tmp_path / "xdg" / "acpx-trio" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text('timeoutSeconds = "x"\n')
    line = _one_error_line(run_cli("exec", "hi", state_dir=tmp_path, env=_xdg(tmp_path)))
    assert line.startswith(f"acpx-trio: in {user}: invalid config timeoutSeconds='x': "), line


def test_a_config_cwd_that_is_no_directory_exits_2_like_cwd_option(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    config = tmp_path / "cwd.json"
    config.write_text(json.dumps({"cwd": str(missing)}))
    option = _one_error_line(run_cli("exec", "--cwd", str(missing), "hi", state_dir=tmp_path,
                                     env=_xdg(tmp_path)))
    assert str(missing) in option
    line = _one_error_line(run_cli("exec", "--config", str(config), "hi", state_dir=tmp_path,
                                   env=_xdg(tmp_path)))
    assert line.startswith(f"acpx-trio: in {config}: invalid config cwd='{missing}': "), line
    assert "existing directory" in line
    # --cwd decides the agent's directory: the config's cwd is not used, so not checked
    done = run_cli("exec", "--config", str(config), "--cwd", str(tmp_path), "hi",
                   state_dir=tmp_path, env=_xdg(tmp_path))
    assert (done.returncode, done.stdout) == (0, "hi\n"), done.stderr
    # the commands that start no turn there still run (reap above all)
    for args in (("reap", "--dry-run"), ("leases",), ("sessions",)):
        other = run_cli("--config", str(config), *args, state_dir=tmp_path,
                        env=_xdg(tmp_path))
        assert other.returncode == 0, (args, other.stderr)


def test_a_bad_config_value_stops_only_the_commands_that_use_the_config(
    tmp_path: Path,
) -> None:
    env = _xdg(tmp_path)
    user = tmp_path / "xdg" / "acpx-trio" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text("timeoutSeconds = -1\n")
    state = tmp_path / "state"
    line = _one_error_line(run_cli("exec", "hi", state_dir=state, env=env))
    assert line.startswith(f"acpx-trio: in {user}: invalid config timeoutSeconds=-1"), line
    for args in (("reap", "--dry-run"), ("leases",), ("status",), ("cancel", "--session", "k")):
        done = run_cli(*args, state_dir=state, env=env)
        assert done.returncode == 0, (args, done.stderr)
    fixed = run_cli("config", "init", "--force", env=env)  # how a user replaces the file
    assert fixed.returncode == 0, fixed.stderr
    assert user.read_text() == STARTER_CONFIG
    assert run_cli("exec", "hi", state_dir=state, env=env).stdout == "hi\n"


def test_config_init_writes_a_private_starter_once(tmp_path: Path) -> None:
    env = _xdg(tmp_path)
    done = run_cli("config", "init", env=env)
    target = tmp_path / "xdg" / "acpx-trio" / "config.toml"
    assert done.returncode == 0 and str(target) in done.stdout
    assert target.read_text() == STARTER_CONFIG
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    target.write_text("# mine\n")
    again = run_cli("config", "init", env=env)
    assert again.returncode == 2 and "--force" in again.stderr
    assert target.read_text() == "# mine\n"
    forced = run_cli("config", "init", "--force", env=env)
    assert forced.returncode == 0 and target.read_text() == STARTER_CONFIG
    # the starter is valid config: every key commented out, so it changes nothing
    shown = run_cli("config", "show", "--json", env=env)
    assert shown.returncode == 0
    assert all(r["source"] == "default" for r in json_lines(shown.stdout))
    project = tmp_path / "proj"
    project.mkdir()
    decoy = tmp_path / "decoy"
    decoy.write_text("keep\n")
    os.symlink(decoy, project / ".acpx-trio.toml")
    linked = run_cli("config", "init", "--project", "--force", "--cwd", str(project), env=env)
    assert linked.returncode == 2 and decoy.read_text() == "keep\n"
    # a FIFO in the file's place is refused at once: never waited on, never written into
    piped = tmp_path / "piped"
    piped.mkdir()
    os.mkfifo(piped / ".acpx-trio.toml", 0o600)
    argv = ("config", "init", "--project", "--force", "--cwd", str(piped))
    alone = run_cli(*argv, env=env, timeout=30)  # no reader: an open for writing would wait
    assert alone.returncode == 2 and "cannot be written" in alone.stderr, alone.stderr
    reader = os.open(piped / ".acpx-trio.toml", os.O_RDONLY | os.O_NONBLOCK)
    try:
        read = run_cli(*argv, env=env, timeout=30)  # read: not a file to write a starter to
        assert read.returncode == 2 and "not a regular file" in read.stderr, read.stderr
        assert os.read(reader, 100) == b""
    finally:
        os.close(reader)


def test_the_starter_file_uncommented_is_valid_config() -> None:
    import re
    import tomllib

    from acpx_trio._store.config import decode_plugin_config

    lines = re.findall(r'^# ([\w"-]+ = .*|\[[\w.-]+\])$', STARTER_CONFIG, re.M)
    doc = tomllib.loads("\n".join(lines))
    assert {"permissionMode", "fs", "terminal", "auth", "agents", "mcpServers"} <= set(doc)
    decode_plugin_config(doc)  # raises ConfigError for a bad key or value


def test_every_commented_starter_value_is_the_default(tmp_path: Path) -> None:
    """Each ``# key = value`` of the starter is that key's default (what ``resolve_config``
    of an empty config gives), unless its comment says "for example" and the key is unset by
    default; each commented table (``[auth]``, ``[agents.x]``...) is an example of a key
    whose default is empty."""
    import re
    import tomllib

    import msgspec

    from acpx_trio import PluginConfig, resolve_config

    defaults = resolve_config({}, tmp_path)
    attr = {f.encode_name: f.name for f in msgspec.structs.fields(PluginConfig)}
    comment: list[str] = []  # the comment lines since the last setting
    in_table = False
    checked: list[str] = []
    for line in STARTER_CONFIG.splitlines():
        setting = re.fullmatch(r'# ([\w"-]+ = .*|\[[\w.-]+\])', line)
        if setting is None:
            comment = [*comment, line] if line.startswith("# ") else []
            continue
        example = "for example" in " ".join(comment).lower()
        comment = []
        if setting[1].startswith("["):  # a table: an example of an empty-by-default key
            in_table = True
            section = setting[1].strip("[]").split(".")[0]
            assert example, f"{setting[1]} is not marked as an example"
            assert getattr(defaults, attr[section]) in ({}, ()), section
            continue
        if in_table:
            continue  # a key inside an example table
        ((key, value),) = tomllib.loads(setting[1]).items()
        default = getattr(defaults, attr[key])
        checked.append(key)
        if example:
            assert default is None, f"{key}: marked as an example but defaults to {default!r}"
        else:
            assert (value, type(value) is bool) == (default, type(default) is bool), (
                f"starter says {key} = {value!r}; the default is {default!r}")
    assert {"permissionMode", "timeoutSeconds", "fs", "queueOwnerTtlSeconds"} <= set(checked)


@pytest.mark.parametrize("argv", [
    ["exec", "ab\udcffcd"],
    ["sessions", "show", "k\udcff"],
    ["sessions", "history", "k\udcff"],
    ["status", "--session", "k\udcff"],
    ["set-mode", "p\udcff", "--session", "u"],
    ["exec", "--cwd", "/tmp/d\udcff", "hi"],
    ["--state-dir", "/tmp/s\udcff", "exec", "hi"],
])
def test_an_argument_that_is_no_utf8_is_refused_in_one_line(
        tmp_path: Path, argv: list[str]) -> None:
    """A byte the shell passed through (``$'\\xff'``) in the text, a key, a mode, a path:
    a raw ``UnicodeEncodeError`` traceback, exit 1, in 15 commands (an outside review).
    Refused before anything starts now, in one line naming the argument, exit 2."""
    done = run_cli(*argv, state_dir=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "not UTF-8" in done.stderr and "\\xff" in done.stderr


def test_a_credential_variable_whose_name_is_no_utf8_breaks_no_warm_prompt(
        tmp_path: Path) -> None:
    """Its name went into the owner's wire frame unchecked: every warm prompt from that shell
    crashed with a traceback."""
    from _warm_helpers import owner_info, wait_gone

    env = {"X_TOKEN\udcff": "1"}
    try:
        done = run_cli("prompt", "--session", "u", "hi", state_dir=tmp_path, env=env)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        again = run_cli("prompt", "--session", "u", "again", state_dir=tmp_path, env=env)
        assert again.returncode == 0, again.stderr
    finally:
        info = owner_info(tmp_path)
        if info is not None:
            run_cli("sessions", "close", "u", state_dir=tmp_path)
            wait_gone(info["pid"])


def test_a_local_file_whose_name_is_no_utf8_is_still_read(tmp_path: Path) -> None:
    """``-f FILE`` (and ``--config FILE``) name a file to read: only its content goes on,
    so its name may be any bytes (the UTF-8 check first refused it too: an outside
    review)."""
    name = tmp_path / "n\udcffm.txt"
    name.write_text("/echo hello from a file")
    done = run_cli("exec", "-f", str(name), state_dir=tmp_path / "state")
    assert done.returncode == 0 and "hello from a file" in done.stdout, done.stderr
