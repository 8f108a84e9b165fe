"""Every project module a stage's script imports (directly or through other modules) is a
declared dep of that stage, and nothing else from src/ is: so a code change reruns exactly the
stages it affects. The launcher (kdpipe.ops.launch, kdpipe.ops.warm) only starts the script,
so it is no stage's dep: editing it reruns nothing."""
import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())


def module_file(module: str) -> Path:
    return ROOT / "src" / (module.replace(".", "/") + ".py")


def project_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kdpipe"):
            for alias in node.names:  # from kdpipe.tracking import store: a module of a package
                child = f"{node.module}.{alias.name}"
                found.add(child if module_file(child).exists() else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("kdpipe")}
    return found


def module_closure(script: Path) -> set[str]:
    seen, todo = set(), list(project_imports(script))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += project_imports(module_file(module))
    return {"src/" + m.replace(".", "/") + ".py" for m in seen}


def stage_entries():
    for name, stage in DVC["stages"].items():
        body = stage.get("do", stage)
        yield name, body


# The methods, imported by name (kdpipe.learn.methods.registry): a stage that loads one method
# declares that method's module (the distill matrix: ${item.method}), one that loads them all
# declares their folder (a new method's module is then a dep without editing dvc.yaml).
METHODS = "src/kdpipe/learn/methods"
ONE_METHOD = METHODS + "/${item.method}.py"
REGISTRY = METHODS + "/registry.py"


@pytest.mark.parametrize("name, stage", list(stage_entries()),
                         ids=[name for name, _ in stage_entries()])
def test_stage_deps_are_exactly_the_modules_it_imports(name, stage):
    script = re.search(r"-m kdpipe.ops.launch (stages/\S+\.py)", stage["cmd"]).group(1)
    deps = set(stage["deps"])
    assert script in deps, f"{name}: its script {script} is not a dep"
    declared = {d for d in deps if d.startswith("src/")}
    imported = module_closure(ROOT / script)
    if REGISTRY in imported:
        assert (ONE_METHOD in declared) != (METHODS in declared), \
            f"{name} loads methods by name: declare {ONE_METHOD} or {METHODS}"
        covered = METHODS if METHODS in declared else None
        declared -= {ONE_METHOD, METHODS}
        if covered:  # the folder stands for every module in it
            imported = {m for m in imported if not m.startswith(covered + "/")}
            declared = {d for d in declared if not d.startswith(covered + "/")}
    assert declared == imported, name


def test_a_method_module_imports_only_what_every_distill_stage_declares():
    """A distill stage declares its own method's module and the modules its script imports: so
    a method may import shared modules, never another method (lskd's soft-target term lives in
    learn/objective.py, not in kd.py)."""
    shared = module_closure(ROOT / "stages" / "distill.py")
    for path in sorted((ROOT / METHODS).glob("*.py")):
        if path.name not in ("__init__.py", "registry.py"):
            closure = module_closure(path)
            assert closure <= shared, f"{path.name} imports {closure - shared}"


def test_every_cmd_runs_the_workspace_src_through_the_launcher():
    for name, stage in stage_entries():
        assert stage["cmd"].startswith("PYTHONPATH=src python -m kdpipe.ops.launch stages/"), name


def test_package_init_files_stay_empty():
    """Importing kdpipe.core.config runs kdpipe/__init__.py and kdpipe/core/__init__.py, which
    no stage declares: that is exact only while they are empty (a re-export there would be code
    every stage runs and none depends on)."""
    for init in (ROOT / "src" / "kdpipe").rglob("__init__.py"):
        body = ast.parse(init.read_text()).body
        code = body[1:] if body and isinstance(body[0], ast.Expr) else body  # a docstring may stay
        assert not code, f"{init}: code in a package's __init__.py"
