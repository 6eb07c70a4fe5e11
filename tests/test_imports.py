"""The packages stand on floors: each imports only from the floors below it, and no module imports
itself back through others (module-level and function-local imports alike)."""

import ast
from collections import defaultdict

from cli import REPO

# Data flows one way: prompts -> datasets -> trainables -> search_spaces -> orchestrator; benchmarks on top.
FLOORS = ("prompts", "datasets", "trainables", "search_spaces", "orchestrator", "benchmarks")


def modules() -> dict[str, ast.Module]:
    found = {}
    for top in FLOORS:
        for path in (REPO / top).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            found[name] = ast.parse(path.read_text(), str(path))
    return found


def imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(imported module, names) for every absolute import, at any depth."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def test_no_package_imports_from_a_floor_above():
    upward = []
    for name, tree in modules().items():
        floor = FLOORS.index(name.split(".")[0])
        for module, _ in imports(tree):
            top = module.split(".")[0]
            if top in FLOORS and FLOORS.index(top) > floor:
                upward.append(f"{name} -> {module}")
    assert not upward, upward


def test_no_import_circles():
    found = modules()
    graph = defaultdict(set)
    for name, tree in found.items():
        for module, names in imports(tree):
            for target in [module, *(f"{module}.{n}" for n in names)]:
                if target in found and target != name:
                    graph[name].add(target)
    # A circle is a module that reaches itself.
    circles = []
    for start in found:
        seen, stack = set(), list(graph[start])
        while stack:
            current = stack.pop()
            if current == start:
                circles.append(start)
                break
            if current not in seen:
                seen.add(current)
                stack.extend(graph[current])
    assert not circles, sorted(circles)


def test_one_launch_path():
    """grid and the evaluation commands launch through orchestrator.launch.launch (skip finished, place,
    fit, record the outcome), hpo's search through its session and fit: one Outcome, one Tuner."""
    found = modules()
    outcomes = [name for name, tree in found.items() for node in ast.walk(tree)
                if isinstance(node, ast.ClassDef) and node.name.endswith("Outcome")]
    assert outcomes == ["orchestrator.launch"]
    uses = {"orchestrator.grid_runner": {"launch"}, "orchestrator.evaluation": {"launch"},
            "orchestrator.hpo": {"fit", "session", "place_trials", "trial_resources"}}
    for name, needed in uses.items():
        imported = {n for module, names in imports(found[name]) if module == "orchestrator.launch" for n in names}
        assert needed <= imported, name
        calls = {node.func.id for node in ast.walk(found[name])
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
        assert needed <= calls, name
    # Only launch builds a Tuner, binds a trainable's parameters and records what trials wrote.
    for name, tree in found.items():
        attributes = {node.func.attr for node in ast.walk(tree)
                      if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
        if name.startswith("orchestrator.") and name not in ("orchestrator.launch", "orchestrator.hpo"):
            assert not attributes & {"Tuner", "with_parameters", "record_outcome"}, name
        elif name == "orchestrator.hpo":
            assert not attributes & {"Tuner", "record_outcome"}, name


def test_the_local_datasets_package_shadows_hugging_faces_and_nothing_needs_that_one():
    """Run from the repository, `datasets` is this project's package; transformers, Ray and the models
    import beside it and never reach for Hugging Face's `datasets`."""
    import subprocess
    import sys

    code = ("import sys, datasets, transformers, ray; import trainables.models, orchestrator.run; "
            "from transformers import CLIPSegForImageSegmentation; "
            "assert datasets.__file__.startswith(sys.argv[1]), datasets.__file__")
    # From the repository (`python -m ...`) and from elsewhere, as the installed script and Ray's
    # workers find the project (through the editable install).
    for cwd in (REPO, REPO.parent):
        done = subprocess.run([sys.executable, "-c", code, str(REPO)], cwd=cwd, capture_output=True, text=True,
                              timeout=300, env={"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
                                                "PATH": "/usr/bin"})
        assert done.returncode == 0, (cwd, done.stderr[-2000:])
