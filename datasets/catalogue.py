"""The study's datasets in one table: names, prompt families, test-only flags and pooled sets.

Names are the folder names of the study's released layout (naamiinepal/medvlsm, ``data/<name>/``),
so shards ingested from it keep them. Everything here is plain data: importing it reads no files.
"""

from __future__ import annotations

from dataclasses import dataclass

from datasets.shards import RANDOM_PROMPT
from prompts.templates import PROMPT_TYPES


@dataclass(frozen=True)
class DatasetInfo:
    name: str  # shard dataset name (the study's folder name)
    title: str  # as the paper writes it
    category: str  # non_radiology | radiology (Table 1)
    modality: str
    prompt_family: str  # a family of prompts.templates: fixes the prompt types p0..pN
    test_only: bool = False  # only a test split (Table 1: 0/0/N); never trained on
    pools: tuple[str, ...] = ()  # pooled training sets whose train/val splits include this one

    @property
    def prompt_types(self) -> tuple[str, ...]:
        return PROMPT_TYPES[self.prompt_family]


ENDOSCOPY_POOL, ALL_POOL = "pooled_polyp", "pooled_all"  # the study's datamodule names
_BOTH = (ENDOSCOPY_POOL, ALL_POOL)

# Table 1 (and Appendix F.2 for MIMIC-CXR). Order: the paper's.
DATASETS: dict[str, DatasetInfo] = {d.name: d for d in (
    DatasetInfo("kvasir_polyp", "Kvasir-SEG", "non_radiology", "endoscopy", "non_radiology", pools=_BOTH),
    DatasetInfo("clinicdb_polyp", "ClinicDB", "non_radiology", "endoscopy", "non_radiology", pools=_BOTH),
    DatasetInfo("bkai_polyp", "BKAI", "non_radiology", "endoscopy", "non_radiology", pools=_BOTH),
    # Section 2.2: ETIS, ColonDB and CVC300 are "used only as the test split to study domain shift".
    DatasetInfo("etis_polyp", "ETIS", "non_radiology", "endoscopy", "non_radiology", test_only=True),
    DatasetInfo("colondb_polyp", "CVC-ColonDB", "non_radiology", "endoscopy", "non_radiology", test_only=True),
    DatasetInfo("cvc300_polyp", "CVC-300", "non_radiology", "endoscopy", "non_radiology", test_only=True),
    DatasetInfo("isic", "ISIC 2016", "non_radiology", "photography", "non_radiology", pools=(ALL_POOL,)),
    DatasetInfo("dfu", "DFU 2022", "non_radiology", "photography", "non_radiology", pools=(ALL_POOL,)),
    DatasetInfo("camus", "CAMUS", "radiology", "ultrasound", "camus", pools=(ALL_POOL,)),
    DatasetInfo("busi", "BUSI", "radiology", "ultrasound", "busi", pools=(ALL_POOL,)),
    DatasetInfo("chexlocalize", "CheXlocalize", "radiology", "x-ray", "chexlocalize", pools=(ALL_POOL,)),
    # Appendix F.2: 1,141 frontal chest X-rays with lung masks; the report is the only prompt (P1).
    # Not in the released layout, so the name is ours.
    DatasetInfo("mimic_cxr_lungs", "MIMIC-CXR lungs", "radiology", "x-ray", "mimic"),
)}

# The eight datasets trained on one at a time (Appendix C.1: five non-radiology, three radiology).
INDIVIDUAL = ("kvasir_polyp", "clinicdb_polyp", "bkai_polyp", "isic", "dfu", "camus", "busi", "chexlocalize")
ENDOSCOPY = tuple(n for n, d in DATASETS.items() if d.modality == "endoscopy")  # all six, test-only included


@dataclass(frozen=True)
class PoolInfo:
    name: str
    title: str
    members: tuple[str, ...]  # datasets whose train and val splits are pooled
    eval_sets: tuple[str, ...]  # test splits scored, as in the study's pooled datamodules

    @property
    def prompt_types(self) -> tuple[str, ...]:
        """Prompt types every member has, plus ``random`` (each sample draws among its own p1..pN)."""
        common = [p for p in DATASETS[self.members[0]].prompt_types
                  if all(p in DATASETS[m].prompt_types for m in self.members)]
        return (*common, RANDOM_PROMPT)


def _pools() -> dict[str, PoolInfo]:
    # Table 2's "Endoscopy Pooled" rows are scored on the six endoscopy test sets, its "Pooled" rows on
    # all eleven (the released pooled_polyp / pooled_all datamodules list the same test sets).
    members = {pool: tuple(n for n in INDIVIDUAL if pool in DATASETS[n].pools) for pool in _BOTH}
    eleven = tuple(n for n in DATASETS if n != "mimic_cxr_lungs")  # Table 1's eleven datasets
    return {
        ENDOSCOPY_POOL: PoolInfo(ENDOSCOPY_POOL, "Endoscopy pooled", members[ENDOSCOPY_POOL], ENDOSCOPY),
        ALL_POOL: PoolInfo(ALL_POOL, "Pooled (all)", members[ALL_POOL], eleven),
    }


POOLS = _pools()


def prompt_types(name: str) -> tuple[str, ...]:
    """The prompt types a dataset or pooled set offers; a clear error for an unknown name."""
    if name in DATASETS:
        return DATASETS[name].prompt_types
    if name in POOLS:
        return POOLS[name].prompt_types
    raise ValueError(f"unknown dataset {name!r}: expected one of {', '.join([*DATASETS, *POOLS])}")
