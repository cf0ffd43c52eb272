"""Every ``--help`` of the command lines reads as plain text: no RST markup from a docstring (````clawweb````)."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Iterator

import pytest

from clawweb import cli, simulator

# RST's inline literals and roles, its bold, and its directives: what a docstring may carry and a terminal shows raw.
RST = re.compile(r"``|:[a-z]+:`|\*\*|^\.\. ", re.MULTILINE)


def command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The parser's own path, then every subcommand's, depth first."""
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from command_paths(sub, (*path, name))


def help_of(main: Callable[[list[str]], object], path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> str:
    umask = os.umask(0o022)  # clawweb's main sets 0077 for the files it creates: not for the rest of this process
    os.umask(umask)
    try:
        with pytest.raises(SystemExit) as exited:
            main([*path, "--help"])
    finally:
        os.umask(umask)
    assert exited.value.code == 0
    return capsys.readouterr().out


CLAWWEB = list(command_paths(cli._parser()))


def test_every_clawweb_subcommand_is_walked() -> None:
    assert {("users", "add"), ("keys", "create"), ("conversations", "adopt"), ("doctor",)} <= set(CLAWWEB)
    assert len(CLAWWEB) == len(set(CLAWWEB)) >= 17


@pytest.mark.parametrize("path", CLAWWEB, ids=lambda path: " ".join(path) or "clawweb")
def test_clawweb_help_is_plain_text(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(cli.main, path, capsys)
    assert text.startswith("usage: clawweb")
    assert RST.search(text) is None, text


def test_the_top_help_says_how_to_run_it_from_a_checkout(capsys: pytest.CaptureFixture[str]) -> None:
    assert ".venv/bin/python -m clawweb" in " ".join(help_of(cli.main, (), capsys).split())


def test_simulator_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(simulator.main, (), capsys)
    assert "--tps" in text
    assert RST.search(text) is None, text


def test_the_pattern_catches_what_the_help_used_to_print() -> None:
    assert RST.search("``clawweb`` (``python -m clawweb``): the operator's command line.")
    assert RST.search("see :func:`main`") and RST.search("**bold**") and RST.search("intro\n.. note::")
    assert RST.search("the log's `stream end=done` line, *all* of it") is None
