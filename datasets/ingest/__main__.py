"""``python -m datasets.ingest {medvlsm,raw,folder}``: a dataset folder into shards, a manifest and a report.

Exit status: 0 written (problems, if any, quarantined and listed in ``<to>/<name>/quarantine.json``);
1 under --strict on the first problem (nothing written), or when no row is valid; 2 on a usage or
storage error. Warnings on stderr, never failing the ingest (nor --strict): rows kept as exact
duplicates (medvlsm; listed in the manifest's ``duplicates``), and images or masks the new dataset
shares with datasets already under the root (by the content hashes ingest records, datasets.overlap).
``folder`` (a user's own images/ and masks/, datasets.ingest.folder) is all or nothing: 0 written, 1 on any
problem, every one listed, with nothing written and no quarantine report.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from datasets.cli import DefaultsHelpFormatter, name_problem, name_type
from datasets.ingest.folder import FAMILY, TEST_FRACTION, USER_PROMPT_TYPE, VAL_FRACTION, FolderError, ingest_folder
from datasets.ingest.medvlsm import FAMILIES, TEST_ONLY, LayoutError, medvlsm_records
from datasets.ingest.rows import REPORT_NAME, IngestError, IngestReport, StrictError, ingest
from datasets.overlap import content_indexes, overlaps
from datasets.shards import ShardError, ShardStore
from prompts.templates import PROMPT_TYPES


def cmd_medvlsm(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    name = args.name or folder.resolve().name
    problem = name_problem(name)
    if problem:  # the folder's name is the default
        print(f"error: dataset name {problem}; pass --name NAME", file=sys.stderr)
        return 2
    family = args.family or FAMILIES.get(name)
    if name in TEST_ONLY and not args.test_only:
        print(f"note: the study used {name} only for testing; --test-only puts every annotation file in 'test'",
              file=sys.stderr)
    return run(lambda: medvlsm_records(folder, name, family, args.class_name, args.test_only, args.drop_duplicates),
               args, name, family, str(folder))


def cmd_raw(args: argparse.Namespace) -> int:
    try:
        readers = importlib.import_module("datasets.ingest.raw").READERS
    except (ImportError, AttributeError) as e:
        print(f"error: raw readers are not available ({e}): datasets/ingest/raw/__init__.py must define READERS",
              file=sys.stderr)
        return 2
    if args.dataset not in readers:
        print(f"error: no raw reader {args.dataset!r}; known: {', '.join(sorted(readers))}", file=sys.stderr)
        return 2
    reader = readers[args.dataset]
    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"error: download folder {folder} does not exist", file=sys.stderr)
        return 2
    name = args.name or reader.name
    return run(lambda: reader.records(folder, args.seed), args, name, reader.family, str(folder))


def cmd_folder(args: argparse.Namespace) -> int:
    store = ShardStore(args.to)
    try:
        manifest, report = ingest_folder(Path(args.folder), store, args.name, args.class_name, args.seed,
                                         args.val_fraction, args.test_fraction, progress=not args.quiet)
    except FolderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    print(f"shards: {store.root}/{args.name}/manifest.json (prompt types {', '.join(manifest.prompt_types)}; "
          f"splits {', '.join(manifest.splits)})")
    warn_overlaps(store, args.name)
    return 0


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in [0, 1)")
    return value


def run(records, args: argparse.Namespace, name: str, family: str | None, source: str) -> int:
    store = ShardStore(args.to)
    try:
        manifest, report = ingest(records, store, name, family, source, strict=args.strict,
                                  progress=not args.quiet)
    except StrictError as e:
        print(f"error (--strict): {e.problem}\nnothing was written to {store.root}/{name}", file=sys.stderr)
        return 1
    except IngestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    print(f"shards: {store.root}/{name}/manifest.json ({', '.join(manifest.prompt_types)}); "
          f"report: {store.root}/{name}/{REPORT_NAME}")
    warn_duplicates(report)
    warn_overlaps(store, name)
    return 0


def warn_duplicates(report: IngestReport) -> None:
    for split, ids in report.duplicates.items():
        repeat, first = next(iter(ids.items()))
        print(f"warning: {report.dataset}: {len(ids)} exact duplicate row(s) in split {split!r} (same image and "
              f"mask as an earlier row) kept as released, each under its own id, e.g. {repeat!r} repeats "
              f"{first!r}; listed in manifest.json 'duplicates' (--drop-duplicates drops them)", file=sys.stderr)


def warn_overlaps(store: ShardStore, name: str) -> None:
    """Images or masks the new dataset shares with the root's others, by their recorded hashes."""
    indexes, unhashed = content_indexes(store)
    for overlap in overlaps(indexes.values(), involving=[name]):
        print(f"warning: {overlap.describe()}", file=sys.stderr)
    if unhashed:
        print(f"note: not compared with {name}, no content hashes recorded (ingested before they were): "
              f"{', '.join(unhashed)}; re-ingest them, or run python -m datasets.validate {store.root}",
              file=sys.stderr)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m datasets.ingest", formatter_class=DefaultsHelpFormatter,
                                  description="Ingest a dataset into Parquet shards (a folder or s3://).")
    sub = top.add_subparsers(dest="command", required=True, metavar="{medvlsm,raw,folder}")

    def common(p: argparse.ArgumentParser, strict_also: str = "") -> None:
        p.add_argument("--to", required=True, help="shard root: a folder or s3://bucket/prefix")
        p.add_argument("--strict", action="store_true",
                       help="stop at the first bad record and write nothing (without it: quarantine it and go on)"
                            + strict_also)
        p.add_argument("--quiet", action="store_true", help="no progress lines")

    medvlsm = sub.add_parser("medvlsm", help="the study's released layout data/<name>/{anns,images,masks}",
                             formatter_class=DefaultsHelpFormatter,
                             description="Read anns/<split>.json with images/ and masks/; prompts are kept "
                                         "verbatim. Every released row is kept: exact duplicates (same image "
                                         "and mask in a split) under ids <id>#2, #3, ... listed in the "
                                         "manifest; images shared by splits are noted.")
    medvlsm.add_argument("folder", help="the dataset folder, e.g. data/kvasir_polyp")
    medvlsm.add_argument("--name", type=name_type, help="dataset name in the shards (none: the folder's name)")
    medvlsm.add_argument("--family", choices=sorted(PROMPT_TYPES),
                         help="prompt family recorded in the manifest (none: from the study's folder name)")
    medvlsm.add_argument("--class-name", help="class name of every row (none: CAMUS structure, BUSI "
                                              "'tumor', else the P1 prompt)")
    medvlsm.add_argument("--test-only", action="store_true",
                         help="every annotation file goes to split 'test' (CVC-300, ColonDB, ETIS in the study)")
    medvlsm.add_argument("--drop-duplicates", action="store_true",
                         help="drop an entry whose image and mask repeat an earlier entry of its split, into "
                              "quarantine.json (without it: keep it as released, as the study trained on it, "
                              "under <id>#<n>)")
    common(medvlsm, "; an image in two splits is one, an exact duplicate is not: it is kept as released "
                    "(or, with --drop-duplicates, dropped without failing)")
    medvlsm.set_defaults(func=cmd_medvlsm)

    raw = sub.add_parser("raw", help="an original public download (Kvasir-SEG, CAMUS, BUSI, ...)",
                         formatter_class=DefaultsHelpFormatter,
                         description="Read an original distribution, make the study's splits (seeded) and "
                                     "generate prompts with prompts/.")
    raw.add_argument("dataset", help="which distribution (see the error message for the list)")
    raw.add_argument("folder", help="the download folder")
    raw.add_argument("--name", type=name_type, help="dataset name in the shards (none: the reader's)")
    raw.add_argument("--seed", type=int, default=0, help="seed of the split")
    common(raw)
    raw.set_defaults(func=cmd_raw)

    folder = sub.add_parser("folder", help="your own dataset: PATH/images/, PATH/masks/, optional splits.csv and "
                                           "metadata.csv", formatter_class=DefaultsHelpFormatter,
                            description=f"Read PATH/images/<id>.<png|jpg|...> and PATH/masks/<id>.png (0/255 or "
                                        f"0/1), PATH/splits.csv (id,split) if there is one, else a seeded split, "
                                        f"and PATH/metadata.csv (id, optional prompt, class_name, description, "
                                        f"other columns as metadata) if there is one. Prompts p0-p6 (p7-p9 with "
                                        f"class descriptions) are generated from the masks with the {FAMILY} "
                                        f"templates; the 'prompt' column is prompt type {USER_PROMPT_TYPE}. Any "
                                        f"problem stops it: all are listed, nothing is written. See docs/data.md.")
    folder.add_argument("name", type=name_type, help="dataset name in the shards")
    folder.add_argument("folder", metavar="path", help="the folder holding images/ and masks/")
    folder.add_argument("--to", required=True, help="shard root: a folder or s3://bucket/prefix")
    folder.add_argument("--class-name", help="what the masks outline, e.g. 'polyp' (none: metadata.csv's "
                                             "class_name column, on every row)")
    folder.add_argument("--seed", type=int, default=0, help="seed of the split, without splits.csv")
    folder.add_argument("--val-fraction", type=fraction, default=VAL_FRACTION,
                        help="share of ids in 'val', without splits.csv (the study's 80/10/10 splits)")
    folder.add_argument("--test-fraction", type=fraction, default=TEST_FRACTION,
                        help="share of ids in 'test', without splits.csv (the study's 80/10/10 splits)")
    folder.add_argument("--quiet", action="store_true", help="no progress lines")
    folder.set_defaults(func=cmd_folder)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (LayoutError, ShardError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
