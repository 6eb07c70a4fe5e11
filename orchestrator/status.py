"""``python -m orchestrator.run status``: where a study stands, block by block.

States come from one listing of ``<storage>/<study>/experiments/``: ``DONE`` is done, ``FAILED.json``
failed, a resume checkpoint or ``progress.json`` running, nothing pending. Only the few files that
hold numbers are read (result.json of done experiments, progress.json of running ones), in parallel.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from search_spaces.experiment import ExperimentSpec
from search_spaces.grid import block_of as grid_block
from trainables.results import ResultStore, finished_in

STATES = ("done", "running", "failed", "pending")
# A running experiment whose progress note is older than this has probably lost its driver.
STALE_AFTER_S = 30 * 60


def state_of(names: dict[str, float]) -> str:
    if finished_in(names):
        return "done"
    if "FAILED.json" in names:
        return "failed"
    if ResultStore.CHECKPOINT in names or ResultStore.PROGRESS in names:
        return "running"
    return "pending"


def full_run_seconds(result: dict) -> float | None:
    """How long the experiment would take from epoch 0: a resumed run's time scaled by the epochs it ran."""
    run = result.get("run") or {}
    if run.get("started_at") is None or run.get("finished_at") is None:
        return None
    seconds, epochs, resumed = run["finished_at"] - run["started_at"], result.get("epochs") or 0, run.get(
        "resumed_from_epoch") or 0
    if resumed:
        return seconds * epochs / (epochs - resumed) if epochs > resumed else None
    return seconds


@dataclass
class Block:
    name: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))
    best_val_dice: float | None = None
    durations: list[float] = field(default_factory=list)  # full-run seconds of finished experiments
    epochs: list[int] = field(default_factory=list)  # epochs finished experiments ran (early stopping)
    left_runs: float = 0.0  # experiments still to run, a running one counted by its epochs left
    regimes: set[str] = field(default_factory=set)  # as_run, end_to_end (ExperimentSpec.regime)

    def add_dice(self, dice: float | None) -> None:
        if dice is not None and (self.best_val_dice is None or dice > self.best_val_dice):
            self.best_val_dice = dice

    @property
    def work_left_s(self) -> float | None:
        if not self.left_runs:
            return 0.0
        return sum(self.durations) / len(self.durations) * self.left_runs if self.durations else None


@dataclass
class Status:
    blocks: list[Block]
    running_now: int  # running experiments that reported within STALE_AFTER_S
    stale: list[str]  # running experiments silent for longer
    failed: dict[str, str]  # id -> error
    others: int  # experiments in storage that are not in this selection

    @property
    def eta_s(self) -> float | None:
        left = [b.work_left_s for b in self.blocks]
        if None in left or not self.running_now:
            return None
        return sum(left) / self.running_now


def collect(specs: list[ExperimentSpec], results: ResultStore, now: float | None = None,
            block_of: Callable[[ExperimentSpec], str] | None = None) -> Status:
    now = time.time() if now is None else now
    block_of = block_of or grid_block  # the grid's own block names
    files = results.listing()
    states = {s.id: state_of(files.get(s.id, {})) for s in specs}
    want = [(s.id, "result") for s in specs if states[s.id] == "done"]
    want += [(s.id, "progress") for s in specs if states[s.id] == "running"]
    want += [(s.id, "failure") for s in specs if states[s.id] == "failed"]
    with ThreadPoolExecutor(max_workers=16) as pool:  # one GET each, side by side
        read = dict(zip(want, pool.map(lambda w: getattr(results, w[1])(w[0]), want)))

    blocks: dict[str, Block] = {}
    running_now, stale, running = 0, [], []
    for spec in specs:
        block = blocks.setdefault(block_of(spec), Block(block_of(spec)))
        block.regimes.add(spec.regime)
        state = states[spec.id]
        block.counts[state] += 1
        if state == "done" and (result := read[(spec.id, "result")]):
            block.add_dice(result.get("best_val_dice"))
            if (seconds := full_run_seconds(result)) is not None:
                block.durations.append(seconds)
            if result.get("epochs"):
                block.epochs.append(result["epochs"])
        elif state == "running":
            progress = read[(spec.id, "progress")] or {}
            block.add_dice(progress.get("best_val_dice"))
            running.append((block, spec, progress.get("epoch", 0)))
            updated = max(t for name, t in files[spec.id].items()
                          if name in (ResultStore.CHECKPOINT, ResultStore.PROGRESS))
            if now - progress.get("updated_at", updated) > STALE_AFTER_S:
                stale.append(spec.id)
            else:
                running_now += 1
        elif state == "pending":
            block.left_runs += 1
    for block, spec, epoch in running:
        # Early stopping ends most runs long before max_epochs: what is left of a running one is
        # measured against the epochs its block's finished experiments ran, when there are some.
        expected = sum(block.epochs) / len(block.epochs) if block.epochs else spec.max_epochs
        block.left_runs += 1 - epoch / max(expected, epoch + 1)
    failed = {i: (f or {}).get("error", "?") for (i, kind), f in read.items() if kind == "failure"}
    others = len(set(files) - set(states))
    return Status(list(blocks.values()), running_now, stale, failed, others)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render(status: Status, where: str) -> str:
    width = max([len("block"), len("total")] + [len(b.name) for b in status.blocks])
    header = (f"{'block':<{width}}  {'regime':<10} {'done':>5} {'running':>7} {'failed':>6} {'pending':>7}  "
              f"{'best val dice':>13}  work left")
    lines = [f"study {where}", header]

    def row(name, regime, counts, dice, left) -> str:
        dice_cell = "-" if dice is None else f"{100 * dice:.1f}"
        return (f"{name:<{width}}  {regime:<10} {counts['done']:>5} {counts['running']:>7} {counts['failed']:>6} "
                f"{counts['pending']:>7}  {dice_cell:>13}  {left}")

    for block in status.blocks:
        lines.append(row(block.name, "/".join(sorted(block.regimes)) or "-", block.counts, block.best_val_dice,
                         duration(block.work_left_s)))
    totals = {s: sum(b.counts[s] for b in status.blocks) for s in STATES}
    dice = [b.best_val_dice for b in status.blocks if b.best_val_dice is not None]
    lines.append(row("total", "", totals, max(dice) if dice else None, ""))
    lines.append("work left: trial time still to run, from the mean duration of the block's finished experiments")

    if not totals["pending"] and not totals["running"]:
        lines.append("ETA: nothing left to run")
    elif not any(b.durations for b in status.blocks):
        lines.append("ETA: unknown (no experiment has finished yet)")
    elif None in [b.work_left_s for b in status.blocks]:
        unknown = [b.name for b in status.blocks if b.work_left_s is None]
        lines.append(f"ETA: unknown (nothing finished yet in {', '.join(unknown)})")
    elif not status.running_now:
        lines.append("ETA: unknown (nothing is running: rerun the grid command to go on)")
    else:
        lines.append(f"ETA: {duration(status.eta_s)} at {status.running_now} experiments in parallel")
    if status.stale:
        lines.append(f"{len(status.stale)} running experiments have not reported for over "
                     f"{STALE_AFTER_S // 60} min (driver stopped? rerun the grid command to resume them): "
                     + ", ".join(status.stale))
    for experiment_id, error in status.failed.items():
        lines.append(f"FAILED {experiment_id}: {error.splitlines()[0][:300] if error else '?'}")
    if status.failed:
        lines.append("rerun failed experiments with: grid ... --retry-failed")
    if status.others:
        lines.append(f"{status.others} more experiments in storage are not in this selection "
                     "(another --profile, --only or --max-epochs?)")
    return "\n".join(line.rstrip() for line in lines)
