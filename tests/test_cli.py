"""The command line documents every flag, and the project's `datasets` leaves other packages working."""

import argparse
import subprocess
import sys

import pytest

from orchestrator.common import select
from orchestrator.run import parser
from search_spaces.grid import demo
from tests.cli import REPO


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", [None, "grid", "report"])
def test_help_documents_every_flag(command):
    args = ["-m", "orchestrator.run"] + ([command] if command else []) + ["--help"]
    out = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    if command is None:
        assert all(name in out.stdout for name in subparsers())
        return
    for action in subparsers()[command]._actions:
        for flag in action.option_strings:
            assert flag in out.stdout, f"{command} --help does not mention {flag}"
        assert action.help, f"{command} {action.option_strings} has no help text"


def test_only_filters_by_substring_or_glob():
    specs = demo()
    assert [s.id for s in select(specs, ["synth_pairs-p6"])] == [specs[5].id]
    assert len(select(specs, ["clipseg-frozen-synth_polyp-*"])) == 3
    assert select(specs, None) == specs and select(specs, ["nothing"]) == []


def test_dry_run_lists_the_grid_without_running(tmp_path):
    out = subprocess.run([sys.executable, "-m", "orchestrator.run", "grid", "--dry-run", "--storage", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert all(s.id in out.stdout for s in demo())
    assert "total: 6 experiments (0 done)" in out.stdout
    assert list(tmp_path.iterdir()) == []


def test_project_datasets_package_does_not_break_transformers_or_ray():
    code = ("import datasets, transformers, ray, ray.tune, ray.train, ray.data; "
            "from transformers import CLIPSegForImageSegmentation, CLIPSegConfig; "
            f"assert datasets.__file__.startswith({str(REPO)!r}), datasets.__file__; "
            "CLIPSegForImageSegmentation(CLIPSegConfig())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_one_flag_name_per_concept():
    """Batch size, prompt types and datasets have one flag name in every command of every package."""
    import ast

    from cli import REPO

    synonyms = {"--batch": "--batch-size", "--type": "--prompts", "--prompt": "--prompts",
                "--dataset": "--datasets (a list) or --name (one dataset's name)"}
    found = []
    for path in REPO.glob("*/**/*.py"):
        if path.parts[len(REPO.parts)] in ("tests", ".venv"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "add_argument" and node.args
                    and isinstance(node.args[0], ast.Constant) and node.args[0].value in synonyms):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.args[0].value}: "
                             f"use {synonyms[node.args[0].value]}")
    assert not found, found


def test_the_console_script_is_the_command_line():
    from importlib.metadata import entry_points

    from orchestrator.run import main

    [script] = entry_points(group="console_scripts", name="vlsm-tune")
    assert script.load() is main
