"""orchestrator/published.json: the paper's Tables 2, 3, 6, 7 and 8 as cells with project names, checked
for shape against the paper's layout and, cell by cell, against the paper's text (shared/reference)."""

from __future__ import annotations

import re
import tomllib

import pytest
from cli import REPO, require_reference

from datasets.catalogue import ALL_POOL, DATASETS, ENDOSCOPY, ENDOSCOPY_POOL, INDIVIDUAL, POOLS, prompt_types
from orchestrator import published
from trainables.models import model_names

PAPER = REPO.parent / "shared" / "reference" / "paper.txt"

# The paper's layout, as printed. Table 2 and 3 test-set columns, in the printed order.
COLUMNS = ("Kvasir-SEG", "ClinicDB", "BKAI", "CVC-300", "CVC-ColonDB", "ETIS", "ISIC", "DFU", "CAMUS", "BUSI",
           "CheXlocalize")
MODELS = ("CRIS", "CLIPSeg", "UNet", "UNet++", "DeepLabv3+")
T2_ROWS = ([("Individual", m) for m in (*MODELS, "SOTA*")] + [("Pooled", m) for m in MODELS]
           + [("Endoscopy Pooled", m) for m in MODELS])
T3_ROWS = [(g, m) for g in ("Kvasir-SEG", "ClinicDB", "BKAI") for m in MODELS]
T67_ROWS = ("Kvasir-SEG", "ClinicDB", "BKAI", "ISIC", "DFU", "CAMUS", "BUSI", "CheXlocalize")
T8_ROWS = [("CRIS", "Zero-shot"), ("CRIS", "Finetuning"), ("CLIPSeg", "Zero-shot"), ("CLIPSeg", "Finetuning")]
PROMPTS = tuple(f"P{i}" for i in range(10))
VLSM_MODELS = 2  # CRIS and CLIPSeg are the VLSMs of Tables 2, 3 and 8


def test_every_table_has_the_paper_layouts_cell_count():
    n_models, eleven = len(MODELS), POOLS[ALL_POOL].eval_sets
    assert len(eleven) == 11 and len(INDIVIDUAL) == 8 and len(ENDOSCOPY) == 6
    # Table 2: Individual rows cover the eight trainable sets (the three test-only endoscopy sets are
    # "-"), SOTA* those minus CheXlocalize, Pooled all eleven, Endoscopy Pooled the six endoscopy sets.
    expected = {
        "table2": (n_models * len(INDIVIDUAL) + (len(INDIVIDUAL) - 1)
                   + n_models * len(eleven) + n_models * len(ENDOSCOPY)),
        "table3": 3 * n_models * 6,  # 3 training sets x 5 models x 6 endoscopy test sets, no blanks
        # Tables 6, 7: each dataset has the prompt types of its family (N/A beyond them)
        "table6": sum(len(prompt_types(d)) for d in INDIVIDUAL),
        "table7": sum(len(prompt_types(d)) for d in INDIVIDUAL),
        "table8": VLSM_MODELS * 2 * 2,  # CRIS, CLIPSeg x zero-shot, finetuning x P0, P1
    }
    assert expected == {"table2": 132, "table3": 90, "table6": 72, "table7": 72, "table8": 8}
    assert {t: len(published.load(t)) for t in published.TABLES} == expected
    assert len(published.load()) == sum(expected.values())
    about = published.about()
    for word in ("MIDL 2024", "percent", "±"):
        assert word in " ".join(str(v) for v in about.values())
    assert set(about["tables"]) == set(published.TABLES)


def test_names_are_the_projects_and_values_are_percentages():
    models, pools = set(model_names()), set(POOLS)
    assert {ENDOSCOPY_POOL, ALL_POOL} <= pools
    for c in published.load():
        where = f"{c['table']}: {c.get('group')} / {c['row']} / {c['column']}"
        assert c["dataset"] in DATASETS, where
        if c["model"] is None:
            assert (c["table"], c["row"], c["setting"]) == ("2", "SOTA*", "literature") and c["source"], where
        else:
            assert c["model"] in models, where
        if c["setting"] in ("zero_shot", "literature"):
            assert c["train"] is None, where
        else:
            assert c["train"] in DATASETS or c["train"] in pools, where
            assert c["train"] not in DATASETS or not DATASETS[c["train"]].test_only, where
        if "prompt" in c:
            assert c["prompt"] in prompt_types(c["dataset"]) and c["prompt"] == c["column"].lower(), where
        assert 0 <= c["dice"] <= 100, where
        assert c["std"] is None or 0 <= c["std"] <= 100, where
        assert (c["std"] is None) == (c["table"] in ("2", "3")), where  # only Tables 6-8 print ±


def test_cells_are_unique_and_consistent_across_tables():
    for t in published.TABLES:
        cells = published.load(t)
        labels = [(c.get("group"), c["row"], c["column"]) for c in cells]
        names = [(c["model"], c["train"], c["dataset"], c.get("prompt"), c["setting"]) for c in cells]
        assert len(set(labels)) == len(labels) and len(set(names)) == len(names), t
    t2 = {(c["group"], c["row"], c["column"]): c for c in published.load(2)}
    group_train = {"Pooled": ALL_POOL, "Endoscopy Pooled": ENDOSCOPY_POOL}
    for (group, row, _column), c in t2.items():
        if row != "SOTA*":
            assert c["train"] == group_train.get(group, c["dataset"])
    # Table 3's shaded (in-distribution) cells are the diagonal, and repeat Table 2's Individual cells.
    for c in published.load(3):
        assert c["in_distribution"] == (c["train"] == c["dataset"]) == (c["group"] == c["column"])
        if c["in_distribution"]:
            assert t2[("Individual", c["row"], c["column"])]["dice"] == c["dice"]
    assert sum(c["in_distribution"] for c in published.load(3)) == 15


def test_cell_finds_one_cell_and_refuses_ambiguity():
    assert published.cell(2, model="cris", train=ALL_POOL, dataset="busi")["dice"] == 67.89
    assert published.cell("table6", dataset="camus", prompt="p7")["dice"] == 89.04
    assert published.cell("8", model="clipseg", setting="zero_shot", prompt="p1")["std"] == 0.88
    assert published.cell(2, model="cris", train="kvasir_polyp", dataset="etis_polyp") is None  # printed "-"
    with pytest.raises(ValueError, match="match"):
        published.cell(3, model="cris")
    with pytest.raises(ValueError, match="no field"):
        published.cell(2, prompt="p1")  # Table 2 does not say which prompt
    with pytest.raises(ValueError, match="unknown table"):
        published.cell(5, model="cris")
    published.load(2)[0]["dice"] = -1.0  # callers get copies
    assert published.load(2)[0]["dice"] == 91.39


def test_frame_when_pandas_is_there():
    pytest.importorskip("pandas")
    df = published.frame(7)
    assert len(df) == 72 and df["dice"].between(0, 100).all()


def test_published_json_ships_with_the_package():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "published.json" in config["tool"]["setuptools"]["package-data"]["orchestrator"]
    assert published.PATH == REPO / "orchestrator" / "published.json"


# --- against the paper's text ----------------------------------------------------------------------


def table_lines(n: int) -> list[list[str]]:
    """Table n of the paper's text: the block of tab-separated lines after its caption, split on tabs."""
    lines = PAPER.read_text(encoding="utf-8").splitlines()
    (start,) = [i for i, line in enumerate(lines) if line.startswith(f"Table {n}:")]
    i = start + 1
    while "\t" not in lines[i]:
        i += 1
    block = []
    while i < len(lines) and "\t" in lines[i]:
        block.append(lines[i].split("\t"))
        i += 1
    return block


def numbers(field: str) -> list[float]:
    """A printed cell's numbers: [mean] or [mean, ±] ('75.49_{\\pm 27.22}', '87.64±14.37'); [] for - or N/A."""
    return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", field)]


def printed_cells(n: int) -> dict[tuple, str]:
    """Every cell of table n as printed, by (group, row, column) as published.json labels them."""
    block = table_lines(n)
    out = {}
    if n == 2:
        rows, sources = block[2:-1], block[-1]
        assert sources[1] == "*SOTA Sources" and len(rows) == len(T2_ROWS)
        for (group, row), fields in zip(T2_ROWS, rows, strict=True):
            assert fields[1] == row and len(fields) == 2 + len(COLUMNS)
            out |= {(group, row, col): fields[2 + j] for j, col in enumerate(COLUMNS)}
        # each row-group label sits inside its block (the extraction centres it vertically, and repeats
        # the last one's second word as 'Fooled')
        first = {f[0].strip(): i for i, f in reversed(list(enumerate(rows))) if f[0].strip()}
        assert T2_ROWS[first["Individual"]][0] == "Individual" and T2_ROWS[first["Pooled"]][0] == "Pooled"
        assert T2_ROWS[first["Endoscopy"]][0] == "Endoscopy Pooled"
        out |= {("SOTA sources", col): sources[2 + j] for j, col in enumerate(COLUMNS)}
    elif n == 3:
        assert block[0][2:] == list(COLUMNS[:6])
        for (group, row), fields in zip(T3_ROWS, block[2:], strict=True):
            assert fields[1] == row and len(fields) == 8
            out |= {(group, row, col): fields[2 + j] for j, col in enumerate(COLUMNS[:6])}
        assert [(f[0], g) for (g, _), f in zip(T3_ROWS, block[2:]) if f[0]] == [(g, g) for g in COLUMNS[:3]]
    elif n in (6, 7):
        assert [re.sub(r"\D", "", h) for h in block[0][1:]] == [p[1:] for p in PROMPTS]  # 'Р3': a Cyrillic Р
        for row, fields in zip(T67_ROWS, block[1:], strict=True):
            assert fields[0] == row and len(fields) == 11
            out |= {(None, row, p): fields[1 + j] for j, p in enumerate(PROMPTS)}
    else:
        for (group, row), fields in zip(T8_ROWS, block[1:], strict=True):
            assert fields[1] == row and fields[0][:3] == group[:3]  # the first CLIPSeg prints as 'CLIDCas'
            out |= {(group, row, p): fields[2 + j] for j, p in enumerate(PROMPTS[:2])}
    return out


@pytest.mark.parametrize("n", [2, 3, 6, 7, 8])
def test_every_cell_matches_the_papers_text(n):
    require_reference(PAPER, "the paper's text")
    printed = printed_cells(n)
    cells = {(c.get("group"), c["row"], c["column"]): c for c in published.load(n)}
    blank = {"-", "=", "Ξ", "N/A"}
    for key, field in printed.items():
        if key[0] == "SOTA sources":
            continue
        values = numbers(field)
        if not values:
            assert field.strip() in blank and key not in cells, (key, field)
            continue
        c = cells.pop(key)
        assert [c["dice"]] + ([c["std"]] if c["std"] is not None else []) == values, (key, field)
    assert not cells, f"cells not in the paper's table {n}: {sorted(cells)}"
    if n == 2:  # each SOTA* cell's source is printed under its column: the evidence for the column mapping
        for c in published.load(2):
            if c["row"] == "SOTA*":
                assert c["source"] == printed[("SOTA sources", c["column"])].replace("- ", "")


# Hand-read from the paper: (table, group, row, column, printed mean, printed ± or None).
SPOT_CHECKS = [
    (2, "Individual", "CRIS", "Kvasir-SEG", "91.39", None),
    (2, "Pooled", "UNet", "CVC-300", "4.94", None),
    (2, "Pooled", "DeepLabv3+", "CheXlocalize", "54.56", None),
    (2, "Endoscopy Pooled", "UNet++", "CVC-300", "89.4", None),
    (2, "Individual", "SOTA*", "BUSI", "89.80", None),
    (3, "Kvasir-SEG", "UNet++", "CVC-ColonDB", "52.3", None),
    (3, "ClinicDB", "DeepLabv3+", "ETIS", "39.53", None),
    (3, "BKAI", "CLIPSeg", "ETIS", "66.97", None),
    (6, None, "ClinicDB", "P1", "46.98", "34.30"),
    (6, None, "CAMUS", "P7", "89.04", "6.85"),
    (7, None, "BKAI", "P3", "84.7", "16.94"),
    (7, None, "CheXlocalize", "P6", "58.06", "25.34"),
    (8, "CRIS", "Zero-shot", "P0", "44.8", "18.97"),
    (8, "CLIPSeg", "Finetuning", "P1", "91.22", "1.26"),
]


@pytest.mark.parametrize(("n", "group", "row", "column", "mean", "spread"), SPOT_CHECKS)
def test_hand_read_cells_are_printed_at_their_row_and_column(n, group, row, column, mean, spread):
    require_reference(PAPER, "the paper's text")
    field = printed_cells(n)[(group, row, column)]  # the text at that row and column of table n
    assert re.search(rf"(?<![\d.]){re.escape(mean)}(?![\d.])", field), field
    if spread is not None:
        assert re.search(rf"(?<![\d.]){re.escape(spread)}(?![\d.])", field), field
    (c,) = [c for c in published.load(n) if (c.get("group"), c["row"], c["column"]) == (group, row, column)]
    assert (c["dice"], c["std"]) == (float(mean), None if spread is None else float(spread))
