"""Readers of the study's datasets as their original public downloads, by shard dataset name.

``READERS[name].records(folder, seed)`` walks a download folder and yields a ``Record`` per future
shard row and a ``RowProblem`` per entry it could not form; ``datasets.ingest.rows`` turns them
into rows and generates their prompts with ``prompts/`` (family ``READERS[name].family``). Each
module's docstring documents the folder layout it accepts and how it splits.
"""

from __future__ import annotations

from datasets.ingest.raw.busi import BUSI
from datasets.ingest.raw.camus import CAMUS
from datasets.ingest.raw.chexlocalize import CHEXLOCALIZE
from datasets.ingest.raw.common import LayoutError, RawDataset
from datasets.ingest.raw.dfu import DFU
from datasets.ingest.raw.isic import ISIC
from datasets.ingest.raw.mimic import MIMIC
from datasets.ingest.raw.polyps import POLYP_DATASETS

# Names as the study's released data folders spell them (naamiinepal/medvlsm, data/<name>/).
READERS: dict[str, RawDataset] = {
    reader.name: reader for reader in (*POLYP_DATASETS, ISIC, DFU, CAMUS, BUSI, CHEXLOCALIZE, MIMIC)
}

__all__ = ["READERS", "LayoutError", "RawDataset"]
