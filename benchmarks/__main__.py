"""Benchmarks that print the baseline and the new path side by side, with medians.

    python -m benchmarks {data,s3,frozen,grid,gpu,report} [options]

Each benchmark is a module of ``benchmarks`` with ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int``; this file only dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from datasets.cli import DefaultsHelpFormatter

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

BENCHMARKS = ("data", "s3", "frozen", "grid", "gpu", "report")


def main(argv: list[str] | None = None) -> int:
    top = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0],
                                  formatter_class=DefaultsHelpFormatter)
    sub = top.add_subparsers(dest="benchmark", required=True)
    for name in BENCHMARKS:
        try:
            module = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"benchmarks.{name}":
                raise
            continue  # not built yet
        parser = sub.add_parser(name, help=module.HELP, description=module.HELP, formatter_class=DefaultsHelpFormatter)
        module.add_arguments(parser)
        parser.set_defaults(run=module.run)
    args = top.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
