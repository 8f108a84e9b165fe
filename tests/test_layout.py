"""The package's rooms and the direction of its imports (docs/development.md, the map): each
subpackage of src/kdpipe imports only its own modules and those of the subpackages below it."""
import ast

from tests.conftest import ROOT

PACKAGE = ROOT / "src" / "kdpipe"
# Top to bottom: a subpackage may import those after it, never those before it.
LAYERS = ["ops", "export", "analysis", "learn", "measure", "tracking", "data", "core"]


def imported_packages(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        found |= {n.split(".")[1] for n in names if n.startswith("kdpipe.")}
    return found


def test_every_subpackage_is_on_the_map():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(LAYERS)
    assert [p.name for p in PACKAGE.glob("*.py")] == ["__init__.py"]


def test_imports_point_down_the_layers_never_up():
    upward = {}
    for layer in LAYERS:
        allowed = set(LAYERS[LAYERS.index(layer):])
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            above = imported_packages(path) - allowed
            if above:
                upward[str(path.relative_to(PACKAGE))] = sorted(above)
    assert upward == {}
