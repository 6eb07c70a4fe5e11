"""Progress lines for long work: ingest, shard downloads, decoded and feature cache builds.

A line every few seconds on stderr (done of total, rate, ETA), and one at the end, only for work
that lasts that long: the first trial on a new node may download gigabytes and decode thousands
of images before its first epoch, and it should not look hung. In a Ray trial, stderr reaches the
driver's console under the trial's prefix.
"""

from __future__ import annotations

import sys
import time

EVERY_S = 10.0


class Meter:
    """Counts work done in ``unit`` (``scale`` raw units to one shown: 1e6 bytes per MB)."""

    def __init__(self, label: str, total: float | None = None, unit: str = "rows", scale: float = 1.0,
                 every_s: float | None = None, stream=None):
        self.label, self.total, self.unit, self.scale = label, total, unit, scale
        self.every_s = EVERY_S if every_s is None else every_s
        self.stream = stream or sys.stderr
        self.start = self.last = time.monotonic()
        self.done = 0.0
        self.counts: dict[str, int] = {}  # other things to report, e.g. problems
        self.printed = False

    def update(self, n: float = 1, **counts: int) -> None:
        self.done += n
        for name, k in counts.items():
            self.counts[name] = self.counts.get(name, 0) + k
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self.print()

    def finish(self) -> None:
        """The last line, for work that printed along the way or took longer than a line's interval."""
        if self.printed or time.monotonic() - self.start >= self.every_s:
            self.print(final=True)

    def print(self, final: bool = False) -> None:
        self.printed = True
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        shown = f"{self.done / self.scale:.{0 if self.scale == 1 else 1}f}"
        parts = [f"{shown} {self.unit}"]
        if self.total:
            parts[0] = f"{shown}/{self.total / self.scale:.{0 if self.scale == 1 else 1}f} {self.unit} " \
                       f"({100 * self.done / self.total:.0f}%)"
        parts.append(f"{rate / self.scale:.1f} {self.unit}/s")
        parts += [f"{k} {name}" for name, k in self.counts.items()]
        if final:
            parts.append(f"done in {elapsed:.0f} s")
        elif self.total and rate > 0:
            parts.append(f"ETA {max(self.total - self.done, 0) / rate:.0f} s")
        else:
            parts.append(f"{elapsed:.0f} s")
        print(f"{self.label}: {', '.join(parts)}", file=self.stream, flush=True)
