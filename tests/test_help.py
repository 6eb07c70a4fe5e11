"""Every command's --help states each flag's default once, as argparse prints it from the value the code
uses (datasets.cli.DefaultsHelpFormatter), never beside a hand-written one; and no flag goes unexplained."""

from __future__ import annotations

import argparse
import importlib
import re

import pytest
from cli import REPO

from datasets.cli import DefaultsHelpFormatter

FLOORS = ("prompts", "datasets", "trainables", "search_spaces", "orchestrator", "benchmarks")
DEFAULT = re.compile(r"\bdefault\b", re.IGNORECASE)


def commands() -> list[str]:
    """Modules that build a command line: each has a main(argv) that parses it."""
    found = []
    for top in FLOORS:
        for path in sorted((REPO / top).rglob("*.py")):
            if "ArgumentParser(" in path.read_text():
                found.append(".".join(path.relative_to(REPO).with_suffix("").parts))
    return found


class Built(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def built_parser(module: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser main() builds, caught as it starts parsing: nothing of the command runs."""
    def catch(self, *args, **kwargs):
        raise Built(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    with pytest.raises(Built) as caught:
        importlib.import_module(module).main([])
    return caught.value.parser


def every_parser(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and its subcommands' parsers, at any depth."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += every_parser(sub)
    return found


def shows_default(action: argparse.Action) -> bool:
    value = action.default
    return not (value is None or value is False or value is argparse.SUPPRESS
                or isinstance(value, (list, tuple)) and not value
                or not (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)))


def as_typed(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def help_problems(parser: argparse.ArgumentParser) -> list[str]:
    problems = []
    if parser.formatter_class is not DefaultsHelpFormatter:
        problems.append(f"{parser.prog}: formatter_class is {parser.formatter_class.__name__}, "
                        "not datasets.cli.DefaultsHelpFormatter")
    printed = " ".join(parser.format_help().split())  # what --help prints, unwrapped
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            problems += [f"{parser.prog} {choice.dest}: no help" for choice in action._choices_actions
                         if not (choice.help or "").strip()]
            continue
        if action.help is argparse.SUPPRESS:
            continue
        name = f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"
        if not (action.help or "").strip():
            problems.append(f"{name}: no help")
            continue
        text = " ".join(formatter._expand_help(action).split())
        if text not in printed:
            problems.append(f"{name}: --help does not print {text!r}")
        said = len(DEFAULT.findall(text))
        if shows_default(action):
            shown = f"(default: {as_typed(action.default)})"
            if said != 1 or not text.endswith(shown):
                problems.append(f"{name}: should state its default once, as {shown!r} at the end: {text!r}")
        elif said:
            problems.append(f"{name}: its default is {action.default!r}, yet the help says 'default' "
                            f"(write what happens without it as '(none: ...)'): {text!r}")
    return problems


def test_the_commands_are_found():
    assert {"orchestrator.run", "datasets.validate", "datasets.prompts", "datasets.ingest.__main__",
            "datasets.cache_usage", "benchmarks.__main__", "benchmarks.models"} <= set(commands())


@pytest.mark.parametrize("module", commands())
def test_help_states_each_default_once(module, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per flag: a wrapped default still reads whole
    problems = [p for parser in every_parser(built_parser(module, monkeypatch)) for p in help_problems(parser)]
    assert not problems, "\n".join(problems)


def test_a_hand_written_default_beside_the_formatters_is_caught():
    parser = argparse.ArgumentParser(prog="demo", formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (default: 3)")
    parser.add_argument("--models", nargs="+", default=["a", "b"], help="models to run")
    parser.add_argument("--size", help="input size (default: the model's)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    problems = help_problems(parser)
    assert len(problems) == 2, problems
    assert "--steps" in problems[0] and "--size" in problems[1]
    assert "--models MODELS [MODELS ...] models to run (default: a b)" in " ".join(parser.format_help().split())
