"""The paper's published numbers, for comparing this project's results against them.

Source: Poudel et al., "Exploring Transfer Learning in Medical Image Segmentation using
Vision-Language Models", MIDL 2024 (code: github.com/naamiinepal/medvlsm), transcribed from
its Tables 2 and 3 (finetuning on individual and pooled datasets; out-of-distribution endoscopy),
Tables 6 and 7 (CRIS and CLIPSeg with frozen CLIP encoders, per dataset and prompt type) and
Table 8 (MIMIC-CXR lungs, zero-shot and finetuned) into ``orchestrator/published.json``.

Units: ``dice`` is the Dice score in percent (0-100), as printed. ``std`` is the value printed
after ± (Tables 6-8 only; the paper does not say what it is taken over, its size fits the spread
of per-image Dice over the test set); null where the table prints none. Cells printed as "-" or
"N/A" are absent. Every cell names its printed labels (``group``, ``row``, ``column``) beside the
project's names (``model``, ``train``, ``dataset``, ``prompt``); the file's ``about`` explains
every key and how the labels were mapped.

``load()`` returns plain dicts (pandas is not a dependency of this project); ``frame()`` gives a
pandas DataFrame where pandas is installed.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path

PATH = Path(__file__).with_name("published.json")
TABLES = ("table2", "table3", "table6", "table7", "table8")


@cache
def _document() -> dict:
    with PATH.open(encoding="utf-8") as f:
        return json.load(f)


def _table_key(table: str | int) -> str:
    key = str(table)
    key = key if key.startswith("table") else f"table{key}"
    if key not in TABLES:
        raise ValueError(f"unknown table {table!r}: expected one of {', '.join(TABLES)}")
    return key


def about() -> dict:
    """The file's description: source, units, what ± means, every key, how labels were mapped."""
    return copy.deepcopy(_document()["about"])


def load(table: str | int | None = None) -> list[dict]:
    """Every published cell (or one table's: ``"2"``, ``2`` or ``"table2"``), as new dicts."""
    keys = TABLES if table is None else (_table_key(table),)
    return [dict(c) for key in keys for c in _document()[key]]


def cell(table: str | int, **keys) -> dict | None:
    """The one cell of ``table`` whose fields equal ``keys`` (e.g. ``cell(2, model="cris",
    train="pooled_all", dataset="busi")``); None when no cell matches. A key no cell of the table
    has, or keys that match more than one cell, raise ValueError."""
    cells = load(table)
    known = {k for c in cells for k in c}
    unknown = sorted(set(keys) - known)
    if unknown:
        raise ValueError(f"table {table} has no field {', '.join(unknown)} (fields: {', '.join(sorted(known))})")
    found = [c for c in cells if all(k in c and c[k] == v for k, v in keys.items())]
    if len(found) > 1:
        raise ValueError(f"{len(found)} cells of table {table} match {keys}: name more fields")
    return found[0] if found else None


def frame(table: str | int | None = None):
    """``load(table)`` as a pandas DataFrame (needs pandas, which this project does not install)."""
    import pandas as pd

    return pd.DataFrame(load(table))
