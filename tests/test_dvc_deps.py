"""Every project module a stage's script imports (directly or through other modules) is a
declared dep of that stage, and nothing else from src/ is: so a code change reruns exactly the
stages it affects. The launcher (kdpipe.launch, kdpipe.warm) only starts the script, so it is
no stage's dep: editing it reruns nothing."""
import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())


def project_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kdpipe"):
            if node.module == "kdpipe":  # from kdpipe import tracking
                found |= {f"kdpipe.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("kdpipe")}
    return found


def module_closure(script: Path) -> set[str]:
    seen, todo = set(), list(project_imports(script))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += project_imports(ROOT / "src" / (module.replace(".", "/") + ".py"))
    return {"src/" + m.replace(".", "/") + ".py" for m in seen}


def stage_entries():
    for name, stage in DVC["stages"].items():
        body = stage.get("do", stage)
        yield name, body


@pytest.mark.parametrize("name, stage", list(stage_entries()),
                         ids=[name for name, _ in stage_entries()])
def test_stage_deps_are_exactly_the_modules_it_imports(name, stage):
    script = re.search(r"-m kdpipe.launch (stages/\S+\.py)", stage["cmd"]).group(1)
    deps = set(stage["deps"])
    assert script in deps, f"{name}: its script {script} is not a dep"
    declared = {d for d in deps if d.startswith("src/")}
    assert declared == module_closure(ROOT / script), name


def test_every_cmd_runs_the_workspace_src_through_the_launcher():
    for name, stage in stage_entries():
        assert stage["cmd"].startswith("PYTHONPATH=src python -m kdpipe.launch stages/"), name
