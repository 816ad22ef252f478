"""The README's CLI reference and the CLI itself name the same commands and options.

Each row of the table starts with the commands it documents, in backticks: `keybrake audit
[--label L] ...`, and after a " / " either another whole command or one relative to the same
top-level group (`list [--json]`). "(each `--json`)" gives an option to every command of the row.
"""

import re
from pathlib import Path

import click
import pytest

from keybrake_addon.cli.main import cli

README = Path(__file__).resolve().parents[2] / "README.md"
FLAG = re.compile(r"--[a-z][a-z0-9-]*")
SEGMENT = re.compile(r"`([^`]+)`")


def _commands(group: click.Group, path: tuple[str, ...] = ()):
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        yield path + (name,), command
        if isinstance(command, click.Group):
            yield from _commands(command, path + (name,))


COMMANDS = dict(_commands(cli))
GLOBAL_FLAGS = {opt for param in cli.params for opt in param.opts + param.secondary_opts}


def flags_of(command: click.Command) -> set[str]:
    return {opt for param in command.params if isinstance(param, click.Option) and not param.hidden
            for opt in param.opts + param.secondary_opts if opt.startswith("--")}


def runs_by_itself(command: click.Command) -> bool:
    """A leaf, or a group with a callback of its own (`audit`, `alerts deliveries`)."""
    if not isinstance(command, click.Group):
        return True
    return command.invoke_without_command or bool(flags_of(command))


def _path_in(words: list[str], start: tuple[str, ...]) -> tuple[str, ...]:
    path = start
    for word in words:
        if path + (word,) in COMMANDS:
            path += (word,)
        else:
            break
    return path


def documented() -> dict[tuple[str, ...], set[str]]:
    """Command path -> the options its README row names."""
    text = README.read_text()
    section = text.split("\n## CLI reference\n", 1)[1].split("\n## ", 1)[0]
    found: dict[tuple[str, ...], set[str]] = {}
    for line in section.splitlines():
        if not line.startswith("| `keybrake"):
            continue
        first_cell = line.split(" | ", 1)[0]
        every: set[str] = set()
        if each := re.search(r"\(each (`[^)]*`)\)", first_cell):
            every = set(FLAG.findall(each[1]))
            first_cell = first_cell.replace(each[0], "")
        group: tuple[str, ...] = ()
        paths = []
        for segment in SEGMENT.findall(first_cell):
            words = segment.replace("\\|", "|").split()
            if words[0] == "keybrake":
                path = _path_in(words[1:], ())
                group = path[:1]
            elif group:
                path = _path_in(words, group)
                if path == group:
                    continue  # not a subcommand of the row's group
            else:
                continue
            if path:
                found.setdefault(path, set()).update(set(FLAG.findall(segment)) - GLOBAL_FLAGS)
                paths.append(path)
        for path in paths:
            found[path] |= every
    return found


DOCUMENTED = documented()


def test_the_table_was_read():
    assert len(DOCUMENTED) > 30, sorted(DOCUMENTED)


@pytest.mark.parametrize("path", sorted(p for p, c in COMMANDS.items() if runs_by_itself(c)), ids=" ".join)
def test_every_command_and_option_is_in_the_readme(path):
    assert path in DOCUMENTED, f"`keybrake {' '.join(path)}` has no row in the README's CLI reference"
    missing = flags_of(COMMANDS[path]) - DOCUMENTED[path]
    assert not missing, f"the README's row for `keybrake {' '.join(path)}` lacks {sorted(missing)}"


@pytest.mark.parametrize("path", sorted(DOCUMENTED), ids=" ".join)
def test_every_option_in_the_readme_exists(path):
    unknown = DOCUMENTED[path] - flags_of(COMMANDS[path])
    assert not unknown, f"the README names {sorted(unknown)} for `keybrake {' '.join(path)}`, which has no such option"
