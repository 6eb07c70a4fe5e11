"""How long a trial runs, as figures: the step-time table (``step_times.json``, per device type) and
the epochs an early-stopped run is expected to take (the paper's, on each model card). Read by
``plan`` to price a grid and by ``hpo`` to set its cosine horizon.

Two files. The shipped table, ``search_spaces/step_times.json`` (``STEP_TIMES``), changes only in a
commit. This user's measurements, which ``plan --calibrate`` and ``python -m benchmarks gpu --save``
write, go to ``step_times.json`` in the node cache folder (``$VLSM_CACHE``, default
``~/.cache/vlsm-tune``; ``user_step_times``), never into the source tree. ``load_step_times()``
reads the shipped table with the user's devices laid over it; an explicit path reads that file alone.
"""

from __future__ import annotations

import json
import os
import uuid

from datasets.cache import cache_root, file_lock
from trainables.models import card

STEP_TIMES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "step_times.json")
USER_FILE = "step_times.json"  # in the node cache folder (datasets.cache.cache_root)
USER_ABOUT = ("This user's measured step times (`plan --calibrate`, `python -m benchmarks gpu --save`), laid over "
              "the shipped search_spaces/step_times.json per device type and entry. To ship figures, copy a "
              "device's entries into that file in a commit.")


def user_step_times() -> str:
    """This user's step-time file: ``step_times.json`` in the node cache folder (``$VLSM_CACHE``,
    default ``~/.cache/vlsm-tune``), beside the caches of the machine it measured."""
    return os.path.join(cache_root(), USER_FILE)


def load_step_times(path: str | None = None) -> dict:
    """The step-time table. ``path``: exactly that file, a whole table. None: the shipped table with
    this user's measured entries laid over it, per device type and per entry."""
    table = _read(path or STEP_TIMES)
    if not isinstance(table.get("devices"), dict):
        raise ValueError(f"{path or STEP_TIMES}: expected an object 'devices' at the top level")
    if path is None:
        user = _read_user(user_step_times())
        if user is not None:
            _overlay(table, user)
    return table


def save_step_times(measured: dict, path: str | None = None) -> str:
    """Store measured entries, ``{"devices": {type: {"model/mode/size": entry}}, "grid_start_s":
    {type: seconds}}`` (the latter optional), each replacing the entry of its key; returns the file
    written. ``path`` None: this user's file (created, with its folders), holding measured devices
    only; else exactly that file, a whole table. Written to a temporary file renamed over the old one,
    so a reader never sees half of one."""
    if path is None:
        path = user_step_times()
        with file_lock(path + ".lock"):  # two calibrations on one node: neither loses the other's entries
            table = _read_user(path) or {"about": USER_ABOUT, "devices": {}}
            _write(_overlay(table, measured), path)
    else:
        _write(_overlay(load_step_times(path), measured), path)
    return path


def ship_hint(device: str) -> str:
    """What to do with measurements stored in this user's file to ship them with the project."""
    return (f"(this user's step times, read over the shipped table; to ship them, copy the {device!r} entries "
            f"into search_spaces/step_times.json in a commit)")


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read step times from {path}: {e}") from None
    if not isinstance(table, dict):
        raise ValueError(f"{path}: expected a JSON object of step times, found {type(table).__name__}")
    return table


def _read_user(path: str) -> dict | None:
    """This user's file, checked; None when there is none yet."""
    if not os.path.lexists(path):
        return None
    table = _read(path)

    def number(value, least: float = 0.0) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= least

    devices, starts = table.get("devices"), table.get("grid_start_s", {})
    if not (isinstance(devices, dict) and all(isinstance(e, dict) for e in devices.values())
            and all(isinstance(v, dict) and number(v.get("batch"), 1) and number(v.get("step_ms"))
                    for e in devices.values() for v in e.values())
            and isinstance(starts, dict) and all(number(s) for s in starts.values())):
        raise ValueError(f"{path}: expected a user step-time file: an object 'devices' of device types, each "
                         "an object of entries ('model/mode/size': an object with numbers 'batch' and 'step_ms'), "
                         "and optionally 'grid_start_s' (device type: seconds). Fix it, or remove it to use the "
                         "shipped table alone")
    if extra := sorted(set(table) - {"about", "devices", "grid_start_s"}):
        raise ValueError(f"{path}: unexpected {', '.join(map(repr, extra))} in a user step-time file, which holds "
                         f"only measured devices ('devices', 'grid_start_s'); shipped figures go in {STEP_TIMES}")
    return table


def _overlay(table: dict, measured: dict) -> dict:
    """``measured``'s entries over ``table``'s, per device type and per entry; returns ``table``."""
    for device, entries in measured.get("devices", {}).items():
        table["devices"].setdefault(device, {}).update(entries)
    if measured.get("grid_start_s"):
        table.setdefault("grid_start_s", {}).update(measured["grid_start_s"])
    return table


def _write(table: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w") as f:
            f.write(_dump(table))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _dump(table: dict) -> str:
    """The table as JSON with one line per entry, so a diff shows which entries a calibration changed."""
    def block(entries: dict, indent: str) -> str:
        if not entries:
            return "{}"
        return "{\n" + ",\n".join(f"{indent}  {json.dumps(k)}: {json.dumps(v)}" for k, v in entries.items()) \
            + f"\n{indent}}}"

    parts = []
    for key, value in table.items():
        if key == "devices" and value:
            devices = ",\n".join(f"    {json.dumps(d)}: {block(e, '    ')}" for d, e in value.items())
            parts.append(f'  "devices": {{\n{devices}\n  }}')
        elif isinstance(value, dict):
            parts.append(f"  {json.dumps(key)}: {block(value, '  ')}")
        else:
            parts.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def expected_epochs(spec: dict, table: dict, override: int | None = None) -> int:
    if override:
        return min(override, spec["max_epochs"])
    paper = card(spec["model"]).paper_time
    guess = paper[1] if paper and spec["size"] == "full" else 2 * spec["patience"]
    return max(1, min(spec["max_epochs"], guess))
