"""argparse types of the commands' numbers: each refuses a value that cannot work when the command line is
parsed, saying what it takes (argparse names the flag), instead of a traceback, a hang or a useless run
later (an untrained model recorded DONE for --max-epochs 0; a trial Ray can never schedule)."""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind: type, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def positive_int(text: str) -> int:
    """A whole number, 1 or more: epochs, samples, GPUs of a plan, micro-batches."""
    what = "a whole number of 1 or more"
    value = _number(text, int, what)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def non_negative_int(text: str) -> int:
    """A whole number, 0 or more: retries, logical GPUs to declare."""
    what = "a whole number of 0 or more"
    value = _number(text, int, what)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def positive_float(text: str) -> float:
    """A number above 0: CPUs per trial, a slowdown factor."""
    what = "a number above 0"
    value = _number(text, float, what)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def non_negative_float(text: str) -> float:
    """A number, 0 or more: seconds between checkpoints, a price."""
    what = "a number of 0 or more"
    value = _number(text, float, what)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def above_one(text: str) -> float:
    """A number above 1: ASHA's reduction factor (1 would never cut a trial, below 1 has no rungs)."""
    what = "a number above 1"
    value = _number(text, float, what)
    if value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def gpu_share(text: str) -> float:
    """A trial's GPUs as Ray takes them: a fraction in (0, 1], or a whole number of GPUs (Ray refuses 1.5)."""
    what = "a GPU share: a fraction in (0, 1] or a whole number of GPUs"
    value = _number(text, float, what)
    if value <= 0 or value > 1 and not value.is_integer():
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value
