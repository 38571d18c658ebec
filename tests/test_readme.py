"""The README's promises: two set-up commands first, CI runs exactly those, the CLI surface works."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_setup_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block and text.index(block.group(0)) < 200, "README must open with the set-up block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_one_install_and_one_test_command():
    cmds = readme_setup_commands()
    assert len(cmds) == 2
    assert "install" in cmds[0] and "pytest" in cmds[1]


def test_ci_runs_exactly_the_readme_commands():
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    steps = [line for line in ci if line and not line.startswith(("#", "set ", "cd ", "#!"))]
    assert steps == readme_setup_commands()


def test_install_script_installs_every_extra_the_tests_need():
    script = (REPO / "install.sh").read_text()
    assert '-e ".[all]"' in script and "chromium" in script and "debian_music" in script


def test_cli_help_lists_commands_and_version_works():
    r = subprocess.run([sys.executable, "-m", "audiogen", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("info", "codec"):
        assert re.search(rf"^\s+{cmd}\s", r.stdout, re.M), r.stdout
    v = subprocess.run([sys.executable, "-m", "audiogen", "--version"], capture_output=True, text=True)
    assert v.returncode == 0 and v.stdout.startswith("audiogen ")


def test_every_command_has_help_that_explains_it():
    r = subprocess.run([sys.executable, "-m", "audiogen", "--help"], capture_output=True, text=True)
    commands = re.findall(r"^    (\w[\w-]*)\s", r.stdout, re.M)
    assert commands
    for cmd in commands:
        h = subprocess.run([sys.executable, "-m", "audiogen", cmd, "--help"], capture_output=True, text=True)
        assert h.returncode == 0 and len(h.stdout) > 200, cmd


def test_every_option_of_every_command_is_explained_with_its_default():
    import argparse

    from audiogen.cli import build_parser

    def options(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from options(sub, [*path, name])
            elif not isinstance(action, argparse._HelpAction):
                yield " ".join(path), action

    seen = 0
    for cmd, action in options(build_parser(), ["audiogen"]):
        name = action.option_strings or action.dest
        if isinstance(action, argparse._VersionAction):
            continue
        seen += 1
        assert action.help, (cmd, name)
        if action.default not in (None, False, argparse.SUPPRESS, [], ()):
            assert "default" in action.help, (cmd, name, action.default)
    assert seen > 80
