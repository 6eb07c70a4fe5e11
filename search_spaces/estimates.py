"""How long a trial runs, as figures: the step-time table (``step_times.json``, per device type, with
the paper's minutes and epochs per experiment) and the epochs an early-stopped run is expected to
take. Read by ``plan`` to price a grid and by ``hpo`` to set its cosine horizon."""

from __future__ import annotations

import json
import os

STEP_TIMES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "step_times.json")


def load_step_times(path: str = STEP_TIMES) -> dict:
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read step times from {path}: {e}") from None
    if not isinstance(table.get("devices"), dict) or not isinstance(table.get("paper"), dict):
        raise ValueError(f"{path}: expected objects 'devices' and 'paper' at the top level")
    return table


def expected_epochs(spec: dict, table: dict, override: int | None = None) -> int:
    if override:
        return min(override, spec["max_epochs"])
    paper = table["paper"].get(spec["model"])
    guess = paper["epochs"] if paper and spec["size"] == "full" else 2 * spec["patience"]
    return max(1, min(spec["max_epochs"], guess))
