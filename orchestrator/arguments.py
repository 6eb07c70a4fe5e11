"""argparse types of the commands' numbers: each refuses a value that cannot work when the command line is
parsed, saying what it takes (argparse names the flag), instead of a traceback, a hang or a useless run
later (an untrained model recorded DONE for --max-epochs 0; a trial Ray can never schedule)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def number_type(kind: type, what: str, ok) -> Callable[[str], int | float]:
    """An argparse type: ``text`` read as ``kind`` (finite), kept where ``ok(value)``, else refused as not
    ``what``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or isinstance(value, float) and not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


# A whole number, 1 or more: epochs, samples, GPUs of a plan, micro-batches.
positive_int = number_type(int, "a whole number of 1 or more", lambda v: v >= 1)
# A whole number, 0 or more: retries, logical GPUs to declare.
non_negative_int = number_type(int, "a whole number of 0 or more", lambda v: v >= 0)
# A number above 0: CPUs per trial, a slowdown factor.
positive_float = number_type(float, "a number above 0", lambda v: v > 0)
# A number, 0 or more: seconds between checkpoints, a price.
non_negative_float = number_type(float, "a number of 0 or more", lambda v: v >= 0)
# A number above 1: ASHA's reduction factor (1 would never cut a trial, below 1 has no rungs).
above_one = number_type(float, "a number above 1", lambda v: v > 1)
# A trial's GPUs as Ray takes them: a fraction in (0, 1], or a whole number of GPUs (Ray refuses 1.5).
gpu_share = number_type(float, "a GPU share: a fraction in (0, 1] or a whole number of GPUs",
                        lambda v: 0 < v <= 1 or v > 1 and v.is_integer())
