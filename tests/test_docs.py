"""The docs say only what works: every relative link and image of README.md and docs/ resolves,
every `-S key=value` they show is a valid params override (applied with DVC's own code, checked
as check_params checks), and every command they show answers --help."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kdpipe.core.config import load_config
from kdpipe.core.errors import ConfigError
from kdpipe.ops import recipes
from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SET = re.compile(r"(?:^|\s)-S\s+(?:'([^']+)'|\"([^\"]+)\"|([^\s'\"\\`]+))")
MODULE = re.compile(r"python3? -m (kdpipe(?:\.\w+)*)")
RECIPE = re.compile(r"kdpipe recipe ([\w-]+)")
COMMAND = re.compile(r"(?:^|[\s`$])kdpipe ([a-z][a-z-]+)")


def broken_links(text: str, base: Path) -> list[str]:
    """Relative links and images of a markdown text that point at nothing under `base`."""
    broken = []
    for target in LINK.findall(text):
        path = target.split("#")[0]
        if path and not re.match(r"^[a-z]+:", path) and not (base / path).exists():
            broken.append(target)
    return broken


def override_sets(text: str) -> list[list[str]]:
    """The -S overrides of each command shown (a line, with its `\\` continuations), after its
    recipe's own where it runs `kdpipe recipe <name>`, as that command passes them to DVC."""
    sets = []
    for line in text.replace("\\\n", " ").splitlines():
        found = [next(filter(None, g)) for g in SET.findall(line)]
        if found and (recipe := RECIPE.search(line)):
            found = recipes.overrides(recipe.group(1), ROOT / "params.yaml") + found
        if found:
            sets.append(found)
    return sets


def invalid_overrides(text: str, workdir: Path) -> dict[str, str]:
    """The -S overrides of a command (each point of a sweep) -> the error DVC or check_params
    gives, for those that fail: applied to a copy of params.yaml as `dvc exp run -S` does."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides, get_hydra_sweeps
    from hydra.errors import OverrideParseException

    wrong = {}
    for sets in override_sets(text):
        shown = " ".join(f"-S {s}" for s in sets)
        try:
            for sweep in get_hydra_sweeps(to_path_overrides(sets)):
                params = workdir / "params.yaml"
                shutil.copy(ROOT / "params.yaml", params)
                apply_overrides(params, sweep["params.yaml"])
                load_config(params)
        except (OverrideParseException, InvalidArgumentError, ConfigError) as err:
            cause = err.__cause__ if isinstance(err, InvalidArgumentError) else err
            wrong[shown] = str(cause or err).splitlines()[0]
    return wrong


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_relative_link_and_image_resolves(doc):
    assert broken_links(doc.read_text(), doc.parent) == []


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_params_override_shown_is_valid(doc, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # a recipe is read from recipes/
    assert invalid_overrides(doc.read_text(), tmp_path) == {}


def test_the_checks_catch_a_broken_link_and_a_misspelt_key(tmp_path):
    text = ("See [the manual](docs/nowhere.md) and ![a figure](docs/missing.png), "
            "[a site](https://example.org) and [a heading](#usage).\n"
            "    dvc exp run -S teacher.epoch=2 -S 'distill.kd.temperature=2,4'\n")
    assert broken_links(text, ROOT) == ["docs/nowhere.md", "docs/missing.png"]
    wrong = invalid_overrides(text, tmp_path)
    assert list(wrong) == ["-S teacher.epoch=2 -S distill.kd.temperature=2,4"]
    assert "Could not override 'teacher.epoch'" in next(iter(wrong.values()))
    typo = invalid_overrides("dvc exp run -S data.augment=maybe\n", tmp_path)
    assert typo == {"-S data.augment=maybe": "data.augment='maybe': expected true or false"}


def test_the_overrides_of_a_recipe_command_are_checked_after_the_recipes_own(tmp_path,
                                                                              monkeypatch):
    monkeypatch.chdir(ROOT)
    command = "kdpipe recipe patient-40 -- -S data.views=0\n"  # patient-40 mixes, so needs views
    assert invalid_overrides(command.replace("kdpipe recipe patient-40 --", "dvc exp run"),
                             tmp_path) == {}
    (shown, error), = invalid_overrides(command, tmp_path).items()
    assert shown.endswith("-S data.views=0") and "mixes cached views: set views" in error


def shown_commands() -> list[list[str]]:
    text = "\n".join(doc.read_text() for doc in DOCS)
    modules = set(MODULE.findall(text))
    kdpipe = str(Path(sys.executable).parent / "kdpipe")
    return [[sys.executable, "-m", m, "--help"] for m in sorted(modules)] + \
        [[kdpipe, c, "--help"] for c in sorted(set(COMMAND.findall(text)))]


@pytest.mark.parametrize("command", shown_commands(), ids=lambda c: " ".join(c[-3:-1]))
def test_every_command_shown_answers_help(command):
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and "usage" in done.stdout.lower(), done.stderr[-500:]
