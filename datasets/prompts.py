"""``python -m datasets.prompts {show,generate}``: look at a dataset's prompts, or write generated ones."""

from __future__ import annotations

import argparse
import sys

from datasets.cli import DefaultsHelpFormatter, name_problem, name_type
from datasets.shards import ShardError, ShardStore
from prompts.generate import row_attributes, row_prompts
from prompts.metadata import store_attributes, stored_attributes
from prompts.perturb import KINDS, PerturbationError, parse_perturbation, perturb
from prompts.templates import PROMPT_TYPES


def split_dataset(args: argparse.Namespace) -> None:
    """Without --name, the last part of the shard path names the dataset: ``shards/kvasir``."""
    if args.dataset is None:
        args.shards, _, args.dataset = args.shards.rstrip("/").rpartition("/")
        if not args.shards or not args.dataset:
            raise ShardError("name the dataset: --name NAME, or a path ending in it (e.g. data/shards/kvasir)")
        if name_problem(args.dataset):
            raise ShardError(f"dataset name {name_problem(args.dataset)}; pass --name NAME")


def cmd_show(args: argparse.Namespace) -> int:
    store = ShardStore(args.shards)
    manifest = store.check_split(args.dataset, args.split, args.type)
    perturbation = parse_perturbation(args.perturb)
    columns = ["sample_id", args.type] + (["metadata"] if perturbation else [])
    table = store.read_split(args.dataset, args.split, columns).slice(0, args.n)
    for row in table.to_pylist():
        texts = row[args.type]
        if perturbation:
            attributes = stored_attributes(dict(row["metadata"] or []))
            texts = perturb(manifest.prompt_family, args.type, attributes, perturbation, row["sample_id"])
        print(f"{row['sample_id']}:")
        for text in texts:
            print(f"    {text!r}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    source = ShardStore(args.shards)
    manifest = source.manifest(args.dataset)
    family = args.family or manifest.prompt_family
    if family is None:
        raise ShardError(f"dataset {args.dataset!r} names no prompt family in its manifest: pass --family "
                         f"({', '.join(PROMPT_TYPES)})")
    has_prompts = [p for p in manifest.prompt_types if p != "p0"]
    if has_prompts and not args.overwrite:
        raise ShardError(f"dataset {args.dataset!r} already has prompts {', '.join(has_prompts)}; "
                         "pass --overwrite to replace them with generated ones")
    rows, prompt_types = [], None
    for split in manifest.splits:
        for i, row in enumerate(source.iter_rows(args.dataset, split)):
            try:
                attributes = row_attributes(family, row)
                prompts = row_prompts(family, attributes)
            except (KeyError, ValueError, OSError, SyntaxError) as e:  # a bad image, or over prompts.images' limits
                raise ShardError(f"dataset {args.dataset!r} split {split!r} row {i} "
                                 f"(sample_id {row['sample_id']!r}): {e}") from None
            # Every row of a dataset must have the same prompt columns.
            prompt_types = prompt_types or tuple(prompts)
            if tuple(prompts) != prompt_types:
                raise ShardError(f"row {row['sample_id']!r} supports prompt types {', '.join(prompts)}, "
                                 f"earlier rows {', '.join(prompt_types)}: its metadata lacks attributes")
            metadata = {k: v for k, v in (row["metadata"] or {}).items() if not k.startswith("attr.")}
            rows.append({**{k: v for k, v in row.items() if k not in manifest.prompt_types}, **prompts,
                         "metadata": {**metadata, **store_attributes(attributes)}})
    target = ShardStore(args.to or args.shards)
    written = target.write_dataset(args.dataset, rows, prompt_types or ("p0",), prompt_family=family)
    print(f"wrote {sum(e['rows'] for e in written.splits.values())} rows with prompt types "
          f"{', '.join(written.prompt_types)} to {target.root}/{args.dataset}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m datasets.prompts", formatter_class=DefaultsHelpFormatter,
                                  description="Show or generate a dataset's prompts.")
    sub = top.add_subparsers(dest="command", required=True, metavar="{show,generate}")
    show = sub.add_parser("show", help="print a few samples' prompts", formatter_class=DefaultsHelpFormatter,
                          description="Print the prompt strings of the first N samples of a split, optionally "
                                      "with a perturbation applied as in the study's ablation.")
    show.add_argument("shards", help="shard root (a folder or s3://bucket/prefix), or ROOT/DATASET")
    show.add_argument("--name", dest="dataset", metavar="NAME", type=name_type,
                      help="dataset name under the shard root (none: the path's last part)")
    show.add_argument("--prompts", dest="type", default="p6", metavar="P", help="prompt type, p0..pN")
    show.add_argument("--split", default="train", help="split to read")
    show.add_argument("-n", type=int, default=5, help="how many samples")
    show.add_argument("--perturb", metavar="KIND[:ATTRIBUTE]",
                      help=f"apply a perturbation: {', '.join(KINDS)}, e.g. opposite:location")
    show.set_defaults(func=cmd_show)
    generate = sub.add_parser("generate", help="write prompts generated from masks, images and metadata",
                              formatter_class=DefaultsHelpFormatter,
                              description="Compute each row's attributes (number, size, location, shape, colour "
                                          "from the mask and image; the rest from metadata), render every prompt "
                                          "type of the family, and write the dataset's shards again: a new version "
                                          "beside the old one, the manifest switched last, so an error or a kill "
                                          "leaves the old prompts or the new ones, whole.")
    generate.add_argument("shards", help="shard root (a folder or s3://bucket/prefix), or ROOT/DATASET")
    generate.add_argument("--name", dest="dataset", metavar="NAME", type=name_type,
                          help="dataset name under the shard root (none: the path's last part)")
    generate.add_argument("--family", choices=sorted(PROMPT_TYPES),
                          help="template family (none: the one the manifest names)")
    generate.add_argument("--to", help="write to this shard root instead of rewriting in place")
    generate.add_argument("--overwrite", action="store_true", help="replace prompts the dataset already has")
    generate.set_defaults(func=cmd_generate)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        split_dataset(args)
        return args.func(args)
    except (ShardError, PerturbationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
