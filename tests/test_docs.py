"""The README fits a screen or two, its links resolve, and every flag a page shows in a command line
exists in that command's --help."""

import re
import subprocess
import sys

import pytest
from cli import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND = re.compile(r"python -m ((?:orchestrator\.run|datasets\.\w+|benchmarks(?:\.\w+)?)(?: [a-z_]+)?)")
SCRIPT = re.compile(r"\bvlsm-tune ")  # the console script is python -m orchestrator.run


def command_lines(text: str) -> list[str]:
    """Indented code lines and `inline` code that run a project command, continuations joined."""
    lines, joined = [], ""
    for line in text.splitlines():
        if line.startswith("    "):
            joined += " " + line.strip().rstrip("\\")
            if line.rstrip().endswith("\\"):
                continue
            lines.append(joined.strip())
        joined = ""
    lines += re.findall(r"`(python -m [^`]+)`", text)
    return [SCRIPT.sub("python -m orchestrator.run ", line) for line in lines
            if COMMAND.search(line) or SCRIPT.search(line)]


_HELP: dict[str, str] = {}


def help_text(command: str) -> str:
    """--help of `python -m MODULE [SUBCOMMAND]` (a subcommand only where the module has them)."""
    if command not in _HELP:
        module, _, sub = command.partition(" ")
        done = subprocess.run([sys.executable, "-m", module, *([sub] if sub else []), "--help"], cwd=REPO,
                              capture_output=True, text=True, timeout=120,
                              env={"PATH": "/usr/bin", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"})
        if done.returncode != 0 and sub:  # a positional argument, not a subcommand
            return help_text(module)
        assert done.returncode == 0, done.stderr[-1000:]
        _HELP[command] = done.stdout
    return _HELP[command]


def test_the_readme_fits_a_screen_or_two():
    assert len((REPO / "README.md").read_bytes()) < 8 * 1024


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve(page):
    for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
        if "://" not in target:
            assert (page.parent / target).exists(), f"{page.name} links to {target}"


def test_every_flag_shown_exists():
    missing = []
    for page in PAGES:
        for line in command_lines(page.read_text()):
            for match in COMMAND.finditer(line):
                command = match.group(1)
                rest = line[match.end():].split("python -m")[0]
                for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest):
                    if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text(command)):
                        missing.append(f"{page.name}: {command} {flag}")
    assert not missing, missing


def cheap_commands() -> list[tuple[str, str]]:
    """Shown command lines that read no data and start no Ray, so a test can run them as written:
    dry runs, `plan` (without --calibrate) and `new-study` (it writes a study file into the folder the
    lines run in, for the dry runs after it), optional [parts] left out, with nothing else to fill in (no
    BUCKET, ..., <name>)."""
    found = []
    for page in PAGES:
        for line in command_lines(page.read_text()):
            line = re.sub(r"\s*\[[^]]*\]", "", line.split("#")[0]).strip()
            cheap = "--dry-run" in line or re.search(r"orchestrator\.run (plan (grid|hpo)|new-study)\b", line)
            if cheap and "--calibrate" not in line and not re.search(r"BUCKET|\.\.\.|<", line):
                found.append((page.name, line))
    return found


def test_the_cheap_commands_shown_run_as_written(tmp_path):
    shown = cheap_commands()
    assert len(shown) >= 4, shown  # among them the README's dry run and the two plans of docs/performance.md
    for page, line in shown:
        args = line.split()[1:]  # python -m orchestrator.run ...
        done = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={"PATH": "/usr/bin", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
                                   "PYTHONPATH": str(REPO), "VLSM_CACHE": str(tmp_path / "cache")})
        assert done.returncode == 0, f"{page}: {line}\n{done.stderr[-2000:]}"
        assert done.stdout.strip(), f"{page}: {line} printed nothing"


def test_every_test_the_fault_table_names_exists():
    """docs/faults.md names, per fault, the test that shows what the project does: each must exist."""
    checked = 0
    for row in (REPO / "docs" / "faults.md").read_text().splitlines():
        if not row.startswith("| ") or row.startswith("| fault"):
            continue
        file = None
        for name in re.findall(r"`((?:test_\w+\.py)?(?:::\w+)?)`", row.rsplit("|", 2)[1]):
            path, _, function = name.partition("::")
            file = path or file
            found = [p for p in (REPO / "tests").rglob(file)]
            assert found, f"docs/faults.md names {file}, which is not under tests/"
            if function:
                assert re.search(rf"def {function}\(", found[0].read_text()), f"{file} has no {function}"
                checked += 1
    assert checked >= 30  # the table's rows name their tests
