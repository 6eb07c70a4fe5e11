"""The help formatter of every command's parser, so each flag's default is printed once, by argparse,
from the value the code uses. It lives on the lowest floor with a command line (datasets)."""

from __future__ import annotations

import argparse
import re


def shown_default(value) -> str:
    """A default as one would type it: a list's items separated by spaces."""
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" where X says something: not for None, False (a switch), an empty list,
    a suppressed default, or help that already shows %(default)s."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default is argparse.SUPPRESS
                or isinstance(default, (list, tuple)) and not default
                or "%(default)" in text
                or not (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))):
            return text
        return f"{text} (default: {shown_default(default).replace('%', '%%')})"


# A dataset or study name becomes a folder under --to / --storage: one path segment of letters, digits,
# "_", "-" and ".", starting with a letter or digit ("..", "a/b" and "" would write elsewhere).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def name_problem(text: str) -> str | None:
    """Why ``text`` cannot be a dataset or study name (it becomes a folder name), or None if it can."""
    if not isinstance(text, str) or not NAME_PATTERN.fullmatch(text) or ".." in text:
        return (f"{text!r} is not a usable name: use 1-128 letters, digits, '_', '-' or '.', starting with a "
                "letter or digit (it becomes a folder name)")
    return None


def name_type(text: str) -> str:
    """argparse type of --name and --study: a safe folder name, or a usage error saying what is allowed."""
    problem = name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text
